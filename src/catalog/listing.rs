//! What a storage holds of a job: its complete backups, newest first, and
//! what does not read; every backup directory, complete or not, for prune;
//! and one list across all of a job's storages.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;

use super::{MANIFEST, Manifest, PIN, job_prefix, read_manifest, read_pin, split_backup_key};
use crate::error::Result;
use crate::model::BackupId;
use crate::storage::{Key, Storage};

/// Backups of a job found in one storage, newest first, and what could not be read.
#[derive(Debug, Default)]
pub struct Listing {
    pub backups: Vec<Manifest>,
    /// Backups with a `pin.json` beside their manifest: prune keeps them.
    pub pinned: std::collections::BTreeSet<BackupId>,
    /// Manifests that exist but could not be read: never silently skipped.
    pub unreadable: Vec<Unreadable>,
}

/// A backup whose manifest is there but does not read, or does not describe
/// a restorable backup.
#[derive(Debug, Clone)]
pub struct Unreadable {
    pub id: BackupId,
    /// The error, naming the storage and the file.
    pub problem: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.problem)
    }
}

/// Reads every complete backup of `job` in `storage`.
pub async fn list(storage: &dyn Storage, job: &str) -> Result<Listing> {
    let prefix = job_prefix(job)?;
    let objects = storage.list(&prefix).await?;
    let mut listing = Listing::default();
    for object in objects {
        let Some((parsed, name)) = split_backup_key(&prefix, &object.key) else {
            continue;
        };
        if name == PIN {
            listing.pinned.insert(parsed);
            continue;
        }
        if name != MANIFEST {
            continue;
        }
        match read_manifest(storage, &object.key).await {
            Ok(m) => listing.backups.push(m),
            Err(e) => listing.unreadable.push(Unreadable {
                id: parsed,
                problem: e.to_string(),
            }),
        }
    }
    listing.backups.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(listing)
}

/// The newest complete database backup of `job` in `storage`: one listing,
/// then manifests read newest first until one reads.
pub async fn newest(storage: &dyn Storage, job: &str) -> Result<Option<Manifest>> {
    let prefix = job_prefix(job)?;
    let objects = storage.list(&prefix).await?;
    let mut manifests: Vec<(BackupId, &Key)> = objects
        .iter()
        .filter_map(|o| match split_backup_key(&prefix, &o.key) {
            Some((id, MANIFEST)) => Some((id, &o.key)),
            _ => None,
        })
        .collect();
    manifests.sort();
    for (_, key) in manifests.into_iter().rev() {
        match read_manifest(storage, key).await {
            Ok(m) if m.directory.is_none() => return Ok(Some(m)),
            Ok(_) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(None)
}

/// What is stored under one backup id, complete or not.
#[derive(Debug, Default)]
pub struct StoredBackup {
    /// Its manifest is there.
    pub complete: bool,
    pub pinned: bool,
    /// Every object under the id, the manifest and the pin included.
    pub keys: Vec<Key>,
}

/// Every backup directory of `job` in `storage`, complete or not: what
/// prune judges, where [`list`] gives the complete backups only.
pub async fn list_stored(
    storage: &dyn Storage,
    job: &str,
) -> Result<BTreeMap<BackupId, StoredBackup>> {
    let prefix = job_prefix(job)?;
    let mut out: BTreeMap<BackupId, StoredBackup> = BTreeMap::new();
    for object in storage.list(&prefix).await? {
        // `reports/` and anything else that is not a backup id is not ours to judge.
        let Some((id, name)) = split_backup_key(&prefix, &object.key) else {
            continue;
        };
        let entry = out.entry(id).or_default();
        entry.complete |= name == MANIFEST;
        entry.pinned |= name == PIN;
        entry.keys.push(object.key);
    }
    Ok(out)
}

/// A complete backup as listed: one row even when several storages hold it.
#[derive(Debug, Clone)]
pub struct ListedBackup {
    pub manifest: Manifest,
    pub storages: Vec<String>,
    /// Why it is pinned, when a storage holds a pin for it.
    pub pinned: Option<String>,
    /// When it last passed a restore test or a drill.
    pub tested: Option<Timestamp>,
    /// A base backup: the moment that test recovered to.
    pub tested_moment: Option<Timestamp>,
}

/// Every complete backup of `job` in any of `storages`, newest first, with
/// its pins and restore tests. One storage that cannot be listed does not
/// hide the backups in the others; when none can, the first error is it.
pub async fn list_job(storages: &[Arc<dyn Storage>], job: &str) -> Result<Vec<ListedBackup>> {
    let mut listed: Vec<ListedBackup> = Vec::new();
    let mut unreachable = Vec::new();
    for storage in storages {
        let listing = match list(storage.as_ref(), job).await {
            Ok(listing) => listing,
            Err(e) => {
                tracing::warn!("{e}");
                unreachable.push(e);
                continue;
            }
        };
        for problem in listing.unreadable {
            tracing::warn!("{problem}");
        }
        let tested = match crate::report::record_keys(storage.as_ref(), job).await {
            Ok(keys) => crate::report::tested_backups(storage.as_ref(), &keys).await,
            Err(e) => Err(e),
        }
        .unwrap_or_else(|e| {
            tracing::warn!("which backups passed a restore test is unknown: {e}");
            Default::default()
        });
        for manifest in listing.backups {
            let found = tested.get(manifest.id.as_str()).copied();
            let tested = found.map(|t| t.at);
            let tested_moment = found.and_then(|t| t.moment);
            let pinned = if listing.pinned.contains(&manifest.id) {
                Some(
                    read_pin(storage.as_ref(), job, &manifest.id)
                        .await
                        .map(|p| p.reason)
                        .unwrap_or_default(),
                )
            } else {
                None
            };
            match listed.iter_mut().find(|l| l.manifest.id == manifest.id) {
                Some(l) => {
                    l.storages.push(storage.name().to_owned());
                    l.pinned = l.pinned.take().or(pinned);
                    if tested > l.tested {
                        l.tested = tested;
                        l.tested_moment = tested_moment;
                    }
                }
                None => listed.push(ListedBackup {
                    manifest,
                    storages: vec![storage.name().to_owned()],
                    pinned,
                    tested,
                    tested_moment,
                }),
            }
        }
    }
    if unreachable.len() == storages.len()
        && let Some(e) = unreachable.into_iter().next()
    {
        return Err(e);
    }
    listed.sort_by(|a, b| b.manifest.id.cmp(&a.manifest.id));
    Ok(listed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::manifest;
    use crate::catalog::{Pin, backup_prefix, pin_key};

    #[test]
    fn stored_backups_are_listed_complete_or_not_with_their_pins() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let storage = crate::storage::MemoryStorage::new("mem");
            let done = BackupId::parse("20240120T030000Z").unwrap();
            let half = BackupId::parse("20240121T030000Z").unwrap();
            let dir = backup_prefix("nightly", &done).unwrap();
            storage.put(&dir.join("data.dump.zst").unwrap(), b"x".to_vec());
            storage.put(&dir.join(MANIFEST).unwrap(), b"{}".to_vec());
            let pin = Pin {
                pinned_at: "2024-01-22T00:00:00Z".parse().unwrap(),
                reason: "audit".into(),
            };
            storage.put(
                &pin_key("nightly", &done).unwrap(),
                serde_json::to_vec(&pin).unwrap(),
            );
            let half_dir = backup_prefix("nightly", &half).unwrap();
            storage.put(&half_dir.join("data.dump.zst").unwrap(), b"x".to_vec());
            storage.put(&pin_key("nightly", &half).unwrap(), b"not json".to_vec());
            storage.put(
                &Key::new("nightly/reports/20240120T030000Z-backup.json").unwrap(),
                b"{}".to_vec(),
            );

            let stored = list_stored(&storage, "nightly").await.unwrap();
            assert_eq!(stored.keys().collect::<Vec<_>>(), [&done, &half]);
            assert!(stored[&done].complete && stored[&done].pinned);
            assert_eq!(stored[&done].keys.len(), 3);
            assert!(!stored[&half].complete && stored[&half].pinned);
            let read = read_pin(&storage, "nightly", &done).await.unwrap();
            assert_eq!(read.reason, "audit");
            // A pin that does not read still pins; its reason is unknown.
            assert!(read_pin(&storage, "nightly", &half).await.is_none());
        });
    }

    #[test]
    fn listing_skips_incomplete_backups() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let storage = crate::storage::MemoryStorage::new("mem");
            let m = manifest("20240120T030000Z", "2024-01-20T03:00:01Z");
            let dir = backup_prefix("nightly", &m.id).unwrap();
            storage.put(&dir.join("data.dump.zst").unwrap(), b"x".to_vec());
            storage.put(
                &dir.join(MANIFEST).unwrap(),
                serde_json::to_vec(&m).unwrap(),
            );
            let half =
                backup_prefix("nightly", &BackupId::parse("20240121T030000Z").unwrap()).unwrap();
            storage.put(&half.join("data.dump.zst").unwrap(), b"x".to_vec());
            let listing = list(&storage, "nightly").await.unwrap();
            assert_eq!(listing.backups, vec![m]);
            assert!(listing.unreadable.is_empty());
        });
    }
}
