//! Carrying a point-in-time restore out: the base backup laid down with
//! its recovery settings, and with `--start` the server started on it,
//! recovery waited for, the result proven, and the server handed over
//! running with its own configuration.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Target;
use super::lay::{self, Laid, LayDown};
use super::plan::PitrPlan;
use super::prove::{self, PitrProof};
use super::recover::{HandedOver, RecoveryEnd, RecoveryServer};
use crate::error::{Error, Result};
use crate::jobs::proof::CheckResult;
use crate::model::Check;
use crate::report::Progress;
use crate::storage::Storage;

/// What a point-in-time restore did.
#[derive(Debug, Clone, Serialize)]
pub struct PitrOutcome {
    pub laid: Laid,
    /// With `--start`: how recovery ended, the proof, and the server left running.
    pub recovery: Option<RecoveryEnd>,
    pub proof: Option<PitrProof>,
    pub running: Option<HandedOver>,
    pub warnings: Vec<String>,
}

/// What `--start` asks for.
#[derive(Debug, Clone, Default)]
pub struct Start {
    pub checks: Vec<Check>,
    /// The database the checks run in.
    pub checks_db: String,
    /// A role of the backed-up cluster to find its superuser with.
    pub user: Option<String>,
}

/// Lays the plan's base backup down; with `start`, recovers, proves and
/// hands the server over.
pub async fn execute(
    plan: &PitrPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    start: Option<&Start>,
    cancel: &CancellationToken,
) -> Result<PitrOutcome> {
    let owner = crate::pg::cluster::server_user()?;
    let laid = lay::lay_down(
        LayDown {
            backup: &plan.backup,
            crypt: &plan.crypt,
            target: &plan.target_dir,
            dir: &plan.dir,
            settings: &plan.settings,
            owner,
            chain: &plan.chain,
            chain_crypts: &plan.chain_crypts,
            combine: plan.combine.as_deref(),
        },
        storage,
        progress,
    )
    .await?;
    let mut outcome = PitrOutcome {
        warnings: laid.warnings.clone(),
        laid,
        recovery: None,
        proof: None,
        running: None,
    };
    let Some(start) = start else {
        return Ok(outcome);
    };
    let server = {
        let (install, dir, port, user) = (
            plan.install.clone(),
            plan.target_dir.clone(),
            plan.settings.port,
            start.user.clone(),
        );
        tokio::task::spawn_blocking(move || {
            RecoveryServer::start(&install, &dir, port, user.as_deref())
        })
        .await
        .map_err(|e| Error::internal(format!("starting the server: {e}")))??
    };
    let recovered = recover_and_prove(plan, &server, start, cancel).await;
    let (end, proof) = match recovered {
        Ok(done) => done,
        Err(e) => {
            let log = server.log().display().to_string();
            let _ = tokio::task::spawn_blocking(move || server.stop()).await;
            return Err(e.with_hint(format!(
                "the restored directory {} stays as recovery left it; the server's log was {log}",
                plan.target_dir.display()
            )));
        }
    };
    outcome.recovery = Some(end);
    if let Some(why) = proof.failure() {
        let _ = tokio::task::spawn_blocking(move || server.stop()).await;
        outcome.proof = Some(proof);
        return Err(Error::integrity(format!(
            "the restored cluster in {} failed its proof: {why}",
            plan.target_dir.display()
        ))
        .with_hint("the server was stopped; the directory stays for a look"));
    }
    outcome.proof = Some(proof);
    let handed = tokio::task::spawn_blocking(move || server.hand_over())
        .await
        .map_err(|e| Error::internal(format!("restarting the server: {e}")))?
        .map_err(|e| {
            let hint = format!(
                "the directory {} is recovered and proven; only the restart with its own \
                 configuration failed: a port another server holds (restore with --port P, or \
                 set port in its postgresql.auto.conf), or a pg_hba.conf that stayed in /etc; \
                 then {}",
                plan.target_dir.display(),
                how_to_start(plan).lines().next().unwrap_or_default()
            );
            e.with_hint(hint)
        })?;
    outcome.running = Some(handed);
    Ok(outcome)
}

/// Waits for the end of recovery and proves what it reached.
pub async fn recover_and_prove(
    plan: &PitrPlan,
    server: &RecoveryServer,
    start: &Start,
    cancel: &CancellationToken,
) -> Result<(RecoveryEnd, PitrProof)> {
    let end = server.wait(cancel).await?;
    let started = Instant::now();
    let mut proof = prove::prove(
        server.database(),
        &plan.install,
        &plan.target,
        &end,
        &start.checks,
        &start.checks_db,
    )
    .await?;
    if proof.seconds == 0.0 {
        proof.seconds = started.elapsed().as_secs_f64();
    }
    proof.checks.extend(against_plan(plan, &end));
    Ok((end, proof))
}

/// What recovery did against what the plan read in the archive: the
/// transaction it stopped before, or for `--latest` the archive's last
/// transaction applied. A recovery that ended early (WAL that reads as its
/// end although more was archived) fails here.
pub fn against_plan(plan: &PitrPlan, end: &RecoveryEnd) -> Vec<CheckResult> {
    let mut checks = Vec::new();
    match (plan.target, &plan.stops_before) {
        (Target::Time(_), Some(tx)) => checks.push(CheckResult {
            check: "recovery stopped before the transaction the plan found in the archive"
                .to_owned(),
            expected: format!("transaction {} at {}", tx.xid, tx.at),
            actual: end.stopped_before.as_ref().map_or_else(
                || "recovery did not stop before a transaction".to_owned(),
                |s| format!("transaction {} at {}", s.xid & 0xffff_ffff, s.at),
            ),
            passed: end
                .stopped_before
                .as_ref()
                .is_some_and(|s| s.xid & 0xffff_ffff == u64::from(tx.xid)),
        }),
        (Target::Latest, _) if plan.window.to_from == "transaction" => {
            if let Some(last) = plan.window.to {
                checks.push(CheckResult {
                    check: "recovery applied the archive's last transaction".to_owned(),
                    expected: format!("at {last}"),
                    actual: end.last_replayed.map_or_else(
                        || "no transaction replayed".to_owned(),
                        |at| format!("last applied at {at}"),
                    ),
                    passed: end.last_replayed.is_some_and(|at| at >= last),
                });
            }
        }
        _ => {}
    }
    checks
}

/// How to start a restored directory by hand, for the operator.
pub fn how_to_start(plan: &PitrPlan) -> String {
    let pg_ctl = plan.install.bindir.join("pg_ctl");
    let dir = plan.target_dir.display();
    let as_user = if crate::pg::cluster::server_user().ok().flatten().is_some() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    format!(
        "start it with: {as_user}{} -D {dir} -l {dir}/recovery.log start\n\
         recovery fetches WAL with `backup wal fetch`: the server's environment needs the \
         variables the job's storages and keys name; {}",
        pg_ctl.display(),
        match plan.target {
            Target::Time(_) if plan.settings.pause =>
                "it pauses at the target: check, then `SELECT pg_wal_replay_resume()` to promote",
            Target::Time(_) => "it is promoted once it reaches the target",
            Target::Latest => "it is promoted at the end of the archive",
        }
    )
}
