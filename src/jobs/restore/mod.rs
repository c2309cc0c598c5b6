//! A restore: plan first (which backup, which storage, what happens to the
//! target), then carry the plan out and prove the result against the manifest.
//!
//! Storage reader → stored SHA-256 → decompress → raw SHA-256 → `pg_restore`,
//! streamed into its stdin; with `--jobs N > 1` spooled to a temporary file
//! first, because a parallel `pg_restore` must seek. Afterwards every table's
//! row count is compared with the manifest; any difference fails the restore.
//!
//! A restore never touches the target before the new copy is proven: it
//! restores into a database of its own beside the target
//! (`<target>__restoring_<id>`), proves it, and only then puts it in the
//! target's place, renaming both in one transaction. A failure leaves the
//! target as it was and drops the copy. `--in-place` is the old way (drop the
//! target, restore into it), for servers without room for two copies.
//!
//! Each step in a file of its own: `choose.rs` finds the backup and the
//! storage to read it from, `plan.rs` decides the rest before anything is
//! touched, `execute.rs` carries a plan out and `swap.rs` puts the proven
//! copy in the target's place; `load.rs` streams a backup into `pg_restore`
//! (restore tests and drills use it too), `leftovers.rs` names the databases
//! a restore works under and finds those an interrupted one left, and
//! `guard.rs` drops a database whose work was stopped.

mod choose;
mod execute;
mod globals;
mod guard;
mod leftovers;
mod load;
mod plan;
mod swap;

use crate::catalog::Selector;
use crate::pg::command::RestoreFlags;

pub use choose::{choose, named};
pub use execute::execute;
pub use globals::{Globals, GlobalsPlan, apply_globals, globals_of, plan_globals};
pub use guard::DropGuard;
pub use leftovers::{Leftovers, beside};
pub use load::{Load, RestoreClient, load, pg_restore_for};
pub use plan::{Method, RestorePlan, plan};

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub selector: Selector,
    pub target_db: String,
    /// Read from this storage; by default the first of the job's storages that
    /// has the backup.
    pub storage: Option<String>,
    pub flags: RestoreFlags,
    /// `--clean`: an existing, non-empty target may be replaced.
    pub clean: bool,
    /// `--in-place`: drop the target first and restore into it.
    pub in_place: bool,
    /// `--keep-failed`: a copy that fails its proof stays for a look.
    pub keep_failed: bool,
    /// `--globals`: the backup's roles the server lacks are created first.
    pub globals: bool,
}

/// What a finished restore proved.
#[derive(Debug)]
pub struct RestoreOutcome {
    pub tables_checked: usize,
    pub rows_checked: i64,
    /// What could not be kept (a setting this server refuses, a role it
    /// lacks, the old database that could not be dropped), said, not fatal.
    pub warnings: Vec<String>,
    /// `server_version` of the server restored into, for the record beside
    /// the backup's: a restore into a newer major is an upgrade.
    pub target_server: String,
}
