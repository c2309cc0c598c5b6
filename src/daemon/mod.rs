//! `backup daemon`: runs every scheduled job at its fire times, serves health
//! and metrics, reloads on SIGHUP and stops cleanly on SIGTERM.
//!
//! The scheduling loop is ours, on croner and an injected clock: the
//! [`scheduler::Scheduler`] decides, this loop waits and starts runs, the
//! [`Engine`] runs them. Each run is a task; when it ends the loop hears of it
//! and may start a queued run.

mod http;
pub mod metrics;
pub mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{Engine, RunRequest};
use crate::error::{Error, Result};
use crate::model::{CatchUp, Clock, Config};
use crate::report::{self, Progress, RunHistory};
use metrics::Metrics;
use scheduler::{Decision, Entry, Fire, Scheduler};

/// Where the status page, `/health/*` and `/metrics` are served unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9187";
/// How long running jobs may finish after SIGTERM, unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// The loop looks at the clock at least this often, so a wall-clock jump (NTP,
/// a resumed VM) delays a run by no more than this.
const MAX_NAP: Duration = Duration::from_secs(30);

pub struct Options {
    pub config_path: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub grace: Option<Duration>,
}

/// What the HTTP handlers and the loop share.
pub struct Shared {
    engine: RwLock<Arc<Engine>>,
    metrics: Arc<Metrics>,
    health: tokio::sync::Mutex<Option<(std::time::Instant, http::Health)>>,
    /// The status page last rendered, and when.
    page: tokio::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Shared {
    fn engine(&self) -> Arc<Engine> {
        self.engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn entries(config: &Config) -> Vec<Entry> {
    config
        .jobs
        .values()
        .filter_map(|job| {
            job.schedule.clone().map(|schedule| Entry {
                job: job.name.clone(),
                schedule,
                overlap: job.policy.overlap,
            })
        })
        .collect()
}

fn engine_for(config: Config, clock: Arc<dyn Clock>, metrics: &Arc<Metrics>) -> Arc<Engine> {
    let progress: Arc<dyn Progress> = Arc::new(report::Hidden);
    Arc::new(Engine::new(config, clock, progress).with_observer(metrics.clone()))
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(options: Options, config: Config, clock: Arc<dyn Clock>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let listen =
        |kind| signal(kind).map_err(|e| Error::internal(format!("cannot listen for signals: {e}")));
    let (mut term, mut int, mut hup) = (
        listen(SignalKind::terminate())?,
        listen(SignalKind::interrupt())?,
        listen(SignalKind::hangup())?,
    );
    let scheduled = entries(&config);
    if scheduled.is_empty() {
        return Err(
            Error::config("no job has a schedule, so the daemon would never run anything")
                .with_hint(
                    "add `schedule = \"0 3 * * *\"` to a job, or run jobs with `backup run`",
                ),
        );
    }
    let address = match options.listen.or(config.daemon.listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN
            .parse()
            .map_err(|e| Error::internal(format!("default address: {e}")))?,
    };
    let grace = options
        .grace
        .or(config.daemon.grace)
        .unwrap_or(DEFAULT_GRACE);
    let token = bearer_token(address, config.daemon.token.as_ref())?;
    warn_of_unreadable_secrets(&config, "");

    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        engine: RwLock::new(engine_for(config, clock.clone(), &metrics)),
        metrics: metrics.clone(),
        health: tokio::sync::Mutex::new(None),
        page: tokio::sync::Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        Error::config(format!("cannot listen on {address}: {e}"))
            .with_hint("pass --listen ADDR or set listen in [daemon]; is another daemon running?")
    })?;
    let router = http::router(shared.clone(), token);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("the HTTP server stopped: {e}");
        }
    });
    tracing::info!(
        "daemon started: {} scheduled job(s); the status page, /health and /metrics on http://{address}",
        scheduled.len()
    );

    let mut book = Scheduler::default();
    book.set_jobs(scheduled, clock.now());
    let engine = shared.engine();
    absorb_history(&engine, &metrics).await;
    metrics.history_read();
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let start = |fire: Fire, engine: Arc<Engine>| {
        let done = done_tx.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let job = fire.job.clone();
            let request = RunRequest {
                trigger: fire.trigger,
                scheduled_for: Some(fire.at),
                cancel,
                accept_new_source: false,
                full: false,
            };
            if let Err(e) = engine.run(&job, request).await {
                tracing::error!(job = %job, "{e}");
            }
            let _ = done.send(job);
        });
    };
    for (name, job) in &engine.config.jobs {
        if job.policy.catch_up == CatchUp::Latest {
            let last = last_run_start(&engine, name).await;
            if let Some(Decision::Start(fire)) = book.catch_up(name, last, clock.now()) {
                tracing::info!(job = %name, "catching up the run missed at {}", fire.at);
                start(fire, engine.clone());
            }
        }
    }

    let stop_signal = loop {
        let now = clock.now();
        let engine = shared.engine();
        for decision in book.due(now) {
            match decision {
                Decision::Start(fire) => start(fire, engine.clone()),
                Decision::Skip(fire, reason) => {
                    let engine = engine.clone();
                    tasks.spawn(
                        async move { engine.record_skipped(&fire.job, fire.at, reason).await },
                    );
                }
            }
        }
        for name in engine.config.jobs.keys() {
            metrics.set_next_run(name, book.next_run(name));
        }
        let nap = book.next_wake().map_or(MAX_NAP, |wake| {
            wake.duration_since(now).unsigned_abs().min(MAX_NAP)
        });
        tokio::select! {
            () = clock.sleep(nap) => {}
            Some(job) = done_rx.recv() => {
                if let Some(fire) = book.finished(&job) {
                    start(fire, shared.engine());
                }
            }
            _ = hup.recv() => reload(&options, &shared, &mut book, &clock, &metrics).await,
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };

    tasks.close();
    let running = tasks.len();
    tracing::info!(
        "{stop_signal} received: starting no new runs; {running} running, given up to {}s to finish",
        grace.as_secs()
    );
    let finished = tokio::select! {
        result = tokio::time::timeout(grace, tasks.wait()) => {
            if result.is_err() {
                tracing::warn!("the grace period is over: cancelling the runs still going");
            }
            result.is_ok()
        }
        // A second signal (Ctrl-C twice) means now.
        _ = term.recv() => false,
        _ = int.recv() => false,
    };
    if !finished {
        cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(30), tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("some runs did not stop within 30s of being cancelled");
        }
    }
    tracing::info!("daemon stopped");
    Ok(())
}

/// The token `/`, `/health` and `/metrics` require: the one `[daemon]
/// token_env` names, wherever the daemon listens (a proxy on this host may
/// forward to loopback); none on loopback without it (only this host can
/// connect, and the router then refuses requests for other host names, as
/// a page opened through DNS rebinding would send). Elsewhere without one
/// the daemon does not start: the page and the metrics would tell anyone on
/// the network which databases and storages there are and what failed. The
/// token is read once, at start.
fn bearer_token(
    address: SocketAddr,
    token: Option<&crate::secret::SecretRef>,
) -> Result<Option<crate::secret::Secret>> {
    match token {
        Some(token) => Ok(Some(token.resolve()?.clone())),
        None if address.ip().is_loopback() => Ok(None),
        None => Err(Error::config(format!(
            "the daemon would serve its status page, /health and /metrics on {address}, \
             which other hosts can reach, without a token"
        ))
        .with_hint(
            "set token_env = \"BACKUP_DAEMON_TOKEN\" in [daemon] and export that variable \
             (make one with `openssl rand -hex 32`), or listen on 127.0.0.1",
        )),
    }
}

/// Secrets are read when a run needs them; a daemon says at once which it
/// cannot read, rather than at the first run that needs one (which fails).
fn warn_of_unreadable_secrets(config: &Config, prefix: &str) {
    for secret in config.secrets() {
        if let Err(u) = secret.try_resolve() {
            let e = u.to_error();
            let hint = e.hint().map_or(String::new(), |h| format!(" (hint: {h})"));
            tracing::warn!("{prefix}{e}; runs that need it will fail{hint}");
        }
    }
}

/// SIGHUP: read the job files again. A file that does not validate changes
/// nothing: the daemon goes on with what it had, and says why.
async fn reload(
    options: &Options,
    shared: &Shared,
    book: &mut Scheduler,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) {
    let path = options.config_path.clone();
    let loaded = tokio::task::spawn_blocking(move || crate::config::load(path.as_deref())).await;
    let config = match loaded {
        Ok(Ok(config)) => config,
        Ok(Err(e)) => {
            let hint = e.hint().map_or(String::new(), |h| format!(" (hint: {h})"));
            return tracing::error!(
                "SIGHUP: the job files do not validate, keeping the previous configuration: {e}{hint}"
            );
        }
        Err(e) => return tracing::error!("SIGHUP: reloading failed: {e}"),
    };
    let old = shared.engine();
    if config.daemon.listen != old.config.daemon.listen {
        tracing::warn!("SIGHUP: [daemon] listen changed; the address changes at the next start");
    }
    if config.daemon.token != old.config.daemon.token {
        tracing::warn!("SIGHUP: [daemon] token_env changed; the token changes at the next start");
    }
    if entries(&config).is_empty() {
        return tracing::error!(
            "SIGHUP: no job in the new files has a schedule, keeping the previous configuration"
        );
    }
    warn_of_unreadable_secrets(&config, "SIGHUP: ");
    book.set_jobs(entries(&config), clock.now());
    let jobs = config.jobs.len();
    for (name, job) in &config.jobs {
        metrics.know_job(name, job.kind.name());
    }
    for name in config.storages.keys() {
        metrics.know_storage(name);
    }
    *shared.engine.write().unwrap_or_else(|p| p.into_inner()) =
        engine_for(config, clock.clone(), metrics);
    *shared.health.lock().await = None;
    *shared.page.lock().await = None;
    tracing::info!("SIGHUP: configuration reloaded, {jobs} job(s)");
}

/// When the newest recorded run of a job started, as catch-up counts runs
/// (see [`RunHistory::last_start_for_catch_up`]).
async fn last_run_start(engine: &Engine, job: &str) -> Option<Timestamp> {
    let spec = engine.config.job(job).ok()?;
    let (start, errors) = RunHistory::ask(spec, RunHistory::last_start_for_catch_up).await;
    for e in errors {
        tracing::warn!(job = %job, "{e}");
    }
    start.flatten()
}

/// Seeds the metrics from the records in storage, so ages survive a restart.
async fn absorb_history(engine: &Engine, metrics: &Metrics) {
    for name in engine.config.storages.keys() {
        metrics.know_storage(name);
    }
    let mut tests = Vec::new();
    let mut runs = Vec::new();
    for (name, job) in &engine.config.jobs {
        metrics.know_job(name, job.kind.name());
        let (latest, errors) = RunHistory::ask(job, RunHistory::latest).await;
        for e in errors {
            tracing::warn!(job = %name, "{e}");
        }
        let Some(latest) = latest else { continue };
        // A backup job's newest passed restore test, whichever job ran it;
        // a restore-test job's is its backup job's, absorbed with that job.
        if job.records_dir() == name {
            tests.extend(latest.last_restore_test);
        }
        // The success first: the newest run's duration is the one to show.
        runs.extend(latest.last_success);
        runs.extend(latest.last_run);
    }
    // The tests before every job's own runs: a test absorbed after its
    // test job's newest run would show the test's duration as that job's.
    for record in tests.iter().chain(&runs) {
        metrics.absorb(record, false);
    }
}
