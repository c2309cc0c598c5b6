//! Decision 3 of the plan: which indexes REINDEX rebuilds, and which copies
//! left by a failed REINDEX CONCURRENTLY it drops.

use std::collections::BTreeMap;

use super::{percent, too_small};
use crate::jobs::maintenance::{Action, Step};
use crate::model::MaintenanceJob;
use crate::pg::stats::{IndexStats, Inventory, TableStats};
use crate::report::bytes_human;

/// Which of a table's `indexes` REINDEX rebuilds, with why, and
/// why it does not rebuild the others. Invalid indexes are not rebuilt:
/// [`leftover_drops`] and the plan's warnings deal with them.
pub(super) fn rebuilds<'a>(
    job: &MaintenanceJob,
    t: &TableStats,
    indexes: &[&'a IndexStats],
) -> (Vec<(&'a IndexStats, String)>, Vec<String>) {
    let targets = &job.targets;
    let (mut chosen, mut why_not) = (Vec::new(), Vec::new());
    if !t.can_reindex {
        why_not.push(format!("reindex: only its owner ({}) may", t.owner));
        return (chosen, why_not);
    }
    let small = too_small(targets, t);
    for &index in indexes {
        if !index.valid {
            continue;
        }
        if index.exclusion && job.reindex_concurrently {
            why_not.push(format!(
                "index {}: an exclusion constraint's, which REINDEX CONCURRENTLY \
                 cannot rebuild",
                index.name
            ));
            continue;
        }
        let reason = if targets.all {
            Some("all = true".to_owned())
        } else if small {
            None
        } else {
            index
                .bloat
                .filter(|b| *b >= targets.min_index_bloat)
                .map(|b| {
                    format!(
                        "{} of its {} is empty ({}; threshold {})",
                        percent(b),
                        bytes_human(index.bytes.max(0) as u64),
                        if index.bloat_exact {
                            "measured with pgstattuple"
                        } else {
                            "estimated from statistics"
                        },
                        percent(targets.min_index_bloat)
                    )
                })
        };
        match reason {
            Some(r) => chosen.push((index, r)),
            None => why_not.push(format!(
                "index {}: {}",
                index.name,
                match index.bloat {
                    Some(b) => format!("{} bloat", percent(b)),
                    None => "bloat unknown".to_owned(),
                }
            )),
        }
    }
    (chosen, why_not)
}

/// The invalid indexes on the `tables` in scope. The
/// copies a failed REINDEX CONCURRENTLY left are dropped when the job
/// reindexes and may; every other invalid index is only warned about.
pub(super) fn leftover_drops(
    inv: &Inventory,
    tables: &[&TableStats],
    reindexing: bool,
) -> (Vec<Step>, Vec<String>) {
    let scoped: BTreeMap<u32, &TableStats> = tables.iter().map(|t| (t.oid, *t)).collect();
    let (mut leftovers, mut warnings) = (Vec::new(), Vec::new());
    for index in inv.indexes.iter().filter(|i| !i.valid) {
        let Some(table) = scoped.get(&index.table_oid) else {
            continue;
        };
        if !index.is_reindex_leftover() {
            warnings.push(format!(
                "index {} is invalid (a failed CREATE INDEX CONCURRENTLY?): it costs every \
                 write and serves no query; drop it or REINDEX it",
                index.qualified()
            ));
        } else if !reindexing {
            warnings.push(format!(
                "index {} is the leftover of a failed REINDEX CONCURRENTLY; a job with the \
                 reindex task drops it",
                index.qualified()
            ));
        } else if index.table_being_indexed {
            warnings.push(format!(
                "index {} looks like a leftover, but an index is being built on its table \
                 right now: left alone",
                index.qualified()
            ));
        } else if !table.owns {
            warnings.push(format!(
                "index {} is the leftover of a failed REINDEX CONCURRENTLY; only the owner \
                 of {} ({}) may drop it",
                index.qualified(),
                table.qualified(),
                table.owner
            ));
        } else {
            leftovers.push(Step {
                action: Action::DropLeftover,
                schema: index.schema.clone(),
                table: index.table.clone(),
                index: Some(index.name.clone()),
                table_oid: index.table_oid,
                reason: "invalid leftover of a failed REINDEX CONCURRENTLY".to_owned(),
                urgent: false,
            });
        }
    }
    (leftovers, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::maintenance::fixtures::{MB, index, inventory, job, table};
    use crate::model::Task;

    #[test]
    fn rebuilds_pass_over_lean_unknown_invalid_and_exclusion_indexes_and_say_why() {
        let t = table("orders", 100_000, 0, 200 * MB);
        let bloated = index("orders_idx", &t, Some(0.6), true);
        let lean = index("orders_pkey", &t, Some(0.05), true);
        let unknown = index("orders_x", &t, None, true);
        let invalid = index("orders_broken", &t, Some(0.9), false);
        let mut excl = index("orders_excl", &t, Some(0.9), true);
        excl.exclusion = true;
        let all = [&bloated, &lean, &unknown, &invalid, &excl];
        let mut spec = job(&[Task::Reindex]);
        let (chosen, why_not) = rebuilds(&spec, &t, &all);
        let chosen: Vec<(&str, &str)> = chosen
            .iter()
            .map(|(i, r)| (i.name.as_str(), r.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [(
                "orders_idx",
                "60% of its 50.0 MiB is empty (estimated from statistics; threshold 30%)"
            )]
        );
        assert_eq!(
            why_not,
            [
                "index orders_pkey: 5% bloat",
                "index orders_x: bloat unknown",
                "index orders_excl: an exclusion constraint's, which REINDEX CONCURRENTLY \
                 cannot rebuild",
            ]
        );
        spec.reindex_concurrently = false;
        let (chosen, _) = rebuilds(&spec, &t, &all);
        let chosen: Vec<&str> = chosen.iter().map(|(i, _)| i.name.as_str()).collect();
        assert_eq!(chosen, ["orders_idx", "orders_excl"]);
        let mut theirs = t.clone();
        theirs.can_reindex = false;
        let (chosen, why_not) = rebuilds(&spec, &theirs, &all);
        assert!(chosen.is_empty());
        assert_eq!(why_not, ["reindex: only its owner (app) may"]);
        let small = table("small", 10, 0, 8192);
        let small_idx = index("small_idx", &small, Some(0.9), true);
        let (chosen, _) = rebuilds(&spec, &small, &[&small_idx]);
        assert!(chosen.is_empty(), "a small table's indexes are left alone");
    }

    #[test]
    fn leftovers_are_dropped_only_by_a_reindexing_job_on_an_owned_table_not_being_indexed() {
        let orders = table("orders", 1, 0, 1);
        let mut theirs = table("theirs", 1, 0, 1);
        theirs.owns = false;
        theirs.owner = "billing".into();
        let out = table("out", 1, 0, 1);
        let mut busy = index("orders_idx2_ccnew", &orders, None, false);
        busy.table_being_indexed = true;
        let inv = inventory(
            vec![orders.clone(), theirs.clone(), out.clone()],
            vec![
                index("orders_idx_ccnew", &orders, None, false),
                index("orders_broken", &orders, None, false),
                index("orders_pkey", &orders, None, true),
                index("theirs_idx_ccold", &theirs, None, false),
                index("out_idx_ccnew", &out, None, false),
                busy,
            ],
        );
        let (drops, warnings) = leftover_drops(&inv, &[&orders, &theirs], true);
        let drops: Vec<(Action, &str, &str, bool)> = drops
            .iter()
            .map(|s| {
                (
                    s.action,
                    s.table.as_str(),
                    s.index.as_deref().unwrap_or_default(),
                    s.urgent,
                )
            })
            .collect();
        assert_eq!(
            drops,
            [(Action::DropLeftover, "orders", "orders_idx_ccnew", false)]
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("index public.orders_broken is invalid"));
        assert!(warnings[1].contains("only the owner of public.theirs (billing)"));
        assert!(warnings[2].contains("an index is being built on its table"));
        let (drops, warnings) = leftover_drops(&inv, &[&orders, &theirs], false);
        assert!(drops.is_empty());
        assert_eq!(
            warnings
                .iter()
                .filter(|w| w.ends_with("a job with the reindex task drops it"))
                .count(),
            3,
            "{warnings:?}"
        );
    }
}
