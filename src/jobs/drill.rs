//! `backup drill`: the disaster-recovery rehearsal a team runs from a fresh
//! host with only the job file and storage access.
//!
//! Plan first (which backup, from where, into what, checked how), then: a
//! throwaway cluster (or the server of `--target-url`), the backup's globals,
//! the database, the same proof as a restore test, and a teardown that runs
//! whatever happened before it. What it measured goes into a Markdown report
//! an auditor can read: RTO (start to verified data) and RPO (now minus the
//! backup's snapshot), each step's time, every check with its numbers.

use std::fmt;
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::catalog::{self, Manifest, Role};
use crate::error::{Error, Result};
use crate::jobs::proof::{self, Proof};
use crate::jobs::restore::{self, RestorePlan, TargetState};
use crate::model::{Check, Database, show_number};
use crate::pg::cluster::{ServerInstall, Throwaway};
use crate::pg::{self, command::RestoreFlags};
use crate::report::{Progress, bytes_human};
use crate::storage::Storage;
use crate::time;

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

impl fmt::Display for DrillPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        writeln!(f, "drill plan for job {}:", self.job)?;
        writeln!(
            f,
            "  backup:    {} (data as of {}; database {}, PostgreSQL {}, {} stored)",
            b.id,
            time::show(b.snapshot_at, &self.timezone),
            b.dbname,
            b.server_version,
            bytes_human(b.stored_size())
        )?;
        writeln!(
            f,
            "  from:      storage {} ({})",
            self.storage, self.storage_location
        )?;
        writeln!(f, "  into:      {}", self.target_description())?;
        writeln!(
            f,
            "  restore:   {}database {}, created there",
            if self.has_globals() {
                "globals (roles, tablespaces), then "
            } else {
                "no globals in this backup: objects without owners or privileges; "
            },
            self.dbname
        )?;
        writeln!(
            f,
            "  checks:    table count {}, exact rows of each table, {} extension(s), {} check(s){}",
            b.tables.len(),
            b.extensions.len(),
            self.checks.len(),
            if self.checks_from.is_empty() {
                String::new()
            } else {
                format!(" of {}", self.checks_from.join(", "))
            }
        )?;
        for c in &self.checks {
            writeln!(f, "             {}: {}", c.name, c.expected())?;
        }
        write!(
            f,
            "  then:      {}",
            match &self.target {
                DrillTarget::Throwaway(_) => "stop the cluster and remove its files",
                DrillTarget::Server(_) => "drop the database (roles the globals created stay)",
            }
        )
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
        let mut value = serde_json::to_value(self).unwrap_or_default();
        let trimmed = self.proof.trimmed(proof::TABLES_RECORDED);
        value["tables"] = trimmed["tables"].clone();
        value["tables_total"] = trimmed["tables_total"].clone();
        value
    }
}

/// Times one step and notes its result.
async fn step<T>(
    steps: &mut Vec<StepTiming>,
    name: impl Into<String>,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let name = name.into();
    tracing::info!("drill: {name}");
    let started = Instant::now();
    let result = work.await;
    steps.push(StepTiming {
        step: name.clone(),
        seconds: started.elapsed().as_secs_f64(),
        result: match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("FAILED: {e}"),
        },
    });
    result.map_err(|e| e.context(name))
}

/// Carries out a plan. Always returns what happened: a failed step ends the
/// drill early, and the teardown runs whatever happened.
pub async fn execute(
    plan: &DrillPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    now: Timestamp,
) -> DrillOutcome {
    let started = Instant::now();
    let mut outcome = DrillOutcome {
        backup_job: plan.job.clone(),
        backup_id: plan.backup.id.to_string(),
        snapshot_at: plan.backup.snapshot_at,
        storage: plan.storage.clone(),
        target: plan.target_description(),
        started_at: now,
        finished_at: now,
        rto_seconds: None,
        rpo_seconds: now.duration_since(plan.backup.snapshot_at).as_secs_f64(),
        steps: Vec::new(),
        proof: Proof::default(),
        error: None,
        error_kind: None,
        warnings: Vec::new(),
    };
    let mut cluster: Option<Throwaway> = None;
    let steps = &mut outcome.steps;
    let result = async {
        let db = match &plan.target {
            DrillTarget::Throwaway(install) => {
                let install = install.clone();
                let started = step(
                    steps,
                    format!("create a throwaway cluster ({})", install.version),
                    async {
                        tokio::task::spawn_blocking(move || Throwaway::start(&install))
                            .await
                            .map_err(|e| Error::internal(format!("cluster task failed: {e}")))?
                    },
                )
                .await?;
                let db = started.database().clone();
                cluster = Some(started);
                db
            }
            DrillTarget::Server(db) => db.clone(),
        };
        let admin = pg::connect(&db, Some("postgres")).await?;
        if plan.has_globals() {
            let failed = step(
                steps,
                "restore globals (roles, tablespaces)",
                apply_globals(plan, &db, storage),
            )
            .await?;
            if !failed.is_empty() {
                outcome.warnings.push(format!(
                    "{} statement(s) of the globals failed (an existing role, a tablespace path \
                     this host lacks; tables go to the default tablespace): {}",
                    failed.len(),
                    failed.join(" | ")
                ));
            }
        }
        let pg_restore = restore::pg_restore_for(&admin, &db, &plan.backup).await?;
        step(
            steps,
            format!("create database {}", plan.dbname),
            pg::create_database(&admin, &plan.dbname),
        )
        .await?;
        let restore_plan = RestorePlan {
            job: plan.job.clone(),
            timezone: plan.timezone.clone(),
            backup: plan.backup.clone(),
            storage: plan.storage.clone(),
            target_db: plan.dbname.clone(),
            requested_at: None,
            target: Some(TargetState { contents: None }),
            flags: RestoreFlags {
                jobs: 1,
                no_tablespaces: true,
                no_owner: !plan.has_globals(),
                no_acl: !plan.has_globals(),
                clean: false,
            },
        };
        step(
            steps,
            format!(
                "restore database {} ({} stored, {} raw)",
                plan.dbname,
                bytes_human(plan.backup.stored_size()),
                bytes_human(plan.backup.raw_size())
            ),
            restore::load(&restore_plan, &db, storage, &pg_restore, progress),
        )
        .await?;
        let conn = pg::connect(&db, Some(&plan.dbname)).await?;
        outcome.proof = step(
            steps,
            "check the restored data",
            proof::prove(&conn, &plan.backup, &plan.checks),
        )
        .await?;
        drop(conn);
        outcome.rto_seconds = Some(started.elapsed().as_secs_f64());
        Ok::<_, Error>(admin)
    }
    .await;
    let admin = match result {
        Ok(admin) => Some(admin),
        Err(e) => {
            outcome.error = Some(e.to_string());
            outcome.error_kind = Some(e.kind());
            None
        }
    };
    // The teardown, whatever happened above.
    let torn = match (cluster, &plan.target) {
        (Some(c), _) => {
            step(
                &mut outcome.steps,
                "stop the throwaway cluster and remove its files",
                async {
                    tokio::task::spawn_blocking(move || c.tear_down())
                        .await
                        .map_err(|e| Error::internal(format!("teardown task failed: {e}")))?
                },
            )
            .await
        }
        (None, DrillTarget::Server(db))
            if outcome
                .steps
                .iter()
                .any(|s| s.step.starts_with("create database")) =>
        {
            step(
                &mut outcome.steps,
                format!("drop database {}", plan.dbname),
                async {
                    let admin = match admin {
                        Some(a) => a,
                        None => pg::connect(db, Some("postgres")).await?,
                    };
                    pg::drop_database(&admin, &plan.dbname).await
                },
            )
            .await
        }
        _ => Ok(()),
    };
    if let Err(e) = torn {
        outcome.warnings.push(format!("teardown: {e}"));
    }
    outcome.finished_at = now
        .checked_add(jiff::SignedDuration::try_from(started.elapsed()).unwrap_or_default())
        .unwrap_or(now);
    outcome
}

/// Streams the backup's `globals.sql` into `psql`, which carries on past
/// errors (a role that exists): returns the errors it reported.
async fn apply_globals(
    plan: &DrillPlan,
    db: &Database,
    storage: &Arc<dyn Storage>,
) -> Result<Vec<String>> {
    let object = plan
        .backup
        .object(Role::Globals)
        .ok_or_else(|| Error::internal("no globals in the backup"))?;
    let key = catalog::backup_prefix(&plan.job, &plan.backup.id)?.join(&object.key)?;
    let source = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let compression = plan.backup.compression()?;
    let digest = object.digest.clone();
    let label = format!("{key} in storage {}", storage.name());
    let major = pg::command::parse_tool_version(&plan.backup.pg_dump_version).unwrap_or(0);
    let psql = pg::tool_path(db, "psql", major);
    let args = vec![
        "-X".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=0".into(),
        "--no-password".into(),
        format!("--dbname={}", db.url).into(),
        "-f".into(),
        "-".into(),
    ];
    let mut child = pg::spawn(&psql, args, db, Stdio::piped(), Stdio::null())?;
    let mut stdin = child
        .child
        .stdin
        .take()
        .ok_or_else(|| Error::internal("psql has no stdin"))?;
    let _stop = child.stop_on_drop();
    tokio::task::spawn_blocking(move || {
        let streamed =
            crate::archive::unpack(source, compression, &digest, &mut stdin, &label, &|_| {});
        drop(stdin);
        let stderr = {
            let waited = child.wait_keeping_stderr();
            waited?
        };
        streamed?;
        Ok(stderr
            .lines()
            .filter(|l| l.contains("ERROR:"))
            .map(|l| l.trim().to_owned())
            .collect())
    })
    .await
    .map_err(|e| Error::internal(format!("globals task failed: {e}")))?
}

/// The report an auditor reads.
pub fn markdown(plan: &DrillPlan, o: &DrillOutcome, host: &str) -> String {
    let zone = &plan.timezone;
    let mut md = String::new();
    let verdict = match o.failure() {
        None => "**PASSED**".to_owned(),
        Some(why) => format!("**FAILED**: {}", why.replace('|', "\\|")),
    };
    let _ = writeln!(md, "# Disaster-recovery drill: job {}\n", plan.job);
    let _ = writeln!(md, "| | |\n|---|---|");
    let rows = [
        ("Result", verdict),
        ("Started", time::show(o.started_at, zone)),
        ("Host", host.to_owned()),
        (
            "Backup",
            format!(
                "{} of job {}: database {} on PostgreSQL {}, {} tables, {} stored",
                plan.backup.id,
                plan.job,
                plan.backup.dbname,
                plan.backup.server_version,
                plan.backup.tables.len(),
                bytes_human(plan.backup.stored_size())
            ),
        ),
        ("Data as of", time::show(plan.backup.snapshot_at, zone)),
        (
            "Read from",
            format!("storage {} ({})", plan.storage, plan.storage_location),
        ),
        ("Restored into", plan.target_description()),
        (
            "RTO",
            o.rto_seconds.map_or_else(
                || "not reached: the drill failed before the data was verified".to_owned(),
                |s| format!("{} (start of the drill to verified data)", seconds(s)),
            ),
        ),
        (
            "RPO",
            format!(
                "{} (start of the drill minus the backup's snapshot)",
                seconds(o.rpo_seconds)
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {} |", v.replace('\n', " "));
    }
    let _ = writeln!(md, "\n## Steps\n\n| Step | Time | Result |\n|---|---:|---|");
    for s in &o.steps {
        let _ = writeln!(
            md,
            "| {} | {:.1} s | {} |",
            s.step,
            s.seconds,
            s.result.replace('|', "\\|").replace('\n', " ")
        );
    }
    let _ = writeln!(md, "\n## Checks\n");
    if o.proof.checks.is_empty() {
        let _ = writeln!(md, "No check ran: the drill failed before them.");
    } else {
        let passed = o.proof.checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(
            md,
            "{passed} of {} passed.\n\n| Check | Expected | Found | Result |\n|---|---|---|---|",
            o.proof.checks.len()
        );
        for c in &o.proof.checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.check.replace('|', "\\|"),
                c.expected.replace('|', "\\|"),
                c.actual.replace('|', "\\|"),
                if c.passed { "passed" } else { "**FAILED**" }
            );
        }
    }
    if !o.proof.tables.is_empty() {
        let _ = writeln!(
            md,
            "\n## Row counts\n\n| Table | In the backup | Restored |\n|---|---:|---:|"
        );
        for t in o.proof.tables.iter().take(proof::TABLES_RECORDED) {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t.table.replace('|', "\\|"),
                t.expected,
                t.actual
                    .map_or_else(|| "missing".to_owned(), |n| n.to_string())
            );
        }
    }
    if !o.warnings.is_empty() {
        let _ = writeln!(md, "\n## Warnings\n");
        for w in &o.warnings {
            let _ = writeln!(md, "- {w}");
        }
    }
    md
}

/// `754.2 s (12 min 34 s)`: exact for the record, readable for people.
fn seconds(s: f64) -> String {
    let exact = format!("{} s", show_number((s * 10.0).round() / 10.0));
    if s < 60.0 {
        return exact;
    }
    let d = jiff::SignedDuration::from_secs_f64(s);
    format!("{exact} ({})", time::show_duration(d))
}
