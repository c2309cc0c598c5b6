//! The raw structs: a job file as TOML says it, before any check.
//!
//! They only mirror the file: `deny_unknown_fields`, and every value wrapped
//! in `Spanned` so that errors can name the line. What the values mean is
//! for the other rooms of [`super`] to decide.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::restore_test::RawCheck;
use super::storage::{RawStorage, Size};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) timezone: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) databases: BTreeMap<String, Spanned<RawDatabase>>,
    #[serde(default)]
    pub(super) storages: BTreeMap<String, Spanned<RawStorage>>,
    #[serde(default)]
    pub(super) jobs: BTreeMap<String, Spanned<RawJob>>,
    pub(super) daemon: Option<RawDaemon>,
    #[serde(default)]
    pub(super) notifications: BTreeMap<String, Spanned<RawNotification>>,
    /// The storage for the run records of this file's jobs that have none.
    pub(super) reports: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) grace: Option<Spanned<String>>,
    /// The variable holding the bearer token `/`, `/health` and `/metrics`
    /// ask for on an address other than loopback.
    pub(super) token_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotification {
    #[serde(rename = "type")]
    pub(super) kind: Spanned<String>,
    pub(super) url_env: Option<Spanned<String>>,
    pub(super) url_file: Option<Spanned<PathBuf>>,
    pub(super) on_success: Option<bool>,
    pub(super) jobs: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) smtp: Option<Spanned<String>>,
    pub(super) from: Option<Spanned<String>>,
    pub(super) to: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) username_env: Option<Spanned<String>>,
    pub(super) username_file: Option<Spanned<PathBuf>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) insecure: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: Spanned<String>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<PathBuf>>,
    pub(super) pg_bin_dir: Option<Spanned<PathBuf>>,
    pub(super) pg_bin_dirs: Option<Spanned<Vec<Spanned<PathBuf>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJob {
    #[serde(rename = "type")]
    pub(super) kind: Spanned<String>,
    pub(super) database: Option<Spanned<String>>,
    pub(super) storages: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) compression: Option<Spanned<String>>,
    pub(super) compression_level: Option<Spanned<i64>>,
    pub(super) schedule: Option<Spanned<String>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) overlap: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<Spanned<i64>>,
    pub(super) retry_delay: Option<Spanned<String>>,
    pub(super) catch_up: Option<Spanned<String>>,
    pub(super) tasks: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) all: Option<Spanned<bool>>,
    pub(super) tables: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) exclude: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) min_dead_ratio: Option<Spanned<f64>>,
    pub(super) min_dead_tuples: Option<Spanned<i64>>,
    pub(super) min_table_size: Option<Spanned<Size>>,
    pub(super) min_index_bloat: Option<Spanned<f64>>,
    pub(super) min_table_bloat: Option<Spanned<f64>>,
    pub(super) lock_timeout: Option<Spanned<String>>,
    pub(super) lock_retries: Option<Spanned<i64>>,
    pub(super) window: Option<Spanned<String>>,
    pub(super) reindex_concurrently: Option<Spanned<bool>>,
    pub(super) retention: Option<Spanned<RawRetention>>,
    pub(super) incomplete_after: Option<Spanned<String>>,
    pub(super) encryption: Option<Spanned<RawEncryption>>,
    pub(super) backup_job: Option<Spanned<String>>,
    pub(super) at: Option<Spanned<String>>,
    pub(super) target: Option<Spanned<String>>,
    pub(super) scratch_database: Option<Spanned<String>>,
    pub(super) checks: Option<Vec<RawCheck>>,
    pub(super) keep_on_failure: Option<Spanned<bool>>,
    pub(super) jobs: Option<Spanned<i64>>,
    pub(super) path: Option<Spanned<PathBuf>>,
    pub(super) wal_push_ahead: Option<Spanned<i64>>,
    pub(super) wal_fetch_ahead: Option<Spanned<i64>>,
    pub(super) wal_queue_max: Option<Spanned<Size>>,
    pub(super) wal_max_age: Option<Spanned<String>>,
    pub(super) wal_wait: Option<Spanned<String>>,
    pub(super) spool_path: Option<Spanned<PathBuf>>,
    pub(super) incremental: Option<Spanned<bool>>,
    pub(super) full_every: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEncryption {
    pub(super) recipients: Option<Vec<String>>,
    pub(super) recipients_file: Option<PathBuf>,
    pub(super) identity_file: Option<PathBuf>,
    pub(super) passphrase_env: Option<Spanned<String>>,
    pub(super) passphrase_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) keep_last: Option<Spanned<i64>>,
    pub(super) keep_hourly: Option<Spanned<i64>>,
    pub(super) keep_daily: Option<Spanned<i64>>,
    pub(super) keep_weekly: Option<Spanned<i64>>,
    pub(super) keep_monthly: Option<Spanned<i64>>,
    pub(super) keep_yearly: Option<Spanned<i64>>,
    pub(super) max_age: Option<Spanned<String>>,
    pub(super) min_keep: Option<Spanned<i64>>,
}

impl RawJob {
    /// The keys that only some job types take, each with where it starts in
    /// the file, when present.
    pub(super) fn typed_keys(&self) -> Vec<(&'static str, usize)> {
        fn at<T>(key: &'static str, v: &Option<Spanned<T>>) -> Option<(&'static str, usize)> {
            v.as_ref().map(|s| (key, s.span().start))
        }
        [
            at("storages", &self.storages),
            at("compression", &self.compression),
            at("compression_level", &self.compression_level),
            at("tasks", &self.tasks),
            at("all", &self.all),
            at("tables", &self.tables),
            at("exclude", &self.exclude),
            at("min_dead_ratio", &self.min_dead_ratio),
            at("min_dead_tuples", &self.min_dead_tuples),
            at("min_table_size", &self.min_table_size),
            at("min_index_bloat", &self.min_index_bloat),
            at("min_table_bloat", &self.min_table_bloat),
            at("lock_timeout", &self.lock_timeout),
            at("lock_retries", &self.lock_retries),
            at("window", &self.window),
            at("reindex_concurrently", &self.reindex_concurrently),
            at("retention", &self.retention),
            at("incomplete_after", &self.incomplete_after),
            at("encryption", &self.encryption),
            at("backup_job", &self.backup_job),
            at("at", &self.at),
            at("target", &self.target),
            at("scratch_database", &self.scratch_database),
            at("keep_on_failure", &self.keep_on_failure),
            at("jobs", &self.jobs),
            at("path", &self.path),
            at("wal_push_ahead", &self.wal_push_ahead),
            at("wal_fetch_ahead", &self.wal_fetch_ahead),
            at("wal_queue_max", &self.wal_queue_max),
            at("wal_max_age", &self.wal_max_age),
            at("wal_wait", &self.wal_wait),
            at("spool_path", &self.spool_path),
            at("incremental", &self.incremental),
            at("full_every", &self.full_every),
        ]
        .into_iter()
        .flatten()
        // `checks` is a list of tables, which carry no span of their own.
        .chain(self.checks.as_ref().map(|_| ("checks", 0)))
        .collect()
    }
}
