//! A restore: plan first (which backup, which storage, what happens to the
//! target), then carry the plan out and prove the result against the manifest.
//!
//! Storage reader → stored SHA-256 → decompress → raw SHA-256 → `pg_restore`,
//! streamed into its stdin; with `--jobs N > 1` spooled to a temporary file
//! first, because a parallel `pg_restore` must seek. Afterwards every table's
//! row count is compared with the manifest; any difference fails the restore.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::archive;
use crate::archive::crypt::{self, Crypt};
use crate::catalog::{self, Manifest, Role, Selector};
use crate::error::Kind;
use crate::error::{Error, Result};
use crate::jobs::proof;
use crate::model::{BackupJob, Database, Job};
use crate::pg::{self, command::RestoreFlags};
use crate::report::Progress;
use crate::storage::Storage;
use crate::time;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub selector: Selector,
    pub target_db: String,
    /// Read from this storage; by default the first of the job's storages that
    /// has the backup.
    pub storage: Option<String>,
    pub flags: RestoreFlags,
}

/// Everything a restore will do, decided before anything is touched.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub job: String,
    pub timezone: TimeZone,
    pub backup: Manifest,
    pub storage: String,
    pub target_db: String,
    pub requested_at: Option<Timestamp>,
    /// `None`: the target does not exist and will be created.
    pub target: Option<TargetState>,
    pub flags: RestoreFlags,
    /// How the backup's objects open (encrypted ones: checked identities).
    pub crypt: Crypt,
}

#[derive(Debug, Clone)]
pub struct TargetState {
    /// What the existing target holds; `None` when it is empty.
    pub contents: Option<String>,
}

impl RestorePlan {
    /// Whether carrying the plan out replaces objects that exist now.
    pub fn overwrites(&self) -> bool {
        matches!(&self.target, Some(TargetState { contents: Some(_) }))
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        writeln!(f, "restore plan for job {}:", self.job)?;
        writeln!(f, "  backup:    {} from storage {}", b.id, self.storage)?;
        writeln!(
            f,
            "  data as of {}",
            time::show(b.snapshot_at, &self.timezone)
        )?;
        if let Some(at) = self.requested_at {
            writeln!(
                f,
                "  requested  {} ({} after the backup's snapshot)",
                time::show(at, &self.timezone),
                time::show_duration(at.duration_since(b.snapshot_at))
            )?;
        }
        writeln!(
            f,
            "  source:    database {} on PostgreSQL {}, {} tables, {} raw",
            b.dbname,
            b.server_version,
            b.tables.len(),
            crate::report::bytes_human(b.raw_size())
        )?;
        match &self.target {
            None => writeln!(
                f,
                "  target:    database {} (will be created)",
                self.target_db
            )?,
            Some(TargetState { contents: None }) => writeln!(
                f,
                "  target:    database {} (exists, empty)",
                self.target_db
            )?,
            Some(TargetState {
                contents: Some(what),
            }) => writeln!(
                f,
                "  target:    database {} (exists: {what}; it is dropped and re-created empty, \
                 keeping its owner, encoding, settings and grants)",
                self.target_db
            )?,
        }
        let mut how = vec![if self.flags.jobs > 1 {
            format!(
                "{} parallel jobs (spooled to a temporary file)",
                self.flags.jobs
            )
        } else {
            "streamed, 1 job".to_owned()
        }];
        if self.flags.no_owner {
            how.push("no owner".to_owned());
        }
        if self.flags.no_acl {
            how.push("no privileges".to_owned());
        }
        writeln!(f, "  restore:   {}", how.join(", "))?;
        write!(
            f,
            "  then:      compare the row counts of {} tables with the manifest",
            b.tables.len()
        )
    }
}

/// Decides what a restore will do, refusing what it must not do.
pub async fn plan(
    job: &Job,
    spec: &BackupJob,
    target: &Database,
    storages: &[Arc<dyn Storage>],
    request: &RestoreRequest,
) -> Result<RestorePlan> {
    let (backup, storage) =
        choose(job, storages, request.storage.as_deref(), &request.selector).await?;
    // Before the target is even looked at: a key that cannot open the
    // backup ends the restore here.
    let crypt = crypt::opener(named(storages, &storage)?.as_ref(), &backup, spec.keys()).await?;
    let admin = pg::connect(target, Some("postgres")).await?;
    let target = if pg::database_exists(&admin, &request.target_db).await? {
        let conn = pg::connect(target, Some(&request.target_db)).await?;
        Some(TargetState {
            contents: pg::describe_contents(&conn).await?,
        })
    } else {
        None
    };
    let plan = RestorePlan {
        job: job.name.clone(),
        timezone: job.timezone.clone(),
        backup,
        storage,
        target_db: request.target_db.clone(),
        requested_at: match request.selector {
            Selector::At(at) => Some(at),
            _ => None,
        },
        target,
        flags: request.flags,
        crypt,
    };
    if plan.overwrites() && !plan.flags.clean {
        let what = plan
            .target
            .as_ref()
            .and_then(|t| t.contents.clone())
            .unwrap_or_default();
        return Err(Error::refused(format!(
            "database {} exists and is not empty ({what}); nothing was changed",
            plan.target_db
        ))
        .with_hint(
            "restore into a new --target-db, or pass --clean to drop and re-create the database",
        ));
    }
    if plan.overwrites() {
        let sessions = pg::other_sessions(&admin, &plan.target_db).await?;
        if !sessions.is_empty() {
            return Err(Error::refused(format!(
                "database {} has {} other session(s) connected: {}; nothing was changed",
                plan.target_db,
                sessions.len(),
                sessions.join(", ")
            ))
            .with_hint(
                "stop the applications that use it: --clean drops and re-creates the database",
            ));
        }
    }
    Ok(plan)
}

/// The backup `selector` names, and the storage it is read from: the first
/// of `storages` (or the one named `only`) that answers and has it.
pub async fn choose(
    job: &Job,
    storages: &[Arc<dyn Storage>],
    only: Option<&str>,
    selector: &Selector,
) -> Result<(Manifest, String)> {
    let candidates: Vec<&Arc<dyn Storage>> = match only {
        Some(name) => {
            let found = storages.iter().find(|s| s.name() == name).ok_or_else(|| {
                Error::usage(format!(
                    "job {} does not store backups in storage '{name}'",
                    job.name
                ))
                .with_hint(format!(
                    "the job's storages: {}",
                    storages
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            vec![found]
        }
        None => storages.iter().collect(),
    };
    // The backup is chosen from the first storage that answers; the union of
    // all would pick a backup some storage lacks and hide a failing one.
    let mut last_error = None;
    let mut chosen = None;
    for storage in candidates {
        let listing = match catalog::list(storage.as_ref(), &job.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("storage {}: {e}", storage.name());
                last_error = Some(e);
                continue;
            }
        };
        for problem in &listing.unreadable {
            tracing::warn!("{problem}");
        }
        match catalog::select(&listing.backups, selector, &job.name, &job.timezone) {
            Ok(m) => {
                chosen = Some((m.clone(), storage.name().to_owned()));
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    chosen.ok_or_else(|| last_error.unwrap_or_else(|| Error::internal("no storage to read")))
}

/// What a finished restore proved.
#[derive(Debug)]
pub struct RestoreOutcome {
    pub tables_checked: usize,
    pub rows_checked: i64,
}

/// Carries out a plan. Any failure after `pg_restore` started leaves a target
/// that must not be trusted, and the error says so.
pub async fn execute(
    plan: &RestorePlan,
    db: &Database,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
) -> Result<RestoreOutcome> {
    let admin = pg::connect(db, Some("postgres")).await?;
    let pg_restore = pg_restore_for(&admin, db, &plan.backup).await?;
    if plan.target.is_none() {
        tracing::info!("creating database {}", plan.target_db);
        pg::create_database(&admin, &plan.target_db).await?;
    } else if plan.overwrites() {
        let props = pg::database_properties(&admin, &plan.target_db).await?;
        tracing::info!("dropping and re-creating database {}", plan.target_db);
        pg::recreate_database(&admin, &plan.target_db, &props)
            .await
            .map_err(|e| {
                e.with_hint(format!(
                    "database {} may be gone: restore again into it once the cause is fixed",
                    plan.target_db
                ))
            })?;
    }
    drop(admin);

    let untrusted = |e: Error| {
        let cause = cause_hint(&e).map_or(String::new(), |h| format!("{h}; "));
        let hint = format!(
            "{cause}the content of database {} must not be trusted: drop it, or restore again with --clean",
            plan.target_db
        );
        e.context(format!(
            "restore of backup {} into {}",
            plan.backup.id, plan.target_db
        ))
        .with_hint(hint)
    };
    load(plan, db, storage, &pg_restore, progress)
        .await
        .map_err(untrusted)?;
    let conn = pg::connect(db, Some(&plan.target_db))
        .await
        .map_err(untrusted)?;
    let proof = proof::prove(&conn, &plan.backup, &[])
        .await
        .map_err(untrusted)?;
    if let Some(failure) = proof.failure() {
        return Err(untrusted(Error::integrity(failure)));
    }
    Ok(RestoreOutcome {
        tables_checked: plan.backup.tables.len(),
        rows_checked: proof.rows,
    })
}

/// The `pg_restore` to use on the server `admin` is connected to: no older
/// than the server, nor than the `pg_dump` that wrote `backup`.
pub async fn pg_restore_for(
    admin: &pg::Connection,
    db: &Database,
    backup: &Manifest,
) -> Result<std::path::PathBuf> {
    let server = pg::server_version(admin).await?;
    let pg_restore = pg::tool_path(db, "pg_restore", server.major);
    let version = pg::require_tool_at_least(&pg_restore, &server)?;
    let archive_major = pg::command::parse_tool_version(&backup.pg_dump_version).unwrap_or(0);
    let restore_major = pg::command::parse_tool_version(&version).unwrap_or(0);
    if restore_major < archive_major {
        return Err(Error::tool(format!(
            "{} is version {restore_major}, older than the pg_dump {archive_major} that wrote backup {}",
            pg_restore.display(),
            backup.id
        ))
        .with_hint(format!("install postgresql-client-{archive_major} or set pg_bin_dir")));
    }
    Ok(pg_restore)
}

/// A fix for the failures of `pg_restore` that have a usual cause.
fn cause_hint(e: &Error) -> Option<&'static str> {
    let m = e.message();
    if m.contains("role \"") && m.contains("does not exist") {
        Some(
            "the backup's roles are missing on this server: create them from the backup's \
             globals.sql, or pass --no-owner --no-acl",
        )
    } else if m.contains("permission denied") {
        Some("the role in the url lacks a privilege the backup needs; try --no-owner --no-acl")
    } else {
        None
    }
}

/// Streams the backup's data object into `pg_restore` on the plan's target,
/// verifying both digests on the way.
pub async fn load(
    plan: &RestorePlan,
    db: &Database,
    storage: &Arc<dyn Storage>,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let object = plan.backup.object(Role::Data).ok_or_else(|| {
        Error::integrity(format!(
            "backup {}: the manifest lists no data object",
            plan.backup.id
        ))
    })?;
    let key = catalog::backup_prefix(&plan.job, &plan.backup.id)?.join(&object.key)?;
    let stream = Stream {
        source: tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?),
        compression: plan.backup.compression()?,
        crypt: plan.crypt.clone(),
        digest: object.digest.clone(),
        label: format!("{key} in storage {}", storage.name()),
    };
    let url = pg::command::with_dbname(&db.url, &plan.target_db);
    progress.begin(
        &format!("restore {}", plan.backup.id),
        Some(object.digest.stored_size),
    );
    let result = if plan.flags.jobs > 1 {
        restore_spooled(stream, plan.flags, &url, db, pg_restore, progress.clone()).await
    } else {
        restore_streamed(stream, plan.flags, &url, db, pg_restore, progress.clone()).await
    };
    progress.end();
    result
}

/// A stored object on its way out of storage.
struct Stream {
    source: tokio_util::io::SyncIoBridge<crate::storage::ObjectReader>,
    compression: crate::model::Compression,
    crypt: Crypt,
    digest: archive::ObjectDigest,
    label: String,
}

impl Stream {
    /// Verifies and decompresses into `sink`. Blocking.
    fn unpack_into(self, sink: &mut dyn Write, progress: &dyn Progress) -> Result<()> {
        let on_bytes = |n| progress.advance(n);
        archive::unpack(
            self.source,
            self.compression,
            &self.crypt,
            &self.digest,
            sink,
            &self.label,
            &on_bytes,
        )
    }
}

/// Straight into `pg_restore`'s stdin: no temporary file, one job.
async fn restore_streamed(
    stream: Stream,
    flags: RestoreFlags,
    url: &str,
    db: &Database,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let args = pg::command::pg_restore_args(url, flags, None);
    let mut child = pg::spawn(pg_restore, args, db, Stdio::piped(), Stdio::null())?;
    let mut stdin = child
        .child
        .stdin
        .take()
        .ok_or_else(|| Error::internal("pg_restore has no stdin"))?;
    // A cancelled restore (timeout, SIGTERM) stops pg_restore with it.
    let _stop = child.stop_on_drop();
    tokio::task::spawn_blocking(move || {
        let streamed = stream.unpack_into(&mut stdin, progress.as_ref());
        drop(stdin);
        let restored = child.wait();
        match (streamed, restored) {
            // A corrupt archive explains pg_restore's failure, not the reverse.
            (Err(e), _) if e.kind() != Kind::Tool => Err(e),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
    .await
    .map_err(|e| Error::internal(format!("restore task failed: {e}")))?
}

/// Through a temporary file, because a parallel `pg_restore` must seek. The
/// archive is verified whole before `pg_restore` sees a byte of it.
async fn restore_spooled(
    stream: Stream,
    flags: RestoreFlags,
    url: &str,
    db: &Database,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let spool = tokio::task::spawn_blocking(move || -> Result<tempfile::NamedTempFile> {
        let mut file = tempfile::Builder::new()
            .prefix("backup-restore-")
            .suffix(".dump")
            .tempfile()
            .map_err(|e| {
                Error::io(Kind::Internal, "creating a spool file", e)
                    .with_hint("set TMPDIR to a directory with room for the uncompressed archive")
            })?;
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, file.as_file_mut());
        stream.unpack_into(&mut sink, progress.as_ref())?;
        sink.flush()
            .map_err(|e| Error::io(Kind::Internal, "writing the spool file", e))?;
        drop(sink);
        Ok(file)
    })
    .await
    .map_err(|e| Error::internal(format!("spooling task failed: {e}")))??;
    let args = pg::command::pg_restore_args(url, flags, Some(spool.path()));
    let child = pg::spawn(pg_restore, args, db, Stdio::null(), Stdio::null())?;
    let _stop = child.stop_on_drop();
    let result = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| Error::internal(format!("waiting for pg_restore: {e}")))?;
    // Removed only now that pg_restore is done with it.
    drop(spool);
    result
}

/// The storage a plan chose, among `storages` (opened again to carry it out).
pub fn named<'a>(storages: &'a [Arc<dyn Storage>], name: &str) -> Result<&'a Arc<dyn Storage>> {
    storages
        .iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| Error::internal(format!("storage {name} vanished")))
}
