//! The WAL half of a physical job's prune: which archived WAL objects no kept
//! base backup needs, planned from one storage's listing and carried out after
//! the base backups are deleted.
//!
//! The rule (DESIGN.md, "Physical backups and the WAL archive"): every WAL
//! object — segment, `.partial` or `.backup` file, on any timeline — whose
//! segment number is below the `wal_start` of the oldest kept complete base
//! backup is deleted, and so are the `wal/dropped/` markers of such segments.
//! Nothing else is: history files are kept (they are tiny, and recovery to
//! any later timeline reads them all), an object whose name does not read
//! is left alone, and whenever what the kept backups need cannot be known
//! for sure (no complete backup, a manifest that does not read, segment
//! sizes that disagree, a prune held by retention's own rules) no WAL at all
//! is deleted.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::BackupId;
use crate::storage::{Key, ObjectInfo, Storage};
use crate::wal::names::DROPPED_DIR;
use crate::wal::{Archived, Segment, WalFile, wal_prefix};

/// How many ranges of each kind a printed plan names before it counts the rest.
const RANGES_SHOWN: usize = 4;

/// A complete base backup that retention keeps, as far as its WAL goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptBase {
    pub id: BackupId,
    /// From its manifest's `physical`: the first segment it needs and the
    /// cluster's `wal_segment_size`. `None` when the manifest records none.
    pub needs: Option<(String, u64)>,
}

/// Consecutive segments of one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRange {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// Segments, `.partial` and `.backup` files.
    pub objects: usize,
    /// Their stored size.
    pub bytes: u64,
}

/// One side of the WAL plan: what is kept, or what is deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalSide {
    /// Every object, history files and the objects left alone included.
    pub objects: usize,
    pub bytes: u64,
    /// The segments, by timeline and then by number.
    pub ranges: Vec<WalRange>,
}

/// One storage's WAL plan, and what carrying it out did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalPrune {
    /// The first segment a kept base backup needs: every WAL object of a
    /// lower segment, on any timeline, is deleted. `None` when held.
    pub keep_from: Option<String>,
    /// The kept backup that needs it.
    pub keep_from_backup: Option<BackupId>,
    /// Why no WAL is deleted, when that is the case by rule.
    pub held: Option<String>,
    /// The segment size the names were read with.
    pub segment_size: Option<u64>,
    pub keep: WalSide,
    pub delete: WalSide,
    /// History files, all kept.
    pub history_files: usize,
    /// Objects kept because their names do not read as this job's WAL.
    pub left_alone: usize,
    /// `wal/dropped/` markers of deleted segments, deleted with them.
    pub dropped_markers: usize,
    /// How many objects the prune deleted (segments and markers); 0 when
    /// the batch failed part way: the next prune deletes what is left.
    pub deleted: usize,
    /// Why the planned deletion was not carried out this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The keys to delete, in deletion order: segments, then markers.
    #[serde(skip)]
    doomed: Vec<Key>,
}

impl WalPrune {
    pub fn doomed(&self) -> &[Key] {
        &self.doomed
    }
}

/// PostgreSQL's `wal_segment_size` is a power of two from 1 MiB to 1 GiB.
fn valid_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

/// Where the kept WAL starts.
struct Boundary {
    /// The lowest `wal_start` of the kept backups.
    start: Segment,
    /// The segment size every kept backup records.
    size: u64,
    /// The backup that starts there.
    backup: BackupId,
}

/// Where the kept WAL starts, or why it cannot be known.
fn boundary(kept: &[KeptBase]) -> std::result::Result<Boundary, String> {
    let mut found: Option<Boundary> = None;
    for base in kept {
        let Some((start, size)) = &base.needs else {
            return Err(format!(
                "backup {} is kept, and its manifest records no WAL position: the WAL it \
                 needs is unknown",
                base.id
            ));
        };
        let size = *size;
        if !valid_segment_size(size) {
            return Err(format!(
                "backup {} records wal_segment_size {size}, which PostgreSQL does not make",
                base.id
            ));
        }
        let Some(start) = Segment::parse(start, size) else {
            return Err(format!(
                "backup {} records wal_start '{}', which is not a segment name",
                base.id,
                start.chars().take(40).collect::<String>()
            ));
        };
        match &found {
            Some(b) if b.size != size => {
                return Err(format!(
                    "the kept backups {} and {} record different wal_segment_size ({} and \
                     {size}): which segment an archived name is cannot be told",
                    b.backup, base.id, b.size
                ));
            }
            Some(b) if b.start.number <= start.number => {}
            _ => {
                found = Some(Boundary {
                    start,
                    size,
                    backup: base.id.clone(),
                })
            }
        }
    }
    found.ok_or_else(|| {
        "there is no complete base backup: every archived WAL segment may be needed by the \
         next one"
            .to_owned()
    })
}

/// What one object under `<job>/wal/` is, for the plan.
enum Listed {
    /// A segment, `.partial` or `.backup` file of this segment.
    Wal(Segment),
    History,
    /// A `wal/dropped/` marker of this segment.
    Dropped(Segment),
    /// One of ours whose name does not read with the segment size.
    Unreadable,
    /// A segment, `.partial` or `.backup` file, read without a segment size.
    Unnumbered,
    /// Not one of ours (a local disk's temporary file): not counted at all.
    Foreign,
}

fn classify(object: &ObjectInfo, prefix: &Key, size: Option<u64>) -> Listed {
    let Some(rest) = object
        .key
        .as_str()
        .strip_prefix(prefix.as_str())
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Listed::Foreign;
    };
    let Some((dir, name)) = rest.split_once('/') else {
        return Listed::Foreign;
    };
    if dir == DROPPED_DIR {
        return match name
            .strip_suffix(".json")
            .zip(size)
            .and_then(|(s, size)| Segment::parse(s, size).filter(|_| WalFile::parse(s).is_some()))
        {
            Some(segment) => Listed::Dropped(segment),
            None => Listed::Foreign,
        };
    }
    let Some(archived) = Archived::parse(&object.key, object.size) else {
        return Listed::Foreign;
    };
    match archived.file.segment_name() {
        None if dir == crate::wal::names::HISTORY_DIR && !name.contains('/') => Listed::History,
        // Under the directory its name belongs in, and nowhere deeper: a
        // copy somewhere else was not put there by `wal push`.
        Some(segment) if segment.get(..16) == Some(dir) && !name.contains('/') => {
            let Some(size) = size else {
                return Listed::Unnumbered;
            };
            match Segment::parse(segment, size) {
                Some(s) => Listed::Wal(s),
                None => Listed::Unreadable,
            }
        }
        _ => Listed::Unreadable,
    }
}

/// Groups segments into runs of consecutive numbers, per timeline.
fn ranges(segments: &BTreeMap<Segment, (usize, u64)>, size: u64) -> Vec<WalRange> {
    let mut out: Vec<WalRange> = Vec::new();
    let mut last: Option<Segment> = None;
    for (segment, (objects, bytes)) in segments {
        match out.last_mut() {
            Some(r) if last.is_some_and(|l| l.next() == *segment) => {
                r.last = segment.name(size);
                r.segments += 1;
                r.objects += objects;
                r.bytes += bytes;
            }
            _ => out.push(WalRange {
                timeline: segment.timeline,
                first: segment.name(size),
                last: segment.name(size),
                segments: 1,
                objects: *objects,
                bytes: *bytes,
            }),
        }
        last = Some(*segment);
    }
    out
}

/// Plans the WAL part of one storage's prune: `listing` is everything under
/// `<job>/wal/`, `kept` the complete base backups retention keeps, `held`
/// why nothing at all may be deleted (retention's hold, a manifest that
/// does not read).
pub fn plan(
    job: &str,
    listing: &[ObjectInfo],
    kept: &[KeptBase],
    held: Option<String>,
) -> WalPrune {
    let Ok(prefix) = wal_prefix(job) else {
        return WalPrune {
            held: Some(format!("job {job} has no WAL archive")),
            ..WalPrune::default()
        };
    };
    let (bound, unknown) = match boundary(kept) {
        Ok(b) => (Some(b), None),
        Err(why) => (None, Some(why)),
    };
    // The names are read with the kept backups' segment size, held or not,
    // so that what is kept is shown as ranges too.
    let size = bound.as_ref().map(|b| b.size);
    let held = held.or(unknown);
    let cut = bound.filter(|_| held.is_none());
    let doomed = |s: &Segment| cut.as_ref().is_some_and(|b| s.number < b.start.number);
    let mut out = WalPrune {
        keep_from: cut.as_ref().map(|b| b.start.name(b.size)),
        keep_from_backup: cut.as_ref().map(|b| b.backup.clone()),
        held,
        segment_size: size,
        ..WalPrune::default()
    };
    let mut keep: BTreeMap<Segment, (usize, u64)> = BTreeMap::new();
    let mut delete: BTreeMap<Segment, (usize, u64)> = BTreeMap::new();
    let mut markers = Vec::new();
    for object in listing {
        match classify(object, &prefix, size) {
            Listed::Wal(s) if doomed(&s) => {
                let e = delete.entry(s).or_default();
                e.0 += 1;
                e.1 += object.size;
                out.delete.objects += 1;
                out.delete.bytes += object.size;
                out.doomed.push(object.key.clone());
                continue;
            }
            Listed::Wal(s) => {
                let e = keep.entry(s).or_default();
                e.0 += 1;
                e.1 += object.size;
            }
            Listed::History => out.history_files += 1,
            Listed::Dropped(s) if doomed(&s) => {
                out.dropped_markers += 1;
                markers.push(object.key.clone());
                continue;
            }
            Listed::Unreadable => out.left_alone += 1,
            Listed::Unnumbered => {}
            Listed::Dropped(_) | Listed::Foreign => continue,
        }
        out.keep.objects += 1;
        out.keep.bytes += object.size;
    }
    // Without a size the names give no numbers: `classify` read none.
    let size = size.unwrap_or(crate::wal::names::DEFAULT_SEGMENT_SIZE);
    out.keep.ranges = ranges(&keep, size);
    out.delete.ranges = ranges(&delete, size);
    out.doomed.extend(markers);
    out
}

/// Deletes what `wal` plans, in one batch where the backend has them.
pub async fn execute(storage: &dyn Storage, job: &str, wal: &mut WalPrune) {
    if wal.doomed.is_empty() {
        return;
    }
    match storage.delete_many(&wal.doomed).await {
        Ok(()) => {
            wal.deleted = wal.doomed.len();
            tracing::info!(
                "job {job}: deleted {} WAL object(s) below {} from {}",
                wal.deleted,
                wal.keep_from.as_deref().unwrap_or("?"),
                storage.name()
            );
        }
        Err(e) => {
            tracing::warn!("job {job}: WAL in {}: {e}", storage.name());
            wal.error = Some(e.to_string());
        }
    }
}

/// `A .. B (n segments)`, or `A (1 segment)`.
fn show_range(r: &WalRange) -> String {
    if r.first == r.last {
        format!("{} (1 segment)", r.first)
    } else {
        format!("{} .. {} ({} segments)", r.first, r.last, r.segments)
    }
}

fn show_ranges(ranges: &[WalRange]) -> String {
    let mut parts: Vec<String> = ranges.iter().take(RANGES_SHOWN).map(show_range).collect();
    if ranges.len() > RANGES_SHOWN {
        parts.push(format!("and {} more ranges", ranges.len() - RANGES_SHOWN));
    }
    parts.join(", ")
}

/// The lines `backup prune` prints for the WAL of one storage; `retention_held`
/// is the whole plan's hold, already printed.
pub fn describe(wal: &WalPrune, dry_run: bool, retention_held: Option<&str>) -> Vec<String> {
    let human = crate::report::bytes_human;
    let mut keep = if wal.keep.ranges.is_empty() {
        vec![]
    } else {
        vec![show_ranges(&wal.keep.ranges)]
    };
    let numbered: usize = wal.keep.ranges.iter().map(|r| r.objects).sum();
    let unnumbered = wal
        .keep
        .objects
        .saturating_sub(numbered + wal.history_files + wal.left_alone);
    if unnumbered > 0 {
        keep.push(format!("{unnumbered} WAL object(s)"));
    }
    if wal.history_files > 0 {
        keep.push(format!("{} history file(s)", wal.history_files));
    }
    if wal.left_alone > 0 {
        keep.push(format!(
            "{} object(s) whose names do not read",
            wal.left_alone
        ));
    }
    let keep = if keep.is_empty() {
        "nothing".to_owned()
    } else {
        keep.join(", ")
    };
    let mut lines = Vec::new();
    let verb = if dry_run || wal.doomed.is_empty() {
        "delete"
    } else if wal.deleted > 0 {
        "deleted"
    } else {
        "NOT deleted"
    };
    let delete = if wal.doomed.is_empty() {
        "nothing".to_owned()
    } else {
        let mut text = show_ranges(&wal.delete.ranges);
        if text.is_empty() {
            text = "no segment".to_owned();
        }
        if wal.dropped_markers > 0 {
            text.push_str(&format!(
                " and {} dropped-segment marker(s)",
                wal.dropped_markers
            ));
        }
        format!(
            "{text}: {} object(s), {}",
            wal.delete.objects,
            human(wal.delete.bytes)
        )
    };
    lines.push(format!(
        "wal: keep {keep} ({} object(s), {}); {verb} {delete}",
        wal.keep.objects,
        human(wal.keep.bytes)
    ));
    if let (Some(from), Some(id)) = (&wal.keep_from, &wal.keep_from_backup) {
        lines.push(format!(
            "wal: kept from {from} on, where the oldest kept backup {id} starts"
        ));
    }
    match &wal.held {
        Some(h) if Some(h.as_str()) == retention_held => {
            lines.push("wal: held, as above: no WAL is deleted".to_owned());
        }
        Some(h) => lines.push(format!("wal: held: {h}")),
        None => {}
    }
    if let Some(s) = &wal.skipped {
        lines.push(format!("wal: not deleted this time: {s}"));
    }
    if let Some(e) = &wal.error {
        lines.push(format!("wal: could not delete: {e}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB16: u64 = 16 << 20;
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn sha(n: usize) -> String {
        format!("{:064x}", n)
    }

    /// `<job>/wal/<dir>/<name>-<sha>.zst`, 100 bytes, as `wal push` stores it.
    fn object(name: &str) -> ObjectInfo {
        let file = WalFile::parse(name).unwrap();
        let key = file
            .key(
                "base",
                &sha(name.len()),
                crate::model::Compression::Zstd(3),
                false,
            )
            .unwrap();
        ObjectInfo {
            key,
            size: 100,
            modified: None,
        }
    }

    fn raw(key: &str) -> ObjectInfo {
        ObjectInfo {
            key: Key::new(key).unwrap(),
            size: 7,
            modified: None,
        }
    }

    fn segments(
        timeline: u32,
        numbers: std::ops::RangeInclusive<u64>,
        size: u64,
    ) -> Vec<ObjectInfo> {
        numbers
            .map(|n| {
                object(
                    &Segment {
                        timeline,
                        number: n,
                    }
                    .name(size),
                )
            })
            .collect()
    }

    fn kept(id: &str, start: &str, size: u64) -> KeptBase {
        KeptBase {
            id: BackupId::parse(id).unwrap(),
            needs: Some((start.to_owned(), size)),
        }
    }

    fn doomed_names(p: &WalPrune) -> Vec<String> {
        p.doomed
            .iter()
            .map(|k| {
                let name = k.file_name();
                name.split_once('-').map_or(name, |(n, _)| n).to_owned()
            })
            .collect()
    }

    fn spans(ranges: &[WalRange]) -> Vec<(String, String, u64)> {
        ranges
            .iter()
            .map(|r| (r.first.clone(), r.last.clone(), r.segments))
            .collect()
    }

    #[test]
    fn wal_below_the_oldest_kept_backup_goes_and_the_rest_stays() {
        let listing = segments(1, 1..=12, MIB16);
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000010000000000000005", MIB16)],
            None,
        );
        assert_eq!(p.held, None);
        assert_eq!(p.keep_from.as_deref(), Some("000000010000000000000005"));
        assert_eq!(
            spans(&p.delete.ranges),
            [(
                "000000010000000000000001".into(),
                "000000010000000000000004".into(),
                4
            )]
        );
        assert_eq!(
            spans(&p.keep.ranges),
            [(
                "000000010000000000000005".into(),
                "00000001000000000000000C".into(),
                8
            )]
        );
        assert_eq!((p.delete.objects, p.delete.bytes), (4, 400));
        assert_eq!((p.keep.objects, p.keep.bytes), (8, 800));
        assert_eq!(doomed_names(&p).len(), 4);
        let lines = describe(&p, true, None);
        assert_eq!(
            lines[0],
            "wal: keep 000000010000000000000005 .. 00000001000000000000000C (8 segments) \
             (8 object(s), 800 B); delete 000000010000000000000001 .. 000000010000000000000004 \
             (4 segments): 4 object(s), 400 B"
        );
    }

    #[test]
    fn the_lowest_start_of_every_kept_backup_counts_a_pinned_old_one_too() {
        let listing = segments(1, 1..=20, MIB16);
        // A pinned backup from long ago starts at 3; the newest at 15.
        let p = plan(
            "base",
            &listing,
            &[
                kept("20240110T000000Z", "00000001000000000000000F", MIB16),
                kept("20240101T000000Z", "000000010000000000000003", MIB16),
            ],
            None,
        );
        assert_eq!(p.keep_from.as_deref(), Some("000000010000000000000003"));
        assert_eq!(
            p.keep_from_backup.as_ref().unwrap().as_str(),
            "20240101T000000Z"
        );
        assert_eq!(
            doomed_names(&p),
            ["000000010000000000000001", "000000010000000000000002"]
        );
    }

    #[test]
    fn every_timeline_is_cut_at_the_same_segment_number_and_history_stays() {
        // Timeline 2 branched off in segment 6; the kept backup began on it in 7.
        let mut listing = segments(1, 1..=6, MIB16);
        listing.extend(segments(2, 6..=12, MIB16));
        listing.push(object("00000002.history"));
        listing.push(object("000000010000000000000006.partial"));
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000020000000000000007", MIB16)],
            None,
        );
        assert_eq!(
            spans(&p.delete.ranges),
            [
                (
                    "000000010000000000000001".into(),
                    "000000010000000000000006".into(),
                    6
                ),
                (
                    "000000020000000000000006".into(),
                    "000000020000000000000006".into(),
                    1
                ),
            ]
        );
        // The .partial goes with its segment.
        assert_eq!(p.delete.objects, 8);
        assert_eq!(p.delete.ranges[0].objects, 7);
        assert_eq!(
            spans(&p.keep.ranges),
            [(
                "000000020000000000000007".into(),
                "00000002000000000000000C".into(),
                6
            )]
        );
        assert_eq!(p.history_files, 1);
        assert_eq!(p.keep.objects, 7);
        assert!(!doomed_names(&p).iter().any(|n| n.contains("history")));
    }

    #[test]
    fn backup_labels_and_partials_go_by_the_segment_they_name() {
        let listing = vec![
            object("000000010000000000000004.00000028.backup"),
            object("000000010000000000000004.partial"),
            object("000000010000000000000005.00000028.backup"),
            object("000000010000000000000005"),
        ];
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000010000000000000005", MIB16)],
            None,
        );
        assert_eq!(
            doomed_names(&p),
            [
                "000000010000000000000004.00000028.backup",
                "000000010000000000000004.partial"
            ]
        );
        assert_eq!(p.delete.ranges[0].segments, 1);
        assert_eq!(p.delete.ranges[0].objects, 2);
        assert_eq!((p.keep.objects, p.keep.ranges[0].objects), (2, 2));
    }

    #[test]
    fn one_gib_segments_count_four_to_a_log() {
        // 0/0..0/3 then 1/0, 1/1: numbers 0..=5. A name valid only for
        // smaller segments (0/4) does not read, and is left alone.
        let mut listing = segments(1, 0..=5, GIB);
        listing.push(object("000000010000000000000004"));
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000010000000100000001", GIB)],
            None,
        );
        assert_eq!(
            spans(&p.delete.ranges),
            [(
                "000000010000000000000000".into(),
                "000000010000000100000000".into(),
                5
            )]
        );
        assert_eq!(p.left_alone, 1);
        assert_eq!(p.keep.objects, 2);
        assert!(
            !doomed_names(&p).contains(&"000000010000000000000004".to_owned()),
            "{:?}",
            doomed_names(&p)
        );
    }

    #[test]
    fn one_mib_segments_cross_a_log_at_4096() {
        let listing = segments(1, 4090..=4100, MIB);
        assert_eq!(
            listing[6].key.file_name()[..24].to_owned(),
            "000000010000000100000000"
        );
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000010000000100000002", MIB)],
            None,
        );
        assert_eq!(
            spans(&p.delete.ranges),
            [(
                "000000010000000000000FFA".into(),
                "000000010000000100000001".into(),
                8
            )]
        );
        assert_eq!(p.segment_size, Some(MIB));
    }

    #[test]
    fn a_gap_splits_a_range() {
        let mut listing = segments(1, 1..=2, MIB16);
        listing.extend(segments(1, 5..=9, MIB16));
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000010000000000000007", MIB16)],
            None,
        );
        assert_eq!(
            spans(&p.delete.ranges),
            [
                (
                    "000000010000000000000001".into(),
                    "000000010000000000000002".into(),
                    2
                ),
                (
                    "000000010000000000000005".into(),
                    "000000010000000000000006".into(),
                    2
                ),
            ]
        );
    }

    #[test]
    fn nothing_is_deleted_when_what_the_kept_backups_need_is_unknown() {
        let listing = segments(1, 1..=8, MIB16);
        let base = kept("20240103T000000Z", "000000010000000000000005", MIB16);
        let cases: Vec<(&str, Vec<KeptBase>, Option<String>)> = vec![
            ("no complete base backup", vec![], None),
            (
                "did not succeed",
                vec![base.clone()],
                Some("the job's newest run r1 (failed) did not succeed".into()),
            ),
            (
                "records no WAL position",
                vec![KeptBase {
                    id: BackupId::parse("20240101T000000Z").unwrap(),
                    needs: None,
                }],
                None,
            ),
            (
                "different wal_segment_size",
                vec![
                    base.clone(),
                    kept("20240101T000000Z", "000000010000000000000002", MIB),
                ],
                None,
            ),
            (
                "PostgreSQL does not make",
                vec![kept("20240101T000000Z", "000000010000000000000002", 1000)],
                None,
            ),
            (
                "not a segment name",
                vec![kept("20240101T000000Z", "000000010000000000000005x", MIB16)],
                None,
            ),
        ];
        for (why, kept, held) in cases {
            let p = plan("base", &listing, &kept, held);
            assert!(
                p.held.as_deref().unwrap_or("").contains(why),
                "{why}: {p:?}"
            );
            assert!(p.doomed.is_empty(), "{why}");
            assert_eq!(p.keep_from, None, "{why}");
            assert_eq!((p.keep.objects, p.delete.objects), (8, 0), "{why}");
            assert_eq!(p.left_alone, 0, "{why}");
        }
        let p = plan("base", &listing, &[], None);
        assert!(
            describe(&p, true, None)[0]
                .starts_with("wal: keep 8 WAL object(s) (8 object(s), 800 B)"),
            "{:?}",
            describe(&p, true, None)
        );
        // Held with a known size, what is kept still shows as ranges.
        let p = plan("base", &listing, &[base], Some("held".into()));
        assert_eq!(p.keep.ranges.len(), 1);
        let lines = describe(&p, true, Some("held"));
        assert!(lines[0].ends_with("; delete nothing"), "{lines:?}");
        assert_eq!(lines[1], "wal: held, as above: no WAL is deleted");
    }

    #[test]
    fn names_that_do_not_read_are_never_deleted_and_dropped_markers_go_with_their_wal() {
        let mut listing = segments(1, 1..=6, MIB16);
        listing.extend([
            // `wal push` puts a segment under its TLI+LOG directory, nowhere else.
            raw(&format!(
                "base/wal/0000000100000009/000000010000000000000001-{}.zst",
                sha(1)
            )),
            // Not ours: a temporary file, another tool's file, a digest too short.
            raw("base/wal/0000000100000000/000000010000000000000001.tmp-123"),
            raw("base/wal/0000000100000000/000000010000000000000002-abc.zst"),
            raw("base/wal/notes.txt"),
            // Markers of segments dropped by `wal push`.
            raw("base/wal/dropped/000000010000000000000002.json"),
            raw("base/wal/dropped/000000010000000000000006.json"),
            raw("base/wal/dropped/junk.json"),
        ]);
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000010000000000000004", MIB16)],
            None,
        );
        assert_eq!(p.doomed.len(), 4);
        assert_eq!(
            p.doomed[3].as_str(),
            "base/wal/dropped/000000010000000000000002.json"
        );
        assert_eq!(
            doomed_names(&p)[..3],
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000010000000000000003"
            ]
        );
        assert!(
            p.doomed[..3]
                .iter()
                .all(|k| k.as_str().starts_with("base/wal/0000000100000000/"))
        );
        assert_eq!(p.dropped_markers, 1);
        assert_eq!(p.left_alone, 1);
        assert_eq!(p.delete.objects, 3);
        // The misplaced copy is counted as kept, foreign files not at all.
        assert_eq!(p.keep.objects, 4);
        let lines = describe(&p, true, None);
        assert!(
            lines[0].contains("1 object(s) whose names do not read")
                && lines[0].contains("and 1 dropped-segment marker(s)"),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            "wal: kept from 000000010000000000000004 on, where the oldest kept backup \
             20240103T000000Z starts"
        );
    }

    #[test]
    fn a_long_list_of_ranges_is_cut_short_when_printed() {
        let listing: Vec<ObjectInfo> = (0..10)
            .flat_map(|i| segments(1, (i * 3)..=(i * 3), MIB16))
            .collect();
        let p = plan(
            "base",
            &listing,
            &[kept("20240103T000000Z", "000000010000000100000000", MIB16)],
            None,
        );
        assert_eq!(p.delete.ranges.len(), 10);
        let lines = describe(&p, true, None);
        assert!(lines[0].contains("and 6 more ranges"), "{lines:?}");
    }
}
