//! What operators see of a run: progress while it runs, a record when it ends.
//!
//! [`Progress`] has three faces (after rustic_core): a bar on a terminal, log
//! lines otherwise, nothing at all. Jobs report bytes without knowing which.
//! [`RunRecord`]s are stored as `<job>/reports/<run-id>.json`, the audit trail;
//! [`RunHistory`] says what they tell of a job.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::{Key, Storage};

mod history;
pub mod html;
pub use history::{Latest, RunHistory};

pub trait Progress: Send + Sync {
    /// A new phase: `label` says what moves, `total` how many bytes if known.
    fn begin(&self, label: &str, total: Option<u64>);
    fn advance(&self, bytes: u64);
    fn end(&self);
}

/// A bar on a terminal, log lines elsewhere.
pub fn for_stderr() -> std::sync::Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        std::sync::Arc::new(Bar::default())
    } else {
        std::sync::Arc::new(LogLines::default())
    }
}

/// Shows nothing.
pub struct Hidden;

impl Progress for Hidden {
    fn begin(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

#[derive(Default)]
pub struct Bar {
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress for Bar {
    fn begin(&self, label: &str, total: Option<u64>) {
        let bar = match total {
            Some(total) => indicatif::ProgressBar::new(total).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} {bytes} {binary_bytes_per_sec} {elapsed}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            ),
        };
        bar.set_message(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.lock().unwrap_or_else(|p| p.into_inner()) = Some(bar);
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.bar.lock().unwrap_or_else(|p| p.into_inner()) {
            bar.inc(bytes);
        }
    }

    fn end(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|p| p.into_inner()).take() {
            bar.finish_and_clear();
        }
    }
}

/// One log line every [`LogLines::EVERY`], for logs and CI.
#[derive(Default)]
pub struct LogLines {
    state: Mutex<Option<LogState>>,
}

struct LogState {
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
}

impl LogLines {
    const EVERY: Duration = Duration::from_secs(10);
}

impl Progress for LogLines {
    fn begin(&self, label: &str, total: Option<u64>) {
        let now = Instant::now();
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(LogState {
            label: label.to_owned(),
            total,
            done: 0,
            started: now,
            last: now,
        });
    }

    fn advance(&self, bytes: u64) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = guard.as_mut() else { return };
        s.done += bytes;
        if s.last.elapsed() >= Self::EVERY {
            s.last = Instant::now();
            let rate = s.done as f64 / s.started.elapsed().as_secs_f64().max(0.001);
            let of = s
                .total
                .map_or(String::new(), |t| format!(" of {}", bytes_human(t)));
            tracing::info!(
                "{}: {}{of} ({}/s)",
                s.label,
                bytes_human(s.done),
                bytes_human(rate as u64)
            );
        }
    }

    fn end(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

pub use crate::model::bytes_human;

/// The durable record of one run of a job, written whether it worked or not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub run_id: String,
    pub job: String,
    /// For a job that files its records under a backup job (a restore
    /// test): that job, whose `reports/` holds this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_job: Option<String>,
    /// `backup`, `restore`, ...
    pub kind: String,
    #[serde(default)]
    pub trigger: Trigger,
    /// The fire time a scheduled or caught-up run was for.
    #[serde(default)]
    pub scheduled_for: Option<Timestamp>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    #[serde(default)]
    pub outcome: Outcome,
    /// Kept beside `outcome` for readers of the first records.
    pub succeeded: bool,
    /// How many times the run was tried (1 without retries).
    #[serde(default)]
    pub attempts: u32,
    /// The error message when it failed; never a secret.
    pub error: Option<String>,
    /// Free-form facts of the run: backup id, sizes, target database, ...
    pub details: serde_json::Value,
    /// The last failure of each of the job's storages during the run, after
    /// its retries: what `status` shows of a storage that stopped answering.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage_errors: Vec<crate::storage::health::Failure>,
}

/// What started a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    Schedule,
    #[default]
    Manual,
    CatchUp,
}

impl Trigger {
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::CatchUp => "catch-up",
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    #[default]
    Failed,
    /// Not run: the previous run of the job was still going.
    Skipped,
    TimedOut,
    /// Stopped by SIGTERM or SIGINT.
    Interrupted,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::TimedOut => "timed_out",
            Outcome::Interrupted => "interrupted",
        }
    }

    /// Whether a monitor should count this run as a failure.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Failed | Outcome::TimedOut | Outcome::Interrupted
        )
    }

    pub const ALL: [Outcome; 5] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Skipped,
        Outcome::TimedOut,
        Outcome::Interrupted,
    ];
}

impl RunRecord {
    /// A record of a run just begun: failed until told otherwise, so a run cut
    /// short never reads as a success.
    pub fn begin(
        run_id: String,
        job: &str,
        kind: &str,
        trigger: Trigger,
        scheduled_for: Option<Timestamp>,
        started_at: Timestamp,
    ) -> Self {
        RunRecord {
            format: 1,
            run_id,
            job: job.to_owned(),
            backup_job: None,
            kind: kind.to_owned(),
            trigger,
            scheduled_for,
            started_at,
            finished_at: started_at,
            outcome: Outcome::Failed,
            succeeded: false,
            attempts: 0,
            error: None,
            details: serde_json::json!({}),
            storage_errors: Vec::new(),
        }
    }

    /// Sets how the run ended; `error` is why, when it did not succeed.
    pub fn end(&mut self, finished_at: Timestamp, outcome: Outcome, error: Option<String>) {
        self.finished_at = finished_at;
        self.outcome = outcome;
        self.succeeded = outcome == Outcome::Succeeded;
        self.error = error;
    }

    /// `<job>/reports/<run-id>.json`, or under the backup job it files under.
    pub fn key(&self) -> Result<Key> {
        Self::key_of(self.dir(), &self.run_id)
    }

    /// What the run id says after the time (see [`crate::model::Job::run_tag`]).
    pub fn tag(&self) -> String {
        match &self.backup_job {
            Some(_) => format!("{}-{}", self.job, self.kind),
            None => self.kind.clone(),
        }
    }

    /// The job whose `reports/` holds this record.
    pub fn dir(&self) -> &str {
        self.backup_job.as_deref().unwrap_or(&self.job)
    }

    /// A record begun for `job`, filed where that job's records go.
    pub fn of_job(mut self, job: &crate::model::Job) -> Self {
        if job.records_dir() != job.name {
            self.backup_job = Some(job.records_dir().to_owned());
        }
        self
    }

    /// A run id: the start time to the microsecond plus the kind, unique enough
    /// for one job and readable in a listing.
    pub fn run_id(started_at: Timestamp, kind: &str) -> String {
        format!("{}-{kind}", started_at.strftime("%Y%m%dT%H%M%S%.6fZ")).replace('.', "")
    }

    /// The key of the record of `run_id`, for an existence check.
    pub fn key_of(job: &str, run_id: &str) -> Result<Key> {
        Key::new(format!("{job}/reports/{run_id}.json"))
    }

    /// Stores the record in every storage given, each tried a few times.
    /// `status`, `check`, the metrics and catch-up read records, so one that
    /// stays unstored is an error (naming the storages), though the run's own
    /// outcome stands.
    pub async fn store(&self, storages: &[std::sync::Arc<dyn Storage>]) -> Result<()> {
        let mut record = self.clone();
        record.storage_errors = crate::storage::health::failures_since(self.started_at)
            .into_iter()
            .filter(|f| storages.iter().any(|s| s.name() == f.storage))
            .collect();
        let body = serde_json::to_vec_pretty(&record)
            .map_err(|e| Error::internal(format!("cannot encode the run record: {e}")))?;
        let key = self.key()?;
        let mut failed = Vec::new();
        for storage in storages {
            let mut delay = STORE_RETRY_DELAY;
            let mut attempt = 1;
            loop {
                match crate::storage::write_small(storage.as_ref(), &key, &body).await {
                    Ok(()) => break,
                    // A storage's errors name it already; `context` says it once.
                    // One that has just stopped answering had its one short
                    // try: the others are not kept waiting for it.
                    Err(e)
                        if attempt < STORE_ATTEMPTS
                            && !crate::storage::health::is_down(storage.name()) =>
                    {
                        tracing::warn!(
                            "storing the run record failed ({}); trying again in {}s",
                            e.context(format!("storage {}", storage.name())),
                            delay.as_secs()
                        );
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                        attempt += 1;
                    }
                    Err(e) => {
                        failed.push((
                            storage.name().to_owned(),
                            e.context(format!("storage {}", storage.name())).to_string(),
                        ));
                        break;
                    }
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let stored_in: Vec<&str> = storages
            .iter()
            .map(|s| s.name())
            .filter(|name| !failed.iter().any(|(f, _)| f == name))
            .collect();
        let stored = if stored_in.is_empty() {
            "it is in no storage".to_owned()
        } else {
            format!("it is in {}", stored_in.join(", "))
        };
        let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
        let errors: Vec<&str> = failed.iter().map(|(_, e)| e.as_str()).collect();
        Err(Error::storage(format!(
            "the {} run's record {} could not be stored in {} ({stored}): {}",
            self.kind,
            self.run_id,
            names.join(", "),
            errors.join("; ")
        ))
        .with_hint(
            "what the run did stands as reported; status, check, the metrics and catch-up read \
             run records, and miss this run where it is not stored: make room in the storage \
             (or fix its access)",
        ))
    }
}

/// How many times a run record is written before the run says it could not be.
const STORE_ATTEMPTS: u32 = 3;
const STORE_RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads one stored record; `None` when there is none under that key.
pub async fn read_record(storage: &dyn Storage, key: &Key) -> Result<Option<RunRecord>> {
    let mut body = Vec::new();
    match storage.reader(key).await {
        Ok(mut reader) => {
            use tokio::io::AsyncReadExt;
            // Records are small; a huge object here is not one of ours.
            (&mut reader)
                .take(RECORD_LIMIT)
                .read_to_end(&mut body)
                .await
                .map_err(|e| {
                    Error::storage(format!("storage {}: reading {key}: {e}", storage.name()))
                })?;
        }
        Err(e) if e.kind() == crate::error::Kind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    serde_json::from_slice(&body).map(Some).map_err(|e| {
        Error::integrity(format!(
            "storage {}: run record {key} is not readable: {e}",
            storage.name()
        ))
    })
}

/// When a backup last passed a restore test or a drill, and for a base
/// backup the moment that test recovered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tested {
    pub at: Timestamp,
    pub moment: Option<Timestamp>,
}

/// The backups of a job that passed a restore test or a drill, with when
/// they last did, read from the records among `keys` (a listing of the job's
/// `reports/`). A record that cannot be read is an error: callers that delete
/// on its strength must not guess.
pub async fn tested_backups(
    storage: &dyn Storage,
    keys: &[Key],
) -> Result<std::collections::BTreeMap<String, Tested>> {
    let mut tested: std::collections::BTreeMap<String, Tested> = std::collections::BTreeMap::new();
    for key in keys.iter().filter(|k| {
        let name = k.file_name();
        name.ends_with("-restore-test.json") || name.ends_with("-drill.json")
    }) {
        if let Some(r) = read_record(storage, key).await?
            && r.succeeded
            && let Some(id) = r.details["backup_id"].as_str()
        {
            let this = Tested {
                at: r.finished_at,
                moment: r.details["tested_moment"]
                    .as_str()
                    .and_then(|t| t.parse().ok()),
            };
            let when = tested.entry(id.to_owned()).or_insert(this);
            if this.at > when.at {
                *when = this;
            }
        }
    }
    Ok(tested)
}

/// The keys under `<job>/reports/`.
pub async fn record_keys(storage: &dyn Storage, job: &str) -> Result<Vec<Key>> {
    let prefix = Key::new(format!("{job}/reports"))?;
    Ok(storage
        .list(&prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect())
}

/// A maintenance run of a database with thousands of tables keeps a step
/// each: a few MiB. Anything bigger is not one of ours.
const RECORD_LIMIT: u64 = 16 << 20;
/// How many records a search reads at most, newest first.
const SCAN_LIMIT: usize = 1000;

/// The newest run records in `dir`'s reports whose run id carries `tag` (a
/// job's [`crate::model::Job::run_tag`], or a kind) and that `wanted`
/// accepts, newest first, at most `limit` of them. Only records needed are
/// read: the listing is of keys, and the tag in a key's name says whether
/// the record can be one of those wanted.
pub async fn newest_records(
    storage: &dyn Storage,
    dir: &str,
    tag: &str,
    limit: usize,
    wanted: impl Fn(&RunRecord) -> bool,
) -> Result<Vec<RunRecord>> {
    records_since(storage, dir, tag, None, limit, wanted).await
}

/// [`newest_records`] of runs started at `from` or later. The run id starts
/// with the start time, so older records are left out by their key, unread.
pub async fn records_since(
    storage: &dyn Storage,
    dir: &str,
    tag: &str,
    from: Option<Timestamp>,
    limit: usize,
    wanted: impl Fn(&RunRecord) -> bool,
) -> Result<Vec<RunRecord>> {
    let oldest = from.map(|t| t.strftime("%Y%m%dT%H%M%S").to_string());
    let prefix = Key::new(format!("{dir}/reports"))?;
    let (exact, longer) = (format!("-{tag}.json"), format!("-{tag}-"));
    let mut keys: Vec<Key> = storage
        .list(&prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| {
            let name = k.file_name();
            name.ends_with(".json")
                && (name.ends_with(&exact) || name.contains(&longer))
                && oldest.as_deref().is_none_or(|o| name >= o)
        })
        .collect();
    keys.sort();
    let mut out = Vec::new();
    // A bound on the objects read, so a long history of records that do not
    // match (years of skipped runs) cannot make a search read them all.
    for key in keys.iter().rev().take(SCAN_LIMIT) {
        if out.len() >= limit {
            break;
        }
        match read_record(storage, key).await {
            Ok(Some(record)) if wanted(&record) => out.push(record),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(out)
}

/// Prints `error: ...` and `hint: ...` the way every command does.
pub fn print_error(err: &Error) {
    eprintln!("error: {err}");
    if let Some(hint) = err.hint() {
        eprintln!("hint: {hint}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes_human(12), "12 B");
        assert_eq!(bytes_human(1536), "1.5 KiB");
        assert_eq!(bytes_human(3 << 30), "3.0 GiB");
    }

    #[test]
    fn run_ids_sort_by_time() {
        let a = RunRecord::run_id("2026-11-22T03:00:00.000001Z".parse().unwrap(), "backup");
        let b = RunRecord::run_id("2026-11-22T03:00:00.5Z".parse().unwrap(), "backup");
        assert_eq!(a, "20261122T030000000001Z-backup");
        assert!(a < b);
        assert!(Key::new(format!("job/reports/{a}.json")).is_ok());
    }
}
