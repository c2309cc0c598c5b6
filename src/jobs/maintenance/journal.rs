//! What a maintenance run has done so far, for the record of a run that is
//! stopped before it returns.

use super::{Step, StepResult};

/// The steps of a run as they end, kept outside the run so that a run
/// stopped by its timeout or a signal still leaves the record of what it did.
#[derive(Debug, Default)]
pub struct Journal {
    inner: std::sync::Mutex<JournalInner>,
}

#[derive(Debug, Default)]
struct JournalInner {
    finished: Vec<StepResult>,
    running: Option<(Step, String)>,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, JournalInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn start(&self, step: &Step, sql: &str) {
        self.lock().running = Some((step.clone(), sql.to_owned()));
    }

    pub(super) fn finish(&self, result: &StepResult) {
        let mut inner = self.lock();
        inner.running = None;
        inner.finished.push(result.clone());
    }

    /// What a run that did not return did: its finished steps and the one
    /// it was stopped in. `None` when it stopped before its first step.
    pub fn details(&self) -> Option<serde_json::Value> {
        let inner = self.lock();
        if inner.finished.is_empty() && inner.running.is_none() {
            return None;
        }
        Some(serde_json::json!({
            "steps": inner.finished,
            "stopped_during": inner.running.as_ref().map(|(step, sql)| serde_json::json!({
                "action": step.action,
                "target": step.target(),
                "sql": sql,
                "note": "cancelled: the statement was cancelled on the server",
            })),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::maintenance::{Action, Measure, StepStatus};

    fn step() -> Step {
        Step {
            action: Action::Vacuum,
            schema: "public".into(),
            table: "orders".into(),
            index: None,
            table_oid: 1,
            reason: String::new(),
            urgent: false,
        }
    }

    #[test]
    fn a_stopped_run_records_its_finished_steps_and_the_one_it_was_in() {
        let journal = Journal::default();
        assert!(journal.details().is_none(), "stopped before its first step");
        let sql = "VACUUM (SKIP_LOCKED) \"public\".\"orders\"";
        journal.start(&step(), sql);
        journal.finish(&StepResult {
            step: step(),
            status: StepStatus::Done,
            sql: sql.to_owned(),
            note: None,
            warnings: Vec::new(),
            seconds: 1.0,
            before: Measure::default(),
            after: None,
        });
        journal.start(&step(), sql);
        let details = journal.details().unwrap();
        assert_eq!(details["steps"].as_array().map(Vec::len), Some(1));
        assert_eq!(details["stopped_during"]["target"], "public.orders");
        assert_eq!(details["stopped_during"]["sql"], sql);
    }
}
