//! The daemon's metrics, as `/metrics` serves them: the Prometheus text format
//! 0.0.4 by default, OpenMetrics 1.0 to a scraper whose `Accept` asks for it.
//! prometheus-client keeps the values and writes OpenMetrics; the classic
//! format is derived from that text (see [`classic_text`]).
//!
//! The values come from run records: at start from those in storage, then
//! from each run as it ends, so a restarted daemon reports the same ages.
//! The WAL archive of a physical job is filled by PostgreSQL through `wal
//! push`, not by a run: its metrics are read from the storages (and the
//! local spool) when a scrape comes, at most every [`WAL_REFRESH`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::engine::{Engine, RunObserver};
use crate::jobs::wal_status::{self, WalStatus};
use crate::model::{BackupJob, Job, JobKind, WalSettings};
use crate::report::{Outcome, RunRecord};

/// How long WAL metrics read from storage are served before a scrape reads
/// them again: listing every archive on every scrape would load the storages.
pub const WAL_REFRESH: Duration = Duration::from_secs(30);
/// How long a scrape waits for the WAL archives; past it, the values
/// already known are served and the slow read is given up until the next
/// refresh.
const WAL_READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobTypeLabels {
    job: String,
    r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    job: String,
    r#type: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageErrorLabels {
    storage: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabel {
    storage: String,
}

type Seconds = Gauge<f64, AtomicU64>;

pub struct Metrics {
    registry: Registry,
    last_success: Family<JobTypeLabels, Seconds>,
    last_duration: Family<JobTypeLabels, Seconds>,
    last_size: Family<JobLabel, Gauge>,
    runs: Family<RunLabels, Counter>,
    running: Family<JobTypeLabels, Gauge>,
    next_run: Family<JobLabel, Seconds>,
    restore_test_success: Family<JobLabel, Seconds>,
    restore_test_moment: Family<JobLabel, Seconds>,
    storage_errors: Family<StorageErrorLabels, Counter>,
    storage_last_error: Family<StorageLabel, Seconds>,
    wal_last_archived: Family<JobLabel, Seconds>,
    wal_push_failures: Family<JobLabel, Counter>,
    wal_gaps: Family<JobLabel, Gauge>,
    /// When the WAL archives were last read; held while they are.
    wal_read: tokio::sync::Mutex<Option<Instant>>,
    /// Held while the storage counters catch up, so two scrapes at once do
    /// not both add the same failures.
    storage_sync: std::sync::Mutex<()>,
    /// Whether the run records in storage have been read: before, every age
    /// would read as "never", which alerts on backups that are fine.
    history_read: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            last_success: Family::default(),
            last_duration: Family::default(),
            last_size: Family::default(),
            runs: Family::default(),
            running: Family::default(),
            next_run: Family::default(),
            restore_test_success: Family::default(),
            restore_test_moment: Family::default(),
            storage_errors: Family::default(),
            storage_last_error: Family::default(),
            wal_last_archived: Family::default(),
            wal_push_failures: Family::default(),
            wal_gaps: Family::default(),
            wal_read: tokio::sync::Mutex::new(None),
            storage_sync: std::sync::Mutex::new(()),
            history_read: AtomicBool::new(false),
        };
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the job's newest successful run ended (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "backup_last_run_duration_seconds",
            "How long the job's newest run took",
            m.last_duration.clone(),
        );
        registry.register(
            "backup_last_size_bytes",
            "Stored size of the job's newest successful backup",
            m.last_size.clone(),
        );
        // The text encoder adds `_total` to counters.
        registry.register(
            "backup_runs",
            "Runs since the daemon started, by outcome",
            m.runs.clone(),
        );
        registry.register(
            "backup_running",
            "1 while a run of the job is going",
            m.running.clone(),
        );
        registry.register(
            "backup_next_run_timestamp_seconds",
            "The job's next fire time (Unix time)",
            m.next_run.clone(),
        );
        registry.register(
            "backup_restore_test_last_success_timestamp_seconds",
            "When a restore test of the job's backups last succeeded (Unix time)",
            m.restore_test_success.clone(),
        );
        registry.register(
            "backup_restore_test_recovered_to_timestamp_seconds",
            "A physical job: the moment its newest passed restore test recovered to (Unix time)",
            m.restore_test_moment.clone(),
        );
        registry.register(
            "backup_storage_errors",
            "Storage operations that failed after their retries, since the daemon started, \
             by kind: timeout (nothing moved for io_timeout), unavailable (temporary errors \
             until the retry budget was spent), error (refused)",
            m.storage_errors.clone(),
        );
        registry.register(
            "backup_storage_last_error_timestamp_seconds",
            "When an operation on the storage last failed (Unix time)",
            m.storage_last_error.clone(),
        );
        registry.register(
            "backup_wal_last_archived_timestamp_seconds",
            "When the newest segment in the physical job's WAL archive was archived (Unix time)",
            m.wal_last_archived.clone(),
        );
        registry.register(
            "backup_wal_push_failures",
            "WAL pushes of the physical job that failed, as wal push counts them in the spool \
             of this host",
            m.wal_push_failures.clone(),
        );
        registry.register(
            "backup_wal_gaps",
            "Breaks in the physical job's WAL archive: gaps on the path recovery replays, and \
             segments wal push dropped (wal_queue_max)",
            m.wal_gaps.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn typed(name: &str, kind: &str) -> JobTypeLabels {
    JobTypeLabels {
        job: name.to_owned(),
        r#type: kind.to_owned(),
    }
}

fn job(name: &str) -> JobLabel {
    JobLabel {
        job: name.to_owned(),
    }
}

fn unix(t: jiff::Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

impl Metrics {
    /// Takes in a run record: one read at start, or one just written.
    pub fn absorb(&self, record: &RunRecord, count_it: bool) {
        if count_it {
            self.runs
                .get_or_create(&RunLabels {
                    job: record.job.clone(),
                    r#type: record.kind.clone(),
                    outcome: record.outcome.name().to_owned(),
                })
                .inc();
        }
        if record.outcome == Outcome::Skipped {
            return;
        }
        let duration = record.finished_at.duration_since(record.started_at);
        self.last_duration
            .get_or_create(&JobTypeLabels {
                job: record.job.clone(),
                r#type: record.kind.clone(),
            })
            .set(duration.as_secs_f64());
        if record.outcome == Outcome::Succeeded {
            let finished = unix(record.finished_at);
            // A restore test proves the backup job's backups: its gauge is
            // labelled with that job, and the test job has its own success.
            if record.kind == "restore-test" {
                self.restore_test_success
                    .get_or_create(&job(record.dir()))
                    .set(finished);
                if let Some(moment) = record.details["tested_moment"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                {
                    self.restore_test_moment
                        .get_or_create(&job(record.dir()))
                        .set(unix(moment));
                }
            }
            if record.kind != "restore-test" || record.job != record.dir() {
                self.last_success
                    .get_or_create(&typed(&record.job, &record.kind))
                    .set(finished);
            }
            if let Some(size) = record.details["stored_size"].as_i64() {
                self.last_size.get_or_create(&job(&record.job)).set(size);
            }
        }
    }

    /// Makes every known job show up, with zeros, before its first run.
    pub fn know_job(&self, name: &str, kind: &str) {
        let _ = self.running.get_or_create(&typed(name, kind));
        for outcome in Outcome::ALL {
            let _ = self.runs.get_or_create(&RunLabels {
                job: name.to_owned(),
                r#type: kind.to_owned(),
                outcome: outcome.name().to_owned(),
            });
        }
    }

    /// Makes a storage's error counters show up, with zeros, before its
    /// first failure.
    pub fn know_storage(&self, name: &str) {
        let _ = crate::storage::health::of(name);
    }

    /// Brings the storage counters up to what the storages met.
    fn absorb_storage_health(&self) {
        let _held = self.storage_sync.lock().unwrap_or_else(|p| p.into_inner());
        for (storage, counts, last) in crate::storage::health::snapshot() {
            for (kind, count) in counts {
                let counter = self.storage_errors.get_or_create(&StorageErrorLabels {
                    storage: storage.clone(),
                    kind: kind.as_str().to_owned(),
                });
                let seen = counter.get();
                if count > seen {
                    counter.inc_by(count - seen);
                }
            }
            if let Some(last) = last {
                self.storage_last_error
                    .get_or_create(&StorageLabel { storage })
                    .set(unix(last.at));
            }
        }
    }

    /// Takes in what a physical job's WAL archive holds.
    pub fn absorb_wal(&self, name: &str, status: &WalStatus) {
        let label = job(name);
        match status.newest.as_ref().and_then(|n| n.archived_at) {
            Some(at) => {
                self.wal_last_archived.get_or_create(&label).set(unix(at));
            }
            None => {
                self.wal_last_archived.remove(&label);
            }
        }
        // The spool's count is the truth; the counter follows it, and
        // starts again (a counter reset, which rate() understands) when the
        // spool was emptied.
        let total = status.push_failures.total;
        let seen = self.wal_push_failures.get_or_create(&label).get();
        if total < seen {
            self.wal_push_failures.remove(&label);
        }
        let counter = self.wal_push_failures.get_or_create(&label);
        let seen = counter.get();
        if total > seen {
            counter.inc_by(total - seen);
        }
        self.wal_gaps
            .get_or_create(&label)
            .set(status.breaks() as i64);
    }

    /// Reads the WAL archive of every physical job of `engine` into the
    /// metrics, unless that was done less than [`WAL_REFRESH`] ago or
    /// another scrape is doing it now.
    pub async fn refresh_wal(&self, engine: &Engine) {
        let Ok(mut last) = self.wal_read.try_lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < WAL_REFRESH) {
            return;
        }
        let physical: Vec<(&Job, &BackupJob, &WalSettings)> = engine
            .config
            .jobs
            .values()
            .filter_map(|j| match &j.kind {
                JobKind::Backup(spec) => spec.cluster().map(|(_, wal)| (j, spec, wal)),
                _ => None,
            })
            .collect();
        let reads = physical.into_iter().map(|(job, spec, wal)| async move {
            let read = async {
                let storages = engine.open_all(&spec.storages).await?;
                let bases = wal_status::base_backups(&storages, &job.name).await?;
                let bases: Vec<&crate::catalog::Manifest> = bases.iter().collect();
                wal_status::read(&job.name, spec, wal, &storages, &bases).await
            };
            match tokio::time::timeout(WAL_READ_TIMEOUT, read).await {
                Ok(Ok(status)) => self.absorb_wal(&job.name, &status),
                Ok(Err(e)) => tracing::warn!(job = %job.name, "WAL metrics not read: {e}"),
                Err(_) => tracing::warn!(
                    job = %job.name,
                    "WAL metrics not read: the storages took over {}s",
                    WAL_READ_TIMEOUT.as_secs()
                ),
            }
        });
        futures::future::join_all(reads).await;
        *last = Some(Instant::now());
    }

    pub fn set_next_run(&self, name: &str, at: Option<jiff::Timestamp>) {
        match at {
            Some(at) => {
                self.next_run.get_or_create(&job(name)).set(unix(at));
            }
            None => {
                self.next_run.remove(&job(name));
            }
        }
    }

    pub fn history_read(&self) {
        self.history_read.store(true, Ordering::Release);
    }

    /// The text `/metrics` serves in `format`, once the stored run records
    /// have been read.
    pub fn encode(&self, format: Format) -> Option<String> {
        if !self.history_read.load(Ordering::Acquire) {
            return None;
        }
        self.absorb_storage_health();
        let mut text = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        Some(match format {
            Format::OpenMetrics => text,
            Format::Prometheus => classic_text(&text),
        })
    }
}

/// The two text formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4: what every scraper and `promtool` reads.
    Prometheus,
    /// OpenMetrics 1.0, for scrapers that say they read it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for. OpenMetrics only when it is
    /// named, with a q-value above 0 and at least that of the classic format
    /// (`text/plain`, `text/*`, `*/*`): Prometheus itself sends
    /// `application/openmetrics-text;version=1.0.0,...,text/plain;version=0.0.4;q=0.5,*/*;q=0.1`.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut openmetrics = 0.0_f64;
        let mut classic = 0.0_f64;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, v)| v.trim().parse::<f64>().ok())
                .filter(|q| (0.0..=1.0).contains(q))
                .unwrap_or(0.0);
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => classic = classic.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= classic {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4 says it. For the
/// counters and gauges registered here the two differ only in this: a
/// counter's `# HELP` and `# TYPE` name its sample (`x_total`, where
/// OpenMetrics names the family `x`), and 0.0.4 has no `# UNIT`, no
/// `_created` samples and no `# EOF`. Label values and numbers are written
/// alike in both.
fn classic_text(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let comment = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match comment {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(&name) {
                    text.push_str(&format!("{prefix}{name}_total {tail}\n"));
                    continue;
                }
            }
            None => {
                let created = counters.iter().any(|c| {
                    line.strip_prefix(c)
                        .and_then(|l| l.strip_prefix("_created"))
                        .is_some_and(|l| l.starts_with(['{', ' ']))
                });
                if created {
                    continue;
                }
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

impl RunObserver for Metrics {
    fn started(&self, name: &str, kind: &str) {
        self.running.get_or_create(&typed(name, kind)).set(1);
    }

    fn finished(&self, record: &RunRecord) {
        if record.outcome != Outcome::Skipped {
            self.running
                .get_or_create(&typed(&record.job, &record.kind))
                .set(0);
        }
        self.absorb(record, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_an_alert_rule_uses() {
        let m = Metrics::default();
        m.know_job("nightly", "backup");
        let mut record = RunRecord::begin(
            "r".into(),
            "nightly",
            "backup",
            crate::report::Trigger::Schedule,
            None,
            "2026-11-24T03:00:00Z".parse().unwrap(),
        );
        record.details = serde_json::json!({"stored_size": 1234});
        record.end(
            "2026-11-24T03:00:30Z".parse().unwrap(),
            Outcome::Succeeded,
            None,
        );
        m.started("nightly", "backup");
        m.finished(&record);
        m.set_next_run("nightly", Some("2026-11-25T03:00:00Z".parse().unwrap()));
        assert_eq!(
            m.encode(Format::Prometheus),
            None,
            "nothing to scrape before the history is read"
        );
        m.history_read();
        let text = m.encode(Format::Prometheus).unwrap();
        for line in [
            r#"backup_last_success_timestamp_seconds{job="nightly",type="backup"} 1795489230.0"#,
            r#"backup_last_run_duration_seconds{job="nightly",type="backup"} 30.0"#,
            r#"backup_last_size_bytes{job="nightly"} 1234"#,
            r#"backup_runs_total{job="nightly",type="backup",outcome="succeeded"} 1"#,
            r#"backup_runs_total{job="nightly",type="backup",outcome="failed"} 0"#,
            r#"backup_running{job="nightly",type="backup"} 0"#,
            r#"backup_next_run_timestamp_seconds{job="nightly"} 1795575600.0"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn wal_metrics_follow_the_archive_and_the_spool_count() {
        use crate::jobs::wal_status::{ArchivedSegment, Dropped, PushFailures};
        let m = Metrics::default();
        m.history_read();
        let mut status = WalStatus {
            newest: Some(ArchivedSegment {
                segment: "000000010000000000000009".into(),
                archived_at: Some("2026-11-24T03:00:30Z".parse().unwrap()),
            }),
            oldest: None,
            segments: 8,
            window: None,
            path_from: None,
            timelines: vec![1],
            gaps: vec![],
            dropped: vec![Dropped {
                file: "00000001000000000000000A".into(),
                dropped_at: None,
                backlog_bytes: 0,
                limit_bytes: 0,
            }],
            missing_history: vec![],
            push_failures: PushFailures {
                total: 3,
                last: None,
            },
            storages: vec![],
            notes: vec![],
        };
        m.absorb_wal("base", &status);
        let text = m.encode(Format::Prometheus).unwrap();
        for line in [
            r#"backup_wal_last_archived_timestamp_seconds{job="base"} 1795489230.0"#,
            r#"backup_wal_push_failures_total{job="base"} 3"#,
            r#"backup_wal_gaps{job="base"} 1"#,
            "# TYPE backup_wal_push_failures_total counter",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        // A spool emptied by hand: the counter starts again.
        status.push_failures.total = 1;
        status.dropped.clear();
        status.newest = None;
        m.absorb_wal("base", &status);
        let text = m.encode(Format::Prometheus).unwrap();
        assert!(
            text.contains(r#"backup_wal_push_failures_total{job="base"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"backup_wal_gaps{job="base"} 0"#), "{text}");
        assert!(
            !text.contains("backup_wal_last_archived_timestamp_seconds{"),
            "{text}"
        );
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_has_no_eof() {
        let m = Metrics::default();
        m.know_job("nightly", "backup");
        m.history_read();
        let openmetrics = m.encode(Format::OpenMetrics).unwrap();
        assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
        assert!(openmetrics.contains("# TYPE backup_runs counter\n"));
        let text = m.encode(Format::Prometheus).unwrap();
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains(
                "# HELP backup_runs_total Runs since the daemon started, by outcome.\n\
                 # TYPE backup_runs_total counter\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE backup_running gauge\n"),
            "gauges keep their names: {text}"
        );
        // Every sample is kept, in the same order.
        let samples = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(samples(&text), samples(&openmetrics));
    }

    #[test]
    fn the_classic_text_drops_units_and_created_samples() {
        let openmetrics = "# HELP x_seconds X.\n# TYPE x_seconds counter\n# UNIT x_seconds seconds\n\
                           x_seconds_total{a=\"b\"} 1\nx_seconds_created{a=\"b\"} 1.7e9\n\
                           x_seconds_createdness 2\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP x_seconds_total X.\n# TYPE x_seconds_total counter\n\
             x_seconds_total{a=\"b\"} 1\nx_seconds_createdness 2\n"
        );
    }

    #[test]
    fn openmetrics_is_served_only_to_a_scraper_that_asks_for_it() {
        use Format::{OpenMetrics, Prometheus};
        for (accept, format) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("text/plain;version=0.0.4"), Prometheus),
            (Some("application/json"), Prometheus),
            // What Prometheus 2 sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                     version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // What Prometheus 3 sends.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
                     application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;\
                     escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            // A scrape config that prefers the classic format.
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (Some("Application/OpenMetrics-Text; q=0.2"), OpenMetrics),
            (Some("application/openmetrics-text;q=nonsense"), Prometheus),
        ] {
            assert_eq!(Format::negotiate(accept), format, "{accept:?}");
        }
    }
}
