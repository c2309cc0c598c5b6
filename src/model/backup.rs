//! `type = "backup"` and `type = "files"` jobs: what they read, how the
//! archive is compressed and encrypted, and which backups are kept.

use std::fmt;
use std::sync::Arc;

use super::{Database, StorageSpec};
use crate::keys::Recipients;
use crate::secret::SecretRef;

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

    /// The database a `type = "backup"` job dumps; `None` for a files or
    /// a physical job.
    pub fn database(&self) -> Option<&Arc<Database>> {
        match &self.source {
            BackupSource::Database(db) => Some(db),
            BackupSource::Directory(_) | BackupSource::Cluster { .. } => None,
        }
    }

    /// The connection and WAL settings of a `type = "physical"` job.
    pub fn cluster(&self) -> Option<(&Arc<Database>, &WalSettings)> {
        match &self.source {
            BackupSource::Cluster { database, wal } => Some((database, wal)),
            _ => None,
        }
    }

    /// The database server the job connects to, whatever its kind.
    pub fn server(&self) -> Option<&Arc<Database>> {
        match &self.source {
            BackupSource::Database(db) | BackupSource::Cluster { database: db, .. } => Some(db),
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
    /// `type = "physical"`: base backups of the whole cluster `database`
    /// connects to, and its WAL archive.
    Cluster {
        database: Arc<Database>,
        wal: WalSettings,
    },
}

/// The WAL archive of a physical job: how `wal push` and `wal fetch` work
/// and when `check` finds the archive behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// `wal_push_ahead`: further `.ready` segments one `wal push` also pushes.
    pub push_ahead: u32,
    /// `wal_fetch_ahead`: further segments one `wal fetch` also fetches.
    pub fetch_ahead: u32,
    /// `wal_queue_max`: past this many bytes of `.ready` segments, `wal push`
    /// drops them (recording the gap) rather than fill the server's disk.
    pub queue_max: Option<u64>,
    /// `wal_max_age`: `check` warns when the newest archived WAL is older.
    pub max_age: std::time::Duration,
    /// `wal_wait`: how long a base backup waits for the WAL it needs.
    pub wait: std::time::Duration,
    /// `spool_path`: where pushed-ahead and fetched-ahead segments are noted;
    /// the job's own directory is made under it.
    pub spool: std::path::PathBuf,
    /// `incremental = true` (PostgreSQL 17+): a base backup after the first
    /// holds only the blocks changed since the previous one; `Some(n)`, n
    /// from `full_every`, is the longest chain: a full backup starts the
    /// next.
    pub incremental: Option<u32>,
}

impl WalSettings {
    /// A chain's length when `full_every` is not said: a full backup and six
    /// incrementals, a week of daily backups.
    pub const DEFAULT_FULL_EVERY: u32 = 7;
}

impl WalSettings {
    pub const DEFAULT_SPOOL: &str = "/var/spool/backup";
}

impl Default for WalSettings {
    fn default() -> Self {
        WalSettings {
            push_ahead: 4,
            fetch_ahead: 4,
            queue_max: None,
            max_age: std::time::Duration::from_secs(3600),
            wait: std::time::Duration::from_secs(600),
            spool: std::path::PathBuf::from(WalSettings::DEFAULT_SPOOL),
            incremental: None,
        }
    }
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
