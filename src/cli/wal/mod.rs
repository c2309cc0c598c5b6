//! `backup wal push|fetch|check`: the WAL archive of a physical job, as
//! PostgreSQL's `archive_command` and `restore_command` call it, and the
//! check an operator runs once at setup.

mod check;
mod fetch;
mod push;

pub(super) use fetch::{failure_code_here as restore_failure_code, restore_exit_code};

use crate::engine::Engine;
use crate::error::Result;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Archive one WAL file (archive_command = 'backup wal push --job J %p').
    Push(push::Args),
    /// Fetch one archived WAL file (restore_command = 'backup wal fetch --job J %f %p').
    Fetch(fetch::Args),
    /// Check the server's archiving settings and prove the chain end to end.
    Check(check::Args),
}

pub async fn run(engine: &Engine, command: Command, json: bool) -> Result<()> {
    match command {
        Command::Push(args) => push::run(engine, args, json).await,
        Command::Fetch(args) => fetch::run(engine, args, json).await,
        Command::Check(args) => check::run(engine, args, json).await,
    }
}
