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
use serde::Serialize;

use crate::catalog::{self, MANIFEST, StoredBackup};
// The engine still names them here; they are the catalog's.
use crate::error::{Error, Result};
use crate::model::{BackupId, BackupJob, Job, RetentionPolicy};
use crate::report::{self, Outcome};
use crate::retention::{self, Action, Candidate, History, RetentionPlan};
use crate::storage::{Key, Storage};

/// One storage's plan, and what carrying it out did.
#[derive(Debug, Clone, Serialize)]
pub struct StoragePrune {
    pub storage: String,
    pub plan: RetentionPlan,
    /// Backups left out of the plan, and why (an unreadable manifest).
    pub warnings: Vec<String>,
    pub deleted: Vec<BackupId>,
    pub failed: Vec<Failure>,
    /// What killed runs left unfinished, older than `incomplete_after`,
    /// removed: S3 multipart uploads, local temporary files.
    pub unfinished_cleaned: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unfinished_error: Option<String>,
    /// Why this prune's run record could not be stored, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub backup: BackupId,
    pub error: String,
}

/// What retention must know of the job as a whole, read from every storage:
/// a failed newest run recorded in only one of them still holds them all.
#[derive(Debug, Clone, Default)]
pub struct JobFacts {
    /// The job's newest backup run, when it did not succeed (or when the
    /// records cannot be read: then nothing can be trusted to be deleted).
    pub newest_run_failed: Option<String>,
    /// Backup ids that passed a restore test, in any storage.
    pub tested: BTreeSet<String>,
    /// A run of the job holds its lock now.
    pub running: bool,
}

/// Whether a record's name is a backup run's (not a skipped fire time's).
fn is_backup_run(name: &str) -> bool {
    name.ends_with("-backup.json") || name.ends_with("-backup-catch-up.json")
}

/// Reads, from every storage, the job's newest backup run and its restore
/// tests. Record names carry their time and kind, so nothing is scanned past
/// them; a record that cannot be read holds the prune rather than be skipped.
pub async fn job_facts(storages: &[Arc<dyn Storage>], job: &str, running: bool) -> JobFacts {
    let mut facts = JobFacts {
        running,
        ..JobFacts::default()
    };
    let mut newest: Option<(String, report::RunRecord)> = None;
    for storage in storages {
        let read = async {
            let keys = report::record_keys(storage.as_ref(), job).await?;
            let last_run = keys.iter().filter(|k| is_backup_run(k.file_name())).max();
            if let Some(key) = last_run
                && newest
                    .as_ref()
                    .is_none_or(|(name, _)| key.file_name() > name.as_str())
            {
                let record = report::read_record(storage.as_ref(), key)
                    .await?
                    .ok_or_else(|| Error::not_found(format!("{key} vanished")))?;
                newest = Some((key.file_name().to_owned(), record));
            }
            facts.tested.extend(
                report::tested_backups(storage.as_ref(), &keys)
                    .await?
                    .into_keys(),
            );
            Ok::<_, Error>(())
        };
        if let Err(e) = read.await {
            facts.newest_run_failed.get_or_insert(format!(
                "(the run records in {} cannot be read: {e})",
                storage.name()
            ));
        }
    }
    if let Some((_, r)) = newest
        && r.outcome != Outcome::Succeeded
    {
        facts
            .newest_run_failed
            .get_or_insert(format!("{} ({})", r.run_id, r.outcome.name()));
    }
    facts
}

async fn history(
    storage: &dyn Storage,
    job: &Job,
    spec: &BackupJob,
    facts: &JobFacts,
) -> Result<(History, BTreeMap<BackupId, StoredBackup>, Vec<String>)> {
    let stored = catalog::list_stored(storage, &job.name).await?;
    let newest_run_failed = facts.newest_run_failed.clone();
    let tested = &facts.tested;
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
                catalog::read_pin(storage, &job.name, id)
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
        running: facts.running,
    };
    Ok((history, stored, warnings))
}

/// Plans the prune of one storage.
pub async fn plan(
    storage: &dyn Storage,
    job: &Job,
    spec: &BackupJob,
    policy: &RetentionPolicy,
    now: Timestamp,
    facts: &JobFacts,
) -> Result<(StoragePrune, BTreeMap<BackupId, StoredBackup>)> {
    let zone: &TimeZone = &job.timezone;
    let (history, stored, warnings) = history(storage, job, spec, facts).await?;
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
            record_error: None,
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
    stored: &BTreeMap<BackupId, StoredBackup>,
    unfinished_before: Option<Timestamp>,
) {
    let doomed: Vec<(BackupId, bool)> = prune
        .plan
        .deletions()
        .map(|e| (e.id.clone(), e.complete))
        .collect();
    for (id, complete) in doomed {
        let result = async {
            // A pin written since the listing wins.
            let pin = catalog::pin_key(job, &id)?;
            match storage.reader(&pin).await {
                Ok(_) => {
                    return Err(Error::refused(format!(
                        "backup {id} was pinned while prune ran: kept"
                    )));
                }
                Err(e) if e.kind() == crate::error::Kind::NotFound => {}
                Err(e) => return Err(e),
            }
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
                tracing::info!(
                    "removed {n} unfinished write(s) of killed runs from {}",
                    storage.name()
                );
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
                .chain(p.record_error.iter().cloned())
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
