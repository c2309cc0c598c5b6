//! What storage says about each job: its last runs, newest backup, growth,
//! restore tests and WAL archive, read from run records and manifests.
//!
//! `backup status`, `backup check` and the status page (`/` of the daemon,
//! `backup report --html`) all show these facts; they are gathered here once
//! so the three cannot disagree.

pub mod html;
mod svg;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::engine::Engine;
use crate::jobs::wal_status::{self, WalStatus};
use crate::model::{Job, JobKind};
use crate::report::{RunHistory, RunRecord};

/// What storage says about one job.
#[derive(Debug, Serialize)]
pub struct JobState {
    pub job: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schedule: Option<String>,
    pub next_run: Option<Timestamp>,
    pub last_run: Option<RunSummary>,
    pub last_success: Option<RunSummary>,
    pub newest_backup: Option<BackupSummary>,
    /// How the data grew, read from the backup history: capacity planning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub growth: Option<Growth>,
    pub last_restore_test: Option<RunSummary>,
    /// A physical job's WAL archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalState>,
    /// Why part of the above could not be read.
    pub problems: Vec<String>,
}

/// A physical job's WAL archive, with the age `check` holds it to.
#[derive(Debug, Serialize)]
pub struct WalState {
    #[serde(flatten)]
    pub archive: WalStatus,
    pub max_age_seconds: u64,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub outcome: &'static str,
    pub trigger: &'static str,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub duration_seconds: f64,
    pub error: Option<String>,
    /// The backup a restore test or drill restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The moment a physical job's restore test or drill recovered to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tested_moment: Option<Timestamp>,
    /// How each storage that failed during the run failed, last.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub storage_errors: Vec<crate::storage::health::Failure>,
}

impl From<&RunRecord> for RunSummary {
    fn from(r: &RunRecord) -> Self {
        RunSummary {
            run_id: r.run_id.clone(),
            outcome: r.outcome.name(),
            trigger: r.trigger.name(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            duration_seconds: r.finished_at.duration_since(r.started_at).as_secs_f64(),
            error: r.error.clone(),
            backup_id: r.details["backup_id"].as_str().map(str::to_owned),
            tested_moment: r.details["tested_moment"]
                .as_str()
                .and_then(|t| t.parse().ok()),
            storage_errors: r.storage_errors.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub id: String,
    pub snapshot_at: Timestamp,
    pub stored_size: u64,
    pub storages: Vec<String>,
}

/// The newest backup against the oldest of the last [`GROWTH_WINDOW_DAYS`]
/// days (or, when the one before the newest is older, that one): the dump's
/// uncompressed size and rows, and their pace.
#[derive(Debug, Serialize, PartialEq)]
pub struct Growth {
    pub since_id: String,
    pub since_snapshot_at: Timestamp,
    pub raw_size: u64,
    pub since_raw_size: u64,
    pub rows: i64,
    pub since_rows: i64,
    /// The raw size's change, scaled to 30 days.
    pub raw_bytes_per_30_days: i64,
    pub rows_per_30_days: i64,
}

pub const GROWTH_WINDOW_DAYS: i64 = 30;

/// [`Growth`] over complete backups, newest first; `None` with fewer than two
/// or when they are less than a day apart (a pace from an hour would be noise
/// scaled 720 times).
pub fn growth(backups: &[&crate::catalog::Manifest]) -> Option<Growth> {
    let newest = backups.first()?;
    let window = SignedDuration::from_hours(24 * GROWTH_WINDOW_DAYS);
    let since = backups
        .iter()
        .skip(1)
        .take_while(|m| newest.snapshot_at.duration_since(m.snapshot_at) <= window)
        .last()
        .or_else(|| backups.get(1))?;
    let span = newest.snapshot_at.duration_since(since.snapshot_at);
    if span < SignedDuration::from_hours(24) {
        return None;
    }
    let rows = |m: &crate::catalog::Manifest| m.tables.iter().map(|t| t.rows).sum::<i64>();
    let per_30_days =
        |change: i64| (change as f64 * window.as_secs_f64() / span.as_secs_f64()).round() as i64;
    let raw_change = newest.raw_size() as i64 - since.raw_size() as i64;
    let row_change = rows(newest) - rows(since);
    Some(Growth {
        since_id: since.id.to_string(),
        since_snapshot_at: since.snapshot_at,
        raw_size: newest.raw_size(),
        since_raw_size: since.raw_size(),
        rows: rows(newest),
        since_rows: rows(since),
        raw_bytes_per_30_days: per_30_days(raw_change),
        rows_per_30_days: per_30_days(row_change),
    })
}

pub async fn state_of(engine: &Engine, job: &Job, now: Timestamp) -> JobState {
    let mut state = JobState {
        job: job.name.clone(),
        kind: job.kind.name(),
        schedule: job.schedule.as_ref().map(|s| s.expression().to_owned()),
        next_run: job.schedule.as_ref().and_then(|s| s.next_after(now)),
        last_run: None,
        last_success: None,
        newest_backup: None,
        growth: None,
        last_restore_test: None,
        wal: None,
        problems: Vec::new(),
    };
    let is_backup = matches!(job.kind, JobKind::Backup(_));
    match engine.list(Some(&job.name)).await {
        _ if !is_backup => {}
        Ok(listed) => {
            let manifests: Vec<&crate::catalog::Manifest> = listed
                .iter()
                .flat_map(|(_, backups)| backups)
                .map(|b| &b.manifest)
                .collect();
            state.growth = growth(&manifests);
            if let JobKind::Backup(spec) = &job.kind
                && let Some((_, wal)) = spec.cluster()
            {
                let read = async {
                    let storages = engine.open_all(&spec.storages).await?;
                    wal_status::read(&job.name, spec, wal, &storages, &manifests).await
                };
                match read.await {
                    Ok(archive) => {
                        state.wal = Some(WalState {
                            archive,
                            max_age_seconds: wal.max_age.as_secs(),
                        })
                    }
                    Err(e) => state.problems.push(e.to_string()),
                }
            }
            state.newest_backup = listed
                .into_iter()
                .flat_map(|(_, backups)| backups)
                .next()
                .map(|b| BackupSummary {
                    id: b.manifest.id.to_string(),
                    snapshot_at: b.manifest.snapshot_at,
                    stored_size: b.manifest.stored_size(),
                    storages: b.storages,
                });
        }
        Err(e) => state.problems.push(e.to_string()),
    }
    if job.record_storages().is_empty() {
        state.problems.push(
            "no storage keeps this job's run records: declare a storage in its file or \
             set `reports = \"STORAGE\"`"
                .to_owned(),
        );
    }
    let (latest, errors) = RunHistory::ask(job, RunHistory::latest).await;
    state
        .problems
        .extend(errors.iter().map(ToString::to_string));
    if let Some(latest) = latest {
        state.last_run = latest.last_run.as_ref().map(RunSummary::from);
        state.last_success = latest.last_success.as_ref().map(RunSummary::from);
        state.last_restore_test = latest.last_restore_test.as_ref().map(RunSummary::from);
    }
    state
}

/// How far back the status page looks.
pub const PAGE_DAYS: i64 = 90;
/// The most records of one job, or of its tests, a page reads.
const PAGE_RECORDS: usize = 1000;
/// How many coming fire times the page shows.
const NEXT_RUNS: usize = 3;

/// One job as the status page shows it: the facts `status` shows, and the
/// records of the page's window the charts are drawn from.
pub struct JobPage {
    pub state: JobState,
    pub zone: jiff::tz::TimeZone,
    pub next_runs: Vec<Timestamp>,
    /// The job's runs, newest first.
    pub runs: Vec<RunRecord>,
    /// A backup job's restore tests and drills, newest first.
    pub tests: Vec<RunRecord>,
}

/// What the status page shows: every job, read at `now`.
pub struct Page {
    pub now: Timestamp,
    /// The start of the charts' window.
    pub from: Timestamp,
    pub jobs: Vec<JobPage>,
}

/// Reads what the page shows of `jobs` from storage.
pub async fn page(engine: &Engine, jobs: &[&Job], now: Timestamp) -> Page {
    let from = now - SignedDuration::from_hours(24 * PAGE_DAYS);
    let mut pages = Vec::new();
    for job in jobs {
        let mut state = state_of(engine, job, now).await;
        let (runs, errors) =
            RunHistory::ask(job, async |h| h.runs_since(from, PAGE_RECORDS).await).await;
        let mut problems: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let tests = if job.records_dir() == job.name && matches!(job.kind, JobKind::Backup(_)) {
            let (tests, errors) =
                RunHistory::ask(job, async |h| h.tests_since(from, PAGE_RECORDS).await).await;
            problems.extend(errors.iter().map(ToString::to_string));
            tests.unwrap_or_default()
        } else {
            Vec::new()
        };
        // The same storage that did not answer `state_of` says so once.
        for p in problems {
            if !state.problems.contains(&p) {
                state.problems.push(p);
            }
        }
        pages.push(JobPage {
            state,
            zone: job.timezone.clone(),
            next_runs: job
                .schedule
                .as_ref()
                .map(|s| {
                    s.upcoming(now, NEXT_RUNS)
                        .iter()
                        .map(jiff::Zoned::timestamp)
                        .collect()
                })
                .unwrap_or_default(),
            runs: runs.unwrap_or_default(),
            tests,
        });
    }
    Page {
        now,
        from,
        jobs: pages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Manifest, ManifestObject, Role};

    /// A backup `days` before 2026-11-25 03:00 UTC of `raw` bytes and `rows` rows.
    fn backup(days: i64, raw: u64, rows: i64) -> Manifest {
        let at = "2026-11-25T03:00:00Z".parse::<Timestamp>().unwrap()
            - SignedDuration::from_hours(24 * days);
        Manifest {
            format: crate::catalog::FORMAT,
            id: crate::model::BackupId::from_start(at, 0),
            job: "nightly".into(),
            database: "app".into(),
            dbname: "app".into(),
            server_version: "15".into(),
            pg_dump_version: "15".into(),
            snapshot_at: at,
            started_at: at,
            finished_at: at,
            compression: "zstd".into(),
            encryption: None,
            objects: vec![ManifestObject {
                key: "data.dump.zst".into(),
                role: Role::Data,
                digest: crate::archive::ObjectDigest {
                    raw_size: raw,
                    raw_sha256: String::new(),
                    stored_size: raw / 4,
                    stored_sha256: String::new(),
                },
            }],
            tables: vec![crate::pg::TableRows {
                schema: "public".into(),
                name: "users".into(),
                rows,
            }],
            extensions: vec![],
            warnings: vec![],
            directory: None,
            tree: None,
            system_identifier: None,
            database_properties: None,
            row_counts: None,
            rows_from: None,
            physical: None,
        }
    }

    #[test]
    fn growth_compares_the_newest_with_the_oldest_of_the_last_30_days() {
        // Daily for 40 days, growing 1 MB and 100 rows a day.
        let history: Vec<Manifest> = (0..40)
            .map(|d| backup(d, 100_000_000 - d as u64 * 1_000_000, 50_000 - d * 100))
            .collect();
        let refs: Vec<&Manifest> = history.iter().collect();
        let g = growth(&refs).unwrap();
        assert_eq!(g.since_id, history[30].id.to_string());
        assert_eq!(g.raw_size - g.since_raw_size, 30_000_000);
        assert_eq!(g.raw_bytes_per_30_days, 30_000_000);
        assert_eq!(g.rows_per_30_days, 3_000);
        // Two backups a day apart: the pace is scaled to 30 days.
        let g = growth(&refs[..2]).unwrap();
        assert_eq!(g.raw_bytes_per_30_days, 30_000_000);
        // One backup, or two within a day: nothing to say.
        assert_eq!(growth(&refs[..1]), None);
        let twins = [&history[0], &history[0]];
        assert_eq!(growth(&twins), None);
    }
}
