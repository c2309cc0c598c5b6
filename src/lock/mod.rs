//! The locks a run takes so one job runs once at a time: one runner of a
//! job across replicas (PostgreSQL advisory locks, [`server`], or a lock
//! file of this host for a job without a database, [`local`]), and a
//! database shared with dumps or taken alone by heavy maintenance. The
//! engine takes them through [`Locks`], which tests replace with
//! [`InProcessLocks`].

mod local;
mod server;

pub use local::LocalLock;
pub use server::{RunLock, job_running, lock_key};

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::model::Database;

/// Whether a run may share its database with dumps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseUse {
    /// A dump, or anything that coexists with one.
    Shared,
    /// VACUUM FULL, a non-concurrent REINDEX: nothing else may dump meanwhile.
    Exclusive,
}

/// Takes a job's lock, and tells whether some process holds it.
#[async_trait]
pub trait Locks: Send + Sync {
    /// The job's lock, or `None` when another process holds it.
    async fn try_take(&self, db: Option<&Database>, job: &str) -> Result<Option<Box<dyn Held>>>;
    /// Whether a run of the job holds its lock now: a peek, never a wait.
    async fn running(&self, db: Option<&Database>, job: &str) -> Result<bool>;
}

/// A job's lock, held for one run.
#[async_trait]
pub trait Held: Send + Sync {
    /// Whether the session holding it ended: then it holds nothing.
    fn is_lost(&self) -> bool;
    /// Resolves, with why, when the lock is lost during the run.
    async fn watch(&self) -> Error;
    /// Takes the database in `mode`, waiting for the other mode to go;
    /// `on_wait` says, once, that it waits.
    async fn use_database(
        &self,
        mode: DatabaseUse,
        on_wait: Box<dyn FnOnce() + Send>,
    ) -> Result<()>;
    /// Gives the database back (between attempts).
    async fn leave_database(&self, mode: DatabaseUse);
}

/// The real locks: advisory locks on the job's database.
pub struct ServerLocks;

#[async_trait]
impl Locks for ServerLocks {
    async fn try_take(&self, db: Option<&Database>, job: &str) -> Result<Option<Box<dyn Held>>> {
        Ok(RunLock::try_take(db, job)
            .await?
            .map(|l| Box::new(l) as Box<dyn Held>))
    }

    async fn running(&self, db: Option<&Database>, job: &str) -> Result<bool> {
        job_running(db, job).await
    }
}

#[async_trait]
impl Held for RunLock {
    fn is_lost(&self) -> bool {
        RunLock::is_lost(self)
    }
    async fn watch(&self) -> Error {
        RunLock::watch(self).await
    }
    async fn use_database(
        &self,
        mode: DatabaseUse,
        on_wait: Box<dyn FnOnce() + Send>,
    ) -> Result<()> {
        RunLock::use_database(self, mode, on_wait).await
    }
    async fn leave_database(&self, mode: DatabaseUse) {
        RunLock::leave_database(self, mode).await
    }
}

/// Locks of this process alone, for tests: a job is held until its lock is
/// dropped, and a lock can be made to be lost.
#[derive(Default, Clone)]
pub struct InProcessLocks {
    held: Arc<Mutex<BTreeSet<String>>>,
    lose: Arc<Mutex<BTreeSet<String>>>,
}

impl InProcessLocks {
    /// Makes the held lock of `job` read as lost from now on.
    pub fn lose(&self, job: &str) {
        lock(&self.lose).insert(job.to_owned());
    }

    /// Holds `job`'s lock as another process would, until the guard drops.
    pub fn hold(&self, job: &str) -> Option<Box<dyn Held>> {
        let mut held = lock(&self.held);
        held.insert(job.to_owned()).then(|| {
            Box::new(InProcessHeld {
                job: job.to_owned(),
                locks: self.clone(),
            }) as Box<dyn Held>
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl Locks for InProcessLocks {
    async fn try_take(&self, _: Option<&Database>, job: &str) -> Result<Option<Box<dyn Held>>> {
        lock(&self.lose).remove(job);
        Ok(self.hold(job))
    }

    async fn running(&self, _: Option<&Database>, job: &str) -> Result<bool> {
        Ok(lock(&self.held).contains(job))
    }
}

struct InProcessHeld {
    job: String,
    locks: InProcessLocks,
}

#[async_trait]
impl Held for InProcessHeld {
    fn is_lost(&self) -> bool {
        lock(&self.locks.lose).contains(&self.job)
    }
    async fn watch(&self) -> Error {
        loop {
            if self.is_lost() {
                return Error::database(format!("job {}: the lock was lost", self.job)).temporary();
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    async fn use_database(&self, _: DatabaseUse, _: Box<dyn FnOnce() + Send>) -> Result<()> {
        Ok(())
    }
    async fn leave_database(&self, _: DatabaseUse) {}
}

impl Drop for InProcessHeld {
    fn drop(&mut self) {
        lock(&self.locks.held).remove(&self.job);
    }
}
