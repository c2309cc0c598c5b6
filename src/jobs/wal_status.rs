//! The state of a physical job's WAL archive, as `status`, `check` and
//! `/metrics` show it: the newest archived segment and when it arrived, the
//! recovery window, the gaps on the path recovery replays, the segments
//! `wal push` dropped to spare the server's disk, and its push failures.
//!
//! Read only: listings, the timeline history files, the drop markers in the
//! storages and the failure counts in the local spool. Nothing here talks to
//! the database or changes anything, so monitors may run it every minute.
//!
//! Layouts read here are written by `wal push`:
//! - `<job>/wal/dropped/<file>.json` in the storages: `{"file", "dropped_at",
//!   "backlog_bytes", "limit_bytes"}`, one per segment the safety valve
//!   (`wal_queue_max`) reported archived without pushing it;
//! - `<spool>/<job>/push-failures.total` (a decimal count) and
//!   `<spool>/<job>/push-failures.jsonl` (one `{"at", "file", "error"}` a
//!   line), on the host PostgreSQL runs `wal push` on. Missing files mean
//!   no failure.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::archive::crypt::Crypt;
use crate::catalog::Manifest;
use crate::error::{Error, Result};
use crate::keys::{IDENTITY_ENV, Identities};
use crate::model::{BackupJob, WalSettings};
use crate::storage::{Key, Storage};
use crate::wal::chain::{self, History};
use crate::wal::names::DEFAULT_SEGMENT_SIZE;
use crate::wal::{Archived, Segment, WalFile, wal_prefix};

/// Under `<job>/wal/`: the markers of dropped segments.
pub const DROPPED_DIR: &str = "dropped";
/// In `<spool>/<job>/`: how many pushes failed, ever.
pub const FAILURES_TOTAL: &str = "push-failures.total";
/// In `<spool>/<job>/`: one JSON line per failed push.
pub const FAILURES_LOG: &str = "push-failures.jsonl";

/// A marker is a few numbers; anything larger is not one.
const MARKER_LIMIT: u64 = 64 << 10;
/// The end of the failure log read for its last line.
const FAILURE_TAIL: u64 = 64 << 10;

/// One archived segment and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchivedSegment {
    pub segment: String,
    /// The earliest a storage dates it; `None` where storages keep no time.
    pub archived_at: Option<Timestamp>,
}

/// From the oldest complete base backup's end to the newest segment on the
/// path recovery replays from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub base_backup: String,
    pub from: Timestamp,
    /// `None` when no segment after the base backup is archived, or its
    /// time is unknown.
    pub to: Option<Timestamp>,
}

/// Segments missing from the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalGap {
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// The archived segment before it, where recovery stops, and when it arrived.
    pub after: Option<ArchivedSegment>,
    /// The archived segment after it, where the archive goes on.
    pub resumes: Option<ArchivedSegment>,
}

/// A segment `wal push` reported archived without pushing it, as its marker says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    pub file: String,
    /// `None` when the marker does not read.
    pub dropped_at: Option<Timestamp>,
    #[serde(default)]
    pub backlog_bytes: u64,
    #[serde(default)]
    pub limit_bytes: u64,
}

/// One failed push, as the spool's log says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushFailure {
    pub at: Timestamp,
    pub file: String,
    pub error: String,
}

/// The failures `wal push` counted on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PushFailures {
    pub total: u64,
    pub last: Option<PushFailure>,
}

/// What one storage holds of the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageWal {
    pub storage: String,
    pub segments: u64,
    pub newest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalStatus {
    /// The segment archived last (by the time storages give it).
    pub newest: Option<ArchivedSegment>,
    pub oldest: Option<ArchivedSegment>,
    /// Distinct segments archived, in any storage.
    pub segments: u64,
    /// `None` without a complete base backup.
    pub window: Option<Window>,
    /// Where the path begins: the oldest base backup's first segment, or
    /// without one the oldest archived segment.
    pub path_from: Option<String>,
    pub timelines: Vec<u32>,
    pub gaps: Vec<WalGap>,
    /// Dropped segments the path needs (not archived since).
    pub dropped: Vec<Dropped>,
    /// Timelines with archived segments and no history file: recovery
    /// cannot follow them.
    pub missing_history: Vec<u32>,
    pub push_failures: PushFailures,
    pub storages: Vec<StorageWal>,
    /// What could not be read or judged, and why.
    pub notes: Vec<String>,
}

impl WalStatus {
    /// Breaks in the archive: gaps on the path, and dropped segments that
    /// are not inside one (a dropped segment past the newest archived one
    /// is no gap yet, but will be).
    pub fn breaks(&self) -> usize {
        let inside = |d: &Dropped| {
            let name = WalFile::parse(&d.file)
                .and_then(|f| f.segment_name().map(str::to_owned))
                .unwrap_or_default();
            self.gaps
                .iter()
                .any(|g| g.first.as_str() <= name.as_str() && name.as_str() <= g.last.as_str())
        };
        self.gaps.len()
            + self.dropped.iter().filter(|d| !inside(d)).count()
            + self.missing_history.len()
    }
}

/// An archived object and when its storage says it was written.
#[derive(Debug, Clone)]
pub struct Dated {
    pub archived: Archived,
    pub modified: Option<Timestamp>,
}

/// The base backup the window and the path start from.
struct Base<'a> {
    id: String,
    stop_time: Timestamp,
    wal_start: &'a str,
    start_lsn: crate::wal::Lsn,
    segment_size: u64,
}

/// The oldest complete physical backup among `bases`.
fn oldest_base<'a>(bases: &[&'a Manifest]) -> Option<Base<'a>> {
    bases
        .iter()
        .filter(|m| m.physical.is_some())
        .min_by_key(|m| m.id.clone())
        .and_then(|m| {
            m.physical.as_ref().map(|p| Base {
                id: m.id.to_string(),
                stop_time: p.stop_time,
                wal_start: &p.wal_start,
                start_lsn: p.start_lsn,
                segment_size: p.wal_segment_size,
            })
        })
}

/// Judges what the storages hold: a pure function of the listings (all
/// storages' objects together), the history files, the base backups and
/// the drop markers. Push failures, storages and notes are left to fill.
pub fn assess(
    archive: &[Dated],
    histories: &[History],
    bases: &[&Manifest],
    dropped: Vec<Dropped>,
) -> WalStatus {
    let base = oldest_base(bases);
    let size = base
        .as_ref()
        .map_or(DEFAULT_SEGMENT_SIZE, |b| b.segment_size);
    let mut notes = Vec::new();
    // Each segment once, dated by the storage that had it first.
    let mut dated: BTreeMap<Segment, (String, Option<Timestamp>)> = BTreeMap::new();
    for d in archive {
        let WalFile::Segment(name) = &d.archived.file else {
            continue;
        };
        let Some(segment) = Segment::parse(name, size) else {
            continue;
        };
        let entry = dated.entry(segment).or_insert((name.clone(), d.modified));
        entry.1 = match (entry.1, d.modified) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let shown = |s: &Segment| {
        dated.get(s).map(|(name, at)| ArchivedSegment {
            segment: name.clone(),
            archived_at: *at,
        })
    };
    let newest = dated
        .iter()
        .max_by_key(|(segment, (_, at))| (*at, **segment))
        .and_then(|(s, _)| shown(s));
    let oldest = dated.keys().next().and_then(shown);
    let from = match &base {
        Some(b) => match Segment::parse(b.wal_start, size) {
            Some(s) => Some(s),
            None => {
                notes.push(format!(
                    "base backup {}: its first segment '{}' is not a segment name; \
                     the path is followed from the oldest archived segment",
                    b.id, b.wal_start
                ));
                dated.keys().next().copied()
            }
        },
        None => dated.keys().next().copied(),
    };
    let archived: Vec<Archived> = archive.iter().map(|d| d.archived.clone()).collect();
    let start = |from: Segment| base.as_ref().map_or(from.start(size), |b| b.start_lsn);
    let path = from.map(|from| chain::chain(&archived, histories, from, start(from), size));
    let at = |s: Option<Segment>| s.and_then(|s| dated.get(&s).and_then(|(_, t)| *t));
    let window = base.as_ref().map(|b| Window {
        base_backup: b.id.clone(),
        from: b.stop_time,
        // The segment holding the backup's end was archived before the
        // backup took its stop time: recovery reaches at least that.
        to: at(path.as_ref().and_then(|c| c.newest)).map(|t| t.max(b.stop_time)),
    });
    let gaps = path
        .iter()
        .flat_map(|c| &c.gaps)
        .map(|g| WalGap {
            first: g.first.name(size),
            last: g.last.name(size),
            segments: g.segments(),
            after: g.before.and_then(|s| shown(&s)),
            resumes: g.after.and_then(|s| shown(&s)),
        })
        .collect();
    // A dropped segment archived since is no loss; one older than the base
    // backup the path starts from is not needed. Without a base backup,
    // every one counts: the path's start is only the oldest that survived.
    let dropped = dropped
        .into_iter()
        .filter(|d| {
            let Some(segment) = WalFile::parse(&d.file)
                .and_then(|f| f.segment_name().and_then(|n| Segment::parse(n, size)))
            else {
                return true;
            };
            if dated.contains_key(&segment) {
                return false;
            }
            match (&base, from) {
                (Some(_), Some(from)) => segment.number >= from.number,
                _ => true,
            }
        })
        .collect();
    WalStatus {
        newest,
        oldest,
        segments: dated.len() as u64,
        window,
        path_from: from.map(|s| s.name(size)),
        timelines: path.as_ref().map_or_else(Vec::new, |c| c.timelines.clone()),
        gaps,
        dropped,
        missing_history: path
            .as_ref()
            .map_or_else(Vec::new, |c| c.missing_history.clone()),
        push_failures: PushFailures::default(),
        storages: Vec::new(),
        notes,
    }
}

/// What `wal push` counted in the spool of `job`: see the module's docs.
pub fn read_push_failures(spool: &Path, job: &str) -> Result<PushFailures> {
    use std::io::{Read, Seek, SeekFrom};
    let dir = spool.join(job);
    let unreadable = |path: &Path, e: std::io::Error| {
        Error::io(
            crate::error::Kind::Internal,
            format!("reading {}", path.display()),
            e,
        )
        .with_hint("status reads the spool of the host that runs `wal push`, as a user that may")
    };
    let total_path = dir.join(FAILURES_TOTAL);
    let total = match std::fs::read_to_string(&total_path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            Error::integrity(format!(
                "{} holds '{}', not a count",
                total_path.display(),
                text.trim().chars().take(40).collect::<String>()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(unreadable(&total_path, e)),
    };
    let log_path = dir.join(FAILURES_LOG);
    let tail = match std::fs::File::open(&log_path) {
        Ok(mut file) => {
            let len = file.metadata().map_err(|e| unreadable(&log_path, e))?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(FAILURE_TAIL)))
                .map_err(|e| unreadable(&log_path, e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| unreadable(&log_path, e))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(unreadable(&log_path, e)),
    };
    // A line being written as we read is not whole: the one before it is.
    let last = tail
        .lines()
        .rev()
        .filter(|l| !l.trim().is_empty())
        .find_map(|l| serde_json::from_str::<PushFailure>(l).ok());
    Ok(PushFailures { total, last })
}

/// How to open encrypted history files: `None` when no identity is given here.
fn opener(spec: &BackupJob) -> Result<Option<Crypt>> {
    let e = spec.encryption.as_ref();
    Ok(Identities::load(
        e.and_then(|e| e.passphrase.as_ref()),
        e.and_then(|e| e.identity_file.as_deref()),
    )?
    .map(|ids| Crypt::Open(Arc::new(ids))))
}

/// Reads and judges the archive of `job` in `storages`. `bases` are its
/// complete backups (any order). One storage that cannot be listed is a
/// note; all of them, an error.
pub async fn read(
    job: &str,
    spec: &BackupJob,
    wal: &WalSettings,
    storages: &[Arc<dyn Storage>],
    bases: &[&Manifest],
) -> Result<WalStatus> {
    let prefix = wal_prefix(job)?;
    let dropped_prefix = prefix.join(DROPPED_DIR)?;
    let mut notes = Vec::new();
    let mut archive: Vec<Dated> = Vec::new();
    let mut per_storage: Vec<(usize, Vec<Archived>)> = Vec::new();
    let mut markers: BTreeMap<String, (usize, Key)> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut first_error = None;
    let listings = futures::future::join_all(storages.iter().map(|s| s.list(&prefix))).await;
    for (i, (storage, listing)) in storages.iter().zip(listings).enumerate() {
        let objects = match listing {
            Ok(objects) => objects,
            Err(e) => {
                rows.push(StorageWal {
                    storage: storage.name().to_owned(),
                    segments: 0,
                    newest: None,
                    error: Some(e.to_string()),
                });
                notes.push(format!(
                    "storage {} could not be listed: {e}",
                    storage.name()
                ));
                first_error.get_or_insert(e);
                continue;
            }
        };
        let mut mine = Vec::new();
        for o in objects {
            if o.key.as_str().starts_with(&format!("{dropped_prefix}/")) {
                if let Some(file) = o.key.file_name().strip_suffix(".json") {
                    markers.entry(file.to_owned()).or_insert((i, o.key.clone()));
                }
                continue;
            }
            if let Some(a) = Archived::parse(&o.key, o.size) {
                mine.push(a.clone());
                archive.push(Dated {
                    archived: a,
                    modified: o.modified,
                });
            }
        }
        let segments: Vec<&str> = mine
            .iter()
            .filter_map(|a| match &a.file {
                WalFile::Segment(s) => Some(s.as_str()),
                _ => None,
            })
            .collect();
        rows.push(StorageWal {
            storage: storage.name().to_owned(),
            segments: segments.len() as u64,
            newest: segments.iter().max().map(|s| (*s).to_owned()),
            error: None,
        });
        per_storage.push((i, mine));
    }
    if per_storage.is_empty()
        && let Some(e) = first_error
    {
        return Err(e.context(format!("job {job}: the WAL archive")));
    }
    let histories = read_histories(job, spec, storages, &per_storage, &mut notes).await;
    let mut dropped = Vec::new();
    for (file, (i, key)) in markers {
        let storage = storages[i].as_ref();
        let marker = crate::storage::read_small(storage, &key, MARKER_LIMIT)
            .await
            .and_then(|bytes| {
                serde_json::from_slice::<Dropped>(&bytes).map_err(|e| {
                    Error::integrity(format!("{key} in storage {}: {e}", storage.name()))
                })
            });
        match marker {
            Ok(d) => dropped.push(d),
            Err(e) => {
                notes.push(format!(
                    "the drop marker of {file} does not read ({e}): counted as dropped"
                ));
                dropped.push(Dropped {
                    file,
                    dropped_at: None,
                    backlog_bytes: 0,
                    limit_bytes: 0,
                });
            }
        }
    }
    // Drops no storage took a marker for are noted in this host's spool.
    if let Some((_, wal)) = spec.cluster() {
        for m in crate::wal::spool::dropped(&wal.spool, job) {
            if !dropped.iter().any(|d: &Dropped| d.file == m.file) {
                dropped.push(Dropped {
                    file: m.file,
                    dropped_at: Some(m.dropped_at),
                    backlog_bytes: m.backlog_bytes,
                    limit_bytes: m.limit_bytes,
                });
            }
        }
    }
    let mut status = assess(&archive, &histories, bases, dropped);
    // Storages that miss segments another one has: a push that failed
    // half-way, or objects deleted by hand.
    for row in rows.iter().filter(|r| r.error.is_none()) {
        if row.segments < status.segments {
            notes.push(format!(
                "storage {} holds {} of the {} archived segments (newest there: {})",
                row.storage,
                row.segments,
                status.segments,
                row.newest.as_deref().unwrap_or("none")
            ));
        }
    }
    let spool = wal.spool.clone();
    let owned = job.to_owned();
    match tokio::task::spawn_blocking(move || read_push_failures(&spool, &owned)).await {
        Ok(Ok(failures)) => status.push_failures = failures,
        Ok(Err(e)) => notes.push(format!("push failures unknown: {e}")),
        Err(e) => notes.push(format!("push failures unknown: {e}")),
    }
    status.storages = rows;
    status.notes.extend(notes);
    Ok(status)
}

/// The timeline history files, each read from the first storage that
/// holds it. When they are encrypted and no identity is given here (a
/// monitoring host need not hold the key), the path is followed along its
/// first timeline only, and a note says so.
async fn read_histories(
    job: &str,
    spec: &BackupJob,
    storages: &[Arc<dyn Storage>],
    per_storage: &[(usize, Vec<Archived>)],
    notes: &mut Vec<String>,
) -> Vec<History> {
    let all: Vec<&Archived> = per_storage
        .iter()
        .flat_map(|(_, a)| a)
        .filter(|a| matches!(a.file, WalFile::History(_)))
        .collect();
    if all.is_empty() {
        return Vec::new();
    }
    let crypt = if all.iter().any(|a| a.encrypted) {
        match opener(spec) {
            Ok(Some(crypt)) => crypt,
            Ok(None) => {
                notes.push(format!(
                    "job {job}: the timeline history files are encrypted and no identity is \
                     given here ({IDENTITY_ENV} or the job's identity_file): gaps were looked \
                     for along the first timeline only"
                ));
                return Vec::new();
            }
            Err(e) => {
                notes.push(format!(
                    "job {job}: the identity for the encrypted history files does not load \
                     ({e}): gaps were looked for along the first timeline only"
                ));
                return Vec::new();
            }
        }
    } else {
        Crypt::None
    };
    let mut out: Vec<History> = Vec::new();
    for (i, archived) in per_storage {
        let wanted: Vec<Archived> = archived
            .iter()
            .filter(|a| match a.file {
                WalFile::History(tli) => !out.iter().any(|h| h.timeline == tli),
                _ => false,
            })
            .cloned()
            .collect();
        if wanted.is_empty() {
            continue;
        }
        match crate::wal::object::histories(storages[*i].as_ref(), &wanted, &crypt).await {
            Ok(read) => out.extend(read),
            Err(e) => notes.push(format!(
                "a timeline history file does not read ({e}): the path may stop short"
            )),
        }
    }
    out
}

/// The complete base backups of `job` in any of `storages`, for callers
/// that have not listed them: one manifest per backup.
pub async fn base_backups(storages: &[Arc<dyn Storage>], job: &str) -> Result<Vec<Manifest>> {
    let mut out: Vec<Manifest> = Vec::new();
    let mut failed = None;
    let mut listed = 0;
    for storage in storages {
        match crate::catalog::list(storage.as_ref(), job).await {
            Ok(listing) => {
                listed += 1;
                for m in listing.backups {
                    if m.physical.is_some() && !out.iter().any(|o| o.id == m.id) {
                        out.push(m);
                    }
                }
            }
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) if listed == 0 => Err(e),
        _ => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Compression;

    const SIZE: u64 = DEFAULT_SEGMENT_SIZE;

    fn at(minute: i64) -> Timestamp {
        "2026-12-06T01:00:00Z".parse::<Timestamp>().unwrap()
            + jiff::SignedDuration::from_mins(minute)
    }

    /// Segment `n` of timeline `tli`, archived at minute `n`.
    fn dated(tli: u32, numbers: &[u64]) -> Vec<Dated> {
        numbers
            .iter()
            .map(|n| {
                let name = Segment {
                    timeline: tli,
                    number: *n,
                }
                .name(SIZE);
                let key = WalFile::Segment(name)
                    .key("base", &"0".repeat(64), Compression::Zstd(3), false)
                    .unwrap();
                Dated {
                    archived: Archived::parse(&key, 100).unwrap(),
                    modified: Some(at(*n as i64)),
                }
            })
            .collect()
    }

    fn seg(n: u64) -> String {
        Segment {
            timeline: 1,
            number: n,
        }
        .name(SIZE)
    }

    fn dropped(n: u64) -> Dropped {
        Dropped {
            file: seg(n),
            dropped_at: Some(at(n as i64)),
            backlog_bytes: 9 << 30,
            limit_bytes: 8 << 30,
        }
    }

    #[test]
    fn an_unbroken_archive_without_base_backup_has_no_window_and_no_gap() {
        let s = assess(&dated(1, &[2, 3, 4]), &[], &[], vec![]);
        assert_eq!(s.newest.as_ref().unwrap().segment, seg(4));
        assert_eq!(s.newest.as_ref().unwrap().archived_at, Some(at(4)));
        assert_eq!(s.oldest.as_ref().unwrap().segment, seg(2));
        assert_eq!(s.path_from.as_deref(), Some(seg(2).as_str()));
        assert_eq!(s.segments, 3);
        assert_eq!(s.window, None);
        assert!(s.gaps.is_empty());
        assert_eq!(s.breaks(), 0);
    }

    #[test]
    fn a_missing_segment_is_a_gap_between_its_neighbours_with_their_times() {
        let s = assess(&dated(1, &[2, 3, 5, 6]), &[], &[], vec![]);
        assert_eq!(s.gaps.len(), 1);
        let g = &s.gaps[0];
        assert_eq!((g.first.as_str(), g.segments), (seg(4).as_str(), 1));
        assert_eq!(g.after.as_ref().unwrap().archived_at, Some(at(3)));
        assert_eq!(g.resumes.as_ref().unwrap().segment, seg(5));
        assert_eq!(s.breaks(), 1);
    }

    #[test]
    fn the_same_segment_in_two_storages_is_one_dated_by_the_first() {
        let mut archive = dated(1, &[2, 3]);
        let mut later = dated(1, &[3]);
        later[0].modified = Some(at(30));
        archive.extend(later);
        let s = assess(&archive, &[], &[], vec![]);
        assert_eq!(s.segments, 2);
        assert_eq!(s.newest.unwrap().archived_at, Some(at(3)));
    }

    #[test]
    fn dropped_segments_count_unless_archived_since_or_inside_a_gap() {
        // 4 was dropped and is a gap; 7, past the newest, is no gap yet
        // but a break; 3 was dropped, then archived after all.
        let s = assess(
            &dated(1, &[2, 3, 5, 6]),
            &[],
            &[],
            vec![dropped(3), dropped(4), dropped(7)],
        );
        let files: Vec<&str> = s.dropped.iter().map(|d| d.file.as_str()).collect();
        assert_eq!(files, [seg(4), seg(7)]);
        assert_eq!(s.gaps.len(), 1);
        assert_eq!(s.breaks(), 2);
    }

    #[test]
    fn a_base_backup_starts_the_path_and_the_window() {
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format": 1, "id": "20261206T005500Z", "job": "base", "database": "app",
            "dbname": "", "server_version": "15", "pg_dump_version": "",
            "snapshot_at": at(-4), "started_at": at(-5), "finished_at": at(-4),
            "compression": "zstd", "encryption": null, "objects": [], "tables": [],
            "physical": {
                "timeline": 1, "start_lsn": "0/3000028", "stop_lsn": "0/3000100",
                "start_time": at(-5), "stop_time": at(-4), "wal_segment_size": SIZE,
                "wal_start": seg(3), "wal_stop": seg(3), "manifest_checksums": "CRC32C",
            },
        }))
        .unwrap();
        // 1 is missing, but before the base backup: no gap. So is the drop of 2.
        let s = assess(&dated(1, &[0, 3, 4, 5]), &[], &[&m], vec![dropped(2)]);
        assert!(s.gaps.is_empty(), "{:?}", s.gaps);
        assert!(s.dropped.is_empty());
        assert_eq!(s.path_from.as_deref(), Some(seg(3).as_str()));
        let w = s.window.unwrap();
        assert_eq!((w.from, w.to), (at(-4), Some(at(5))));
        assert_eq!(w.base_backup, "20261206T005500Z");
    }

    #[test]
    fn encrypted_history_files_without_an_identity_leave_a_note_not_an_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let disk = crate::storage::MemoryStorage::new("disk");
            for d in dated(1, &[2, 3]).into_iter().chain(dated(2, &[4])) {
                disk.put(&d.archived.key, vec![0]);
            }
            let history = WalFile::History(2)
                .key("base", &"1".repeat(64), Compression::Zstd(3), true)
                .unwrap();
            disk.put(&history, b"age-encryption.org/v1 ...".to_vec());
            let spec = BackupJob {
                source: crate::model::BackupSource::Directory("/".into()),
                storages: vec![],
                compression: Compression::Zstd(3),
                retention: None,
                incomplete_after: std::time::Duration::from_secs(60),
                encryption: None,
            };
            let wal = WalSettings {
                spool: "/nonexistent".into(),
                ..WalSettings::default()
            };
            let storages: Vec<Arc<dyn Storage>> = vec![Arc::new(disk)];
            let s = read("base", &spec, &wal, &storages, &[]).await.unwrap();
            assert_eq!(s.timelines, [1]);
            assert!(
                s.notes
                    .iter()
                    .any(|n| n.contains("encrypted and no identity")),
                "{:?}",
                s.notes
            );
            // The newest segment is still known, whatever its timeline.
            assert_eq!(
                s.newest.unwrap().segment,
                Segment {
                    timeline: 2,
                    number: 4
                }
                .name(SIZE)
            );
        });
    }

    #[test]
    fn push_failures_are_read_from_the_spool_and_missing_files_are_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read_push_failures(dir.path(), "base").unwrap(),
            PushFailures::default()
        );
        let job = dir.path().join("base");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join(FAILURES_TOTAL), "3\n").unwrap();
        std::fs::write(
            job.join(FAILURES_LOG),
            format!(
                "{{\"at\":\"2026-12-06T01:00:00Z\",\"file\":\"{}\",\"error\":\"storage s3: timeout\"}}\n\
                 {{\"at\":\"2026-12-06T01:05:00Z\",\"file\":\"{}\",\"error\":\"storage s3: 503\"}}\n\
                 {{\"at\":\"2026-12-06T01:06",
                seg(4),
                seg(5)
            ),
        )
        .unwrap();
        let f = read_push_failures(dir.path(), "base").unwrap();
        assert_eq!(f.total, 3);
        let last = f.last.unwrap();
        assert_eq!((last.file.as_str(), last.at), (seg(5).as_str(), at(5)));
        std::fs::write(job.join(FAILURES_TOTAL), "many").unwrap();
        assert!(read_push_failures(dir.path(), "base").is_err());
    }

    #[test]
    fn the_archive_is_read_from_every_storage_with_its_drop_markers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let disk = crate::storage::MemoryStorage::new("disk");
            let s3 = crate::storage::MemoryStorage::new("s3");
            for d in dated(1, &[2, 3, 5]) {
                disk.put(&d.archived.key, vec![0]);
            }
            for d in dated(1, &[2]) {
                s3.put(&d.archived.key, vec![0]);
            }
            let marker = Key::new(format!("base/wal/dropped/{}.json", seg(4))).unwrap();
            s3.put(&marker, serde_json::to_vec(&dropped(4)).unwrap());
            let spool = tempfile::tempdir().unwrap();
            let wal = WalSettings {
                spool: spool.path().to_owned(),
                ..WalSettings::default()
            };
            let spec = BackupJob {
                source: crate::model::BackupSource::Directory("/".into()),
                storages: vec![],
                compression: Compression::Zstd(3),
                retention: None,
                incomplete_after: std::time::Duration::from_secs(60),
                encryption: None,
            };
            let storages: Vec<Arc<dyn Storage>> = vec![Arc::new(disk), Arc::new(s3)];
            let s = read("base", &spec, &wal, &storages, &[]).await.unwrap();
            assert!(s.timelines == [1], "{:?}", s.timelines);
            assert_eq!(s.segments, 3);
            assert_eq!(s.gaps.len(), 1);
            assert_eq!(s.dropped, vec![dropped(4)]);
            assert_eq!(s.breaks(), 1);
            assert_eq!(s.storages[1].segments, 1);
            assert!(
                s.notes
                    .iter()
                    .any(|n| n.contains("storage s3 holds 1 of the 3")),
                "{:?}",
                s.notes
            );
        });
    }
}
