//! The catalog is the storage: manifests beside the data say what exists.
//!
//! ```text
//! <job>/<backup-id>/data.dump.<ext>     pg_dump archive (custom format), compressed
//! <job>/<backup-id>/globals.sql.<ext>   roles and tablespaces
//! <job>/<backup-id>/files.tar.<ext>     a files job's directory, as a tar
//! <job>/<backup-id>/manifest.json       written last: its presence means "complete"
//! <job>/<backup-id>/pin.json            `backup pin`: prune keeps the backup
//! <job>/reports/<run-id>.json           one record per run
//! ```
//!
//! A fresh host with the job file and the storage can list and restore every
//! backup; nothing local matters.
//!
//! An encrypted backup is opened from here too: [`opener`] reads what its
//! manifest says and checks the keys on its data object's header, before
//! anything is restored.
//!
//! This file holds the layout of keys; `manifest.rs` what a manifest says
//! and how one is read and checked, `listing.rs` what a storage holds of a
//! job, `pins.rs` the pins prune keeps, `select.rs` which backup a restore
//! means, and `opener.rs` the keys to an encrypted one.

#[cfg(test)]
mod fixtures;
mod listing;
mod manifest;
mod opener;
mod pins;
mod select;

use crate::error::Result;
use crate::model::BackupId;
use crate::storage::Key;

pub use listing::{
    ListedBackup, Listing, StoredBackup, Unreadable, list, list_job, list_stored, newest,
};
pub use manifest::{
    FORMAT, FORMAT_INCREMENTAL, MANIFEST, Manifest, ManifestObject, Parent, Physical,
    ROWS_FROM_ARCHIVE, Role, object_name, read_manifest,
};
pub use opener::opener;
pub use pins::{PIN, Pin, pin_key, read_pin};
pub use select::{Selector, select};

/// `<job>`: everything of one job lives under it.
pub fn job_prefix(job: &str) -> Result<Key> {
    Key::new(job)
}

/// `<job>/<backup-id>`.
pub fn backup_prefix(job: &str, id: &BackupId) -> Result<Key> {
    job_prefix(job)?.join(id.as_str())
}

/// Splits `<job>/<backup-id>/<name>` into the id and the name; `None` for
/// anything else under the job (its `reports/`, another tool's files).
pub fn split_backup_key<'a>(job_prefix: &Key, key: &'a Key) -> Option<(BackupId, &'a str)> {
    let (id, name) = key
        .as_str()
        .strip_prefix(job_prefix.as_str())?
        .strip_prefix('/')?
        .split_once('/')?;
    Some((BackupId::parse(id).ok()?, name))
}
