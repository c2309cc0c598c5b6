//! `type = "files"` jobs: a directory (camp-backend's `uploads`) backed up as
//! one tar stream through the same pipeline as a dump (compression, checksums,
//! encryption) into the job's storages, with a manifest like any backup, and
//! restored with `backup restore --target-dir`.
//!
//! Such a job has no database, so its run lock cannot be an advisory lock on
//! a server: it is a lock file of this host ([`crate::lock::LocalLock`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;

use crate::archive::{self, crypt::Crypt, tree};
use crate::catalog::{self, Manifest, ManifestObject, Role, Selector};
use crate::error::{Error, Kind, Result};
use crate::model::{BackupJob, Clock, Job};
use crate::report::Progress;
use crate::storage::Storage;

use super::backup::{self, BackupOutcome};

/// How many left-out entries a manifest's warning names before "and N more".
const SKIPPED_NAMED: usize = 10;

/// Backs up directory `dir` of files job `job`.
pub async fn run(
    job: &Job,
    spec: &BackupJob,
    dir: &Path,
    storages: &[Arc<dyn Storage>],
    clock: &dyn Clock,
    progress: Arc<dyn Progress>,
) -> Result<BackupOutcome> {
    let started_at = clock.now();
    // Said before any storage is touched: a missing directory is a host
    // problem (an unmounted volume), not a storage one.
    match tokio::fs::metadata(dir).await {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            // The caller names the job: `backup run` ("job fs: ..."), the
            // run record and its log line (both the job's own).
            return Err(
                Error::config(format!("path {} is not a directory", dir.display()))
                    .with_hint("a files job's `path` names the directory to back up"),
            );
        }
        Err(e) => {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                Kind::NotFound
            } else {
                Kind::Storage
            };
            return Err(Error::io(
                kind,
                format!("reading directory {}", dir.display()),
                e,
            )
            .with_hint("check the job's `path`, that its volume is mounted on this host, and that the user running backup may read it"));
        }
    }
    let mut failed = Vec::new();
    let id = backup::unused_id(storages, &job.name, started_at, &mut failed).await?;
    let storages = backup::without_failed(storages, &failed);
    let prefix = catalog::backup_prefix(&job.name, &id)?;
    tracing::info!(
        "job {}: backing up directory {} as {id}",
        job.name,
        dir.display()
    );
    let name = catalog::object_name(Role::Files, spec.compression, spec.encryption.is_some());
    let crypt = backup::seal(spec)?;
    let (stream, walker) = tree::spawn_pack(dir.to_path_buf())?;
    let destinations = backup::open_writers(&storages, &prefix.join(&name)?).await?;
    let mut packed = None;
    let walked = async {
        let walk = tokio::task::spawn_blocking(move || walker.join())
            .await
            .map_err(|e| Error::internal(format!("waiting for the tree's walk: {e}")))?
            .map_err(|_| Error::internal("the tree's walk panicked"))?;
        packed = Some(walk?);
        Ok(())
    };
    progress.begin(&format!("tar {}", dir.display()), None);
    let on_bytes = {
        let progress = progress.clone();
        Arc::new(move |n| progress.advance(n))
    };
    let stored = archive::store(
        stream,
        spec.compression,
        crypt,
        destinations,
        &format!("{prefix}/{name}"),
        on_bytes,
        walked,
    )
    .await;
    progress.end();
    let (digest, deliveries) =
        stored.map_err(|e| e.context(format!("backing up directory {}", dir.display())))?;
    let packed = packed.ok_or_else(|| Error::internal("the tree's walk left no summary"))?;
    let healthy = backup::keep_delivered(&storages, deliveries, &mut failed);

    let mut warnings = Vec::new();
    for (entries, what) in [
        (&packed.skipped, "entries are not in this backup"),
        (&packed.changed, "files changed while they were read"),
    ] {
        if entries.is_empty() {
            continue;
        }
        let mut named: Vec<&str> = entries
            .iter()
            .take(SKIPPED_NAMED)
            .map(String::as_str)
            .collect();
        let more = entries.len().saturating_sub(SKIPPED_NAMED);
        let tail = format!("and {more} more");
        if more > 0 {
            named.push(&tail);
        }
        let warning = format!("{} {what}: {}", entries.len(), named.join("; "));
        tracing::warn!("job {}: {warning}", job.name);
        warnings.push(warning);
    }
    let manifest = Manifest {
        format: catalog::FORMAT,
        id,
        job: job.name.clone(),
        database: String::new(),
        dbname: String::new(),
        server_version: String::new(),
        pg_dump_version: String::new(),
        // The walk began here; a file written during it may or may not be in.
        snapshot_at: started_at,
        started_at,
        finished_at: clock.now(),
        compression: spec.compression.name().to_owned(),
        encryption: spec
            .encryption
            .as_ref()
            .map(|_| archive::crypt::AGE.to_owned()),
        objects: vec![ManifestObject {
            key: name,
            role: Role::Files,
            digest,
        }],
        tables: Vec::new(),
        extensions: Vec::new(),
        warnings,
        directory: Some(dir.display().to_string()),
        tree: Some(packed),
        system_identifier: None,
        database_properties: None,
        row_counts: None,
        rows_from: None,
        physical: None,
    };
    backup::conclude(&healthy, &prefix, manifest, failed).await
}

/// How a restore treats a target directory that is not empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replace {
    /// `--force`: replace it.
    pub force: bool,
    /// `--in-place`: write into it, replacing files of the same name and
    /// leaving the others (as `tar -x` does), instead of restoring beside it
    /// and swapping.
    pub in_place: bool,
    /// `--keep-failed`: a copy beside the target that fails stays.
    pub keep_failed: bool,
}

/// Everything a restore into a directory will do, decided before anything
/// is written.
#[derive(Debug, Clone)]
pub struct DirRestorePlan {
    pub job: String,
    pub timezone: jiff::tz::TimeZone,
    pub backup: Manifest,
    pub storage: String,
    pub target: PathBuf,
    pub requested_at: Option<Timestamp>,
    /// How many entries the target holds now; 0 when empty or missing.
    pub existing: usize,
    pub replace: Replace,
    /// Where the backup is restored before it is swapped in, when it is.
    pub staging: Option<PathBuf>,
    /// Copies interrupted restores beside the target left: removed first.
    pub leftovers: Vec<PathBuf>,
    pub crypt: Crypt,
}

impl std::fmt::Display for DirRestorePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.backup;
        writeln!(f, "restore plan for job {}:", self.job)?;
        writeln!(
            f,
            "  backup:   {} (directory {}, as of {})",
            b.id,
            b.directory.as_deref().unwrap_or("?"),
            crate::time::show(b.snapshot_at, &self.timezone)
        )?;
        if let Some(t) = &b.tree {
            writeln!(
                f,
                "  holds:    {} files, {} directories, {} symlinks, {}",
                t.files,
                t.directories,
                t.symlinks,
                crate::report::bytes_human(t.bytes)
            )?;
        }
        writeln!(f, "  from:     storage {}", self.storage)?;
        for leftover in &self.leftovers {
            writeln!(
                f,
                "  first:    remove {}, left by an interrupted restore",
                leftover.display()
            )?;
        }
        let into = match &self.staging {
            _ if self.existing == 0 => "empty or new".to_owned(),
            Some(staging) => format!(
                "holds {} entries; replaced only once the restored copy checks out: restored \
                 into {} beside it, then swapped in and the old tree removed; until then the \
                 disk needs room for both{}",
                self.existing,
                staging.display(),
                if self.replace.keep_failed {
                    "; a copy that fails is kept"
                } else {
                    ""
                }
            ),
            None => format!(
                "holds {} entries; --in-place: the backup's files are written into it, \
                 replacing those of the same name and leaving the others",
                self.existing
            ),
        };
        write!(f, "  into:     {} ({into})", self.target.display())
    }
}

/// Chooses the backup and checks the target: a non-empty directory is
/// refused unless `--force`, before anything is read from storage.
pub async fn plan(
    job: &Job,
    spec: &BackupJob,
    storages: &[Arc<dyn Storage>],
    storage: Option<&str>,
    selector: &Selector,
    target: &Path,
    replace: Replace,
) -> Result<DirRestorePlan> {
    let (backup, storage) = super::restore::choose(job, storages, storage, selector).await?;
    if backup.object(Role::Files).is_none() {
        return Err(Error::integrity(format!(
            "backup {} of job {} holds no files.tar object",
            backup.id, job.name
        ))
        .with_hint("a backup made while the job was a database backup restores with --target-db"));
    }
    let crypt = catalog::opener(
        super::restore::named(storages, &storage)?.as_ref(),
        &backup,
        spec.keys(),
    )
    .await?;
    let existing = match std::fs::read_dir(target) {
        Ok(entries) => entries.count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            return Err(Error::io(
                Kind::Refused,
                format!("reading --target-dir {}", target.display()),
                e,
            )
            .with_hint("--target-dir names a directory, new or empty"));
        }
    };
    if existing > 0 && !replace.force {
        return Err(Error::refused(format!(
            "{} is not empty ({existing} entries); nothing was changed",
            target.display()
        ))
        .with_hint(
            "restore into a new or empty --target-dir, or pass --force to replace it once the \
             restored copy checks out (--force --in-place writes into it instead)",
        ));
    }
    let (staging, leftovers) = if existing > 0 && !replace.in_place {
        let (staging, leftovers) = staging_beside(
            target,
            backup.id.as_str(),
            "pass --force --in-place to write the backup's files into it instead, or restore \
             into a new --target-dir",
        )?;
        (Some(staging), leftovers)
    } else {
        (None, Vec::new())
    };
    Ok(DirRestorePlan {
        job: job.name.clone(),
        timezone: job.timezone.clone(),
        backup,
        storage,
        target: target.to_path_buf(),
        requested_at: match selector {
            Selector::At(at) => Some(*at),
            _ => None,
        },
        existing,
        replace,
        staging,
        leftovers,
        crypt,
    })
}

/// `<parent>/.<name>.restoring-<id>`: beside the target, so on the same file
/// system, where a rename swaps the two; and the copies of that name that
/// interrupted restores left there, which are ours to remove. (A copy kept
/// by `--keep-failed` is renamed `.<name>.failed-<id>`, never removed.)
/// Refused where a swap cannot work, with `otherwise` (what the operator
/// can do instead) as the hint.
pub(crate) fn staging_beside(
    target: &Path,
    id: &str,
    otherwise: &str,
) -> Result<(PathBuf, Vec<PathBuf>)> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        Error::refused(format!("{}: {why}; nothing was changed", target.display()))
            .with_hint(otherwise)
    };
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(refuse(
            "it has no parent directory to restore a copy beside it in".to_owned(),
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let meta = std::fs::symlink_metadata(target)
        .map_err(|e| Error::io(Kind::Refused, format!("reading {}", target.display()), e))?;
    if !meta.is_dir() {
        return Err(refuse(
            "it is not a directory (a link to one is not replaced)".to_owned(),
        ));
    }
    let parent_meta = std::fs::metadata(parent)
        .map_err(|e| Error::io(Kind::Refused, format!("reading {}", parent.display()), e))?;
    if parent_meta.dev() != meta.dev() {
        return Err(refuse(
            "it is a mount point, which a restored copy cannot be swapped into".to_owned(),
        ));
    }
    let prefix = format!(".{}.restoring-", name.to_string_lossy());
    let staging = parent.join(format!("{prefix}{id}"));
    let entries = std::fs::read_dir(parent)
        .map_err(|e| Error::io(Kind::Refused, format!("reading {}", parent.display()), e))?;
    let mut leftovers = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let ours = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .is_some_and(|id| crate::model::BackupId::parse(id).is_ok());
        // A directory of exactly that name; a link or a file is not ours.
        if ours && std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
            leftovers.push(entry.path());
        }
    }
    leftovers.sort();
    if std::fs::symlink_metadata(&staging).is_ok() && !leftovers.contains(&staging) {
        return Err(Error::refused(format!(
            "{} exists and is not a directory; nothing was changed",
            staging.display()
        ))
        .with_hint("move it away, then restore again"));
    }
    Ok((staging, leftovers))
}

/// Streams the backup's tar from `storage` into the target directory, or
/// into a copy beside it that is swapped in once complete. The digests are
/// checked as it goes; a digest that does not match is the error said, even
/// when the tar broke first.
pub async fn execute(
    plan: &DirRestorePlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
) -> Result<tree::Unpacked> {
    for leftover in &plan.leftovers {
        tracing::info!(
            "removing {}, left by an interrupted restore",
            leftover.display()
        );
        std::fs::remove_dir_all(leftover).map_err(|e| {
            Error::io(Kind::Refused, format!("removing {}", leftover.display()), e)
                .with_hint("remove it by hand, then restore again")
        })?;
    }
    let object = plan
        .backup
        .object(Role::Files)
        .ok_or_else(|| Error::integrity(format!("backup {} has no files.tar", plan.backup.id)))?
        .clone();
    let key = catalog::backup_prefix(&plan.backup.job, &plan.backup.id)?.join(&object.key)?;
    let source = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let compression = plan.backup.compression()?;
    let crypt = plan.crypt.clone();
    let into = plan.staging.clone().unwrap_or_else(|| plan.target.clone());
    let force = plan.replace.force && plan.staging.is_none();
    let label = format!("{key} in storage {}", storage.name());
    progress.begin(
        &format!("restore {}", plan.target.display()),
        Some(object.digest.stored_size),
    );
    let unpack_into = into.clone();
    let result = tokio::task::spawn_blocking(move || {
        let (reader, mut writer) = std::io::pipe()
            .map_err(|e| Error::io(Kind::Internal, "making a pipe for the tree", e))?;
        let unpacking = std::thread::Builder::new()
            .name("tree-unpack".into())
            .spawn(move || tree::unpack(reader, &unpack_into, force))
            .map_err(|e| Error::internal(format!("cannot start the tree's thread: {e}")))?;
        let on_bytes = |n| progress.advance(n);
        let fed = archive::unpack(
            source,
            compression,
            &crypt,
            &object.digest,
            &mut writer,
            &label,
            &on_bytes,
        );
        drop(writer);
        progress.end();
        let unpacked = unpacking
            .join()
            .map_err(|_| Error::internal("the tree's restore panicked"))?;
        // A digest that does not match explains everything after it; else
        // the tree's own error (a full disk, a path in the way) is the
        // cause, and the feeder's "broken pipe" only its consequence.
        match (fed, unpacked) {
            (Err(e), _) if e.kind() == Kind::Integrity => Err(e),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok(()), Ok(unpacked)) => Ok(unpacked),
        }
    })
    .await
    .map_err(|e| Error::internal(format!("restore task failed: {e}")))?;
    let result = match (&plan.staging, result) {
        (Some(staging), Ok(unpacked)) => swap_dirs(&plan.target, staging).map(|()| unpacked),
        (_, other) => other,
    };
    result.map_err(|e| {
        let refused_before_writing =
            e.kind() == Kind::Refused && e.message().contains("nothing was written");
        let e = e.context(format!(
            "restoring backup {} into {}",
            plan.backup.id,
            plan.target.display()
        ));
        if refused_before_writing {
            return e;
        }
        let Some(staging) = &plan.staging else {
            return e.with_hint(format!(
                "{} may now hold part of the backup: do not use it; remove what was restored, \
                 or restore again with --force",
                plan.target.display()
            ));
        };
        let copy = if plan.replace.keep_failed {
            // Renamed, so the next restore does not take it for a leftover.
            let kept = staging.with_file_name(
                staging
                    .file_name()
                    .map(|n| n.to_string_lossy().replacen(".restoring-", ".failed-", 1))
                    .unwrap_or_default(),
            );
            match std::fs::rename(staging, &kept) {
                Ok(()) => format!("the restored copy is kept in {}", kept.display()),
                Err(r) => format!(
                    "the restored copy is in {} (not renamed to {}: {r}; the next restore \
                     removes it)",
                    staging.display(),
                    kept.display()
                ),
            }
        } else {
            match std::fs::remove_dir_all(staging) {
                Ok(()) => "the restored copy was removed".to_owned(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    "the restored copy was removed".to_owned()
                }
                Err(r) => format!(
                    "the restored copy {} could not be removed ({r}): remove it",
                    staging.display()
                ),
            }
        };
        e.with_hint(format!("{} was not touched; {copy}", plan.target.display()))
    })
}

/// Puts the complete copy `staging` in the place of `target`, then removes
/// the old tree. The copy gets the target directory's own mode and owner.
fn swap_dirs(target: &Path, staging: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(target)
        .map_err(|e| Error::io(Kind::Internal, format!("reading {}", target.display()), e))?;
    std::fs::set_permissions(staging, meta.permissions()).map_err(|e| {
        Error::io(
            Kind::Internal,
            format!("setting the mode of {}", staging.display()),
            e,
        )
    })?;
    // Only root may give files away; anyone else's copy is already theirs.
    let _ = std::os::unix::fs::lchown(staging, Some(meta.uid()), Some(meta.gid()));
    exchange_dirs(target, staging)
}

/// Puts the complete copy `staging` in the place of `target`, as it is (its
/// own mode and owner), then removes the old tree, which is only warned
/// about when it cannot be: the copy is in place by then.
pub(crate) fn exchange_dirs(target: &Path, staging: &Path) -> Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{AT_FDCWD, RenameFlags};
    use std::os::unix::ffi::OsStrExt;
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::io(Kind::Internal, format!("{what} {}", path.display()), e)
    };
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| Error::internal(format!("{} holds a NUL byte", p.display())))
    };
    let (from, to) = (c(staging)?, c(target)?);
    if let Err(e) = nix::fcntl::renameat2(
        AT_FDCWD,
        from.as_c_str(),
        AT_FDCWD,
        to.as_c_str(),
        RenameFlags::RENAME_EXCHANGE,
    ) {
        if !matches!(e, Errno::EINVAL | Errno::ENOSYS) {
            return Err(io("swapping in the restored copy at", target, e.into()));
        }
        // A file system without atomic exchange: two renames, the target's
        // name missing for the moment between them.
        let old = staging.with_extension("replaced");
        std::fs::rename(target, &old).map_err(|e| io("moving aside", target, e))?;
        if let Err(e) = std::fs::rename(staging, target) {
            let _ = std::fs::rename(&old, target);
            return Err(io("swapping in the restored copy at", target, e));
        }
        std::fs::rename(&old, staging).map_err(|e| io("renaming", &old, e))?;
    }
    // `staging` now holds the old tree. The restore is complete whatever
    // happens to it.
    if let Err(e) = std::fs::remove_dir_all(staging) {
        tracing::warn!(
            "the replaced tree, now at {}, could not be removed: {e}; remove it by hand",
            staging.display()
        );
    }
    Ok(())
}
