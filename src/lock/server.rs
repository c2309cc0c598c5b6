//! The locks of a job with a database, held on its server: an advisory lock
//! per job (one runner across replicas) and one per database (dumps share
//! it; heavy maintenance takes it alone), on a session of the run's own.

use std::time::Duration;

use super::DatabaseUse;
use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg::{Connection, connect, query_error};

/// What a run holds on its database, on a connection of its own, for as long
/// as it runs: the job's advisory lock (one runner per job across replicas)
/// and the database's (dumps share it; heavy maintenance takes it alone).
/// A job without a database (a files job) holds a lock file of this host.
pub struct RunLock {
    held: Held,
}

enum Held {
    Session {
        conn: Box<Connection>,
        database: String,
    },
    /// Held for as long as it lives; released when dropped.
    Local { _lock: super::LocalLock },
}

/// An advisory lock key: the first 8 bytes of a SHA-256 of what it stands for.
pub fn lock_key(what: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(what.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

impl RunLock {
    /// How often the lock's session is checked while a run holds it.
    const WATCH_EVERY: Duration = Duration::from_secs(10);

    /// Takes the lock of `job`, or `None` when another session (or, for a
    /// job without a database, another process of this host) holds it.
    pub async fn try_take(db: Option<&Database>, job: &str) -> Result<Option<RunLock>> {
        let Some(db) = db else {
            let taken = super::LocalLock::try_take(job)?;
            return Ok(taken.map(|lock| RunLock {
                held: Held::Local { _lock: lock },
            }));
        };
        let conn = connect(db, None).await?;
        // The session idles for the whole run: a server-wide idle timeout must
        // not end it (and with it the lock). The setting exists from 14 on.
        if let Err(e) = conn
            .client
            .batch_execute("SET idle_session_timeout = 0")
            .await
        {
            tracing::debug!("idle_session_timeout not set: {e}");
        }
        let row = conn
            .client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&lock_key(&format!("backup job {job}"))],
            )
            .await
            .map_err(|e| query_error(&format!("taking the lock of job {job}"), e))?;
        let taken: bool = row.get(0);
        Ok(taken.then(|| RunLock {
            held: Held::Session {
                database: conn.dbname.clone(),
                conn: Box::new(conn),
            },
        }))
    }

    /// The session and database name of a server-held lock.
    fn session(&self) -> Option<(&Connection, &str)> {
        match &self.held {
            Held::Session { conn, database } => Some((conn, database)),
            Held::Local { .. } => None,
        }
    }

    /// Whether the server ended the lock's session, and with it the locks.
    pub fn is_lost(&self) -> bool {
        self.session()
            .is_some_and(|(conn, _)| conn.client.is_closed())
    }

    /// Resolves, with an error, once the lock's session stops answering.
    pub async fn watch(&self) -> Error {
        let Some((conn, database)) = self.session() else {
            // A lock file is held as long as the process lives.
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(Self::WATCH_EVERY).await;
            if let Err(e) = conn.client.simple_query("SELECT 1").await {
                return Error::database(format!(
                    "database {database}: lost the session holding the job's lock ({e}); the run was \
                     stopped so that no other run can start beside it"
                ))
                .with_hint(
                    "check the server's log for a restart or a terminated session; \
                     the run is tried again if `retries` allows",
                )
                .temporary();
            }
        }
    }

    /// Gives the database's lock back (between attempts).
    pub async fn leave_database(&self, mode: DatabaseUse) {
        let Some((conn, database)) = self.session() else {
            return;
        };
        let sql = match mode {
            DatabaseUse::Shared => "SELECT pg_advisory_unlock_shared($1)",
            DatabaseUse::Exclusive => "SELECT pg_advisory_unlock($1)",
        };
        let key = lock_key(&format!("backup database {database}"));
        if let Err(e) = conn.client.query_one(sql, &[&key]).await {
            tracing::debug!("releasing the database's lock: {e}");
        }
    }

    /// Waits until the run may use its database as `mode` says; `on_wait` is
    /// called once if it has to wait. Polls rather than blocks, so a cancelled
    /// run leaves no lock request queued on the server.
    pub async fn use_database(&self, mode: DatabaseUse, on_wait: impl FnOnce()) -> Result<()> {
        let Some((conn, database)) = self.session() else {
            return Ok(());
        };
        let sql = match mode {
            DatabaseUse::Shared => "SELECT pg_try_advisory_lock_shared($1)",
            DatabaseUse::Exclusive => "SELECT pg_try_advisory_lock($1)",
        };
        let key = lock_key(&format!("backup database {database}"));
        let mut on_wait = Some(on_wait);
        loop {
            let row = conn
                .client
                .query_one(sql, &[&key])
                .await
                .map_err(|e| query_error("taking the database's advisory lock", e))?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            if let Some(f) = on_wait.take() {
                f();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Whether a run of `job` holds its lock now. Only looks: taking the lock,
/// even for a moment, could make a run starting then skip its fire time.
pub async fn job_running(db: Option<&Database>, job: &str) -> Result<bool> {
    let Some(db) = db else {
        return super::LocalLock::is_held(job);
    };
    let conn = connect(db, None).await?;
    let key = lock_key(&format!("backup job {job}"));
    // A bigint advisory key shows as classid (high 32 bits), objid (low), objsubid 1.
    let row = conn
        .client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks \
               WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND ((classid::int8 << 32) | objid::int8) = $1)",
            &[&key],
        )
        .await
        .map_err(|e| query_error(&format!("looking for a run of job {job}"), e))?;
    Ok(row.get(0))
}
