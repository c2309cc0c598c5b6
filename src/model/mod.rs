//! The validated model of a configuration: what the rest of `backup` works with.
//!
//! Values here have passed validation in [`crate::config`]: every reference
//! resolves, every zone exists. Secrets are references ([`SecretRef`]), read
//! when a command first needs them. Nothing below this module parses text
//! from the user again.
//!
//! One file per part of a configuration: `databases.rs` and `storages.rs`
//! (what jobs refer to), `jobs.rs` (what every job has, and the prune and
//! restore-test kinds), `backup.rs` (backup jobs: compression, retention,
//! encryption), `maintenance.rs`, and `daemon.rs` (the daemon and its
//! notifiers). `backup_id.rs` and `clock.rs` hold the two values the rest of
//! `backup` passes around. This file holds the whole [`Config`] and how a
//! job is looked up in it.

mod backup;
mod backup_id;
mod clock;
mod daemon;
mod databases;
mod jobs;
mod maintenance;
mod storages;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
pub use crate::secret::SecretRef;

pub use backup::{
    BackupJob, BackupSource, Compression, EncryptionSpec, RetentionBucket, RetentionPolicy,
    WalSettings,
};
pub use backup_id::BackupId;
pub use clock::{Clock, SystemClock};
pub use daemon::{DaemonSettings, Email, Notifier, NotifierKind, SmtpSecurity};
pub use databases::Database;
pub use jobs::{
    CatchUp, Check, Job, JobKind, Overlap, PruneJob, RestoreTestJob, RunPolicy, TestedBackup,
    bytes_human, show_number,
};
pub use maintenance::{MaintenanceJob, Targets, Task, Window};
pub use storages::{AzureAuth, AzureSpec, Retry, S3Keys, S3Spec, Sse, StorageKind, StorageSpec};

/// A whole validated configuration, possibly merged from several files.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub databases: BTreeMap<String, Arc<Database>>,
    pub storages: BTreeMap<String, Arc<StorageSpec>>,
    pub jobs: BTreeMap<String, Job>,
    pub daemon: DaemonSettings,
    pub notifiers: Vec<Arc<Notifier>>,
    /// Where it was read from, as an absolute path: what a restored
    /// server's `restore_command` names. `None` when not read from a file.
    pub source: Option<std::path::PathBuf>,
}

impl Config {
    pub fn job(&self, name: &str) -> Result<&Job> {
        self.jobs.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
            Error::not_found(format!("no job named '{name}'")).with_hint(if known.is_empty() {
                "the configuration declares no jobs".to_owned()
            } else {
                format!("jobs in the configuration: {}", known.join(", "))
            })
        })
    }

    /// [`Config::backup_job`] of a job that dumps a database, for what only
    /// a database backup can do (`what`: "drill", "restore --target-db").
    pub fn database_backup_job(
        &self,
        name: &str,
        what: &str,
    ) -> Result<(&Job, &BackupJob, &Arc<Database>)> {
        let (job, spec) = self.backup_job(name)?;
        match spec.database() {
            Some(db) => Ok((job, spec, db)),
            None if spec.cluster().is_some() => Err(Error::usage(format!(
                "job {name} is a physical job: {what} is for logical (pg_dump) backups"
            ))
            .with_hint(format!(
                "`backup verify --job {name}` reads its base backups back, \
                 `backup verify --job {name} --wal` its WAL archive"
            ))),
            None => Err(Error::usage(format!(
                "job {name} is a files job: {what} is for database backups"
            ))
            .with_hint(format!(
                "restore its directory with `backup restore --job {name} --latest --target-dir DIR`; \
                 `backup verify --job {name}` reads every file back"
            ))),
        }
    }

    /// [`Config::backup_job`] of a `type = "physical"` job, for the WAL
    /// commands (`what`: "wal push").
    pub fn physical_job(
        &self,
        name: &str,
        what: &str,
    ) -> Result<(&Job, &BackupJob, &Arc<Database>, &WalSettings)> {
        let (job, spec) = self.backup_job(name)?;
        match spec.cluster() {
            Some((db, wal)) => Ok((job, spec, db, wal)),
            None => Err(Error::usage(format!(
                "job {name} is a {} job: {what} is for physical jobs",
                job.kind.name()
            ))
            .with_hint("declare a job with type = \"physical\" for the cluster and name it here")),
        }
    }

    pub fn backup_job(&self, name: &str) -> Result<(&Job, &BackupJob)> {
        let job = self.job(name)?;
        match &job.kind {
            JobKind::Backup(b) => Ok((job, b)),
            other => {
                let backups: Vec<&str> = self
                    .jobs
                    .values()
                    .filter(|j| matches!(j.kind, JobKind::Backup(_)))
                    .map(|j| j.name.as_str())
                    .collect();
                Err(Error::usage(format!(
                    "job {name} is a {} job, not a backup job",
                    other.name()
                ))
                .with_hint(if backups.is_empty() {
                    "the configuration declares no backup jobs".to_owned()
                } else {
                    format!("backup jobs: {}", backups.join(", "))
                }))
            }
        }
    }

    /// Every secret the configuration names, in the order of its sections:
    /// database passwords, storage keys, notifier urls, encryption passphrases.
    pub fn secrets(&self) -> Vec<&SecretRef> {
        let mut out: Vec<&SecretRef> = Vec::new();
        out.extend(
            self.databases
                .values()
                .filter_map(|db| db.password.as_ref()),
        );
        for storage in self.storages.values() {
            match &storage.kind {
                StorageKind::Local { .. } => {}
                StorageKind::S3(s3) => {
                    if let Some(keys) = &s3.keys {
                        out.push(&keys.access_key_id);
                        out.push(&keys.secret_access_key);
                        out.extend(keys.session_token.as_ref());
                    }
                }
                StorageKind::Azure(az) => match &az.auth {
                    AzureAuth::EntraId => {}
                    AzureAuth::SasToken(s)
                    | AzureAuth::AccountKey(s)
                    | AzureAuth::ConnectionString(s) => out.push(s),
                },
            }
        }
        out.extend(self.notifiers.iter().flat_map(|n| n.secrets()));
        out.extend(self.daemon.token.as_ref());
        for job in self.jobs.values() {
            if let JobKind::Backup(b) = &job.kind {
                out.extend(b.encryption.as_ref().and_then(|e| e.passphrase.as_ref()));
            }
        }
        out
    }
}
