//! The chain of WAL a base backup replays: from the segment it starts in,
//! along the newest timeline that descends from it (the timeline history
//! files say where each branched off), to the newest archived segment.
//! Every segment of that path must be in the archive; what is not is a gap,
//! and recovery cannot get past it. A pure function of what the archive
//! holds, so `verify --wal`, `check`, retention and the recovery window all
//! read the archive the same way.

use std::collections::{BTreeMap, BTreeSet};

use super::names::{Archived, Lsn, Segment, WalFile};
use crate::error::{Error, Result};

/// A timeline's history file: the timelines it descends from, each with the
/// location where that one ended and the next began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub timeline: u32,
    /// Oldest first: `(ancestor, where it ended)`.
    pub ancestors: Vec<(u32, Lsn)>,
}

impl History {
    /// Parses `<TLI>.history`: lines of `parentTLI<TAB>switchpoint<TAB>reason`,
    /// `#` comments and blank lines skipped.
    pub fn parse(timeline: u32, text: &str) -> Result<History> {
        let mut ancestors = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
                return Err(bad_history(timeline, line));
            };
            let tli: u32 = tli.parse().map_err(|_| bad_history(timeline, line))?;
            let lsn: Lsn = lsn.parse().map_err(|_| bad_history(timeline, line))?;
            if tli >= timeline || ancestors.last().is_some_and(|(t, l)| *t >= tli || *l > lsn) {
                return Err(bad_history(timeline, line));
            }
            ancestors.push((tli, lsn));
        }
        Ok(History {
            timeline,
            ancestors,
        })
    }

    /// Where `ancestor` ended on the way to this timeline; `None` when this
    /// timeline does not descend from it.
    pub fn switch_point(&self, ancestor: u32) -> Option<Lsn> {
        self.ancestors
            .iter()
            .find(|(t, _)| *t == ancestor)
            .map(|(_, lsn)| *lsn)
    }
}

fn bad_history(timeline: u32, line: &str) -> Error {
    Error::integrity(format!(
        "the history file of timeline {timeline} has a line that does not read: '{}'",
        line.chars().take(100).collect::<String>()
    ))
    .with_hint("the archive's history files come from PostgreSQL; restore it from another storage")
}

/// Segments of the path the archive does not hold, one run of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The first and last missing segment.
    pub first: Segment,
    pub last: Segment,
    /// The archived segments either side: the gap breaks recovery between them.
    pub before: Option<Segment>,
    pub after: Option<Segment>,
}

impl Gap {
    /// How many segments are missing.
    pub fn segments(&self) -> u64 {
        self.last.number - self.first.number + 1
    }
}

/// The path from a starting segment to the newest archived one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub from: Segment,
    /// The timelines the path follows, oldest first.
    pub timelines: Vec<u32>,
    /// The segments of each timeline on the path: `(timeline, first, last)`
    /// segment numbers, up to the newest archived one.
    pub legs: Vec<(u32, u64, u64)>,
    /// The last segment of the path in the archive; `None` when none is.
    pub newest: Option<Segment>,
    /// How many segments of the path the archive holds.
    pub present: u64,
    pub gaps: Vec<Gap>,
    /// Timelines after the first with segments in the archive and no
    /// history file: recovery cannot follow them, and the path cannot say
    /// whether it should.
    pub missing_history: Vec<u32>,
}

impl Chain {
    /// The newest segment recovery can reach from `from` without crossing
    /// a gap; `None` when `from` itself is missing.
    pub fn reachable(&self) -> Option<Segment> {
        match self.gaps.first() {
            Some(gap) => gap.before,
            None => self.newest,
        }
    }

    /// Whether recovery along the path reads `segment`.
    pub fn contains(&self, segment: Segment) -> bool {
        self.legs.iter().any(|(tli, first, last)| {
            *tli == segment.timeline && (*first..=*last).contains(&segment.number)
        })
    }
}

/// Follows the archive from `from`, the first segment of a base backup that
/// began at `start` (a location in `from`).
///
/// The path takes the newest timeline that descends from `from`'s after the
/// backup began: recovery to the latest point follows it. `histories` are
/// the parsed history files of the archive, `archived` its objects. The
/// work grows with the number of archived objects, not with the distance
/// between segment numbers (one stray segment far ahead costs nothing).
pub fn chain(
    archived: &[Archived],
    histories: &[History],
    from: Segment,
    start: Lsn,
    segment_size: u64,
) -> Chain {
    chain_to(archived, histories, from, start, segment_size, None)
}

/// [`chain`] to the given timeline instead of the newest: `timeline` must
/// be `from`'s or one whose history descends from it after `start` (else
/// the path is `from`'s timeline alone, as recovery would refuse it).
pub fn chain_to(
    archived: &[Archived],
    histories: &[History],
    from: Segment,
    start: Lsn,
    segment_size: u64,
    timeline: Option<u32>,
) -> Chain {
    let mut held: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for a in archived {
        if let WalFile::Segment(name) = &a.file
            && let Some(s) = Segment::parse(name, segment_size)
        {
            held.entry(s.timeline).or_default().insert(s.number);
        }
    }
    let missing_history = held
        .keys()
        .copied()
        .filter(|t| *t > 1 && !histories.iter().any(|h| h.timeline == *t))
        .collect();
    // The newest timeline that branched off `from`'s after the backup began.
    let target = histories
        .iter()
        .filter(|h| {
            h.timeline > from.timeline
                && h.switch_point(from.timeline).is_some_and(|end| end > start)
                && timeline.is_none_or(|t| h.timeline == t)
        })
        .max_by_key(|h| h.timeline);
    // (timeline, first segment number, last segment number or open)
    let mut open_legs: Vec<(u32, u64, Option<u64>)> = Vec::new();
    match target {
        None => open_legs.push((from.timeline, from.number, None)),
        Some(h) => {
            let mut first = from.number;
            let mut on_path = false;
            for (tli, end) in &h.ancestors {
                on_path |= *tli == from.timeline;
                if !on_path {
                    continue;
                }
                // The segment holding the switch point is read from the new
                // timeline: the old one's copy ends mid-way.
                let switch = end.segment(*tli, segment_size).number;
                if switch > first {
                    open_legs.push((*tli, first, Some(switch - 1)));
                }
                first = first.max(switch);
            }
            open_legs.push((h.timeline, first, None));
        }
    }
    let timelines = open_legs.iter().map(|(t, _, _)| *t).collect();
    let in_leg = |tli: u32, first: u64, last: Option<u64>| {
        held.get(&tli)
            .into_iter()
            .flat_map(move |set| set.range(first..=last.unwrap_or(u64::MAX)).copied())
    };
    // The path ends at the newest segment archived on its last leg, or on an
    // earlier one when the last has nothing yet.
    let end = open_legs
        .iter()
        .enumerate()
        .filter_map(|(i, (tli, first, last))| {
            in_leg(*tli, *first, *last).next_back().map(|n| (i, n))
        })
        .next_back();
    let Some((end_leg, end_number)) = end else {
        return Chain {
            from,
            timelines,
            legs: Vec::new(),
            newest: None,
            present: 0,
            gaps: Vec::new(),
            missing_history,
        };
    };
    let legs: Vec<(u32, u64, u64)> = open_legs
        .iter()
        .take(end_leg + 1)
        .enumerate()
        .map(|(i, (tli, first, last))| {
            let last = if i == end_leg {
                end_number
            } else {
                last.unwrap_or(end_number)
            };
            (*tli, *first, last)
        })
        .collect();
    // Walk the held segments of each leg; what lies between two is missing.
    let mut gaps: Vec<Gap> = Vec::new();
    let mut present = 0;
    let mut previous: Option<Segment> = None;
    // The run of missing segments not yet closed: its first and last.
    let mut missing: Option<(Segment, Segment)> = None;
    for (tli, first, last) in &legs {
        let mut expected = *first;
        for n in in_leg(*tli, *first, Some(*last)) {
            let s = Segment {
                timeline: *tli,
                number: n,
            };
            if n > expected {
                let (from, to) = (
                    Segment {
                        timeline: *tli,
                        number: expected,
                    },
                    Segment {
                        timeline: *tli,
                        number: n - 1,
                    },
                );
                missing = Some(match missing {
                    Some((first, _)) => (first, to),
                    None => (from, to),
                });
            }
            if let Some((first, last)) = missing.take() {
                gaps.push(Gap {
                    first,
                    last,
                    before: previous,
                    after: Some(s),
                });
            }
            present += 1;
            previous = Some(s);
            expected = n + 1;
        }
        if expected <= *last {
            let (from, to) = (
                Segment {
                    timeline: *tli,
                    number: expected,
                },
                Segment {
                    timeline: *tli,
                    number: *last,
                },
            );
            missing = Some(match missing {
                Some((first, _)) => (first, to),
                None => (from, to),
            });
        }
    }
    Chain {
        from,
        timelines,
        legs,
        newest: previous,
        present,
        gaps,
        missing_history,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Compression;

    const SIZE: u64 = super::super::names::DEFAULT_SEGMENT_SIZE;

    fn seg(tli: u32, n: u64) -> Segment {
        Segment {
            timeline: tli,
            number: n,
        }
    }

    fn archive(segments: &[(u32, u64)]) -> Vec<Archived> {
        segments
            .iter()
            .map(|(t, n)| {
                let file = WalFile::Segment(seg(*t, *n).name(SIZE));
                let key = file
                    .key("j", &"0".repeat(64), Compression::None, false)
                    .unwrap();
                Archived::parse(&key, 1).unwrap()
            })
            .collect()
    }

    #[test]
    fn an_unbroken_archive_has_no_gap() {
        let a = archive(&[(1, 1), (1, 2), (1, 3), (1, 4)]);
        let c = chain(&a, &[], seg(1, 2), seg(1, 2).start(SIZE), SIZE);
        assert_eq!(c.newest, Some(seg(1, 4)));
        assert_eq!(c.present, 3);
        assert!(c.gaps.is_empty());
        assert_eq!(c.reachable(), Some(seg(1, 4)));
    }

    #[test]
    fn missing_segments_are_one_gap_between_their_neighbours() {
        let a = archive(&[(1, 2), (1, 3), (1, 6), (1, 7)]);
        let c = chain(&a, &[], seg(1, 2), seg(1, 2).start(SIZE), SIZE);
        assert_eq!(
            c.gaps,
            vec![Gap {
                first: seg(1, 4),
                last: seg(1, 5),
                before: Some(seg(1, 3)),
                after: Some(seg(1, 6)),
            }]
        );
        assert_eq!(c.gaps[0].segments(), 2);
        assert_eq!(c.reachable(), Some(seg(1, 3)));
        // The backup's own first segment missing: nothing is reachable.
        let c = chain(&a, &[], seg(1, 1), seg(1, 1).start(SIZE), SIZE);
        assert_eq!(c.gaps[0].before, None);
        assert_eq!(c.reachable(), None);
    }

    #[test]
    fn the_path_follows_the_newest_timeline_from_its_switch_segment() {
        // Timeline 2 began at 0/5000100, in segment 5: segments 1-4 from
        // timeline 1, 5 on from timeline 2. Timeline 1's 5 and 6 (written
        // before the promotion showed) are not on the path.
        let h2 = History::parse(2, "1\t0/5000100\tno recovery target specified\n").unwrap();
        let a = archive(&[
            (1, 2),
            (1, 3),
            (1, 4),
            (1, 5),
            (1, 6),
            (2, 5),
            (2, 6),
            (2, 7),
        ]);
        let c = chain(
            &a,
            std::slice::from_ref(&h2),
            seg(1, 2),
            seg(1, 2).start(SIZE),
            SIZE,
        );
        assert_eq!(c.timelines, vec![1, 2]);
        assert_eq!(c.newest, Some(seg(2, 7)));
        assert!(c.gaps.is_empty(), "{:?}", c.gaps);
        assert_eq!(c.present, 6);
        // Timeline 2's first segment missing is a gap on the path.
        let a = archive(&[(1, 2), (1, 3), (1, 4), (1, 5), (2, 6)]);
        let c = chain(
            &a,
            std::slice::from_ref(&h2),
            seg(1, 2),
            seg(1, 2).start(SIZE),
            SIZE,
        );
        assert_eq!(c.gaps.len(), 1);
        assert_eq!(c.gaps[0].first, seg(2, 5));
        assert_eq!(c.gaps[0].before, Some(seg(1, 4)));
        // A backup taken after the branch point on timeline 1 is not on
        // timeline 2's path: it follows timeline 1.
        let a = archive(&[(1, 6), (1, 7)]);
        let c = chain(&a, &[h2], seg(1, 6), seg(1, 6).start(SIZE), SIZE);
        assert_eq!(c.timelines, vec![1]);
        assert_eq!(c.newest, Some(seg(1, 7)));
    }

    #[test]
    fn a_switch_on_a_segment_boundary_takes_the_whole_segment_from_the_new_timeline() {
        let h2 = History::parse(2, "1\t0/5000000\tbefore 2026-01-01\n").unwrap();
        let a = archive(&[(1, 3), (1, 4), (2, 5)]);
        let c = chain(&a, &[h2], seg(1, 3), seg(1, 3).start(SIZE), SIZE);
        assert!(c.gaps.is_empty());
        assert_eq!(c.newest, Some(seg(2, 5)));
    }

    #[test]
    fn grandchildren_are_followed_through_their_full_history() {
        let h2 = History::parse(2, "1\t0/3000000\tx\n").unwrap();
        let h3 = History::parse(3, "1\t0/3000000\tx\n2\t0/5000000\ty\n").unwrap();
        let a = archive(&[(1, 1), (1, 2), (2, 3), (2, 4), (3, 5), (3, 6)]);
        let c = chain(&a, &[h2, h3], seg(1, 1), seg(1, 1).start(SIZE), SIZE);
        assert_eq!(c.timelines, vec![1, 2, 3]);
        assert_eq!(c.newest, Some(seg(3, 6)));
        assert!(c.gaps.is_empty());
    }

    #[test]
    fn a_gap_across_a_timeline_switch_is_one_gap_and_far_strays_cost_nothing() {
        let h2 = History::parse(2, "1\t0/5000100\tx\n").unwrap();
        // Timeline 1's 4 and timeline 2's 5 are missing: one gap, 3 to 6.
        let a = archive(&[(1, 2), (1, 3), (2, 6), (2, 7)]);
        let c = chain(
            &a,
            std::slice::from_ref(&h2),
            seg(1, 2),
            seg(1, 2).start(SIZE),
            SIZE,
        );
        assert_eq!(
            c.gaps,
            vec![Gap {
                first: seg(1, 4),
                last: seg(2, 5),
                before: Some(seg(1, 3)),
                after: Some(seg(2, 6)),
            }]
        );
        assert!(c.contains(seg(2, 7)) && c.contains(seg(1, 4)) && !c.contains(seg(1, 5)));
        // A segment numbered far ahead is one gap, found at once.
        let far = 1 << 39;
        let a = archive(&[(1, 2), (1, far)]);
        let c = chain(&a, &[], seg(1, 2), seg(1, 2).start(SIZE), SIZE);
        assert_eq!(c.gaps.len(), 1);
        assert_eq!(c.gaps[0].segments(), far - 3);
    }

    #[test]
    fn a_timeline_without_its_history_file_is_named() {
        let a = archive(&[(1, 2), (1, 3), (2, 4)]);
        let c = chain(&a, &[], seg(1, 2), seg(1, 2).start(SIZE), SIZE);
        assert_eq!(c.missing_history, vec![2]);
        assert_eq!(c.timelines, vec![1]);
    }

    #[test]
    fn a_backup_begun_after_a_fork_in_the_forks_segment_stays_on_its_timeline() {
        // Timeline 2 forked at 0/5000100; the backup began at 0/5000200 on
        // timeline 1, in the same segment: timeline 2 is not its future.
        let h2 = History::parse(2, "1\t0/5000100\tx\n").unwrap();
        let a = archive(&[(1, 5), (1, 6), (2, 5), (2, 6), (2, 7)]);
        let start: Lsn = "0/5000200".parse().unwrap();
        let c = chain(&a, std::slice::from_ref(&h2), seg(1, 5), start, SIZE);
        assert_eq!(c.timelines, vec![1]);
        assert_eq!(c.newest, Some(seg(1, 6)));
    }

    #[test]
    fn an_empty_archive_has_nothing_reachable() {
        let c = chain(&[], &[], seg(1, 2), seg(1, 2).start(SIZE), SIZE);
        assert_eq!(c.newest, None);
        assert_eq!(c.reachable(), None);
    }

    #[test]
    fn history_files_that_do_not_read_are_refused() {
        assert!(History::parse(2, "x 0/1 y").is_err());
        assert!(History::parse(2, "2\t0/1\tself").is_err());
        assert!(History::parse(3, "2\t0/5\ta\n1\t0/6\tb").is_err());
        let h = History::parse(3, "# comment\n\n1\t0/5\ta\n2\t0/6\tb\n").unwrap();
        assert_eq!(h.switch_point(2), Some(Lsn(6)));
        assert_eq!(h.switch_point(4), None);
    }
}
