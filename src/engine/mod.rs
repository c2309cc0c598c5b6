//! The engine runs every piece of work that acts — a job's run, a restore, a
//! verify, a drill, a prune, a pin — along one path:
//!
//! plan → lock (when the work takes one) → timeout and cancellation → execute
//! (retried only for temporary errors, when the work allows retries) → run
//! record → metrics → notifications.
//!
//! What every run gets, whatever its kind, lives here and not in the jobs: the
//! job's advisory lock (one runner across replicas), the database's lock
//! (dumps never meet heavy maintenance), the timeout, the retries, the
//! cancellation, the record, the metrics and the notifications. A kind of
//! work is a [`Work`]: it plans, executes, says what it locks and how it
//! describes itself. Storages and locks come through [`OpenStorage`] and
//! [`Locks`], which tests replace with in-memory ones.

mod commands;
mod jobs;
mod pitr;
pub mod stops;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{Error, Kind, Result};
use crate::lock::{DatabaseUse, Held, Locks, ServerLocks};
use crate::model::{Clock, Config, StorageSpec};
use crate::report::{self, Outcome, Progress, RunRecord, Trigger};
use crate::storage::{self, Storage};

pub use crate::catalog::ListedBackup;
pub use crate::lock::InProcessLocks;
pub use commands::{Drill, Pin, Restore, RestoreDir, Verify};
pub use jobs::{JobRun, Output, Prune, PrunePlan};
pub use pitr::{PitrDrill, PitrRestore, checks_of};
pub use stops::Stop;

pub struct Engine {
    pub config: Config,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
    observer: Arc<dyn RunObserver>,
    storages: Arc<dyn OpenStorage>,
    locks: Arc<dyn Locks>,
}

/// Opens a storage from its spec: the real backends, or what a test hands out.
#[async_trait]
pub trait OpenStorage: Send + Sync {
    async fn open(&self, spec: &StorageSpec) -> Result<Arc<dyn Storage>>;
}

/// The backends the job file names.
pub struct Backends;

#[async_trait]
impl OpenStorage for Backends {
    async fn open(&self, spec: &StorageSpec) -> Result<Arc<dyn Storage>> {
        storage::open(spec).await
    }
}

/// One run asked of the engine.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub trigger: Trigger,
    /// The fire time, for scheduled and caught-up runs: it names the run, so
    /// two replicas agree on which run they are about.
    pub scheduled_for: Option<Timestamp>,
    /// Cancelled when the process is told to stop.
    pub cancel: CancellationToken,
    /// A backup of another database (or cluster) than the job's previous
    /// backups is taken, not refused: a deliberate move (`--accept-new-source`).
    pub accept_new_source: bool,
    /// A physical job with incremental backups takes a full one and starts
    /// a new chain (`--full`).
    pub full: bool,
}

impl RunRequest {
    pub fn manual(cancel: &CancellationToken) -> Self {
        RunRequest {
            trigger: Trigger::Manual,
            scheduled_for: None,
            cancel: cancel.clone(),
            accept_new_source: false,
            full: false,
        }
    }
}

/// How a run requested of the engine ended.
#[derive(Debug)]
pub enum RunEnd<M> {
    /// It ran; its record is stored (when a storage could take it).
    Done(Box<Finished<M>>),
    /// Another process runs or ran it; nothing was recorded here.
    Elsewhere(String),
}

/// A run that happened, and what it made.
#[derive(Debug)]
pub struct Finished<M> {
    pub record: RunRecord,
    pub result: Result<M>,
    /// Why the run's record could not be stored, when it could not.
    pub unrecorded: Option<Error>,
}

/// What a command made, and why its run record could not be stored, when
/// it could not: the work stands, and the command still exits non-zero.
#[derive(Debug)]
pub struct Recorded<T> {
    pub value: T,
    pub unrecorded: Option<Error>,
}

impl<T> Recorded<T> {
    /// What was made, and how the command ends once it has shown it.
    pub fn split(self) -> (T, Result<()>) {
        (self.value, self.unrecorded.map_or(Ok(()), Err))
    }
}

/// Whether `work` is a run of its job's own kind (a backup job's backup, a
/// maintenance job's maintenance), not a command on it (verify, drill,
/// restore, pin) nor the prune after a backup: what a healthchecks-style
/// ping reports, whose check must not turn green on a verify.
fn own_run<W: Work>(work: &W) -> bool {
    work.kind() == work.job().kind.name()
}

/// One kind of work the engine runs. The engine gives it storages, a lock,
/// a time limit and retries; the work plans and executes, and says what its
/// record keeps.
#[async_trait]
pub trait Work: Send + Sync {
    type Plan: Send + Sync;
    type Made: Send;

    /// The kind its record carries: `backup`, `verify`, `restore`, ...
    fn kind(&self) -> &'static str;
    /// The job it is of: its storages take the record.
    fn job(&self) -> &crate::model::Job;
    /// What the run id says after the time.
    fn tag(&self) -> String {
        self.kind().to_owned()
    }
    /// Takes the job's lock, and the database in this mode; `None` runs
    /// beside anything.
    fn locking(&self) -> Option<DatabaseUse> {
        None
    }
    fn timeout(&self) -> Option<Duration> {
        None
    }
    /// How many more attempts a temporary failure gets, and the first delay.
    fn retries(&self) -> (u32, Duration) {
        (0, Duration::ZERO)
    }
    /// What a stop leaves behind (see [`stops`]).
    fn stop(&self) -> Stop<'_>;
    /// Whether a success is announced to the notifiers that want successes:
    /// not for the prune that follows each backup, whose success is routine.
    fn announces_success(&self) -> bool {
        true
    }
    /// Whether it stops itself on cancellation (tearing down what it made)
    /// rather than be dropped.
    fn stops_itself(&self) -> bool {
        false
    }
    async fn plan(&self, run: &Run<'_>) -> Result<Self::Plan>;
    async fn execute(&self, plan: &Self::Plan, run: &Run<'_>) -> Result<Self::Made>;
    /// Why a run that returned still failed: a storage, a check.
    fn failure(&self, made: &Self::Made) -> Option<String>;
    /// What the record keeps: of the plan and what was made, or of what a
    /// run that failed had done.
    fn details(&self, plan: Option<&Self::Plan>, made: Option<&Self::Made>) -> serde_json::Value;
    /// Which of the job's storages take the record: all, unless the work
    /// read only some.
    fn records_in(
        &self,
        plan: &Self::Plan,
        storages: &[Arc<dyn Storage>],
    ) -> Vec<Arc<dyn Storage>> {
        let _ = plan;
        storages.to_vec()
    }
}

/// What a run hands its work.
pub struct Run<'a> {
    pub engine: &'a Engine,
    /// The job's storages, open.
    pub storages: &'a [Arc<dyn Storage>],
    pub request: &'a RunRequest,
    pub run_id: &'a str,
}

/// Sees runs start and end: the daemon's metrics.
pub trait RunObserver: Send + Sync {
    fn started(&self, job: &str, kind: &str);
    fn finished(&self, record: &RunRecord);
}

struct Unobserved;

impl RunObserver for Unobserved {
    fn started(&self, _: &str, _: &str) {}
    fn finished(&self, _: &RunRecord) {}
}

/// The longest wait between two attempts, however many retries are allowed.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// Runs `work`, failing it as timed out if it is not done within `limit`.
async fn within<T>(limit: Option<Duration>, work: impl Future<Output = Result<T>>) -> Result<T> {
    match limit {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(Error::timed_out(format!(
                "timed out after {}: the run was cancelled, its child processes stopped \
                 and its queries cancelled",
                crate::time::show_std_duration(limit)
            )))
        }),
    }
}

/// What a run by hand made, or why it did not run: one going on elsewhere
/// makes it refuse.
fn by_hand<M>(end: RunEnd<M>, job: &str) -> Result<Recorded<M>> {
    match end {
        RunEnd::Done(done) => {
            let Finished {
                result, unrecorded, ..
            } = *done;
            result.map(|value| Recorded { value, unrecorded })
        }
        RunEnd::Elsewhere(reason) => Err(Error::refused(format!("job {job}: {reason}"))
            .with_hint("wait for that run to finish; `backup status` shows the last runs")),
    }
}

/// The error of work stopped by a signal, saying what the stop left.
fn stopped<W: Work>(work: &W) -> Error {
    Error::interrupted(format!(
        "stopped by SIGTERM or SIGINT: {}",
        stops::left_behind(work.stop()).0
    ))
}

/// How a run ended: its plan when it got that far, its result, and whether
/// the process was being stopped.
struct Ended<'a, W: Work> {
    plan: Option<&'a W::Plan>,
    result: Result<W::Made>,
    stopping: bool,
}

impl<W: Work> Ended<'_, W> {
    /// Ended before it had a plan.
    fn failed(error: Error, request: &RunRequest) -> Self {
        Ended {
            plan: None,
            result: Err(error),
            stopping: request.cancel.is_cancelled(),
        }
    }
}

/// How an attempt ended, when it did not fail.
enum Step<M> {
    Ran(M),
    /// Not ours to run, with why.
    Elsewhere(&'static str),
}

impl Engine {
    pub fn new(config: Config, clock: Arc<dyn Clock>, progress: Arc<dyn Progress>) -> Self {
        Engine {
            config,
            clock,
            progress,
            observer: Arc::new(Unobserved),
            storages: Arc::new(Backends),
            locks: Arc::new(ServerLocks),
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Storages from `opener` instead of the backends the job file names.
    pub fn with_storages(mut self, opener: Arc<dyn OpenStorage>) -> Self {
        self.storages = opener;
        self
    }

    pub fn with_locks(mut self, locks: Arc<dyn Locks>) -> Self {
        self.locks = locks;
        self
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn progress(&self) -> &Arc<dyn Progress> {
        &self.progress
    }

    pub fn locks(&self) -> &Arc<dyn Locks> {
        &self.locks
    }

    pub async fn open_all(&self, specs: &[Arc<StorageSpec>]) -> Result<Vec<Arc<dyn Storage>>> {
        let mut storages = Vec::with_capacity(specs.len());
        for s in specs {
            storages.push(self.storages.open(s).await?);
        }
        Ok(storages)
    }

    /// The plan of `work`, for `--dry-run` or to show before asking: nothing
    /// is run or recorded.
    pub async fn plan<W: Work>(&self, work: &W, cancel: &CancellationToken) -> Result<W::Plan> {
        let storages = self.open_all(work.job().record_storages()).await?;
        let request = RunRequest::manual(cancel);
        let run = Run {
            engine: self,
            storages: &storages,
            request: &request,
            run_id: "",
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(stopped(work)),
            plan = work.plan(&run) => plan,
        }
    }

    /// Runs `work` now, by hand, with `plan` when it was made already. A run
    /// of the same job going on elsewhere makes this one refuse, not wait.
    pub async fn act<W: Work>(
        &self,
        work: &W,
        plan: Option<W::Plan>,
        cancel: &CancellationToken,
    ) -> Result<Recorded<W::Made>> {
        let end = self
            .run_work(work, plan, RunRequest::manual(cancel))
            .await?;
        by_hand(end, &work.job().name)
    }

    /// Runs a job the way the daemon does, then its prune when it has a
    /// retention policy and the run succeeded.
    pub async fn run(&self, job: &str, request: RunRequest) -> Result<RunEnd<Output>> {
        let run = JobRun::new(self.config.job(job)?);
        let end = self.run_work(&run, None, request.clone()).await?;
        // A job with a policy prunes after each good backup: never after a
        // failed one, which is also what retention itself refuses.
        // Not when the process is stopping: the prune would only be stopped
        // in turn, and announced as a failure.
        if let RunEnd::Done(done) = &end
            && done.record.outcome == Outcome::Succeeded
            && !request.cancel.is_cancelled()
            && let Some(prune) = run.prune_after()
        {
            let request = RunRequest {
                accept_new_source: false,
                ..request
            };
            match self.run_work(&prune, None, request).await {
                Ok(RunEnd::Done(done)) => {
                    if let Err(e) = done.result {
                        tracing::warn!("prune after the backup: {e}");
                    } else if let Some(failure) = &done.record.error {
                        tracing::warn!("prune after the backup: {failure}");
                    }
                }
                Ok(RunEnd::Elsewhere(why)) => tracing::warn!("prune after the backup: {why}"),
                Err(e) => tracing::warn!("prune after the backup: {e}"),
            }
        }
        Ok(end)
    }

    /// Runs one job now, by hand, and stores its run record. A run of the same
    /// job going on elsewhere (the daemon, another replica) makes this one
    /// refuse rather than wait.
    pub async fn run_now(&self, job: &str, request: RunRequest) -> Result<Recorded<Output>> {
        by_hand(self.run(job, request).await?, job)
    }

    /// The plan of a restore-test job, as `--dry-run` prints it.
    pub async fn plan_restore_test(
        &self,
        name: &str,
    ) -> Result<crate::jobs::restore_test::RestoreTestPlan> {
        let job = self.config.job(name)?;
        let crate::model::JobKind::RestoreTest(spec) = &job.kind else {
            return Err(Error::usage(format!(
                "job {name} is not a restore-test job"
            )));
        };
        let storages = self.open_all(&spec.storages).await?;
        let backup_job = self.config.backup_job(&spec.backup_job)?;
        crate::jobs::restore_test::plan(job, backup_job, spec, &storages, self.clock.now()).await
    }

    /// The one run path: plan, lock, limit, execute, record, observe, announce.
    pub async fn run_work<W: Work>(
        &self,
        work: &W,
        plan: Option<W::Plan>,
        request: RunRequest,
    ) -> Result<RunEnd<W::Made>> {
        let job = work.job();
        let started_at = self.clock.now();
        let mut run_id =
            RunRecord::run_id(request.scheduled_for.unwrap_or(started_at), &work.tag());
        if request.trigger == Trigger::CatchUp {
            // Beside, not over, the record of the run it makes up for.
            run_id.push_str("-catch-up");
        }
        let span = tracing::info_span!("run", job = %job.name, run_id = %run_id);
        self.run_in(work, plan, request, started_at, run_id)
            .instrument(span)
            .await
    }

    async fn run_in<W: Work>(
        &self,
        work: &W,
        plan: Option<W::Plan>,
        request: RunRequest,
        started_at: Timestamp,
        run_id: String,
    ) -> Result<RunEnd<W::Made>> {
        let job = work.job();
        let mut record = RunRecord::begin(
            run_id.clone(),
            &job.name,
            work.kind(),
            request.trigger,
            request.scheduled_for,
            started_at,
        )
        .of_job(job);
        let storages = match self.open_all(job.record_storages()).await {
            Ok(s) => s,
            Err(e) => {
                return Ok(self
                    .conclude(work, record, Ended::failed(e, &request), &[], None)
                    .await);
            }
        };
        if storages.is_empty() {
            tracing::warn!(
                "job {}: no storage takes its run records; set `reports = \"STORAGE\"` in its file",
                job.name
            );
        }
        let run = Run {
            engine: self,
            storages: &storages,
            request: &request,
            run_id: &run_id,
        };
        let planned = match plan {
            Some(plan) => Ok(plan),
            None => {
                tokio::select! {
                    biased;
                    () = request.cancel.cancelled() => Err(stopped(work)),
                    plan = work.plan(&run) => plan,
                }
            }
        };
        let plan = match planned {
            // Stopped before it began: nothing to run, nothing done.
            Ok(_) if request.cancel.is_cancelled() => {
                return Ok(self
                    .conclude(
                        work,
                        record,
                        Ended::failed(stopped(work), &request),
                        &storages,
                        None,
                    )
                    .await);
            }
            Ok(plan) => plan,
            Err(e) => {
                return Ok(self
                    .conclude(work, record, Ended::failed(e, &request), &storages, None)
                    .await);
            }
        };
        let mut lock = None;
        let attempts = self.attempts(work, &plan, &run, &mut record.attempts, &mut lock);
        let result = if work.stops_itself() {
            within(work.timeout(), attempts).await
        } else {
            tokio::select! {
                result = within(work.timeout(), attempts) => result,
                () = request.cancel.cancelled() => Err(stopped(work)),
            }
        };
        let result = match result {
            Ok(Step::Elsewhere(reason)) => {
                tracing::info!("skipped: {reason}");
                return Ok(RunEnd::Elsewhere(reason.to_owned()));
            }
            Ok(Step::Ran(made)) => Ok(made),
            Err(e) if e.kind() == Kind::TimedOut => Err(e.with_hint(format!(
                "the job's timeout is {}; raise `timeout` in [jobs.{}] or find what made the run slow",
                crate::time::show_std_duration(work.timeout().unwrap_or_default()),
                job.name
            ))),
            Err(e) => Err(e),
        };
        let records_in = work.records_in(&plan, &storages);
        Ok(self
            .conclude(
                work,
                record,
                Ended {
                    plan: Some(&plan),
                    result,
                    stopping: request.cancel.is_cancelled(),
                },
                &records_in,
                lock,
            )
            .await)
    }

    /// The attempts of one run: the first, then, for a temporary failure, up
    /// to `retries` more with the delay doubling each time. A run that failed
    /// in part (some storages hold the backup) returned: it is not retried, a
    /// new run would duplicate it.
    async fn attempts<W: Work>(
        &self,
        work: &W,
        plan: &W::Plan,
        run: &Run<'_>,
        attempts: &mut u32,
        lock: &mut Option<Box<dyn Held>>,
    ) -> Result<Step<W::Made>> {
        let (retries, mut delay) = work.retries();
        loop {
            *attempts += 1;
            match self.attempt(work, plan, run, lock).await {
                Err(e) if e.may_pass() && *attempts <= retries => {
                    tracing::warn!(
                        "attempt {} of {} failed: {e}; trying again in {}",
                        *attempts,
                        retries + 1,
                        crate::time::show_std_duration(delay)
                    );
                    // Others may use the database while we wait.
                    if let (Some(lock), Some(mode)) = (lock.as_ref(), work.locking()) {
                        lock.leave_database(mode).await;
                    }
                    tokio::select! {
                        () = self.clock.sleep(delay) => {}
                        () = run.request.cancel.cancelled() => return Err(e),
                    }
                    delay = delay.saturating_mul(2).min(MAX_RETRY_DELAY);
                }
                other => return other,
            }
        }
    }

    /// One attempt. The job's lock is taken by the first attempt that reaches
    /// the database and kept for the rest of the run.
    async fn attempt<W: Work>(
        &self,
        work: &W,
        plan: &W::Plan,
        run: &Run<'_>,
        lock: &mut Option<Box<dyn Held>>,
    ) -> Result<Step<W::Made>> {
        let job = work.job();
        let Some(mode) = work.locking() else {
            self.started(work);
            return work.execute(plan, run).await.map(Step::Ran);
        };
        // A lock whose session the server ended (a restart, a failover) is
        // no lock: take it again, as if the run were starting.
        if lock.as_ref().is_some_and(|l| l.is_lost()) {
            tracing::warn!("the session holding the job's lock was closed; taking the lock again");
            *lock = None;
        }
        if lock.is_none() {
            let database = job.database().map(|d| d.as_ref());
            let Some(taken) = self.locks.try_take(database, &job.name).await? else {
                return Ok(Step::Elsewhere(
                    "another process (a daemon replica or `backup run`) is running this job",
                ));
            };
            // Replicas whose clocks differ may reach the lock one after the
            // other: the record of the fire time says it was already run.
            if run.request.scheduled_for.is_some()
                && let Some(storage) = run.storages.first()
                && let Ok(key) = RunRecord::key_of(job.records_dir(), run.run_id)
                && matches!(
                    report::read_record(storage.as_ref(), &key).await,
                    Ok(Some(r)) if r.outcome != Outcome::Interrupted
                )
            {
                return Ok(Step::Elsewhere(
                    "this fire time was already run by another replica",
                ));
            }
            self.started(work);
            *lock = Some(taken);
        }
        let Some(lock) = lock.as_ref() else {
            return Err(Error::internal("the job's lock vanished"));
        };
        let database = job.database().map_or(String::new(), |d| d.name.clone());
        lock.use_database(
            mode,
            Box::new(move || match mode {
                DatabaseUse::Shared => {
                    tracing::info!("waiting: heavy maintenance holds database {database}")
                }
                DatabaseUse::Exclusive => tracing::info!(
                    "waiting: a backup of database {database} is running (or other maintenance of it)"
                ),
            }),
        )
        .await?;
        // Losing the lock's session mid-run releases the locks on the server:
        // the run stops rather than go on unprotected.
        tokio::select! {
            made = work.execute(plan, run) => made.map(Step::Ran),
            lost = lock.watch() => Err(lost),
        }
    }

    /// Writes the record of a finished run, updates the observer and sends
    /// notifications. None of these can change the run's outcome.
    async fn conclude<W: Work>(
        &self,
        work: &W,
        mut record: RunRecord,
        ended: Ended<'_, W>,
        storages: &[Arc<dyn Storage>],
        lock: Option<Box<dyn Held>>,
    ) -> RunEnd<W::Made> {
        let Ended {
            plan,
            result,
            stopping,
        } = ended;
        if record.attempts == 0 {
            record.attempts = 1;
        }
        let error = match &result {
            Ok(made) => work.failure(made),
            Err(e) => Some(e.to_string()),
        };
        let outcome = match &result {
            Ok(_) if error.is_none() => Outcome::Succeeded,
            // Work that stops itself (a drill) ends as a failure of its own.
            Ok(_) if record.trigger == Trigger::Manual && stopping => Outcome::Interrupted,
            Ok(_) => Outcome::Failed,
            Err(e) if e.kind() == Kind::TimedOut => Outcome::TimedOut,
            Err(e) if e.kind() == Kind::Interrupted => Outcome::Interrupted,
            Err(_) => Outcome::Failed,
        };
        record.end(self.clock.now(), outcome, error);
        record.details = work.details(plan, result.as_ref().ok());
        match record.outcome {
            Outcome::Succeeded => tracing::info!("run {} succeeded", record.run_id),
            outcome => tracing::warn!(
                "run {} {}: {}",
                record.run_id,
                outcome.name(),
                record.error.as_deref().unwrap_or("")
            ),
        }
        // From a storage that answers: one that has just stopped would cost
        // the failed run another wait for nothing but a notification's wording.
        let answering = storages
            .iter()
            .find(|s| !crate::storage::health::is_down(s.name()));
        let previous = match answering {
            Some(storage) => {
                report::RunHistory::of_record(storage.clone(), &record)
                    .previous_outcome(&record.run_id)
                    .await
            }
            None => None,
        };
        let unrecorded = record.store(storages).await.err();
        if let Some(e) = &unrecorded {
            tracing::error!("{e}");
        }
        // Held until the record is stored, so another replica sees it; not a
        // moment longer, so nothing below delays the job's next run.
        drop(lock);
        self.observer.finished(&record);
        let routine = record.outcome == Outcome::Succeeded
            && !work.announces_success()
            && !previous.is_some_and(Outcome::is_failure);
        // The operator who stopped a command knows; nobody else need be told.
        let asked_to_stop =
            record.outcome == Outcome::Interrupted && record.trigger == Trigger::Manual;
        if !routine && !asked_to_stop {
            crate::notify::spawn(
                self.config.notifiers.clone(),
                record.clone(),
                previous,
                own_run(work),
            );
        }
        RunEnd::Done(Box::new(Finished {
            record,
            result,
            unrecorded,
        }))
    }

    /// A run begins its work, holding the job's lock: the metrics, and for
    /// the job's own runs the pings that follow it (a check hears the start
    /// only of what it will hear the end of, never of a run another replica
    /// took).
    fn started<W: Work>(&self, work: &W) {
        let job = work.job();
        self.observer.started(&job.name, work.kind());
        if own_run(work) {
            crate::notify::spawn_start(&self.config.notifiers, &job.name);
        }
    }

    /// Records a fire time that was not run because the job was still running.
    pub async fn record_skipped(&self, name: &str, scheduled_for: Timestamp, reason: &str) {
        let Ok(job) = self.config.job(name) else {
            return;
        };
        let now = self.clock.now();
        let mut record = RunRecord::begin(
            // Its own name: a replica that did run this fire time keeps its record.
            format!(
                "{}-skipped",
                RunRecord::run_id(scheduled_for, &job.run_tag())
            ),
            &job.name,
            job.kind.name(),
            Trigger::Schedule,
            Some(scheduled_for),
            now,
        )
        .of_job(job);
        record.end(now, Outcome::Skipped, Some(reason.to_owned()));
        tracing::info!(job = %job.name, "skipped the run due at {scheduled_for}: {reason}");
        if let Ok(storages) = self.open_all(job.record_storages()).await
            && let Err(e) = record.store(&storages).await
        {
            tracing::error!("{e}");
        }
        self.observer.finished(&record);
    }
}
