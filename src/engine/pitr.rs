//! The work of point-in-time recovery, as [`Work`]: a physical job's base
//! backup restored into a directory and recovered to a moment (`backup
//! restore --target-dir` of a physical job), and its drill. Both are filed
//! under the physical job like the restores and drills of logical ones.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::{Run, Stop, Work};
use crate::error::Result;
use crate::jobs::pitr::drill::{self, PitrDrillOutcome, PitrDrillPlan, When};
use crate::jobs::pitr::plan::{self, PitrPlan, PitrRequest};
use crate::jobs::pitr::run::{self, PitrOutcome, Start};
use crate::jobs::restore;
use crate::model::{BackupJob, Check, Database, Job, WalSettings};
use crate::storage::Storage;

/// `backup restore --job PHYSICAL (--at T | --latest) --target-dir DIR`.
pub struct PitrRestore<'a> {
    job: &'a Job,
    spec: &'a BackupJob,
    database: &'a Database,
    wal: &'a WalSettings,
    request: PitrRequest,
    /// `--start`: recover, prove, and leave the server running.
    start: Option<Start>,
}

impl<'a> PitrRestore<'a> {
    pub fn new(
        config: &'a crate::model::Config,
        job: &str,
        request: PitrRequest,
        start: bool,
    ) -> Result<Self> {
        let (job, spec, database, wal) = config.physical_job(job, "restore --target-dir")?;
        let start = start.then(|| Start {
            checks: checks_of(config, &job.name),
            checks_db: drill::database_name(&database.url),
            user: drill::user_name(&database.url),
        });
        Ok(PitrRestore {
            job,
            spec,
            database,
            wal,
            request,
            start,
        })
    }

    pub fn target_dir(&self) -> &std::path::Path {
        &self.request.dir
    }
}

/// The checks of the restore-test jobs of backup job `job`.
pub fn checks_of(config: &crate::model::Config, job: &str) -> Vec<Check> {
    let mut checks: Vec<Check> = Vec::new();
    for j in config.jobs.values() {
        if let crate::model::JobKind::RestoreTest(t) = &j.kind
            && t.backup_job == job
        {
            for c in &t.checks {
                if !checks.iter().any(|have| have.sql == c.sql) {
                    checks.push(c.clone());
                }
            }
        }
    }
    checks
}

#[async_trait]
impl Work for PitrRestore<'_> {
    type Plan = PitrPlan;
    type Made = PitrOutcome;

    fn kind(&self) -> &'static str {
        "restore"
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn stop(&self) -> Stop<'_> {
        Stop::RestoreDir {
            target: &self.request.dir,
            force: self.request.force,
            in_place: false,
        }
    }

    async fn plan(&self, run: &Run<'_>) -> Result<PitrPlan> {
        plan::plan(
            self.job,
            self.spec,
            self.database,
            self.wal,
            run.storages,
            &self.request,
        )
        .await
    }

    async fn execute(&self, plan: &PitrPlan, run: &Run<'_>) -> Result<PitrOutcome> {
        let storage = restore::named(run.storages, &plan.storage)?.clone();
        run::execute(
            plan,
            &storage,
            run.engine.progress().clone(),
            self.start.as_ref(),
            &run.request.cancel,
        )
        .await
    }

    fn failure(&self, _: &PitrOutcome) -> Option<String> {
        None
    }

    fn details(&self, plan: Option<&PitrPlan>, made: Option<&PitrOutcome>) -> serde_json::Value {
        let Some(plan) = plan else {
            return json!({ "target_dir": self.request.dir });
        };
        let mut details = plan.json();
        details["point_in_time"] = true.into();
        details["backup_id"] = json!(plan.backup.id);
        if let Some(o) = made {
            details["outcome"] = serde_json::to_value(o).unwrap_or_default();
        }
        details
    }

    fn records_in(&self, plan: &PitrPlan, storages: &[Arc<dyn Storage>]) -> Vec<Arc<dyn Storage>> {
        storages
            .iter()
            .filter(|s| s.name() == plan.storage)
            .cloned()
            .collect()
    }
}

/// `backup drill --job PHYSICAL`, and restore-test jobs of physical jobs.
pub struct PitrDrill<'a> {
    job: &'a Job,
    config: &'a crate::model::Config,
    when: When,
    checks: Vec<Check>,
    checks_from: Vec<String>,
    /// The kind its record carries: `drill`, or `restore-test` when run
    /// for a restore-test job.
    kind: &'static str,
}

impl<'a> PitrDrill<'a> {
    pub fn new(
        config: &'a crate::model::Config,
        job: &str,
        when: When,
        checks: Vec<Check>,
        checks_from: Vec<String>,
        kind: &'static str,
    ) -> Result<Self> {
        let (job, _, _, _) = config.physical_job(job, "a drill")?;
        Ok(PitrDrill {
            job,
            config,
            when,
            checks,
            checks_from,
            kind,
        })
    }
}

#[async_trait]
impl Work for PitrDrill<'_> {
    type Plan = PitrDrillPlan;
    type Made = PitrDrillOutcome;

    fn kind(&self) -> &'static str {
        self.kind
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Drill { on_server: false }
    }
    fn stops_itself(&self) -> bool {
        true
    }

    async fn plan(&self, run: &Run<'_>) -> Result<PitrDrillPlan> {
        drill::plan(
            self.config,
            &self.job.name,
            self.when,
            self.checks.clone(),
            self.checks_from.clone(),
            run.storages,
        )
        .await
    }

    async fn execute(&self, plan: &PitrDrillPlan, run: &Run<'_>) -> Result<PitrDrillOutcome> {
        let storage = restore::named(run.storages, &plan.pitr.storage)?.clone();
        Ok(drill::execute(
            plan,
            &storage,
            run.engine.progress().clone(),
            run.engine.clock().now(),
            &run.request.cancel,
        )
        .await)
    }

    fn failure(&self, outcome: &PitrDrillOutcome) -> Option<String> {
        outcome.failure()
    }

    fn details(
        &self,
        plan: Option<&PitrDrillPlan>,
        outcome: Option<&PitrDrillOutcome>,
    ) -> serde_json::Value {
        let mut details = outcome.map_or_else(|| json!({}), PitrDrillOutcome::details);
        if let Some(plan) = plan {
            details["point_in_time"] = true.into();
            details["wal_first"] = plan.pitr.wal.first.clone().into();
            details["wal_last"] = plan.pitr.wal.last.clone().into();
        }
        details
    }
}
