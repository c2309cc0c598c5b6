//! A database made for the work at hand, dropped if that work is stopped.

use crate::model::Database;
use crate::pg::{self, database::admin_database};

/// Drops a database this process made for itself (the copy a restore
/// writes, a restore test's scratch database) when dropped before
/// [`DropGuard::disarm`]: the work was stopped (a signal, a timeout drops
/// its future). The process waits for the drop before it exits.
pub struct DropGuard {
    db: Option<Database>,
    name: String,
    /// What the database is, and who drops it if this cannot, for the log.
    what: &'static str,
    otherwise: &'static str,
}

impl DropGuard {
    pub fn new(db: &Database, name: &str, what: &'static str, otherwise: &'static str) -> Self {
        DropGuard {
            db: Some(db.clone()),
            name: name.to_owned(),
            what,
            otherwise,
        }
    }

    pub fn disarm(mut self) {
        self.db = None;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        let otherwise = self.otherwise;
        tracing::info!("dropping {name}, {}", self.what);
        crate::storage::spawn_cleanup(async move {
            let dropped = async {
                let admin = pg::connect(&db, Some(admin_database(&name))).await?;
                pg::drop_database(&admin, &name).await
            };
            if let Err(e) = dropped.await {
                tracing::warn!("{e}; {otherwise}");
            }
        });
    }
}
