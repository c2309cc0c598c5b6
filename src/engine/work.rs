//! Every kind of work the engine runs, as a [`Work`]: a job's run (backup,
//! maintenance, prune and restore-test jobs), and the commands that act on a
//! backup job — prune, verify, drill, restore (of a database or a directory),
//! pin and unpin. Each says how it plans, what it locks, what it executes and
//! what its record keeps; the engine does the rest the same way for all.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::json;

use super::{Run, Stop, Work};
use crate::catalog::{self, ListedBackup};
use crate::error::{Error, Kind, Result};
use crate::jobs::backup::{self, BackupOutcome};
use crate::jobs::drill::{self, DrillOutcome, DrillPlan, DrillRequest};
use crate::jobs::maintenance::{self, MaintenanceOutcome};
use crate::jobs::restore::{self, RestoreOutcome, RestorePlan, RestoreRequest};
use crate::jobs::restore_test::{self, RestoreTestOutcome};
use crate::jobs::{files, prune, verify};
use crate::lock::DatabaseUse;
use crate::model::{BackupId, BackupJob, BackupSource, Job, JobKind};
use crate::storage::{self, Storage};

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
        let database = self.spec.database().map(|d| d.as_ref());
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

/// `backup verify`: backups read back and checked against their manifests.
pub struct Verify<'a> {
    job: &'a Job,
    spec: &'a BackupJob,
    which: verify::Selection,
    only: Option<String>,
}

impl<'a> Verify<'a> {
    /// A verify of backup job `name`, in every storage or only `only`.
    pub fn new(
        config: &'a crate::model::Config,
        name: &str,
        which: verify::Selection,
        only: Option<&str>,
    ) -> Result<Self> {
        let (job, spec) = config.backup_job(name)?;
        if let Some(only) = only
            && !spec.storages.iter().any(|s| s.name == only)
        {
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
        Ok(Verify {
            job,
            spec,
            which,
            only: only.map(str::to_owned),
        })
    }
}

#[async_trait]
impl Work for Verify<'_> {
    type Plan = verify::VerifyPlan;
    type Made = Vec<verify::BackupCheck>;

    fn kind(&self) -> &'static str {
        "verify"
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Nothing
    }

    async fn plan(&self, run: &Run<'_>) -> Result<verify::VerifyPlan> {
        let storages: Vec<_> = run
            .storages
            .iter()
            .filter(|s| self.only.as_deref().is_none_or(|only| s.name() == only))
            .cloned()
            .collect();
        verify::plan(&self.job.name, self.spec, &storages, &self.which).await
    }

    async fn execute(
        &self,
        plan: &verify::VerifyPlan,
        run: &Run<'_>,
    ) -> Result<Vec<verify::BackupCheck>> {
        Ok(verify::execute(plan, self.spec.keys(), run.engine.progress()).await)
    }

    fn failure(&self, checks: &Vec<verify::BackupCheck>) -> Option<String> {
        verify::failure(checks)
    }

    fn details(
        &self,
        _: Option<&verify::VerifyPlan>,
        checks: Option<&Vec<verify::BackupCheck>>,
    ) -> serde_json::Value {
        json!({ "backups": checks })
    }

    fn records_in(
        &self,
        plan: &verify::VerifyPlan,
        storages: &[Arc<dyn Storage>],
    ) -> Vec<Arc<dyn Storage>> {
        only_named(storages, &plan.storages)
    }
}

fn only_named(storages: &[Arc<dyn Storage>], names: &[String]) -> Vec<Arc<dyn Storage>> {
    storages
        .iter()
        .filter(|s| names.iter().any(|n| n == s.name()))
        .cloned()
        .collect()
}

/// `backup drill`: a disaster-recovery rehearsal, filed beside the backups.
pub struct Drill<'a> {
    job: &'a Job,
    request: DrillRequest,
}

impl<'a> Drill<'a> {
    pub fn new(config: &'a crate::model::Config, request: DrillRequest) -> Result<Self> {
        let (job, _) = config.backup_job(&request.backup_job)?;
        Ok(Drill { job, request })
    }
}

#[async_trait]
impl Work for Drill<'_> {
    type Plan = DrillPlan;
    type Made = DrillOutcome;

    fn kind(&self) -> &'static str {
        "drill"
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Drill {
            on_server: self.request.target_url.is_some(),
        }
    }
    /// Its teardown must run: a throwaway cluster is stopped and removed.
    fn stops_itself(&self) -> bool {
        true
    }

    async fn plan(&self, run: &Run<'_>) -> Result<DrillPlan> {
        drill::plan(&run.engine.config, &self.request, run.storages).await
    }

    async fn execute(&self, plan: &DrillPlan, run: &Run<'_>) -> Result<DrillOutcome> {
        let storage = restore::named(run.storages, &plan.storage)?.clone();
        let engine = run.engine;
        let outcome = drill::execute(
            plan,
            &storage,
            engine.progress().clone(),
            engine.clock().now(),
            &run.request.cancel,
        )
        .await;
        Ok(outcome)
    }

    fn failure(&self, outcome: &DrillOutcome) -> Option<String> {
        outcome.failure()
    }

    fn details(&self, _: Option<&DrillPlan>, outcome: Option<&DrillOutcome>) -> serde_json::Value {
        outcome.map_or_else(|| json!({}), DrillOutcome::details)
    }
}

/// `backup restore --target-db`: a backup restored into a database and proven.
pub struct Restore<'a> {
    job: &'a Job,
    spec: &'a BackupJob,
    database: &'a crate::model::Database,
    request: RestoreRequest,
}

impl<'a> Restore<'a> {
    pub fn new(
        config: &'a crate::model::Config,
        job: &str,
        request: RestoreRequest,
    ) -> Result<Self> {
        let (job, spec, database) = config.database_backup_job(job, "restore --target-db")?;
        Ok(Restore {
            job,
            spec,
            database,
            request,
        })
    }
}

#[async_trait]
impl Work for Restore<'_> {
    type Plan = RestorePlan;
    type Made = RestoreOutcome;

    fn kind(&self) -> &'static str {
        "restore"
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Restore {
            target_db: &self.request.target_db,
            in_place: self.request.in_place,
        }
    }

    async fn plan(&self, run: &Run<'_>) -> Result<RestorePlan> {
        restore::plan(
            self.job,
            self.spec,
            self.database,
            run.storages,
            &self.request,
        )
        .await
    }

    async fn execute(&self, plan: &RestorePlan, run: &Run<'_>) -> Result<RestoreOutcome> {
        let storage = restore::named(run.storages, &plan.storage)?.clone();
        restore::execute(plan, self.database, &storage, run.engine.progress().clone()).await
    }

    fn failure(&self, _: &RestoreOutcome) -> Option<String> {
        None
    }

    fn details(
        &self,
        plan: Option<&RestorePlan>,
        outcome: Option<&RestoreOutcome>,
    ) -> serde_json::Value {
        let Some(plan) = plan else {
            return json!({ "target_db": self.request.target_db });
        };
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
        if let Some(o) = outcome {
            details["tables_checked"] = json!(o.tables_checked);
            details["rows_checked"] = json!(o.rows_checked);
            details["warnings"] = json!(o.warnings);
        }
        details
    }

    /// The storage read: the record is evidence of what was restored from where.
    fn records_in(
        &self,
        plan: &RestorePlan,
        storages: &[Arc<dyn Storage>],
    ) -> Vec<Arc<dyn Storage>> {
        only_named(storages, std::slice::from_ref(&plan.storage))
    }
}

/// `backup restore --target-dir`: a files job's backup written into a directory.
pub struct RestoreDir<'a> {
    job: &'a Job,
    spec: &'a BackupJob,
    selector: catalog::Selector,
    storage: Option<String>,
    target: std::path::PathBuf,
    how: files::Replace,
}

impl<'a> RestoreDir<'a> {
    pub fn new(
        config: &'a crate::model::Config,
        job: &str,
        selector: catalog::Selector,
        storage: Option<String>,
        target: &std::path::Path,
        how: files::Replace,
    ) -> Result<Self> {
        let (job, spec) = config.backup_job(job)?;
        if spec.database().is_some() {
            return Err(Error::usage(format!(
                "job {} backs up a database: --target-dir is for files jobs",
                job.name
            ))
            .with_hint("restore it with --target-db NAME"));
        }
        Ok(RestoreDir {
            job,
            spec,
            selector,
            storage,
            target: target.to_owned(),
            how,
        })
    }
}

#[async_trait]
impl Work for RestoreDir<'_> {
    type Plan = files::DirRestorePlan;
    type Made = crate::archive::tree::Unpacked;

    fn kind(&self) -> &'static str {
        "restore"
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn stop(&self) -> Stop<'_> {
        Stop::RestoreDir {
            target: &self.target,
            force: self.how.force,
            in_place: self.how.in_place,
        }
    }

    async fn plan(&self, run: &Run<'_>) -> Result<files::DirRestorePlan> {
        files::plan(
            self.job,
            self.spec,
            run.storages,
            self.storage.as_deref(),
            &self.selector,
            &self.target,
            self.how,
        )
        .await
    }

    async fn execute(
        &self,
        plan: &files::DirRestorePlan,
        run: &Run<'_>,
    ) -> Result<crate::archive::tree::Unpacked> {
        let storage = restore::named(run.storages, &plan.storage)?.clone();
        files::execute(plan, &storage, run.engine.progress().clone()).await
    }

    fn failure(&self, _: &crate::archive::tree::Unpacked) -> Option<String> {
        None
    }

    fn details(
        &self,
        plan: Option<&files::DirRestorePlan>,
        outcome: Option<&crate::archive::tree::Unpacked>,
    ) -> serde_json::Value {
        let Some(plan) = plan else {
            return json!({ "target_dir": self.target.display().to_string() });
        };
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
        if let Some(o) = outcome {
            details["entries"] = json!(o.entries);
        }
        details
    }

    fn records_in(
        &self,
        plan: &files::DirRestorePlan,
        storages: &[Arc<dyn Storage>],
    ) -> Vec<Arc<dyn Storage>> {
        only_named(storages, std::slice::from_ref(&plan.storage))
    }
}

/// `backup pin` (with a reason) and `backup unpin` (without): a backup kept
/// out of prune's reach in every storage that holds it complete, or let go.
pub struct Pin<'a> {
    job: &'a Job,
    id: BackupId,
    reason: Option<String>,
}

impl<'a> Pin<'a> {
    pub fn new(
        config: &'a crate::model::Config,
        job: &str,
        id: BackupId,
        reason: Option<&str>,
    ) -> Result<Self> {
        let (job, _) = config.backup_job(job)?;
        Ok(Pin {
            job,
            id,
            reason: reason.map(str::to_owned),
        })
    }
}

#[async_trait]
impl Work for Pin<'_> {
    type Plan = ();
    /// The storages changed.
    type Made = Vec<String>;

    fn kind(&self) -> &'static str {
        if self.reason.is_some() {
            "pin"
        } else {
            "unpin"
        }
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Nothing
    }

    async fn plan(&self, _: &Run<'_>) -> Result<()> {
        Ok(())
    }

    async fn execute(&self, _: &(), run: &Run<'_>) -> Result<Vec<String>> {
        let (name, id) = (&self.job.name, &self.id);
        let mut changed = Vec::new();
        for storage in run.storages {
            let manifest = catalog::backup_prefix(name, id)?.join(catalog::MANIFEST)?;
            match catalog::read_manifest(storage.as_ref(), &manifest).await {
                Ok(_) => {}
                Err(e) if e.kind() == Kind::NotFound => continue,
                // A copy left unpinned by a passing error would be pruned.
                Err(e) => return Err(e.context(format!("job {name}: storage {}", storage.name()))),
            }
            let key = catalog::pin_key(name, id)?;
            match &self.reason {
                Some(reason) => {
                    let pin = catalog::Pin {
                        pinned_at: run.engine.clock().now(),
                        reason: reason.clone(),
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

    fn failure(&self, _: &Vec<String>) -> Option<String> {
        None
    }

    fn details(&self, _: Option<&()>, changed: Option<&Vec<String>>) -> serde_json::Value {
        json!({
            "backup_id": self.id,
            "reason": self.reason,
            "storages": changed,
        })
    }
}

impl super::Engine {
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
            let storages = self.open_all(&spec.storages).await?;
            out.push((job, catalog::list_job(&storages, &job.name).await?));
        }
        Ok(out)
    }
}
