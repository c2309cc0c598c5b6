//! Maintenance jobs: VACUUM, ANALYZE, FREEZE, VACUUM FULL and REINDEX where
//! the server's statistics say they help, without queueing the application
//! behind a lock.
//!
//! Plan first, then execute, like prune and restore: [`plan()`] is a pure
//! function of the database's [`Inventory`](crate::pg::stats::Inventory) and
//! the job, so what is chosen and why is tested without a server, and
//! `backup run --dry-run` prints exactly what a run would do.
//!
//! Being careful under load comes from four rules. Every statement runs with
//! `lock_timeout`; VACUUM and ANALYZE use `SKIP_LOCKED`, so they never wait in
//! a lock queue at all; a table whose lock stays busy through the retries is
//! skipped and named; no new table starts after the job's `window` closes.
//!
//! This file holds what a run plans and reports: `plan/` chooses the steps,
//! `execute.rs` connects and carries them out, `journal.rs` keeps what
//! a run did for the record of a run that is stopped, and `targets.rs`
//! matches the job's `tables` and `exclude` patterns.

mod execute;
#[cfg(test)]
mod fixtures;
mod journal;
mod plan;
mod targets;

use jiff::Timestamp;
use serde::Serialize;

use crate::model::Task;
use crate::pg::stats::TableStats;

pub use execute::{preview, run};
pub use journal::Journal;
pub use plan::plan;

/// What one step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Vacuum,
    Analyze,
    VacuumAnalyze,
    Freeze,
    VacuumFull,
    Reindex,
    /// Drops the invalid copy a failed REINDEX CONCURRENTLY left behind.
    DropLeftover,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Vacuum => "vacuum",
            Action::Analyze => "analyze",
            Action::VacuumAnalyze => "vacuum-analyze",
            Action::Freeze => "freeze",
            Action::VacuumFull => "vacuum-full",
            Action::Reindex => "reindex",
            Action::DropLeftover => "drop-leftover",
        }
    }

    fn of(task: Task) -> Action {
        match task {
            Task::Vacuum => Action::Vacuum,
            Task::Analyze => Action::Analyze,
            Task::VacuumAnalyze => Action::VacuumAnalyze,
            Task::Freeze => Action::Freeze,
            Task::VacuumFull => Action::VacuumFull,
            Task::Reindex => Action::Reindex,
        }
    }
}

/// One statement the plan runs.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub action: Action,
    pub schema: String,
    pub table: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(skip)]
    pub table_oid: u32,
    /// Why the planner chose it, with the numbers.
    pub reason: String,
    /// Transaction-ID wraparound is near: this goes first.
    pub urgent: bool,
}

impl Step {
    /// `schema.table`, or `schema.index` for index steps.
    pub fn target(&self) -> String {
        match &self.index {
            Some(index) => format!("{}.{index} on {}", self.schema, self.table),
            None => format!("{}.{}", self.schema, self.table),
        }
    }
}

/// A table the plan leaves alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LeftAlone {
    pub table: String,
    pub reason: String,
}

/// What a run will do, in order, and what it will not.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub database: String,
    pub steps: Vec<Step>,
    pub left_alone: Vec<LeftAlone>,
    /// Wraparound risks, invalid indexes, estimated sizes: said before the steps.
    pub warnings: Vec<String>,
    pub database_xid_age: i64,
    pub freeze_max_age: i64,
    pub exact_index_bloat: bool,
}

/// A table's or index's state before or after its step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measure {
    pub total_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_tuples: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_tuples: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_vacuum: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_autovacuum: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_analyze: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_autoanalyze: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bloat: Option<f64>,
    /// The size is from the statistics: the table's lock was busy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl From<&TableStats> for Measure {
    fn from(t: &TableStats) -> Self {
        Measure {
            total_bytes: Some(t.total_bytes),
            dead_tuples: Some(t.dead_tuples),
            live_tuples: Some(t.live_tuples),
            last_vacuum: t.last_vacuum,
            last_autovacuum: t.last_autovacuum,
            last_analyze: t.last_analyze,
            last_autoanalyze: t.last_autoanalyze,
            bloat: t.bloat,
            estimated: t.size_estimated,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Done,
    /// Not done, and not an error: a busy lock, the window closed.
    Skipped,
    Failed,
}

/// How one step went.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    #[serde(flatten)]
    pub step: Step,
    pub status: StepStatus,
    /// The statement, as run.
    pub sql: String,
    /// Why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What the server warned while it ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub before: Measure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Measure>,
}

/// What a maintenance run did.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceOutcome {
    pub database: String,
    /// The server was a standby: nothing was done.
    pub standby: bool,
    pub warnings: Vec<String>,
    pub steps: Vec<StepResult>,
    pub left_alone: Vec<LeftAlone>,
    /// The window closed before every step could start.
    pub window_closed: bool,
}

impl MaintenanceOutcome {
    pub fn count(&self, status: StepStatus) -> usize {
        self.steps.iter().filter(|s| s.status == status).count()
    }

    /// Why the run failed, when a step did.
    pub fn failure(&self) -> Option<String> {
        let failed: Vec<String> = self
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .map(|s| {
                format!(
                    "{} {}: {}",
                    s.step.action.name(),
                    s.step.target(),
                    s.note.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        // The record has them all; a message stays readable.
        const NAMED: usize = 5;
        (!failed.is_empty()).then(|| {
            let more = failed.len().saturating_sub(NAMED);
            format!(
                "{} of {} maintenance step(s) failed: {}{}",
                failed.len(),
                self.steps.len(),
                failed[..failed.len().min(NAMED)].join("; "),
                if more > 0 {
                    format!("; and {more} more (see the run record)")
                } else {
                    String::new()
                }
            )
        })
    }
}

/// What `--dry-run` shows: the plan, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub database: String,
    pub standby: bool,
    pub plan: Option<Plan>,
}

/// The one-line summary of a run, for logs and `backup run`.
pub fn summary(o: &MaintenanceOutcome) -> String {
    if o.standby {
        return format!("database {} is a standby: nothing done", o.database);
    }
    format!(
        "{} step(s) done, {} skipped, {} failed; {} table(s) left alone",
        o.count(StepStatus::Done),
        o.count(StepStatus::Skipped),
        o.count(StepStatus::Failed),
        o.left_alone.len()
    )
}
