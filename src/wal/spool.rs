//! The spool of a physical job (`spool_path/<job>`): what one `wal push` or
//! `wal fetch` leaves for PostgreSQL's next call, and the record of failed
//! pushes that `status` and the metrics read.
//!
//! ```text
//! <spool>/<job>/pushed/<file>          pushed ahead into every storage: its raw sha256, hex
//! <spool>/<job>/fetched/<file>         fetched ahead: the file's bytes, their digest checked
//! <spool>/<job>/segment-size           the segment size the last full segment fetched had
//! <spool>/<job>/push-failures.jsonl    the last 100 failed pushes, one JSON object a line:
//!                                      {"at": RFC 3339, "file": "...", "error": "..."}
//! <spool>/<job>/push-failures.total    how many pushes failed, ever: a decimal integer
//! ```
//!
//! Every file is written beside its name and renamed over it, so a reader
//! never sees half of one. PostgreSQL runs `archive_command` and
//! `restore_command` one at a time, so one process writes here at a time;
//! a push run by hand at the same moment could at worst lose one count of
//! the failure total. Nothing here is needed for correctness: a missing
//! or stale entry only makes the next call do the work itself.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use crate::error::{Error, Kind, Result};

/// Under the job's spool: segments pushed ahead of PostgreSQL's call.
pub const PUSHED_DIR: &str = "pushed";
/// Under the job's spool: segments fetched ahead of PostgreSQL's call.
pub const FETCHED_DIR: &str = "fetched";
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

/// The spool directory of one job, made if missing.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
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

    /// The raw digest `name` was pushed ahead with, if it was.
    pub fn pushed(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(PUSHED_DIR).join(name)).ok()?;
        let sha = text.trim();
        (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_owned())
    }

    /// Notes that `name` is in every storage with raw digest `sha256`.
    pub fn note_pushed(&self, name: &str, sha256: &str) -> Result<()> {
        write_atomic(
            &self.dir.join(PUSHED_DIR).join(name),
            format!("{sha256}\n").as_bytes(),
        )
    }

    /// Forgets a pushed-ahead entry, once used or found wrong.
    pub fn forget_pushed(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(PUSHED_DIR).join(name));
    }

    /// Where a fetched-ahead `name` is kept.
    pub fn fetched(&self, name: &str) -> PathBuf {
        self.dir.join(FETCHED_DIR).join(name)
    }

    /// The directory fetched-ahead files are written in (their temporary
    /// files too, so a rename finishes them).
    pub fn fetched_dir(&self) -> PathBuf {
        self.dir.join(FETCHED_DIR)
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
    /// written more than [`STALE_AFTER`] before `now`; returns how many.
    pub fn remove_stale(&self, now: Timestamp) -> usize {
        let Ok(limit) =
            now.checked_sub(jiff::SignedDuration::try_from(STALE_AFTER).unwrap_or_default())
        else {
            return 0;
        };
        let mut removed = 0;
        for sub in [PUSHED_DIR, FETCHED_DIR] {
            for entry in std::fs::read_dir(self.dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                let written = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| Timestamp::try_from(t).ok());
                if written.is_some_and(|t| t < limit) && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
        }
        removed
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
        .tempfile_in(dir)
}

/// Whether `name` is one of [`temp_file_in`]'s.
pub fn is_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
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

    #[test]
    fn pushed_entries_hold_a_digest_and_go_stale_after_a_day() {
        let root = tempfile::tempdir().unwrap();
        let spool = Spool::open(root.path(), "base").unwrap();
        let sha = "ab".repeat(32);
        assert_eq!(spool.pushed("000000010000000000000003"), None);
        spool.note_pushed("000000010000000000000003", &sha).unwrap();
        assert_eq!(spool.pushed("000000010000000000000003"), Some(sha));
        std::fs::write(spool.fetched("000000010000000000000004"), b"x").unwrap();
        assert_eq!(spool.remove_stale(Timestamp::now()), 0);
        let tomorrow = Timestamp::now()
            .checked_add(jiff::SignedDuration::from_hours(25))
            .unwrap();
        assert_eq!(spool.remove_stale(tomorrow), 2);
        assert_eq!(spool.pushed("000000010000000000000003"), None);
        assert!(!spool.fetched("000000010000000000000004").exists());
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
