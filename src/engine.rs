//! The engine runs jobs and restores: it opens storages, hands each job what it
//! needs, and leaves a run record in storage whether the run worked or not.
//!
//! What every run gets, whatever its kind, lives here and not in the jobs:
//! the job's advisory lock (one runner across replicas), the database's lock
//! (dumps never meet heavy maintenance), the timeout, the retries, the
//! cancellation on shutdown, the record, the metrics and the notifications.
//! Jobs stay ignorant of when, how often and by whom they run.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::catalog::{self, Manifest};
use crate::error::{Error, Kind, Result};
use crate::jobs::backup::{self, BackupOutcome};
use crate::jobs::maintenance::{self, MaintenanceOutcome};
use crate::jobs::restore::{self, RestoreOutcome, RestorePlan, RestoreRequest};
use crate::jobs::restore_test::{self, RestoreTestOutcome};
use crate::jobs::{drill, files, prune, verify};
use crate::model::{BackupId, BackupJob, BackupSource, Clock, Config, Job, JobKind, StorageSpec};
use crate::pg::{DatabaseUse, RunLock};
use crate::report::{self, Outcome, Progress, RunRecord, Trigger};
use crate::storage::{self, Storage};

pub struct Engine {
    pub config: Config,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
    observer: Arc<dyn RunObserver>,
}

/// One run asked of the engine.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub job: String,
    pub trigger: Trigger,
    /// The fire time, for scheduled and caught-up runs: it names the run, so
    /// two replicas agree on which run they are about.
    pub scheduled_for: Option<Timestamp>,
    /// Cancelled when the daemon stops for good.
    pub cancel: CancellationToken,
    /// A backup of another database (or cluster) than the job's previous
    /// backups is taken, not refused: a deliberate move (`--accept-new-source`).
    pub accept_new_source: bool,
}

impl RunRequest {
    pub fn manual(job: &str) -> Self {
        RunRequest {
            job: job.to_owned(),
            trigger: Trigger::Manual,
            scheduled_for: None,
            cancel: CancellationToken::new(),
            accept_new_source: false,
        }
    }
}

/// How a run requested of the engine ended.
#[derive(Debug)]
pub enum RunEnd {
    /// It ran; its record is stored (when a storage could take it).
    Done(Box<Finished>),
    /// Another process runs or ran it; nothing was recorded here.
    Elsewhere(String),
}

/// A run that happened, and what it made.
#[derive(Debug)]
pub struct Finished {
    pub record: RunRecord,
    pub result: Result<Output>,
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

/// What a run of each kind of job makes.
#[derive(Debug)]
pub enum Output {
    Backup(Box<BackupOutcome>),
    Maintenance(MaintenanceOutcome),
    /// Each storage's prune, and a storage that could not be listed.
    Prune(Vec<prune::StoragePrune>, Option<String>),
    RestoreTest(Box<RestoreTestOutcome>),
}

impl Output {
    /// Why a run that returned still failed: a storage, a table.
    fn failure(&self) -> Option<String> {
        match self {
            Output::Backup(o) if o.failed.is_empty() => None,
            Output::Backup(o) => Some(format!(
                "{} of {} storage(s) failed: {}",
                o.failed.len(),
                o.failed.len() + o.stored_in.len(),
                o.failed
                    .iter()
                    .map(|(s, e)| format!("{s}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Output::Maintenance(o) => o.failure(),
            Output::RestoreTest(o) => o.failure(),
            Output::Prune(prunes, unreachable) => {
                let failed = prune::failure(prunes).map(|e| e.to_string());
                match (failed, unreachable) {
                    (Some(f), Some(u)) => Some(format!("{f}; {u}")),
                    (f, u) => f.or_else(|| u.clone()),
                }
            }
        }
    }

    /// What the run record keeps of it.
    fn details(&self) -> serde_json::Value {
        match self {
            Output::Backup(o) => json!({
                "backup_id": o.manifest.id,
                "snapshot_at": o.manifest.snapshot_at,
                "raw_size": o.manifest.raw_size(),
                "stored_size": o.manifest.stored_size(),
                "tables": o.manifest.tables.len(),
                "stored_in": o.stored_in,
                "failed_storages": o.failed.iter().map(|(s, e)| json!({"storage": s, "error": e.to_string()})).collect::<Vec<_>>(),
            }),
            Output::Maintenance(o) => {
                let mut details = serde_json::to_value(o).unwrap_or_default();
                // Every step is evidence; the tables left alone, past the
                // first few hundred, are only a count.
                if let Some(list) = details["left_alone"].as_array_mut() {
                    let total = list.len();
                    list.truncate(LEFT_ALONE_KEPT);
                    details["left_alone_total"] = json!(total);
                }
                details
            }
            Output::Prune(prunes, _) => json!({ "storages": prunes }),
            Output::RestoreTest(o) => o.details(),
        }
    }
}

/// How many tables left alone a maintenance record names.
const LEFT_ALONE_KEPT: usize = 200;

/// How a job shares its database with dumps.
fn database_use(job: &Job) -> DatabaseUse {
    match &job.kind {
        JobKind::Maintenance(m) if m.is_heavy() => DatabaseUse::Exclusive,
        _ => DatabaseUse::Shared,
    }
}

/// How an attempt ended, when it did not fail.
enum Step {
    Ran(Box<Output>),
    /// Not ours to run, with why.
    Elsewhere(&'static str),
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

async fn open_all(specs: &[Arc<StorageSpec>]) -> Result<Vec<Arc<dyn Storage>>> {
    let mut storages = Vec::with_capacity(specs.len());
    for s in specs {
        storages.push(storage::open(s).await?);
    }
    Ok(storages)
}

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

/// The outcome of the newest earlier run of the same kind that actually ran,
/// to tell a recovery from a plain success.
async fn previous_outcome(storage: &dyn Storage, record: &RunRecord) -> Option<Outcome> {
    let kind = record.kind.clone();
    let run_id = record.run_id.clone();
    let job = record.job.clone();
    report::newest_records(storage, record.dir(), &record.tag(), 1, move |r| {
        r.kind == kind && r.job == job && r.run_id != run_id && r.outcome != Outcome::Skipped
    })
    .await
    .ok()?
    .first()
    .map(|r| r.outcome)
}

/// Which backups `backup verify` reads.
#[derive(Debug, Clone)]
pub enum VerifySelection {
    Latest,
    Id(BackupId),
    All,
}

/// A complete backup as listed: one row even when several storages hold it.
#[derive(Debug, Clone)]
pub struct ListedBackup {
    pub manifest: Manifest,
    pub storages: Vec<String>,
    /// Why it is pinned, when a storage holds a pin for it.
    pub pinned: Option<String>,
    /// When it last passed a restore test or a drill.
    pub tested: Option<Timestamp>,
}

/// What a run of a job of `kind` leaves when a signal stops it: said in its
/// run record and by `backup run`.
pub fn stopped(kind: &JobKind) -> &'static str {
    match kind {
        JobKind::Backup(_) => {
            "the backup in progress has no manifest, so it is never listed or restored"
        }
        JobKind::Maintenance(_) => "the statement running was cancelled; the next run plans again",
        JobKind::Prune(_) => {
            "a backup being deleted lost its manifest first, so none is listed half-deleted; \
             the next run finishes"
        }
        JobKind::RestoreTest(_) => {
            "pg_restore was stopped and the scratch database is being dropped; the next run \
             drops it if it is left"
        }
    }
}

impl Engine {
    pub fn new(config: Config, clock: Arc<dyn Clock>, progress: Arc<dyn Progress>) -> Self {
        Engine {
            config,
            clock,
            progress,
            observer: Arc::new(Unobserved),
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn RunObserver>) -> Self {
        self.observer = observer;
        self
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn storages_of(&self, spec: &BackupJob) -> Result<Vec<Arc<dyn Storage>>> {
        open_all(&spec.storages).await
    }

    /// Runs one job now, by hand, and stores its run record. A run of the same
    /// job going on elsewhere (the daemon, another replica) makes this one
    /// refuse rather than wait.
    pub async fn run_now(&self, request: RunRequest) -> Result<Recorded<Output>> {
        let name = request.job.clone();
        match self.run(request).await? {
            RunEnd::Done(done) => {
                let Finished {
                    result, unrecorded, ..
                } = *done;
                result.map(|value| Recorded { value, unrecorded })
            }
            RunEnd::Elsewhere(reason) => Err(Error::refused(format!("job {name}: {reason}"))
                .with_hint("wait for that run to finish; `backup status` shows the last runs")),
        }
    }

    /// Runs a job the way the engine runs every job: under the job's advisory
    /// lock, within its timeout, with its retries, stopped by `cancel`, and
    /// recorded, observed and announced whatever the outcome.
    pub async fn run(&self, request: RunRequest) -> Result<RunEnd> {
        let job = self.config.job(&request.job)?;
        let started_at = self.clock.now();
        let mut run_id =
            RunRecord::run_id(request.scheduled_for.unwrap_or(started_at), &job.run_tag());
        if request.trigger == Trigger::CatchUp {
            // Beside, not over, the record of the run it makes up for.
            run_id.push_str("-catch-up");
        }
        let span = tracing::info_span!("run", job = %job.name, run_id = %run_id);
        self.run_job(job, request, started_at, run_id)
            .instrument(span)
            .await
    }

    async fn run_job(
        &self,
        job: &Job,
        request: RunRequest,
        started_at: Timestamp,
        run_id: String,
    ) -> Result<RunEnd> {
        let mut record = RunRecord::begin(
            run_id,
            &job.name,
            job.kind.name(),
            request.trigger,
            request.scheduled_for,
            started_at,
        )
        .of_job(job);
        // A backup's storages take its data and its records; other jobs'
        // storages only their records.
        let storages = match open_all(job.record_storages()).await {
            Ok(s) => s,
            Err(e) => return Ok(self.conclude(record, Err(e), &[], None, None).await),
        };
        if storages.is_empty() {
            tracing::warn!(
                "job {}: no storage takes its run records; set `reports = \"STORAGE\"` in its file",
                job.name
            );
        }
        let mut lock = None;
        let journal = maintenance::Journal::default();
        let attempts = self.attempts(job, &storages, &request, &mut record, &mut lock, &journal);
        let result = tokio::select! {
            result = within(job.policy.timeout, attempts) => result,
            () = request.cancel.cancelled() => Err(Error::interrupted(format!(
                "stopped by SIGTERM or SIGINT: {}",
                stopped(&job.kind)
            ))),
        };
        let result = match result {
            Ok(Step::Elsewhere(reason)) => {
                tracing::info!("skipped: {reason}");
                return Ok(RunEnd::Elsewhere(reason.to_owned()));
            }
            Ok(Step::Ran(outcome)) => Ok(*outcome),
            Err(e) if e.kind() == Kind::TimedOut => Err(e.with_hint(format!(
                "the job's timeout is {}; raise `timeout` in [jobs.{}] or find what made the run slow",
                crate::time::show_std_duration(job.policy.timeout.unwrap_or_default()),
                job.name
            ))),
            Err(e) => Err(e),
        };
        let end = self
            .conclude(record, result, &storages, lock, journal.details())
            .await;
        // A job with a policy prunes after each good backup: never after a
        // failed one, which is also what retention itself refuses.
        if let RunEnd::Done(done) = &end
            && done.record.outcome == Outcome::Succeeded
            && let JobKind::Backup(spec) = &job.kind
            && spec.retention.is_some()
        {
            // Within the job's timeout and its cancellation, like the run.
            let pruned = tokio::select! {
                pruned = within(job.policy.timeout, self.prune(&job.name, false)) => pruned,
                () = request.cancel.cancelled() => Err(Error::interrupted("prune stopped by a signal")),
            };
            match pruned {
                Ok((prunes, unreachable)) => {
                    for e in prune::failure(&prunes).into_iter().chain(unreachable) {
                        tracing::warn!("prune after the backup: {e}");
                    }
                }
                Err(e) => tracing::warn!("prune after the backup: {e}"),
            }
        }
        Ok(end)
    }

    /// The attempts of one run: the first, then up to `retries` more with the
    /// delay doubling each time. A run that failed in part (some storages
    /// hold the backup) is not retried: a new run would duplicate it.
    async fn attempts(
        &self,
        job: &Job,
        storages: &[Arc<dyn Storage>],
        request: &RunRequest,
        record: &mut RunRecord,
        lock: &mut Option<RunLock>,
        journal: &maintenance::Journal,
    ) -> Result<Step> {
        let mut delay = job.policy.retry_delay;
        loop {
            record.attempts += 1;
            match self
                .attempt(job, storages, request, &record.run_id, lock, journal)
                .await
            {
                Err(e) if record.attempts <= job.policy.retries => {
                    tracing::warn!(
                        "attempt {} of {} failed: {e}; trying again in {}",
                        record.attempts,
                        job.policy.retries + 1,
                        crate::time::show_std_duration(delay)
                    );
                    // Others may use the database while we wait.
                    if let Some(lock) = lock.as_ref() {
                        lock.leave_database(database_use(job)).await;
                    }
                    tokio::select! {
                        () = self.clock.sleep(delay) => {}
                        () = request.cancel.cancelled() => return Err(e),
                    }
                    delay = delay.saturating_mul(2).min(MAX_RETRY_DELAY);
                }
                other => return other,
            }
        }
    }

    /// One attempt. The job's lock is taken by the first attempt that reaches
    /// the database and kept for the rest of the run.
    async fn attempt(
        &self,
        job: &Job,
        storages: &[Arc<dyn Storage>],
        request: &RunRequest,
        run_id: &str,
        lock: &mut Option<RunLock>,
        journal: &maintenance::Journal,
    ) -> Result<Step> {
        // A lock whose session the server ended (a restart, a failover) is
        // no lock: take it again, as if the run were starting.
        if lock.as_ref().is_some_and(RunLock::is_lost) {
            tracing::warn!("the session holding the job's lock was closed; taking the lock again");
            *lock = None;
        }
        if lock.is_none() {
            let Some(taken) =
                RunLock::try_take(job.database().map(|d| d.as_ref()), &job.name).await?
            else {
                return Ok(Step::Elsewhere(
                    "another process (a daemon replica or `backup run`) is running this job",
                ));
            };
            // Replicas whose clocks differ may reach the lock one after the
            // other: the record of the fire time says it was already run.
            if request.scheduled_for.is_some()
                && let Some(storage) = storages.first()
                && let Ok(key) = RunRecord::key_of(job.records_dir(), run_id)
                && matches!(
                    report::read_record(storage.as_ref(), &key).await,
                    Ok(Some(r)) if r.outcome != Outcome::Interrupted
                )
            {
                return Ok(Step::Elsewhere(
                    "this fire time was already run by another replica",
                ));
            }
            self.observer.started(&job.name, job.kind.name());
            *lock = Some(taken);
        }
        let Some(lock) = lock.as_ref() else {
            return Err(Error::internal("the job's lock vanished"));
        };
        let mode = database_use(job);
        let database = job.database().map_or("", |d| d.name.as_str());
        lock.use_database(mode, || match mode {
            DatabaseUse::Shared => {
                tracing::info!("waiting: heavy maintenance holds database {database}")
            }
            DatabaseUse::Exclusive => tracing::info!(
                "waiting: a backup of database {database} is running (or other maintenance of it)"
            ),
        })
        .await?;
        let run = async {
            match &job.kind {
                JobKind::Backup(spec) => match &spec.source {
                    BackupSource::Database(_) => {
                        backup::run(
                            job,
                            spec,
                            storages,
                            self.clock.as_ref(),
                            self.progress.clone(),
                            request.accept_new_source,
                        )
                        .await
                    }
                    BackupSource::Directory(dir) => {
                        files::run(
                            job,
                            spec,
                            dir,
                            storages,
                            self.clock.as_ref(),
                            self.progress.clone(),
                        )
                        .await
                    }
                }
                .map(|o| Output::Backup(Box::new(o))),
                JobKind::Maintenance(spec) => {
                    maintenance::run(job, spec, self.clock.as_ref(), journal)
                        .await
                        .map(Output::Maintenance)
                }
                JobKind::RestoreTest(spec) => self
                    .restore_test(job, spec, storages)
                    .await
                    .map(|o| Output::RestoreTest(Box::new(o))),
                JobKind::Prune(spec) => {
                    self.prune(&spec.backup_job, false)
                        .await
                        .map(|(prunes, unreachable)| {
                            Output::Prune(prunes, unreachable.map(|e| e.to_string()))
                        })
                }
            }
        };
        // Losing the lock's session mid-run releases the locks on the server:
        // the run stops rather than go on unprotected.
        tokio::select! {
            outcome = run => outcome.map(|o| Step::Ran(Box::new(o))),
            lost = lock.watch() => Err(lost),
        }
    }

    /// Writes the record of a finished run, updates the observer and sends
    /// notifications. None of these can change the run's outcome.
    async fn conclude(
        &self,
        mut record: RunRecord,
        result: Result<Output>,
        storages: &[Arc<dyn Storage>],
        lock: Option<RunLock>,
        unfinished: Option<serde_json::Value>,
    ) -> RunEnd {
        let error = match &result {
            Ok(o) => o.failure(),
            Err(e) => Some(e.to_string()),
        };
        let outcome = match &result {
            Ok(_) if error.is_none() => Outcome::Succeeded,
            Ok(_) => Outcome::Failed,
            Err(e) if e.kind() == Kind::TimedOut => Outcome::TimedOut,
            Err(e) if e.kind() == Kind::Interrupted => Outcome::Interrupted,
            Err(_) => Outcome::Failed,
        };
        record.end(self.clock.now(), outcome, error);
        match &result {
            Ok(o) => record.details = o.details(),
            // What a stopped run had done is evidence too.
            Err(_) => {
                if let Some(done) = unfinished {
                    record.details = done;
                }
            }
        }
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
            Some(storage) => previous_outcome(storage.as_ref(), &record).await,
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
        crate::notify::spawn(self.config.notifiers.clone(), record.clone(), previous);
        RunEnd::Done(Box::new(Finished {
            record,
            result,
            unrecorded,
        }))
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
        if let Ok(storages) = open_all(job.record_storages()).await
            && let Err(e) = record.store(&storages).await
        {
            tracing::error!("{e}");
        }
        self.observer.finished(&record);
    }

    /// Every complete backup of the backup jobs named (all when `None`), newest first.
    pub async fn list(&self, job: Option<&str>) -> Result<Vec<(&Job, Vec<ListedBackup>)>> {
        let jobs: Vec<(&Job, &BackupJob)> = match job {
            Some(name) => vec![self.config.backup_job(name)?],
            None => self
                .config
                .jobs
                .values()
                .filter_map(|j| match &j.kind {
                    JobKind::Backup(spec) => Some((j, spec)),
                    _ => None,
                })
                .collect(),
        };
        let mut out = Vec::new();
        for (job, spec) in jobs {
            let mut listed: Vec<ListedBackup> = Vec::new();
            let storages = self.storages_of(spec).await?;
            let mut unreachable = Vec::new();
            for storage in &storages {
                // One storage down must not hide the backups in the others.
                let listing = match catalog::list(storage.as_ref(), &job.name).await {
                    Ok(listing) => listing,
                    Err(e) => {
                        tracing::warn!("{e}");
                        unreachable.push(e);
                        continue;
                    }
                };
                for problem in listing.unreadable {
                    tracing::warn!("{problem}");
                }
                let tested = match report::record_keys(storage.as_ref(), &job.name).await {
                    Ok(keys) => report::tested_backups(storage.as_ref(), &keys).await,
                    Err(e) => Err(e),
                }
                .unwrap_or_else(|e| {
                    tracing::warn!("which backups passed a restore test is unknown: {e}");
                    Default::default()
                });
                for manifest in listing.backups {
                    let tested = tested.get(manifest.id.as_str()).copied();
                    let pinned = if listing.pinned.contains(&manifest.id) {
                        Some(
                            prune::read_pin(storage.as_ref(), &job.name, &manifest.id)
                                .await
                                .map(|p| p.reason)
                                .unwrap_or_default(),
                        )
                    } else {
                        None
                    };
                    match listed.iter_mut().find(|l| l.manifest.id == manifest.id) {
                        Some(l) => {
                            l.storages.push(storage.name().to_owned());
                            l.pinned = l.pinned.take().or(pinned);
                            l.tested = l.tested.max(tested);
                        }
                        None => listed.push(ListedBackup {
                            manifest,
                            storages: vec![storage.name().to_owned()],
                            pinned,
                            tested,
                        }),
                    }
                }
            }
            if unreachable.len() == storages.len()
                && let Some(e) = unreachable.into_iter().next()
            {
                return Err(e);
            }
            listed.sort_by(|a, b| b.manifest.id.cmp(&a.manifest.id));
            out.push((job, listed));
        }
        Ok(out)
    }

    /// Plans retention on every storage of a backup job and, unless
    /// `dry_run`, carries it out and leaves a `prune` record in each storage.
    /// A storage that cannot be listed comes back as the error beside the
    /// others' prunes.
    pub async fn prune(
        &self,
        name: &str,
        dry_run: bool,
    ) -> Result<(Vec<prune::StoragePrune>, Option<Error>)> {
        let (job, spec) = self.config.backup_job(name)?;
        let Some(policy) = &spec.retention else {
            return Err(
                Error::usage(format!("job {name} has no retention policy")).with_hint(format!(
                    "add e.g. retention = {{ keep_daily = 30, max_age = \"30d\" }} to [jobs.{name}]"
                )),
            );
        };
        let storages = self.storages_of(spec).await?;
        // A backup that runs longer than incomplete_after must not lose its
        // objects under it: while the job's lock is held, no incomplete
        // backup is deleted. A peek, not a hold: prune never delays a run.
        let running = match crate::pg::job_running(spec.database().map(|d| d.as_ref()), name).await
        {
            Ok(running) => running,
            Err(e) => {
                tracing::warn!(
                    "cannot tell whether job {name} is running ({e}); incomplete backups are kept"
                );
                true
            }
        };
        let facts = prune::job_facts(&storages, name, running).await;
        let mut prunes = Vec::new();
        let mut unreachable = None;
        for storage in &storages {
            let started_at = self.clock.now();
            let planned =
                prune::plan(storage.as_ref(), job, spec, policy, started_at, &facts).await;
            let (mut p, stored) = match planned {
                Ok(p) => p,
                Err(e) => {
                    let e = e.context(format!("job {name}: storage {}", storage.name()));
                    tracing::warn!("{e}");
                    unreachable.get_or_insert(e);
                    continue;
                }
            };
            for warning in &p.warnings {
                tracing::warn!("{warning}");
            }
            if !dry_run {
                let unfinished_before = (!running).then(|| {
                    jiff::SignedDuration::try_from(spec.incomplete_after)
                        .ok()
                        .and_then(|d| started_at.checked_sub(d).ok())
                        .unwrap_or(Timestamp::MIN)
                });
                prune::execute(storage, name, &mut p, &stored, unfinished_before).await;
                tracing::info!("prune of job {name}: {}", prune::summary(&p));
                let failure = prune::failure(std::slice::from_ref(&p)).map(|e| e.to_string());
                let details = serde_json::to_value(&p).unwrap_or_default();
                p.record_error = self
                    .record(
                        job,
                        "prune",
                        started_at,
                        failure,
                        details,
                        std::slice::from_ref(storage),
                    )
                    .await
                    .map(|e| e.to_string());
            }
            prunes.push(p);
        }
        match unreachable {
            Some(e) if prunes.is_empty() => Err(e),
            other => Ok((prunes, other)),
        }
    }

    /// Pins a backup in every storage that holds it complete (`reason` set),
    /// or unpins it (`None`). Returns the storages changed.
    pub async fn pin(
        &self,
        name: &str,
        id: &BackupId,
        reason: Option<&str>,
    ) -> Result<Vec<String>> {
        let (job, spec) = self.config.backup_job(name)?;
        let storages = self.storages_of(spec).await?;
        let mut changed = Vec::new();
        for storage in &storages {
            let manifest = catalog::backup_prefix(&job.name, id)?.join(catalog::MANIFEST)?;
            match catalog::read_manifest(storage.as_ref(), &manifest).await {
                Ok(_) => {}
                Err(e) if e.kind() == Kind::NotFound => continue,
                // A copy left unpinned by a passing error would be pruned.
                Err(e) => return Err(e.context(format!("job {name}: storage {}", storage.name()))),
            }
            let key = prune::pin_key(&job.name, id)?;
            match reason {
                Some(reason) => {
                    let pin = prune::Pin {
                        pinned_at: self.clock.now(),
                        reason: reason.to_owned(),
                    };
                    let body = serde_json::to_vec_pretty(&pin)
                        .map_err(|e| Error::internal(format!("cannot encode a pin: {e}")))?;
                    storage::write_small(storage.as_ref(), &key, &body).await?;
                }
                None => storage.delete(&key).await?,
            }
            changed.push(storage.name().to_owned());
        }
        if changed.is_empty() {
            return Err(Error::not_found(format!(
                "job {name} has no complete backup {id} in any of its storages"
            ))
            .with_hint(format!("`backup list --job {name}` shows its backups")));
        }
        Ok(changed)
    }

    /// The plan of a restore-test job, as `--dry-run` prints it.
    pub async fn plan_restore_test(&self, name: &str) -> Result<restore_test::RestoreTestPlan> {
        let job = self.config.job(name)?;
        let JobKind::RestoreTest(spec) = &job.kind else {
            return Err(Error::usage(format!(
                "job {name} is not a restore-test job"
            )));
        };
        let storages = open_all(&spec.storages).await?;
        let backup_job = self.config.backup_job(&spec.backup_job)?;
        restore_test::plan(job, backup_job, spec, &storages, self.clock.now()).await
    }

    async fn restore_test(
        &self,
        job: &Job,
        spec: &crate::model::RestoreTestJob,
        storages: &[Arc<dyn Storage>],
    ) -> Result<RestoreTestOutcome> {
        let backup_job = self.config.backup_job(&spec.backup_job)?;
        let plan = restore_test::plan(job, backup_job, spec, storages, self.clock.now()).await?;
        let storage = restore::named(storages, &plan.storage)?;
        restore_test::execute(&plan, &spec.target, storage, self.progress.clone()).await
    }

    /// Reads back and checks the backups `which` names in every storage of
    /// job `name` (or only `only`), and records the result.
    pub async fn verify(
        &self,
        name: &str,
        which: &VerifySelection,
        only: Option<&str>,
    ) -> Result<Recorded<Vec<verify::BackupCheck>>> {
        let (job, spec) = self.config.backup_job(name)?;
        let mut storages = self.storages_of(spec).await?;
        if let Some(only) = only {
            storages.retain(|s| s.name() == only);
            if storages.is_empty() {
                return Err(Error::usage(format!(
                    "job {name} does not store backups in storage '{only}'"
                ))
                .with_hint(format!(
                    "the job's storages: {}",
                    spec.storages
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let started_at = self.clock.now();
        let mut listings = Vec::new();
        let mut checks = Vec::new();
        let mut unreadable = Vec::new();
        for storage in &storages {
            match catalog::list(storage.as_ref(), name).await {
                Ok(listing) => {
                    unreadable.extend(
                        listing
                            .unreadable
                            .into_iter()
                            .map(|u| (storage.name().to_owned(), u)),
                    );
                    listings.push((storage.clone(), listing.backups));
                }
                Err(e) => return Err(e.context(format!("job {name}: storage {}", storage.name()))),
            }
        }
        // A manifest that does not read is a backup too: the newest (or the
        // one named) is reported as bad, never passed over for another.
        let wanted: Option<BackupId> = match which {
            VerifySelection::All => None,
            VerifySelection::Id(id) => Some(id.clone()),
            VerifySelection::Latest => Some(
                listings
                    .iter()
                    .flat_map(|(_, b)| b.iter().map(|m| m.id.clone()))
                    .chain(unreadable.iter().map(|(_, u)| u.id.clone()))
                    .max()
                    .ok_or_else(|| {
                        Error::not_found(format!("job {name} has no complete backups"))
                            .with_hint(format!("run `backup run {name}` first"))
                    })?,
            ),
        };
        let is_wanted = |id: &BackupId| wanted.as_ref().is_none_or(|w| w == id);
        if let VerifySelection::Id(id) = which
            && !listings.iter().any(|(_, b)| b.iter().any(|m| &m.id == id))
            && !unreadable.iter().any(|(_, u)| &u.id == id)
        {
            return Err(Error::not_found(format!(
                "job {name} has no complete backup {id} in any of the storages read"
            ))
            .with_hint(format!("`backup list --job {name}` shows its backups")));
        }
        for (storage, problem) in unreadable.iter().filter(|(_, u)| is_wanted(&u.id)) {
            checks.push(verify::BackupCheck {
                backup_id: problem.id.to_string(),
                storage: storage.clone(),
                objects: vec![verify::ObjectCheck {
                    key: catalog::MANIFEST.to_owned(),
                    role: None,
                    stored_size: 0,
                    raw_size: 0,
                    archive_entries: None,
                    error: Some(problem.to_string()),
                    unread: false,
                }],
            });
        }
        // A passphrase not on this host makes no backup bad: it is the
        // configuration error it is, said once, before anything is read.
        if let Some(passphrase) = spec.encryption.as_ref().and_then(|e| e.passphrase.as_ref())
            && listings
                .iter()
                .flat_map(|(_, b)| b)
                .any(|m| m.encryption.is_some() && is_wanted(&m.id))
        {
            passphrase.resolve()?;
        }
        let mut tools: std::collections::BTreeMap<u32, std::path::PathBuf> = Default::default();
        for (storage, backups) in &listings {
            let selected: Vec<&Manifest> = backups
                .iter()
                .filter(|m| wanted.as_ref().is_none_or(|id| &m.id == id))
                .collect();
            if let Some(id) = &wanted
                && selected.is_empty()
                && !unreadable
                    .iter()
                    .any(|(s, u)| s == storage.name() && &u.id == id)
            {
                checks.push(verify::missing(storage.name(), id.as_str()));
            }
            for manifest in selected {
                // A files backup is read as a tar: no pg_restore needed.
                let pg_restore = match (manifest.object(catalog::Role::Data), spec.database()) {
                    (None, _) => None,
                    (Some(object), None) => {
                        // Made while the job was a database backup: said for
                        // this backup, and the others are still verified.
                        checks.push(verify::BackupCheck {
                            backup_id: manifest.id.to_string(),
                            storage: storage.name().to_owned(),
                            objects: vec![verify::ObjectCheck {
                                key: object.key.clone(),
                                role: Some(object.role),
                                stored_size: object.digest.stored_size,
                                raw_size: object.digest.raw_size,
                                archive_entries: None,
                                error: Some(format!(
                                    "a pg_dump archive in files job {name}: not verified; \
                                     the job was a database backup when it was made"
                                )),
                                unread: false,
                            }],
                        });
                        continue;
                    }
                    (Some(_), Some(db)) => {
                        let major =
                            crate::pg::command::parse_tool_version(&manifest.pg_dump_version)
                                .unwrap_or(0);
                        Some(match tools.get(&major) {
                            Some(p) => p.clone(),
                            None => {
                                let p = verify::pg_restore_for_archives(db, major)?;
                                tools.insert(major, p.clone());
                                p
                            }
                        })
                    }
                };
                tracing::info!(
                    "verifying backup {} in storage {}",
                    manifest.id,
                    storage.name()
                );
                checks.push(
                    verify::verify_backup(
                        storage,
                        manifest,
                        pg_restore.as_deref(),
                        spec.keys(),
                        &self.progress,
                    )
                    .await,
                );
            }
        }
        if checks.is_empty() {
            return Err(
                Error::not_found(format!("job {name} has no complete backups"))
                    .with_hint(format!("run `backup run {name}` first")),
            );
        }
        let failure = verify::failure(&checks);
        let unrecorded = self
            .record(
                job,
                "verify",
                started_at,
                failure,
                json!({ "backups": checks }),
                &storages,
            )
            .await;
        Ok(Recorded {
            value: checks,
            unrecorded,
        })
    }

    /// The plan of a drill of job `name`: a backup job (with the checks of
    /// its restore-test jobs) or a restore-test job (with its own).
    pub async fn plan_drill(
        &self,
        name: &str,
        selector: &catalog::Selector,
        target_url: Option<&str>,
        jobs: Option<u32>,
    ) -> Result<drill::DrillPlan> {
        let job = self.config.job(name)?;
        let mut default_jobs = 1;
        let (backup_job, checks, checks_from) = match &job.kind {
            JobKind::RestoreTest(t) => {
                default_jobs = t.jobs;
                (
                    t.backup_job.clone(),
                    t.checks.clone(),
                    vec![name.to_owned()],
                )
            }
            JobKind::Backup(_) => {
                let mut checks: Vec<crate::model::Check> = Vec::new();
                let mut from = Vec::new();
                for j in self.config.jobs.values() {
                    if let JobKind::RestoreTest(t) = &j.kind
                        && t.backup_job == name
                    {
                        from.push(j.name.clone());
                        for c in &t.checks {
                            if !checks
                                .iter()
                                .any(|have| have.sql == c.sql && have.expected() == c.expected())
                            {
                                checks.push(c.clone());
                            }
                        }
                    }
                }
                (name.to_owned(), checks, from)
            }
            other => {
                return Err(Error::usage(format!(
                    "job {name} is a {} job: a drill restores a backup job",
                    other.name()
                ))
                .with_hint("name a backup job, or a restore-test job to use its checks"));
            }
        };
        let (bjob, spec, database) = self.config.database_backup_job(&backup_job, "drill")?;
        let storages = self.storages_of(spec).await?;
        let (backup, storage) = restore::choose(bjob, &storages, None, selector).await?;
        let reader = restore::named(&storages, &storage)?;
        let crypt = crate::catalog::opener(reader.as_ref(), &backup, spec.keys()).await?;
        let storage_location = spec
            .storages
            .iter()
            .find(|s| s.name == storage)
            .map(|s| s.kind.to_string())
            .unwrap_or_default();
        let dbname = backup.dbname.clone();
        let target = match target_url {
            Some(url) => {
                let (parsed, _) = crate::pg::url::parse(url).map_err(|e| {
                    Error::usage(format!(
                        "--target-url is not a valid connection string: {e}"
                    ))
                    .with_hint(
                        "write a libpq URI such as postgresql://postgres@dr-host:5432/postgres",
                    )
                })?;
                if parsed.get_password().is_some() {
                    return Err(Error::usage("--target-url contains a password").with_hint(
                        "pass it in PGPASSWORD: a password in argv shows in process listings",
                    ));
                }
                let db = crate::model::Database {
                    name: "--target-url".to_owned(),
                    url: url.to_owned(),
                    password: None,
                    password_from: None,
                    pg_bin_dir: database.pg_bin_dir.clone(),
                    secret_env: database.secret_env.clone(),
                };
                let admin = crate::pg::connect(&db, Some("postgres")).await?;
                if crate::pg::database_exists(&admin, &dbname).await? {
                    return Err(Error::refused(format!(
                        "database {dbname} exists on the server of --target-url; a drill never \
                         overwrites a database, and nothing was changed"
                    ))
                    .with_hint("drill into a server without it, or without --target-url into a throwaway cluster"));
                }
                drill::DrillTarget::Server(db)
            }
            None => {
                let major = backup
                    .server_version
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|m| m.parse().ok())
                    .unwrap_or(0);
                drill::DrillTarget::Throwaway(crate::pg::cluster::find_server(database, major)?)
            }
        };
        Ok(drill::DrillPlan {
            job: backup_job,
            timezone: bjob.timezone.clone(),
            backup,
            storage,
            storage_location,
            target,
            dbname,
            checks,
            checks_from,
            jobs: jobs.unwrap_or(default_jobs),
            crypt,
        })
    }

    /// Carries out a drill and files its record beside the backups.
    pub async fn drill(
        &self,
        plan: &drill::DrillPlan,
        cancel: &CancellationToken,
    ) -> Result<Recorded<drill::DrillOutcome>> {
        let (job, spec) = self.config.backup_job(&plan.job)?;
        let storages = self.storages_of(spec).await?;
        let storage = restore::named(&storages, &plan.storage)?.clone();
        let started_at = self.clock.now();
        let outcome =
            drill::execute(plan, &storage, self.progress.clone(), started_at, cancel).await;
        let unrecorded = self
            .record(
                job,
                "drill",
                started_at,
                outcome.failure(),
                outcome.details(),
                &storages,
            )
            .await;
        Ok(Recorded {
            value: outcome,
            unrecorded,
        })
    }

    pub async fn plan_restore(&self, job: &str, request: &RestoreRequest) -> Result<RestorePlan> {
        let (job, spec, database) = self
            .config
            .database_backup_job(job, "restore --target-db")?;
        let storages = self.storages_of(spec).await?;
        restore::plan(job, spec, database, &storages, request).await
    }

    /// The plan of a restore of files job `job` into a directory.
    pub async fn plan_restore_dir(
        &self,
        job: &str,
        selector: &catalog::Selector,
        storage: Option<&str>,
        target: &std::path::Path,
        how: files::Replace,
    ) -> Result<files::DirRestorePlan> {
        let (job, spec) = self.config.backup_job(job)?;
        if spec.database().is_some() {
            return Err(Error::usage(format!(
                "job {} backs up a database: --target-dir is for files jobs",
                job.name
            ))
            .with_hint("restore it with --target-db NAME"));
        }
        let storages = self.storages_of(spec).await?;
        files::plan(job, spec, &storages, storage, selector, target, how).await
    }

    /// Carries out a restore into a directory and stores its run record.
    pub async fn restore_dir(
        &self,
        plan: &files::DirRestorePlan,
    ) -> Result<Recorded<crate::archive::tree::Unpacked>> {
        let (job, spec) = self.config.backup_job(&plan.job)?;
        let storages = self.storages_of(spec).await?;
        let storage = restore::named(&storages, &plan.storage)?.clone();
        let started_at = self.clock.now();
        let outcome = files::execute(plan, &storage, self.progress.clone()).await;
        let mut details = json!({
            "backup_id": plan.backup.id,
            "snapshot_at": plan.backup.snapshot_at,
            "requested_at": plan.requested_at,
            "storage": plan.storage,
            "target_dir": plan.target.display().to_string(),
            "force": plan.replace.force,
            "in_place": plan.replace.in_place,
            "swapped": plan.staging.is_some(),
        });
        if let Ok(o) = &outcome {
            details["entries"] = json!(o.entries);
        }
        let failure = outcome.as_ref().err().map(|e| e.to_string());
        let unrecorded = self
            .record(job, "restore", started_at, failure, details, &[storage])
            .await;
        outcome.map(|value| Recorded { value, unrecorded })
    }

    /// Carries out a restore plan and stores a run record of it: the evidence of
    /// what was restored, when, from which backup.
    pub async fn restore(&self, plan: &RestorePlan) -> Result<Recorded<RestoreOutcome>> {
        let (job, spec, database) = self
            .config
            .database_backup_job(&plan.job, "restore --target-db")?;
        let storages = self.storages_of(spec).await?;
        let storage = restore::named(&storages, &plan.storage)?.clone();
        let started_at = self.clock.now();
        let outcome = restore::execute(plan, database, &storage, self.progress.clone()).await;
        let mut details = json!({
            "backup_id": plan.backup.id,
            "snapshot_at": plan.backup.snapshot_at,
            "requested_at": plan.requested_at,
            "storage": plan.storage,
            "target_db": plan.target_db,
            "method": plan.method.name(),
            "staging_db": plan.method.staging(),
            "replaced": plan.overwrites(),
            "jobs": plan.flags.jobs,
        });
        if let Ok(o) = &outcome {
            details["tables_checked"] = json!(o.tables_checked);
            details["rows_checked"] = json!(o.rows_checked);
            details["warnings"] = json!(o.warnings);
        }
        let failure = outcome.as_ref().err().map(|e| e.to_string());
        let unrecorded = self
            .record(job, "restore", started_at, failure, details, &[storage])
            .await;
        outcome.map(|value| Recorded { value, unrecorded })
    }

    async fn record(
        &self,
        job: &Job,
        kind: &str,
        started_at: Timestamp,
        failure: Option<String>,
        details: serde_json::Value,
        storages: &[Arc<dyn Storage>],
    ) -> Option<Error> {
        let mut record = RunRecord::begin(
            RunRecord::run_id(started_at, kind),
            &job.name,
            kind,
            Trigger::Manual,
            None,
            started_at,
        );
        record.attempts = 1;
        record.details = details;
        let outcome = if failure.is_none() {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        };
        record.end(self.clock.now(), outcome, failure);
        record.store(storages).await.err()
    }
}
