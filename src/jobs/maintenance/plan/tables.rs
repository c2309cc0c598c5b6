//! Decision 2 of the plan: whether a table needs a VACUUM, ANALYZE, FREEZE or
//! VACUUM FULL, and why, from its statistics and the job's thresholds.

use super::{at_wraparound_risk, percent, too_small};
use crate::model::{Targets, Task};
use crate::pg::stats::{Inventory, TableStats};
use crate::report::bytes_human;

/// Why a table task (all but REINDEX, which its indexes decide: see
/// [`rebuilds`](super::indexes::rebuilds)) is due on a table, or `None` when
/// it is not.
pub(super) fn table_reason(
    inv: &Inventory,
    targets: &Targets,
    task: Task,
    t: &TableStats,
) -> Option<String> {
    if task == Task::Reindex {
        return None;
    }
    let wraparound = at_wraparound_risk(inv, t) && task != Task::Analyze;
    if targets.all {
        Some("all = true".to_owned())
    } else if wraparound {
        Some(format!(
            "transaction-ID age {} (wraparound risk)",
            t.xid_age
        ))
    } else if too_small(targets, t) {
        None
    } else {
        match task {
            Task::Vacuum => dead_reason(targets, t),
            Task::Analyze => analyze_reason(targets, t),
            Task::VacuumAnalyze => dead_reason(targets, t).or_else(|| analyze_reason(targets, t)),
            Task::Freeze => (t.xid_age >= inv.freeze_table_age).then(|| {
                format!(
                    "transaction-ID age {} is past vacuum_freeze_table_age {}",
                    t.xid_age, inv.freeze_table_age
                )
            }),
            Task::VacuumFull => dead_reason(targets, t).or_else(|| {
                t.bloat.filter(|b| *b >= targets.min_table_bloat).map(|b| {
                    format!(
                        "{} of its {} is empty (estimated; threshold {})",
                        percent(b),
                        bytes_human(t.table_bytes.max(0) as u64),
                        percent(targets.min_table_bloat)
                    )
                })
            }),
            Task::Reindex => None,
        }
    }
}

/// Why a table's dead tuples call for a VACUUM, if they do.
fn dead_reason(targets: &Targets, t: &TableStats) -> Option<String> {
    (t.dead_tuples >= targets.min_dead_tuples.max(1) && t.dead_ratio() >= targets.min_dead_ratio)
        .then(|| {
            format!(
                "{} dead tuples, {} of the table (thresholds {} and {})",
                t.dead_tuples,
                percent(t.dead_ratio()),
                targets.min_dead_tuples,
                percent(targets.min_dead_ratio)
            )
        })
}

/// Why a table's statistics are stale, if they are.
fn analyze_reason(targets: &Targets, t: &TableStats) -> Option<String> {
    if t.never_analyzed() {
        return Some("never analyzed".to_owned());
    }
    let changed = t.modified_since_analyze;
    let share = if t.live_tuples > 0 {
        changed as f64 / t.live_tuples as f64
    } else if changed > 0 {
        1.0
    } else {
        0.0
    };
    (changed >= targets.min_dead_tuples.max(1) && share >= targets.min_dead_ratio).then(|| {
        format!(
            "{changed} rows changed since the last analyze, {} of the table",
            percent(share)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::maintenance::fixtures::{MB, inventory, table};

    #[test]
    fn table_reason_follows_each_task_s_threshold() {
        let inv = inventory(vec![], vec![]);
        let targets = Targets::default();
        let quiet = table("quiet", 10_000, 0, 20 * MB);
        for task in [
            Task::Vacuum,
            Task::Analyze,
            Task::VacuumAnalyze,
            Task::Freeze,
            Task::VacuumFull,
            Task::Reindex,
        ] {
            assert_eq!(table_reason(&inv, &targets, task, &quiet), None, "{task:?}");
        }
        let mut old = quiet.clone();
        old.xid_age = 160_000_000;
        assert_eq!(
            table_reason(&inv, &targets, Task::Freeze, &old).as_deref(),
            Some("transaction-ID age 160000000 is past vacuum_freeze_table_age 150000000")
        );
        assert_eq!(table_reason(&inv, &targets, Task::Vacuum, &old), None);
        let dead = table("dead", 1_000, 9_000, 20 * MB);
        for task in [Task::Vacuum, Task::VacuumAnalyze, Task::VacuumFull] {
            let why = table_reason(&inv, &targets, task, &dead);
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.starts_with("9000 dead tuples, 90% of the table")),
                "{task:?}: {why:?}"
            );
        }
        assert_eq!(table_reason(&inv, &targets, Task::Analyze, &dead), None);
        let mut emptied = quiet.clone();
        emptied.bloat = Some(0.5);
        assert_eq!(
            table_reason(&inv, &targets, Task::VacuumFull, &emptied).as_deref(),
            Some("50% of its 20.0 MiB is empty (estimated; threshold 30%)")
        );
    }

    #[test]
    fn wraparound_risk_calls_for_every_vacuum_task_whatever_the_size_but_not_for_analyze() {
        let inv = inventory(vec![], vec![]);
        let targets = Targets::default();
        let mut old = table("old", 10, 0, 8192);
        old.xid_age = 250_000_000;
        for task in [
            Task::Vacuum,
            Task::VacuumAnalyze,
            Task::Freeze,
            Task::VacuumFull,
        ] {
            assert_eq!(
                table_reason(&inv, &targets, task, &old).as_deref(),
                Some("transaction-ID age 250000000 (wraparound risk)"),
                "{task:?}"
            );
        }
        assert_eq!(table_reason(&inv, &targets, Task::Analyze, &old), None);
        let all = Targets {
            all: true,
            ..Targets::default()
        };
        assert_eq!(
            table_reason(&inv, &all, Task::Analyze, &old).as_deref(),
            Some("all = true")
        );
        assert_eq!(
            table_reason(&inv, &all, Task::Reindex, &old),
            None,
            "its indexes decide"
        );
    }
}
