//! Carrying a drill out, one timed step after another, and tearing down
//! what it made whatever happened.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use super::{DrillOutcome, DrillPlan, DrillTarget, StepTiming};
use crate::error::{Error, Result};
use crate::jobs::proof::{self, Proof};
use crate::jobs::restore;
use crate::model::Database;
use crate::pg::cluster::Throwaway;
use crate::pg::{self, command::RestoreFlags};
use crate::report::{Progress, bytes_human};
use crate::storage::Storage;

/// Times one step and notes its result.
pub(crate) async fn step<T>(
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
/// drill early, and the teardown runs whatever happened, also when `cancel`
/// stops the drill (SIGINT, SIGTERM) in the middle of a step.
pub async fn execute(
    plan: &DrillPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    now: Timestamp,
    cancel: &CancellationToken,
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
    // The cluster lands here as soon as it exists, from the blocking task
    // that starts it: a drill stopped meanwhile still finds it to tear down.
    let cluster: Arc<Mutex<Option<Throwaway>>> = Arc::default();
    let mut starting = match &plan.target {
        DrillTarget::Throwaway(install) => {
            let (install, slot) = (install.clone(), cluster.clone());
            Some(tokio::task::spawn_blocking(move || {
                let started = Throwaway::start(&install)?;
                let db = started.database().clone();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
                Ok(db)
            }))
        }
        DrillTarget::Server(_) => None,
    };
    // Whether this drill created the database on a --target-url server: only
    // then is it dropped.
    let mut created = false;
    let mut admin = None;
    let body = run_steps(
        plan,
        storage,
        progress,
        &mut starting,
        &mut outcome,
        &mut created,
        &mut admin,
        started,
    );
    let result = tokio::select! {
        result = body => result,
        () = cancel.cancelled() => Err(Error::interrupted("the drill was stopped by a signal")),
    };
    if let Err(e) = result {
        outcome.error = Some(e.to_string());
        outcome.error_kind = Some(e.kind());
    }
    // A start still under way finishes first, so its cluster is torn down too.
    if let Some(task) = starting.take() {
        let _ = task.await;
    }
    let taken = cluster.lock().unwrap_or_else(|p| p.into_inner()).take();
    let torn = match (taken, &plan.target) {
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
        (None, DrillTarget::Server(db)) if created => {
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

type Starting = Option<tokio::task::JoinHandle<Result<Database>>>;

/// The drill up to verified data.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    plan: &DrillPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    starting: &mut Starting,
    outcome: &mut DrillOutcome,
    created: &mut bool,
    admin_out: &mut Option<pg::Connection>,
    started: Instant,
) -> Result<()> {
    let steps = &mut outcome.steps;
    let db = match (&plan.target, starting.as_mut()) {
        (DrillTarget::Throwaway(install), Some(task)) => {
            let db = step(
                steps,
                format!("create a throwaway cluster ({})", install.version),
                async {
                    task.await
                        .map_err(|e| Error::internal(format!("cluster task failed: {e}")))?
                },
            )
            .await?;
            *starting = None;
            db
        }
        (DrillTarget::Server(db), _) => db.clone(),
        (DrillTarget::Throwaway(_), None) => {
            return Err(Error::internal("the cluster was not started"));
        }
    };
    let admin = pg::connect(&db, Some("postgres")).await?;
    // Before the globals: a server too old for the backup is refused with
    // nothing written to it.
    let pg_restore = restore::pg_restore_for(&admin, &db, &plan.backup).await?;
    if plan.has_globals() {
        let applied = step(
            steps,
            "restore globals (roles)",
            restore::apply_globals(
                restore::Globals {
                    job: &plan.job,
                    backup: &plan.backup,
                    crypt: &plan.crypt,
                    dbname: "postgres",
                },
                &db,
                &admin,
                storage,
            ),
        )
        .await?;
        outcome.warnings.extend(applied);
    }
    // A throwaway cluster has an empty `postgres` already: a backup of it
    // goes there.
    let exists = matches!(plan.target, DrillTarget::Throwaway(_))
        && pg::database_exists(&admin, &plan.dbname).await?;
    if !exists {
        step(
            steps,
            format!("create database {}", plan.dbname),
            pg::create_database(&admin, &plan.dbname),
        )
        .await?;
        *created = true;
    }
    *admin_out = Some(admin);
    let what = restore::Load {
        job: &plan.job,
        backup: &plan.backup,
        crypt: &plan.crypt,
        flags: RestoreFlags {
            jobs: plan.jobs,
            no_tablespaces: true,
            no_owner: !plan.has_globals(),
            no_acl: !plan.has_globals(),
        },
        into: &plan.dbname,
    };
    step(
        steps,
        format!(
            "restore database {} ({} stored, {} raw)",
            plan.dbname,
            bytes_human(plan.backup.stored_size()),
            bytes_human(plan.backup.raw_size())
        ),
        restore::load(what, &db, storage, &pg_restore, progress),
    )
    .await?;
    if let Some(props) = &plan.backup.database_properties {
        let props =
            pg::database::merge(Some(props), None, !plan.has_globals(), !plan.has_globals());
        if let (Some(props), Some(admin)) = (props, admin_out.as_ref()) {
            let applied = step(
                steps,
                "apply the database's settings, grants and comment",
                async {
                    Ok::<_, Error>(pg::database::apply_all(admin, &plan.dbname, &props).await)
                },
            )
            .await?;
            outcome.warnings.extend(applied);
        }
    }
    let conn = pg::connect(&db, Some(&plan.dbname)).await?;
    outcome.proof = step(
        steps,
        "check the restored data",
        proof::prove(&conn, &plan.backup, &plan.checks),
    )
    .await?;
    outcome.rto_seconds = Some(started.elapsed().as_secs_f64());
    Ok(())
}
