//! Point-in-time recovery of a physical job: a base backup laid down as a
//! data directory, PostgreSQL told to replay the job's WAL archive (through
//! `backup wal fetch`) up to a moment, and the recovered cluster proven.
//!
//! `backup restore --job J --at TIME --target-dir DIR` and the drills and
//! restore tests of physical jobs share these steps:
//! - `plan.rs` chooses the base backup and the WAL to replay, and refuses a
//!   moment the archive cannot reach before anything is written;
//! - `lay.rs` streams the base backup into the directory (checked against
//!   its own `backup_manifest` as it passes) and writes the recovery
//!   settings;
//! - `recover.rs` starts a server on the directory, privately (its own
//!   socket directory, trust for that socket only), and waits for recovery
//!   to end;
//! - `prove.rs` proves what recovery reached: the moment, every database
//!   read end to end, `pg_amcheck`, the job's SQL checks.

pub mod drill;
pub mod lay;
pub mod plan;
pub mod prove;
pub mod recover;
pub mod run;
mod scan;

use jiff::Timestamp;
use serde::Serialize;

/// Where recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// `recovery_target_time`: the cluster as it was at this moment (the
    /// last transaction committed at or before it is applied, the first
    /// after it is not).
    Time(Timestamp),
    /// Everything the archive holds.
    Latest,
}

impl Target {
    pub fn time(&self) -> Option<Timestamp> {
        match self {
            Target::Time(at) => Some(*at),
            Target::Latest => None,
        }
    }
}

/// What the restored data directory's `postgresql.auto.conf` tells the
/// server, with `recovery.signal` beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverySettings {
    /// `restore_command`, as the shell runs it (`%f` and `%p` in it); quoted
    /// for the configuration file when written.
    pub restore_command: String,
    pub target: Target,
    /// `recovery_target_action`: `pause` when true, else `promote`.
    pub pause: bool,
    /// `recovery_target_timeline`: `latest` when `None`.
    pub timeline: Option<u32>,
    /// `port`, when the operator chose one.
    pub port: Option<u16>,
    /// `false`: `archive_mode = off`, so a drill's or a test's cluster never
    /// pushes into the job's archive. `true` keeps what the backed-up
    /// server had: the restored one archives its new timeline there.
    pub archive: bool,
}
