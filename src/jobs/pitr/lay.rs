//! A physical job's base backup laid down as a data directory, and the
//! settings that make PostgreSQL replay the job's WAL archive from it up to
//! the target.
//!
//! The tar streams from storage through the archive pipeline (its stored
//! and raw digests checked) into two readers at once: the files jobs' tree
//! unpacker ([`tree::unpack`]: nothing written outside the directory, never
//! through a link, no `..`, no absolute path) and
//! [`crate::pg::basebackup::Checker`], which holds every file against the
//! `backup_manifest` that ends the tar. The directory counts as complete
//! only once both agree, the way `pg_verifybackup` would.
//!
//! `pg_basebackup -Ft -D - -X none` writes a ustar stream the tree unpacker
//! takes as it is: a directory before what it holds, `pg_wal/` and
//! `./pg_wal/archive_status/` as empty directories, `global/pg_control`
//! after everything else and `backup_manifest` last. `backup_manifest` stays
//! in the data directory, where `pg_basebackup -Fp` leaves it: PostgreSQL
//! ignores it (and leaves it out of the next base backup), and
//! `pg_verifybackup -n DIR` can check the directory against it until the
//! server first starts.
//!
//! An incremental base backup is laid down with every backup before it,
//! back to a full one: each is unpacked and checked the same way into a
//! spool directory beside the target (`.<name>.combining-<id>`), and
//! `pg_combinebackup` of the backup's major writes the data directory from
//! them (with hard links, `--link`, where PostgreSQL 18 has it and the spool
//! is on the target's file system); the spool goes once it is done, whatever
//! the outcome.
//!
//! Where it is written: a missing or empty target directly; a non-empty
//! one (`--force`) into a copy beside it, swapped in once complete, the old
//! content removed only then. A failure removes what it wrote and leaves an
//! existing target as it was.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::OFlag;

use super::{RecoverySettings, Target};
use crate::archive::{self, crypt::Crypt, tree};
use crate::catalog::{self, Manifest, Role};
use crate::error::{Error, Kind, Result};
use crate::jobs::files;
use crate::pg::basebackup::{Algorithm, Checker, Summary};
use crate::report::Progress;
use crate::storage::Storage;

/// What PostgreSQL asks of a data directory (it also takes 0750).
const DATA_DIR_MODE: u32 = 0o700;
/// The mode of the files written here, as PostgreSQL makes its own.
const FILE_MODE: u32 = 0o600;
/// `local` connections of the operating system's user of the same name
/// only: what a data directory without its own `pg_hba.conf` is given.
const LOCAL_PEER_HBA: &str = "# written by backup: the backup held no pg_hba.conf\n\
                              local all all peer\n";

/// What the target directory holds now, and how a restore into it goes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetDir {
    /// Its entries; 0 when it is empty or missing.
    pub existing: usize,
    /// With `--force` over a non-empty target: where the base backup is
    /// laid down before it is swapped in.
    pub staging: Option<PathBuf>,
    /// Copies interrupted restores left beside the target: removed first.
    pub leftovers: Vec<PathBuf>,
}

/// Read-only, for the plan: a non-empty `target` is refused unless
/// `force`; with `force`, a staging directory beside it
/// (`.<name>.restoring-<id>`) and the leftovers of interrupted restores. A
/// missing target is fine: it is created, mode 0700. A target a server is
/// running on is refused even with `force`.
pub fn check_target(target: &Path, force: bool, backup_id: &str) -> Result<TargetDir> {
    let existing = match fs::read_dir(target) {
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
    if existing == 0 {
        return Ok(TargetDir {
            existing,
            staging: None,
            leftovers: Vec::new(),
        });
    }
    if !force {
        return Err(Error::refused(format!(
            "{} is not empty ({existing} entries); nothing was changed",
            target.display()
        ))
        .with_hint(
            "restore into a new or empty --target-dir, or pass --force to replace it once the \
             restored data directory is complete",
        ));
    }
    if let Some(pid) = running_server(target) {
        return Err(Error::refused(format!(
            "{} is the data directory of a running server (postmaster.pid names process \
             {pid}); nothing was changed",
            target.display()
        ))
        .with_hint(
            "stop that server first (pg_ctl stop -D DIR), or restore into another --target-dir; \
             if no server runs there, remove its stale postmaster.pid",
        ));
    }
    let (staging, leftovers) = files::staging_beside(
        target,
        backup_id,
        "empty it first, or restore into a new --target-dir",
    )?;
    Ok(TargetDir {
        existing,
        staging: Some(staging),
        leftovers,
    })
}

/// The process `postmaster.pid` in `data` names, when it is alive.
fn running_server(data: &Path) -> Option<i32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // 0 and negative numbers name process groups to kill(2).
    if pid <= 0 {
        return None;
    }
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => Some(pid),
        Err(_) => None,
    }
}

/// A base backup to lay down, and where.
pub struct LayDown<'a> {
    /// A physical backup: its `Role::Base` object (`base.tar.zst[.age]`)
    /// and `physical`.
    pub backup: &'a Manifest,
    /// From `catalog::opener`.
    pub crypt: &'a Crypt,
    pub target: &'a Path,
    /// From [`check_target`].
    pub dir: &'a TargetDir,
    pub settings: &'a RecoverySettings,
    /// Files owned by this user (run as root: the server's user,
    /// `postgres`); `None` = as written.
    pub owner: Option<(u32, u32)>,
    /// An incremental `backup`: the backups before it, the full one first,
    /// and the `pg_combinebackup` that combines them.
    pub chain: &'a [Manifest],
    /// What opens each of `chain` (`catalog::opener`).
    pub chain_crypts: &'a [Crypt],
    pub combine: Option<&'a Path>,
}

/// What [`lay_down`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Laid {
    /// The files checked against the backup's `backup_manifest`, and their
    /// bytes.
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// What the operator should know: configuration files the backup did
    /// not hold, a `standby.signal` removed.
    pub warnings: Vec<String>,
    /// The backups combined into the data directory: 1 for a full one.
    pub combined: usize,
}

/// Streams the base backup from `storage` into the target (or its staging
/// copy), checking it against its own `backup_manifest` on the way; makes
/// `pg_wal/` and `pg_wal/archive_status/` (empty: the base backup carries
/// no WAL); writes the recovery settings ([`write_settings`]); gives every
/// file to `owner`; syncs it all to disk; then, with a staging copy, swaps
/// it in and removes the old content. Memory does not grow with the size of
/// the backup.
///
/// A failure removes what it wrote (the staging copy, or a target it
/// created, or what it put into an empty one) and leaves an existing
/// target as it was; the error's hint says so.
pub async fn lay_down(
    what: LayDown<'_>,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
) -> Result<Laid> {
    let started = Instant::now();
    let m = what.backup;
    let not_physical = || {
        Error::integrity(format!(
            "backup {} of job {} is not a physical base backup",
            m.id, m.job
        ))
    };
    m.physical.as_ref().ok_or_else(not_physical)?;
    if what.chain_crypts.len() != what.chain.len() {
        return Err(Error::internal("a chain without a key for each backup"));
    }
    let links = what
        .chain
        .iter()
        .zip(what.chain_crypts)
        .chain(std::iter::once((m, what.crypt)))
        .map(|(link, crypt)| Link::of(link, crypt, storage.name()))
        .collect::<Result<Vec<Link>>>()?;
    let combine = match (what.chain.is_empty(), what.combine) {
        (true, _) => None,
        (false, Some(tool)) => Some(tool.to_path_buf()),
        (false, None) => {
            return Err(Error::internal(format!(
                "backup {} is incremental, and no pg_combinebackup was given",
                m.id
            )));
        }
    };
    // A missing object fails here, before anything is written.
    let source = tokio_util::io::SyncIoBridge::new(storage.reader(&links[0].key).await?);
    let stored_size = links.iter().map(|l| l.digest.stored_size).sum();
    let comment = format!(
        "added by backup {} for the point-in-time recovery of job {} from base backup {}; \
         these lines override any earlier ones",
        env!("CARGO_PKG_VERSION"),
        m.job,
        m.id
    );
    let laying = Laying {
        target: what.target.to_path_buf(),
        dir: what.dir.clone(),
        settings: what.settings.clone(),
        owner: what.owner,
        links,
        combine,
        storage: storage.clone(),
        handle: tokio::runtime::Handle::current(),
        comment,
    };
    let combined = laying.links.len();
    progress.begin(
        &format!("base backup {} into {}", m.id, what.target.display()),
        Some(stored_size),
    );
    let laid = tokio::task::spawn_blocking(move || laying.run(source, progress))
        .await
        .map_err(|e| Error::internal(format!("laying down the base backup failed: {e}")))?;
    let (summary, warnings) = laid.map_err(|e| {
        e.context(format!(
            "laying down base backup {} of job {} in {}",
            m.id,
            m.job,
            what.target.display()
        ))
    })?;
    Ok(Laid {
        files: summary.files,
        bytes: summary.bytes,
        seconds: started.elapsed().as_secs_f64(),
        warnings,
        combined,
    })
}

/// One base backup's tar, as the laying reads it.
struct Link {
    id: String,
    key: crate::storage::Key,
    compression: crate::model::Compression,
    digest: archive::ObjectDigest,
    algorithm: Algorithm,
    crypt: Crypt,
    /// The object, for messages.
    label: String,
}

impl Link {
    fn of(m: &Manifest, crypt: &Crypt, storage: &str) -> Result<Link> {
        let not_physical = || {
            Error::integrity(format!(
                "backup {} of job {} is not a physical base backup",
                m.id, m.job
            ))
        };
        let physical = m.physical.as_ref().ok_or_else(not_physical)?;
        let algorithm = Algorithm::parse(&physical.manifest_checksums).ok_or_else(|| {
            Error::integrity(format!(
                "backup {} of job {}: its manifest names checksum algorithm '{}', which \
                 backup_manifest does not have",
                m.id, m.job, physical.manifest_checksums
            ))
        })?;
        let object = m.object(Role::Base).ok_or_else(not_physical)?;
        let key = catalog::backup_prefix(&m.job, &m.id)?.join(&object.key)?;
        Ok(Link {
            id: m.id.to_string(),
            label: format!("{key} in storage {storage}"),
            key,
            compression: m.compression()?,
            digest: object.digest.clone(),
            algorithm,
            crypt: crypt.clone(),
        })
    }
}

/// [`lay_down`]'s work on a blocking thread, with what it needs owned.
struct Laying {
    target: PathBuf,
    dir: TargetDir,
    settings: RecoverySettings,
    owner: Option<(u32, u32)>,
    /// The backup's tar, after those of the backups it needs (the full one
    /// first) when it is incremental.
    links: Vec<Link>,
    /// `pg_combinebackup`, for more than one link.
    combine: Option<PathBuf>,
    /// Where the links after the first are read from, on this runtime.
    storage: Arc<dyn Storage>,
    handle: tokio::runtime::Handle,
    /// The comment line above the settings.
    comment: String,
}

impl Laying {
    fn run(
        self,
        source: impl std::io::Read + Send + 'static,
        progress: Arc<dyn Progress>,
    ) -> Result<(Summary, Vec<String>)> {
        let prepared = self
            .remove_leftovers()
            .and_then(|()| Place::prepare(&self.target, &self.dir));
        let place = match prepared {
            Ok(place) => place,
            Err(e) => {
                progress.end();
                return Err(e);
            }
        };
        let checked = match &self.combine {
            None => self.unpack_checked(source, place.data(), &*progress, &self.links[0]),
            Some(tool) => self.combine_chain(Box::new(source), place.data(), &*progress, tool),
        };
        progress.end();
        let result = checked.and_then(|summary| {
            let warnings = self.finish(place.data())?;
            place.complete()?;
            Ok((summary, warnings))
        });
        result.map_err(|e| place.abandon(e))
    }

    fn remove_leftovers(&self) -> Result<()> {
        for leftover in &self.dir.leftovers {
            tracing::info!(
                "removing {}, left by an interrupted restore",
                leftover.display()
            );
            fs::remove_dir_all(leftover).map_err(|e| {
                Error::io(Kind::Refused, format!("removing {}", leftover.display()), e)
                    .with_hint("remove it by hand, then restore again")
            })?;
        }
        Ok(())
    }

    /// Every link into a spool directory beside the target, checked, then
    /// `pg_combinebackup` of them into `data`; the spool removed in any case.
    fn combine_chain(
        &self,
        first: Box<dyn std::io::Read + Send>,
        data: &Path,
        progress: &dyn Progress,
        tool: &Path,
    ) -> Result<Summary> {
        let spool = combining_spool(&self.target, &self.links[self.links.len() - 1].id)?;
        for leftover in combining_leftovers(&self.target) {
            tracing::info!(
                "removing {}, left by an interrupted restore",
                leftover.display()
            );
            remove_tree(&leftover).map_err(|e| disk_error(&leftover, "removing", e))?;
        }
        // Made here, not found: nobody else's directory is unpacked into.
        fs::DirBuilder::new()
            .mode(DATA_DIR_MODE)
            .create(&spool)
            .map_err(|e| disk_error(&spool, "creating", e))?;
        let combined = self.combine_into(first, &spool, data, progress, tool);
        if let Err(e) = remove_tree(&spool) {
            tracing::warn!("cannot remove {}: {e}; remove it", spool.display());
        }
        combined
    }

    fn combine_into(
        &self,
        first: Box<dyn std::io::Read + Send>,
        spool: &Path,
        data: &Path,
        progress: &dyn Progress,
        tool: &Path,
    ) -> Result<Summary> {
        let mut first = Some(first);
        let mut dirs = Vec::with_capacity(self.links.len());
        let mut total: Option<Summary> = None;
        for (i, link) in self.links.iter().enumerate() {
            let dir = spool.join(format!("{i}-{}", link.id));
            make_dir(&dir)?;
            let source: Box<dyn std::io::Read + Send> = match first.take() {
                Some(source) => source,
                None => Box::new(tokio_util::io::SyncIoBridge::new(
                    self.handle.block_on(self.storage.reader(&link.key))?,
                )),
            };
            let summary = self.unpack_checked(source, &dir, progress, link)?;
            total = Some(match total {
                None => summary,
                Some(mut t) => {
                    t.files += summary.files;
                    t.bytes += summary.bytes;
                    t
                }
            });
            dirs.push(dir);
        }
        let mut command = std::process::Command::new(tool);
        // No secret of this process (a notifier's password, the daemon's
        // token) reaches a child that needs none.
        crate::pg::minimal_env(&mut command);
        // The server syncs the directory before recovery (see `finish`).
        command.arg("--no-sync").arg("--output").arg(data);
        if hard_links_work(spool, data) && combine_links(tool) {
            command.arg("--link");
        }
        command.args(&dirs);
        let output = command
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| {
                Error::io(Kind::Tool, format!("running {}", tool.display()), e)
                    .with_hint("pg_combinebackup of the backup's major version must be installed")
            })?;
        if !output.status.success() {
            let said = String::from_utf8_lossy(&output.stderr);
            return Err(Error::tool(format!(
                "{} could not combine base backups {} ({}): {}",
                tool.display(),
                self.links
                    .iter()
                    .map(|l| l.id.as_str())
                    .collect::<Vec<_>>()
                    .join(" + "),
                output.status,
                said.trim()
            ))
            .with_hint(
                "`backup verify --job J --id ID` checks every backup of the chain; restore a \
                 moment before the chain (an older full backup) with --at",
            ));
        }
        total.ok_or_else(|| Error::internal("a chain of no backups"))
    }

    /// The tar, from the stored object, into `data` and the manifest check.
    fn unpack_checked(
        &self,
        source: impl std::io::Read,
        data: &Path,
        progress: &dyn Progress,
        link: &Link,
    ) -> Result<Summary> {
        let mut checker = Checker::start(link.algorithm)?;
        let (writer, reader) = archive::chunks::pipe();
        let into = data.to_path_buf();
        let unpacking = std::thread::Builder::new()
            .name("base-unpack".into())
            .spawn(move || tree::unpack(reader, &into, false))
            .map_err(|e| Error::internal(format!("cannot start the unpacking thread: {e}")))?;
        let mut tee = Tee {
            checker: &mut checker,
            tree: writer,
        };
        let fed = archive::unpack(
            source,
            link.compression,
            &link.crypt,
            &link.digest,
            &mut tee,
            &link.label,
            &|n| progress.advance(n),
        );
        drop(tee);
        let unpacked = unpacking
            .join()
            .map_err(|_| Error::internal("the unpacking thread panicked"))?;
        let checked = checker.finish();
        // A digest that does not match explains everything after it; else
        // the unpacker's own error (a full disk) is the cause, and the
        // feeder's "broken pipe" only its consequence.
        match (fed, unpacked, checked) {
            (Err(e), _, _) if e.kind() == Kind::Integrity => Err(e),
            (_, Err(e), _) => Err(e),
            (Err(e), Ok(_), _) => Err(e),
            (Ok(()), Ok(_), Err(e)) => Err(Error::integrity(format!(
                "{}: its digests match, but {}",
                link.label,
                e.message()
                    .replacen("its backup_manifest", "the tar's backup_manifest", 1)
            ))
            .with_hint(
                "the base backup was damaged before it was stored: restore from another base \
                 backup of the job",
            )),
            (Ok(()), Ok(_), Ok(summary)) => Ok(summary),
        }
    }

    /// What makes the unpacked tree a data directory to recover: the WAL
    /// directories, the settings, the mode, the owner, all on disk.
    fn finish(&self, data: &Path) -> Result<Vec<String>> {
        let pg_wal = data.join("pg_wal");
        make_dir(&pg_wal)?;
        make_dir(&pg_wal.join("archive_status"))?;
        let warnings = write_settings(data, &self.settings, &self.comment)?;
        fs::set_permissions(data, fs::Permissions::from_mode(DATA_DIR_MODE))
            .map_err(|e| disk_error(data, "setting the mode of", e))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::lchown(data, Some(uid), Some(gid))
                .map_err(|e| disk_error(data, "giving away", e))?;
        }
        // Synced only before a swap, which removes the old content: a new
        // directory is synced by PostgreSQL itself when it starts on it (a
        // base backup's pg_control says it was not shut down, so the whole
        // directory is synced before recovery), and a crash before that is
        // mended by restoring again.
        settle(data, self.owner, self.dir.staging.is_some())?;
        Ok(warnings)
    }
}

/// The raw tar to both of its readers. The checker takes everything; the
/// unpacker's failure stops the stream (the rest is still read and hashed
/// by [`archive::unpack`]).
struct Tee<'a> {
    checker: &'a mut Checker,
    tree: archive::chunks::ChunkWriter,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.checker.write_all(buf)?;
        self.tree.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where the base backup is being written, and how to undo it.
enum Place {
    /// A copy beside a non-empty target, swapped in at the end.
    Staging { target: PathBuf, staging: PathBuf },
    /// A target this restore created.
    Created { target: PathBuf },
    /// An empty target that was there, with its mode.
    Emptied { target: PathBuf, mode: u32 },
}

impl Place {
    fn prepare(target: &Path, dir: &TargetDir) -> Result<Place> {
        let make = |path: &Path| {
            fs::DirBuilder::new()
                .mode(DATA_DIR_MODE)
                .create(path)
                .map_err(|e| disk_error(path, "creating", e))
        };
        if let Some(staging) = &dir.staging {
            make(staging)?;
            return Ok(Place::Staging {
                target: target.to_path_buf(),
                staging: staging.clone(),
            });
        }
        match fs::metadata(target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(|e| disk_error(parent, "creating", e))?;
                }
                make(target)?;
                Ok(Place::Created {
                    target: target.to_path_buf(),
                })
            }
            Err(e) => Err(disk_error(target, "reading", e)),
            Ok(meta) => {
                // The plan found it empty; it must still be, or the clean-up
                // of a failure would remove what someone else put there.
                let mut entries =
                    fs::read_dir(target).map_err(|e| disk_error(target, "reading", e))?;
                if entries.next().is_some() {
                    return Err(Error::refused(format!(
                        "{} is no longer empty; nothing was changed",
                        target.display()
                    ))
                    .with_hint("restore again: the plan will see what it holds now"));
                }
                fs::set_permissions(target, fs::Permissions::from_mode(DATA_DIR_MODE))
                    .map_err(|e| disk_error(target, "setting the mode of", e))?;
                Ok(Place::Emptied {
                    target: target.to_path_buf(),
                    mode: meta.permissions().mode() & 0o7777,
                })
            }
        }
    }

    /// The directory the base backup is written into.
    fn data(&self) -> &Path {
        match self {
            Place::Staging { staging, .. } => staging,
            Place::Created { target } | Place::Emptied { target, .. } => target,
        }
    }

    /// The data directory in place, and its name on disk.
    fn complete(&self) -> Result<()> {
        let target = match self {
            Place::Staging { target, staging } => {
                files::exchange_dirs(target, staging)?;
                target
            }
            Place::Created { target } | Place::Emptied { target, .. } => target,
        };
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        sync_path(parent)
    }

    /// Removes what was written, and says so in `e`'s hint.
    fn abandon(&self, e: Error) -> Error {
        let undone = match self {
            Place::Staging { target, staging } => match remove_tree(staging) {
                Ok(()) => format!(
                    "{} was not touched, and the copy laid down beside it was removed",
                    target.display()
                ),
                Err(r) => format!(
                    "{} was not touched; the copy laid down beside it, {}, could not be removed \
                     ({r}): remove it",
                    target.display(),
                    staging.display()
                ),
            },
            Place::Created { target } => match remove_tree(target) {
                Ok(()) => format!(
                    "{}, which this restore created, was removed",
                    target.display()
                ),
                Err(r) => format!(
                    "{} holds part of the base backup and could not be removed ({r}): remove it",
                    target.display()
                ),
            },
            Place::Emptied { target, mode } => {
                let emptied = fs::read_dir(target).and_then(|entries| {
                    for entry in entries {
                        let entry = entry?;
                        if entry.file_type()?.is_dir() {
                            fs::remove_dir_all(entry.path())?;
                        } else {
                            fs::remove_file(entry.path())?;
                        }
                    }
                    fs::set_permissions(target, fs::Permissions::from_mode(*mode))
                });
                match emptied {
                    Ok(()) => format!("{} is empty again", target.display()),
                    Err(r) => format!(
                        "{} holds part of the base backup and could not be emptied ({r}): empty \
                         it",
                        target.display()
                    ),
                }
            }
        };
        let hint = match e.hint() {
            Some(hint) => format!("{undone}; {hint}"),
            None => undone,
        };
        e.with_hint(hint)
    }
}

/// Where the backups of a chain are unpacked before they are combined:
/// beside the target, `.<name>.combining-<id>`.
pub fn combining_spool(target: &Path, id: &str) -> Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| Error::refused(format!("{} names no directory", target.display())))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok(parent.join(format!(".{}.combining-{id}", name.to_string_lossy())))
}

/// The spools of interrupted restores into `target`: directories (never
/// links) named as [`combining_spool`] names them.
fn combining_leftovers(target: &Path) -> Vec<PathBuf> {
    let (Some(name), Ok(spool)) = (target.file_name(), combining_spool(target, "")) else {
        return Vec::new();
    };
    let Some(parent) = spool.parent() else {
        return Vec::new();
    };
    let prefix = format!(".{}.combining-", name.to_string_lossy());
    fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .is_some_and(|id| crate::model::BackupId::parse(id).is_ok())
                && e.file_type().is_ok_and(|t| t.is_dir())
        })
        .map(|e| e.path())
        .collect()
}

/// Whether `a` and `b` are on one file system, where a hard link from one
/// to the other can be made.
fn hard_links_work(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => false,
    }
}

/// Whether this `pg_combinebackup` has `--link` (PostgreSQL 18 on).
fn combine_links(tool: &Path) -> bool {
    crate::pg::tool_version(tool).is_ok_and(|(major, _)| major >= 18)
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A directory of the data directory, made if the tar had none; a link or
/// a file there is refused (it would lead recovery's WAL elsewhere).
fn make_dir(path: &Path) -> Result<()> {
    match fs::DirBuilder::new().mode(DATA_DIR_MODE).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let meta = fs::symlink_metadata(path).map_err(|e| disk_error(path, "reading", e))?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(Error::integrity(format!(
                    "the base backup holds {} as something else than a directory",
                    path.display()
                )))
            }
        }
        Err(e) => Err(disk_error(path, "creating", e)),
    }
}

/// Gives every entry under `dir` (and `dir`'s own entries' links
/// themselves, never what they point to) to `owner`, and with `sync` syncs
/// every file and directory to disk: a swap must not put in place a copy
/// that a crash could still take back.
fn settle(dir: &Path, owner: Option<(u32, u32)>, sync: bool) -> Result<()> {
    if owner.is_none() && !sync {
        return Ok(());
    }
    let entries = fs::read_dir(dir).map_err(|e| disk_error(dir, "reading", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| disk_error(dir, "reading", e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| disk_error(&path, "reading", e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(|e| disk_error(&path, "giving away", e))?;
        }
        if kind.is_dir() {
            settle(&path, owner, sync)?;
        } else if kind.is_file() && sync {
            sync_path(&path)?;
        }
    }
    if sync {
        sync_path(dir)?;
    }
    Ok(())
}

/// fsync of a file or directory, opened without following a link.
fn sync_path(path: &Path) -> Result<()> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| disk_error(path, "syncing", e))
}

fn disk_error(path: &Path, doing: &str, e: std::io::Error) -> Error {
    Error::io(Kind::Storage, format!("{doing} {}", path.display()), e)
}

/// The configuration files a data directory needs to start, and what one
/// the backup did not hold gets: Debian keeps them in `/etc/postgresql`.
const CONFIG_FILES: [(&str, &str, &str); 3] = [
    (
        "postgresql.conf",
        "",
        "written empty: the server runs with the defaults and postgresql.auto.conf",
    ),
    (
        "pg_hba.conf",
        LOCAL_PEER_HBA,
        "written with local peer connections only",
    ),
    ("pg_ident.conf", "", "written empty"),
];

/// `recovery.signal` and, appended to `postgresql.auto.conf` after a
/// comment line (`comment`, naming the tool, the job and the backup), the
/// settings ([`settings_text`]). A `standby.signal` from the backup is
/// removed: with it the server would wait for a primary instead of stopping
/// at the target. Settings the backup's `postgresql.auto.conf` already had
/// (a previous restore's `restore_command` or `recovery_target_*`) stay in
/// it, overridden: of a setting given twice PostgreSQL takes the last.
///
/// A data directory without `postgresql.conf`, `pg_hba.conf` or
/// `pg_ident.conf` (Debian keeps them in `/etc/postgresql`) gets one, and
/// the returned warnings say so. Files are written mode 0600, never
/// through a link, and owned by whoever runs this.
pub fn write_settings(
    data: &Path,
    settings: &RecoverySettings,
    comment: &str,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    let standby = data.join("standby.signal");
    match fs::remove_file(&standby) {
        Ok(()) => warnings.push(
            "the base backup held standby.signal, which was removed: the restored server \
             recovers to the target instead of waiting for a primary"
                .to_owned(),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(disk_error(&standby, "removing", e)),
    }
    let mut missing = Vec::new();
    for (name, text, done) in CONFIG_FILES {
        let path = data.join(name);
        match fs::symlink_metadata(&path) {
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(disk_error(&path, "reading", e)),
        }
        create(&path, true)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .map_err(|e| disk_error(&path, "writing", e))?;
        missing.push(format!("{name} ({done})"));
    }
    if !missing.is_empty() {
        warnings.push(format!(
            "the base backup holds no {}: the server's configuration lived outside its data \
             directory (as Debian keeps it in /etc/postgresql); copy it into {} before the \
             restored server serves applications",
            missing.join(", "),
            data.display()
        ));
    }

    let auto = data.join("postgresql.auto.conf");
    let mut file = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(FILE_MODE)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(&auto)
        .map_err(|e| disk_error(&auto, "opening", e))?;
    let len = file
        .metadata()
        .map_err(|e| disk_error(&auto, "reading", e))?
        .len();
    let mut text = String::new();
    if len > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, len - 1)
            .map_err(|e| disk_error(&auto, "reading", e))?;
        if last[0] != b'\n' {
            text.push('\n');
        }
    }
    text.push_str(&settings_text(settings, comment));
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| disk_error(&auto, "writing", e))?;

    let signal = data.join("recovery.signal");
    create(&signal, false)
        .and_then(|f| f.sync_all())
        .map_err(|e| disk_error(&signal, "writing", e))?;
    Ok(warnings)
}

/// Opens `path` for writing, mode 0600, never through a link: `new` only
/// when nothing is there, else truncated.
fn create(path: &Path, new: bool) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options
        .write(true)
        .mode(FILE_MODE)
        .custom_flags(OFlag::O_NOFOLLOW.bits());
    if new {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    options.open(path)
}

/// The lines appended to `postgresql.auto.conf`. Every recovery target
/// setting is written, the ones not used empty: a target an earlier line
/// set (the backed-up server was itself restored to a moment) would
/// otherwise still apply, or clash with ours ("multiple recovery targets
/// specified"). PostgreSQL applies each setting where its last occurrence
/// is, so the empty ones come before the one that sets the target.
/// `recovery_target_inclusive` is left as it is (on by default).
fn settings_text(settings: &RecoverySettings, comment: &str) -> String {
    let mut lines = vec![format!("# {}", comment.replace(['\n', '\r'], " "))];
    let mut set = |name: &str, value: String| lines.push(format!("{name} = {value}"));
    set("restore_command", quote(&settings.restore_command));
    for unused in [
        "recovery_target",
        "recovery_target_lsn",
        "recovery_target_name",
        "recovery_target_xid",
    ] {
        set(unused, quote(""));
    }
    let time = match settings.target {
        // PostgreSQL keeps microseconds, and so does a commit's time: a
        // commit at or before the target is at or before it truncated.
        Target::Time(at) => at.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        Target::Latest => String::new(),
    };
    set("recovery_target_time", quote(&time));
    set(
        "recovery_target_action",
        quote(if settings.pause { "pause" } else { "promote" }),
    );
    let timeline = match settings.timeline {
        Some(timeline) => timeline.to_string(),
        None => "latest".to_owned(),
    };
    set("recovery_target_timeline", quote(&timeline));
    if settings.pause {
        // Without it, `pause` acts as `shutdown`: nobody could look at
        // the paused cluster.
        set("hot_standby", "on".to_owned());
    }
    if let Some(port) = settings.port {
        set("port", port.to_string());
    }
    if !settings.archive {
        set("archive_mode", "off".to_owned());
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// A value quoted for a PostgreSQL configuration file, as `ALTER SYSTEM`
/// writes it: its parser reads backslash escapes in quoted values, so a
/// backslash is doubled along with a quote, and a line break is escaped
/// (a quoted value cannot span lines).
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::basebackup::{BACKUP_MANIFEST, samples};
    use crate::storage::MemoryStorage;
    use std::os::unix::fs::MetadataExt;

    const ID: &str = "20260101T000000Z";

    fn settings(target: Target) -> RecoverySettings {
        RecoverySettings {
            restore_command: "/usr/bin/backup --config '/etc/backup/app.toml' wal fetch \
                              --job base %f %p"
                .to_owned(),
            target,
            pause: false,
            timeline: None,
            port: None,
            archive: true,
        }
    }

    fn at(text: &str) -> Target {
        Target::Time(text.parse().unwrap())
    }

    #[test]
    fn a_missing_or_empty_target_is_written_directly() {
        let base = tempfile::tempdir().unwrap();
        let missing = base.path().join("restored");
        for force in [false, true] {
            let dir = check_target(&missing, force, ID).unwrap();
            assert_eq!(
                dir,
                TargetDir {
                    existing: 0,
                    staging: None,
                    leftovers: vec![]
                }
            );
        }
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 0, "read-only");
        fs::create_dir(&missing).unwrap();
        assert_eq!(check_target(&missing, false, ID).unwrap().existing, 0);
    }

    #[test]
    fn a_target_that_is_not_empty_is_refused_unless_forced() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("main");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("PG_VERSION"), "15\n").unwrap();
        fs::write(target.join("old.txt"), "old").unwrap();
        let err = check_target(&target, false, ID).unwrap_err();
        assert_eq!(err.kind(), Kind::Refused);
        assert_eq!(
            err.message(),
            format!(
                "{} is not empty (2 entries); nothing was changed",
                target.display()
            )
        );
        assert!(
            err.hint().unwrap_or_default().contains("--force"),
            "{err:?}"
        );

        // With --force: a copy beside it, and what interrupted restores left.
        let leftover = base.path().join(".main.restoring-20250101T000000Z");
        fs::create_dir(&leftover).unwrap();
        fs::write(
            base.path().join(".main.restoring-20250102T000000Z"),
            "a file",
        )
        .unwrap();
        fs::create_dir(base.path().join(".main.restoring-not-an-id")).unwrap();
        let dir = check_target(&target, true, ID).unwrap();
        assert_eq!(dir.existing, 2);
        assert_eq!(
            dir.staging,
            Some(base.path().join(format!(".main.restoring-{ID}")))
        );
        assert_eq!(dir.leftovers, vec![leftover]);
        assert!(!base.path().join(format!(".main.restoring-{ID}")).exists());

        // A file where a directory is wanted.
        let file = base.path().join("file");
        fs::write(&file, "x").unwrap();
        let err = check_target(&file, true, ID).unwrap_err();
        assert_eq!(err.kind(), Kind::Refused);
    }

    #[test]
    fn the_data_directory_of_a_running_server_is_refused_even_forced() {
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("main");
        fs::create_dir(&target).unwrap();
        // This test's own process stands for the server.
        fs::write(
            target.join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), target.display()),
        )
        .unwrap();
        let err = check_target(&target, true, ID).unwrap_err();
        assert_eq!(err.kind(), Kind::Refused);
        assert!(err.message().contains("running server"), "{err}");
        // A stale one (no such process) is not a server.
        fs::write(target.join("postmaster.pid"), "2147483646\n").unwrap();
        assert!(check_target(&target, true, ID).unwrap().staging.is_some());
    }

    #[test]
    fn the_settings_for_a_moment_read_as_postgresql_wants_them() {
        let text = settings_text(&settings(at("2024-01-20T05:30:00Z")), "added by backup");
        assert_eq!(
            text,
            "# added by backup\n\
             restore_command = '/usr/bin/backup --config ''/etc/backup/app.toml'' wal fetch --job base %f %p'\n\
             recovery_target = ''\n\
             recovery_target_lsn = ''\n\
             recovery_target_name = ''\n\
             recovery_target_xid = ''\n\
             recovery_target_time = '2024-01-20 05:30:00.000000+00'\n\
             recovery_target_action = 'promote'\n\
             recovery_target_timeline = 'latest'\n"
        );
        // Another zone's moment is written in UTC; microseconds are kept.
        let tokyo = "2024-01-20T14:30:00.123456789+09:00".parse().unwrap();
        let text = settings_text(&settings(Target::Time(tokyo)), "c");
        assert!(
            text.contains("recovery_target_time = '2024-01-20 05:30:00.123456+00'\n"),
            "{text}"
        );
    }

    #[test]
    fn latest_pause_timeline_port_and_no_archive_are_written() {
        let mut s = settings(Target::Latest);
        s.pause = true;
        s.timeline = Some(3);
        s.port = Some(5433);
        s.archive = false;
        s.restore_command = "backup wal fetch %f %p".to_owned();
        assert_eq!(
            settings_text(&s, "c\nd"),
            "# c d\n\
             restore_command = 'backup wal fetch %f %p'\n\
             recovery_target = ''\n\
             recovery_target_lsn = ''\n\
             recovery_target_name = ''\n\
             recovery_target_xid = ''\n\
             recovery_target_time = ''\n\
             recovery_target_action = 'pause'\n\
             recovery_target_timeline = '3'\n\
             hot_standby = on\n\
             port = 5433\n\
             archive_mode = off\n"
        );
    }

    #[test]
    fn values_are_quoted_for_the_configuration_file() {
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(quote(r"C:\wal"), r"'C:\\wal'");
        assert_eq!(quote("a\nb\r"), r"'a\nb\r'");
        assert_eq!(quote("%f 日本"), "'%f 日本'");
    }

    #[test]
    fn settings_are_appended_after_the_backups_own_and_missing_files_are_named() {
        let data = tempfile::tempdir().unwrap();
        let d = data.path();
        // As a previous restore (or pg_basebackup -R) would have left them,
        // without a final newline.
        fs::write(
            d.join("postgresql.auto.conf"),
            "# Do not edit this file manually!\nrestore_command = 'old'\nrecovery_target_xid = '123'",
        )
        .unwrap();
        fs::write(d.join("standby.signal"), "").unwrap();
        fs::write(d.join("pg_hba.conf"), "local all all trust\n").unwrap();
        let warnings = write_settings(d, &settings(Target::Latest), "added by backup").unwrap();
        let auto = fs::read_to_string(d.join("postgresql.auto.conf")).unwrap();
        assert!(
            auto.starts_with(
                "# Do not edit this file manually!\nrestore_command = 'old'\n\
                 recovery_target_xid = '123'\n# added by backup\nrestore_command = '/usr/bin"
            ),
            "{auto}"
        );
        assert!(
            auto.ends_with("recovery_target_timeline = 'latest'\n"),
            "{auto}"
        );
        assert!(!d.join("standby.signal").exists());
        let signal = fs::metadata(d.join("recovery.signal")).unwrap();
        assert_eq!((signal.len(), signal.mode() & 0o777), (0, 0o600));
        assert_eq!(fs::read_to_string(d.join("postgresql.conf")).unwrap(), "");
        assert_eq!(
            fs::read_to_string(d.join("pg_hba.conf")).unwrap(),
            "local all all trust\n",
            "kept"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("standby.signal"), "{warnings:?}");
        assert!(
            warnings[1].starts_with(
                "the base backup holds no postgresql.conf (written empty: the server runs with \
                 the defaults and postgresql.auto.conf), pg_ident.conf (written empty)"
            ),
            "{warnings:?}"
        );
        assert!(warnings[1].contains("/etc/postgresql"), "{warnings:?}");

        // Again (a second restore into the same files): nothing is missing
        // now, and the file is appended to once more.
        let warnings = write_settings(d, &settings(Target::Latest), "again").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let auto = fs::read_to_string(d.join("postgresql.auto.conf")).unwrap();
        assert_eq!(auto.matches("# added by backup\n").count(), 1);
        assert!(auto.contains("'latest'\n# again\n"), "{auto}");
    }

    #[test]
    fn settings_are_never_written_through_a_link() {
        let data = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim.conf");
        fs::write(&victim, "theirs\n").unwrap();
        std::os::unix::fs::symlink(&victim, data.path().join("postgresql.auto.conf")).unwrap();
        assert!(write_settings(data.path(), &settings(Target::Latest), "c").is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "theirs\n");
    }

    /// A physical backup of job `base` in `storage`: `tar` stored through
    /// the pipeline (zstd, and age when `seal` is given).
    async fn stored(storage: &MemoryStorage, tar: Vec<u8>, seal: Option<Crypt>) -> Manifest {
        let encrypted = seal.is_some();
        let encryption = encrypted.then_some("age");
        let name = catalog::object_name(Role::Base, crate::model::Compression::Zstd(3), encrypted);
        let key = catalog::backup_prefix("base", &crate::model::BackupId::parse(ID).unwrap())
            .unwrap()
            .join(&name)
            .unwrap();
        let writer = storage.writer(&key).await.unwrap();
        let (digest, deliveries) = archive::store(
            std::io::Cursor::new(tar),
            crate::model::Compression::Zstd(3),
            seal.unwrap_or_default(),
            vec![archive::Destination {
                storage: "mem".into(),
                writer,
            }],
            "base",
            Arc::new(|_| {}),
            async { Ok(()) },
        )
        .await
        .unwrap();
        assert!(deliveries.iter().all(|d| d.result.is_ok()));
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": ID, "job": "base", "database": "app", "dbname": "",
            "server_version": "15.18", "pg_dump_version": "",
            "snapshot_at": "2026-01-01T00:00:10Z", "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:10Z", "compression": "zstd",
            "encryption": encryption,
            "objects": [{ "key": name, "role": "base", "raw_size": digest.raw_size,
                "raw_sha256": digest.raw_sha256, "stored_size": digest.stored_size,
                "stored_sha256": digest.stored_sha256 }],
            "tables": [],
            "physical": { "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
                "start_time": "2026-01-01T00:00:00Z", "stop_time": "2026-01-01T00:00:10Z",
                "wal_segment_size": 16777216, "wal_start": "000000010000000000000002",
                "wal_stop": "000000010000000000000002", "manifest_checksums": "CRC32C" }
        }))
        .unwrap()
    }

    fn good_tar() -> Vec<u8> {
        let mut files = samples::FILES.to_vec();
        files.push(("postgresql.conf", b"max_connections = 20\n"));
        files.push(("pg_hba.conf", b"local all all peer\n"));
        files.push(("pg_ident.conf", b""));
        files.push((
            "postgresql.auto.conf",
            b"# Do not edit this file manually!\n",
        ));
        samples::tar(&files, &samples::manifest(&files))
    }

    async fn lay(
        storage: &MemoryStorage,
        backup: &Manifest,
        crypt: &Crypt,
        target: &Path,
        dir: &TargetDir,
        owner: Option<(u32, u32)>,
    ) -> Result<Laid> {
        let storage: Arc<dyn Storage> = Arc::new(storage.clone());
        lay_down(
            LayDown {
                backup,
                crypt,
                target,
                dir,
                settings: &settings(at("2024-01-20T05:30:00Z")),
                owner,
                chain: &[],
                chain_crypts: &[],
                combine: None,
            },
            &storage,
            Arc::new(crate::report::Hidden),
        )
        .await
    }

    fn age_key() -> (Crypt, Crypt) {
        let key = age::x25519::Identity::generate();
        let recipients =
            crate::keys::Recipients::parse([key.to_public().to_string().as_str()]).unwrap();
        (
            Crypt::Seal(Arc::new(recipients)),
            Crypt::Open(Arc::new(crate::keys::Identities::load_from_text_for_tests(
                &key,
            ))),
        )
    }

    #[tokio::test]
    async fn a_base_backup_is_laid_down_as_a_data_directory_to_recover() {
        for encrypted in [false, true] {
            let storage = MemoryStorage::new("mem");
            let (seal, open) = if encrypted {
                let (seal, open) = age_key();
                (Some(seal), open)
            } else {
                (None, Crypt::None)
            };
            let backup = stored(&storage, good_tar(), seal).await;
            let base = tempfile::tempdir().unwrap();
            let target = base.path().join("restored/main");
            let dir = check_target(&target, false, ID).unwrap();
            // Root may give files away to anyone; others keep their own.
            let owner = nix::unistd::geteuid().is_root().then_some((54321, 54322));
            let laid = lay(&storage, &backup, &open, &target, &dir, owner)
                .await
                .unwrap();
            // postgresql.auto.conf is not compared, as pg_verifybackup
            // does not compare it.
            assert_eq!((laid.files, laid.bytes), (7, 30 + 3 + 8192 + 21 + 19));
            assert!(laid.warnings.is_empty(), "{:?}", laid.warnings);
            let meta = |p: &str| fs::symlink_metadata(target.join(p)).unwrap();
            assert_eq!(meta("").mode() & 0o7777, 0o700);
            assert_eq!(meta("base/1/1259").len(), 8192);
            assert_eq!(meta("base/1/1259").mode() & 0o777, 0o600);
            assert!(meta("pg_wal/archive_status").is_dir());
            assert_eq!(fs::read_dir(target.join("pg_wal")).unwrap().count(), 1);
            // Kept, as pg_basebackup -Fp keeps it: pg_verifybackup reads it.
            assert!(meta(BACKUP_MANIFEST).is_file());
            assert!(meta("recovery.signal").is_file());
            let auto = fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
            assert!(
                auto.starts_with(
                    "# Do not edit this file manually!\n# added by backup \
                     "
                ),
                "{auto}"
            );
            assert!(
                auto.contains(&format!(
                    "for the point-in-time recovery of job base from base backup {ID}; these \
                     lines override any earlier ones\n"
                )),
                "{auto}"
            );
            assert!(
                auto.contains("recovery_target_time = '2024-01-20 05:30:00.000000+00'\n"),
                "{auto}"
            );
            if let Some((uid, gid)) = owner {
                for p in [
                    "",
                    "base/1/1259",
                    "pg_wal/archive_status",
                    "recovery.signal",
                ] {
                    assert_eq!((meta(p).uid(), meta(p).gid()), (uid, gid), "{p}");
                }
            }
        }
    }

    /// Every entry of `dir`, for comparing what a failure left.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_corrupt_base_backup_leaves_nothing_behind() {
        for encrypted in [false, true] {
            let storage = MemoryStorage::new("mem");
            let (seal, open) = if encrypted {
                let (seal, open) = age_key();
                (Some(seal), open)
            } else {
                (None, Crypt::None)
            };
            let backup = stored(&storage, good_tar(), seal).await;
            let key = catalog::backup_prefix("base", &backup.id)
                .unwrap()
                .join(&backup.objects[0].key)
                .unwrap();
            let mut bytes = storage.get(&key).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            storage.put(&key, bytes);

            let base = tempfile::tempdir().unwrap();
            let target = base.path().join("main");
            let dir = check_target(&target, false, ID).unwrap();
            let err = lay(&storage, &backup, &open, &target, &dir, None)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), Kind::Integrity, "{err:?}");
            assert!(err.message().contains("is corrupt"), "{err}");
            assert!(
                err.message().starts_with(&format!(
                    "laying down base backup {ID} of job base in {}",
                    target.display()
                )),
                "{err}"
            );
            assert!(
                err.hint().unwrap_or_default().starts_with(&format!(
                    "{}, which this restore created, was removed",
                    target.display()
                )),
                "{err:?}"
            );
            assert!(
                listing(base.path()).is_empty(),
                "{:?}",
                listing(base.path())
            );

            // An empty target that was there stays, empty, with its mode.
            fs::create_dir(&target).unwrap();
            fs::set_permissions(&target, fs::Permissions::from_mode(0o751)).unwrap();
            let dir = check_target(&target, false, ID).unwrap();
            let err = lay(&storage, &backup, &open, &target, &dir, None)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), Kind::Integrity, "{err:?}");
            assert!(listing(&target).is_empty(), "{:?}", listing(&target));
            assert_eq!(fs::metadata(&target).unwrap().mode() & 0o777, 0o751);
            assert!(
                err.hint().unwrap_or_default().contains("is empty again"),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_base_backup_that_does_not_match_its_backup_manifest_is_refused() {
        // The digests of what was stored match; a file changed before.
        let mut files = samples::FILES.to_vec();
        files[1] = ("PG_VERSION", b"16\n");
        let changed = samples::tar(&files, &samples::manifest(samples::FILES));
        let storage = MemoryStorage::new("mem");
        let backup = stored(&storage, changed, None).await;
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("main");
        let dir = check_target(&target, false, ID).unwrap();
        let err = lay(&storage, &backup, &Crypt::None, &target, &dir, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Kind::Integrity);
        assert!(
            err.message().contains(
                "base.tar.zst in storage mem: its digests match, but PG_VERSION has CRC32C"
            ),
            "{err}"
        );
        assert!(
            err.message()
                .contains("the tar's backup_manifest says 8a744722"),
            "{err}"
        );
        assert!(
            listing(base.path()).is_empty(),
            "{:?}",
            listing(base.path())
        );
    }

    #[tokio::test]
    async fn forced_over_a_directory_the_old_content_stays_until_the_new_is_complete() {
        let storage = MemoryStorage::new("mem");
        let backup = stored(&storage, good_tar(), None).await;
        let key = catalog::backup_prefix("base", &backup.id)
            .unwrap()
            .join(&backup.objects[0].key)
            .unwrap();
        let good = storage.get(&key).unwrap();
        let mut bad = good.clone();
        let end = bad.len() - 10;
        bad[end] ^= 1;
        storage.put(&key, bad);

        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("main");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("old.txt"), "old").unwrap();
        fs::write(target.join("PG_VERSION"), "14\n").unwrap();
        let leftover = base.path().join(".main.restoring-20250101T000000Z");
        fs::create_dir(&leftover).unwrap();
        fs::write(leftover.join("half"), "x").unwrap();

        let dir = check_target(&target, true, ID).unwrap();
        let err = lay(&storage, &backup, &Crypt::None, &target, &dir, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Kind::Integrity, "{err:?}");
        assert!(
            err.hint().unwrap_or_default().starts_with(&format!(
                "{} was not touched, and the copy laid down beside it was removed",
                target.display()
            )),
            "{err:?}"
        );
        assert_eq!(listing(&target), ["PG_VERSION", "old.txt"]);
        assert_eq!(
            fs::read_to_string(target.join("PG_VERSION")).unwrap(),
            "14\n"
        );
        assert_eq!(listing(base.path()), ["main"], "staging and leftover gone");

        storage.put(&key, good);
        let dir = check_target(&target, true, ID).unwrap();
        let laid = lay(&storage, &backup, &Crypt::None, &target, &dir, None)
            .await
            .unwrap();
        assert_eq!(laid.files, 7);
        assert_eq!(
            fs::read_to_string(target.join("PG_VERSION")).unwrap(),
            "15\n"
        );
        assert!(!target.join("old.txt").exists());
        assert!(target.join("recovery.signal").exists());
        assert_eq!(fs::metadata(&target).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(
            listing(base.path()),
            ["main"],
            "the old content was removed"
        );
    }

    #[tokio::test]
    async fn a_backup_that_is_not_physical_is_refused_before_anything_is_written() {
        let storage = MemoryStorage::new("mem");
        let mut backup = stored(&storage, good_tar(), None).await;
        backup.physical = None;
        let base = tempfile::tempdir().unwrap();
        let target = base.path().join("main");
        let dir = check_target(&target, false, ID).unwrap();
        let err = lay(&storage, &backup, &Crypt::None, &target, &dir, None)
            .await
            .unwrap_err();
        assert!(
            err.message().contains("not a physical base backup"),
            "{err}"
        );
        assert!(listing(base.path()).is_empty());
    }
}
