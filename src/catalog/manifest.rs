//! `manifest.json`: what a backup holds, written once and last; and the
//! checks that make a manifest read from storage safe to act on.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::archive::ObjectDigest;
use crate::archive::crypt::{self, AGE};
use crate::error::{Error, Result};
use crate::model::{BackupId, Compression};
use crate::pg::TableRows;
use crate::storage::{Key, Storage};
use crate::wal::{Lsn, Segment};

/// The manifest format this version writes, but for incremental backups.
pub const FORMAT: u32 = 1;
/// The format of an incremental base backup's manifest, and the newest this
/// version reads: a version that reads only 1 would take one for a full
/// backup, restore it alone and let prune delete what it needs.
pub const FORMAT_INCREMENTAL: u32 = 2;
pub const MANIFEST: &str = "manifest.json";
/// A manifest's `rows_from` when the rows were counted in the archive.
pub const ROWS_FROM_ARCHIVE: &str = "archive";

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
    /// A physical job's base backup: `pg_basebackup -Ft -D -`, a tar stream
    /// with its `backup_manifest` inside.
    Base,
    /// A copy of that `backup_manifest`, kept beside the tar so that the next
    /// incremental backup is taken against it without reading the tar.
    #[serde(rename = "backup_manifest")]
    BackupManifest,
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
    /// Where `tables[].rows` came from: `archive`, counted in the stored
    /// dump as it streamed, which `verify` counts again. Absent when they
    /// were counted by `count(*)` in the dump's snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_from: Option<String>,
    /// A physical job's base backup: where it lies in the WAL. `None` for
    /// a logical or files backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<Physical>,
}

/// Where a base backup lies in the WAL, and what it needs from the archive
/// to be consistent: every segment from `wal_start` to `wal_stop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Physical {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// When `pg_basebackup` began (its checkpoint) and ended. The data is
    /// consistent from `stop_time` on, which is also the manifest's `snapshot_at`.
    pub start_time: Timestamp,
    pub stop_time: Timestamp,
    /// The cluster's `wal_segment_size` in bytes.
    pub wal_segment_size: u64,
    /// The first and last segment the backup needs (names as in `pg_wal/`).
    pub wal_start: String,
    pub wal_stop: String,
    /// The checksum algorithm of the `backup_manifest` in the tar
    /// (`CRC32C`), which `verify` checks every file against.
    pub manifest_checksums: String,
    /// An incremental base backup: the backup it holds the changes since.
    /// It restores only combined with that one and all before it, back to
    /// a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_of: Option<Parent>,
}

/// The backup an incremental one was taken against, as it was then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub backup: BackupId,
    /// Where the parent starts in the WAL: the incremental holds every
    /// block changed since (its `backup_label`'s `INCREMENTAL FROM LSN`).
    pub start_lsn: Lsn,
    pub timeline: u32,
    /// The backups a restore combines, the full one and this one counted.
    pub chain_length: u32,
}

/// The checksum algorithms a `backup_manifest` may use
/// (`pg_basebackup --manifest-checksums`).
const MANIFEST_CHECKSUMS: [&str; 6] = ["NONE", "CRC32C", "SHA224", "SHA256", "SHA384", "SHA512"];

impl Physical {
    /// A base backup on `timeline` from `start_lsn` to `stop_lsn`, with the
    /// segments it needs named: the one `start_lsn` is in, to the one the
    /// last byte before `stop_lsn` is in (the end of the backup's last
    /// record: a stop on a segment boundary needs nothing of the next).
    pub fn new(
        timeline: u32,
        (start_lsn, stop_lsn): (Lsn, Lsn),
        (start_time, stop_time): (Timestamp, Timestamp),
        wal_segment_size: u64,
        manifest_checksums: &str,
    ) -> Physical {
        let (first, last) = needed_segments(timeline, start_lsn, stop_lsn, wal_segment_size);
        Physical {
            timeline,
            start_lsn,
            stop_lsn,
            start_time,
            stop_time,
            wal_segment_size,
            wal_start: first.name(wal_segment_size),
            wal_stop: last.name(wal_segment_size),
            manifest_checksums: manifest_checksums.to_owned(),
            incremental_of: None,
        }
    }

    /// The first and last segment the backup needs, read from their names;
    /// `None` when they do not read as segments of this segment size.
    pub fn wal_range(&self) -> Option<(Segment, Segment)> {
        let size = self.wal_segment_size;
        Some((
            Segment::parse(&self.wal_start, size)?,
            Segment::parse(&self.wal_stop, size)?,
        ))
    }

    /// Every segment the backup needs, in order.
    pub fn segments(&self) -> Vec<Segment> {
        let Some((first, last)) = self.wal_range() else {
            return Vec::new();
        };
        (first.number..=last.number)
            .map(|number| Segment {
                timeline: first.timeline,
                number,
            })
            .collect()
    }

    /// Why these fields do not describe one base backup; `None` when they do.
    fn problem(&self) -> Option<String> {
        let size = self.wal_segment_size;
        if !size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&size) {
            return Some(format!(
                "its wal_segment_size {size} is not one PostgreSQL uses"
            ));
        }
        let Some((first, last)) = self.wal_range() else {
            return Some(format!(
                "its WAL range '{}' to '{}' does not read as segment names",
                self.wal_start.chars().take(30).collect::<String>(),
                self.wal_stop.chars().take(30).collect::<String>()
            ));
        };
        if first.timeline != self.timeline || last.timeline != self.timeline {
            return Some(format!(
                "its WAL range {} to {} is not on its timeline {}",
                self.wal_start, self.wal_stop, self.timeline
            ));
        }
        if first > last || self.start_lsn > self.stop_lsn || self.start_time > self.stop_time {
            return Some(format!(
                "it stops before it starts (WAL {} to {}, {} to {}, {} to {})",
                self.wal_start,
                self.wal_stop,
                self.start_lsn,
                self.stop_lsn,
                self.start_time,
                self.stop_time
            ));
        }
        let expected = needed_segments(self.timeline, self.start_lsn, self.stop_lsn, size);
        if (first, last) != expected {
            return Some(format!(
                "its WAL range {} to {} is not where {} to {} lies",
                self.wal_start, self.wal_stop, self.start_lsn, self.stop_lsn
            ));
        }
        if let Some(parent) = &self.incremental_of
            && (parent.start_lsn >= self.start_lsn || parent.chain_length < 2)
        {
            return Some(format!(
                "it is incremental on backup {} from {}, which is not before its own start {}",
                parent.backup, parent.start_lsn, self.start_lsn
            ));
        }
        if !MANIFEST_CHECKSUMS.contains(&self.manifest_checksums.as_str()) {
            return Some(format!(
                "its backup_manifest checksums '{}' are not one PostgreSQL writes",
                self.manifest_checksums.chars().take(30).collect::<String>()
            ));
        }
        None
    }
}

/// The segments from the one `start` is in to the one holding the byte
/// before `stop`.
fn needed_segments(timeline: u32, start: Lsn, stop: Lsn, segment_size: u64) -> (Segment, Segment) {
    let last_byte = Lsn(stop.0.saturating_sub(1).max(start.0));
    (
        start.segment(timeline, segment_size),
        last_byte.segment(timeline, segment_size),
    )
}

impl Manifest {
    /// The major version of the server the backup was taken from: `15` of
    /// `15.4 (Debian 15.4-1)`; 0 when it cannot be read.
    pub fn server_major(&self) -> u32 {
        self.server_version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0)
    }

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

    /// Whether the row counts were taken from the stored archive itself.
    pub fn rows_from_archive(&self) -> bool {
        self.rows_from.as_deref() == Some(ROWS_FROM_ARCHIVE)
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
        if self.format == 0 || self.format > FORMAT_INCREMENTAL {
            return Some(format!(
                "it has format {}, this version reads 1 to {FORMAT_INCREMENTAL}",
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
        if self.physical.is_some() || roles.contains(&Role::Base) {
            let Some(physical) = &self.physical else {
                return Some("it lists a base object but says nothing of its WAL".to_owned());
            };
            if !matches!(roles[..], [Role::Base] | [Role::Base, Role::BackupManifest])
                || files
                || self.tree.is_some()
            {
                return Some(
                    "it is a base backup, which holds one base object (and a copy of its \
                     backup_manifest) and nothing else"
                        .to_owned(),
                );
            }
            if self.dbname.is_empty() {
                return Some("it names no database it connected to".to_owned());
            }
            if !self.tables.is_empty() {
                return Some("it is a base backup, and lists tables".to_owned());
            }
            if let Some(why) = physical.problem() {
                return Some(why);
            }
            if physical.incremental_of.is_some() != (self.format == FORMAT_INCREMENTAL) {
                return Some(format!(
                    "it has format {}, and format {FORMAT_INCREMENTAL} is for incremental base \
                     backups only",
                    self.format
                ));
            }
        } else if self.format != FORMAT {
            return Some(format!(
                "it has format {}, and format {FORMAT_INCREMENTAL} is for incremental base \
                 backups only",
                self.format
            ));
        } else if files {
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
            if roles.contains(&Role::BackupManifest) {
                return Some("a database backup with a backup_manifest object".to_owned());
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
        if let Some(other) = self
            .rows_from
            .as_deref()
            .filter(|f| *f != ROWS_FROM_ARCHIVE)
        {
            return Some(format!(
                "its rows are counted from '{other}', which this version does not know"
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
            Role::Base => "base",
            Role::BackupManifest => "backup_manifest",
        }
    }
}

/// The name of an object of `role` stored with `compression`, and `.age`
/// when encrypted.
pub fn object_name(role: Role, compression: Compression, encrypted: bool) -> String {
    let mut name = match role {
        Role::Data => "data.dump",
        Role::Globals => "globals.sql",
        Role::Files => "files.tar",
        Role::Base => "base.tar",
        Role::BackupManifest => "backup_manifest",
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
    if manifest.format > FORMAT_INCREMENTAL {
        return Err(Error::integrity(format!(
            "storage {}: {key} has format {}, this version reads up to {FORMAT_INCREMENTAL}",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::manifest;

    const MIB16: u64 = 16 << 20;

    #[test]
    fn the_server_major_is_read_from_its_version() {
        let mut m = manifest("20240120T030000Z", "2024-01-20T03:00:00Z");
        for (version, major) in [
            ("15.4 (Debian 15.4-1.pgdg120+1)", 15),
            ("18.1", 18),
            ("13.23", 13),
            ("?", 0),
        ] {
            m.server_version = version.into();
            assert_eq!(m.server_major(), major, "{version}");
        }
    }

    fn physical() -> Physical {
        Physical::new(
            1,
            (Lsn(0x0200_0028), Lsn(0x0400_0100)),
            (
                "2024-01-20T03:00:00Z".parse().unwrap(),
                "2024-01-20T03:00:05Z".parse().unwrap(),
            ),
            MIB16,
            "CRC32C",
        )
    }

    fn base_backup() -> Manifest {
        let mut m = manifest("20240120T030000Z", "2024-01-20T03:00:05Z");
        m.objects[0].key = "base.tar.zst".into();
        m.objects[0].role = Role::Base;
        m.physical = Some(physical());
        m
    }

    #[test]
    fn a_base_backup_needs_the_segments_from_its_start_to_its_stop() {
        let p = physical();
        assert_eq!(
            (p.wal_start.as_str(), p.wal_stop.as_str()),
            ("000000010000000000000002", "000000010000000000000004")
        );
        assert_eq!(p.segments().len(), 3);
        // A stop on a segment boundary: the last record ended in the segment before.
        let at_boundary = Physical::new(
            2,
            (Lsn(0x0200_0028), Lsn(0x0400_0000)),
            (p.start_time, p.stop_time),
            MIB16,
            "CRC32C",
        );
        assert_eq!(at_boundary.wal_stop, "000000020000000000000003");
        assert_eq!(at_boundary.problem(), None);
    }

    #[test]
    fn base_backups_are_checked_as_such() {
        let good = base_backup();
        let id = good.id.clone();
        assert_eq!(good.problem("nightly", &id), None);
        let problem = |change: &dyn Fn(&mut Manifest)| {
            let mut m = good.clone();
            change(&mut m);
            m.problem("nightly", &id).unwrap_or_default()
        };
        let physical =
            |change: &dyn Fn(&mut Physical)| problem(&|m| change(m.physical.as_mut().unwrap()));
        assert!(problem(&|m| m.physical = None).contains("nothing of its WAL"));
        assert!(
            problem(&|m| m
                .objects
                .push(manifest("20240120T030000Z", "2024-01-20T03:00:05Z").objects[0].clone()))
            .contains("one base object")
        );
        assert!(problem(&|m| m.directory = Some("/srv".into())).contains("one base object"));
        assert!(problem(&|m| m.dbname.clear()).contains("no database"));
        assert!(
            problem(&|m| m.tables.push(crate::pg::TableRows {
                schema: "public".into(),
                name: "t".into(),
                rows: 1
            }))
            .contains("lists tables")
        );
        assert!(physical(&|p| p.wal_start = "../../x".into()).contains("segment names"));
        assert!(
            physical(&|p| p.wal_stop = "000000010000000000000001".into()).contains("stops before")
        );
        assert!(
            physical(&|p| p.wal_stop = "000000010000000000000009".into()).contains("not where")
        );
        assert!(physical(&|p| p.timeline = 2).contains("timeline 2"));
        assert!(physical(&|p| p.stop_lsn = Lsn(1)).contains("stops before"));
        assert!(physical(&|p| p.wal_segment_size = 3).contains("wal_segment_size"));
        assert!(physical(&|p| p.manifest_checksums = "MD5".into()).contains("MD5"));
        assert!(
            physical(&|p| p.stop_time = "2024-01-20T02:00:00Z".parse().unwrap())
                .contains("stops before")
        );
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

        assert!(
            problem(&|m| m.physical = Some(physical())).contains("one base object"),
            "a dump with WAL points is not a base backup"
        );

        let forged = r#"{"format":1,"id":"../../etc","job":"nightly"}"#;
        let err = serde_json::from_str::<Manifest>(forged).unwrap_err();
        assert!(err.to_string().contains("not a backup id"), "{err}");
    }
}
