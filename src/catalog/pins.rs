//! `pin.json`: a backup prune keeps, and why. Beside the manifest, so
//! pinning never rewrites it.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::backup_prefix;
use crate::error::Result;
use crate::model::BackupId;
use crate::storage::{Key, Storage};

/// `<job>/<backup-id>/pin.json`: prune keeps the backup. Beside the manifest,
/// which is never rewritten.
pub const PIN: &str = "pin.json";

/// What `pin.json` says: when, and why, a backup was pinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub pinned_at: Timestamp,
    #[serde(default)]
    pub reason: String,
}

/// `<job>/<backup-id>/pin.json`.
pub fn pin_key(job: &str, id: &BackupId) -> Result<Key> {
    backup_prefix(job, id)?.join(PIN)
}

/// The pin of a backup; `None` when it has none or it cannot be read.
pub async fn read_pin(storage: &dyn Storage, job: &str, id: &BackupId) -> Option<Pin> {
    let key = pin_key(job, id).ok()?;
    let bytes = crate::storage::read_small(storage, &key, 64 << 10)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}
