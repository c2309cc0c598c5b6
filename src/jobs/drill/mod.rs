//! `backup drill`: the disaster-recovery rehearsal a team runs from a fresh
//! host with only the job file and storage access.
//!
//! Plan first (which backup, from where, into what, checked how), then: a
//! throwaway cluster (or the server of `--target-url`), the backup's globals,
//! the database, the same proof as a restore test, and a teardown that runs
//! whatever happened before it. What it measured goes into a Markdown report
//! an auditor can read: RTO (start to verified data) and RPO (now minus the
//! backup's snapshot), each step's time, every check with its numbers.
//!
//! This file holds what a drill plans and what it measured; `plan.rs` makes
//! the plan (and prints it), `execute.rs` carries it out step by step,
//! `globals.rs` brings the backup's roles to the target without touching
//! the ones there, and `markdown.rs` writes the report.

mod execute;
mod markdown;
mod plan;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::catalog::{Manifest, Role};
use crate::jobs::proof::Proof;
use crate::model::{Check, Database};
use crate::pg::cluster::ServerInstall;

pub use execute::execute;
pub(crate) use execute::step;
pub use markdown::markdown;
pub(crate) use markdown::{body as report_body, seconds};
pub use plan::{DrillRequest, plan};

/// Where a drill restores.
#[derive(Debug, Clone)]
pub enum DrillTarget {
    /// A cluster of its own, made and removed by the drill.
    Throwaway(ServerInstall),
    /// A server the operator provides (`--target-url`).
    Server(Database),
}

#[derive(Debug, Clone)]
pub struct DrillPlan {
    pub job: String,
    pub timezone: TimeZone,
    pub backup: Manifest,
    pub storage: String,
    /// `local /var/backups`, `s3://bucket at ...`.
    pub storage_location: String,
    pub target: DrillTarget,
    /// The database created on the target: the backup's own name.
    pub dbname: String,
    pub checks: Vec<Check>,
    /// The restore-test jobs whose checks these are.
    pub checks_from: Vec<String>,
    /// Parallel `pg_restore` jobs.
    pub jobs: u32,
    /// How the backup's objects open.
    pub crypt: crate::archive::crypt::Crypt,
}

impl DrillPlan {
    fn has_globals(&self) -> bool {
        self.backup.object(Role::Globals).is_some()
    }

    pub fn target_description(&self) -> String {
        match &self.target {
            DrillTarget::Throwaway(install) => format!(
                "a throwaway cluster ({}, {}) on 127.0.0.1, removed afterwards",
                install.version,
                install.bindir.display()
            ),
            DrillTarget::Server(db) => format!("the server of {}", db.url),
        }
    }
}

/// A step of the drill and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: String,
    pub seconds: f64,
    /// `ok`, or what went wrong.
    pub result: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    pub backup_job: String,
    pub backup_id: String,
    pub snapshot_at: Timestamp,
    pub storage: String,
    pub target: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// From the start of the drill to verified data.
    pub rto_seconds: Option<f64>,
    /// From the backup's snapshot to the start of the drill: the data a
    /// disaster now would lose.
    pub rpo_seconds: f64,
    pub steps: Vec<StepTiming>,
    #[serde(flatten)]
    pub proof: Proof,
    /// The step that failed and why; `None` when the drill got to its checks.
    pub error: Option<String>,
    #[serde(skip)]
    pub error_kind: Option<crate::error::Kind>,
    pub warnings: Vec<String>,
}

impl DrillOutcome {
    pub fn failure(&self) -> Option<String> {
        self.error
            .clone()
            .or_else(|| self.proof.failure())
            .map(|why| {
                format!(
                    "the drill of backup {} (job {}) failed: {why}",
                    self.backup_id, self.backup_job
                )
            })
    }

    pub fn details(&self) -> serde_json::Value {
        Proof::record_of(self)
    }
}
