//! `[storages.NAME]`: where backups go, one kind per backend, and how hard
//! each storage's requests are tried.

use std::fmt;
use std::path::PathBuf;

use crate::secret::SecretRef;

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
