//! `backup verify`: read every object of a backup back from storage, check
//! its stored and raw SHA-256 and sizes against the manifest, and check the
//! data reads as a `pg_dump` archive (`pg_restore --list` on the decompressed
//! stream), a files backup as a tar (every entry read), or a base backup
//! against the `backup_manifest` in its tar (every file's size and
//! checksum). One streamed read per copy, in bounded memory, and nothing is
//! written but the run record.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Stdio};
use std::sync::Arc;

use serde::Serialize;

use crate::archive::dump::{DumpRows, Found};
use crate::catalog::{self, Manifest, ManifestObject, Role};
use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg;
use crate::report::Progress;
use crate::storage::Storage;

/// One object of one backup in one storage, as verified.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectCheck {
    pub key: String,
    pub role: Option<Role>,
    pub stored_size: u64,
    pub raw_size: u64,
    /// Entries in the archive's table of contents, or in a files tar; for a
    /// base backup, the files checked against its `backup_manifest`.
    pub archive_entries: Option<usize>,
    /// A dump's rows, counted again from the archive, table by table as
    /// many as the manifest says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Tables whose rows were not counted again: their names are neither
    /// ASCII nor in a UTF-8 archive, so they cannot be found by name.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tables_not_recounted: usize,
    /// Why the object is bad; `None` when it is good.
    pub error: Option<String>,
    /// The storage failed while the object was read (it stopped answering,
    /// refused): nothing is known against the object itself.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unread: bool,
}

/// One backup in one storage.
#[derive(Debug, Clone, Serialize)]
pub struct BackupCheck {
    pub backup_id: String,
    pub storage: String,
    pub objects: Vec<ObjectCheck>,
}

impl BackupCheck {
    pub fn ok(&self) -> bool {
        self.objects.iter().all(|o| o.error.is_none())
    }
}

/// Names every bad object and every one the storage could not give, or
/// `None` when all are good.
pub fn failure(checks: &[BackupCheck]) -> Option<String> {
    let named = |unread: bool| -> Vec<String> {
        checks
            .iter()
            .flat_map(|b| {
                b.objects
                    .iter()
                    .filter(move |o| o.unread == unread)
                    .filter_map(move |o| {
                        o.error.as_ref().map(|e| {
                            format!(
                                "backup {} in storage {}: {}: {e}",
                                b.backup_id, b.storage, o.key
                            )
                        })
                    })
            })
            .collect()
    };
    let (bad, unread) = (named(false), named(true));
    let mut parts = Vec::new();
    if !bad.is_empty() {
        parts.push(format!("{} bad object(s): {}", bad.len(), bad.join("; ")));
    }
    if !unread.is_empty() {
        parts.push(format!(
            "{} object(s) the storage could not give: {}",
            unread.len(),
            unread.join("; ")
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// What a failed verify is: corruption when an object was read and found
/// bad, a storage failure when some could only not be read.
pub fn failure_kind(checks: &[BackupCheck]) -> crate::error::Kind {
    let bad = checks
        .iter()
        .flat_map(|b| &b.objects)
        .any(|o| o.error.is_some() && !o.unread);
    if bad {
        crate::error::Kind::Integrity
    } else {
        crate::error::Kind::Storage
    }
}

/// A copy that should be in `storage` and is not.
pub fn missing(storage: &str, id: &str) -> BackupCheck {
    bad_manifest(
        storage,
        id,
        "not complete in this storage (no manifest)".to_owned(),
    )
}

/// A backup whose manifest is what is wrong: missing, or not readable.
fn bad_manifest(storage: &str, id: &str, error: String) -> BackupCheck {
    BackupCheck {
        backup_id: id.to_owned(),
        storage: storage.to_owned(),
        objects: vec![ObjectCheck {
            key: catalog::MANIFEST.to_owned(),
            role: None,
            stored_size: 0,
            raw_size: 0,
            archive_entries: None,
            rows: None,
            tables_not_recounted: 0,
            error: Some(error),
            unread: false,
        }],
    }
}

/// The `pg_restore` that can read archives of `pg_dump` `major`.
pub fn pg_restore_for_archives(db: &Database, major: u32) -> Result<PathBuf> {
    let path = pg::tool_path(db, "pg_restore", major);
    let (found, text) = pg::tool_version(&path)?;
    if found < major {
        return Err(Error::tool(format!(
            "{} is {text}, older than the pg_dump {major} that wrote the backup",
            path.display()
        ))
        .with_hint(format!(
            "install postgresql-client-{major} or point pg_bin_dir at its bin directory"
        )));
    }
    Ok(path)
}

/// Verifies every object of `manifest` in `storage`.
pub async fn verify_backup(
    storage: &Arc<dyn Storage>,
    manifest: &Manifest,
    pg_restore: Option<&Path>,
    keys: Option<&crate::model::EncryptionSpec>,
    progress: &Arc<dyn Progress>,
) -> BackupCheck {
    let mut objects = Vec::new();
    // An encrypted backup needs its key to be read back at all.
    let crypt = catalog::opener(storage.as_ref(), manifest, keys).await;
    for object in &manifest.objects {
        let result = match &crypt {
            Ok(crypt) => {
                verify_object(
                    storage,
                    manifest,
                    object,
                    crypt,
                    pg_restore,
                    progress.clone(),
                )
                .await
            }
            Err(e) => Err(Error::new(e.kind(), e.message())),
        };
        let (read, error, unread) = match result {
            Ok(read) => (read, None, false),
            Err(e) => (
                Read::default(),
                Some(e.message().to_owned()),
                e.kind() == crate::error::Kind::Storage,
            ),
        };
        objects.push(ObjectCheck {
            key: object.key.clone(),
            role: Some(object.role),
            stored_size: object.digest.stored_size,
            raw_size: object.digest.raw_size,
            archive_entries: read.entries,
            rows: read.rows.as_ref().map(|r| r.rows),
            tables_not_recounted: read.rows.as_ref().map_or(0, |r| r.incomparable),
            error,
            unread,
        });
    }
    BackupCheck {
        backup_id: manifest.id.to_string(),
        storage: storage.name().to_owned(),
        objects,
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What reading an object found in it, beyond its digests.
#[derive(Debug, Default)]
struct Read {
    /// Entries of its archive, tar or `backup_manifest`.
    entries: Option<usize>,
    /// The rows of a dump, counted again and found as in the manifest.
    rows: Option<Recounted>,
}

async fn verify_object(
    storage: &Arc<dyn Storage>,
    manifest: &Manifest,
    object: &ManifestObject,
    crypt: &crate::archive::crypt::Crypt,
    pg_restore: Option<&Path>,
    progress: Arc<dyn Progress>,
) -> Result<Read> {
    let crypt = crypt.clone();
    let key = catalog::backup_prefix(&manifest.job, &manifest.id)?.join(&object.key)?;
    let source = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let compression = manifest.compression()?;
    let digest = object.digest.clone();
    let label = format!("{key} in storage {}", storage.name());
    let lister: Option<Box<dyn Lister>> = match (object.role, pg_restore) {
        (Role::Data, Some(pg_restore)) => Some(Box::new(PgRestoreList::start(pg_restore)?)),
        (Role::Data, None) => return Err(Error::internal("no pg_restore to list a dump with")),
        (Role::Files, _) => Some(Box::new(TarList::start()?)),
        (Role::Base, _) => Some(Box::new(BaseList::start(manifest)?)),
        (Role::Globals | Role::BackupManifest, _) => None,
    };
    let object_role = object.role;
    // Counts written as each table's own rows can be counted again from
    // the archive; older ones held inheritance children's rows too.
    let rows = (object.role == Role::Data && manifest.rows_only()).then(|| Rows {
        counter: DumpRows::default(),
        expected: manifest.tables.clone(),
        from_archive: manifest.rows_from_archive(),
    });
    progress.begin(&format!("verify {key}"), Some(digest.stored_size));
    let result = tokio::task::spawn_blocking(move || {
        let on_bytes = |n| progress.advance(n);
        let mut lister = lister;
        let mut rows = rows;
        let unpacked = match &mut lister {
            Some(l) => {
                let mut tee = Tee {
                    first: l,
                    second: rows.as_mut().map(|r| &mut r.counter),
                };
                crate::archive::unpack(
                    source,
                    compression,
                    &crypt,
                    &digest,
                    &mut tee,
                    &label,
                    &on_bytes,
                )
            }
            None => crate::archive::unpack(
                source,
                compression,
                &crypt,
                &digest,
                &mut std::io::sink(),
                &label,
                &on_bytes,
            ),
        };
        progress.end();
        // The digests first: a corrupt object explains pg_restore's complaint.
        let listed = lister.map(|l| l.finish()).transpose();
        unpacked?;
        let entries = listed.map_err(|e| match object_role {
            Role::Base => Error::integrity(format!(
                "its digests match, but {}",
                e.message()
                    .replacen("its backup_manifest", "the tar's backup_manifest", 1)
            )),
            _ => Error::integrity(format!(
                "does not read as {} although its digests match: {}",
                if object_role == Role::Files {
                    "a tar archive"
                } else {
                    "a pg_dump archive"
                },
                e.message()
            )),
        })?;
        let rows = rows.map(Rows::check).transpose()?.flatten();
        Ok::<_, Error>(Read { entries, rows })
    })
    .await
    .map_err(|e| Error::internal(format!("verify task failed: {e}")))?;
    result.map_err(|e| {
        // The label is said once, by the caller, as the object's key.
        let label = format!("{key} in storage {}", storage.name());
        let message = e
            .message()
            .replacen(&format!("{label} is "), "", 1)
            .replacen(&format!("{label} "), "", 1);
        Error::new(e.kind(), message)
    })
}

/// A dump's rows counted again as its raw bytes pass, for the manifest's.
struct Rows {
    counter: DumpRows,
    expected: Vec<pg::TableRows>,
    /// The manifest's counts came from the archive: one that cannot be
    /// counted again is bad. Counts taken by query are checked when the
    /// archive reads, and otherwise left to restore tests.
    from_archive: bool,
}

/// What counting a dump's rows again found, all as the manifest says.
#[derive(Debug, Default)]
struct Recounted {
    rows: u64,
    /// Tables whose names could not be compared with the archive's
    /// (neither ASCII nor UTF-8 there): not counted again.
    incomparable: usize,
}

impl Rows {
    /// What was found, all as the manifest says; `None` when the archive
    /// could not be counted and the manifest's counts did not come from it.
    fn check(self) -> Result<Option<Recounted>> {
        let counted = match self.counter.finish() {
            Ok(counted) => counted,
            Err(why) if self.from_archive => {
                return Err(Error::integrity(format!(
                    "its digests match, but its rows cannot be counted again: {why}"
                )));
            }
            Err(why) => {
                tracing::debug!("rows not counted again: {why}");
                return Ok(None);
            }
        };
        let counted = counted.lookup();
        let mut differ = Vec::new();
        let mut found = Recounted::default();
        for table in &self.expected {
            let rows = match counted.rows_of(&table.schema, &table.name) {
                Found::Rows(rows) => rows,
                // A table without data in the archive restores empty.
                Found::Absent => 0,
                Found::Incomparable => {
                    found.incomparable += 1;
                    continue;
                }
            };
            found.rows += rows;
            if u64::try_from(table.rows).ok() != Some(rows) {
                differ.push(format!(
                    "table {}.{}: {} rows in the manifest, {rows} in the archive",
                    table.schema, table.name, table.rows
                ));
            }
        }
        if differ.is_empty() {
            return Ok(Some(found));
        }
        let shown = differ.len().min(10);
        Err(Error::integrity(format!(
            "its digests match, but {} table(s) do not hold the rows the manifest says: {}{}",
            differ.len(),
            differ[..shown].join("; "),
            if differ.len() > shown { "; ..." } else { "" }
        )))
    }
}

/// Bytes to a lister and, beside it, to a row counter.
struct Tee<'a> {
    first: &'a mut Box<dyn Lister>,
    second: Option<&'a mut DumpRows>,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(rows) = self.second.as_mut() {
            rows.feed(buf);
        }
        self.first.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.first.flush()
    }
}

/// Where a data object's raw bytes go to be read as what they claim to be;
/// `finish` says how many entries it found.
trait Lister: Write + Send {
    fn finish(self: Box<Self>) -> Result<usize>;
}

/// A files backup's tar, read entry by entry on a thread of its own.
struct TarList {
    writer: Option<std::io::PipeWriter>,
    entries: std::thread::JoinHandle<Result<u64>>,
}

impl TarList {
    fn start() -> Result<TarList> {
        let (reader, writer) = std::io::pipe()
            .map_err(|e| Error::io(crate::error::Kind::Internal, "making a pipe", e))?;
        let entries = std::thread::Builder::new()
            .name("verify-tar".into())
            .spawn(move || crate::archive::tree::list(reader))
            .map_err(|e| Error::internal(format!("cannot start a thread: {e}")))?;
        Ok(TarList {
            writer: Some(writer),
            entries,
        })
    }
}

impl Lister for TarList {
    fn finish(mut self: Box<Self>) -> Result<usize> {
        drop(self.writer.take());
        let entries = self
            .entries
            .join()
            .map_err(|_| Error::internal("reading the tar's entries failed"))??;
        Ok(usize::try_from(entries).unwrap_or(usize::MAX))
    }
}

impl Write for TarList {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A reader that stopped (a broken tar) is reported by finish(); the
        // rest is still hashed.
        if let Some(writer) = &mut self.writer
            && writer.write_all(buf).is_err()
        {
            self.writer = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A base backup's tar checked against its `backup_manifest` while it
/// streams; its entries are the files checked.
struct BaseList(crate::pg::basebackup::Checker);

impl BaseList {
    fn start(manifest: &Manifest) -> Result<BaseList> {
        use crate::pg::basebackup::{Algorithm, Checker};
        // The files stream before the manifest that says how they are
        // checksummed: the job's manifest said it when the backup was made.
        let algorithm = match manifest.physical.as_ref() {
            None => Algorithm::Crc32c,
            Some(p) => Algorithm::parse(&p.manifest_checksums).ok_or_else(|| {
                Error::integrity(format!(
                    "backup {}: its manifest names checksum algorithm '{}', which \
                     backup_manifest does not have",
                    manifest.id, p.manifest_checksums
                ))
            })?,
        };
        Ok(BaseList(Checker::start(algorithm)?))
    }
}

impl Lister for BaseList {
    fn finish(self: Box<Self>) -> Result<usize> {
        let summary = self.0.finish()?;
        Ok(usize::try_from(summary.files).unwrap_or(usize::MAX))
    }
}

impl Write for BaseList {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `pg_restore --list` reading the raw archive from its stdin. It stops
/// reading once it has the table of contents; what follows is still hashed,
/// so the sink swallows the rest instead of failing.
struct PgRestoreList {
    program: pg::ClientProgram,
    stdin: Option<ChildStdin>,
    entries: std::thread::JoinHandle<usize>,
}

impl PgRestoreList {
    fn start(pg_restore: &Path) -> Result<PgRestoreList> {
        let mut program = pg::spawn(
            pg_restore,
            vec!["--list".into()],
            &Database::unresolved(),
            Stdio::piped(),
            Stdio::piped(),
        )?;
        let stdin = program.child.stdin.take();
        let stdout = program
            .child
            .stdout
            .take()
            .ok_or_else(|| Error::internal("pg_restore has no stdout"))?;
        // Read as it comes: a long listing must not fill the pipe while we
        // are blocked writing to its stdin.
        let entries = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
                .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
                .count()
        });
        Ok(PgRestoreList {
            program,
            stdin,
            entries,
        })
    }
}

impl Lister for PgRestoreList {
    fn finish(mut self: Box<Self>) -> Result<usize> {
        drop(self.stdin.take());
        self.program.wait()?;
        self.entries
            .join()
            .map_err(|_| Error::internal("reading pg_restore's listing failed"))
    }
}

impl Write for PgRestoreList {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(stdin) = &mut self.stdin
            && stdin.write_all(buf).is_err()
        {
            // pg_restore has what it needs (or gave up, which finish() says).
            self.stdin = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which backups `backup verify` reads.
#[derive(Debug, Clone)]
pub enum Selection {
    Latest,
    Id(crate::model::BackupId),
    All,
}

/// One step of a verify, in the order its results are shown.
pub enum Step {
    /// Found before anything was read: a manifest that does not read, a
    /// named backup a storage lacks, an archive the job cannot check.
    Known(BackupCheck),
    /// A backup to read back, with the `pg_restore` that lists its archive.
    Read {
        storage: Arc<dyn Storage>,
        manifest: Box<Manifest>,
        pg_restore: Option<PathBuf>,
    },
}

/// What a verify reads, and what it found before reading.
pub struct VerifyPlan {
    pub steps: Vec<Step>,
    /// The storages read: they take the run record.
    pub storages: Vec<String>,
}

/// The plan of a verify of job `name` over `storages`: every storage is
/// listed first, so a manifest that does not read is reported as bad, never
/// passed over for another backup.
pub async fn plan(
    name: &str,
    spec: &crate::model::BackupJob,
    storages: &[Arc<dyn Storage>],
    which: &Selection,
) -> Result<VerifyPlan> {
    use crate::model::BackupId;
    let mut listings = Vec::new();
    let mut steps = Vec::new();
    let mut unreadable = Vec::new();
    for storage in storages {
        match catalog::list(storage.as_ref(), name).await {
            Ok(listing) => {
                unreadable.extend(
                    listing
                        .unreadable
                        .into_iter()
                        .map(|u| (storage.name().to_owned(), u)),
                );
                listings.push((storage.clone(), listing.backups));
            }
            Err(e) => return Err(e.context(format!("job {name}: storage {}", storage.name()))),
        }
    }
    let no_backups = || {
        Error::not_found(format!("job {name} has no complete backups"))
            .with_hint(format!("run `backup run {name}` first"))
    };
    let wanted: Option<BackupId> = match which {
        Selection::All => None,
        Selection::Id(id) => Some(id.clone()),
        Selection::Latest => Some(
            listings
                .iter()
                .flat_map(|(_, b)| b.iter().map(|m| m.id.clone()))
                .chain(unreadable.iter().map(|(_, u)| u.id.clone()))
                .max()
                .ok_or_else(no_backups)?,
        ),
    };
    let is_wanted = |id: &BackupId| wanted.as_ref().is_none_or(|w| w == id);
    if let Selection::Id(id) = which
        && !listings.iter().any(|(_, b)| b.iter().any(|m| &m.id == id))
        && !unreadable.iter().any(|(_, u)| &u.id == id)
    {
        return Err(Error::not_found(format!(
            "job {name} has no complete backup {id} in any of the storages read"
        ))
        .with_hint(format!("`backup list --job {name}` shows its backups")));
    }
    for (storage, problem) in unreadable.iter().filter(|(_, u)| is_wanted(&u.id)) {
        steps.push(Step::Known(bad_manifest(
            storage,
            problem.id.as_str(),
            problem.to_string(),
        )));
    }
    // A passphrase not on this host makes no backup bad: it is the
    // configuration error it is, said once, before anything is read.
    if let Some(passphrase) = spec.encryption.as_ref().and_then(|e| e.passphrase.as_ref())
        && listings
            .iter()
            .flat_map(|(_, b)| b)
            .any(|m| m.encryption.is_some() && is_wanted(&m.id))
    {
        passphrase.resolve()?;
    }
    let mut tools: std::collections::BTreeMap<u32, PathBuf> = Default::default();
    for (storage, backups) in listings {
        let selected = with_chains(storage.name(), &backups, is_wanted, &mut steps);
        if let Some(id) = &wanted
            && !backups.iter().any(|m| &m.id == id)
            && !unreadable
                .iter()
                .any(|(s, u)| s == storage.name() && &u.id == id)
        {
            steps.push(Step::Known(missing(storage.name(), id.as_str())));
        }
        for manifest in selected {
            // A files backup is read as a tar: no pg_restore needed.
            let pg_restore = match (manifest.object(Role::Data), spec.database()) {
                (None, _) => None,
                (Some(object), None) => {
                    // Made while the job was a database backup: said for
                    // this backup, and the others are still verified.
                    steps.push(Step::Known(BackupCheck {
                        backup_id: manifest.id.to_string(),
                        storage: storage.name().to_owned(),
                        objects: vec![ObjectCheck {
                            key: object.key.clone(),
                            role: Some(object.role),
                            stored_size: object.digest.stored_size,
                            raw_size: object.digest.raw_size,
                            archive_entries: None,
                            rows: None,
                            tables_not_recounted: 0,
                            error: Some(format!(
                                "a pg_dump archive in files job {name}: not verified; \
                                 the job was a database backup when it was made"
                            )),
                            unread: false,
                        }],
                    }));
                    continue;
                }
                (Some(_), Some(db)) => {
                    let major =
                        pg::command::parse_tool_version(&manifest.pg_dump_version).unwrap_or(0);
                    Some(match tools.get(&major) {
                        Some(p) => p.clone(),
                        None => {
                            let p = pg_restore_for_archives(db, major)?;
                            tools.insert(major, p.clone());
                            p
                        }
                    })
                }
            };
            steps.push(Step::Read {
                storage: storage.clone(),
                manifest: Box::new(manifest),
                pg_restore,
            });
        }
    }
    if steps.is_empty() {
        return Err(no_backups());
    }
    Ok(VerifyPlan {
        steps,
        storages: storages.iter().map(|s| s.name().to_owned()).collect(),
    })
}

/// The backups of one storage a verify reads: those wanted, and for an
/// incremental one every backup before it back to the full one, each once,
/// oldest first. A chain that is not whole is a bad backup, said in `steps`.
fn with_chains(
    storage: &str,
    backups: &[Manifest],
    is_wanted: impl Fn(&crate::model::BackupId) -> bool,
    steps: &mut Vec<Step>,
) -> Vec<Manifest> {
    let bases: Vec<&Manifest> = backups.iter().filter(|m| m.physical.is_some()).collect();
    let mut ids = std::collections::BTreeSet::new();
    for m in backups.iter().filter(|m| is_wanted(&m.id)) {
        if m.physical
            .as_ref()
            .and_then(|p| p.incremental_of.as_ref())
            .is_none()
        {
            ids.insert(m.id.clone());
            continue;
        }
        match crate::jobs::pitr::plan::chain_of(m, &bases) {
            Ok(chain) => {
                ids.extend(chain.into_iter().map(|c| c.id));
                ids.insert(m.id.clone());
            }
            Err(why) => steps.push(Step::Known(BackupCheck {
                backup_id: m.id.to_string(),
                storage: storage.to_owned(),
                objects: vec![ObjectCheck {
                    key: "chain".to_owned(),
                    role: None,
                    stored_size: 0,
                    raw_size: 0,
                    archive_entries: None,
                    rows: None,
                    tables_not_recounted: 0,
                    error: Some(format!("{why}: it cannot be restored")),
                    unread: false,
                }],
            })),
        }
    }
    backups
        .iter()
        .filter(|m| ids.contains(&m.id))
        .cloned()
        .collect()
}

/// Carries out a plan: each backup read back in turn.
pub async fn execute(
    plan: &VerifyPlan,
    keys: Option<&crate::model::EncryptionSpec>,
    progress: &Arc<dyn Progress>,
) -> Vec<BackupCheck> {
    let mut checks = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        match step {
            Step::Known(check) => checks.push(check.clone()),
            Step::Read {
                storage,
                manifest,
                pg_restore,
            } => {
                tracing::info!(
                    "verifying backup {} in storage {}",
                    manifest.id,
                    storage.name()
                );
                checks.push(
                    verify_backup(storage, manifest, pg_restore.as_deref(), keys, progress).await,
                );
            }
        }
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(schema: &str, name: &str, rows: i64) -> pg::TableRows {
        pg::TableRows {
            schema: schema.into(),
            name: name.into(),
            rows,
        }
    }

    /// The rows of `fixtures/rows-15.dump` counted again against `expected`.
    fn recount(
        archive: &[u8],
        expected: Vec<pg::TableRows>,
        from_archive: bool,
    ) -> Result<Option<u64>> {
        let mut counter = DumpRows::default();
        counter.feed(archive);
        Ok(Rows {
            counter,
            expected,
            from_archive,
        }
        .check()?
        .map(|r| r.rows))
    }

    #[test]
    fn rows_counted_again_are_the_manifests_or_each_differing_table_is_named() {
        let archive = include_bytes!("../archive/fixtures/rows-15.dump");
        let good = vec![
            table("public", "t", 5),
            table("public", "wide", 2000),
            table("s p", "\"Odd\" name", 2),
        ];
        assert_eq!(recount(archive, good.clone(), true).unwrap(), Some(2007));
        let mut edited = good;
        edited[1].rows = 1999;
        edited[2].rows = 3;
        let e = recount(archive, edited, true).unwrap_err();
        assert_eq!(e.kind(), crate::error::Kind::Integrity);
        assert!(
            e.message().contains("2 table(s)")
                && e.message()
                    .contains("table public.wide: 1999 rows in the manifest, 2000 in the archive")
                && e.message()
                    .contains("table s p.\"Odd\" name: 3 rows in the manifest, 2 in the archive"),
            "{e}"
        );
        // A table the archive holds no rows for restores empty: 0 is right.
        assert_eq!(
            recount(archive, vec![table("public", "gone", 0)], true).unwrap(),
            Some(0)
        );
    }

    #[test]
    fn an_archive_that_cannot_be_counted_fails_only_counts_that_came_from_it() {
        let cut = &include_bytes!("../archive/fixtures/rows-15.dump")[..5000];
        let e = recount(cut, vec![table("public", "t", 5)], true).unwrap_err();
        assert!(e.message().contains("cannot be counted again"), "{e}");
        assert_eq!(
            recount(cut, vec![table("public", "t", 5)], false).unwrap(),
            None
        );
    }
    use crate::pg::basebackup::samples;
    use crate::storage::MemoryStorage;

    /// A physical backup of one uncompressed `base.tar` holding `tar`,
    /// whose digests are those of `digested`.
    fn physical(storage: &MemoryStorage, tar: &[u8], digested: &[u8]) -> Manifest {
        let id = "20260101T000000Z";
        let sha = crate::archive::sha256_hex(digested);
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "job": "base", "database": "app", "dbname": "",
            "server_version": "15.18", "pg_dump_version": "",
            "snapshot_at": "2026-01-01T00:00:10Z", "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:10Z", "compression": "none", "encryption": null,
            "objects": [{ "key": "base.tar", "role": "base", "raw_size": digested.len(),
                "raw_sha256": sha, "stored_size": digested.len(), "stored_sha256": sha }],
            "tables": [],
            "physical": { "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
                "start_time": "2026-01-01T00:00:00Z", "stop_time": "2026-01-01T00:00:10Z",
                "wal_segment_size": 16777216, "wal_start": "000000010000000000000002",
                "wal_stop": "000000010000000000000002", "manifest_checksums": "CRC32C" }
        }))
        .unwrap();
        let key = catalog::backup_prefix("base", &manifest.id)
            .unwrap()
            .join("base.tar")
            .unwrap();
        storage.put(&key, tar.to_vec());
        manifest
    }

    #[tokio::test]
    async fn a_base_backup_is_read_against_the_backup_manifest_in_its_tar() {
        let progress: Arc<dyn Progress> = Arc::new(crate::report::Hidden);
        let good = samples::tar(samples::FILES, &samples::manifest(samples::FILES));
        let memory = MemoryStorage::new("mem");
        let manifest = physical(&memory, &good, &good);
        let storage: Arc<dyn Storage> = Arc::new(memory);
        let check = verify_backup(&storage, &manifest, None, None, &progress).await;
        assert!(check.ok(), "{check:?}");
        assert_eq!(check.objects[0].archive_entries, Some(4));

        // The digests in manifest.json match what is stored, but a file
        // changed before the tar was hashed: only backup_manifest can tell.
        let mut files = samples::FILES.to_vec();
        files[1] = ("PG_VERSION", b"16\n");
        let changed = samples::tar(&files, &samples::manifest(samples::FILES));
        let memory = MemoryStorage::new("mem");
        let manifest = physical(&memory, &changed, &changed);
        let storage: Arc<dyn Storage> = Arc::new(memory);
        let check = verify_backup(&storage, &manifest, None, None, &progress).await;
        let error = check.objects[0].error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("its digests match, but PG_VERSION has CRC32C "),
            "{error}"
        );
        assert!(
            error.contains("the tar's backup_manifest says 8a744722"),
            "{error}"
        );
        assert!(!check.objects[0].unread);
        assert_eq!(failure_kind(&[check]), crate::error::Kind::Integrity);
    }
}
