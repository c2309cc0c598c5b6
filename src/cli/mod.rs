//! The command line: flags in, one engine call per command, text or JSON out.
//! One file per command; this one parses, sets up logging and maps errors to
//! exit codes (the table is in README.md).

mod check;
mod config;
mod daemon;
mod db;
mod drill;
mod list;
mod pin;
mod prune;
mod report;
mod restore;
mod run;
mod verify;
mod wal;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::Signal;

use crate::engine::{Engine, Stop};
use crate::error::{Error, Result};
use crate::model::SystemClock;

#[derive(Debug, Parser)]
#[command(
    name = "backup",
    version,
    about = "Logical PostgreSQL backups that stream, verify and restore"
)]
pub struct Cli {
    /// Job file, or a directory whose *.toml files are read together.
    #[arg(long, global = true, env = "BACKUP_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// How log lines on stderr look.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run jobs once, now.
    Run(run::Args),
    /// List complete backups, newest first.
    List(list::Args),
    /// Restore a backup into a database.
    Restore(restore::Args),
    /// Rehearse disaster recovery: restore into a throwaway cluster, check, report.
    Drill(drill::Args),
    /// Read backups back and check them against their manifests.
    Verify(verify::Args),
    /// Delete what the retention policies no longer keep.
    Prune(prune::Args),
    /// Keep a backup whatever retention says.
    Pin(pin::PinArgs),
    /// Let retention decide a pinned backup's fate again.
    Unpin(pin::UnpinArgs),
    /// Run every scheduled job at its times; serve the status page, /health/* and /metrics.
    Daemon(daemon::Args),
    /// Jobs, their last and next runs, newest backups.
    Status(check::StatusArgs),
    /// For monitors (a Nagios plugin): one line with performance data; exit 0 OK,
    /// 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Check(check::CheckArgs),
    /// The status page (what the daemon serves at /) as one HTML file.
    Report(report::Args),
    /// Work with the configuration.
    #[command(subcommand)]
    Config(config::Command),
    /// Look at a database: sizes, bloat, dead tuples, wraparound, sessions.
    #[command(subcommand)]
    Db(db::Command),
    /// The WAL archive of a physical job: push, fetch, check.
    #[command(subcommand)]
    Wal(wal::Command),
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    init_logging(cli.log_format);
    // `check` speaks the monitoring-plugin convention whatever happens.
    let plugin = matches!(cli.command, Command::Check(_)).then_some(cli.json);
    let as_plugin = |result| match plugin {
        Some(json) => check::unknown_unless_judged(result, json),
        None => result,
    };
    // `wal fetch` speaks restore_command's: PostgreSQL ends recovery on any
    // code below 126 (see src/cli/wal/fetch.rs).
    let code: fn(&Error) -> u8 = match &cli.command {
        Command::Wal(wal::Command::Fetch(_)) => wal::restore_exit_code,
        _ => Error::exit_code,
    };
    // A `restore_command` call runs once per segment while replay waits on
    // it: without worker threads to start it answers sooner. Its background
    // fetch (`--ahead-of`) fetches in parallel and keeps them.
    let one_call = matches!(&cli.command, Command::Wal(wal::Command::Fetch(f)) if !f.is_ahead());
    let mut builder = match one_call {
        true => tokio::runtime::Builder::new_current_thread(),
        false => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let e = Error::internal(format!("cannot start the runtime: {e}"));
            return exit_with(as_plugin(Err(e)), code);
        }
    };
    let (left_behind, what_to_do) = cli.command.left_behind();
    let is_daemon = matches!(cli.command, Command::Daemon(_));
    // Commands that act stop themselves when told: their run record says
    // they were interrupted, and a drill tears its throwaway cluster down.
    let stops_itself = cli.command.stops_itself();
    // `run` knows what it stopped: the kind of the job that was running.
    let says_what_stopped = matches!(cli.command, Command::Run(_));
    let result = runtime.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        // Listening starts before the command does: a signal that arrived
        // before the first poll of a lazily made listener would kill the
        // process with the default action, cleaning nothing up.
        let signals = if is_daemon {
            None
        } else {
            Some(Signals::listen())
        };
        let mut work = Box::pin(dispatch(cli, cancel.clone()));
        // The daemon has its own signal handling: SIGTERM is how it is stopped.
        let result = match signals {
            None => (&mut work).await,
            Some(signals) => tokio::select! {
                result = &mut work => result,
                signal = signals.first() => {
                    let mut stopped = None;
                    if stops_itself {
                        cancel.cancel();
                        match tokio::time::timeout(STOP_LIMIT, &mut work).await {
                            Err(_) => tracing::warn!(
                                "the run did not stop in time; no run record was written"
                            ),
                            Ok(Err(e))
                                if says_what_stopped
                                    && e.kind() == crate::error::Kind::Interrupted =>
                            {
                                stopped = Some(e.message().to_owned());
                            }
                            Ok(_) => {}
                        }
                    }
                    // Otherwise dropping the command's future drops its writers,
                    // which abort their uploads as clean-ups waited for below.
                    Err(match signal {
                        Ok(name) => Error::interrupted(format!(
                            "{name} received: {}",
                            stopped.unwrap_or(left_behind)
                        ))
                        .with_hint(what_to_do),
                        Err(e) => e,
                    })
                }
            },
        };
        // Dropped now, not at the end of this block: what its drop starts
        // (aborting uploads, dropping a half-restored copy) is waited for below.
        drop(work);
        let (uploads, notifications, cancels) = tokio::join!(
            crate::storage::finish_cleanups(CLEANUP_LIMIT),
            crate::notify::finish(crate::notify::FINISH_LIMIT),
            crate::pg::connect::finish_cancels(CANCEL_LIMIT)
        );
        if !cancels {
            tracing::warn!(
                "a query cancelled on the server had not been told to stop after {}s; \
                 see pg_stat_activity",
                CANCEL_LIMIT.as_secs()
            );
        }
        if !notifications {
            tracing::warn!("some notifications were still being sent at exit");
        }
        if !uploads {
            tracing::warn!(
                "some unfinished uploads were still being aborted after {}s; \
                 they stay in the bucket until a lifecycle rule or a later abort removes them",
                CLEANUP_LIMIT.as_secs()
            );
        }
        result
    });
    // A blocking task may still be feeding a child that was told to stop.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    exit_with(as_plugin(result), code)
}

fn exit_with(result: Result<()>, code: fn(&Error) -> u8) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_reported() {
                crate::report::print_error(&e);
            }
            ExitCode::from(code(&e))
        }
    }
}

/// A command line clap cannot parse: clap's usage message and exit 2, except
/// for `check`, whose monitors take exit 2 for CRITICAL: there it is UNKNOWN,
/// exit 3, with one status line on stdout (and clap's message on stderr).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    // The same arguments read leniently say which subcommand they were for.
    let lenient = Cli::command().ignore_errors(true).try_get_matches();
    let restore = lenient.as_ref().is_ok_and(|m| {
        m.subcommand_matches("wal")
            .is_some_and(|w| w.subcommand_name() == Some("fetch"))
    });
    if restore {
        // A mistyped restore_command must not read as "not archived".
        eprint!("{}", e.render());
        let usual = u8::try_from(e.exit_code()).unwrap_or(2);
        return ExitCode::from(wal::restore_failure_code(usual));
    }
    let Some(matches) = lenient
        .ok()
        .filter(|m| m.subcommand_name() == Some("check"))
    else {
        e.exit();
    };
    let json = matches!(matches.try_get_one::<bool>("json"), Ok(Some(true)));
    let rendered = e.render().to_string();
    let why = rendered
        .lines()
        .next()
        .unwrap_or("the command line could not be understood");
    let why = why.strip_prefix("error: ").unwrap_or(why);
    check::print_unknown(&format!("{why} (see backup check --help)"), json);
    eprint!("{rendered}");
    ExitCode::from(crate::error::Kind::CheckUnknown.exit_code())
}

/// How long the process waits at exit for cancel requests to reach the server.
const CANCEL_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the process waits at exit for unfinished uploads to be aborted.
const CLEANUP_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a stopped `run` or `drill` may take to clean up: a drill stopped
/// during `initdb` waits for it, then stops and removes the cluster. systemd's
/// default stop timeout is the same.
const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(90);

/// SIGINT and SIGTERM, caught from the moment `listen` returns.
struct Signals(Result<(Signal, Signal)>);

impl Signals {
    fn listen() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind| {
            signal(kind).map_err(|e| Error::internal(format!("cannot listen for signals: {e}")))
        };
        Self(
            listen(SignalKind::interrupt())
                .and_then(|int| Ok((int, listen(SignalKind::terminate())?))),
        )
    }

    /// Resolves with the name of the first SIGINT or SIGTERM.
    async fn first(self) -> Result<&'static str> {
        let (mut int, mut term) = self.0?;
        tokio::select! {
            _ = int.recv() => Ok("SIGINT"),
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
}

impl Command {
    /// What an interruption of this command leaves, and what to do about it.
    fn left_behind(&self) -> (String, String) {
        crate::engine::stops::left_behind(match self {
            // Said when the run did not stop within the limit; otherwise
            // the run says what its job's kind left.
            Command::Run(_) => Stop::AnyJob,
            Command::Restore(args) => args.stop(),
            Command::Drill(args) => Stop::Drill {
                on_server: args.uses_server(),
            },
            Command::Prune(_) => Stop::Prune,
            Command::Pin(_) | Command::Unpin(_) => Stop::Pin,
            Command::List(_)
            | Command::Config(_)
            | Command::Daemon(_)
            | Command::Status(_)
            | Command::Check(_)
            | Command::Report(_)
            | Command::Db(_)
            | Command::Wal(_)
            | Command::Verify(_) => Stop::Nothing,
        })
    }

    /// Whether it acts through the engine, which stops it when told and
    /// records the stop; other commands are dropped.
    fn stops_itself(&self) -> bool {
        matches!(
            self,
            Command::Run(_)
                | Command::Drill(_)
                | Command::Restore(_)
                | Command::Prune(_)
                | Command::Verify(_)
                | Command::Pin(_)
                | Command::Unpin(_)
        )
    }
}

async fn dispatch(cli: Cli, cancel: tokio_util::sync::CancellationToken) -> Result<()> {
    let config = crate::config::load(cli.config.as_deref())?;
    let engine = Engine::new(config, Arc::new(SystemClock), crate::report::for_stderr());
    match cli.command {
        Command::Run(args) => run::run(&engine, args, cli.json, &cancel).await,
        Command::List(args) => list::run(&engine, args, cli.json).await,
        Command::Restore(args) => restore::run(&engine, args, cli.json, &cancel).await,
        Command::Config(command) => config::run(&engine, command, cli.json),
        Command::Daemon(args) => daemon::run(engine, args, cli.config).await,
        Command::Status(args) => check::status(&engine, args, cli.json).await,
        Command::Check(args) => check::check(&engine, args, cli.json).await,
        Command::Report(args) => report::run(&engine, args, cli.json).await,
        Command::Db(command) => db::run(&engine, command, cli.json).await,
        Command::Wal(command) => wal::run(&engine, command, cli.json).await,
        Command::Prune(args) => prune::run(&engine, args, cli.json, &cancel).await,
        Command::Verify(args) => verify::run(&engine, args, cli.json, &cancel).await,
        Command::Drill(args) => drill::run(&engine, args, cli.json, &cancel).await,
        Command::Pin(args) => pin::pin(&engine, args, cli.json, &cancel).await,
        Command::Unpin(args) => pin::unpin(&engine, args, cli.json, &cancel).await,
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BACKUP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Writes a file whole or not at all: beside the target, then renamed over
/// it, so a reader never sees half a report. `flag` names the option that
/// gave the path, for the hint.
fn write_whole(path: &std::path::Path, text: &str, flag: &str) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let failed = |e: std::io::Error| {
        Error::io(
            crate::error::Kind::Usage,
            format!("writing {}", path.display()),
            e,
        )
        .with_hint(format!("pass {flag} a path in a writable directory"))
    };
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    // A report is for reading (a web server, an auditor); the temporary
    // file's 0600 would keep it from them.
    {
        use std::os::unix::fs::PermissionsExt;
        file.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(failed)?;
    }
    file.persist(path).map_err(|e| failed(e.error))?;
    Ok(())
}

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}
