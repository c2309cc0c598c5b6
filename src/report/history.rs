//! What a job's run records say of it: its last run, its last success, the
//! last restore test of its backups, and how the run before a new one ended.
//!
//! `status`, `check`, the daemon's metrics and catch-up, and notifications
//! all ask these questions; they are answered here once, so they cannot
//! disagree on what counts: a job's runs are the records of its name and
//! kind, and a skipped fire time is not a run.

use std::sync::Arc;

use jiff::Timestamp;

use super::{Outcome, RunRecord, newest_records};
use crate::error::{Error, Result};
use crate::model::Job;
use crate::storage::Storage;

/// One job's run records in one storage.
#[derive(Clone)]
pub struct RunHistory {
    storage: Arc<dyn Storage>,
    job: String,
    kind: String,
    /// The job whose `reports/` holds the records.
    dir: String,
    /// What the job's run ids say after the time (see [`Job::run_tag`]).
    tag: String,
}

/// The three records `status`, `check` and the metrics show of a job.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    pub last_run: Option<RunRecord>,
    pub last_success: Option<RunRecord>,
    pub last_restore_test: Option<RunRecord>,
}

/// The kind of a restore test's records.
const RESTORE_TEST: &str = "restore-test";
/// The kind of a drill's records.
const DRILL: &str = "drill";

impl RunHistory {
    /// The records of `job`, a job of `kind` filing them under `dir`'s
    /// `reports/` (its own name, or a restore test's backup job).
    pub fn new(storage: Arc<dyn Storage>, job: &str, kind: &str, dir: &str) -> Self {
        // As Job::run_tag and RunRecord::tag say it.
        let tag = if dir == job {
            kind.to_owned()
        } else {
            format!("{job}-{kind}")
        };
        RunHistory {
            storage,
            job: job.to_owned(),
            kind: kind.to_owned(),
            dir: dir.to_owned(),
            tag,
        }
    }

    pub fn of_job(storage: Arc<dyn Storage>, job: &Job) -> Self {
        Self::new(storage, &job.name, job.kind.name(), job.records_dir())
    }

    /// The records of the job that ran `record`, of the same kind.
    pub fn of_record(storage: Arc<dyn Storage>, record: &RunRecord) -> Self {
        Self::new(storage, &record.job, &record.kind, record.dir())
    }

    /// The newest of the job's own records that `wanted` accepts.
    async fn newest(&self, wanted: impl Fn(&RunRecord) -> bool) -> Result<Option<RunRecord>> {
        let mut found = newest_records(self.storage.as_ref(), &self.dir, &self.tag, 1, |r| {
            r.job == self.job && r.kind == self.kind && wanted(r)
        })
        .await?;
        Ok(found.pop())
    }

    /// The newest run, whatever its outcome; a skipped fire time is not a run.
    pub async fn last_run(&self) -> Result<Option<RunRecord>> {
        self.newest(|r| r.outcome != Outcome::Skipped).await
    }

    /// The newest run that succeeded.
    pub async fn last_success(&self) -> Result<Option<RunRecord>> {
        // `succeeded`, not `outcome`: the first records have no outcome.
        self.newest(|r| r.succeeded).await
    }

    /// The newest passed restore test of the backup job whose `reports/`
    /// holds the job's records, whichever restore-test job ran it: for a
    /// backup job its own tests, for a restore-test job its backup job's.
    /// Drills are not counted here: `status`, `check` and the restore-test
    /// gauge speak of restore-test jobs (`list` and prune count both, see
    /// [`super::tested_backups`]).
    pub async fn last_restore_test(&self) -> Result<Option<RunRecord>> {
        let mut found = newest_records(self.storage.as_ref(), &self.dir, RESTORE_TEST, 1, |r| {
            r.kind == RESTORE_TEST && r.succeeded
        })
        .await?;
        Ok(found.pop())
    }

    /// The job's runs started at `from` or later, newest first, at most
    /// `limit`; skipped fire times are not runs.
    pub async fn runs_since(&self, from: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        super::records_since(
            self.storage.as_ref(),
            &self.dir,
            &self.tag,
            Some(from),
            limit,
            |r| r.job == self.job && r.kind == self.kind && r.outcome != Outcome::Skipped,
        )
        .await
    }

    /// The restore tests and drills of the backups in this job's records
    /// directory started at `from` or later, passed or not, newest first:
    /// what the status page charts of recovery times.
    pub async fn tests_since(&self, from: Timestamp, limit: usize) -> Result<Vec<RunRecord>> {
        let storage = self.storage.as_ref();
        let (tests, drills) = futures::try_join!(
            super::records_since(storage, &self.dir, RESTORE_TEST, Some(from), limit, |r| {
                r.kind == RESTORE_TEST
            }),
            super::records_since(storage, &self.dir, DRILL, Some(from), limit, |r| {
                r.kind == DRILL
            })
        )?;
        let mut all: Vec<RunRecord> = tests.into_iter().chain(drills).collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.started_at));
        all.truncate(limit);
        Ok(all)
    }

    /// The three at once, from this one storage.
    pub async fn latest(&self) -> Result<Latest> {
        let (last_run, last_success, last_restore_test) = futures::try_join!(
            self.last_run(),
            self.last_success(),
            self.last_restore_test()
        )?;
        Ok(Latest {
            last_run,
            last_success,
            last_restore_test,
        })
    }

    /// When the newest run that catch-up counts started. A skipped fire time
    /// counts: the daemon saw it and chose not to run it, so it was not
    /// missed. A run our own shutdown interrupted does not: it is what
    /// catch-up is for.
    pub async fn last_start_for_catch_up(&self) -> Result<Option<Timestamp>> {
        let found = self.newest(|r| r.outcome != Outcome::Interrupted).await?;
        Ok(found.map(|r| r.started_at))
    }

    /// How the newest run other than `run_id` ended, skipped fire times
    /// aside: what tells a recovery from a plain success. `None` when there
    /// is none or the records cannot be read, which only changes a
    /// notification's wording.
    pub async fn previous_outcome(&self, run_id: &str) -> Option<Outcome> {
        let found = self
            .newest(|r| r.run_id != run_id && r.outcome != Outcome::Skipped)
            .await
            .ok()?;
        found.map(|r| r.outcome)
    }

    /// Asks `question` of `job`'s record storages in the order declared
    /// until one answers. Records go to every one of them, so the first
    /// that answers has them; each is opened only when the ones before it
    /// did not answer. Also returns why those asked did not.
    pub async fn ask<T>(
        job: &Job,
        question: impl AsyncFn(&RunHistory) -> Result<T>,
    ) -> (Option<T>, Vec<Error>) {
        let histories = job.record_storages().iter().map(|spec| async move {
            crate::storage::open(spec)
                .await
                .map(|storage| RunHistory::of_job(storage, job))
        });
        first_answer(histories, question).await
    }
}

/// [`RunHistory::ask`] over histories still to be opened.
async fn first_answer<T>(
    histories: impl IntoIterator<Item = impl Future<Output = Result<RunHistory>>>,
    question: impl AsyncFn(&RunHistory) -> Result<T>,
) -> (Option<T>, Vec<Error>) {
    let mut errors = Vec::new();
    for history in histories {
        let answer = match history.await {
            Ok(history) => question(&history).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(answer) => return (Some(answer), errors),
            Err(e) => errors.push(e),
        }
    }
    (None, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Trigger;
    use crate::storage::MemoryStorage;

    /// `hours` after 2026-11-22 03:00 UTC.
    fn at(hours: i64) -> Timestamp {
        "2026-11-22T03:00:00Z".parse::<Timestamp>().unwrap()
            + jiff::SignedDuration::from_hours(hours)
    }

    /// Stores a record of `job`'s run of `kind` filed under `dir`, started
    /// `hours` in, and returns its run id.
    fn store(
        storage: &MemoryStorage,
        (job, kind, dir): (&str, &str, &str),
        hours: i64,
        outcome: Outcome,
    ) -> String {
        let tag = RunHistory::new(Arc::new(storage.clone()), job, kind, dir).tag;
        let mut record = RunRecord::begin(
            RunRecord::run_id(at(hours), &tag),
            job,
            kind,
            Trigger::Schedule,
            None,
            at(hours),
        );
        if dir != job {
            record.backup_job = Some(dir.to_owned());
        }
        if outcome == Outcome::Skipped {
            // As Engine::record_skipped names them.
            record.run_id = format!("{}-skipped", record.run_id);
        }
        record.details = serde_json::json!({ "backup_id": format!("b{hours}") });
        record.end(at(hours + 1), outcome, None);
        storage.put(&record.key().unwrap(), serde_json::to_vec(&record).unwrap());
        record.run_id
    }

    const NIGHTLY: (&str, &str, &str) = ("nightly", "backup", "nightly");
    const WEEKLY: (&str, &str, &str) = ("weekly", "restore-test", "nightly");
    const MONTHLY: (&str, &str, &str) = ("monthly", "restore-test", "nightly");

    fn history(storage: &MemoryStorage, (job, kind, dir): (&str, &str, &str)) -> RunHistory {
        RunHistory::new(Arc::new(storage.clone()), job, kind, dir)
    }

    fn run<T>(work: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(work)
    }

    fn id(record: Option<RunRecord>) -> Option<String> {
        record.map(|r| r.details["backup_id"].as_str().unwrap().to_owned())
    }

    #[test]
    fn skipped_fire_times_are_not_runs_and_other_kinds_are_not_the_jobs() {
        let storage = MemoryStorage::new("mem");
        store(&storage, NIGHTLY, 0, Outcome::Succeeded);
        store(&storage, NIGHTLY, 2, Outcome::Failed);
        store(&storage, NIGHTLY, 4, Outcome::Skipped);
        // A manual restore and a drill of the job file under it too.
        store(
            &storage,
            ("nightly", "restore", "nightly"),
            6,
            Outcome::Succeeded,
        );
        store(
            &storage,
            ("nightly", "drill", "nightly"),
            8,
            Outcome::Succeeded,
        );
        let latest = run(history(&storage, NIGHTLY).latest()).unwrap();
        assert_eq!(id(latest.last_run), Some("b2".into()));
        assert_eq!(id(latest.last_success), Some("b0".into()));
        assert_eq!(id(latest.last_restore_test), None);
    }

    #[test]
    fn a_backup_jobs_restore_test_is_the_newest_passed_by_any_of_its_test_jobs() {
        let storage = MemoryStorage::new("mem");
        store(&storage, NIGHTLY, 0, Outcome::Succeeded);
        store(&storage, WEEKLY, 2, Outcome::Succeeded);
        store(&storage, MONTHLY, 4, Outcome::Succeeded);
        store(&storage, WEEKLY, 6, Outcome::Failed);
        store(
            &storage,
            ("nightly", "drill", "nightly"),
            8,
            Outcome::Succeeded,
        );
        // Another backup job's test is not this one's.
        store(
            &storage,
            ("other", "restore-test", "hourly"),
            10,
            Outcome::Succeeded,
        );
        let nightly = run(history(&storage, NIGHTLY).latest()).unwrap();
        assert_eq!(id(nightly.last_restore_test), Some("b4".into()));
        assert_eq!(id(nightly.last_run), Some("b0".into()));

        // A test job's own runs are its own; its restore test is its backup job's.
        let weekly = run(history(&storage, WEEKLY).latest()).unwrap();
        assert_eq!(id(weekly.last_run), Some("b6".into()));
        assert_eq!(id(weekly.last_success), Some("b2".into()));
        assert_eq!(id(weekly.last_restore_test), Some("b4".into()));
        let monthly = run(history(&storage, MONTHLY).latest()).unwrap();
        assert_eq!(id(monthly.last_run), Some("b4".into()));
    }

    #[test]
    fn the_previous_outcome_is_of_the_newest_other_run_that_ran() {
        let storage = MemoryStorage::new("mem");
        let h = history(&storage, NIGHTLY);
        assert_eq!(run(h.previous_outcome("any")), None);
        store(&storage, NIGHTLY, 0, Outcome::Succeeded);
        store(&storage, NIGHTLY, 2, Outcome::TimedOut);
        store(&storage, NIGHTLY, 4, Outcome::Skipped);
        store(&storage, WEEKLY, 5, Outcome::Succeeded);
        let this = store(&storage, NIGHTLY, 6, Outcome::Succeeded);
        assert_eq!(run(h.previous_outcome(&this)), Some(Outcome::TimedOut));
        // Asked of the record itself, as the engine does.
        let record = run(h.last_run()).unwrap().unwrap();
        assert_eq!(record.run_id, this);
        let of_record = RunHistory::of_record(Arc::new(storage.clone()), &record);
        assert_eq!(
            run(of_record.previous_outcome(&this)),
            Some(Outcome::TimedOut)
        );
    }

    #[test]
    fn catch_up_counts_skipped_fire_times_but_not_interrupted_runs() {
        let storage = MemoryStorage::new("mem");
        let h = history(&storage, NIGHTLY);
        assert_eq!(run(h.last_start_for_catch_up()).unwrap(), None);
        store(&storage, NIGHTLY, 0, Outcome::Failed);
        store(&storage, NIGHTLY, 2, Outcome::Skipped);
        store(&storage, NIGHTLY, 4, Outcome::Interrupted);
        assert_eq!(run(h.last_start_for_catch_up()).unwrap(), Some(at(2)));
    }

    #[test]
    fn the_first_storage_that_answers_is_read_and_the_others_say_why_not() {
        let empty = MemoryStorage::new("empty");
        let full = MemoryStorage::new("full");
        store(&full, NIGHTLY, 0, Outcome::Succeeded);
        let opened = |storage: Option<&MemoryStorage>| {
            let opened = storage
                .map(|s| history(s, NIGHTLY))
                .ok_or_else(|| Error::storage("storage down: cannot be opened"));
            async move { opened }
        };
        let (latest, errors) = run(first_answer(
            [opened(None), opened(Some(&full)), opened(Some(&empty))],
            async |h| h.latest().await,
        ));
        assert_eq!(id(latest.unwrap().last_run), Some("b0".into()));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("storage down"));

        // An empty storage answers: nothing recorded there.
        let (latest, errors) = run(first_answer(
            [opened(Some(&empty)), opened(Some(&full))],
            async |h| h.latest().await,
        ));
        assert!(latest.unwrap().last_run.is_none());
        assert!(errors.is_empty());

        let (latest, errors) = run(first_answer([opened(None)], async |h| h.latest().await));
        assert!(latest.is_none());
        assert_eq!(errors.len(), 1);
    }
}
