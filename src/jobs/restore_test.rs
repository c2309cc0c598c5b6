//! Restore tests: restore a backup into a scratch database, prove it against
//! the manifest and the job's checks, and drop the scratch database again.
//!
//! Plan first: which backup, from which storage, into which database on which
//! server, checked how. `backup run JOB --dry-run` prints the plan; the run
//! carries it out and files its record beside the backups it proves
//! (`<backup job>/reports/`), so the storage alone says which backups restore.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::catalog::{Manifest, Selector};
use crate::error::{Error, Result};
use crate::jobs::proof::{self, Proof};
use crate::jobs::restore;
use crate::model::{Check, Database, Job, RestoreTestJob, TestedBackup};
use crate::pg::url::MAX_IDENTIFIER;
use crate::pg::{self, command::RestoreFlags};
use crate::report::Progress;
use crate::storage::Storage;
use crate::time;

/// Everything a restore test will do, decided before anything is touched.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreTestPlan {
    pub job: String,
    pub backup_job: String,
    #[serde(skip)]
    pub timezone: TimeZone,
    #[serde(rename = "backup_id", serialize_with = "id_of")]
    pub backup: Manifest,
    pub snapshot_at: Timestamp,
    pub storage: String,
    /// The `[databases.*]` entry of the server restored into.
    pub target: String,
    pub scratch_database: String,
    /// Scratch databases of this job that earlier runs left (killed, or
    /// kept on failure), this run's name among them or not: dropped first.
    pub leftovers: Vec<String>,
    pub checks: Vec<Check>,
    pub keep_on_failure: bool,
    /// Parallel `pg_restore` jobs.
    pub jobs: u32,
    #[serde(skip)]
    pub crypt: crate::archive::crypt::Crypt,
}

fn id_of<S: serde::Serializer>(m: &Manifest, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(m.id.as_str())
}

impl fmt::Display for RestoreTestPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        writeln!(f, "restore-test plan for job {}:", self.job)?;
        writeln!(
            f,
            "  backup:    {} of job {} from storage {} (data as of {})",
            b.id,
            self.backup_job,
            self.storage,
            time::show(b.snapshot_at, &self.timezone)
        )?;
        writeln!(
            f,
            "  into:      scratch database {} on the server of [databases.{}]{}",
            self.scratch_database,
            self.target,
            if self.leftovers.contains(&self.scratch_database) {
                " (left by an earlier run: dropped first)"
            } else {
                " (created)"
            }
        )?;
        for other in self
            .leftovers
            .iter()
            .filter(|l| **l != self.scratch_database)
        {
            writeln!(
                f,
                "  first:     drop {other}, a scratch database an earlier run left"
            )?;
        }
        writeln!(
            f,
            "  checks:    table count {}, exact rows of each table, {} extension(s), {} check(s) of the job",
            b.tables.len(),
            b.extensions.len(),
            self.checks.len()
        )?;
        for c in &self.checks {
            writeln!(f, "             {}: {}", c.name, c.expected())?;
        }
        if self.jobs > 1 {
            writeln!(f, "  restore:   {} parallel jobs", self.jobs)?;
        }
        write!(
            f,
            "  then:      drop {}{}",
            self.scratch_database,
            if self.keep_on_failure {
                " (kept if the test fails)"
            } else {
                ", also if the test fails"
            }
        )
    }
}

/// The comment a scratch database carries: only a database with it is ever
/// dropped by a restore test.
fn marker(job: &str) -> String {
    format!("backup: scratch database of restore-test job {job}")
}

/// `<dbname>_restore_test_<id>`, lowercase, cut to fit PostgreSQL's 63 bytes.
pub fn scratch_name(dbname: &str, id: &str) -> String {
    let suffix = format!("_restore_test_{}", id.to_lowercase().replace('-', "_"));
    let room = MAX_IDENTIFIER.saturating_sub(suffix.len());
    let mut base: String = dbname.to_owned();
    while base.len() > room {
        base.pop();
    }
    format!("{base}{suffix}")
}

/// The backup a test of `at` picks, as a selector.
pub fn selector(at: TestedBackup, now: Timestamp) -> Selector {
    match at {
        TestedBackup::Latest => Selector::Latest,
        TestedBackup::OlderThan(age) => Selector::At(
            jiff::SignedDuration::try_from(age)
                .ok()
                .and_then(|d| now.checked_sub(d).ok())
                .unwrap_or(Timestamp::MIN),
        ),
    }
}

pub async fn plan(
    job: &Job,
    (backup_job, backup_spec): (&Job, &crate::model::BackupJob),
    spec: &RestoreTestJob,
    storages: &[Arc<dyn Storage>],
    now: Timestamp,
) -> Result<RestoreTestPlan> {
    let (backup, storage) =
        restore::choose(backup_job, storages, None, &selector(spec.at, now)).await?;
    let reader = restore::named(storages, &storage)?;
    // A key that cannot open the backup fails the test before anything is made.
    let crypt = crate::catalog::opener(reader.as_ref(), &backup, backup_spec.keys()).await?;
    let scratch = spec
        .scratch_database
        .clone()
        .unwrap_or_else(|| scratch_name(&backup.dbname, backup.id.as_str()));
    let admin = pg::connect(&spec.target, Some("postgres")).await?;
    match pg::database_comment(&admin, &scratch).await? {
        None => {}
        Some(Some(comment)) if comment == marker(&job.name) => {}
        Some(_) => {
            return Err(Error::refused(format!(
                "database {scratch} exists on the server of [databases.{}] and is not a \
                 scratch database of this job; nothing was changed",
                spec.target.name
            ))
            .with_hint(
                "a restore test only ever drops databases it created: set scratch_database to a \
                 name not in use, or drop that database if it is a leftover",
            ));
        }
    }
    let leftovers = pg::databases_with_comment(&admin, &marker(&job.name)).await?;
    Ok(RestoreTestPlan {
        job: job.name.clone(),
        backup_job: backup_job.name.clone(),
        timezone: job.timezone.clone(),
        snapshot_at: backup.snapshot_at,
        backup,
        storage,
        target: spec.target.name.clone(),
        scratch_database: scratch,
        leftovers,
        checks: spec.checks.clone(),
        keep_on_failure: spec.keep_on_failure,
        jobs: spec.jobs,
        crypt,
    })
}

/// What a restore test found, kept whole in its run record.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreTestOutcome {
    pub backup_job: String,
    pub backup_id: String,
    pub snapshot_at: Timestamp,
    pub storage: String,
    pub target: String,
    pub scratch_database: String,
    /// Stored (read from storage) and raw (fed to `pg_restore`) bytes.
    pub stored_bytes: u64,
    pub raw_bytes: u64,
    pub restore_seconds: f64,
    pub verify_seconds: f64,
    /// From the start of the restore to the last check: the recovery time
    /// this backup would take on this server.
    pub rto_seconds: f64,
    /// Why the restore itself failed, when it did.
    pub restore_error: Option<String>,
    #[serde(flatten)]
    pub proof: Proof,
    /// Whether the scratch database is still there (kept on failure).
    pub kept: bool,
    pub warnings: Vec<String>,
}

impl RestoreTestOutcome {
    pub fn failure(&self) -> Option<String> {
        let what = if let Some(e) = &self.restore_error {
            Some(format!("the restore failed: {e}"))
        } else {
            self.proof.failure()
        };
        what.map(|w| {
            format!(
                "backup {} of job {} did not pass its restore test: {w}{}",
                self.backup_id,
                self.backup_job,
                if self.kept {
                    format!(
                        " (scratch database {} kept for a look)",
                        self.scratch_database
                    )
                } else {
                    String::new()
                }
            )
        })
    }

    /// The record's copy: every check, and the tables up to a bound.
    pub fn details(&self) -> serde_json::Value {
        Proof::record_of(self)
    }
}

/// Carries out a plan: create, restore, prove, drop.
pub async fn execute(
    plan: &RestoreTestPlan,
    target: &Arc<Database>,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
) -> Result<RestoreTestOutcome> {
    let scratch = &plan.scratch_database;
    let admin = pg::connect(target, Some("postgres")).await?;
    let pg_restore = restore::pg_restore_for(&admin, target, &plan.backup).await?;
    let mut warnings = Vec::new();
    for leftover in &plan.leftovers {
        tracing::info!("dropping scratch database {leftover}, left by an earlier run");
        pg::drop_database(&admin, leftover).await?;
    }
    let started = Instant::now();
    // Armed before the CREATE, as a restore's copy is: a stop right after
    // the server made it must not leave it unmarked.
    let guard = restore::DropGuard::new(
        target,
        scratch,
        "the scratch database of the stopped restore test",
        "the next run of the test drops it",
    );
    pg::create_database(&admin, scratch).await?;
    admin
        .client
        .batch_execute(&format!(
            "COMMENT ON DATABASE {} IS {}",
            pg::quote_ident(scratch),
            pg::quote_literal(&marker(&plan.job))
        ))
        .await
        .map_err(|e| pg::query_error(&format!("marking scratch database {scratch}"), e))?;
    tracing::info!(
        "restoring backup {} into scratch database {scratch}",
        plan.backup.id
    );
    let what = restore::Load {
        job: &plan.backup_job,
        backup: &plan.backup,
        crypt: &plan.crypt,
        flags: RestoreFlags {
            jobs: plan.jobs,
            ..RestoreFlags::default()
        },
        into: scratch,
    };
    let loaded = restore::load(what, target, storage, &pg_restore, progress).await;
    if loaded.is_ok()
        && let Some(props) =
            pg::database::merge(plan.backup.database_properties.as_ref(), None, false, false)
    {
        // Checks run as the database runs: with its settings and privileges
        // (its comment stays the scratch database's marker).
        warnings.extend(pg::database::apply(&admin, scratch, scratch, &props).await);
    }
    let restore_seconds = started.elapsed().as_secs_f64();
    let verifying = Instant::now();
    let (proof, restore_error) = match loaded {
        Ok(()) => {
            let conn = pg::connect(target, Some(scratch)).await?;
            let proof = proof::prove(&conn, &plan.backup, &plan.checks).await?;
            (proof, None)
        }
        Err(e) => (Proof::default(), Some(e.to_string())),
    };
    let verify_seconds = verifying.elapsed().as_secs_f64();
    let rto_seconds = started.elapsed().as_secs_f64();
    let failed = restore_error.is_some() || proof.failure().is_some();
    let kept = failed && plan.keep_on_failure;
    if kept {
        tracing::warn!("restore test failed: scratch database {scratch} is kept (keep_on_failure)");
        guard.disarm();
    } else {
        pg::drop_database(&admin, scratch).await.map_err(|e| {
            e.with_hint(format!(
                "drop database {scratch} by hand; the next run of the test drops it too"
            ))
        })?;
        guard.disarm();
    }
    if plan.backup.extensions.is_empty() {
        warnings.push(format!(
            "backup {} predates extension lists in manifests: extensions were not checked",
            plan.backup.id
        ));
    }
    let data = plan.backup.object(crate::catalog::Role::Data);
    Ok(RestoreTestOutcome {
        backup_job: plan.backup_job.clone(),
        backup_id: plan.backup.id.to_string(),
        snapshot_at: plan.backup.snapshot_at,
        storage: plan.storage.clone(),
        target: plan.target.clone(),
        scratch_database: scratch.clone(),
        stored_bytes: data.map_or(0, |o| o.digest.stored_size),
        raw_bytes: data.map_or(0, |o| o.digest.raw_size),
        restore_seconds,
        verify_seconds,
        rto_seconds,
        restore_error,
        proof,
        kept,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_fit_postgres_and_are_lowercase() {
        assert_eq!(
            scratch_name("shop", "20261122T030000Z"),
            "shop_restore_test_20261122t030000z"
        );
        assert_eq!(
            scratch_name("shop", "20261122T030000Z-1"),
            "shop_restore_test_20261122t030000z_1"
        );
        let long = scratch_name(&"x".repeat(80), "20261122T030000Z");
        assert_eq!(long.len(), MAX_IDENTIFIER);
        assert!(long.ends_with("_restore_test_20261122t030000z"));
    }

    #[test]
    fn an_age_picks_a_backup_at_least_that_old() {
        let now: Timestamp = "2026-11-25T00:00:00Z".parse().unwrap();
        assert_eq!(selector(TestedBackup::Latest, now), Selector::Latest);
        assert_eq!(
            selector(
                TestedBackup::OlderThan(std::time::Duration::from_secs(7 * 86400)),
                now
            ),
            Selector::At("2026-11-18T00:00:00Z".parse().unwrap())
        );
    }
}
