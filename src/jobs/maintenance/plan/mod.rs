//! Planning: which step each task takes on which table or index, and why,
//! as pure functions of the database's inventory and the job. [`plan`]
//! composes four decisions, each tested on its own beside it:
//!
//! 1. [`scope`]: the tables the job may touch, and why it leaves the others
//!    alone (its patterns, the role's rights);
//! 2. [`table_reason`] (in `tables.rs`): whether a table needs a VACUUM,
//!    ANALYZE, FREEZE or VACUUM FULL, and why;
//! 3. [`rebuilds`] and [`leftover_drops`] (in `indexes.rs`): which indexes
//!    REINDEX rebuilds, and which copies left by a failed REINDEX
//!    CONCURRENTLY it drops;
//! 4. [`order`]: wraparound work first, then the most dead tuples, with the
//!    leftovers dropped right after the wraparound work.

mod indexes;
mod tables;

use std::collections::BTreeMap;

use super::targets::in_scope;
use super::{Action, LeftAlone, Plan, Step};
use crate::model::{MaintenanceJob, Targets, Task};
use crate::pg::stats::{IndexStats, Inventory, TableStats};
use crate::report::bytes_human;
use indexes::{leftover_drops, rebuilds};
use tables::table_reason;

/// Chooses the work: what each task does to which table or index, and why.
/// Tables at risk of transaction-ID wraparound go first, then the others by
/// dead tuples, most first.
pub fn plan(inv: &Inventory, job: &MaintenanceJob) -> Plan {
    let mut warnings = Vec::new();
    if inv.sizes_estimated {
        warnings.push(
            "a table was locked while sizes were read: sizes are from the statistics, as of \
             each table's last VACUUM or ANALYZE"
                .to_owned(),
        );
    }
    if inv.database_xid_age >= inv.freeze_max_age {
        warnings.push(format!(
            "database {}: transaction-ID age {} is past autovacuum_freeze_max_age {}: \
             wraparound risk, VACUUM the oldest tables",
            inv.database, inv.database_xid_age, inv.freeze_max_age
        ));
    }
    let scope = scope(inv, &job.targets);
    warnings.extend(scope.warnings);
    let mut left_alone = scope.left_alone;
    let (leftovers, leftover_warnings) =
        leftover_drops(inv, &scope.tables, job.tasks.contains(&Task::Reindex));
    warnings.extend(leftover_warnings);
    let indexes_of: BTreeMap<u32, Vec<&IndexStats>> =
        inv.indexes.iter().fold(BTreeMap::new(), |mut m, i| {
            m.entry(i.table_oid).or_default().push(i);
            m
        });
    let work = scope
        .tables
        .iter()
        .map(|t| {
            table_work(
                inv,
                job,
                t,
                indexes_of.get(&t.oid).map_or(&[], Vec::as_slice),
            )
        })
        .collect();
    let ordered = order(work, leftovers);
    warnings.extend(ordered.warnings);
    left_alone.extend(ordered.left_alone);
    Plan {
        database: inv.database.clone(),
        steps: ordered.steps,
        left_alone,
        warnings,
        database_xid_age: inv.database_xid_age,
        freeze_max_age: inv.freeze_max_age,
        exact_index_bloat: inv.exact_index_bloat,
    }
}

/// The tables a job may touch, in the inventory's order, and the others.
#[derive(Debug)]
struct Scope<'a> {
    tables: Vec<&'a TableStats>,
    /// Out of the patterns' scope, or out of the role's rights.
    left_alone: Vec<LeftAlone>,
    /// A table at risk of wraparound that the role may not vacuum.
    warnings: Vec<String>,
}

/// Which tables the job may touch. The others are left alone
/// with the reason: the `tables` and `exclude` patterns, or a role that may
/// not maintain them.
fn scope<'a>(inv: &'a Inventory, targets: &Targets) -> Scope<'a> {
    let mut scope = Scope {
        tables: Vec::new(),
        left_alone: Vec::new(),
        warnings: Vec::new(),
    };
    for t in &inv.tables {
        match in_scope(targets, t) {
            // The server would skip it with a mere warning: say why here.
            Ok(()) if !t.can_vacuum => {
                if at_wraparound_risk(inv, t) {
                    scope.warnings.push(format!(
                        "table {}: transaction-ID age {} is past autovacuum_freeze_max_age {}: \
                         wraparound risk, and the job's role may not vacuum it (owner: {})",
                        t.qualified(),
                        t.xid_age,
                        inv.freeze_max_age,
                        t.owner
                    ));
                }
                scope.left_alone.push(LeftAlone {
                    table: t.qualified(),
                    reason: format!(
                        "the job's role may not maintain it: run the job as its owner ({}), \
                         the database's owner, or a role with MAINTAIN (PostgreSQL 17)",
                        t.owner
                    ),
                });
            }
            Ok(()) => scope.tables.push(t),
            Err(reason) => scope.left_alone.push(LeftAlone {
                table: t.qualified(),
                reason,
            }),
        }
    }
    scope
}

/// Whether a table's transaction-ID age is past autovacuum_freeze_max_age:
/// its work goes first.
fn at_wraparound_risk(inv: &Inventory, t: &TableStats) -> bool {
    t.xid_age >= inv.freeze_max_age
}

/// Whether a table is below `min_table_size`, where only `all` and the
/// wraparound risk call for work. A size estimated as 0 (never vacuumed nor
/// analyzed) is unknown, not small.
fn too_small(targets: &Targets, t: &TableStats) -> bool {
    !(t.size_estimated && t.total_bytes == 0)
        && t.total_bytes < i64::try_from(targets.min_table_size).unwrap_or(i64::MAX)
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// What one table in scope needs, before the tables are put in order.
#[derive(Debug)]
struct TableWork<'a> {
    table: &'a TableStats,
    /// At risk of transaction-ID wraparound.
    urgent: bool,
    /// The job's tasks in its order, each with the table's or its indexes' steps.
    steps: Vec<Step>,
    /// Why nothing is done to it, when `steps` is empty.
    left_alone: Option<LeftAlone>,
    /// The wraparound risk, said before the steps.
    warning: Option<String>,
}

/// The steps every task of the job takes on one table in scope, or why it
/// takes none.
fn table_work<'a>(
    inv: &Inventory,
    job: &MaintenanceJob,
    t: &'a TableStats,
    indexes: &[&IndexStats],
) -> TableWork<'a> {
    let targets = &job.targets;
    let urgent = at_wraparound_risk(inv, t);
    let warning = urgent.then(|| {
        format!(
            "table {}: transaction-ID age {} is past autovacuum_freeze_max_age {}: \
             wraparound risk{}",
            t.qualified(),
            t.xid_age,
            inv.freeze_max_age,
            if job
                .tasks
                .iter()
                .any(|t| *t != Task::Analyze && *t != Task::Reindex)
            {
                ", so it goes first"
            } else {
                "; this job has no vacuum task to help it"
            }
        )
    });
    let mut steps = Vec::new();
    let mut why_not = Vec::new();
    for &task in &job.tasks {
        let step = |reason: String, index: Option<&IndexStats>| Step {
            action: Action::of(task),
            schema: t.schema.clone(),
            table: t.name.clone(),
            index: index.map(|i| i.name.clone()),
            table_oid: t.oid,
            reason,
            urgent,
        };
        if task == Task::Reindex {
            let (chosen, not) = rebuilds(job, t, indexes);
            steps.extend(chosen.into_iter().map(|(index, r)| step(r, Some(index))));
            why_not.extend(not);
            continue;
        }
        match table_reason(inv, targets, task, t) {
            Some(r) => steps.push(step(r, None)),
            None => why_not.push(task.name().to_owned()),
        }
    }
    let left_alone = steps.is_empty().then(|| LeftAlone {
        table: t.qualified(),
        reason: if too_small(targets, t) {
            format!(
                "smaller than min_table_size ({} < {})",
                bytes_human(t.total_bytes.max(0) as u64),
                bytes_human(targets.min_table_size)
            )
        } else {
            format!(
                "below the thresholds: {} dead tuples ({}), {} changed since analyze; {}",
                t.dead_tuples,
                percent(t.dead_ratio()),
                t.modified_since_analyze,
                why_not.join(", ")
            )
        },
    });
    TableWork {
        table: t,
        urgent,
        steps,
        left_alone,
        warning,
    }
}

/// The work of every table in scope, in the order it is done.
#[derive(Debug)]
struct Ordered {
    steps: Vec<Step>,
    /// Tables in scope that need nothing.
    left_alone: Vec<LeftAlone>,
    /// The tables' wraparound risks.
    warnings: Vec<String>,
}

/// The order of the work: tables at risk of wraparound first, oldest first;
/// then the others by dead tuples, most first, then by size; tables that tie
/// keep the inventory's order. The `leftovers` are dropped right after the
/// wraparound work: they slow every write and get in the way of the rebuild.
fn order(mut work: Vec<TableWork>, leftovers: Vec<Step>) -> Ordered {
    // Only the wraparound order matters among urgent tables; dead tuples
    // order the rest.
    work.sort_by(|a, b| match (a.urgent, b.urgent) {
        (true, true) => b.table.xid_age.cmp(&a.table.xid_age),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => b
            .table
            .dead_tuples
            .cmp(&a.table.dead_tuples)
            .then(b.table.total_bytes.cmp(&a.table.total_bytes)),
    });
    let mut ordered = Ordered {
        steps: Vec::new(),
        left_alone: Vec::new(),
        warnings: Vec::new(),
    };
    for w in work {
        ordered.warnings.extend(w.warning);
        ordered.steps.extend(w.steps);
        ordered.left_alone.extend(w.left_alone);
    }
    let steps = &mut ordered.steps;
    let after_urgent = steps.iter().position(|s| !s.urgent).unwrap_or(steps.len());
    steps.splice(after_urgent..after_urgent, leftovers);
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::maintenance::fixtures::{MB, index, inventory, job, table};

    #[test]
    fn dead_tuples_past_both_thresholds_are_vacuumed_and_clean_tables_left_alone() {
        let inv = inventory(
            vec![
                table("bloated", 10_000, 90_000, 20 * MB),
                table("clean", 100_000, 10, 20 * MB),
                table("few", 100, 900, 20 * MB),
                table("tiny", 10, 5_000, 8192),
            ],
            vec![],
        );
        let p = plan(&inv, &job(&[Task::Vacuum]));
        let chosen: Vec<&str> = p.steps.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(chosen, ["bloated"]);
        assert!(
            p.steps[0].reason.contains("90000 dead tuples, 90%"),
            "{}",
            p.steps[0].reason
        );
        let why = |name: &str| {
            p.left_alone
                .iter()
                .find(|l| l.table == format!("public.{name}"))
                .map(|l| l.reason.clone())
                .unwrap()
        };
        assert!(
            why("clean").starts_with("below the thresholds"),
            "{}",
            why("clean")
        );
        assert!(
            why("few").starts_with("below the thresholds"),
            "{}",
            why("few")
        );
        assert!(
            why("tiny").starts_with("smaller than min_table_size"),
            "{}",
            why("tiny")
        );
    }

    #[test]
    fn wraparound_risk_goes_first_and_is_urgent_whatever_the_size() {
        let mut old = table("old", 1000, 0, 8192);
        old.xid_age = 250_000_000;
        let mut older = table("older", 1000, 0, 8192);
        older.xid_age = 300_000_000;
        let inv = inventory(
            vec![table("bloated", 100, 900_000, 20 * MB), old, older],
            vec![],
        );
        let p = plan(&inv, &job(&[Task::Vacuum, Task::Analyze]));
        let order: Vec<(&str, Action, bool)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.action, s.urgent))
            .collect();
        assert_eq!(
            order,
            [
                ("older", Action::Vacuum, true),
                ("old", Action::Vacuum, true),
                ("bloated", Action::Vacuum, false),
            ]
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("public.older") && w.contains("wraparound"))
        );
    }

    #[test]
    fn patterns_scope_the_tables_and_all_skips_the_thresholds() {
        let mut spec = job(&[Task::VacuumAnalyze]);
        spec.targets.tables = vec!["public.a*".into(), "logs".into()];
        spec.targets.exclude = vec!["*_archive".into()];
        spec.targets.all = true;
        let inv = inventory(
            vec![
                table("accounts", 1, 0, 1),
                table("accounts_archive", 1, 0, 1),
                table("logs", 1, 0, 1),
                table("users", 1, 0, 1),
            ],
            vec![],
        );
        let p = plan(&inv, &spec);
        let chosen: Vec<&str> = p.steps.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(chosen, ["accounts", "logs"]);
        assert!(p.steps.iter().all(|s| s.reason == "all = true"));
        let reasons: Vec<(&str, &str)> = p
            .left_alone
            .iter()
            .map(|l| (l.table.as_str(), l.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("public.accounts_archive", "excluded by '*_archive'")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("public.users", "not named by `tables`")),
            "{reasons:?}"
        );
    }

    #[test]
    fn analyze_follows_changed_rows_and_never_analyzed_tables() {
        let mut changed = table("changed", 10_000, 0, 20 * MB);
        changed.modified_since_analyze = 5_000;
        let mut never = table("never", 10, 0, 20 * MB);
        never.last_analyze = None;
        let inv = inventory(
            vec![changed, never, table("quiet", 10_000, 0, 20 * MB)],
            vec![],
        );
        let p = plan(&inv, &job(&[Task::Analyze]));
        let chosen: Vec<(&str, &str)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [
                (
                    "changed",
                    "5000 rows changed since the last analyze, 50% of the table"
                ),
                ("never", "never analyzed")
            ]
        );
    }

    #[test]
    fn bloated_indexes_are_rebuilt_and_leftovers_dropped_first() {
        let t = table("orders", 100_000, 0, 200 * MB);
        let inv = inventory(
            vec![t.clone()],
            vec![
                index("orders_pkey", &t, Some(0.05), true),
                index("orders_customer_idx", &t, Some(0.6), true),
                index("orders_customer_idx_ccnew", &t, None, false),
                index("orders_broken_idx", &t, None, false),
            ],
        );
        let p = plan(&inv, &job(&[Task::Reindex]));
        let order: Vec<(Action, &str)> = p
            .steps
            .iter()
            .map(|s| (s.action, s.index.as_deref().unwrap()))
            .collect();
        assert_eq!(
            order,
            [
                (Action::DropLeftover, "orders_customer_idx_ccnew"),
                (Action::Reindex, "orders_customer_idx"),
            ]
        );
        assert!(
            p.steps[1]
                .reason
                .starts_with("60% of its 50.0 MiB is empty"),
            "{}",
            p.steps[1].reason
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("orders_broken_idx") && w.contains("invalid"))
        );
        assert_eq!(
            p.steps[1].sql(true),
            "REINDEX INDEX CONCURRENTLY \"public\".\"orders_customer_idx\""
        );
    }

    #[test]
    fn vacuum_full_follows_dead_tuples_or_estimated_empty_space() {
        let mut empty = table("emptied", 1000, 0, 100 * MB);
        empty.bloat = Some(0.8);
        let inv = inventory(vec![empty, table("packed", 1000, 0, 100 * MB)], vec![]);
        let p = plan(&inv, &job(&[Task::VacuumFull]));
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].table, "emptied");
        assert_eq!(
            p.steps[0].sql(true),
            "VACUUM (FULL, SKIP_LOCKED) \"public\".\"emptied\""
        );
    }

    #[test]
    fn tables_the_role_may_not_maintain_are_left_alone_with_their_owner() {
        let mut theirs = table("theirs", 100, 900_000, 20 * MB);
        theirs.can_vacuum = false;
        theirs.can_reindex = false;
        theirs.owner = "billing".into();
        let mut db_owned = table("db_owned", 100, 900_000, 20 * MB);
        db_owned.can_reindex = false;
        let inv = inventory(
            vec![theirs.clone(), db_owned.clone()],
            vec![index("db_owned_idx", &db_owned, Some(0.9), true)],
        );
        let p = plan(&inv, &job(&[Task::Vacuum, Task::Reindex]));
        let order: Vec<(&str, Action)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.action))
            .collect();
        assert_eq!(order, [("db_owned", Action::Vacuum)]);
        let reason = &p
            .left_alone
            .iter()
            .find(|l| l.table == "public.theirs")
            .unwrap()
            .reason;
        assert!(
            reason.contains("may not maintain it") && reason.contains("(billing)"),
            "{reason}"
        );
    }

    #[test]
    fn leftovers_come_after_wraparound_work_and_exclusion_indexes_are_not_rebuilt_concurrently() {
        let mut old = table("old", 1000, 0, 20 * MB);
        old.xid_age = 300_000_000;
        let t = table("bookings", 1000, 0, 20 * MB);
        let mut excl = index("bookings_during_excl", &t, Some(0.9), true);
        excl.exclusion = true;
        let inv = inventory(
            vec![old, t.clone()],
            vec![excl, index("bookings_idx_ccnew", &t, None, false)],
        );
        let p = plan(&inv, &job(&[Task::Vacuum, Task::Reindex]));
        let order: Vec<(&str, Action)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.action))
            .collect();
        assert_eq!(
            order,
            [("old", Action::Vacuum), ("bookings", Action::DropLeftover)]
        );
        let mut plain = job(&[Task::Reindex]);
        plain.reindex_concurrently = false;
        assert!(
            plan(&inv, &plain)
                .steps
                .iter()
                .any(|s| s.index.as_deref() == Some("bookings_during_excl"))
        );
    }

    #[test]
    fn a_size_estimated_as_zero_is_unknown_not_small() {
        let mut fresh = table("fresh", 0, 50_000, 0);
        fresh.size_estimated = true;
        let inv = inventory(vec![fresh], vec![]);
        assert_eq!(plan(&inv, &job(&[Task::Vacuum])).steps.len(), 1);
    }

    fn names<'a>(tables: &[&'a TableStats]) -> Vec<&'a str> {
        tables.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn scope_keeps_what_the_patterns_name_and_the_role_may_vacuum() {
        let mut theirs = table("theirs", 1, 0, 1);
        theirs.can_vacuum = false;
        theirs.owner = "billing".into();
        theirs.xid_age = 300_000_000;
        let mut users = table("users", 1, 0, 1);
        users.xid_age = 300_000_000;
        let inv = inventory(
            vec![
                table("orders", 1, 0, 1),
                table("orders_archive", 1, 0, 1),
                theirs,
                users,
            ],
            vec![],
        );
        let targets = Targets {
            tables: vec!["orders*".into(), "public.theirs".into()],
            exclude: vec!["*_archive".into()],
            ..Targets::default()
        };
        let s = scope(&inv, &targets);
        assert_eq!(names(&s.tables), ["orders"]);
        let left: Vec<(&str, &str)> = s
            .left_alone
            .iter()
            .map(|l| (l.table.as_str(), l.reason.as_str()))
            .collect();
        assert_eq!(left.len(), 3, "{left:?}");
        assert_eq!(
            left[0],
            ("public.orders_archive", "excluded by '*_archive'")
        );
        assert_eq!(left[1].0, "public.theirs");
        assert!(
            left[1].1.starts_with(
                "the job's role may not maintain it: run the job as its owner (billing)"
            ),
            "{}",
            left[1].1
        );
        assert_eq!(left[2], ("public.users", "not named by `tables`"));
        // Out of scope, `users` is not the job's to warn about.
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("public.theirs") && s.warnings[0].contains("may not vacuum it"),
            "{}",
            s.warnings[0]
        );
    }

    #[test]
    fn a_table_s_steps_follow_the_job_s_tasks_and_its_left_alone_reason_names_each() {
        let inv = inventory(vec![], vec![]);
        let mut t = table("orders", 10_000, 0, 20 * MB);
        t.modified_since_analyze = 5_000;
        let bloated = index("orders_idx", &t, Some(0.6), true);
        let w = table_work(&inv, &job(&[Task::Reindex, Task::Analyze]), &t, &[&bloated]);
        let actions: Vec<Action> = w.steps.iter().map(|s| s.action).collect();
        assert_eq!(actions, [Action::Reindex, Action::Analyze]);
        assert!(w.left_alone.is_none() && w.warning.is_none() && !w.urgent);
        let quiet = table("quiet", 10_000, 0, 20 * MB);
        let unknown = index("quiet_idx", &quiet, None, true);
        let w = table_work(
            &inv,
            &job(&[Task::Vacuum, Task::Reindex]),
            &quiet,
            &[&unknown],
        );
        assert_eq!(
            w.left_alone.map(|l| l.reason).as_deref(),
            Some(
                "below the thresholds: 0 dead tuples (0%), 0 changed since analyze; vacuum, \
                 index quiet_idx: bloat unknown"
            )
        );
    }

    /// One vacuum of `t`, as [`table_work`] would make it.
    fn work(t: &TableStats, urgent: bool) -> TableWork<'_> {
        TableWork {
            table: t,
            urgent,
            steps: vec![Step {
                action: Action::Vacuum,
                schema: t.schema.clone(),
                table: t.name.clone(),
                index: None,
                table_oid: t.oid,
                reason: String::new(),
                urgent,
            }],
            left_alone: None,
            warning: urgent.then(|| t.name.clone()),
        }
    }

    fn leftover(on: &str) -> Step {
        Step {
            action: Action::DropLeftover,
            schema: "public".into(),
            table: on.into(),
            index: Some(format!("{on}_idx_ccnew")),
            table_oid: 1,
            reason: String::new(),
            urgent: false,
        }
    }

    #[test]
    fn order_is_wraparound_oldest_first_then_leftovers_then_dead_tuples_then_size() {
        let few = table("few", 1, 10, MB);
        let more = table("more", 1, 500, MB);
        let bigger = table("bigger", 1, 500, 5 * MB);
        let tie = table("tie", 1, 10, MB);
        let mut old = table("old", 1, 0, MB);
        old.xid_age = 250_000_000;
        let mut older = table("older", 1, 0, MB);
        older.xid_age = 300_000_000;
        let quiet = table("quiet", 1, 0, MB);
        let mut nothing = work(&quiet, false);
        nothing.steps.clear();
        nothing.left_alone = Some(LeftAlone {
            table: "public.quiet".into(),
            reason: "below the thresholds".into(),
        });
        let o = order(
            vec![
                work(&few, false),
                work(&more, false),
                nothing,
                work(&old, true),
                work(&bigger, false),
                work(&tie, false),
                work(&older, true),
            ],
            vec![leftover("orders")],
        );
        let steps: Vec<&str> = o.steps.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(
            steps,
            ["older", "old", "orders", "bigger", "more", "few", "tie"]
        );
        assert_eq!(o.warnings, ["older", "old"]);
        assert_eq!(o.left_alone.len(), 1);
    }

    #[test]
    fn leftovers_go_first_when_nothing_is_urgent_and_last_when_everything_is() {
        let a = table("a", 1, 10, MB);
        let o = order(vec![work(&a, false)], vec![leftover("orders")]);
        let steps: Vec<&str> = o.steps.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(steps, ["orders", "a"]);
        let o = order(vec![work(&a, true)], vec![leftover("orders")]);
        let steps: Vec<&str> = o.steps.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(steps, ["a", "orders"]);
    }
}
