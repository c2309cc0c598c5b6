//! The validated model of a configuration: what the rest of `backup` works with.
//!
//! Values here have passed validation in [`crate::config`]: every reference
//! resolves, every zone exists. Secrets are references ([`SecretRef`]), read
//! when a command first needs them. Nothing below this module parses text
//! from the user again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::error::{Error, Result};
use crate::keys::Recipients;
use crate::secret::Origin;
pub use crate::secret::SecretRef;

/// A PostgreSQL database declared under `[databases.NAME]`.
#[derive(Clone)]
pub struct Database {
    pub name: String,
    /// The libpq connection string as written, without a password in it.
    pub url: String,
    pub password: Option<SecretRef>,
    /// Where the password comes from, for display: `env APP_DB_PASSWORD`.
    pub password_from: Option<String>,
    /// Where `pg_dump`, `pg_restore` and `pg_dumpall` are looked up first.
    pub pg_bin_dir: Option<PathBuf>,
    /// The environment variables the configuration takes secrets from: the
    /// client programs started for this database need none of them, and are
    /// started without them.
    pub secret_env: Arc<[String]>,
}

impl Database {
    /// A placeholder for a reference resolved once every file is read.
    pub fn unresolved() -> Self {
        Database {
            name: String::new(),
            url: String::new(),
            password: None,
            password_from: None,
            pg_bin_dir: None,
            secret_env: Arc::default(),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("password", &self.password)
            .field("password_from", &self.password_from)
            .field("pg_bin_dir", &self.pg_bin_dir)
            .field("secret_env", &self.secret_env)
            .finish()
    }
}

/// A storage declared under `[storages.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageSpec {
    pub name: String,
    pub kind: StorageKind,
    /// How hard remote requests are retried; unused by local disks.
    pub retry: Retry,
}

/// How hard a storage's requests are tried, from its job-file settings; the
/// retrying itself is `crate::storage::retry`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included; at least 1.
    pub attempts: u32,
    /// The cap of the first wait; doubled after every failure.
    pub first_delay: std::time::Duration,
    /// No single wait is longer than this.
    pub max_delay: std::time::Duration,
    /// No retry starts once this much time has passed since the first failure.
    pub max_time: std::time::Duration,
    /// A request that moves no byte for this long is stalled.
    pub io_timeout: std::time::Duration,
}

impl Default for Retry {
    fn default() -> Self {
        use std::time::Duration;
        Retry {
            attempts: 8,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
            io_timeout: Duration::from_secs(60),
        }
    }
}

/// The backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageKind {
    Local { path: PathBuf },
    S3(S3Spec),
    Azure(AzureSpec),
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageKind::Local { path } => write!(f, "local {}", path.display()),
            StorageKind::S3(s3) => {
                write!(f, "s3://{}", s3.bucket)?;
                if let Some(prefix) = &s3.prefix {
                    write!(f, "/{prefix}")?;
                }
                if let Some(endpoint) = &s3.endpoint {
                    write!(f, " at {endpoint}")?;
                }
                Ok(())
            }
            StorageKind::Azure(az) => {
                write!(f, "azure {}/{}", az.account, az.container)?;
                if let Some(prefix) = &az.prefix {
                    write!(f, "/{prefix}")?;
                }
                Ok(())
            }
        }
    }
}

/// An S3 bucket (AWS, MinIO or another S3-compatible service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    pub bucket: String,
    /// Prepended to every key, without slashes at either end.
    pub prefix: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub path_style: bool,
    /// Static keys from the job file's `*_env` / `*_file`; `None` means the
    /// standard AWS credential chain.
    pub keys: Option<S3Keys>,
    pub storage_class: Option<String>,
    pub sse: Option<Sse>,
    /// The size of the first parts; grown later so any object fits.
    pub part_size: u64,
    pub parts_in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Keys {
    pub access_key_id: SecretRef,
    pub secret_access_key: SecretRef,
    pub session_token: Option<SecretRef>,
}

/// Server-side encryption asked of S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sse {
    Aes256,
    Kms { key_id: Option<String> },
}

/// A container in an Azure Blob Storage account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureSpec {
    pub account: String,
    pub container: String,
    pub prefix: Option<String>,
    /// The account's blob endpoint, e.g. Azurite's `http://127.0.0.1:10000/devstoreaccount1`.
    pub endpoint: Option<String>,
    pub auth: AzureAuth,
    pub block_size: u64,
    pub blocks_in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureAuth {
    /// Managed identity, workload identity or the Azure CLI's login.
    EntraId,
    SasToken(SecretRef),
    /// The account key, from which short-lived SAS tokens are signed locally.
    AccountKey(SecretRef),
    ConnectionString(SecretRef),
}

/// How the archive is compressed before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "algorithm", content = "level")]
pub enum Compression {
    Zstd(i32),
    Gzip(u32),
    None,
}

impl Compression {
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
    pub const DEFAULT_GZIP_LEVEL: u32 = 6;

    /// The file name suffix for a stored object, without the dot.
    pub fn extension(self) -> Option<&'static str> {
        match self {
            Compression::Zstd(_) => Some("zst"),
            Compression::Gzip(_) => Some("gz"),
            Compression::None => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd(_) => "zstd",
            Compression::Gzip(_) => "gzip",
            Compression::None => "none",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::Zstd(level) => write!(f, "zstd (level {level})"),
            Compression::Gzip(level) => write!(f, "gzip (level {level})"),
            Compression::None => f.write_str("none"),
        }
    }
}

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

/// `[daemon]`: how `backup daemon` serves and stops.
#[derive(Debug, Clone, Default)]
pub struct DaemonSettings {
    /// Where `/health/*` and `/metrics` are served.
    pub listen: Option<std::net::SocketAddr>,
    /// How long running jobs may finish after SIGTERM before they are cancelled.
    pub grace: Option<std::time::Duration>,
}

/// `[notifications.NAME]`: where failures and recoveries are announced.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    /// Webhook URLs carry their token: a secret, read when sending.
    pub url: SecretRef,
    /// Also announce every success, not only recoveries.
    pub on_success: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierKind {
    /// A JSON document POSTed as is.
    Webhook,
    /// Slack's incoming-webhook format (`{"text": ...}`).
    Slack,
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
            JobKind::Backup(b) => b.database(),
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

#[derive(Debug, Clone)]
pub struct BackupJob {
    pub source: BackupSource,
    /// In the order declared; the first is where restores read by default.
    pub storages: Vec<Arc<StorageSpec>>,
    pub compression: Compression,
    /// `retention = { ... }`: what `backup prune` keeps; `None` keeps all.
    pub retention: Option<RetentionPolicy>,
    /// Backups without a manifest older than this are removed by prune.
    pub incomplete_after: std::time::Duration,
    /// `encryption = { ... }`: objects are encrypted before they leave.
    pub encryption: Option<EncryptionSpec>,
}

impl BackupJob {
    /// Where the keys to the job's encrypted backups are found.
    pub fn keys(&self) -> Option<&EncryptionSpec> {
        self.encryption.as_ref()
    }

    /// The database a `type = "backup"` job dumps; `None` for a files job.
    pub fn database(&self) -> Option<&Arc<Database>> {
        match &self.source {
            BackupSource::Database(db) => Some(db),
            BackupSource::Directory(_) => None,
        }
    }
}

/// What a backup job reads.
#[derive(Debug, Clone)]
pub enum BackupSource {
    /// `type = "backup"`: `pg_dump` of the database.
    Database(Arc<Database>),
    /// `type = "files"`: a tar of the directory `path` (absolute).
    Directory(std::path::PathBuf),
}

/// `retention = { ... }` of a backup job, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    /// No `keep_*` rule keeps a backup older than this.
    pub max_age: Option<std::time::Duration>,
    /// The newest this many complete backups are kept even past `max_age`.
    pub min_keep: u32,
}

/// A time bucket rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionBucket {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl RetentionBucket {
    pub const ALL: [RetentionBucket; 5] = [
        RetentionBucket::Hourly,
        RetentionBucket::Daily,
        RetentionBucket::Weekly,
        RetentionBucket::Monthly,
        RetentionBucket::Yearly,
    ];

    pub fn key(self) -> &'static str {
        match self {
            RetentionBucket::Hourly => "keep_hourly",
            RetentionBucket::Daily => "keep_daily",
            RetentionBucket::Weekly => "keep_weekly",
            RetentionBucket::Monthly => "keep_monthly",
            RetentionBucket::Yearly => "keep_yearly",
        }
    }

    /// The shortest time `count` buckets can span: what `max_age` must allow.
    pub fn span(self, count: u32) -> std::time::Duration {
        use std::time::Duration;
        let days = |d: u64| Duration::from_secs(d * 86_400);
        let n = u64::from(count);
        match self {
            RetentionBucket::Hourly => Duration::from_secs(n * 3600),
            RetentionBucket::Daily => days(n),
            RetentionBucket::Weekly => days(7 * n),
            RetentionBucket::Monthly => days(31 * n),
            RetentionBucket::Yearly => days(366 * n),
        }
    }
}

impl RetentionPolicy {
    pub fn count(&self, bucket: RetentionBucket) -> u32 {
        match bucket {
            RetentionBucket::Hourly => self.keep_hourly,
            RetentionBucket::Daily => self.keep_daily,
            RetentionBucket::Weekly => self.keep_weekly,
            RetentionBucket::Monthly => self.keep_monthly,
            RetentionBucket::Yearly => self.keep_yearly,
        }
    }

    /// Whether the policy keeps anything by itself.
    pub fn is_empty(&self) -> bool {
        self.keep_last == 0
            && RetentionBucket::ALL.iter().all(|b| self.count(*b) == 0)
            && self.max_age.is_none()
    }
}

/// `encryption = { recipients = ["age1..."] | recipients_file, identity_file }`,
/// or `encryption = { passphrase_env | passphrase_file }`.
#[derive(Debug, Clone)]
pub struct EncryptionSpec {
    /// The public keys objects are sealed to; `None` in passphrase mode.
    pub recipients: Option<Arc<Recipients>>,
    /// Where restores find the secret key, unless `BACKUP_AGE_IDENTITY` says.
    pub identity_file: Option<std::path::PathBuf>,
    /// The passphrase that both encrypts and decrypts, in passphrase mode.
    pub passphrase: Option<SecretRef>,
}

/// `type = "maintenance"`: VACUUM, ANALYZE and REINDEX where statistics say
/// they help, without queueing behind (or in front of) the application.
#[derive(Debug, Clone)]
pub struct MaintenanceJob {
    pub database: Arc<Database>,
    /// In the order they run on each table.
    pub tasks: Vec<Task>,
    pub targets: Targets,
    /// How long one statement may wait for a table's lock before it gives up.
    pub lock_timeout: std::time::Duration,
    /// How many more times a table whose lock was busy is tried.
    pub lock_retries: u32,
    /// When new tables may be started, in the job's zone.
    pub window: Option<Window>,
    /// REINDEX ... CONCURRENTLY (the default) rather than a plain REINDEX.
    pub reindex_concurrently: bool,
    /// Where run records go: the file's `reports`, else its first storage.
    pub reports: Option<Arc<StorageSpec>>,
}

impl MaintenanceJob {
    /// Whether the job takes locks that would stall a dump, or be stalled by
    /// one: such jobs wait for dumps of their database to end, and dumps for
    /// them. REINDEX CONCURRENTLY counts: it waits for every transaction older
    /// than itself, a running dump's included.
    pub fn is_heavy(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| matches!(t, Task::VacuumFull | Task::Reindex))
    }
}

/// One kind of maintenance work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    Vacuum,
    Analyze,
    VacuumAnalyze,
    Freeze,
    VacuumFull,
    Reindex,
}

impl Task {
    pub const ALL: [(&'static str, Task); 6] = [
        ("vacuum", Task::Vacuum),
        ("analyze", Task::Analyze),
        ("vacuum-analyze", Task::VacuumAnalyze),
        ("freeze", Task::Freeze),
        ("vacuum-full", Task::VacuumFull),
        ("reindex", Task::Reindex),
    ];

    pub fn name(self) -> &'static str {
        Task::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Which tables and indexes a maintenance job works on.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// Every table and index in scope, whatever the statistics say.
    pub all: bool,
    /// `schema.table` or `table` patterns with `*` and `?`; empty means every table.
    pub tables: Vec<String>,
    pub exclude: Vec<String>,
    /// Dead tuples as a share of live plus dead.
    pub min_dead_ratio: f64,
    pub min_dead_tuples: i64,
    /// Tables (with their indexes and TOAST) smaller than this are left alone.
    pub min_table_size: u64,
    /// The share of an index that is empty space, above which it is rebuilt.
    pub min_index_bloat: f64,
    /// The share of a table that is empty space, above which VACUUM FULL pays.
    pub min_table_bloat: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            all: false,
            tables: Vec::new(),
            exclude: Vec::new(),
            min_dead_ratio: 0.1,
            min_dead_tuples: 1000,
            min_table_size: 1 << 20,
            min_index_bloat: 0.3,
            min_table_bloat: 0.3,
        }
    }
}

/// A daily stretch of wall-clock time, `02:00-05:00`; it may cross midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: jiff::civil::Time,
    pub end: jiff::civil::Time,
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Option<Window> {
        let (start, end) = text.split_once('-')?;
        let time = |t: &str| -> Option<jiff::civil::Time> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
            jiff::civil::Time::new(h, m, 0, 0).ok()
        };
        let window = Window {
            start: time(start)?,
            end: time(end)?,
        };
        (window.start != window.end).then_some(window)
    }

    /// Whether `at`, in `zone`, falls inside the window.
    pub fn contains(&self, at: Timestamp, zone: &TimeZone) -> bool {
        let t = at.to_zoned(zone.clone()).time();
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.strftime("%H:%M"),
            self.end.strftime("%H:%M")
        )
    }
}

/// A whole validated configuration, possibly merged from several files.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub databases: BTreeMap<String, Arc<Database>>,
    pub storages: BTreeMap<String, Arc<StorageSpec>>,
    pub jobs: BTreeMap<String, Job>,
    pub daemon: DaemonSettings,
    pub notifiers: Vec<Arc<Notifier>>,
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
            None => Err(Error::usage(format!(
                "job {name} is a files job: {what} is for database backups"
            ))
            .with_hint(format!(
                "restore its directory with `backup restore --job {name} --latest --target-dir DIR`; \
                 `backup verify --job {name}` reads every file back"
            ))),
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
        out.extend(self.notifiers.iter().map(|n| &n.url));
        for job in self.jobs.values() {
            if let JobKind::Backup(b) = &job.kind {
                out.extend(b.encryption.as_ref().and_then(|e| e.passphrase.as_ref()));
            }
        }
        out
    }
}

/// The identity of one backup: its UTC start time, `20261122T030000Z`, plus a
/// `-N` suffix when two runs of a job start in the same second. Sorts as text.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
// Read from manifests and records in storage: checked like any input, since
// an id becomes part of object keys.
#[serde(try_from = "String")]
pub struct BackupId(String);

impl TryFrom<String> for BackupId {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        BackupId::parse(&text).map_err(|e| e.message().to_owned())
    }
}

impl BackupId {
    pub fn from_start(started_at: Timestamp, suffix: u32) -> Self {
        let base = started_at.strftime("%Y%m%dT%H%M%SZ").to_string();
        if suffix == 0 {
            BackupId(base)
        } else {
            BackupId(format!("{base}-{suffix}"))
        }
    }

    /// Accepts what `from_start` produces, and nothing that could escape a path.
    pub fn parse(text: &str) -> Result<Self> {
        let (base, suffix) = match text.split_once('-') {
            Some((b, s)) => (b, Some(s)),
            None => (text, None),
        };
        let base_ok = base.len() == 16
            && base.as_bytes()[8] == b'T'
            && base.ends_with('Z')
            && base[..8].bytes().all(|b| b.is_ascii_digit())
            && base[9..15].bytes().all(|b| b.is_ascii_digit());
        let suffix_ok =
            suffix.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if base_ok && suffix_ok {
            Ok(BackupId(text.to_owned()))
        } else {
            Err(Error::usage(format!("'{text}' is not a backup id"))
                .with_hint("backup ids look like 20261122T030000Z; `backup list` shows them"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The start time the id was made of.
    pub fn started_at(&self) -> Option<Timestamp> {
        let base = self.0.get(..16)?;
        jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", base)
            .ok()?
            .to_zoned(TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The source of the current time, and of waiting for it to pass. Logic takes
/// a `&dyn Clock` so tests can pin it or move it by hand.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Resolves once `duration` has passed on this clock.
    fn sleep(&self, duration: std::time::Duration) -> futures::future::BoxFuture<'static, ()>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep(&self, duration: std::time::Duration) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let db = Database {
            name: "app".into(),
            url: "postgresql://app@db/app".into(),
            password: Some(SecretRef::given("hunter2")),
            password_from: Some("env APP_DB_PASSWORD".into()),
            pg_bin_dir: None,
            secret_env: Arc::default(),
        };
        let shown = format!("{db:?} {:?}", crate::secret::Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn windows_may_cross_midnight() {
        let zone = TimeZone::get("Asia/Tokyo").unwrap();
        let at = |t: &str| -> Timestamp {
            format!("2026-11-25T{t}:00+09:00[Asia/Tokyo]")
                .parse::<jiff::Zoned>()
                .unwrap()
                .timestamp()
        };
        let night = Window::parse("22:00-05:00").unwrap();
        assert!(night.contains(at("23:30"), &zone));
        assert!(night.contains(at("04:59"), &zone));
        assert!(!night.contains(at("05:00"), &zone));
        assert!(!night.contains(at("12:00"), &zone));
        let early = Window::parse("02:00-05:00").unwrap();
        assert!(early.contains(at("02:00"), &zone));
        assert!(!early.contains(at("01:59"), &zone));
        for bad in ["02:00", "2-5", "25:00-05:00", "02:00-02:00", "02:00-05:61"] {
            assert!(Window::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn backup_ids_sort_by_time_and_round_trip() {
        let t: Timestamp = "2026-11-22T03:00:00Z".parse().unwrap();
        let a = BackupId::from_start(t, 0);
        let b = BackupId::from_start(t, 1);
        assert_eq!(a.as_str(), "20261122T030000Z");
        assert_eq!(b.as_str(), "20261122T030000Z-1");
        assert!(a < b);
        assert_eq!(BackupId::parse(b.as_str()).unwrap(), b);
        assert_eq!(b.started_at(), Some(t));
        for bad in [
            "../x",
            "20261122T030000",
            "20261122T030000Z-",
            "20261122X030000Z",
            "",
        ] {
            assert!(BackupId::parse(bad).is_err(), "{bad}");
        }
    }
}
