//! The drill of a physical job, and its scheduled form (a restore-test job
//! of a physical job): a throwaway cluster made from a base backup and WAL
//! replayed to a moment, proven, measured, and removed whatever happened.
//!
//! RTO is the drill's start to proven data; RPO is the drill's start minus
//! the last transaction replayed: what a disaster at the start of the drill
//! would have lost, in seconds when the archive is current.

use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::Target;
use super::plan::{self, PitrPlan, PitrRequest};
use super::prove::PitrProof;
use super::recover::{RecoveryEnd, RecoveryServer};
use super::run::Start;
use crate::error::{Error, Kind, Result};
use crate::jobs::drill::{StepTiming, seconds, step};
use crate::model::{Check, Config};
use crate::report::{Progress, bytes_human};
use crate::storage::Storage;
use crate::time;

/// Which moment a drill recovers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The newest the archive holds.
    Latest,
    At(Timestamp),
    /// A moment drawn at random from the last 24 hours of the window, so
    /// that over many runs every part of the archive is replayed.
    Recent,
}

/// How far back `When::Recent` draws from the end of the window.
const RECENT: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// A drill of a physical job, planned.
#[derive(Debug, Clone)]
pub struct PitrDrillPlan {
    pub pitr: PitrPlan,
    /// The directory the throwaway cluster lives in (created by the drill).
    pub scratch: PathBuf,
    pub start: Start,
    pub checks_from: Vec<String>,
    pub storage_location: String,
    /// `recent` when the moment was drawn at random.
    pub drawn: bool,
}

/// Plans a drill of physical job `job`: a throwaway directory under
/// `$TMPDIR`, nothing written yet.
pub async fn plan(
    config: &Config,
    job: &str,
    when: When,
    checks: Vec<Check>,
    checks_from: Vec<String>,
    storages: &[Arc<dyn Storage>],
) -> Result<PitrDrillPlan> {
    let (bjob, spec, database, wal) = config.physical_job(job, "a drill")?;
    let scratch = std::env::temp_dir().join(format!(
        "backup-drill-{}-{}",
        job,
        std::iter::repeat_with(fastrand::alphanumeric)
            .take(8)
            .collect::<String>()
    ));
    let request = |target| PitrRequest {
        target,
        timeline: None,
        storage: None,
        dir: scratch.join("data"),
        force: false,
        pause: false,
        archive: false,
        port: None,
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("backup")),
        config: config.source.clone(),
    };
    let target = match when {
        When::Latest => Target::Latest,
        When::At(at) => Target::Time(at),
        When::Recent => {
            let latest = plan::plan(
                bjob,
                spec,
                database,
                wal,
                storages,
                &request(Target::Latest),
            )
            .await?;
            match latest.window.to {
                // Only a window that ends at a known transaction: a moment
                // drawn after the last one could not be reached.
                Some(to) if to > latest.window.from && latest.window.to_from == "transaction" => {
                    let from = latest.window.from.max(to - RECENT);
                    let span = to.duration_since(from).as_millis().max(1) as u64;
                    // Strictly before the last transaction, which recovery
                    // must find after the moment to stop.
                    let offset = fastrand::u64(0..span.saturating_sub(1000).max(1));
                    Target::Time(from + jiff::SignedDuration::from_millis(offset as i64))
                }
                _ => Target::Latest,
            }
        }
    };
    let pitr = plan::plan(bjob, spec, database, wal, storages, &request(target)).await?;
    let storage_location = spec
        .storages
        .iter()
        .find(|s| s.name == pitr.storage)
        .map(|s| s.kind.to_string())
        .unwrap_or_default();
    Ok(PitrDrillPlan {
        pitr,
        scratch,
        start: Start {
            checks,
            checks_db: database_name(&database.url),
            user: user_name(&database.url),
        },
        checks_from,
        storage_location,
        drawn: when == When::Recent && target != Target::Latest,
    })
}

/// The database a job's URL names (`postgres` when none).
pub fn database_name(url: &str) -> String {
    crate::pg::url::parse(url)
        .ok()
        .and_then(|(c, _)| c.get_dbname().map(str::to_owned))
        .unwrap_or_else(|| "postgres".to_owned())
}

pub fn user_name(url: &str) -> Option<String> {
    crate::pg::url::parse(url)
        .ok()
        .and_then(|(c, _)| c.get_user().map(str::to_owned))
}

impl fmt::Display for PitrDrillPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "drill of physical job {}:", self.pitr.job)?;
        write!(f, "{}", self.pitr)?;
        writeln!(
            f,
            "  checks:     recovery reached the moment, every database read end to end, \
             pg_amcheck, {} check(s){}",
            self.start.checks.len(),
            if self.checks_from.is_empty() {
                String::new()
            } else {
                format!(" of {}", self.checks_from.join(", "))
            }
        )?;
        write!(
            f,
            "  teardown:   stop the throwaway server and remove {}",
            self.scratch.display()
        )
    }
}

/// What a drill of a physical job measured.
#[derive(Debug, Clone, Serialize)]
pub struct PitrDrillOutcome {
    pub backup_job: String,
    pub backup_id: String,
    /// The base backup's end: its data alone is consistent from then.
    pub base_consistent_at: Timestamp,
    pub storage: String,
    pub target: String,
    /// The moment asked for; `None`: the end of the archive.
    pub requested_at: Option<Timestamp>,
    pub drawn_at_random: bool,
    /// The last transaction recovery applied.
    pub recovered_to: Option<Timestamp>,
    /// The moment the drill proved the archive reaches: the one asked
    /// for, else the last transaction applied. `status`, `list` and
    /// `/metrics` show it.
    pub tested_moment: Option<Timestamp>,
    pub recovery: Option<RecoveryEnd>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub rto_seconds: Option<f64>,
    /// The drill's start minus the last transaction replayed.
    pub rpo_seconds: Option<f64>,
    pub wal_segments: u64,
    pub wal_bytes: u64,
    pub steps: Vec<StepTiming>,
    #[serde(flatten)]
    pub proof: PitrProof,
    pub error: Option<String>,
    #[serde(skip)]
    pub error_kind: Option<Kind>,
    pub warnings: Vec<String>,
}

impl PitrDrillOutcome {
    pub fn failure(&self) -> Option<String> {
        self.error
            .clone()
            .or_else(|| self.proof.failure())
            .map(|why| {
                format!(
                    "the drill of base backup {} (job {}) failed: {why}",
                    self.backup_id, self.backup_job
                )
            })
    }

    pub fn details(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Carries a drill out. Always returns what happened; the teardown runs
/// whatever happened, also when `cancel` stops it in the middle of a step.
pub async fn execute(
    plan: &PitrDrillPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    now: Timestamp,
    cancel: &CancellationToken,
) -> PitrDrillOutcome {
    let started = Instant::now();
    let p = &plan.pitr;
    let mut o = PitrDrillOutcome {
        backup_job: p.job.clone(),
        backup_id: p.backup.id.to_string(),
        base_consistent_at: p.backup.snapshot_at,
        storage: p.storage.clone(),
        target: format!(
            "a throwaway cluster ({}, {}) in {}, removed afterwards",
            p.install.version,
            p.install.bindir.display(),
            plan.scratch.display()
        ),
        requested_at: p.target.time(),
        drawn_at_random: plan.drawn,
        recovered_to: None,
        tested_moment: None,
        recovery: None,
        started_at: now,
        finished_at: now,
        rto_seconds: None,
        rpo_seconds: None,
        wal_segments: p.wal.segments,
        wal_bytes: p.wal.bytes,
        steps: Vec::new(),
        proof: PitrProof::default(),
        error: None,
        error_kind: None,
        warnings: Vec::new(),
    };
    // Removed when this is dropped: a run cut short by its timeout or a
    // stop (the future dropped, the teardown below never reached) leaves
    // nothing either. Declared first, so dropped after the server.
    let _scratch = Scratch(plan.scratch.clone());
    // The server lands here as soon as it exists: a drill stopped meanwhile
    // still finds it to stop (and a dropped one stops it on its drop).
    let server: Arc<std::sync::Mutex<Option<RecoveryServer>>> = Arc::default();
    let body = run_steps(plan, storage, progress, &server, &mut o, started, cancel);
    let result = tokio::select! {
        result = body => result,
        () = cancel.cancelled() => Err(Error::interrupted("the drill was stopped by a signal")),
    };
    if let Err(e) = result {
        o.error = Some(e.to_string());
        o.error_kind = Some(e.kind());
    }
    let taken = server.lock().unwrap_or_else(|p| p.into_inner()).take();
    let scratch = plan.scratch.clone();
    let torn = step(
        &mut o.steps,
        format!(
            "stop the throwaway server and remove {}",
            plan.scratch.display()
        ),
        async move {
            tokio::task::spawn_blocking(move || {
                if let Some(s) = taken {
                    s.stop()?;
                }
                match std::fs::remove_dir_all(&scratch) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => {
                        Err(
                            Error::io(Kind::Internal, format!("removing {}", scratch.display()), e)
                                .with_hint("remove it by hand"),
                        )
                    }
                }
            })
            .await
            .map_err(|e| Error::internal(format!("teardown task failed: {e}")))?
        },
    )
    .await;
    if let Err(e) = torn {
        o.warnings.push(format!("teardown: {e}"));
    }
    o.finished_at = now
        .checked_add(jiff::SignedDuration::try_from(started.elapsed()).unwrap_or_default())
        .unwrap_or(now);
    o
}

async fn run_steps(
    plan: &PitrDrillPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    slot: &Arc<std::sync::Mutex<Option<RecoveryServer>>>,
    o: &mut PitrDrillOutcome,
    started: Instant,
    cancel: &CancellationToken,
) -> Result<()> {
    let p = &plan.pitr;
    make_scratch(&plan.scratch)?;
    let laid = step(
        &mut o.steps,
        format!(
            "restore base backup {} ({} stored, {} raw){}",
            p.backup.id,
            bytes_human(p.backup.stored_size()),
            bytes_human(p.backup.raw_size()),
            chain_text(&p.chain)
        ),
        super::lay::lay_down(
            super::lay::LayDown {
                backup: &p.backup,
                crypt: &p.crypt,
                target: &p.target_dir,
                dir: &p.dir,
                settings: &p.settings,
                owner: crate::pg::cluster::server_user()?,
                chain: &p.chain,
                chain_crypts: &p.chain_crypts,
                combine: p.combine.as_deref(),
            },
            storage,
            progress,
        ),
    )
    .await?;
    o.warnings.extend(laid.warnings);
    let (install, dir, user) = (
        p.install.clone(),
        p.target_dir.clone(),
        plan.start.user.clone(),
    );
    let slot_in = slot.clone();
    step(&mut o.steps, "start the server on it", async move {
        let server = tokio::task::spawn_blocking(move || {
            RecoveryServer::start(&install, &dir, None, user.as_deref())
        })
        .await
        .map_err(|e| Error::internal(format!("starting the server: {e}")))??;
        *slot_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
        Ok(())
    })
    .await?;
    // The server stays in the slot for the teardown; the steps borrow it.
    let server = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    let Some(server) = server else {
        return Err(Error::internal("the server was not started"));
    };
    let result = async {
        let end = step(
            &mut o.steps,
            format!(
                "replay WAL {} .. {} ({} segments, {}) through `backup wal fetch`",
                p.wal.first,
                p.wal.last,
                p.wal.segments,
                bytes_human(p.wal.bytes)
            ),
            server.wait(cancel),
        )
        .await?;
        o.recovered_to = end.last_replayed;
        o.tested_moment = o.requested_at.or(end.last_replayed);
        o.rpo_seconds = end
            .last_replayed
            .map(|at| o.started_at.duration_since(at).as_secs_f64());
        o.recovery = Some(end.clone());
        let proof = step(
            &mut o.steps,
            "prove the recovered cluster",
            recover_proof(plan, &server, &end),
        )
        .await?;
        o.proof = proof;
        if o.proof.failure().is_none() {
            o.rto_seconds = Some(started.elapsed().as_secs_f64());
        }
        Ok::<_, Error>(())
    }
    .await;
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(server);
    result
}

async fn recover_proof(
    plan: &PitrDrillPlan,
    server: &RecoveryServer,
    end: &RecoveryEnd,
) -> Result<PitrProof> {
    let mut proof = super::prove::prove(
        server.database(),
        &plan.pitr.install,
        &plan.pitr.target,
        end,
        &plan.start.checks,
        &plan.start.checks_db,
    )
    .await?;
    proof
        .checks
        .extend(super::run::against_plan(&plan.pitr, end));
    Ok(proof)
}

/// The drill's directory, removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.0) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("removing {}: {e}; remove it by hand", self.0.display()),
        }
    }
}

/// The drill's own directory: private, and the server's when run as root.
fn make_scratch(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::io(Kind::Internal, format!("creating {}", dir.display()), e)
                .with_hint("set TMPDIR to a writable directory with room for the cluster")
        })?;
    if let Some((uid, gid)) = crate::pg::cluster::server_user()? {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| Error::io(Kind::Internal, format!("chown {}", dir.display()), e))?;
    }
    Ok(())
}

/// The report of a drill that could not be planned: the archive could not
/// carry it (a corrupt or missing segment), which is a drill's finding too.
pub fn markdown_unplanned(
    job: &str,
    zone: &jiff::tz::TimeZone,
    started: Timestamp,
    host: &str,
    error: &Error,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Disaster-recovery drill: job {job} (point in time)\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let why = error.to_string().replace('|', "\\|").replace('\n', " ");
    for (k, v) in [
        (
            "Result",
            format!("**FAILED** before the restore began: {why}"),
        ),
        ("Started", time::show(started, zone)),
        ("Host", host.to_owned()),
        (
            "Hint",
            error
                .hint()
                .unwrap_or("`backup verify --job J --wal` reads the whole archive")
                .replace('|', "\\|"),
        ),
        (
            "RTO",
            "not reached: the drill failed before the data was proven".to_owned(),
        ),
    ] {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    md
}

/// The drill's report, in Markdown, in the form of a logical drill's.
pub fn markdown(plan: &PitrDrillPlan, o: &PitrDrillOutcome, host: &str) -> String {
    let p = &plan.pitr;
    let zone = &p.timezone;
    let show = |at: Timestamp| time::show(at, zone);
    let mut md = String::new();
    let verdict = match o.failure() {
        None => "**PASSED**".to_owned(),
        Some(why) => format!("**FAILED**: {}", why.replace('|', "\\|")),
    };
    let _ = writeln!(
        md,
        "# Disaster-recovery drill: job {} (point in time)\n",
        p.job
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let rows = [
        ("Result", verdict),
        ("Started", show(o.started_at)),
        ("Host", host.to_owned()),
        (
            "Base backup",
            format!(
                "{} of job {}: PostgreSQL {}, {} stored, consistent at {}{}",
                p.backup.id,
                p.job,
                p.backup.server_version,
                bytes_human(p.backup.stored_size()),
                show(o.base_consistent_at),
                chain_text(&p.chain)
            ),
        ),
        (
            "Recover to",
            match o.requested_at {
                Some(at) if o.drawn_at_random => format!(
                    "{} (drawn at random from the last 24 hours of the window)",
                    show(at)
                ),
                Some(at) => show(at),
                None => "the end of the archive".to_owned(),
            },
        ),
        (
            "Recovered to",
            match (
                &o.recovered_to,
                o.recovery.as_ref().and_then(|r| r.stopped_before.as_ref()),
            ) {
                (Some(at), Some(stop)) => format!(
                    "{} (last transaction applied); stopped before transaction {} at {}",
                    show(*at),
                    stop.xid,
                    show(stop.at)
                ),
                (Some(at), None) => format!("{} (last transaction applied)", show(*at)),
                (None, _) => "not reached".to_owned(),
            },
        ),
        (
            "WAL replayed",
            format!(
                "{} .. {} ({} segments, {})",
                p.wal.first,
                p.wal.last,
                o.wal_segments,
                bytes_human(o.wal_bytes)
            ),
        ),
        (
            "Recovery window",
            format!(
                "{} .. {}",
                show(p.window.from),
                p.window.to.map_or("?".to_owned(), show)
            ),
        ),
        (
            "Read from",
            format!("storage {} ({})", p.storage, plan.storage_location),
        ),
        ("Restored into", o.target.clone()),
        (
            "RTO",
            o.rto_seconds.map_or_else(
                || "not reached: the drill failed before the data was proven".to_owned(),
                |s| format!("{} (start of the drill to proven data)", seconds(s)),
            ),
        ),
        (
            "RPO",
            o.rpo_seconds.map_or_else(
                || "unknown: no transaction was replayed".to_owned(),
                |s| {
                    format!(
                        "{} (start of the drill minus the last transaction replayed)",
                        seconds(s)
                    )
                },
            ),
        ),
    ];
    crate::jobs::drill::report_body(&mut md, &rows, &o.steps, &o.proof.checks);
    if !o.proof.databases.is_empty() {
        let _ = writeln!(
            md,
            "\n## Databases read end to end\n\n| Database | Read | Time | pg_amcheck |\n|---|---:|---:|---|"
        );
        for d in &o.proof.databases {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} s | {} |",
                d.name.replace('|', "\\|"),
                bytes_human(d.bytes),
                d.seconds,
                d.amcheck
                    .as_deref()
                    .unwrap_or("-")
                    .replace('|', "\\|")
                    .replace('\n', " ")
            );
        }
    }
    if !o.warnings.is_empty() || !p.notes.is_empty() {
        let _ = writeln!(md, "\n## Warnings\n");
        for w in o.warnings.iter().chain(&p.notes) {
            let _ = writeln!(md, "- {w}");
        }
    }
    md
}

/// ", incremental: combined with FULL + ..." for a chain; nothing for a full backup.
fn chain_text(chain: &[crate::catalog::Manifest]) -> String {
    if chain.is_empty() {
        return String::new();
    }
    format!(
        ", incremental: combined with {} by pg_combinebackup",
        chain
            .iter()
            .map(|m| m.id.to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    )
}
