//! `backup wal push`: WAL files from `pg_wal/` into every storage of a
//! physical job, as `archive_command` runs it.
//!
//! One file ([`push`]): the raw digest is computed first, as it is part of
//! the object's name; then each storage is asked whether it holds the file
//! already: with the same digest that storage is done, with another the
//! push is refused (two clusters archiving into one job, or a restored
//! cluster on an old timeline, must not overwrite the archive). The rest get
//! the file through the pipeline, compressed once, read through a check of
//! that digest: a file that changed since it was hashed fails the read, so
//! every upload is aborted and no object's name lies about its bytes. Each
//! storage that took the file is listed again: two servers pushing the same
//! name at once both pass the first look, and the second look is where one
//! of them learns of the other. Success means every storage has it, alone
//! under its name.
//!
//! PostgreSQL waits for each call, one file at a time, so a call does more
//! than its file ([`archive_command`]):
//! - it pushes up to `wal_push_ahead` further segments that
//!   `archive_status/*.ready` lists, in parallel with its own, and notes each
//!   in the spool with the storages it went into; PostgreSQL's later call for
//!   one of those checks the file's digest against the note, and the job's
//!   storages against the note's, and returns without opening a storage;
//! - past `wal_queue_max` of `.ready` segments it drops a segment instead of
//!   letting `pg_wal` fill the disk: PostgreSQL hears success, the operator
//!   hears an error in the server log, and every storage that answers gets a
//!   marker (`<job>/wal/dropped/<file>.json`) that `check` reports; when none
//!   takes it, the spool keeps it (`dropped/<file>.json`).
//!
//! Storages are opened only when something must be listed or stored
//! ([`Storages`]): a call the spool answers opens none.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use super::names::{Archived, DROPPED_DIR, WalFile, wal_prefix};
use super::object::list_dir;
pub use super::spool::DroppedMarker;
use super::spool::{self, Spool};
use crate::archive::{self, Destination, crypt::Crypt};
use crate::error::{Error, Kind, Result};
use crate::model::{Compression, WalSettings};
use crate::storage::{Key, Storage};

/// Opens the storage at an index of the job's list.
type Open<'a> = Box<dyn Fn(usize) -> BoxFuture<'a, Result<Arc<dyn Storage>>> + Send + Sync + 'a>;

/// A job's storages, in the job's order, each opened the first time it is
/// needed and kept open for the rest of the call.
pub struct Storages<'a> {
    names: Vec<String>,
    open: Open<'a>,
    opened: Vec<OnceCell<Arc<dyn Storage>>>,
}

impl<'a> Storages<'a> {
    /// `names` in the job's order; `open(i)` opens the i-th.
    pub fn new(
        names: Vec<String>,
        open: impl Fn(usize) -> BoxFuture<'a, Result<Arc<dyn Storage>>> + Send + Sync + 'a,
    ) -> Storages<'a> {
        let opened = names.iter().map(|_| OnceCell::new()).collect();
        Storages {
            names,
            open: Box::new(open),
            opened,
        }
    }

    /// Storages opened already.
    pub fn opened(storages: &[Arc<dyn Storage>]) -> Storages<'static> {
        let list: Vec<Arc<dyn Storage>> = storages.to_vec();
        let names = list.iter().map(|s| s.name().to_owned()).collect();
        let opened = list
            .iter()
            .map(|s| OnceCell::new_with(Some(s.clone())))
            .collect();
        Storages {
            names,
            open: Box::new(|i| {
                Box::pin(std::future::ready(Err(Error::internal(format!(
                    "storage {i} was to be open already"
                )))))
            }),
            opened,
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// Every storage's name, in the job's order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The `index`-th storage, opened now if it was not.
    pub async fn get(&self, index: usize) -> Result<&Arc<dyn Storage>> {
        self.opened[index]
            .get_or_try_init(|| (self.open)(index))
            .await
    }

    /// Every storage, opened at once; the first that fails to open fails all.
    pub async fn all(&self) -> Result<Vec<Arc<dyn Storage>>> {
        let opened = futures::future::join_all((0..self.len()).map(|i| self.get(i))).await;
        opened.into_iter().map(|s| s.cloned()).collect()
    }
}

/// What one push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub file: WalFile,
    pub sha256: String,
    pub size: u64,
    /// Storages that received it now.
    pub stored: Vec<String>,
    /// Storages that held it already, with the same bytes.
    pub already: Vec<String>,
}

/// The archive of a job as `wal push` writes it.
pub struct Archive<'a> {
    pub job: &'a str,
    pub compression: Compression,
    /// How objects are sealed ([`crate::archive::crypt::sealing`]).
    pub crypt: Crypt,
    pub storages: Storages<'a>,
}

/// How one `archive_command` call ended, PostgreSQL's file being archived
/// (or, for [`Outcome::Dropped`], given up) in each case.
#[derive(Debug)]
pub enum Outcome {
    /// Pushed now, or found in every storage; with what was pushed ahead.
    Pushed { pushed: Pushed, ahead: Vec<Pushed> },
    /// An earlier call pushed it ahead, and its bytes are the same.
    Spooled { file: WalFile, sha256: String },
    /// The queue valve let it go unarchived.
    Dropped(Dropped),
}

/// A file the queue valve let go.
#[derive(Debug)]
pub struct Dropped {
    pub file: WalFile,
    pub backlog_bytes: u64,
    pub limit_bytes: u64,
    /// Storages that hold the marker.
    pub marked: Vec<String>,
    /// Storages that could not be given the marker, and why.
    pub unmarked: Vec<(String, Error)>,
}

/// `<job>/wal/dropped`: where the markers of dropped files are.
pub fn dropped_prefix(job: &str) -> Result<Key> {
    wal_prefix(job)?.join(DROPPED_DIR)
}

/// The marker's key for `file`.
pub fn dropped_key(job: &str, file: &WalFile) -> Result<Key> {
    dropped_prefix(job)?.join(&format!("{}.json", file.name()))
}

/// The file name `path` ends in, as a WAL file.
pub fn wal_file(path: &Path) -> Result<WalFile> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    WalFile::parse(name).ok_or_else(|| {
        Error::usage(format!(
            "{} is not a WAL file (a segment, .partial, .backup or .history file)",
            path.display()
        ))
        .with_hint("PostgreSQL passes it as %p: archive_command = 'backup wal push --job J %p'")
    })
}

/// SHA-256 and size of the file at `path`.
pub fn digest_file(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path).map_err(|e| missing_or_unreadable(path, e))?;
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; archive::CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::io(
                    Kind::Internal,
                    format!("reading {}", path.display()),
                    e,
                ));
            }
        };
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((archive::hex(&sha.finalize()), size))
}

/// The error for a file that cannot be opened: a missing one is named with
/// the directory it was looked for in, as `%p` is relative to the data
/// directory.
fn missing_or_unreadable(path: &Path, e: std::io::Error) -> Error {
    if e.kind() != std::io::ErrorKind::NotFound {
        return Error::io(Kind::Internal, format!("reading {}", path.display()), e);
    }
    let place = if path.is_relative() {
        std::env::current_dir()
            .map(|d| format!(" (looked for in {})", d.display()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Error::not_found(format!("{} does not exist{place}", path.display())).with_hint(
        "PostgreSQL runs archive_command in its data directory and passes %p, the file's path \
         relative to it: archive_command = 'backup wal push --job J %p'",
    )
}

async fn digest_in_background(path: &Path) -> Result<(String, u64)> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || digest_file(&owned))
        .await
        .map_err(|e| Error::internal(format!("hashing a WAL file: {e}")))?
}

/// Pushes the file at `path` into every storage. `job` names the archive.
pub async fn push(
    job: &str,
    storages: &[Arc<dyn Storage>],
    compression: Compression,
    crypt: Crypt,
    path: &Path,
) -> Result<Pushed> {
    push_one(job, &Storages::opened(storages), compression, crypt, path).await
}

async fn push_one(
    job: &str,
    storages: &Storages<'_>,
    compression: Compression,
    crypt: Crypt,
    path: &Path,
) -> Result<Pushed> {
    let file = wal_file(path)?;
    let (sha256, size) = digest_in_background(path).await?;
    let storages = storages.all().await?;
    let prefix = file.prefix(job)?;
    // Every storage is asked at once: the archive waits on the slowest.
    let listings =
        futures::future::join_all(storages.iter().map(|s| list_dir(s.as_ref(), &prefix))).await;
    let mut already = Vec::new();
    let mut needed: Vec<&Arc<dyn Storage>> = Vec::new();
    let mut failures: Vec<(String, Error)> = Vec::new();
    for (storage, listing) in storages.iter().zip(listings) {
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                failures.push((storage.name().to_owned(), e));
                continue;
            }
        };
        // Any other copy under the name is a conflict, even beside ours:
        // a fetch would not know which one to trust.
        if let Some(other) = other_copy(&listing, &file, &sha256) {
            return Err(Error::refused(format!(
                "job {job}: {file} is already archived in storage {} with other contents \
                 (sha256 {}, this file's is {sha256}); nothing was overwritten",
                storage.name(),
                other.sha256
            ))
            .with_hint(ONE_CLUSTER_HINT));
        }
        if listing.iter().any(|a| a.file == file) {
            already.push(storage.name().to_owned());
        } else {
            needed.push(storage);
        }
    }
    let mut stored = Vec::new();
    if !needed.is_empty() {
        let key = file.key(job, &sha256, compression, !matches!(crypt, Crypt::None))?;
        let mut destinations = Vec::with_capacity(needed.len());
        for storage in &needed {
            match storage.writer(&key).await {
                Ok(writer) => destinations.push(Destination {
                    storage: storage.name().to_owned(),
                    writer,
                }),
                Err(e) => failures.push((storage.name().to_owned(), e)),
            }
        }
        if !destinations.is_empty() {
            let source = std::fs::File::open(path).map_err(|e| missing_or_unreadable(path, e))?;
            let (_, deliveries) = archive::store_checked(
                source,
                compression,
                crypt,
                destinations,
                &key.to_string(),
                Arc::new(|_| {}),
                std::future::ready(Ok(())),
                unchanged(path, &sha256, size),
            )
            .await?;
            for d in deliveries {
                match d.result {
                    Ok(()) => stored.push(d.storage),
                    Err(e) => failures.push((d.storage, e)),
                }
            }
        }
    }
    // The look before storing and the store are two steps: another server
    // pushing the same name at the same time passed the same look.
    let took: Vec<&Arc<dyn Storage>> = storages
        .iter()
        .filter(|s| stored.iter().any(|n| n == s.name()))
        .collect();
    let relisted =
        futures::future::join_all(took.iter().map(|s| list_dir(s.as_ref(), &prefix))).await;
    for (storage, listing) in took.iter().zip(relisted) {
        match listing {
            Ok(listing) => {
                if let Some(other) = other_copy(&listing, &file, &sha256) {
                    return Err(Error::refused(format!(
                        "job {job}: {file} was stored in storage {} with sha256 {sha256} while \
                         another copy with sha256 {} was stored there too: two servers are \
                         archiving into this job; nothing was deleted",
                        storage.name(),
                        other.sha256
                    ))
                    .with_hint(ONE_CLUSTER_HINT));
                }
            }
            Err(e) => failures.push((
                storage.name().to_owned(),
                e.context(format!("listing {prefix} again after storing {file}")),
            )),
        }
    }
    if let Some((storage, e)) = failures.into_iter().next() {
        return Err(e.context(format!(
            "job {job}: {file} could not be archived in storage {storage}"
        )));
    }
    Ok(Pushed {
        file,
        sha256,
        size,
        stored,
        already,
    })
}

const ONE_CLUSTER_HINT: &str = "only one cluster may archive into a job: check the \
    archive_command of every server pointing at this job (a restored or cloned cluster keeps \
    its parent's); once you know which copy is right, move the other aside by hand";

/// A copy of `file` in `listing` whose digest is not `sha256`.
fn other_copy<'l>(listing: &'l [Archived], file: &WalFile, sha256: &str) -> Option<&'l Archived> {
    listing
        .iter()
        .find(|a| a.file == *file && a.sha256 != sha256)
}

/// The check that the file pushed is the one hashed before: a digest
/// other than the name's fails the store before any upload finishes, so no
/// object is ever finished under a name that lies about its bytes. (The
/// pipeline hashes the raw bytes anyway; this reads them once less than a
/// checking reader would.)
fn unchanged<'a>(
    path: &'a Path,
    sha256: &'a str,
    size: u64,
) -> impl FnOnce(&archive::ObjectDigest) -> Result<()> + 'a {
    move |digest| {
        if digest.raw_sha256 == sha256 && digest.raw_size == size {
            return Ok(());
        }
        Err(Error::integrity(format!(
            "{} changed while it was being archived ({size} bytes with sha256 {sha256}, then {} \
             bytes with sha256 {}); nothing was stored",
            path.display(),
            digest.raw_size,
            digest.raw_sha256,
        ))
        .with_hint(
            "PostgreSQL never changes a segment it hands to archive_command: is something \
             else writing pg_wal?",
        ))
    }
}

/// What `archive_command` asks: the file at `path` archived in every
/// storage of the job (or dropped by the queue valve), with push-ahead.
/// `now` stamps a drop's marker and ages the spool.
pub async fn archive_command(
    archive: &Archive<'_>,
    wal: &WalSettings,
    path: &Path,
    now: Timestamp,
) -> Result<Outcome> {
    let job = archive.job;
    let file = wal_file(path)?;
    let name = file.name();
    // Without a spool there is no push-ahead; the push itself goes on.
    let spool = match Spool::open(&wal.spool, job) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "{}; pushing without push-ahead{}",
                e.message(),
                e.hint().map(|h| format!(" ({h})")).unwrap_or_default()
            );
            None
        }
    };
    let storage_names = archive.storages.names();
    if let Some(spool) = &spool
        && let Some(noted) = spool.pushed(&name)
    {
        spool.forget_pushed(&name);
        if !noted.covers(storage_names) {
            // The job's storages changed since: one added was never given it.
            tracing::info!(
                "job {job}: {name} was pushed ahead into storages {}, and the job's are now {}; \
                 pushing it again",
                noted.storages.join(", "),
                storage_names.join(", ")
            );
        } else {
            let (sha256, _) = digest_in_background(path).await?;
            if sha256 == noted.sha256 {
                return Ok(Outcome::Spooled { file, sha256 });
            }
            tracing::warn!(
                "job {job}: {name} was pushed ahead with sha256 {}, and now reads {sha256}; \
                 pushing it again",
                noted.sha256
            );
        }
    }
    let status_dir = archive_status_dir(path);
    let ready = ready_segments(&status_dir);
    // Only segments are ever dropped: a history file or a backup label is
    // a few bytes, and recovery cannot follow a timeline without them.
    if let (Some(limit), WalFile::Segment(_)) = (wal.queue_max, &file) {
        let segment_size = std::fs::metadata(path)
            .map_err(|e| missing_or_unreadable(path, e))?
            .len();
        let backlog = ready.len() as u64 * segment_size;
        if backlog > limit {
            return Ok(Outcome::Dropped(
                drop_file(archive, &wal.spool, file, backlog, limit, now).await,
            ));
        }
    }
    let ahead: Vec<PathBuf> = match &spool {
        Some(spool) if wal.push_ahead > 0 => {
            spool.remove_stale(now);
            ready
                .iter()
                .filter(|n| {
                    **n != name
                        && !spool
                            .pushed(n)
                            .is_some_and(|note| note.covers(storage_names))
                })
                .take(wal.push_ahead as usize)
                .map(|n| path.with_file_name(n))
                .collect()
        }
        _ => Vec::new(),
    };
    let pushes = std::iter::once(path.to_path_buf())
        .chain(ahead)
        .map(|p| async move {
            let result = push_one(
                job,
                &archive.storages,
                archive.compression,
                archive.crypt.clone(),
                &p,
            )
            .await;
            (p, result)
        });
    let mut results = futures::future::join_all(pushes).await.into_iter();
    let (_, own) = results
        .next()
        .ok_or_else(|| Error::internal("the push of the file itself went missing"))?;
    let mut pushed_ahead = Vec::new();
    let mut noting = spool.as_ref();
    for (p, result) in results {
        match result {
            Ok(pushed) => {
                if let Some(spool) = noting
                    && let Err(e) =
                        spool.note_pushed(&pushed.file.name(), &pushed.sha256, storage_names)
                {
                    // PostgreSQL's own call will find it archived: slower, not wrong.
                    tracing::warn!(
                        "job {job}: {}; push-ahead goes on without noting",
                        e.message()
                    );
                    noting = None;
                }
                pushed_ahead.push(pushed);
            }
            // PostgreSQL's own call for it tries again and reports.
            Err(e) => tracing::debug!(
                "job {job}: pushing {} ahead failed: {}",
                p.display(),
                e.message()
            ),
        }
    }
    Ok(Outcome::Pushed {
        pushed: own?,
        ahead: pushed_ahead,
    })
}

/// `archive_status/` beside the file PostgreSQL passed.
fn archive_status_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("archive_status")
}

/// The segments `archive_status/` marks `.ready`, oldest first. A directory
/// that cannot be read lists none: push-ahead and the queue valve then
/// leave the push as it is.
fn ready_segments(status_dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(status_dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::debug!("reading {}: {e}", status_dir.display());
            return Vec::new();
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let stem = name.strip_suffix(".ready")?;
            matches!(WalFile::parse(stem), Some(WalFile::Segment(_))).then(|| stem.to_owned())
        })
        .collect();
    names.sort();
    names
}

/// Lets `file` go unarchived, says so loudly, and leaves a marker in every
/// storage that answers; in the spool under `spool_root` when none does.
async fn drop_file(
    archive: &Archive<'_>,
    spool_root: &Path,
    file: WalFile,
    backlog_bytes: u64,
    limit_bytes: u64,
    now: Timestamp,
) -> Dropped {
    let job = archive.job;
    tracing::error!(
        "job {job}: {file} was NOT archived: {} of WAL wait to be archived, more than \
         wal_queue_max ({}); point-in-time recovery cannot cross it until the next base \
         backup. Find out why archiving is behind (backup wal check --job {job}) and take a \
         base backup once it has caught up",
        crate::model::bytes_human(backlog_bytes),
        crate::model::bytes_human(limit_bytes),
    );
    let marker = DroppedMarker {
        file: file.name(),
        dropped_at: now,
        backlog_bytes,
        limit_bytes,
    };
    let mut dropped = Dropped {
        file,
        backlog_bytes,
        limit_bytes,
        marked: Vec::new(),
        unmarked: Vec::new(),
    };
    mark_in_storages(archive, &marker, &mut dropped).await;
    if dropped.marked.is_empty() {
        let kept = match spool::record_dropped(spool_root, job, &marker) {
            Ok(()) => format!(
                "it is recorded in the spool ({}) instead",
                spool::job_dir(spool_root, job)
                    .join(spool::DROPPED_DIR)
                    .display()
            ),
            Err(e) => format!("nor in the spool: {}", e.message()),
        };
        tracing::error!(
            "job {job}: the marker of dropped {} could not be stored in any storage; {kept}. \
             Until a marker is stored, `backup check` on another host cannot see this gap",
            dropped.file
        );
    }
    dropped
}

/// Writes `marker` into every storage that answers, noting in `dropped`
/// which did and which did not.
async fn mark_in_storages(archive: &Archive<'_>, marker: &DroppedMarker, dropped: &mut Dropped) {
    let job = archive.job;
    let text = match serde_json::to_vec_pretty(marker) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("job {job}: encoding the marker of {}: {e}", dropped.file);
            return;
        }
    };
    let key = match dropped_key(job, &dropped.file) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("job {job}: {}", e.message());
            return;
        }
    };
    let marks = (0..archive.storages.len()).map(|i| {
        let (key, text) = (&key, &text);
        async move {
            let storage = archive.storages.get(i).await?;
            let mut writer = storage.writer(key).await?;
            writer.write(text).await?;
            writer.finish().await.map(drop)
        }
    });
    let results = futures::future::join_all(marks).await;
    for (i, result) in results.into_iter().enumerate() {
        let name = archive.storages.name(i).to_owned();
        match result {
            Ok(()) => dropped.marked.push(name),
            Err(e) => {
                tracing::error!(
                    "job {job}: the marker of dropped {} could not be written to storage {name}: {}",
                    dropped.file,
                    e.message()
                );
                dropped.unmarked.push((name, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStorage;

    /// A `pg_wal` with `names` written and marked `.ready`.
    fn pg_wal(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("archive_status")).unwrap();
        for (i, name) in names.iter().enumerate() {
            std::fs::write(dir.path().join(name), vec![i as u8; 1 << 20]).unwrap();
            std::fs::write(
                dir.path()
                    .join("archive_status")
                    .join(format!("{name}.ready")),
                b"",
            )
            .unwrap();
        }
        dir
    }

    #[tokio::test]
    async fn files_pushed_ahead_are_answered_from_the_spool_without_a_storage() {
        let names = [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
        ];
        let wal_dir = pg_wal(&names);
        let spool = tempfile::tempdir().unwrap();
        let wal = WalSettings {
            push_ahead: 1,
            spool: spool.path().to_path_buf(),
            ..WalSettings::default()
        };
        let memory = MemoryStorage::new("mem");
        let archive = Archive {
            job: "base",
            compression: Compression::None,
            crypt: Crypt::None,
            storages: Storages::opened(&[Arc::new(memory.clone()) as Arc<dyn Storage>]),
        };
        let now = Timestamp::now();
        let first = archive_command(&archive, &wal, &wal_dir.path().join(names[0]), now)
            .await
            .unwrap();
        let Outcome::Pushed { pushed, ahead } = first else {
            panic!("{first:?}");
        };
        assert_eq!(pushed.stored, ["mem"]);
        let ahead: Vec<String> = ahead.iter().map(|a| a.file.name()).collect();
        assert_eq!(ahead, [names[1]]);

        // Storages that cannot even be opened: the spool answers alone.
        let closed = Archive {
            storages: Storages::new(vec!["mem".into()], |_| {
                Box::pin(std::future::ready(Err(Error::storage("not to be opened"))))
            }),
            ..archive
        };
        let second = archive_command(&closed, &wal, &wal_dir.path().join(names[1]), now)
            .await
            .unwrap();
        assert!(matches!(second, Outcome::Spooled { .. }), "{second:?}");
        // Used once: a second call for it looks at the storages.
        let again = archive_command(&closed, &wal, &wal_dir.path().join(names[1]), now)
            .await
            .unwrap_err();
        assert_eq!(again.message(), "not to be opened");

        // Bytes other than those pushed ahead: pushed (here: refused) again.
        let notes = Spool::open(spool.path(), "base").unwrap();
        notes
            .note_pushed(names[2], &"0".repeat(64), &["mem".into()])
            .unwrap();
        let e = archive_command(&closed, &wal, &wal_dir.path().join(names[2]), now)
            .await
            .unwrap_err();
        assert_eq!(e.message(), "not to be opened");
    }

    #[tokio::test]
    async fn a_spool_note_for_other_storages_is_not_trusted() {
        let name = "000000010000000000000003";
        let wal_dir = pg_wal(&[name]);
        let path = wal_dir.path().join(name);
        let (sha256, _) = digest_file(&path).unwrap();
        let spool = tempfile::tempdir().unwrap();
        let wal = WalSettings {
            push_ahead: 0,
            spool: spool.path().to_path_buf(),
            ..WalSettings::default()
        };
        // Pushed ahead into `mem` alone; the job now also has `new`.
        Spool::open(spool.path(), "base")
            .unwrap()
            .note_pushed(name, &sha256, &["mem".into()])
            .unwrap();
        let (mem, new) = (MemoryStorage::new("mem"), MemoryStorage::new("new"));
        let archive = Archive {
            job: "base",
            compression: Compression::None,
            crypt: Crypt::None,
            storages: Storages::opened(&[
                Arc::new(mem.clone()) as Arc<dyn Storage>,
                Arc::new(new.clone()),
            ]),
        };
        let outcome = archive_command(&archive, &wal, &path, Timestamp::now())
            .await
            .unwrap();
        let Outcome::Pushed { pushed, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(pushed.stored, ["mem", "new"]);
        let key = pushed
            .file
            .key("base", &sha256, Compression::None, false)
            .unwrap();
        assert!(new.get(&key).is_some());
    }

    #[tokio::test]
    async fn a_file_that_changes_while_it_is_stored_leaves_nothing_stored() {
        let memory = MemoryStorage::new("mem");
        let key = Key::new("base/wal/0000000100000000/000000010000000000000003-x").unwrap();
        let hashed = vec![7u8; 3 << 20];
        let (sha256, size) = (archive::sha256_hex(&hashed), hashed.len() as u64);
        // What the reader finds when it reads: one byte has changed.
        let mut read = hashed.clone();
        read[2 << 20] = 8;
        let path = Path::new("pg_wal/000000010000000000000003");
        let source = std::io::Cursor::new(read);
        let destinations = vec![Destination {
            storage: "mem".into(),
            writer: memory.writer(&key).await.unwrap(),
        }];
        let e = archive::store_checked(
            source,
            Compression::Zstd(3),
            Crypt::None,
            destinations,
            key.as_str(),
            Arc::new(|_| {}),
            std::future::ready(Ok(())),
            unchanged(path, &sha256, size),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), Kind::Integrity, "{e:?}");
        assert!(
            e.message()
                .contains("pg_wal/000000010000000000000003 changed while it was being archived"),
            "{e:?}"
        );
        assert!(e.hint().is_some_and(|h| h.contains("pg_wal")), "{e:?}");
        assert!(memory.get(&key).is_none());
        assert!(
            memory
                .list(&Key::new("base").unwrap())
                .await
                .unwrap()
                .is_empty()
        );

        // The same bytes pass.
        let source = std::io::Cursor::new(hashed);
        let destinations = vec![Destination {
            storage: "mem".into(),
            writer: memory.writer(&key).await.unwrap(),
        }];
        let (digest, _) = archive::store_checked(
            source,
            Compression::Zstd(3),
            Crypt::None,
            destinations,
            key.as_str(),
            Arc::new(|_| {}),
            std::future::ready(Ok(())),
            unchanged(path, &sha256, size),
        )
        .await
        .unwrap();
        assert_eq!(digest.raw_sha256, sha256);
        assert!(memory.get(&key).is_some());
    }

    /// A storage where another server stores `other` under the same name
    /// as soon as this one starts writing: after the look, before the end.
    #[derive(Debug)]
    struct Racing {
        inner: MemoryStorage,
        other: Key,
    }

    #[async_trait::async_trait]
    impl Storage for Racing {
        fn name(&self) -> &str {
            self.inner.name()
        }
        async fn writer(&self, key: &Key) -> Result<Box<dyn crate::storage::ObjectWriter>> {
            self.inner.put(&self.other, b"another server's".to_vec());
            self.inner.writer(key).await
        }
        async fn reader(&self, key: &Key) -> Result<crate::storage::ObjectReader> {
            self.inner.reader(key).await
        }
        async fn list(&self, prefix: &Key) -> Result<Vec<crate::storage::ObjectInfo>> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &Key) -> Result<()> {
            self.inner.delete(key).await
        }
    }

    #[tokio::test]
    async fn two_servers_pushing_one_name_at_once_fail_and_nothing_is_deleted() {
        let name = "000000010000000000000003";
        let wal_dir = pg_wal(&[name]);
        let path = wal_dir.path().join(name);
        let file = WalFile::Segment(name.into());
        let other_sha = "cd".repeat(32);
        let other = file
            .key("base", &other_sha, Compression::None, false)
            .unwrap();
        let memory = MemoryStorage::new("mem");
        let racing: Arc<dyn Storage> = Arc::new(Racing {
            inner: memory.clone(),
            other: other.clone(),
        });
        let e = push("base", &[racing], Compression::None, Crypt::None, &path)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), Kind::Refused, "{e:?}");
        let (sha256, _) = digest_file(&path).unwrap();
        assert!(e.message().contains(&sha256), "{e:?}");
        assert!(e.message().contains(&other_sha), "{e:?}");
        assert!(e.message().contains("storage mem"), "{e:?}");
        assert!(e.hint().is_some());
        // Both copies stay for the operator to judge.
        let ours = file.key("base", &sha256, Compression::None, false).unwrap();
        assert!(memory.get(&ours).is_some());
        assert!(memory.get(&other).is_some());
        // And a push that finds them both refuses before storing.
        let again = push(
            "base",
            &[Arc::new(memory.clone()) as Arc<dyn Storage>],
            Compression::None,
            Crypt::None,
            &path,
        )
        .await
        .unwrap_err();
        assert_eq!(again.kind(), Kind::Refused, "{again:?}");
        assert!(again.message().contains("other contents"), "{again:?}");
    }

    #[tokio::test]
    async fn a_drop_no_storage_takes_is_recorded_in_the_spool() {
        let names = ["000000010000000000000003", "000000010000000000000004"];
        let wal_dir = pg_wal(&names);
        let spool = tempfile::tempdir().unwrap();
        let wal = WalSettings {
            queue_max: Some(1 << 20),
            spool: spool.path().to_path_buf(),
            ..WalSettings::default()
        };
        let archive = Archive {
            job: "base",
            compression: Compression::None,
            crypt: Crypt::None,
            storages: Storages::new(vec!["mem".into()], |_| {
                Box::pin(std::future::ready(Err(Error::storage("down"))))
            }),
        };
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let outcome = archive_command(&archive, &wal, &wal_dir.path().join(names[0]), now)
            .await
            .unwrap();
        let Outcome::Dropped(dropped) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(dropped.marked.is_empty());
        assert_eq!(
            spool::dropped(spool.path(), "base"),
            [DroppedMarker {
                file: names[0].into(),
                dropped_at: now,
                backlog_bytes: 2 << 20,
                limit_bytes: 1 << 20,
            }]
        );
    }

    #[test]
    fn ready_segments_are_listed_oldest_first_without_other_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "000000010000000000000005.ready",
            "000000010000000000000003.ready",
            "000000010000000000000004.done",
            "00000002.history.ready",
            "000000010000000000000003.00000028.backup.ready",
            "000000010000000000000006.partial.ready",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            ready_segments(dir.path()),
            ["000000010000000000000003", "000000010000000000000005"]
        );
        assert!(ready_segments(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn the_status_directory_is_beside_the_file() {
        assert_eq!(
            archive_status_dir(Path::new("pg_wal/000000010000000000000003")),
            Path::new("pg_wal/archive_status")
        );
        assert_eq!(
            archive_status_dir(Path::new("000000010000000000000003")),
            Path::new("./archive_status")
        );
    }

    #[test]
    fn a_dropped_file_is_marked_under_the_job() {
        let file = WalFile::Segment("000000010000000000000003".into());
        assert_eq!(
            dropped_key("base", &file).unwrap().as_str(),
            "base/wal/dropped/000000010000000000000003.json"
        );
        let marker = DroppedMarker {
            file: file.name(),
            dropped_at: Timestamp::from_second(1_700_000_000).unwrap(),
            backlog_bytes: 3 << 24,
            limit_bytes: 1 << 24,
        };
        let json: serde_json::Value = serde_json::to_value(&marker).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "file": "000000010000000000000003",
                "dropped_at": "2023-11-14T22:13:20Z",
                "backlog_bytes": 50331648,
                "limit_bytes": 16777216,
            })
        );
    }
}
