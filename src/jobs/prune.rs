//! Prune: what retention decided, carried out on each storage of a backup job.
//!
//! Each storage is judged on its own listing: a backup one storage lacks is
//! not deleted from another because of it. Deleting a backup removes its
//! manifest first, so a half-deleted backup is never listed as complete, then
//! its objects. A delete that fails is reported and the rest goes on; running
//! prune again finishes the job, since the plan is made afresh each time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::{Deserialize, Serialize};

use crate::catalog::{self, MANIFEST, PIN};
use crate::error::{Error, Result};
use crate::model::{BackupId, BackupJob, Job};
use crate::report::{self, Outcome};
use crate::retention::{self, Action, Candidate, History, RetentionPlan};
use crate::storage::{Key, Storage};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pin {
    pub pinned_at: Timestamp,
    #[serde(default)]
    pub reason: String,
}

/// One storage's plan, and what carrying it out did.
#[derive(Debug, Clone, Serialize)]
pub struct StoragePrune {
    pub storage: String,
    pub plan: RetentionPlan,
    /// Backups left out of the plan, and why (an unreadable manifest).
    pub warnings: Vec<String>,
    pub deleted: Vec<BackupId>,
    pub failed: Vec<Failure>,
    /// Unfinished uploads (S3 multipart) older than `incomplete_after` removed.
    pub unfinished_cleaned: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub backup: BackupId,
    pub error: String,
}

/// What is stored under one backup id.
#[derive(Debug, Default)]
pub struct Stored {
    complete: bool,
    pinned: bool,
    keys: Vec<Key>,
}

/// Every backup directory of `job` in `storage`, complete or not.
async fn stored(storage: &dyn Storage, job: &str) -> Result<BTreeMap<BackupId, Stored>> {
    let prefix = catalog::job_prefix(job)?;
    let mut out: BTreeMap<BackupId, Stored> = BTreeMap::new();
    for object in storage.list(&prefix).await? {
        let rest = object.key.as_str().strip_prefix(prefix.as_str());
        let Some((id, name)) = rest
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        // `reports/` and anything else that is not a backup id is not ours to judge.
        let Ok(id) = BackupId::parse(id) else {
            continue;
        };
        let entry = out.entry(id).or_default();
        entry.complete |= name == MANIFEST;
        entry.pinned |= name == PIN;
        entry.keys.push(object.key);
    }
    Ok(out)
}

pub fn pin_key(job: &str, id: &BackupId) -> Result<Key> {
    catalog::backup_prefix(job, id)?.join(PIN)
}

pub async fn read_pin(storage: &dyn Storage, job: &str, id: &BackupId) -> Option<Pin> {
    let key = pin_key(job, id).ok()?;
    let bytes = crate::storage::read_small(storage, &key, 64 << 10)
        .await
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What retention needs to know of one storage: its backups, their pins and
/// restore tests, and whether the job's newest run failed.
async fn history(
    storage: &dyn Storage,
    job: &Job,
    spec: &BackupJob,
    running: bool,
) -> Result<(History, BTreeMap<BackupId, Stored>, Vec<String>)> {
    let stored = stored(storage, &job.name).await?;
    let newest = report::newest_records(storage, &job.name, 1, |r| {
        r.kind == "backup" && r.outcome != Outcome::Skipped
    })
    .await?;
    let newest_run_failed = newest
        .first()
        .filter(|r| r.outcome != Outcome::Succeeded)
        .map(|r| format!("{} ({})", r.run_id, r.outcome.name()));
    let tested: BTreeSet<String> = report::newest_records(storage, &job.name, usize::MAX, |r| {
        r.kind == "restore-test" && r.succeeded
    })
    .await?
    .iter()
    .filter_map(|r| r.details["backup_id"].as_str().map(str::to_owned))
    .collect();
    let mut warnings = Vec::new();
    let mut backups = Vec::new();
    for (id, s) in &stored {
        let at = if s.complete {
            let key = catalog::backup_prefix(&job.name, id)?.join(MANIFEST)?;
            match catalog::read_manifest(storage, &key).await {
                Ok(m) => m.snapshot_at,
                Err(e) => {
                    // Not judged, so never deleted: someone should look at it.
                    warnings.push(format!("backup {id} is kept: {e}"));
                    continue;
                }
            }
        } else {
            match id.started_at() {
                Some(t) => t,
                None => continue,
            }
        };
        let pinned = if s.pinned {
            Some(
                read_pin(storage, &job.name, id)
                    .await
                    .map(|p| p.reason)
                    .unwrap_or_default(),
            )
        } else {
            None
        };
        backups.push(Candidate {
            id: id.clone(),
            at,
            complete: s.complete,
            pinned,
            verified: tested.contains(id.as_str()),
        });
    }
    let history = History {
        backups,
        newest_run_failed,
        incomplete_after: spec.incomplete_after,
        running,
    };
    Ok((history, stored, warnings))
}

/// Plans the prune of one storage; `running` says a run of the job is going on.
pub async fn plan(
    storage: &dyn Storage,
    job: &Job,
    spec: &BackupJob,
    policy: &retention::Policy,
    now: Timestamp,
    running: bool,
) -> Result<(StoragePrune, BTreeMap<BackupId, Stored>)> {
    let zone: &TimeZone = &job.timezone;
    let (history, stored, warnings) = history(storage, job, spec, running).await?;
    let plan = retention::plan(&history, policy, zone, now);
    Ok((
        StoragePrune {
            storage: storage.name().to_owned(),
            plan,
            warnings,
            deleted: Vec::new(),
            failed: Vec::new(),
            unfinished_cleaned: 0,
            unfinished_error: None,
        },
        stored,
    ))
}

/// Deletes what the plan says: each backup's manifest first, then the rest;
/// then the uploads a killed run left unfinished before `unfinished_before`
/// (`None` while a run of the job goes on: they may be its own).
pub async fn execute(
    storage: &Arc<dyn Storage>,
    job: &str,
    prune: &mut StoragePrune,
    stored: &BTreeMap<BackupId, Stored>,
    unfinished_before: Option<Timestamp>,
) {
    let doomed: Vec<(BackupId, bool)> = prune
        .plan
        .deletions()
        .map(|e| (e.id.clone(), e.complete))
        .collect();
    for (id, complete) in doomed {
        let result = async {
            if complete {
                let manifest = catalog::backup_prefix(job, &id)?.join(MANIFEST)?;
                storage.delete(&manifest).await?;
            }
            let rest: Vec<Key> = stored
                .get(&id)
                .map(|s| {
                    s.keys
                        .iter()
                        .filter(|k| k.file_name() != MANIFEST)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            storage.delete_many(&rest).await
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!("deleted backup {id} from {}", storage.name());
                prune.deleted.push(id);
            }
            Err(e) => {
                tracing::warn!("backup {id} in {}: {e}", storage.name());
                prune.failed.push(Failure {
                    backup: id,
                    error: e.to_string(),
                });
            }
        }
    }
    let Some(unfinished_before) = unfinished_before.filter(|_| prune.plan.held.is_none()) else {
        return;
    };
    let cleaned = match catalog::job_prefix(job) {
        Ok(prefix) => storage.clean_unfinished(&prefix, unfinished_before).await,
        Err(e) => Err(e),
    };
    match cleaned {
        Ok(n) => {
            if n > 0 {
                tracing::info!("aborted {n} unfinished upload(s) in {}", storage.name());
            }
            prune.unfinished_cleaned = n;
        }
        Err(e) => prune.unfinished_error = Some(e.to_string()),
    }
}

/// Why a prune that ran must still exit non-zero.
pub fn failure(prunes: &[StoragePrune]) -> Option<Error> {
    let failed: Vec<String> = prunes
        .iter()
        .flat_map(|p| {
            p.failed
                .iter()
                .map(move |f| format!("{} in {}: {}", f.backup, p.storage, f.error))
                .chain(
                    p.unfinished_error
                        .iter()
                        .map(move |e| format!("unfinished uploads in {}: {e}", p.storage)),
                )
        })
        .collect();
    (!failed.is_empty()).then(|| {
        Error::storage(format!(
            "{} backup(s) could not be deleted: {}",
            failed.len(),
            failed.join("; ")
        ))
        .with_hint(
            "what was deleted stays deleted, and the manifest of a half-deleted backup goes \
             first, so nothing half-deleted is listed; fix the cause and run `backup prune` \
             again to finish",
        )
    })
}

/// Entries kept and deleted, for logs.
pub fn summary(p: &StoragePrune) -> String {
    let keep = p
        .plan
        .entries
        .iter()
        .filter(|e| e.action == Action::Keep)
        .count();
    format!(
        "{}: {keep} kept, {} deleted{}",
        p.storage,
        p.deleted.len(),
        if p.failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", p.failed.len())
        }
    )
}
