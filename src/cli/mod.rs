//! The command line: flags in, one engine call per command, text or JSON out.
//! One file per command; this one parses, sets up logging and maps errors to
//! exit codes (the table is in README.md).

mod config;
mod list;
mod restore;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::engine::Engine;
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
    /// Work with the configuration.
    #[command(subcommand)]
    Config(config::Command),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            crate::report::print_error(&Error::internal(format!("cannot start the runtime: {e}")));
            return ExitCode::from(crate::error::Kind::Internal.exit_code());
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.is_reported() {
                crate::report::print_error(&e);
            }
            ExitCode::from(e.exit_code())
        }
    }
}

async fn dispatch(cli: Cli) -> Result<()> {
    let config = crate::config::load(cli.config.as_deref())?;
    let engine = Engine::new(config, Arc::new(SystemClock), crate::report::for_stderr());
    match cli.command {
        Command::Run(args) => run::run(&engine, args, cli.json).await,
        Command::List(args) => list::run(&engine, args, cli.json).await,
        Command::Restore(args) => restore::run(&engine, args, cli.json).await,
        Command::Config(command) => config::run(&engine, command, cli.json),
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

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))?;
    println!("{text}");
    Ok(())
}
