//! The engine runs jobs and restores: it opens storages, hands each job what it
//! needs, and leaves a run record in storage whether the run worked or not.
//!
//! Scheduling, locks, timeouts and retries of whole runs belong here too as
//! they arrive; jobs stay ignorant of when and how often they run.

use std::sync::Arc;

use jiff::Timestamp;
use serde_json::json;

use crate::catalog::{self, Manifest};
use crate::error::{Error, Result};
use crate::jobs::backup::{self, BackupOutcome};
use crate::jobs::restore::{self, RestoreOutcome, RestorePlan, RestoreRequest};
use crate::model::{BackupJob, Clock, Config, Job, JobKind};
use crate::report::{Progress, RunRecord};
use crate::storage::{self, Storage};

pub struct Engine {
    pub config: Config,
    clock: Arc<dyn Clock>,
    progress: Arc<dyn Progress>,
}

/// A complete backup as listed: one row even when several storages hold it.
#[derive(Debug, Clone)]
pub struct ListedBackup {
    pub manifest: Manifest,
    pub storages: Vec<String>,
}

impl Engine {
    pub fn new(config: Config, clock: Arc<dyn Clock>, progress: Arc<dyn Progress>) -> Self {
        Engine {
            config,
            clock,
            progress,
        }
    }

    async fn storages_of(&self, spec: &BackupJob) -> Result<Vec<Arc<dyn Storage>>> {
        let mut storages = Vec::with_capacity(spec.storages.len());
        for s in &spec.storages {
            storages.push(storage::open(s).await?);
        }
        Ok(storages)
    }

    /// Runs one job now and stores its run record.
    pub async fn run_backup(&self, name: &str) -> Result<BackupOutcome> {
        let (job, spec) = self.config.backup_job(name)?;
        let storages = self.storages_of(spec).await?;
        let started_at = self.clock.now();
        let outcome = backup::run(
            job,
            spec,
            &storages,
            self.clock.as_ref(),
            self.progress.clone(),
        )
        .await;
        let details = match &outcome {
            Ok(o) => json!({
                "backup_id": o.manifest.id,
                "snapshot_at": o.manifest.snapshot_at,
                "raw_size": o.manifest.raw_size(),
                "stored_size": o.manifest.stored_size(),
                "tables": o.manifest.tables.len(),
                "stored_in": o.stored_in,
                "failed_storages": o.failed.iter().map(|(s, e)| json!({"storage": s, "error": e.to_string()})).collect::<Vec<_>>(),
            }),
            Err(_) => json!({}),
        };
        let failure = match &outcome {
            Ok(o) if !o.failed.is_empty() => Some(format!("{} storage(s) failed", o.failed.len())),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        self.record(job, "backup", started_at, failure, details, &storages)
            .await;
        outcome
    }

    /// Every complete backup of the backup jobs named (all when `None`), newest first.
    pub async fn list(&self, job: Option<&str>) -> Result<Vec<(&Job, Vec<ListedBackup>)>> {
        let jobs: Vec<&Job> = match job {
            Some(name) => vec![self.config.job(name)?],
            None => self.config.jobs.values().collect(),
        };
        let mut out = Vec::new();
        for job in jobs {
            let JobKind::Backup(spec) = &job.kind;
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
                for manifest in listing.backups {
                    match listed.iter_mut().find(|l| l.manifest.id == manifest.id) {
                        Some(l) => l.storages.push(storage.name().to_owned()),
                        None => listed.push(ListedBackup {
                            manifest,
                            storages: vec![storage.name().to_owned()],
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

    pub async fn plan_restore(&self, job: &str, request: &RestoreRequest) -> Result<RestorePlan> {
        let (job, spec) = self.config.backup_job(job)?;
        let storages = self.storages_of(spec).await?;
        restore::plan(job, spec, &storages, request).await
    }

    /// Carries out a restore plan and stores a run record of it: the evidence of
    /// what was restored, when, from which backup.
    pub async fn restore(&self, plan: &RestorePlan) -> Result<RestoreOutcome> {
        let (job, spec) = self.config.backup_job(&plan.job)?;
        let storages = self.storages_of(spec).await?;
        let storage = storages
            .iter()
            .find(|s| s.name() == plan.storage)
            .cloned()
            .ok_or_else(|| Error::internal(format!("storage {} vanished", plan.storage)))?;
        let started_at = self.clock.now();
        let outcome = restore::execute(plan, spec, &storage, self.progress.clone()).await;
        let mut details = json!({
            "backup_id": plan.backup.id,
            "snapshot_at": plan.backup.snapshot_at,
            "requested_at": plan.requested_at,
            "storage": plan.storage,
            "target_db": plan.target_db,
            "clean": plan.flags.clean,
            "jobs": plan.flags.jobs,
        });
        if let Ok(o) = &outcome {
            details["tables_checked"] = json!(o.tables_checked);
            details["rows_checked"] = json!(o.rows_checked);
        }
        let failure = outcome.as_ref().err().map(|e| e.to_string());
        self.record(job, "restore", started_at, failure, details, &[storage])
            .await;
        outcome
    }

    async fn record(
        &self,
        job: &Job,
        kind: &str,
        started_at: Timestamp,
        failure: Option<String>,
        details: serde_json::Value,
        storages: &[Arc<dyn Storage>],
    ) {
        let record = RunRecord {
            format: 1,
            run_id: RunRecord::run_id(started_at, kind),
            job: job.name.clone(),
            kind: kind.to_owned(),
            started_at,
            finished_at: self.clock.now(),
            succeeded: failure.is_none(),
            error: failure,
            details,
        };
        record.store(storages).await;
    }
}
