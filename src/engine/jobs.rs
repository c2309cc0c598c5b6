//! The runs of jobs, as [`Work`]: a backup, maintenance, prune or
//! restore-test job on its schedule or by `backup run`, and retention
//! carried out on a backup job's storages (by `backup prune`, a prune job, or
//! after a good backup).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::json;

use super::{Run, Stop, Work};
use crate::catalog;
use crate::error::{Error, Result};
use crate::jobs::backup::{self, BackupOutcome};
use crate::jobs::maintenance::{self, MaintenanceOutcome};
use crate::jobs::pitr::drill::PitrDrillOutcome;
use crate::jobs::restore;
use crate::jobs::restore_test::{self, RestoreTestOutcome};
use crate::jobs::{files, physical, prune};
use crate::lock::DatabaseUse;
use crate::model::{BackupId, BackupJob, BackupSource, Job, JobKind};
use crate::storage::Storage;

/// What a run of each kind of job makes.
#[derive(Debug)]
pub enum Output {
    Backup(Box<BackupOutcome>),
    Maintenance(MaintenanceOutcome),
    /// Each storage's prune, and a storage that could not be listed.
    Prune(Vec<prune::StoragePrune>, Option<String>),
    RestoreTest(Box<RestoreTestOutcome>),
    /// The restore test of a physical job: a drill to a recent moment.
    PitrTest(Box<PitrDrillOutcome>),
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
            Output::PitrTest(o) => o.failure(),
            Output::Prune(prunes, unreachable) => prune_failure(prunes, unreachable.as_deref()),
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
            Output::PitrTest(o) => {
                let mut details = o.details();
                details["point_in_time"] = true.into();
                details
            }
        }
    }
}

fn prune_failure(prunes: &[prune::StoragePrune], unreachable: Option<&str>) -> Option<String> {
    let failed = prune::failure(prunes).map(|e| e.to_string());
    match (failed, unreachable) {
        (Some(f), Some(u)) => Some(format!("{f}; {u}")),
        (f, u) => f.or_else(|| u.map(str::to_owned)),
    }
}

/// How many tables left alone a maintenance record names.
const LEFT_ALONE_KEPT: usize = 200;

/// A run of a job, on its schedule or by `backup run`.
pub struct JobRun<'a> {
    job: &'a Job,
    /// What a maintenance run has done so far: its record when it is stopped.
    journal: maintenance::Journal,
}

impl<'a> JobRun<'a> {
    pub fn new(job: &'a Job) -> Self {
        JobRun {
            job,
            journal: maintenance::Journal::default(),
        }
    }

    /// The prune that follows a good run: a backup job's, when it has a
    /// retention policy; within the job's timeout.
    pub fn prune_after(&self) -> Option<Prune<'a>> {
        match &self.job.kind {
            JobKind::Backup(spec) if spec.retention.is_some() => Some(Prune {
                job: self.job,
                spec,
                timeout: self.job.policy.timeout,
                after_backup: true,
            }),
            _ => None,
        }
    }
}

#[async_trait]
impl Work for JobRun<'_> {
    type Plan = ();
    type Made = Output;

    fn kind(&self) -> &'static str {
        self.job.kind.name()
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn tag(&self) -> String {
        self.job.run_tag()
    }
    fn locking(&self) -> Option<DatabaseUse> {
        Some(match &self.job.kind {
            JobKind::Maintenance(m) if m.is_heavy() => DatabaseUse::Exclusive,
            _ => DatabaseUse::Shared,
        })
    }
    fn timeout(&self) -> Option<Duration> {
        self.job.policy.timeout
    }
    fn retries(&self) -> (u32, Duration) {
        (self.job.policy.retries, self.job.policy.retry_delay)
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Job(&self.job.kind)
    }

    async fn plan(&self, _: &Run<'_>) -> Result<()> {
        Ok(())
    }

    async fn execute(&self, _: &(), run: &Run<'_>) -> Result<Output> {
        let engine = run.engine;
        let (job, clock) = (self.job, engine.clock().as_ref());
        match &job.kind {
            JobKind::Backup(spec) => match &spec.source {
                BackupSource::Database(_) => {
                    backup::run(
                        job,
                        spec,
                        run.storages,
                        clock,
                        engine.progress().clone(),
                        run.request.accept_new_source,
                    )
                    .await
                }
                BackupSource::Cluster { .. } => {
                    physical::run(
                        job,
                        spec,
                        run.storages,
                        clock,
                        engine.progress().clone(),
                        run.request.accept_new_source,
                        run.request.full,
                    )
                    .await
                }
                BackupSource::Directory(dir) => {
                    files::run(
                        job,
                        spec,
                        dir,
                        run.storages,
                        clock,
                        engine.progress().clone(),
                    )
                    .await
                }
            }
            .map(|o| Output::Backup(Box::new(o))),
            JobKind::Maintenance(spec) => maintenance::run(job, spec, clock, &self.journal)
                .await
                .map(Output::Maintenance),
            JobKind::RestoreTest(spec)
                if engine.config.physical_job(&spec.backup_job, "").is_ok() =>
            {
                let (bjob, _) = engine.config.backup_job(&spec.backup_job)?;
                let storages = engine.open_all(&spec.storages).await?;
                let drill = crate::jobs::pitr::drill::plan(
                    &engine.config,
                    &bjob.name,
                    crate::jobs::pitr::drill::When::Recent,
                    spec.checks.clone(),
                    vec![job.name.clone()],
                    &storages,
                )
                .await?;
                let storage = restore::named(&storages, &drill.pitr.storage)?;
                let outcome = crate::jobs::pitr::drill::execute(
                    &drill,
                    storage,
                    engine.progress().clone(),
                    clock.now(),
                    &run.request.cancel,
                )
                .await;
                // A failure at any step is in the outcome with the steps
                // before it: the record keeps them all.
                Ok(Output::PitrTest(Box::new(outcome)))
            }
            JobKind::RestoreTest(spec) => {
                let backup_job = engine.config.backup_job(&spec.backup_job)?;
                let plan =
                    restore_test::plan(job, backup_job, spec, run.storages, clock.now()).await?;
                let storage = restore::named(run.storages, &plan.storage)?;
                restore_test::execute(&plan, &spec.target, storage, engine.progress().clone())
                    .await
                    .map(|o| Output::RestoreTest(Box::new(o)))
            }
            JobKind::Prune(spec) => {
                let (bjob, bspec) = engine.config.backup_job(&spec.backup_job)?;
                let prune = Prune::new(bjob, bspec)?;
                let storages = engine.open_all(&bspec.storages).await?;
                let inner = Run {
                    storages: &storages,
                    ..*run
                };
                let plan = prune.plan(&inner).await?;
                let made = prune.execute(&plan, &inner).await?;
                Ok(Output::Prune(
                    made.prunes,
                    made.unreachable.map(|e| e.to_string()),
                ))
            }
        }
    }

    fn failure(&self, made: &Output) -> Option<String> {
        made.failure()
    }

    fn details(&self, _: Option<&()>, made: Option<&Output>) -> serde_json::Value {
        match made {
            Some(made) => made.details(),
            // What a stopped run had done is evidence too.
            None => self.journal.details().unwrap_or_else(|| json!({})),
        }
    }
}

/// Retention carried out on every storage of a backup job: by `backup
/// prune`, a prune job, or after a good backup.
pub struct Prune<'a> {
    job: &'a Job,
    spec: &'a BackupJob,
    timeout: Option<Duration>,
    after_backup: bool,
}

/// Each storage's retention plan, planned before anything is deleted.
pub struct PrunePlan {
    pub storages: Vec<PlannedStorage>,
    /// Whether a run of the job holds its lock: then no incomplete backup is
    /// deleted, it may be the one being written.
    running: bool,
    /// A storage that could not be listed.
    pub unreachable: Option<Error>,
}

pub struct PlannedStorage {
    pub storage: Arc<dyn Storage>,
    pub prune: prune::StoragePrune,
    stored: std::collections::BTreeMap<BackupId, catalog::StoredBackup>,
}

/// What a prune did in each storage.
#[derive(Debug)]
pub struct Pruned {
    pub prunes: Vec<prune::StoragePrune>,
    pub unreachable: Option<Error>,
}

impl<'a> Prune<'a> {
    /// The prune of backup job `job`, which must have a retention policy.
    pub fn new(job: &'a Job, spec: &'a BackupJob) -> Result<Self> {
        if spec.retention.is_none() {
            let name = &job.name;
            return Err(
                Error::usage(format!("job {name} has no retention policy")).with_hint(format!(
                    "add e.g. retention = {{ keep_daily = 30, max_age = \"30d\" }} to [jobs.{name}]"
                )),
            );
        }
        Ok(Prune {
            job,
            spec,
            timeout: None,
            after_backup: false,
        })
    }
}

#[async_trait]
impl Work for Prune<'_> {
    type Plan = PrunePlan;
    type Made = Pruned;

    fn kind(&self) -> &'static str {
        "prune"
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Prune
    }
    fn announces_success(&self) -> bool {
        !self.after_backup
    }

    async fn plan(&self, run: &Run<'_>) -> Result<PrunePlan> {
        let name = &self.job.name;
        let Some(policy) = &self.spec.retention else {
            return Err(Error::internal(format!(
                "job {name} has no retention policy"
            )));
        };
        // A backup that runs longer than incomplete_after must not lose its
        // objects under it: while the job's lock is held, no incomplete
        // backup is deleted. A peek, not a hold: prune never delays a run.
        // The lock is where the run takes it (`Job::database`), whatever
        // kind of backup job this is.
        let database = self.job.database().map(|d| d.as_ref());
        let running = match run.engine.locks().running(database, name).await {
            Ok(running) => running,
            Err(e) => {
                tracing::warn!(
                    "cannot tell whether job {name} is running ({e}); incomplete backups are kept"
                );
                true
            }
        };
        let facts = prune::job_facts(run.storages, name, running).await;
        let mut planned = Vec::new();
        let mut unreachable = None;
        let now = run.engine.clock().now();
        for storage in run.storages {
            match prune::plan(storage.as_ref(), self.job, self.spec, policy, now, &facts).await {
                Ok((prune, stored)) => {
                    for warning in &prune.warnings {
                        tracing::warn!("{warning}");
                    }
                    planned.push(PlannedStorage {
                        storage: storage.clone(),
                        prune,
                        stored,
                    });
                }
                Err(e) => {
                    let e = e.context(format!("job {name}: storage {}", storage.name()));
                    tracing::warn!("{e}");
                    unreachable.get_or_insert(e);
                }
            }
        }
        match unreachable {
            Some(e) if planned.is_empty() => Err(e),
            unreachable => Ok(PrunePlan {
                storages: planned,
                running,
                unreachable,
            }),
        }
    }

    async fn execute(&self, plan: &PrunePlan, run: &Run<'_>) -> Result<Pruned> {
        let name = &self.job.name;
        let mut prunes = Vec::with_capacity(plan.storages.len());
        for planned in &plan.storages {
            let started_at = run.engine.clock().now();
            let unfinished_before = (!plan.running).then(|| {
                jiff::SignedDuration::try_from(self.spec.incomplete_after)
                    .ok()
                    .and_then(|d| started_at.checked_sub(d).ok())
                    .unwrap_or(Timestamp::MIN)
            });
            let mut p = planned.prune.clone();
            prune::execute(
                &planned.storage,
                name,
                &mut p,
                &planned.stored,
                unfinished_before,
            )
            .await;
            tracing::info!("prune of job {name}: {}", prune::summary(&p));
            prunes.push(p);
        }
        Ok(Pruned {
            prunes,
            unreachable: plan.unreachable.as_ref().map(Error::again),
        })
    }

    fn failure(&self, made: &Pruned) -> Option<String> {
        let unreachable = made.unreachable.as_ref().map(|e| e.to_string());
        prune_failure(&made.prunes, unreachable.as_deref())
    }

    fn details(&self, _: Option<&PrunePlan>, made: Option<&Pruned>) -> serde_json::Value {
        json!({ "storages": made.map(|m| &m.prunes) })
    }
}
