//! Prune: what retention decided, carried out on each storage of a backup job.
//!
//! Each storage is judged on its own listing: a backup one storage lacks is
//! not deleted from another because of it. Deleting a backup removes its
//! manifest first, so a half-deleted backup is never listed as complete, then
//! its objects. A delete that fails is reported and the rest goes on; running
//! prune again finishes the job, since the plan is made afresh each time.
//!
//! A physical job's WAL archive is pruned with its base backups, on the same
//! listing's terms: [`wal`] plans and deletes what no kept backup needs.

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

pub mod wal;

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
    /// A physical job's WAL archive: what is kept, what is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<wal::WalPrune>,
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

/// What one storage holds of a job, as retention and the WAL plan read it.
struct Judged {
    history: History,
    stored: BTreeMap<BackupId, StoredBackup>,
    warnings: Vec<String>,
    /// Each complete backup's first WAL segment and segment size, from its
    /// manifest (`None`: it records none).
    wal_needs: BTreeMap<BackupId, Option<(String, u64)>>,
    /// Complete backups whose manifest does not read.
    unreadable: Vec<BackupId>,
}

async fn history(
    storage: &dyn Storage,
    job: &Job,
    spec: &BackupJob,
    facts: &JobFacts,
) -> Result<Judged> {
    let stored = catalog::list_stored(storage, &job.name).await?;
    let newest_run_failed = facts.newest_run_failed.clone();
    let tested = &facts.tested;
    let mut warnings = Vec::new();
    let mut backups = Vec::new();
    let mut wal_needs = BTreeMap::new();
    let mut unreadable = Vec::new();
    for (id, s) in &stored {
        let mut based_on = None;
        let at = if s.complete {
            let key = catalog::backup_prefix(&job.name, id)?.join(MANIFEST)?;
            match catalog::read_manifest(storage, &key).await {
                Ok(m) => {
                    based_on = m
                        .physical
                        .as_ref()
                        .and_then(|p| p.incremental_of.as_ref())
                        .map(|p| p.backup.clone());
                    let needs = m
                        .physical
                        .as_ref()
                        .map(|p| (p.wal_start.clone(), p.wal_segment_size));
                    wal_needs.insert(id.clone(), needs);
                    m.snapshot_at
                }
                Err(e) => {
                    // Not judged, so never deleted: someone should look at it.
                    warnings.push(format!("backup {id} is kept: {e}"));
                    unreadable.push(id.clone());
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
            based_on,
            held: None,
        });
    }
    // A base backup whose manifest does not read may be incremental: which
    // backup it was taken against is not known, so none before it goes.
    if spec.cluster().is_some()
        && let Some(newest) = unreadable.iter().max()
    {
        for c in backups.iter_mut().filter(|c| c.complete && &c.id < newest) {
            c.held = Some(format!(
                "backup {newest}'s manifest does not read: it may be an incremental backup \
                 taken against this one"
            ));
        }
    }
    let history = History {
        backups,
        newest_run_failed,
        incomplete_after: spec.incomplete_after,
        running: facts.running,
    };
    Ok(Judged {
        history,
        stored,
        warnings,
        wal_needs,
        unreadable,
    })
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
    let judged = history(storage, job, spec, facts).await?;
    let plan = retention::plan(&judged.history, policy, zone, now);
    let wal = match spec.cluster() {
        Some(_) => Some(plan_wal(storage, &job.name, &plan, &judged).await?),
        None => None,
    };
    let Judged {
        stored, warnings, ..
    } = judged;
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
            wal,
        },
        stored,
    ))
}

/// The WAL part of a physical job's plan in one storage: the complete
/// backups retention keeps protect the WAL from their start on.
async fn plan_wal(
    storage: &dyn Storage,
    job: &str,
    plan: &RetentionPlan,
    judged: &Judged,
) -> Result<wal::WalPrune> {
    let listing = storage.list(&crate::wal::wal_prefix(job)?).await?;
    let kept: Vec<wal::KeptBase> = plan
        .kept()
        .filter(|e| e.complete)
        .map(|e| wal::KeptBase {
            id: e.id.clone(),
            needs: judged.wal_needs.get(&e.id).cloned().flatten(),
        })
        .collect();
    // A backup whose manifest does not read is kept, and what WAL it needs
    // is unknown: all of it may be.
    let held = plan.held.clone().or_else(|| {
        judged.unreadable.first().map(|id| {
            format!(
                "the manifest of backup {id} does not read (see the warning): the WAL it needs \
                 is unknown"
            )
        })
    });
    Ok(wal::plan(job, &listing, &kept, held))
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
    if let Some(w) = prune.wal.as_mut().filter(|w| !w.doomed().is_empty()) {
        // A backup that could not be deleted may still be listed complete
        // (its manifest is gone first, but that may be what failed), and a
        // backup pinned since the listing is kept: the WAL they need stays.
        if prune.failed.is_empty() {
            wal::execute(storage.as_ref(), job, w).await;
        } else {
            w.skipped = Some(format!(
                "{} backup(s) could not be deleted, and may need it; the next prune deletes it",
                prune.failed.len()
            ));
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
                .chain(
                    p.wal
                        .iter()
                        .filter_map(|w| w.error.as_ref())
                        .map(move |e| format!("WAL in {}: {e}", p.storage)),
                )
        })
        .collect();
    let wal_failed = prunes
        .iter()
        .any(|p| p.wal.as_ref().is_some_and(|w| w.error.is_some()));
    (!failed.is_empty()).then(|| {
        Error::storage(format!(
            "{} {} could not be deleted: {}",
            failed.len(),
            if wal_failed {
                "backup(s) or WAL ranges"
            } else {
                "backup(s)"
            },
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
        "{}: {keep} kept, {} deleted{}{}",
        p.storage,
        p.deleted.len(),
        if p.failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", p.failed.len())
        },
        match &p.wal {
            None => String::new(),
            Some(w) => format!(
                "; WAL: {} object(s) kept, {} deleted{}",
                w.keep.objects,
                w.deleted,
                if w.error.is_some() { ", failed" } else { "" }
            ),
        }
    )
}

#[cfg(test)]
mod tests {
    //! A physical job's prune on an in-memory storage: the plan joins
    //! retention and the WAL rule, and the executor keeps the WAL when a
    //! base backup it may belong to could not be deleted.

    use super::*;
    use crate::catalog::{Manifest, Role};
    use crate::storage::{MemoryStorage, write_small};
    use crate::wal::{Segment, WalFile};

    const MIB16: u64 = 16 << 20;

    struct Fixture {
        _dir: tempfile::TempDir,
        config: crate::model::Config,
        storage: Arc<dyn Storage>,
    }

    /// A physical job `base` keeping its 2 newest base backups.
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("backup.toml");
        std::fs::write(
            &path,
            format!(
                "timezone = \"UTC\"\n\
                 [databases.app]\nurl = \"postgresql://postgres@127.0.0.1:1/postgres\"\n\
                 [storages.disk]\ntype = \"local\"\npath = \"{}\"\n\
                 [jobs.base]\ntype = \"physical\"\ndatabase = \"app\"\nstorages = [\"disk\"]\n\
                 spool_path = \"{}\"\nretention = {{ keep_last = 2 }}\n",
                dir.path().join("unused").display(),
                dir.path().join("spool").display(),
            ),
        )
        .expect("job file");
        let config = crate::config::load(Some(&path)).expect("a good job file");
        Fixture {
            _dir: dir,
            config,
            storage: Arc::new(MemoryStorage::new("disk")),
        }
    }

    async fn put(storage: &dyn Storage, key: &str, bytes: &[u8]) {
        write_small(storage, &Key::new(key).expect("key"), bytes)
            .await
            .expect("stored");
    }

    fn segment(number: u64) -> String {
        Segment {
            timeline: 1,
            number,
        }
        .name(MIB16)
    }

    /// A base backup at `hours` past midnight whose WAL starts at segment `start`.
    async fn base_backup(storage: &dyn Storage, hours: i64, start: u64) -> BackupId {
        let at: Timestamp = "2026-01-10T00:00:00Z".parse().expect("time");
        let at = at + jiff::SignedDuration::from_hours(hours);
        let id = BackupId::from_start(at, 0);
        let digest = serde_json::json!({
            "raw_size": 1, "raw_sha256": "a".repeat(64), "stored_size": 1, "stored_sha256": "b".repeat(64)
        });
        let object = |key: &str, role: &str| {
            let mut o = digest.clone();
            o["key"] = key.into();
            o["role"] = role.into();
            o
        };
        let value = serde_json::json!({
            "format": 1, "id": id, "job": "base", "database": "app", "dbname": "postgres",
            "server_version": "15.8", "pg_dump_version": "",
            "snapshot_at": at, "started_at": at, "finished_at": at,
            "compression": "zstd", "encryption": null,
            "objects": [object("base.tar.zst", "base")], "tables": [],
            "physical": {
                "timeline": 1, "start_lsn": format!("0/{:X}", start * MIB16 + 40),
                "stop_lsn": format!("0/{:X}", start * MIB16 + 400),
                "start_time": at, "stop_time": at, "wal_segment_size": MIB16,
                "wal_start": segment(start), "wal_stop": segment(start),
                "manifest_checksums": "CRC32C",
            },
        });
        let m: Manifest = serde_json::from_value(value.clone()).expect("a manifest");
        assert_eq!(m.problem("base", &id), None);
        assert!(m.object(Role::Base).is_some());
        put(storage, &format!("base/{id}/base.tar.zst"), b"x").await;
        let bytes = serde_json::to_vec(&value).expect("json");
        put(storage, &format!("base/{id}/manifest.json"), &bytes).await;
        id
    }

    async fn archive(storage: &dyn Storage, numbers: std::ops::RangeInclusive<u64>) {
        for n in numbers {
            let key = WalFile::Segment(segment(n))
                .key(
                    "base",
                    &format!("{n:064x}"),
                    crate::model::Compression::Zstd(3),
                    false,
                )
                .expect("key");
            put(storage, key.as_str(), b"segment").await;
        }
    }

    async fn wal_left(storage: &dyn Storage) -> Vec<String> {
        crate::wal::object::list(storage, "base")
            .await
            .expect("listing")
            .into_iter()
            .map(|a| a.file.name())
            .collect()
    }

    async fn plan_of(f: &Fixture) -> (StoragePrune, BTreeMap<BackupId, StoredBackup>) {
        let (job, spec) = f.config.backup_job("base").expect("job base");
        let policy = spec.retention.as_ref().expect("a policy");
        let now: Timestamp = "2026-01-11T00:00:00Z".parse().expect("time");
        plan(
            f.storage.as_ref(),
            job,
            spec,
            policy,
            now,
            &JobFacts::default(),
        )
        .await
        .expect("planned")
    }

    #[tokio::test]
    async fn the_oldest_backup_goes_with_the_wal_only_it_needed() {
        let f = fixture();
        let storage = f.storage.as_ref();
        archive(storage, 1..=12).await;
        put(
            storage,
            &format!("base/wal/history/00000002.history-{}", "c".repeat(64)),
            b"1\t0/5000000\tno recovery target specified\n",
        )
        .await;
        let oldest = base_backup(storage, 1, 3).await;
        base_backup(storage, 2, 6).await;
        base_backup(storage, 3, 9).await;

        let (mut p, stored) = plan_of(&f).await;
        assert_eq!(
            p.plan.deletions().map(|e| &e.id).collect::<Vec<_>>(),
            [&oldest]
        );
        let wal = p.wal.as_ref().expect("a physical job plans its WAL");
        assert_eq!(wal.keep_from.as_deref(), Some(segment(6).as_str()));
        assert_eq!(wal.delete.objects, 5);
        assert_eq!(wal.history_files, 1);

        execute(&f.storage, "base", &mut p, &stored, None).await;
        assert_eq!(p.deleted, [oldest]);
        let wal = p.wal.as_ref().expect("wal");
        assert_eq!((wal.deleted, wal.error.as_ref()), (5, None));
        let mut expected: Vec<String> = (6..=12).map(segment).collect();
        expected.insert(0, "00000002.history".into());
        let mut left = wal_left(storage).await;
        left.sort();
        expected.sort();
        assert_eq!(left, expected);
        assert!(
            summary(&p).ends_with("; WAL: 8 object(s) kept, 5 deleted"),
            "{}",
            summary(&p)
        );

        // Done: a second prune has nothing to delete.
        let (p, _) = plan_of(&f).await;
        assert_eq!(p.plan.deletions().count(), 0);
        let wal = p.wal.as_ref().expect("wal");
        assert!(wal.doomed().is_empty(), "{wal:?}");
        assert_eq!(wal.keep.objects, 8);
    }

    #[tokio::test]
    async fn wal_stays_while_a_backup_that_needs_it_could_not_be_deleted() {
        let f = fixture();
        let storage = f.storage.as_ref();
        archive(storage, 1..=12).await;
        let oldest = base_backup(storage, 1, 3).await;
        base_backup(storage, 2, 6).await;
        base_backup(storage, 3, 9).await;
        let (mut p, stored) = plan_of(&f).await;
        // Pinned after the plan was made: the backup stays, and its WAL too.
        put(
            storage,
            &format!("base/{oldest}/pin.json"),
            br#"{"pinned_at":"2026-01-11T00:00:00Z","reason":"audit"}"#,
        )
        .await;
        execute(&f.storage, "base", &mut p, &stored, None).await;
        assert_eq!(p.failed.len(), 1);
        let wal = p.wal.as_ref().expect("wal");
        assert_eq!(wal.deleted, 0);
        assert!(
            wal.skipped
                .as_deref()
                .unwrap_or("")
                .contains("could not be deleted")
        );
        assert_eq!(wal_left(storage).await.len(), 12);

        // Pinned, it is kept by the next plan, and so is the WAL from its start.
        let (p, _) = plan_of(&f).await;
        assert_eq!(p.plan.deletions().count(), 0);
        let wal = p.wal.as_ref().expect("wal");
        assert_eq!(wal.keep_from.as_deref(), Some(segment(3).as_str()));
        assert_eq!(wal.delete.objects, 2);
    }

    #[tokio::test]
    async fn no_wal_goes_while_a_manifest_does_not_read_or_there_is_no_complete_backup() {
        let f = fixture();
        let storage = f.storage.as_ref();
        archive(storage, 1..=12).await;
        let (p, _) = plan_of(&f).await;
        let wal = p.wal.as_ref().expect("wal");
        assert!(
            wal.held
                .as_deref()
                .unwrap_or("")
                .contains("no complete base backup")
        );
        assert!(wal.doomed().is_empty());

        base_backup(storage, 1, 3).await;
        base_backup(storage, 2, 6).await;
        let broken = base_backup(storage, 3, 9).await;
        put(storage, &format!("base/{broken}/manifest.json"), b"{").await;
        let (p, _) = plan_of(&f).await;
        let wal = p.wal.as_ref().expect("wal");
        assert!(
            wal.held
                .as_deref()
                .unwrap_or("")
                .contains(&format!("backup {broken} does not read")),
            "{wal:?}"
        );
        assert!(wal.doomed().is_empty());
    }

    #[tokio::test]
    async fn a_logical_job_plans_no_wal() {
        let f = fixture();
        let mut config = f.config.clone();
        let job = config.jobs.get_mut("base").expect("job");
        if let crate::model::JobKind::Backup(spec) = &mut job.kind {
            spec.source = crate::model::BackupSource::Directory("/srv".into());
        }
        let (job, spec) = config.backup_job("base").expect("job");
        let policy = spec.retention.as_ref().expect("policy");
        let (p, _) = plan(
            f.storage.as_ref(),
            job,
            spec,
            policy,
            Timestamp::now(),
            &JobFacts::default(),
        )
        .await
        .expect("planned");
        assert!(p.wal.is_none());
        let json = serde_json::to_value(&p).expect("json");
        assert!(json.get("wal").is_none(), "{json}");
    }
}
