//! The catalog is the storage: manifests beside the data say what exists.
//!
//! ```text
//! <job>/<backup-id>/data.dump.<ext>     pg_dump archive (custom format), compressed
//! <job>/<backup-id>/globals.sql.<ext>   roles and tablespaces
//! <job>/<backup-id>/files.tar.<ext>     a files job's directory, as a tar
//! <job>/<backup-id>/manifest.json       written last: its presence means "complete"
//! <job>/<backup-id>/pin.json            `backup pin`: prune keeps the backup
//! <job>/reports/<run-id>.json           one record per run
//! ```
//!
//! A fresh host with the job file and the storage can list and restore every
//! backup; nothing local matters.
//!
//! An encrypted backup is opened from here too: [`opener`] reads what its
//! manifest says and checks the keys on its data object's header, before
//! anything is restored.

use std::sync::Arc;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::archive::ObjectDigest;
use crate::archive::crypt::{self, AGE, Crypt};
use crate::error::{Error, Kind, Result};
use crate::keys::{IDENTITY_ENV, Identities};
use crate::model::{BackupId, Compression, EncryptionSpec};
use crate::pg::TableRows;
use crate::storage::{Key, Storage};

/// The manifest format this version writes and the newest it reads.
pub const FORMAT: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
/// `<job>/<backup-id>/pin.json`: prune keeps the backup. Beside the manifest,
/// which is never rewritten.
pub const PIN: &str = "pin.json";
/// A manifest larger than this is not one of ours (a table list of millions).
const MANIFEST_LIMIT: u64 = 64 << 20;

/// What an object in a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The `pg_dump` custom-format archive.
    Data,
    /// `pg_dumpall --globals-only`: roles and tablespaces.
    Globals,
    /// A files job's directory, as a tar stream.
    Files,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// The object's name inside the backup directory (`data.dump.zst`).
    pub key: String,
    pub role: Role,
    #[serde(flatten)]
    pub digest: ObjectDigest,
}

/// `manifest.json`: written once, last, never rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: BackupId,
    pub job: String,
    /// The `[databases.NAME]` of the job file.
    pub database: String,
    /// The database's name on the server.
    pub dbname: String,
    pub server_version: String,
    pub pg_dump_version: String,
    /// The data is as of this instant: the start of the exported snapshot.
    pub snapshot_at: Timestamp,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// `zstd`, `gzip` or `none`.
    pub compression: String,
    pub encryption: Option<String>,
    pub objects: Vec<ManifestObject>,
    pub tables: Vec<TableRows>,
    /// The extensions of the database, which a restore must have too.
    /// Absent in manifests written before it was recorded.
    #[serde(default)]
    pub extensions: Vec<crate::pg::Extension>,
    /// Things an operator should know that did not fail the backup.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// A files job's directory; `None` for a database backup, whose
    /// `database`, `dbname` and versions are then empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// What the tar of a files backup holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree: Option<crate::archive::tree::Packed>,
    /// The server's `system_identifier`: with `dbname`, which database of
    /// which cluster the backup is of. Absent in older manifests, and where
    /// the role may not read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
    /// The database's owner, encoding, locale, settings, privileges and
    /// comment, which the archive does not carry. Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_properties: Option<crate::pg::DatabaseProperties>,
    /// How `tables[].rows` were counted: `only` each table's own rows. Absent
    /// in older manifests, whose inheritance parents' counts hold their
    /// children's rows too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_counts: Option<String>,
}

impl Manifest {
    pub fn object(&self, role: Role) -> Option<&ManifestObject> {
        self.objects.iter().find(|o| o.role == role)
    }

    pub fn compression(&self) -> Result<Compression> {
        match self.compression.as_str() {
            "zstd" => Ok(Compression::Zstd(Compression::DEFAULT_ZSTD_LEVEL)),
            "gzip" => Ok(Compression::Gzip(Compression::DEFAULT_GZIP_LEVEL)),
            "none" => Ok(Compression::None),
            other => Err(Error::integrity(format!(
                "backup {}: unknown compression '{other}' in its manifest",
                self.id
            ))),
        }
    }

    pub fn raw_size(&self) -> u64 {
        self.objects.iter().map(|o| o.digest.raw_size).sum()
    }

    pub fn stored_size(&self) -> u64 {
        self.objects.iter().map(|o| o.digest.stored_size).sum()
    }

    /// Whether the row counts are each table's own (`ONLY`).
    pub fn rows_only(&self) -> bool {
        self.row_counts.as_deref() == Some(crate::pg::ROWS_ONLY)
    }

    pub fn duration(&self) -> jiff::SignedDuration {
        self.finished_at.duration_since(self.started_at)
    }

    /// Why this manifest, found at `<job>/<id>/manifest.json`, does not
    /// describe a backup that can be restored; `None` when it does. Every
    /// field anything else relies on is checked here, once, before a byte of
    /// the backup is read: a manifest is input like any other, and a forged
    /// or damaged one must not name objects outside its backup, nor pass for
    /// a backup it is not.
    pub fn problem(&self, job: &str, id: &BackupId) -> Option<String> {
        if self.format == 0 || self.format > FORMAT {
            return Some(format!(
                "it has format {}, this version reads 1 to {FORMAT}",
                self.format
            ));
        }
        if &self.id != id {
            return Some(format!("its id {} is not its directory's {id}", self.id));
        }
        if self.job != job {
            return Some(format!("its job {} is not its directory's {job}", self.job));
        }
        let compression = match self.compression() {
            Ok(c) => c,
            Err(e) => return Some(e.message().to_owned()),
        };
        let encrypted = match self.encryption.as_deref() {
            None => false,
            Some(AGE) => true,
            Some(other) => return Some(format!("it names an unknown encryption '{other}'")),
        };
        for (i, object) in self.objects.iter().enumerate() {
            let expected = object_name(object.role, compression, encrypted);
            if object.key != expected {
                return Some(format!(
                    "its {} object is called '{}', where a backup with this compression and \
                     encryption has '{expected}'",
                    object.role.name(),
                    object.key.chars().take(100).collect::<String>()
                ));
            }
            if self.objects[..i].iter().any(|o| o.role == object.role) {
                return Some(format!("it lists two {} objects", object.role.name()));
            }
            let d = &object.digest;
            if !is_sha256(&d.raw_sha256) || !is_sha256(&d.stored_sha256) {
                return Some(format!("the digests of {} are not SHA-256", object.key));
            }
        }
        let roles: Vec<Role> = self.objects.iter().map(|o| o.role).collect();
        let files = self.directory.is_some();
        if files {
            if roles != [Role::Files] || self.tree.is_none() {
                return Some(
                    "it is a files backup, which holds one files object and its tree".to_owned(),
                );
            }
        } else {
            if !roles.contains(&Role::Data) {
                return Some("it lists no data object: there is nothing to restore".to_owned());
            }
            if roles.contains(&Role::Files) {
                return Some("a database backup with a files object".to_owned());
            }
            if self.dbname.is_empty() {
                return Some("it names no database".to_owned());
            }
        }
        if let Some(t) = self
            .tables
            .iter()
            .find(|t| t.rows < 0 || t.name.is_empty() || t.schema.is_empty())
        {
            return Some(format!(
                "its table '{}.{}' has {} rows",
                t.schema, t.name, t.rows
            ));
        }
        if let Some(other) = self
            .row_counts
            .as_deref()
            .filter(|c| *c != crate::pg::ROWS_ONLY)
        {
            return Some(format!(
                "its rows are counted as '{other}', which this version does not know"
            ));
        }
        if let Some(why) = self.database_properties.as_ref().and_then(|p| p.problem()) {
            return Some(format!("its database properties: {why}"));
        }
        None
    }
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Data => "data",
            Role::Globals => "globals",
            Role::Files => "files",
        }
    }
}

/// `<job>`: everything of one job lives under it.
pub fn job_prefix(job: &str) -> Result<Key> {
    Key::new(job)
}

/// `<job>/<backup-id>`.
pub fn backup_prefix(job: &str, id: &BackupId) -> Result<Key> {
    job_prefix(job)?.join(id.as_str())
}

/// The name of an object of `role` stored with `compression`, and `.age`
/// when encrypted.
pub fn object_name(role: Role, compression: Compression, encrypted: bool) -> String {
    let mut name = match role {
        Role::Data => "data.dump",
        Role::Globals => "globals.sql",
        Role::Files => "files.tar",
    }
    .to_owned();
    if let Some(ext) = compression.extension() {
        name = format!("{name}.{ext}");
    }
    if encrypted {
        name = format!("{name}.{}", crypt::EXTENSION);
    }
    name
}

/// Backups of a job found in one storage, newest first, and what could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    pub backups: Vec<Manifest>,
    /// Backups with a `pin.json` beside their manifest: prune keeps them.
    pub pinned: std::collections::BTreeSet<BackupId>,
    /// Manifests that exist but could not be read: never silently skipped.
    pub unreadable: Vec<Unreadable>,
}

/// A backup whose manifest is there but does not read, or does not describe
/// a restorable backup.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub id: BackupId,
    /// The error, naming the storage and the file.
    pub problem: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem)
    }
}

/// Splits `<job>/<backup-id>/<name>` into the id and the name; `None` for
/// anything else under the job (its `reports/`, another tool's files).
pub fn split_backup_key<'a>(job_prefix: &Key, key: &'a Key) -> Option<(BackupId, &'a str)> {
    let (id, name) = key
        .as_str()
        .strip_prefix(job_prefix.as_str())?
        .strip_prefix('/')?
        .split_once('/')?;
    Some((BackupId::parse(id).ok()?, name))
}

/// Reads every complete backup of `job` in `storage`.
pub async fn list(storage: &dyn Storage, job: &str) -> Result<Listing> {
    let prefix = job_prefix(job)?;
    let objects = storage.list(&prefix).await?;
    let mut listing = Listing::default();
    for object in objects {
        let Some((parsed, name)) = split_backup_key(&prefix, &object.key) else {
            continue;
        };
        if name == PIN {
            listing.pinned.insert(parsed);
            continue;
        }
        if name != MANIFEST {
            continue;
        }
        match read_manifest(storage, &object.key).await {
            Ok(m) => listing.backups.push(m),
            Err(e) => listing.unreadable.push(Unreadable {
                id: parsed,
                problem: e.to_string(),
            }),
        }
    }
    listing.backups.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(listing)
}

/// Reads and checks the manifest at `key`, `<job>/<backup-id>/manifest.json`.
/// Anything wrong with it is an integrity error naming the file.
pub async fn read_manifest(storage: &dyn Storage, key: &Key) -> Result<Manifest> {
    let invalid = |why: String| {
        Error::integrity(format!(
            "storage {}: {key} is not a valid manifest: {why}",
            storage.name()
        ))
        .with_hint(
            "it was damaged or written by hand: do not restore it; `backup verify` reads \
             the other backups, and prune keeps it until it is removed by hand",
        )
    };
    let mut parts = key.as_str().rsplitn(3, '/');
    let (Some(MANIFEST), Some(id), Some(job)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::internal(format!("{key} is not a manifest's key")));
    };
    let id = BackupId::parse(id).map_err(|e| invalid(e.message().to_owned()))?;
    let bytes = crate::storage::read_small(storage, key, MANIFEST_LIMIT).await?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if manifest.format > FORMAT {
        return Err(Error::integrity(format!(
            "storage {}: {key} has format {}, this version reads up to {FORMAT}",
            storage.name(),
            manifest.format
        ))
        .with_hint("upgrade backup to read it"));
    }
    let job = job.rsplit('/').next().unwrap_or(job);
    match manifest.problem(job, &id) {
        Some(why) => Err(invalid(why)),
        None => Ok(manifest),
    }
}

/// The newest complete database backup of `job` in `storage`: one listing,
/// then manifests read newest first until one reads.
pub async fn newest(storage: &dyn Storage, job: &str) -> Result<Option<Manifest>> {
    let prefix = job_prefix(job)?;
    let objects = storage.list(&prefix).await?;
    let mut manifests: Vec<(BackupId, &Key)> = objects
        .iter()
        .filter_map(|o| match split_backup_key(&prefix, &o.key) {
            Some((id, MANIFEST)) => Some((id, &o.key)),
            _ => None,
        })
        .collect();
    manifests.sort();
    for (_, key) in manifests.into_iter().rev() {
        match read_manifest(storage, key).await {
            Ok(m) if m.directory.is_none() => return Ok(Some(m)),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(None)
}

/// What `pin.json` says: when, and why, a backup was pinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub pinned_at: Timestamp,
    #[serde(default)]
    pub reason: String,
}

/// `<job>/<backup-id>/pin.json`.
pub fn pin_key(job: &str, id: &BackupId) -> Result<Key> {
    backup_prefix(job, id)?.join(PIN)
}

/// The pin of a backup; `None` when it has none or it cannot be read.
pub async fn read_pin(storage: &dyn Storage, job: &str, id: &BackupId) -> Option<Pin> {
    let key = pin_key(job, id).ok()?;
    let bytes = crate::storage::read_small(storage, &key, 64 << 10)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What is stored under one backup id, complete or not.
#[derive(Debug, Default)]
pub struct StoredBackup {
    /// Its manifest is there.
    pub complete: bool,
    pub pinned: bool,
    /// Every object under the id, the manifest and the pin included.
    pub keys: Vec<Key>,
}

/// Every backup directory of `job` in `storage`, complete or not: what
/// prune judges, where [`list`] gives the complete backups only.
pub async fn list_stored(
    storage: &dyn Storage,
    job: &str,
) -> Result<BTreeMap<BackupId, StoredBackup>> {
    let prefix = job_prefix(job)?;
    let mut out: BTreeMap<BackupId, StoredBackup> = BTreeMap::new();
    for object in storage.list(&prefix).await? {
        // `reports/` and anything else that is not a backup id is not ours to judge.
        let Some((id, name)) = split_backup_key(&prefix, &object.key) else {
            continue;
        };
        let entry = out.entry(id).or_default();
        entry.complete |= name == MANIFEST;
        entry.pinned |= name == PIN;
        entry.keys.push(object.key);
    }
    Ok(out)
}

/// Which backup a restore wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Id(BackupId),
    /// The newest backup whose data is as of this instant or earlier.
    At(Timestamp),
}

/// Picks the backup `selector` names from `backups` (newest first). Never falls
/// back to a newer backup than asked for.
/// `zone` is the job's, for times in messages.
pub fn select<'a>(
    backups: &'a [Manifest],
    selector: &Selector,
    job: &str,
    zone: &jiff::tz::TimeZone,
) -> Result<&'a Manifest> {
    if backups.is_empty() {
        return Err(
            Error::not_found(format!("job {job} has no complete backups"))
                .with_hint(format!("run `backup run {job}` first, or check --storage")),
        );
    }
    let found = match selector {
        Selector::Latest => backups
            .iter()
            .max_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at)),
        Selector::Id(id) => backups.iter().find(|m| &m.id == id),
        Selector::At(at) => backups
            .iter()
            .filter(|m| m.snapshot_at <= *at)
            .max_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at)),
    };
    found.ok_or_else(|| {
        let oldest = backups
            .iter()
            .min_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at));
        let oldest = oldest.map_or(String::new(), |m| {
            format!(
                "{} (data as of {})",
                m.id,
                crate::time::show(m.snapshot_at, zone)
            )
        });
        match selector {
            Selector::Id(id) => Error::not_found(format!("job {job} has no complete backup {id}"))
                .with_hint(format!(
                    "`backup list --job {job}` shows the backups there are"
                )),
            _ => Error::not_found(format!(
                "no backup of job {job} is as old as the requested time; the oldest is {oldest}"
            ))
            .with_hint("pick a later time: a restore never uses data newer than asked for"),
        }
    })
}

/// How to open the objects of `manifest`: nothing for a backup in clear;
/// for an encrypted one, identities that are checked here against its data
/// object's header, so a missing or wrong key fails before anything is
/// created or restored.
pub async fn opener(
    storage: &dyn Storage,
    manifest: &Manifest,
    encryption: Option<&EncryptionSpec>,
) -> Result<Crypt> {
    match manifest.encryption.as_deref() {
        None => return Ok(Crypt::None),
        Some(AGE) => {}
        Some(other) => {
            return Err(Error::integrity(format!(
                "backup {} names an encryption this version does not know: '{other}'",
                manifest.id
            )));
        }
    }
    let identities = Identities::load(
        encryption.and_then(|e| e.passphrase.as_ref()),
        encryption.and_then(|e| e.identity_file.as_deref()),
    )?
    .ok_or_else(|| {
        Error::new(
            Kind::Refused,
            format!(
                "backup {} of job {} is encrypted with age, and no identity to decrypt it is given; nothing was changed",
                manifest.id, manifest.job
            ),
        )
        .with_hint(format!(
            "set {IDENTITY_ENV} to the secret key (or the path of its file), or identity_file in the job's `encryption` \
             (passphrase_env or passphrase_file if it was made with a passphrase)"
        ))
    })?;
    let identities = Arc::new(identities);
    // The object a restore reads: a dump's data, or a files job's tar.
    let object = manifest
        .object(Role::Data)
        .or_else(|| manifest.object(Role::Files))
        .ok_or_else(|| Error::integrity(format!("backup {}: no data object", manifest.id)))?;
    let key = backup_prefix(&manifest.job, &manifest.id)?.join(&object.key)?;
    let reader = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let check = identities.clone();
    let label = format!(
        "backup {} ({key} in storage {})",
        manifest.id,
        storage.name()
    );
    tokio::task::spawn_blocking(move || crypt::open(reader, &check).map(drop))
        .await
        .map_err(|e| Error::internal(format!("decryption check failed: {e}")))?
        .map_err(|e| {
            let hint = e.hint().map(str::to_owned);
            let e = Error::new(
                e.kind(),
                format!("{label}: {}; nothing was changed", e.message()),
            );
            match hint {
                Some(h) => e.with_hint(h),
                None => e,
            }
        })?;
    Ok(Crypt::Open(identities))
}

/// A complete backup as listed: one row even when several storages hold it.
#[derive(Debug, Clone)]
pub struct ListedBackup {
    pub manifest: Manifest,
    pub storages: Vec<String>,
    /// Why it is pinned, when a storage holds a pin for it.
    pub pinned: Option<String>,
    /// When it last passed a restore test or a drill.
    pub tested: Option<Timestamp>,
}

/// Every complete backup of `job` in any of `storages`, newest first, with
/// its pins and restore tests. One storage that cannot be listed does not
/// hide the backups in the others; when none can, the first error is it.
pub async fn list_job(storages: &[Arc<dyn Storage>], job: &str) -> Result<Vec<ListedBackup>> {
    let mut listed: Vec<ListedBackup> = Vec::new();
    let mut unreachable = Vec::new();
    for storage in storages {
        let listing = match list(storage.as_ref(), job).await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!("{e}");
                unreachable.push(e);
                continue;
            }
        };
        for problem in listing.unreadable {
            tracing::warn!("{problem}");
        }
        let tested = match crate::report::record_keys(storage.as_ref(), job).await {
            Ok(keys) => crate::report::tested_backups(storage.as_ref(), &keys).await,
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| {
            tracing::warn!("which backups passed a restore test is unknown: {e}");
            Default::default()
        });
        for manifest in listing.backups {
            let tested = tested.get(manifest.id.as_str()).copied();
            let pinned = if listing.pinned.contains(&manifest.id) {
                Some(
                    read_pin(storage.as_ref(), job, &manifest.id)
                        .await
                        .map(|p| p.reason)
                        .unwrap_or_default(),
                )
            } else {
                None
            };
            match listed.iter_mut().find(|l| l.manifest.id == manifest.id) {
                Some(l) => {
                    l.storages.push(storage.name().to_owned());
                    l.pinned = l.pinned.take().or(pinned);
                    l.tested = l.tested.max(tested);
                }
                None => listed.push(ListedBackup {
                    manifest,
                    storages: vec![storage.name().to_owned()],
                    pinned,
                    tested,
                }),
            }
        }
    }
    if unreachable.len() == storages.len()
        && let Some(e) = unreachable.into_iter().next()
    {
        return Err(e);
    }
    listed.sort_by(|a, b| b.manifest.id.cmp(&a.manifest.id));
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_backups_are_listed_complete_or_not_with_their_pins() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let storage = crate::storage::MemoryStorage::new("mem");
            let done = BackupId::parse("20240120T030000Z").unwrap();
            let half = BackupId::parse("20240121T030000Z").unwrap();
            let dir = backup_prefix("nightly", &done).unwrap();
            storage.put(&dir.join("data.dump.zst").unwrap(), b"x".to_vec());
            storage.put(&dir.join(MANIFEST).unwrap(), b"{}".to_vec());
            let pin = Pin {
                pinned_at: "2024-01-22T00:00:00Z".parse().unwrap(),
                reason: "audit".into(),
            };
            storage.put(
                &pin_key("nightly", &done).unwrap(),
                serde_json::to_vec(&pin).unwrap(),
            );
            let half_dir = backup_prefix("nightly", &half).unwrap();
            storage.put(&half_dir.join("data.dump.zst").unwrap(), b"x".to_vec());
            storage.put(&pin_key("nightly", &half).unwrap(), b"not json".to_vec());
            storage.put(
                &Key::new("nightly/reports/20240120T030000Z-backup.json").unwrap(),
                b"{}".to_vec(),
            );

            let stored = list_stored(&storage, "nightly").await.unwrap();
            assert_eq!(stored.keys().collect::<Vec<_>>(), [&done, &half]);
            assert!(stored[&done].complete && stored[&done].pinned);
            assert_eq!(stored[&done].keys.len(), 3);
            assert!(!stored[&half].complete && stored[&half].pinned);
            let read = read_pin(&storage, "nightly", &done).await.unwrap();
            assert_eq!(read.reason, "audit");
            // A pin that does not read still pins; its reason is unknown.
            assert!(read_pin(&storage, "nightly", &half).await.is_none());
        });
    }

    fn manifest(id: &str, snapshot: &str) -> Manifest {
        let at: Timestamp = snapshot.parse().unwrap();
        Manifest {
            format: FORMAT,
            id: BackupId::parse(id).unwrap(),
            job: "nightly".into(),
            database: "app".into(),
            dbname: "app".into(),
            server_version: "15.18".into(),
            pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
            snapshot_at: at,
            started_at: at,
            finished_at: at,
            compression: "zstd".into(),
            encryption: None,
            objects: vec![ManifestObject {
                key: "data.dump.zst".into(),
                role: Role::Data,
                digest: ObjectDigest {
                    raw_size: 1,
                    raw_sha256: "a".repeat(64),
                    stored_size: 1,
                    stored_sha256: "b".repeat(64),
                },
            }],
            tables: vec![],
            extensions: vec![],
            warnings: vec![],
            directory: None,
            tree: None,
            system_identifier: None,
            database_properties: None,
            row_counts: None,
        }
    }

    fn backups() -> Vec<Manifest> {
        vec![
            manifest("20240121T030000Z", "2024-01-21T03:00:01Z"),
            manifest("20240120T030000Z", "2024-01-20T03:00:01Z"),
            manifest("20240119T030000Z", "2024-01-19T03:00:01Z"),
        ]
    }

    fn pick(b: &[Manifest], selector: Selector) -> Result<String> {
        select(b, &selector, "nightly", &jiff::tz::TimeZone::UTC).map(|m| m.id.to_string())
    }

    fn at(t: &str) -> Selector {
        Selector::At(t.parse().unwrap())
    }

    #[test]
    fn at_picks_the_newest_backup_not_after_the_time() {
        let b = backups();
        assert_eq!(
            pick(&b, at("2024-01-20T14:30:00Z")).unwrap(),
            "20240120T030000Z"
        );
        assert_eq!(
            pick(&b, at("2024-01-20T03:00:01Z")).unwrap(),
            "20240120T030000Z"
        );
        assert_eq!(
            pick(&b, at("2024-01-20T03:00:00Z")).unwrap(),
            "20240119T030000Z"
        );
        assert_eq!(
            pick(&b, at("2030-01-01T00:00:00Z")).unwrap(),
            "20240121T030000Z"
        );
    }

    #[test]
    fn at_before_the_first_backup_names_the_oldest() {
        let err = pick(&backups(), at("2024-01-01T00:00:00Z")).unwrap_err();
        assert_eq!(err.kind(), crate::error::Kind::NotFound);
        assert!(
            err.message()
                .contains("20240119T030000Z (data as of 2024-01-19 03:00:01 UTC)"),
            "{err}"
        );
    }

    #[test]
    fn latest_and_id() {
        let b = backups();
        assert_eq!(pick(&b, Selector::Latest).unwrap(), "20240121T030000Z");
        let id = BackupId::parse("20240119T030000Z").unwrap();
        assert_eq!(pick(&b, Selector::Id(id)).unwrap(), "20240119T030000Z");
        let missing = BackupId::parse("20240101T030000Z").unwrap();
        assert!(pick(&b, Selector::Id(missing)).is_err());
        let none = pick(&[], Selector::Latest).unwrap_err();
        assert!(none.message().contains("no complete backups"));
    }

    #[test]
    fn object_names_carry_the_compression() {
        assert_eq!(
            object_name(Role::Data, Compression::Zstd(3), false),
            "data.dump.zst"
        );
        assert_eq!(
            object_name(Role::Globals, Compression::Gzip(6), false),
            "globals.sql.gz"
        );
        assert_eq!(
            object_name(Role::Data, Compression::None, false),
            "data.dump"
        );
        assert_eq!(
            object_name(Role::Data, Compression::Zstd(3), true),
            "data.dump.zst.age"
        );
    }

    #[test]
    fn manifests_that_do_not_describe_a_restorable_backup_are_named() {
        let good = manifest("20240120T030000Z", "2024-01-20T03:00:01Z");
        let id = good.id.clone();
        assert_eq!(good.problem("nightly", &id), None);
        let problem = |change: &dyn Fn(&mut Manifest)| {
            let mut m = good.clone();
            change(&mut m);
            m.problem("nightly", &id).unwrap_or_default()
        };
        assert!(problem(&|m| m.objects.clear()).contains("no data object"));
        assert!(problem(&|m| m.objects[0].role = Role::Globals).contains("is called"));
        assert!(problem(&|m| m.objects[0].key = "../../etc/passwd".into()).contains("is called"));
        assert!(problem(&|m| m.job = "other".into()).contains("job other"));
        assert!(
            problem(&|m| m.id = BackupId::parse("20240121T030000Z").unwrap())
                .contains("not its directory's")
        );
        assert!(problem(&|m| m.compression = "lz4".into()).contains("lz4"));
        assert!(problem(&|m| m.encryption = Some("rot13".into())).contains("rot13"));
        assert!(problem(&|m| m.objects[0].digest.raw_sha256 = "x".into()).contains("SHA-256"));
        assert!(
            problem(&|m| {
                let copy = m.objects[0].clone();
                m.objects.push(copy);
            })
            .contains("two data objects")
        );
        assert!(problem(&|m| m.directory = Some("/srv".into())).contains("files backup"));

        let forged = r#"{"format":1,"id":"../../etc","job":"nightly"}"#;
        let err = serde_json::from_str::<Manifest>(forged).unwrap_err();
        assert!(err.to_string().contains("not a backup id"), "{err}");
    }

    #[test]
    fn listing_skips_incomplete_backups() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let storage = crate::storage::MemoryStorage::new("mem");
            let m = manifest("20240120T030000Z", "2024-01-20T03:00:01Z");
            let dir = backup_prefix("nightly", &m.id).unwrap();
            storage.put(&dir.join("data.dump.zst").unwrap(), b"x".to_vec());
            storage.put(
                &dir.join(MANIFEST).unwrap(),
                serde_json::to_vec(&m).unwrap(),
            );
            let half =
                backup_prefix("nightly", &BackupId::parse("20240121T030000Z").unwrap()).unwrap();
            storage.put(&half.join("data.dump.zst").unwrap(), b"x".to_vec());
            let listing = list(&storage, "nightly").await.unwrap();
            assert_eq!(listing.backups, vec![m]);
            assert!(listing.unreadable.is_empty());
        });
    }
}
