//! `[jobs.NAME]`: what every job has (its zone, schedule and run policy),
//! the kinds of job, and the two small kinds: prune and restore-test.

use std::sync::Arc;

use jiff::tz::TimeZone;

use super::{BackupJob, BackupSource, Database, MaintenanceJob, StorageSpec};
use crate::secret::Origin;

/// A job declared under `[jobs.NAME]`.
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    /// The zone for the schedule, times shown to the operator and `--at`
    /// without a zone: the job's own `timezone`, else the file's.
    pub timezone: TimeZone,
    pub origin: Origin,
    pub kind: JobKind,
    /// When the daemon runs it; `None` means only `backup run` does.
    pub schedule: Option<crate::schedule::Schedule>,
    pub policy: RunPolicy,
}

/// How the engine runs a job, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPolicy {
    pub overlap: Overlap,
    /// A run still going after this long is cancelled and fails as timed out.
    pub timeout: Option<std::time::Duration>,
    /// How many times a failed run is tried again.
    pub retries: u32,
    /// The wait before the first retry; doubled before each further one.
    pub retry_delay: std::time::Duration,
    pub catch_up: CatchUp,
}

impl Default for RunPolicy {
    fn default() -> Self {
        RunPolicy {
            overlap: Overlap::Skip,
            timeout: None,
            retries: 0,
            retry_delay: std::time::Duration::from_secs(60),
            catch_up: CatchUp::None,
        }
    }
}

/// What happens when a run falls due while the previous one still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The new run is skipped and recorded as skipped.
    Skip,
    /// The new run waits for the running one, once: further ones are skipped.
    Queue,
}

/// What the daemon does at start for fire times it missed while down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    None,
    /// One run for the newest missed fire time.
    Latest,
}

#[derive(Debug, Clone)]
pub enum JobKind {
    Backup(BackupJob),
    Maintenance(MaintenanceJob),
    Prune(PruneJob),
    RestoreTest(RestoreTestJob),
}

/// `type = "restore-test"`: restores a backup job's backup into a scratch
/// database and proves it against the manifest and the user's checks.
#[derive(Debug, Clone)]
pub struct RestoreTestJob {
    pub backup_job: String,
    /// Which backup: the newest, or the newest at least this old.
    pub at: TestedBackup,
    /// The server to restore into: `target`, else the backup job's database.
    pub target: Arc<Database>,
    /// `scratch_database`; `None`: `<dbname>_restore_test_<backup id>`.
    pub scratch_database: Option<String>,
    pub checks: Vec<Check>,
    pub keep_on_failure: bool,
    /// Parallel `pg_restore` jobs, as the real restore would run.
    pub jobs: u32,
    /// The backup job's: where backups are read and run records go.
    pub storages: Vec<Arc<StorageSpec>>,
}

/// Which backup a restore test takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestedBackup {
    Latest,
    /// The newest backup whose data is at least this old.
    OlderThan(std::time::Duration),
}

/// `checks = [{ sql = "...", equals|min|max = N }]`: a query whose single
/// value must be as stated.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    /// `name`, else the SQL itself.
    pub name: String,
    pub sql: String,
    pub equals: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Check {
    /// What is expected, as said in messages: `= 3`, `>= 1`, `between 1 and 9`.
    pub fn expected(&self) -> String {
        match (self.equals, self.min, self.max) {
            (Some(e), _, _) => format!("= {}", show_number(e)),
            (None, Some(lo), Some(hi)) => {
                format!("between {} and {}", show_number(lo), show_number(hi))
            }
            (None, Some(lo), None) => format!(">= {}", show_number(lo)),
            (None, None, Some(hi)) => format!("<= {}", show_number(hi)),
            (None, None, None) => "a value".to_owned(),
        }
    }

    pub fn accepts(&self, value: f64) -> bool {
        self.equals.is_none_or(|e| value == e)
            && self.min.is_none_or(|lo| value >= lo)
            && self.max.is_none_or(|hi| value <= hi)
    }
}

/// `1.5 GiB`, `300 KiB`, `12 B`.
pub fn bytes_human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A number as people write it: `3`, not `3.0`.
pub fn show_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// `type = "prune"`: the retention of a backup job, on a schedule of its own.
#[derive(Debug, Clone)]
pub struct PruneJob {
    pub backup_job: String,
    /// The backup job's database, whose server holds the lock; `None` for
    /// a files job (a local lock) and until the backup job is resolved.
    pub database: Option<Arc<Database>>,
    pub storages: Vec<Arc<StorageSpec>>,
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::Backup(BackupJob {
                source: BackupSource::Directory(_),
                ..
            }) => "files",
            JobKind::Backup(BackupJob {
                source: BackupSource::Cluster { .. },
                ..
            }) => "physical",
            JobKind::Backup(_) => "backup",
            JobKind::Maintenance(_) => "maintenance",
            JobKind::Prune(_) => "prune",
            JobKind::RestoreTest(_) => "restore-test",
        }
    }
}

impl Job {
    /// The database the job works on, and whose server holds its locks;
    /// `None` for a files job and its prune jobs, whose lock is local.
    pub fn database(&self) -> Option<&Arc<Database>> {
        match &self.kind {
            // A physical job's connection: two hosts never run it at once.
            JobKind::Backup(b) => b.server(),
            JobKind::Maintenance(m) => Some(&m.database),
            JobKind::Prune(p) => p.database.as_ref(),
            JobKind::RestoreTest(t) => Some(&t.target),
        }
    }

    /// Where the job's run records go; the first is where they are read.
    /// Empty for a job in a file that declares no storage.
    pub fn record_storages(&self) -> &[Arc<StorageSpec>] {
        match &self.kind {
            JobKind::Backup(b) => &b.storages,
            JobKind::Maintenance(m) => m.reports.as_slice(),
            JobKind::Prune(p) => &p.storages,
            JobKind::RestoreTest(t) => &t.storages,
        }
    }

    /// What a run id says after the time: the kind, and for a job filing
    /// its records under another job, its name first, so two restore tests
    /// of one backup job never share a record.
    pub fn run_tag(&self) -> String {
        if self.records_dir() == self.name {
            self.kind.name().to_owned()
        } else {
            format!("{}-{}", self.name, self.kind.name())
        }
    }

    /// The job whose `reports/` directory holds this job's run records: a
    /// restore test files its records beside the backups it proves, so the
    /// storage alone tells which backups restore.
    pub fn records_dir(&self) -> &str {
        match &self.kind {
            JobKind::RestoreTest(t) => &t.backup_job,
            _ => &self.name,
        }
    }
}
