//! The commands that act on a backup job, as [`Work`]: verify, drill,
//! restore (of a database or a directory), pin and unpin; and the listing
//! of a job's backups. Each says how it plans, what it executes and what its
//! record keeps; the engine runs them all the same way.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::{Run, Stop, Work};
use crate::catalog::{self, ListedBackup};
use crate::error::{Error, Kind, Result};
use crate::jobs::drill::{self, DrillOutcome, DrillPlan, DrillRequest};
use crate::jobs::restore::{self, RestoreOutcome, RestorePlan, RestoreRequest};
use crate::jobs::{files, verify};
use crate::model::{BackupId, BackupJob, Job, JobKind};
use crate::storage::{self, Storage};

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
            "source_server_version": plan.backup.server_version,
        });
        if let Some(o) = outcome {
            details["target_server_version"] = json!(o.target_server);
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
    /// The storages that hold the backup complete.
    type Plan = Vec<String>;
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
        Stop::Pin
    }

    async fn plan(&self, run: &Run<'_>) -> Result<Vec<String>> {
        let (name, id) = (&self.job.name, &self.id);
        let mut holding = Vec::new();
        for storage in run.storages {
            let manifest = catalog::backup_prefix(name, id)?.join(catalog::MANIFEST)?;
            match catalog::read_manifest(storage.as_ref(), &manifest).await {
                Ok(_) => holding.push(storage.name().to_owned()),
                Err(e) if e.kind() == Kind::NotFound => {}
                // A copy left unpinned by a passing error would be pruned.
                Err(e) => return Err(e.context(format!("job {name}: storage {}", storage.name()))),
            }
        }
        if holding.is_empty() {
            return Err(Error::not_found(format!(
                "job {name} has no complete backup {id} in any of its storages"
            ))
            .with_hint(format!("`backup list --job {name}` shows its backups")));
        }
        Ok(holding)
    }

    async fn execute(&self, holding: &Vec<String>, run: &Run<'_>) -> Result<Vec<String>> {
        let key = catalog::pin_key(&self.job.name, &self.id)?;
        let mut changed = Vec::new();
        for storage in run.storages {
            if !holding.iter().any(|h| h == storage.name()) {
                continue;
            }
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
        Ok(changed)
    }

    fn failure(&self, _: &Vec<String>) -> Option<String> {
        None
    }

    fn details(&self, _: Option<&Vec<String>>, changed: Option<&Vec<String>>) -> serde_json::Value {
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
