//! The spool of a physical job (`spool_path/<job>`): what one `wal push` or
//! `wal fetch` leaves for PostgreSQL's next call, and the record of failed
//! pushes and dropped segments that `status` and the metrics read.
//!
//! ```text
//! <spool>/<job>/pushed/<file>          pushed ahead: {"sha256": raw sha256, hex,
//!                                      "storages": the storages it went into}
//! <spool>/<job>/fetched/<key>/<file>   fetched ahead for the recovery of one data
//!                                      directory (<key>: a digest of its path): the
//!                                      file's bytes, their digest checked
//! <spool>/<job>/fetched/<key>/prefetch.requested
//!                                      the segment PostgreSQL asked for last
//! <spool>/<job>/fetched/<key>/prefetch.lock
//!                                      held by the one background fetch of that
//!                                      recovery (an open-file-description lock)
//! <spool>/<job>/segment-size           the segment size the last full segment fetched had
//! <spool>/<job>/push-failures.jsonl    the last 100 failed pushes, one JSON object a line:
//!                                      {"at": RFC 3339, "file": "...", "error": "..."}
//! <spool>/<job>/push-failures.total    how many pushes failed, ever: a decimal integer
//! <spool>/<job>/dropped/<file>.json    a segment the queue valve dropped whose marker no
//!                                      storage took: the marker ([`DroppedMarker`])
//! ```
//!
//! Every file is written beside its name and renamed over it, so a reader
//! never sees half of one. PostgreSQL runs `archive_command` and
//! `restore_command` one at a time per cluster, but several clusters on a
//! host may share a job's spool: what one recovery fetched ahead is kept
//! apart from another's, and a file taken by someone else between a look
//! and a read is fetched again. A push run by hand at the same moment as
//! PostgreSQL's could at worst lose one count of the failure total.
//! Nothing here is needed for correctness: a missing or stale entry only
//! makes the next call do the work itself; only `dropped/` is a record
//! that `status` needs.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::names::Segment;
use crate::error::{Error, Kind, Result};

/// Under the job's spool: segments pushed ahead of PostgreSQL's call.
pub const PUSHED_DIR: &str = "pushed";
/// Under the job's spool: segments fetched ahead of PostgreSQL's call.
pub const FETCHED_DIR: &str = "fetched";
/// Under the job's spool: the markers of dropped segments no storage took.
pub const DROPPED_DIR: &str = "dropped";
/// The last [`FAILURES_KEPT`] failed pushes, one JSON line each.
pub const PUSH_FAILURES_LOG: &str = "push-failures.jsonl";
/// How many pushes failed since the spool was made.
pub const PUSH_FAILURES_TOTAL: &str = "push-failures.total";
/// How many lines [`PUSH_FAILURES_LOG`] keeps.
pub const FAILURES_KEPT: usize = 100;
const SEGMENT_SIZE: &str = "segment-size";
/// Entries older than this belong to a push or a recovery that is over.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Temporary files start with this, so listings pass over them.
const TEMP_PREFIX: &str = ".tmp-";
/// Random characters after [`TEMP_PREFIX`]: fixed, so that [`is_temp`]
/// matches our names and nothing else.
const TEMP_RANDOM: usize = 6;
/// A temporary file this old was left by a process that died (a fetch
/// killed by PostgreSQL's shutdown, or by the OOM killer): one segment is
/// written in seconds.
pub const TEMP_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// `<spool>/<job>`: the directory of one job.
pub fn job_dir(root: &Path, job: &str) -> PathBuf {
    root.join(job)
}

/// One failed push, as [`PUSH_FAILURES_LOG`] holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushFailure {
    pub at: Timestamp,
    pub file: String,
    pub error: String,
}

/// What `pushed/<file>` says: the file's raw digest and the storages it
/// was pushed into, which are the job's whole list at the time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushedNote {
    pub sha256: String,
    pub storages: Vec<String>,
}

impl PushedNote {
    /// Whether the note answers for a job whose storages are `storages`
    /// now: the same set. A storage added since was never given the file.
    pub fn covers(&self, storages: &[String]) -> bool {
        let set = |list: &[String]| {
            let mut list = list.to_vec();
            list.sort();
            list.dedup();
            list
        };
        set(&self.storages) == set(storages)
    }
}

/// The marker of a segment the queue valve dropped, as the storages'
/// `<job>/wal/dropped/<file>.json` and the spool's `dropped/<file>.json`
/// hold it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DroppedMarker {
    pub file: String,
    pub dropped_at: Timestamp,
    pub backlog_bytes: u64,
    pub limit_bytes: u64,
}

/// The spool directory of one job, made if missing.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// Where the segments fetched ahead for one data directory's recovery are
/// kept (`fetched/<key>/`): two recoveries on one host fetching from one
/// job must not take each other's segments, which may be of other
/// timelines or other clusters under the same name.
#[derive(Debug, Clone)]
pub struct Fetched {
    dir: PathBuf,
    key: String,
}

/// Under `fetched/<key>/`: the segment PostgreSQL asked for last, which
/// says where the window of segments fetched ahead starts.
const REQUESTED: &str = "prefetch.requested";
/// Under `fetched/<key>/`: held by the background fetch of that recovery.
const AHEAD_LOCK: &str = "prefetch.lock";

/// The lock of the background fetch of one recovery, held until dropped
/// (or its process dies).
#[derive(Debug)]
pub struct AheadLock {
    _file: std::fs::File,
}

impl Fetched {
    /// Where a fetched-ahead `name` is kept.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The key of the data directory these files are fetched for.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Removes the segments of `segment`'s timeline before it (names at
    /// `segment_size`): a recovery asks for its segments in order, so these
    /// were fetched by its calls themselves, and will not be asked for again
    /// unless it starts over. Returns how many.
    pub fn remove_before(&self, segment: Segment, segment_size: u64) -> usize {
        let passed = |name: &str| {
            Segment::parse(name, segment_size)
                .is_some_and(|s| s.timeline == segment.timeline && s.number < segment.number)
        };
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if entry.file_name().to_str().is_some_and(passed)
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
        removed
    }

    /// Notes `segment` as the one PostgreSQL asks for now. Not synced: the
    /// note only steers what is fetched ahead, and a recovery started again
    /// after a crash asks again.
    pub fn note_requested(&self, segment: &str) -> Result<()> {
        let path = self.dir.join(REQUESTED);
        let failed =
            |e: std::io::Error| Error::io(Kind::Internal, format!("writing {}", path.display()), e);
        let mut file = temp_file_in(&self.dir).map_err(failed)?;
        file.write_all(segment.as_bytes()).map_err(failed)?;
        file.persist(&path).map_err(|e| failed(e.error))?;
        Ok(())
    }

    /// The segment noted by [`Fetched::note_requested`], if one reads.
    pub fn requested(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(REQUESTED)).ok()?;
        let name = text.trim();
        (name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_owned())
    }

    /// Takes the lock of this recovery's background fetch, or `None` when
    /// another process holds it. The lock file is rewritten with this
    /// process's id, which keeps [`Spool::remove_stale`] off it while held.
    pub fn try_lock(&self) -> Result<Option<AheadLock>> {
        let path = self.dir.join(AHEAD_LOCK);
        let failed =
            |e: std::io::Error| Error::io(Kind::Internal, format!("locking {}", path.display()), e);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        match nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_SETLK(&whole_file_lock())) {
            Ok(_) => {}
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => return Ok(None),
            Err(e) => return Err(failed(e.into())),
        }
        file.set_len(0).map_err(failed)?;
        file.write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(failed)?;
        Ok(Some(AheadLock { _file: file }))
    }

    /// Whether a background fetch holds this recovery's lock now; `false`
    /// when that cannot be told (a spare process then finds out itself).
    pub fn is_locked(&self) -> bool {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.dir.join(AHEAD_LOCK))
        else {
            return false;
        };
        // F_OFD_GETLK fills in the lock asked about with the one that
        // conflicts with it, if any.
        let mut lock = whole_file_lock();
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut lock)).is_ok()
            && lock.l_type != nix::libc::F_UNLCK as nix::libc::c_short
    }

    /// The directory fetched-ahead files are written in (their temporary
    /// files too, so a rename finishes them).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// An exclusive lock on the whole of a file, for `fcntl`'s F_OFD_* commands.
fn whole_file_lock() -> nix::libc::flock {
    nix::libc::flock {
        l_type: nix::libc::F_WRLCK as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Whether `key` is what [`recovery_key`] makes: 16 lowercase hex digits.
pub fn is_recovery_key(key: &str) -> bool {
    key.len() == 16 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The key of a data directory in `fetched/`: the first 16 hex digits of
/// the SHA-256 of its canonical path (the path as given when it has none).
pub fn recovery_key(data_dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let canonical = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(canonical.as_os_str().as_bytes());
    crate::archive::hex(&digest[..8])
}

impl Spool {
    /// Opens (and makes) `<root>/<job>` with its `pushed/` and `fetched/`.
    pub fn open(root: &Path, job: &str) -> Result<Spool> {
        let dir = job_dir(root, job);
        for sub in [PUSHED_DIR, FETCHED_DIR] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| {
                Error::io(
                    Kind::Config,
                    format!("job {job}: making the spool directory {}", path.display()),
                    e,
                )
                .with_hint(
                    "set spool_path in the job to a directory the server's user can write \
                     (it runs archive_command and restore_command)",
                )
            })?;
        }
        Ok(Spool { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the note of `name`, pushed ahead, says, if there is one that
    /// reads. A note of an older version (a bare digest, without its
    /// storages) does not: the file is then pushed as if never noted.
    pub fn pushed(&self, name: &str) -> Option<PushedNote> {
        let text = std::fs::read(self.dir.join(PUSHED_DIR).join(name)).ok()?;
        let note: PushedNote = serde_json::from_slice(&text).ok()?;
        let sha = &note.sha256;
        (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then_some(note)
    }

    /// Notes that `name` is in each of `storages` with raw digest `sha256`.
    pub fn note_pushed(&self, name: &str, sha256: &str, storages: &[String]) -> Result<()> {
        let note = PushedNote {
            sha256: sha256.to_owned(),
            storages: storages.to_vec(),
        };
        let text = serde_json::to_vec(&note)
            .map_err(|e| Error::internal(format!("encoding the spool note of {name}: {e}")))?;
        write_atomic(&self.dir.join(PUSHED_DIR).join(name), &text)
    }

    /// Forgets a pushed-ahead entry, once used or found wrong.
    pub fn forget_pushed(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(PUSHED_DIR).join(name));
    }

    /// The fetched-ahead files of the recovery of `data_dir`, the
    /// directory PostgreSQL runs `restore_command` in; made if missing.
    pub fn fetched(&self, data_dir: &Path) -> Result<Fetched> {
        self.fetched_by_key(&recovery_key(data_dir))
    }

    /// [`Spool::fetched`] of the data directory whose key is `key`: what
    /// the background fetch, which runs elsewhere, is given.
    pub fn fetched_by_key(&self, key: &str) -> Result<Fetched> {
        if !is_recovery_key(key) {
            return Err(Error::usage(format!(
                "'{key}' is not the key of a recovery (16 hex digits)"
            )));
        }
        let dir = self.dir.join(FETCHED_DIR).join(key);
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::io(
                Kind::Config,
                format!("making the spool directory {}", dir.display()),
                e,
            )
        })?;
        Ok(Fetched {
            dir,
            key: key.to_owned(),
        })
    }

    /// The segment size last seen, if one was noted.
    pub fn segment_size(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join(SEGMENT_SIZE))
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|s| is_segment_size(*s))
    }

    pub fn note_segment_size(&self, size: u64) -> Result<()> {
        write_atomic(&self.dir.join(SEGMENT_SIZE), format!("{size}\n").as_bytes())
    }

    /// Removes pushed and fetched entries (and temporary files) last
    /// written more than [`STALE_AFTER`] before `now`, and the directories
    /// of recoveries left empty; returns how many files.
    pub fn remove_stale(&self, now: Timestamp) -> usize {
        let Some(limit) = before(now, STALE_AFTER) else {
            return 0;
        };
        let mut removed = remove_files_older(&self.dir.join(PUSHED_DIR), limit, |_| true);
        let fetched = self.dir.join(FETCHED_DIR);
        // Files of the layout before `fetched/<key>/`, then each recovery's.
        removed += remove_files_older(&fetched, limit, |_| true);
        for entry in std::fs::read_dir(&fetched).into_iter().flatten().flatten() {
            let path = entry.path();
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            // Only a directory untouched as long as a file is: a fresh one
            // may be about to receive a segment. Told before its files go,
            // which touches it.
            let idle = written_at(&entry).is_some_and(|t| t < limit);
            removed += remove_files_older(&path, limit, |_| true);
            if idle {
                let _ = std::fs::remove_dir(&path);
            }
        }
        removed
    }
}

/// `now` less `age`, if it can be told.
fn before(now: Timestamp, age: std::time::Duration) -> Option<Timestamp> {
    now.checked_sub(jiff::SignedDuration::try_from(age).ok()?)
        .ok()
}

fn written_at(entry: &std::fs::DirEntry) -> Option<Timestamp> {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| Timestamp::try_from(t).ok())
}

/// Removes the files in `dir` whose names `wanted` picks, last written
/// before `limit`; returns how many.
fn remove_files_older(dir: &Path, limit: Timestamp, wanted: impl Fn(&str) -> bool) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let picked = entry.file_name().to_str().is_some_and(&wanted)
            && entry.file_type().is_ok_and(|t| t.is_file());
        if picked
            && written_at(&entry).is_some_and(|t| t < limit)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Removes our temporary files in `dir` (names [`is_temp`] matches) last
/// written more than [`TEMP_STALE_AFTER`] before `now`: what a process
/// killed while writing left. Returns how many.
pub fn remove_stale_temps(dir: &Path, now: Timestamp) -> usize {
    match before(now, TEMP_STALE_AFTER) {
        Some(limit) => remove_files_older(dir, limit, is_temp),
        None => 0,
    }
}

/// A power of two from 1 MiB to 1 GiB: what `initdb --wal-segsize` allows.
pub fn is_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

/// Appends `failure` to the job's failure log (keeping its last
/// [`FAILURES_KEPT`] lines) and counts it in the total.
pub fn record_push_failure(root: &Path, job: &str, failure: &PushFailure) -> Result<()> {
    let dir = job_dir(root, job);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(Kind::Internal, format!("making {}", dir.display()), e))?;
    let log = dir.join(PUSH_FAILURES_LOG);
    let mut lines: Vec<String> = match std::fs::File::open(&log) {
        Ok(f) => std::io::BufReader::new(f)
            .lines()
            .map_while(std::result::Result::ok)
            .filter(|l| !l.trim().is_empty())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(Error::io(
                Kind::Internal,
                format!("reading {}", log.display()),
                e,
            ));
        }
    };
    lines.push(
        serde_json::to_string(failure)
            .map_err(|e| Error::internal(format!("encoding a push failure: {e}")))?,
    );
    let keep = lines.len().saturating_sub(FAILURES_KEPT);
    let mut text = lines[keep..].join("\n");
    text.push('\n');
    write_atomic(&log, text.as_bytes())?;
    let total = push_failures_total(root, job)? + 1;
    write_atomic(
        &dir.join(PUSH_FAILURES_TOTAL),
        format!("{total}\n").as_bytes(),
    )
}

/// Records in the spool that `marker`'s file was dropped, when no storage
/// took the marker: `status` reads it with [`dropped`].
pub fn record_dropped(root: &Path, job: &str, marker: &DroppedMarker) -> Result<()> {
    let dir = job_dir(root, job).join(DROPPED_DIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(Kind::Internal, format!("making {}", dir.display()), e))?;
    let text = serde_json::to_vec_pretty(marker)
        .map_err(|e| Error::internal(format!("encoding the marker of {}: {e}", marker.file)))?;
    write_atomic(&dir.join(format!("{}.json", marker.file)), &text)
}

/// The dropped segments recorded in the spool of `job` (those whose marker
/// no storage took), by file name; files that do not read are passed over.
pub fn dropped(root: &Path, job: &str) -> Vec<DroppedMarker> {
    let dir = job_dir(root, job).join(DROPPED_DIR);
    let mut markers: Vec<DroppedMarker> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".json") && !is_temp(n))
        })
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect();
    markers.sort_by(|a, b| a.file.cmp(&b.file));
    markers
}

/// How many pushes of `job` failed; 0 when none ever did.
pub fn push_failures_total(root: &Path, job: &str) -> Result<u64> {
    let path = job_dir(root, job).join(PUSH_FAILURES_TOTAL);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| Error::integrity(format!("{} does not hold a count", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(
            Kind::Internal,
            format!("reading {}", path.display()),
            e,
        )),
    }
}

/// The failed pushes the log keeps, oldest first; lines that do not read
/// are passed over.
pub fn recent_push_failures(root: &Path, job: &str) -> Result<Vec<PushFailure>> {
    let path = job_dir(root, job).join(PUSH_FAILURES_LOG);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(
            Kind::Internal,
            format!("reading {}", path.display()),
            e,
        )),
    }
}

/// A new temporary file in `dir`, which listings and PostgreSQL pass over.
pub fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .rand_bytes(TEMP_RANDOM)
        .tempfile_in(dir)
}

/// Whether `name` is one of [`temp_file_in`]'s: exactly its prefix and its
/// random letters and digits, so that cleaning up after a killed process
/// never takes someone else's file.
pub fn is_temp(name: &str) -> bool {
    name.strip_prefix(TEMP_PREFIX).is_some_and(|rest| {
        rest.len() == TEMP_RANDOM && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Writes `bytes` to `path` whole or not at all: beside it, synced, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let failed =
        |e: std::io::Error| Error::io(Kind::Internal, format!("writing {}", path.display()), e);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut file = temp_file_in(dir).map_err(failed)?;
    file.write_all(bytes).map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(n: usize) -> PushFailure {
        PushFailure {
            at: Timestamp::from_second(1_700_000_000 + n as i64).unwrap(),
            file: format!("{n:024X}"),
            error: format!("storage disk: failure {n}"),
        }
    }

    #[test]
    fn push_failures_keep_the_last_hundred_lines_and_count_them_all() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(push_failures_total(root.path(), "base").unwrap(), 0);
        for n in 0..105 {
            record_push_failure(root.path(), "base", &failure(n)).unwrap();
        }
        assert_eq!(push_failures_total(root.path(), "base").unwrap(), 105);
        let kept = recent_push_failures(root.path(), "base").unwrap();
        assert_eq!(kept.len(), FAILURES_KEPT);
        assert_eq!(kept[0], failure(5));
        assert_eq!(kept[99], failure(104));
        let text =
            std::fs::read_to_string(root.path().join("base").join(PUSH_FAILURES_LOG)).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(line["at"], "2023-11-14T22:15:04Z");
        assert_eq!(line["file"], failure(104).file);
        assert_eq!(line["error"], "storage disk: failure 104");
        let total =
            std::fs::read_to_string(root.path().join("base").join(PUSH_FAILURES_TOTAL)).unwrap();
        assert_eq!(total.trim(), "105");
    }

    /// Sets a file's modification time `age` before now.
    fn age(path: &Path, age: std::time::Duration) {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(std::time::SystemTime::now() - age)
            .unwrap();
    }

    #[test]
    fn pushed_entries_hold_a_digest_and_their_storages_and_go_stale_after_a_day() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), "base").unwrap();
        let sha = "ab".repeat(32);
        let storages = vec!["disk".to_owned(), "s3".to_owned()];
        assert_eq!(spool.pushed("000000010000000000000003"), None);
        spool
            .note_pushed("000000010000000000000003", &sha, &storages)
            .unwrap();
        let note = spool.pushed("000000010000000000000003").unwrap();
        assert_eq!(note.sha256, sha);
        assert!(note.covers(&["s3".into(), "disk".into()]));
        assert!(!note.covers(&["disk".into()]));
        assert!(!note.covers(&["disk".into(), "s3".into(), "blob".into()]));
        // A bare digest, as an older version noted it, is no note.
        std::fs::write(
            spool
                .dir()
                .join(PUSHED_DIR)
                .join("000000010000000000000005"),
            format!("{sha}\n"),
        )
        .unwrap();
        assert_eq!(spool.pushed("000000010000000000000005"), None);

        let data = tempfile::tempdir().unwrap();
        let fetched = spool.fetched(data.path()).unwrap();
        std::fs::write(fetched.path("000000010000000000000004"), b"x").unwrap();
        assert_eq!(spool.remove_stale(Timestamp::now()), 0);
        let tomorrow = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(25))
            .unwrap();
        assert_eq!(spool.remove_stale(tomorrow), 3);
        assert_eq!(spool.pushed("000000010000000000000003"), None);
        assert!(!fetched.path("000000010000000000000004").exists());
        assert!(
            !fetched.dir().exists(),
            "an emptied recovery's directory goes"
        );
    }

    #[test]
    fn each_data_directory_has_its_own_fetched_files() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), "base").unwrap();
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = spool.fetched(one.path()).unwrap();
        let b = spool.fetched(two.path()).unwrap();
        assert_ne!(a.dir(), b.dir());
        // The same directory, however it is spelled.
        let again = spool.fetched(&one.path().join(".")).unwrap();
        assert_eq!(a.dir(), again.dir());
        assert_eq!(recovery_key(one.path()).len(), 16);
    }

    #[test]
    fn only_our_temporary_files_are_cleaned_and_only_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let ours = temp_file_in(dir.path())
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let name = ours.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(is_temp(&name), "{name}");
        let young = temp_file_in(dir.path())
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let others = [
            ".tmp-abc",
            ".tmp-abcdefg",
            ".tmp-abc.de",
            "xlogtemp.123",
            "RECOVERYXLOG",
        ];
        for other in others {
            assert!(!is_temp(other), "{other}");
            std::fs::write(dir.path().join(other), b"x").unwrap();
            age(
                &dir.path().join(other),
                std::time::Duration::from_secs(3600),
            );
        }
        age(&ours, std::time::Duration::from_secs(11 * 60));
        assert_eq!(remove_stale_temps(dir.path(), Timestamp::now()), 1);
        assert!(!ours.exists());
        assert!(young.exists(), "a temporary file still being written stays");
        for other in others {
            assert!(dir.path().join(other).exists(), "{other}");
        }
    }

    #[test]
    fn dropped_segments_are_recorded_and_read_back() {
        let root = tempfile::tempdir().unwrap();
        assert!(dropped(root.path(), "base").is_empty());
        let marker = |file: &str| DroppedMarker {
            file: file.to_owned(),
            dropped_at: Timestamp::from_second(1_700_000_000).unwrap(),
            backlog_bytes: 3 << 24,
            limit_bytes: 1 << 24,
        };
        record_dropped(root.path(), "base", &marker("000000010000000000000009")).unwrap();
        record_dropped(root.path(), "base", &marker("000000010000000000000004")).unwrap();
        std::fs::write(root.path().join("base/dropped/junk.json"), b"{").unwrap();
        assert_eq!(
            dropped(root.path(), "base"),
            [
                marker("000000010000000000000004"),
                marker("000000010000000000000009")
            ]
        );
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                root.path()
                    .join("base/dropped/000000010000000000000004.json"),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json["file"], "000000010000000000000004");
        assert_eq!(json["limit_bytes"], 1 << 24);
    }

    #[test]
    fn segment_sizes_are_powers_of_two_initdb_allows() {
        assert!(is_segment_size(16 << 20));
        assert!(is_segment_size(1 << 20));
        assert!(is_segment_size(1 << 30));
        assert!(!is_segment_size(1 << 19));
        assert!(!is_segment_size(3 << 20));
        assert!(!is_segment_size(2 << 30));
    }
}
