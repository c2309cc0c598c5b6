//! `backup wal fetch`: one archived WAL file back into `pg_wal/`, as
//! `restore_command` runs it during recovery.
//!
//! The file is read from the first storage, in the job's order, that has
//! it; its raw bytes are checked against the digest its name carries before
//! the target is put in place (a temporary file beside it, synced, then
//! renamed), so a corrupt copy is never handed to PostgreSQL: the next
//! storage is tried instead. A storage that holds two copies of one name
//! with different digests (two servers archived into the job) has no copy
//! to trust: it is passed over too, never settled by picking one. A file
//! no storage has is an answer, not an error: PostgreSQL asks for files
//! that do not exist (the next timeline's history, the segment after the
//! last) to learn where the archive ends. A storage that does not answer
//! is not that answer: it may hold the file.
//!
//! Replay waits on every call, so the calls do not fetch what comes next
//! themselves: a call for segment S notes S in the spool
//! (`fetched/<key of the data directory>/`) and, when one of the next
//! `wal_fetch_ahead` segments of its timeline is missing there, starts a
//! process of its own in the background ([`fetch_ahead`], `wal fetch
//! --ahead-of S`) and returns as soon as S is in place. That process,
//! alone per data directory (a lock in the spool), fetches the missing ones
//! in parallel and follows the segment PostgreSQL asked for last until none
//! is missing, or the archive has no more; PostgreSQL's calls for them are
//! served from the spool without opening a storage. Every file is written
//! beside its name and renamed, so a call and the background process
//! fetching one segment at once never see half of it. A temporary file a
//! killed call left is removed by a later call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use tokio::sync::OnceCell;

use super::names::{Archived, DEFAULT_SEGMENT_SIZE, Segment, WalFile};
use super::object::{list_dir, read};
use super::push::Storages;
use super::spool::{self, Fetched, Spool};
use crate::archive::crypt::Crypt;
use crate::error::{Error, Kind, Result};
use crate::model::WalSettings;
use crate::storage::{Key, Storage};

/// The archive of a job as `wal fetch` reads it.
pub struct Archive<'a> {
    pub job: &'a str,
    /// Opens encrypted objects: the job's identities, or none.
    pub crypt: Crypt,
    pub storages: Storages<'a>,
}

/// Where a fetched file came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An earlier call fetched it ahead.
    Spool,
    Storage(String),
}

/// Starts [`fetch_ahead`] in a process of its own, without waiting for it:
/// `(segment, key)`, the segment asked for and the key of the recovery's
/// spool directory ([`Fetched::key`]).
pub type StartAhead<'s> = &'s (dyn Fn(&str, &str) -> Result<()> + Sync);

/// How one `restore_command` call ended.
#[derive(Debug)]
pub enum Outcome {
    /// The file is at the target.
    Fetched {
        file: WalFile,
        size: u64,
        from: Source,
        /// Whether the call started a background fetch of the segments
        /// after it.
        fetching_ahead: bool,
    },
    /// Every storage answered, and none has it.
    NotArchived { file: WalFile },
}

/// What `restore_command` asks: the archived file `name` at `target`, for
/// the recovery of `data_dir` (the directory PostgreSQL runs the command
/// in, which keys the files fetched ahead). `now` ages the spool and the
/// temporary files killed calls left; `start_ahead` starts the background
/// fetch of the segments after a segment when one of them is missing.
pub async fn restore_command(
    archive: &Archive<'_>,
    wal: &WalSettings,
    name: &str,
    target: &Path,
    data_dir: &Path,
    now: Timestamp,
    start_ahead: StartAhead<'_>,
) -> Result<Outcome> {
    let job = archive.job;
    let file = WalFile::parse(name).ok_or_else(|| {
        Error::usage(format!(
            "'{name}' is not the name of a WAL file (a segment, .partial, .backup or .history file)"
        ))
        .with_hint("PostgreSQL passes it as %f: restore_command = 'backup wal fetch --job J %f %p'")
    })?;
    let spool = match Spool::open(&wal.spool, job) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "{}; fetching without prefetch{}",
                e.message(),
                e.hint().map(|h| format!(" ({h})")).unwrap_or_default()
            );
            None
        }
    };
    spool::remove_stale_temps(&parent(target), now);
    let fetched = spool.as_ref().and_then(|spool| {
        spool.remove_stale(now);
        match spool.fetched(data_dir) {
            Ok(fetched) => Some(fetched),
            Err(e) => {
                tracing::warn!("{}; fetching without prefetch", e.message());
                None
            }
        }
    });
    if let Some(fetched) = &fetched {
        spool::remove_stale_temps(fetched.dir(), now);
    }
    let assumed_size = spool
        .as_ref()
        .and_then(Spool::segment_size)
        .unwrap_or(DEFAULT_SEGMENT_SIZE);
    let mut fetching_ahead = false;
    if let (Some(fetched), WalFile::Segment(segment)) = (&fetched, &file)
        && wal.fetch_ahead > 0
    {
        // Noted before the segment leaves the spool: the background fetch
        // then never takes it for one still to fetch.
        if let Err(e) = fetched.note_requested(segment) {
            tracing::debug!("job {job}: {}", e.message());
        }
        let window = following(segment, assumed_size, wal.fetch_ahead);
        // A background fetch running now reads the note after it looks at
        // the window, and looks again once it lets its lock go: it follows.
        if !missing(fetched, &window).is_empty() && !fetched.is_locked() {
            match start_ahead(segment, fetched.key()) {
                Ok(()) => fetching_ahead = true,
                // This call's fetch does not need it.
                Err(e) => tracing::warn!(
                    "job {job}: {}; fetching without prefetch{}",
                    e.message(),
                    e.hint().map(|h| format!(" ({h})")).unwrap_or_default()
                ),
            }
        }
    }
    if let Some(fetched) = &fetched {
        let kept = fetched.path(name);
        if kept.is_file() {
            match install(&kept, target).await? {
                Some(size) => {
                    return Ok(Outcome::Fetched {
                        file,
                        size,
                        from: Source::Spool,
                        fetching_ahead,
                    });
                }
                // Taken since the look, or unreadable: the storages have it.
                None => tracing::debug!("job {job}: {name} left the spool; fetching it"),
            }
        }
    }
    let reader = Reader::new(archive);
    // Not synced here: PostgreSQL syncs a restored file it keeps
    // (`durable_rename`).
    let Some((size, storage)) = reader.fetch_into(&file, target, false).await? else {
        return Ok(Outcome::NotArchived { file });
    };
    if let (Some(spool), WalFile::Segment(_)) = (&spool, &file) {
        note_segment_size(spool, job, size, assumed_size);
    }
    Ok(Outcome::Fetched {
        file,
        size,
        from: Source::Storage(storage),
        fetching_ahead,
    })
}

/// Teaches the spool the segment size when a full segment of another size
/// than `assumed` came in.
fn note_segment_size(spool: &Spool, job: &str, size: u64, assumed: u64) {
    if spool::is_segment_size(size)
        && size != assumed
        && let Err(e) = spool.note_segment_size(size)
    {
        tracing::debug!("job {job}: {}", e.message());
    }
}

/// Those of `window` the spool does not hold.
fn missing<'w>(fetched: &Fetched, window: &'w [String]) -> Vec<&'w String> {
    window
        .iter()
        .filter(|name| !fetched.path(name).exists())
        .collect()
}

/// How many segments the background fetch reads at once: enough to keep a
/// storage's latency out of the way, few enough to leave the CPU that
/// decompressing takes to replay.
const AHEAD_PARALLEL: usize = 4;

/// The background half of prefetch, run as `wal fetch --ahead-of SEGMENT`
/// in a process of its own: keeps the `wal_fetch_ahead` segments after the
/// one PostgreSQL asked for last (noted in the spool by each call, else
/// `segment`) in the spool of the recovery keyed `key`, fetching the
/// missing ones in parallel and following the note while it moves. Returns
/// the segments it fetched once none is missing, or once the archive lacks
/// one (not archived yet, or the end of the archive) or a storage fails:
/// PostgreSQL's own call for it then tries again and says why. Returns at
/// once when another process holds the lock of that recovery.
pub async fn fetch_ahead(
    archive: &Archive<'_>,
    wal: &WalSettings,
    segment: &str,
    key: &str,
    now: Timestamp,
) -> Result<Vec<String>> {
    let job = archive.job;
    let mut done = Vec::new();
    if wal.fetch_ahead == 0 {
        return Ok(done);
    }
    if !matches!(WalFile::parse(segment), Some(WalFile::Segment(_))) {
        return Err(Error::usage(format!(
            "'{segment}' is not the name of a WAL segment"
        )));
    }
    let spool = Spool::open(&wal.spool, job)?;
    let fetched = spool.fetched_by_key(key)?;
    spool::remove_stale_temps(fetched.dir(), now);
    loop {
        let Some(lock) = fetched.try_lock()? else {
            tracing::debug!("job {job}: another process fetches ahead for this recovery");
            break;
        };
        let stopped_at = fill_window(archive, wal, &spool, &fetched, segment, &mut done).await;
        drop(lock);
        // A call that looked while the lock was held left the window to
        // this process: look once more now that it is let go, unless the
        // archive lacked a segment of the window as it still is.
        let (at, size) = window_start(&spool, &fetched, segment);
        if stopped_at.is_some_and(|s| s == at)
            || missing(&fetched, &following(&at, size, wal.fetch_ahead)).is_empty()
        {
            break;
        }
    }
    Ok(done)
}

/// Where the window starts (the segment asked for last, else `segment`)
/// and the segment size its names are counted in.
fn window_start(spool: &Spool, fetched: &Fetched, segment: &str) -> (String, u64) {
    let size = spool.segment_size().unwrap_or(DEFAULT_SEGMENT_SIZE);
    let at = fetched.requested().unwrap_or_else(|| segment.to_owned());
    (at, size)
}

/// Fetches the missing segments of the window, round after round while
/// PostgreSQL's calls move it, into `done`. Returns once none is missing,
/// or with the segment the window started after when the archive lacked
/// one of it (or a storage failed): nothing more is there to fetch now.
async fn fill_window(
    archive: &Archive<'_>,
    wal: &WalSettings,
    spool: &Spool,
    fetched: &Fetched,
    segment: &str,
    done: &mut Vec<String>,
) -> Option<String> {
    use futures::StreamExt;
    let job = archive.job;
    loop {
        let (at, size) = window_start(spool, fetched, segment);
        // Files the calls have gone past: fetched here while a call fetched
        // the same segment itself.
        if let Some(at) = Segment::parse(&at, size) {
            fetched.remove_before(at, size);
        }
        let window = following(&at, size, wal.fetch_ahead);
        let wanted = missing(fetched, &window);
        if wanted.is_empty() {
            return None;
        }
        // Listed again each round: the archive grows while a standby reads it.
        let reader = Reader::new(archive);
        let reader = &reader;
        let results: Vec<_> = futures::stream::iter(wanted.into_iter().map(|name| async move {
            let file = WalFile::Segment(name.clone());
            (
                name.clone(),
                // Synced here, off replay's path: PostgreSQL's sync of the
                // file it is given then finds it written.
                reader.fetch_into(&file, &fetched.path(name), true).await,
            )
        }))
        .buffered(AHEAD_PARALLEL)
        .collect()
        .await;
        let mut whole = true;
        for (name, result) in results {
            match result {
                Ok(Some((got, _))) => {
                    note_segment_size(spool, job, got, size);
                    done.push(name);
                }
                Ok(None) => {
                    tracing::debug!("job {job}: {name} is not archived; fetching ahead stops");
                    whole = false;
                }
                // PostgreSQL's own call for it tries again and reports.
                Err(e) => {
                    tracing::debug!("job {job}: fetching {name} ahead failed: {}", e.message());
                    whole = false;
                }
            }
        }
        if !whole {
            return Some(at);
        }
    }
}

/// The `count` segment names after `segment` on its timeline, numbered with
/// `segment_size`; none when `segment` is not a name at that size.
fn following(segment: &str, segment_size: u64, count: u32) -> Vec<String> {
    let Some(mut s) = Segment::parse(segment, segment_size) else {
        return Vec::new();
    };
    (0..count)
        .map(|_| {
            s = s.next();
            s.name(segment_size)
        })
        .collect()
}

/// One call's reads: each directory of the archive is listed once per
/// storage, however many files of it the call fetches.
struct Reader<'r, 'a> {
    archive: &'r Archive<'a>,
    listings: Mutex<HashMap<(usize, Key), Listing>>,
}

/// One directory of one storage, listed by the first read that needs it.
type Listing = Arc<OnceCell<Vec<Archived>>>;

impl<'r, 'a> Reader<'r, 'a> {
    fn new(archive: &'r Archive<'a>) -> Self {
        Reader {
            archive,
            listings: Mutex::new(HashMap::new()),
        }
    }

    async fn listing(&self, index: usize, prefix: &Key) -> Result<Vec<Archived>> {
        let cell = self
            .listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((index, prefix.clone()))
            .or_default()
            .clone();
        let storage = self.archive.storages.get(index).await?;
        cell.get_or_try_init(|| list_dir(storage.as_ref(), prefix))
            .await
            .cloned()
    }

    /// Writes `file` to `target` from the first storage with a good copy;
    /// its size and that storage's name, or `None` when every storage
    /// answered without it.
    async fn fetch_into(
        &self,
        file: &WalFile,
        target: &Path,
        sync: bool,
    ) -> Result<Option<(u64, String)>> {
        let job = self.archive.job;
        let prefix = file.prefix(job)?;
        let mut unreachable: Vec<(String, Error)> = Vec::new();
        let mut corrupt: Vec<(String, Error)> = Vec::new();
        for index in 0..self.archive.storages.len() {
            let name = self.archive.storages.name(index).to_owned();
            let listing = match self.listing(index, &prefix).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!("job {job}: storage {name}: {}", e.message());
                    unreachable.push((name, e));
                    continue;
                }
            };
            let storage = self.archive.storages.get(index).await?;
            let copies: Vec<&Archived> = listing.iter().filter(|a| a.file == *file).collect();
            if let Some(other) = copies.iter().find(|a| a.sha256 != copies[0].sha256) {
                let e = Error::integrity(format!(
                    "storage {name} holds two copies of {file} with different contents \
                     (sha256 {} and {}): two servers archived into job {job}",
                    copies[0].sha256, other.sha256
                ));
                tracing::warn!("job {job}: {}; trying the next storage", e.message());
                corrupt.push((name, e));
                continue;
            }
            for archived in copies {
                match write_checked(
                    storage.as_ref(),
                    archived,
                    &self.archive.crypt,
                    target,
                    sync,
                )
                .await
                {
                    Ok(size) => return Ok(Some((size, name))),
                    Err(e) if e.kind() == Kind::Integrity => {
                        tracing::warn!("job {job}: {}; trying the next storage", e.message());
                        corrupt.push((name.clone(), e));
                    }
                    // Gone since the listing, or the storage stopped answering.
                    Err(e) if matches!(e.kind(), Kind::Storage | Kind::NotFound) => {
                        tracing::debug!("job {job}: {}", e.message());
                        unreachable.push((name.clone(), e));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some((storage, e)) = corrupt.into_iter().next() {
            return Err(Error::integrity(format!(
                "job {job}: {file} is corrupt in storage {storage} and no storage has a single \
                 good copy ({}); {} was not written",
                e.message(),
                target.display()
            ))
            .with_hint(format!(
                "`backup verify --job {job} --wal` lists every damaged object; recovery cannot \
                 replay past this file without a good copy (where two copies conflict, keep \
                 the one of the cluster being recovered and move the other aside by hand)"
            )));
        }
        if let Some((storage, e)) = unreachable.into_iter().next() {
            return Err(Error::storage(format!(
                "job {job}: {file} could not be fetched: storage {storage} did not answer \
                 and may hold it ({})",
                e.message()
            ))
            .with_hint(
                "PostgreSQL asks again; check the storage's address, credentials and network",
            ));
        }
        Ok(None)
    }
}

/// Reads `archived` into a temporary file beside `target`, checks its
/// digest, syncs it when `sync` and renames it over `target`; returns its
/// size. Nothing is left at `target` unless every check passed.
///
/// The rename is not synced, and the content only when asked: a file
/// fetched ahead into the spool is, so that a spool entry is never torn;
/// one written at `%p` is synced by PostgreSQL when it keeps it
/// (`durable_rename`: the file, then `pg_wal/`).
async fn write_checked(
    storage: &dyn Storage,
    archived: &Archived,
    crypt: &Crypt,
    target: &Path,
    sync: bool,
) -> Result<u64> {
    let dir = parent(target);
    let temp = spool::temp_file_in(&dir).map_err(|e| writing(target, e))?;
    let (size, temp) = read(storage, archived, crypt, temp).await?;
    let owned = target.to_path_buf();
    tokio::task::spawn_blocking(move || {
        if sync {
            temp.as_file().sync_all().map_err(|e| writing(&owned, e))?;
        }
        temp.persist(&owned).map_err(|e| writing(&owned, e.error))?;
        Ok(size)
    })
    .await
    .map_err(|e| writing(target, std::io::Error::other(e)))?
}

/// Moves a file fetched ahead from the spool to `target`: a rename when
/// both are on one file system, else a copy made the same way as a fetch.
/// Returns its size, or `None` when the spool's file cannot be read (gone
/// since it was seen: another process on the host took it): the caller
/// then fetches it from the storages.
async fn install(kept: &Path, target: &Path) -> Result<Option<u64>> {
    let kept = kept.to_path_buf();
    let asked = target;
    let target = target.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let gone = |e: std::io::Error| {
            tracing::debug!("reading {}: {e}", kept.display());
            Ok(None)
        };
        let size = match std::fs::metadata(&kept) {
            Ok(m) => m.len(),
            Err(e) => return gone(e),
        };
        match std::fs::rename(&kept, &target) {
            Ok(()) => return Ok(Some(size)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !kept.exists() => {
                return gone(e);
            }
            // Another file system (or a target directory that the copy
            // below names in its error).
            Err(_) => {}
        }
        let mut source = match std::fs::File::open(&kept) {
            Ok(f) => f,
            Err(e) => return gone(e),
        };
        let dir = parent(&target);
        let mut temp = spool::temp_file_in(&dir).map_err(|e| writing(&target, e))?;
        std::io::copy(&mut source, &mut temp).map_err(|e| writing(&target, e))?;
        temp.persist(&target)
            .map_err(|e| writing(&target, e.error))?;
        let _ = std::fs::remove_file(&kept);
        Ok(Some(size))
    })
    .await
    .map_err(|e| writing(asked, std::io::Error::other(e)))?
}

fn parent(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// A target that cannot be written is refused rather than internal: the
/// internal kind's exit code, 1, is what `restore_command` answers for a
/// file the archive does not have.
fn writing(target: &Path, e: std::io::Error) -> Error {
    Error::io(Kind::Refused, format!("writing {}", target.display()), e)
        .with_hint("PostgreSQL passes %p, a path in its pg_wal directory: is the disk full?")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Compression;
    use crate::storage::MemoryStorage;

    const SEGMENT: &str = "000000010000000000000003";

    /// A [`StartAhead`] that starts nothing.
    fn no_start(_: &str, _: &str) -> Result<()> {
        Ok(())
    }

    /// A segment-named file of 1 MiB pushed into `storages`; its bytes and key.
    async fn pushed(storages: &[Arc<dyn Storage>], dir: &Path) -> (Vec<u8>, Key) {
        let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        let path = dir.join(SEGMENT);
        std::fs::write(&path, &bytes).unwrap();
        let pushed =
            super::super::push::push("base", storages, Compression::Zstd(3), Crypt::None, &path)
                .await
                .unwrap();
        let key = pushed
            .file
            .key("base", &pushed.sha256, Compression::Zstd(3), false)
            .unwrap();
        (bytes, key)
    }

    fn corrupt(storage: &MemoryStorage, key: &Key) {
        let mut stored = storage.get(key).unwrap();
        let middle = stored.len() / 2;
        stored[middle] ^= 0x55;
        storage.put(key, stored);
    }

    #[tokio::test]
    async fn a_corrupt_copy_is_passed_over_for_the_next_storage_and_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        let storages: Vec<Arc<dyn Storage>> = vec![Arc::new(a.clone()), Arc::new(b.clone())];
        let (bytes, key) = pushed(&storages, dir.path()).await;
        corrupt(&a, &key);
        let archive = Archive {
            job: "base",
            crypt: Crypt::None,
            storages: Storages::opened(&storages),
        };
        let wal = WalSettings {
            spool: dir.path().join("spool"),
            ..WalSettings::default()
        };
        let target = dir.path().join("RECOVERYXLOG");
        let outcome = restore_command(
            &archive,
            &wal,
            SEGMENT,
            &target,
            dir.path(),
            Timestamp::now(),
            &no_start,
        )
        .await
        .unwrap();
        let Outcome::Fetched { from, size, .. } = outcome else {
            panic!("{outcome:?}");
        };
        assert_eq!(from, Source::Storage("b".into()));
        assert_eq!(size, 1 << 20);
        assert_eq!(std::fs::read(&target).unwrap(), bytes);
        // A full segment teaches the spool the segment size.
        assert_eq!(
            Spool::open(&wal.spool, "base").unwrap().segment_size(),
            Some(1 << 20)
        );

        corrupt(&b, &key);
        let second = dir.path().join("second");
        let e = restore_command(
            &archive,
            &wal,
            SEGMENT,
            &second,
            dir.path(),
            Timestamp::now(),
            &no_start,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), Kind::Integrity, "{e:?}");
        assert!(e.message().contains("storage a"), "{e:?}");
        assert!(!second.exists());
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| spool::is_temp(&e.file_name().to_string_lossy()))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // What no storage has is an answer, not an error.
        let none = restore_command(
            &archive,
            &wal,
            "00000002.history",
            &second,
            dir.path(),
            Timestamp::now(),
            &no_start,
        )
        .await
        .unwrap();
        assert!(matches!(none, Outcome::NotArchived { .. }), "{none:?}");
    }

    #[tokio::test]
    async fn a_storage_with_two_copies_under_one_name_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (MemoryStorage::new("a"), MemoryStorage::new("b"));
        let storages: Vec<Arc<dyn Storage>> = vec![Arc::new(a.clone()), Arc::new(b.clone())];
        let (bytes, key) = pushed(&storages, dir.path()).await;
        // Another server's copy of the name, in the first storage only.
        let other = WalFile::Segment(SEGMENT.into())
            .key("base", &"ab".repeat(32), Compression::Zstd(3), false)
            .unwrap();
        a.put(&other, a.get(&key).unwrap());
        let archive = Archive {
            job: "base",
            crypt: Crypt::None,
            storages: Storages::opened(&storages),
        };
        let wal = WalSettings {
            spool: dir.path().join("spool"),
            fetch_ahead: 0,
            ..WalSettings::default()
        };
        let target = dir.path().join("RECOVERYXLOG");
        let outcome = restore_command(
            &archive,
            &wal,
            SEGMENT,
            &target,
            dir.path(),
            Timestamp::now(),
            &no_start,
        )
        .await
        .unwrap();
        assert!(
            matches!(&outcome, Outcome::Fetched { from: Source::Storage(s), .. } if s == "b"),
            "{outcome:?}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), bytes);

        // In every storage: no copy is picked.
        b.put(&other, b.get(&key).unwrap());
        std::fs::remove_file(&target).unwrap();
        let e = restore_command(
            &archive,
            &wal,
            SEGMENT,
            &target,
            dir.path(),
            Timestamp::now(),
            &no_start,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), Kind::Integrity, "{e:?}");
        assert!(e.message().contains("two copies"), "{e:?}");
        assert!(e.message().contains(&"ab".repeat(32)), "{e:?}");
        assert!(!target.exists());
    }

    #[tokio::test]
    async fn a_spooled_file_taken_by_another_process_is_fetched_and_stale_temporaries_go() {
        let dir = tempfile::tempdir().unwrap();
        let memory = MemoryStorage::new("a");
        let storages: Vec<Arc<dyn Storage>> = vec![Arc::new(memory)];
        let (bytes, _) = pushed(&storages, dir.path()).await;
        let archive = Archive {
            job: "base",
            crypt: Crypt::None,
            storages: Storages::opened(&storages),
        };
        let wal = WalSettings {
            spool: dir.path().join("spool"),
            ..WalSettings::default()
        };
        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir(&pg_wal).unwrap();
        // What a fetch killed twenty minutes ago left, and one running now.
        let killed = spool::temp_file_in(&pg_wal)
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(&killed)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(1200))
            .unwrap();
        let running = spool::temp_file_in(&pg_wal)
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();

        // Nothing to install: the storages answer.
        assert_eq!(
            install(&dir.path().join("gone"), &pg_wal.join("x"))
                .await
                .unwrap(),
            None
        );
        let target = pg_wal.join("RECOVERYXLOG");
        let outcome = restore_command(
            &archive,
            &wal,
            SEGMENT,
            &target,
            dir.path(),
            Timestamp::now(),
            &no_start,
        )
        .await
        .unwrap();
        assert!(matches!(outcome, Outcome::Fetched { .. }), "{outcome:?}");
        assert_eq!(std::fs::read(&target).unwrap(), bytes);
        assert!(
            !killed.exists(),
            "a killed fetch's temporary file is removed"
        );
        assert!(running.exists(), "a young one stays");
    }

    /// Segments of 1 MiB named `first`, `first + 1`... pushed into
    /// `storages`; their bytes, in order.
    async fn pushed_from(
        storages: &[Arc<dyn Storage>],
        dir: &Path,
        first: &str,
        count: usize,
    ) -> Vec<(String, Vec<u8>)> {
        let mut names = vec![first.to_owned()];
        names.extend(following(first, 1 << 20, count as u32 - 1));
        let mut out = Vec::new();
        for (n, name) in names.into_iter().enumerate() {
            let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 241) as u8 ^ n as u8).collect();
            let path = dir.join(&name);
            std::fs::write(&path, &bytes).unwrap();
            super::super::push::push("base", storages, Compression::Zstd(3), Crypt::None, &path)
                .await
                .unwrap();
            std::fs::remove_file(&path).unwrap();
            out.push((name, bytes));
        }
        out
    }

    #[tokio::test]
    async fn a_call_returns_with_its_file_and_leaves_the_segments_ahead_to_one_background_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let storages: Vec<Arc<dyn Storage>> = vec![Arc::new(MemoryStorage::new("a"))];
        let segments = pushed_from(&storages, dir.path(), SEGMENT, 4).await;
        let archive = Archive {
            job: "base",
            crypt: Crypt::None,
            storages: Storages::opened(&storages),
        };
        let wal = WalSettings {
            spool: dir.path().join("spool"),
            fetch_ahead: 2,
            ..WalSettings::default()
        };
        let spool = Spool::open(&wal.spool, "base").unwrap();
        spool.note_segment_size(1 << 20).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let fetched = spool.fetched(&data).unwrap();
        let started = Mutex::new(Vec::new());
        let start = |segment: &str, key: &str| {
            started
                .lock()
                .unwrap()
                .push((segment.to_owned(), key.to_owned()));
            Ok(())
        };
        let call = |name: &str| {
            let target = data.join("RECOVERYXLOG");
            let (archive, wal, data, start) = (&archive, &wal, &data, &start);
            let name = name.to_owned();
            async move {
                let outcome =
                    restore_command(archive, wal, &name, &target, data, Timestamp::now(), start)
                        .await
                        .unwrap();
                (outcome, std::fs::read(&target).ok())
            }
        };
        let name = |i: usize| segments[i].0.clone();

        // A miss: the call fetches its own file and starts the background
        // fetch of the two after it, without fetching them itself.
        let (outcome, bytes) = call(&name(0)).await;
        assert!(
            matches!(
                &outcome,
                Outcome::Fetched {
                    from: Source::Storage(_),
                    fetching_ahead: true,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(bytes.unwrap(), segments[0].1);
        assert_eq!(
            *started.lock().unwrap(),
            [(name(0), fetched.key().to_owned())]
        );
        assert!(!fetched.path(&name(1)).exists());
        assert_eq!(fetched.requested(), Some(name(0)));

        // What that process does.
        let ahead = fetch_ahead(&archive, &wal, &name(0), fetched.key(), Timestamp::now())
            .await
            .unwrap();
        assert_eq!(ahead, [name(1), name(2)]);
        assert_eq!(
            std::fs::read(fetched.path(&name(2))).unwrap(),
            segments[2].1
        );

        // A hit: from the spool; the window (2 and 3) lacks 3, which is
        // archived: a background fetch is started again, and gets it.
        started.lock().unwrap().clear();
        let (outcome, bytes) = call(&name(1)).await;
        assert!(
            matches!(
                &outcome,
                Outcome::Fetched {
                    from: Source::Spool,
                    fetching_ahead: true,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert_eq!(bytes.unwrap(), segments[1].1);
        assert!(!fetched.path(&name(1)).exists(), "taken from the spool");
        assert_eq!(started.lock().unwrap().len(), 1);
        let ahead = fetch_ahead(&archive, &wal, &name(1), fetched.key(), Timestamp::now())
            .await
            .unwrap();
        assert_eq!(ahead, [name(3)]);

        // While a background fetch holds the lock, no call starts another,
        // and one started anyway returns at once: the holder follows the
        // note.
        started.lock().unwrap().clear();
        let lock = fetched.try_lock().unwrap().expect("free");
        assert!(fetched.is_locked());
        let (outcome, _) = call(&name(2)).await;
        assert!(
            matches!(
                &outcome,
                Outcome::Fetched {
                    from: Source::Spool,
                    fetching_ahead: false,
                    ..
                }
            ),
            "{outcome:?}"
        );
        assert!(started.lock().unwrap().is_empty());
        let ahead = fetch_ahead(&archive, &wal, &name(2), fetched.key(), Timestamp::now())
            .await
            .unwrap();
        assert!(ahead.is_empty());
        drop(lock);
        assert!(!fetched.is_locked());

        // The note moved past a segment fetched ahead while a call fetched
        // it itself: the background fetch removes it, and stops where the
        // archive ends (3 is the last).
        std::fs::write(fetched.path(&name(1)), &segments[1].1).unwrap();
        let ahead = fetch_ahead(&archive, &wal, &name(2), fetched.key(), Timestamp::now())
            .await
            .unwrap();
        assert!(ahead.is_empty(), "{ahead:?}");
        assert!(!fetched.path(&name(1)).exists());
        assert!(fetched.path(&name(3)).exists());

        // The last: nothing is missing that the archive has, but the window
        // is not whole, so a call still starts one, which finds nothing.
        let (outcome, _) = call(&name(3)).await;
        assert!(matches!(
            &outcome,
            Outcome::Fetched {
                from: Source::Spool,
                ..
            }
        ));
        let ahead = fetch_ahead(&archive, &wal, &name(3), fetched.key(), Timestamp::now())
            .await
            .unwrap();
        assert!(ahead.is_empty());

        // Without prefetch, or for other files, nothing is started.
        started.lock().unwrap().clear();
        let off = WalSettings {
            fetch_ahead: 0,
            ..wal.clone()
        };
        let target = data.join("RECOVERYXLOG");
        let outcome = restore_command(
            &archive,
            &off,
            &name(0),
            &target,
            &data,
            Timestamp::now(),
            &start,
        )
        .await
        .unwrap();
        assert!(matches!(
            outcome,
            Outcome::Fetched {
                fetching_ahead: false,
                ..
            }
        ));
        let outcome = restore_command(
            &archive,
            &wal,
            "00000002.history",
            &target,
            &data,
            Timestamp::now(),
            &start,
        )
        .await
        .unwrap();
        assert!(matches!(outcome, Outcome::NotArchived { .. }));
        assert!(started.lock().unwrap().is_empty());
        assert!(
            fetch_ahead(&archive, &off, &name(0), fetched.key(), Timestamp::now())
                .await
                .unwrap()
                .is_empty()
        );
        // The hidden flags are checked too.
        assert_eq!(
            fetch_ahead(
                &archive,
                &wal,
                "00000002.history",
                fetched.key(),
                Timestamp::now()
            )
            .await
            .unwrap_err()
            .kind(),
            Kind::Usage
        );
        assert_eq!(
            fetch_ahead(&archive, &wal, &name(0), "../../etc", Timestamp::now())
                .await
                .unwrap_err()
                .kind(),
            Kind::Usage
        );
    }

    #[test]
    fn prefetch_follows_the_timeline_across_log_files() {
        assert_eq!(
            following("0000000200000000000000FE", DEFAULT_SEGMENT_SIZE, 3),
            [
                "0000000200000000000000FF",
                "000000020000000100000000",
                "000000020000000100000001"
            ]
        );
        // 64 MiB segments: 64 to a log file.
        assert_eq!(
            following("00000001000000000000003F", 64 << 20, 1),
            ["000000010000000100000000"]
        );
        // Not a name at that size: nothing is guessed.
        assert!(following("000000010000000000000100", DEFAULT_SEGMENT_SIZE, 2).is_empty());
        assert!(following("000000010000000000000003", DEFAULT_SEGMENT_SIZE, 0).is_empty());
    }
}
