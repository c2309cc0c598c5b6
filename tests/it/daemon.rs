//! `backup daemon`, `status`, `check` and notifications, end to end: the real
//! binary, a throwaway PostgreSQL, per-second schedules, real signals.
//!
//! Schedules, overlap and catch-up rules are unit-tested with made-up times
//! (src/daemon/scheduler.rs, src/schedule.rs); these tests show that the
//! daemon built on them does the same against real processes. Waits are
//! bounded polls, never fixed sleeps that a slow machine could outrun.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{self, Setup};
use serde_json::Value;

/// A running `backup daemon`, stopped (SIGKILL) if a test fails first.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Daemon {
    fn start(setup: &Setup, name: &str, extra: &[&str]) -> Daemon {
        let log = setup.work.path().join(format!("{name}.log"));
        let (child, port) = common::start_daemon(&log, |listen| {
            let mut command = Command::new(env!("CARGO_BIN_EXE_backup"));
            command
                .arg("--config")
                .arg(&setup.config)
                .args(["daemon", "--listen", listen])
                .args(extra)
                .env_remove("BACKUP_CONFIG")
                .env_remove("PGPASSWORD")
                .env("BACKUP_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null());
            command
        });
        Daemon {
            child: Some(child),
            log,
            port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// SIGTERM, then the exit code; fails the test if it takes over `limit`.
    fn stop(self, limit: Duration) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait(limit)
    }

    /// The exit code, once the daemon exits; fails the test after `limit`.
    fn wait(mut self, limit: Duration) -> i32 {
        let mut child = self.child.take().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                panic!("the daemon did not stop within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

use crate::common::{http_get as get, wait_for};

/// Every run record of job `nightly`, oldest first.
fn records(setup: &Setup) -> Vec<Value> {
    let dir = setup.backups.join("nightly").join("reports");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

fn with_outcome<'a>(records: &'a [Value], outcome: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["outcome"] == outcome).collect()
}

/// Backup directories of `nightly`: (id, has a manifest).
fn backup_dirs(setup: &Setup) -> Vec<(String, bool)> {
    let mut dirs: Vec<(String, bool)> = std::fs::read_dir(setup.backups.join("nightly"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name() != "reports" && e.path().is_dir())
        .map(|e| {
            let complete = e.path().join("manifest.json").is_file();
            (e.file_name().to_string_lossy().into_owned(), complete)
        })
        .collect();
    dirs.sort();
    dirs
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// How many `pg_dump` sessions the server has.
fn dumps(setup: &Setup) -> usize {
    count_dumps(setup, "")
}

/// How many `pg_dump` sessions wait on a lock (see `Cluster::hold_lock`).
fn dumps_waiting(setup: &Setup) -> usize {
    count_dumps(setup, " AND wait_event_type = 'Lock'")
}

fn count_dumps(setup: &Setup, and: &str) -> usize {
    let sql =
        format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'{and}");
    setup.cluster.psql("postgres", &sql).parse().unwrap()
}

fn no_pg_dump_left(setup: &Setup) {
    wait_for(
        "pg_dump to be gone from the server",
        Duration::from_secs(20),
        || dumps(setup) == 0,
    );
}

#[test]
fn a_daemon_runs_its_schedule_and_answers_health_and_metrics() {
    let setup = Setup::new("", "schedule = \"* * * * * *\"");
    let daemon = Daemon::start(&setup, "daemon", &[]);
    wait_for("two scheduled backups", Duration::from_secs(90), || {
        backup_dirs(&setup)
            .iter()
            .filter(|(_, complete)| *complete)
            .count()
            >= 2
    });

    let (status, body) = get(daemon.port, "/health/ready").unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(daemon.port, "/health").unwrap();
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ready"], true);
    let checks: Vec<&str> = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["storage disk", "database app"]);

    let (status, text) = get(daemon.port, "/metrics").unwrap();
    assert_eq!(status, 200);
    let succeeded = metric(
        &text,
        r#"backup_runs_total{job="nightly",type="backup",outcome="succeeded"}"#,
    )
    .unwrap_or(0.0);
    assert!(succeeded >= 1.0, "{text}");
    let now = jiff::Timestamp::now().as_second() as f64;
    let last = metric(
        &text,
        r#"backup_last_success_timestamp_seconds{job="nightly",type="backup"}"#,
    )
    .unwrap();
    assert!((now - last).abs() < 120.0, "{text}");
    assert!(metric(&text, r#"backup_last_size_bytes{job="nightly"}"#).unwrap() > 0.0);
    let next = metric(&text, r#"backup_next_run_timestamp_seconds{job="nightly"}"#).unwrap();
    assert!(next >= now - 5.0, "{text}");
    for name in [
        "backup_running{job=\"nightly\",type=\"backup\"}",
        "backup_last_run_duration_seconds{job=\"nightly\",type=\"backup\"}",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing:\n{text}");
    }

    assert_eq!(daemon.stop(Duration::from_secs(90)), 0);
    let records = records(&setup);
    assert!(
        records.iter().all(|r| r["trigger"] == "schedule"),
        "{records:?}"
    );
    let complete = backup_dirs(&setup).iter().filter(|(_, c)| *c).count();
    assert_eq!(complete, with_outcome(&records, "succeeded").len());
}

#[test]
fn metrics_seeded_at_start_take_the_jobs_own_runs_not_a_later_restore() {
    let setup = Setup::new("", "schedule = \"0 0 1 1 *\"");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let run = setup.backup(&[
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "restored",
        "--yes",
    ]);
    assert!(run.ok(), "{}", run.all());
    let daemon = Daemon::start(&setup, "daemon", &[]);
    let (_, text) = get(daemon.port, "/metrics").unwrap();
    assert!(
        metric(
            &text,
            r#"backup_last_success_timestamp_seconds{job="nightly",type="backup"}"#
        )
        .is_some(),
        "{text}"
    );
    assert!(!text.contains(r#"type="restore""#), "{text}");
    assert_eq!(daemon.stop(Duration::from_secs(60)), 0);
}

#[test]
fn a_scheduled_maintenance_job_runs_records_and_shows_in_metrics() {
    let setup = Setup::new("", "");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(
        "\n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"analyze\"]\nschedule = \"* * * * * *\"\n",
    );
    std::fs::write(&setup.config, text).unwrap();
    let daemon = Daemon::start(&setup, "daemon", &[]);
    let dir = setup.backups.join("tidy").join("reports");
    wait_for("two maintenance runs", Duration::from_secs(90), || {
        std::fs::read_dir(&dir).map_or(0, |d| d.count()) >= 2
    });
    // A record is stored before the metrics take it in: wait for them too.
    let counted = |text: &str| {
        metric(
            text,
            r#"backup_runs_total{job="tidy",type="maintenance",outcome="succeeded"}"#,
        )
        .is_some_and(|n| n >= 1.0)
            && metric(
                text,
                r#"backup_last_success_timestamp_seconds{job="tidy",type="maintenance"}"#,
            )
            .is_some()
    };
    wait_for(
        "a maintenance success in the metrics",
        Duration::from_secs(30),
        || get(daemon.port, "/metrics").is_some_and(|(_, text)| counted(&text)),
    );
    assert_eq!(daemon.stop(Duration::from_secs(60)), 0);
    assert!(
        backup_dirs(&setup).is_empty(),
        "the backup job has no schedule: only maintenance ran"
    );
    let first: Value = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .next()
                .unwrap()
                .path(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(first["kind"], "maintenance");
    assert_eq!(first["trigger"], "schedule");
}

#[test]
fn a_scheduled_restore_test_runs_and_shows_in_metrics() {
    let setup = Setup::new("", "");
    let first = setup.backup(&["run", "nightly"]);
    assert!(first.ok(), "{}", first.all());
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(
        "\n[jobs.weekly-restore-test]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\n\
         schedule = \"*/2 * * * * *\"\n\
         checks = [{ sql = \"SELECT count(*) FROM app.orgs\", equals = 50 }]\n",
    );
    std::fs::write(&setup.config, text).unwrap();
    let daemon = Daemon::start(&setup, "daemon", &[]);
    let dir = setup.backups.join("nightly").join("reports");
    let tests = || {
        std::fs::read_dir(&dir).map_or(0, |d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .ends_with("-restore-test.json")
                })
                .count()
        })
    };
    wait_for("a scheduled restore test", Duration::from_secs(90), || {
        tests() >= 1
    });
    // Labelled with the backup job whose backups the test proves.
    let tested = |text: &str| {
        metric(
            text,
            r#"backup_restore_test_last_success_timestamp_seconds{job="nightly"}"#,
        )
        .is_some_and(|t| t > 0.0)
    };
    let counted = |text: &str| {
        tested(text)
            && metric(
                text,
                r#"backup_runs_total{job="weekly-restore-test",type="restore-test",outcome="succeeded"}"#,
            )
            .is_some_and(|n| n >= 1.0)
    };
    wait_for(
        "the restore test in the metrics",
        Duration::from_secs(30),
        || get(daemon.port, "/metrics").is_some_and(|(_, text)| counted(&text)),
    );
    assert_eq!(daemon.stop(Duration::from_secs(60)), 0);
    // No scratch database outlives the daemon's runs.
    let left = setup.cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE '%restore_test%'",
    );
    assert_eq!(left, "0");
    // A restarted daemon remembers the test: the gauge is seeded from records.
    let daemon = Daemon::start(&setup, "daemon", &[]);
    let (_, text) = get(daemon.port, "/metrics").unwrap();
    assert!(tested(&text), "{text}");
    assert_eq!(daemon.stop(Duration::from_secs(60)), 0);
}

/// A daemon on a per-second schedule whose first backup waits on a table
/// lock until the returned holder is released.
fn a_daemon_with_a_blocked_backup(grace: &str) -> (Setup, common::LockHolder, Daemon) {
    let setup = Setup::new("", "schedule = \"* * * * * *\"");
    let lock = setup.cluster.hold_lock("app", "app.users");
    let daemon = Daemon::start(&setup, "daemon", &["--grace", grace]);
    wait_for(
        "a backup to be waiting on the lock",
        Duration::from_secs(60),
        || dumps_waiting(&setup) == 1,
    );
    (setup, lock, daemon)
}

/// Sends `signal` and waits until the daemon says it is shutting down with
/// one run going.
fn shut_down_with_one_running(daemon: &Daemon, signal: i32) {
    daemon.signal(signal);
    let name = if signal == libc::SIGINT {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    wait_for("the shutdown to begin", Duration::from_secs(20), || {
        daemon
            .log()
            .contains(&format!("{name} received: starting no new runs; 1 running"))
    });
}

#[test]
fn sigterm_mid_backup_cancels_it_after_the_grace_and_leaves_no_manifest() {
    let (setup, lock, daemon) = a_daemon_with_a_blocked_backup("1s");
    let code = daemon.stop(Duration::from_secs(60));
    assert_eq!(code, 0);
    no_pg_dump_left(&setup);
    lock.release();

    assert!(
        backup_dirs(&setup).iter().all(|(_, complete)| !complete),
        "{:?}",
        backup_dirs(&setup)
    );
    let list = setup.list();
    assert!(list.is_empty(), "{list:?}");
    let records = records(&setup);
    let interrupted = with_outcome(&records, "interrupted");
    assert_eq!(interrupted.len(), 1, "{records:?}");
    assert!(
        interrupted[0]["error"]
            .as_str()
            .unwrap()
            .contains("no manifest"),
        "{records:?}"
    );
}

#[test]
fn a_job_slower_than_its_interval_is_skipped_not_doubled() {
    let setup = Setup::new("", "schedule = \"* * * * * *\"");
    let lock = setup.cluster.hold_lock("app", "app.users");
    let daemon = Daemon::start(&setup, "daemon", &[]);
    wait_for("three fire times skipped", Duration::from_secs(60), || {
        with_outcome(&records(&setup), "skipped").len() >= 3
    });
    // Only one dump ever waited on the lock: the skipped ones never started.
    assert_eq!(dumps(&setup), 1);
    lock.release();
    wait_for("the slow run to finish", Duration::from_secs(60), || {
        !with_outcome(&records(&setup), "succeeded").is_empty()
    });
    assert_eq!(daemon.stop(Duration::from_secs(90)), 0);

    let records = records(&setup);
    let ran: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] != "skipped")
        .collect();
    // Each run that started made one backup dir; no two runs overlapped.
    assert_eq!(backup_dirs(&setup).len(), ran.len(), "{records:#?}");
    let mut spans: Vec<(String, String)> = ran
        .iter()
        .map(|r| {
            (
                r["started_at"].as_str().unwrap().to_owned(),
                r["finished_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        let (a_end, b_start) = (jiff_ts(&pair[0].1), jiff_ts(&pair[1].0));
        assert!(a_end <= b_start, "runs overlapped: {pair:?}");
    }
    for skipped in with_outcome(&records, "skipped") {
        assert_eq!(skipped["error"], "the previous run is still going");
    }
}

fn jiff_ts(text: &str) -> jiff::Timestamp {
    text.parse().unwrap()
}

#[test]
fn two_daemons_on_the_same_job_files_run_each_fire_time_once() {
    let setup = Setup::new("", "schedule = \"*/2 * * * * *\"");
    let a = Daemon::start(&setup, "a", &[]);
    let b = Daemon::start(&setup, "b", &[]);
    wait_for("five scheduled runs", Duration::from_secs(120), || {
        records(&setup).len() >= 5
    });
    assert_eq!(a.stop(Duration::from_secs(90)), 0);
    // With `a` gone, `b` alone must take over.
    let before = records(&setup).len();
    wait_for("b to run alone", Duration::from_secs(60), || {
        records(&setup).len() >= before + 2
    });
    assert_eq!(b.stop(Duration::from_secs(90)), 0);
    // Read once b has stopped: a run it finished in its grace period is logged.
    let b_log = std::fs::read_to_string(setup.work.path().join("b.log")).unwrap();

    let records = records(&setup);
    let ran: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] != "skipped")
        .collect();
    let mut per_fire: BTreeMap<String, usize> = BTreeMap::new();
    for r in &ran {
        *per_fire.entry(r["scheduled_for"].to_string()).or_default() += 1;
    }
    assert!(per_fire.values().all(|n| *n == 1), "{per_fire:?}");
    // One backup per run: no fire time was dumped by both daemons.
    assert_eq!(backup_dirs(&setup).len(), ran.len(), "{records:#?}");
    assert_eq!(
        with_outcome(&records, "succeeded").len(),
        ran.len(),
        "{records:#?}"
    );
    let log = format!(
        "{}{b_log}",
        std::fs::read_to_string(setup.work.path().join("a.log")).unwrap()
    );
    // Records of one fire time share a key, so count the runs in the logs too.
    let runs_logged = log
        .lines()
        .filter(|l| l.contains("-backup succeeded"))
        .count();
    assert_eq!(
        runs_logged,
        with_outcome(&records, "succeeded").len(),
        "{log}"
    );
    assert!(
        log.contains("skipped: another process")
            || log.contains("skipped: this fire time was already run"),
        "neither daemon ever yielded a fire time to the other:\n{log}"
    );
}

#[test]
fn sighup_reloads_and_a_broken_file_keeps_the_old_configuration() {
    let setup = Setup::new("", "schedule = \"0 3 * * *\"");
    let daemon = Daemon::start(&setup, "daemon", &[]);
    let good = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        good.replace("schedule = \"0 3 * * *\"", "schedule = \"0 3 * *\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for("the refusal in the log", Duration::from_secs(20), || {
        daemon.log().contains("keeping the previous configuration")
    });
    assert!(daemon.log().contains("4 fields"), "{}", daemon.log());
    std::fs::write(
        &setup.config,
        good.replace("schedule = \"0 3 * * *\"", "schedule = \"* * * * * *\""),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    wait_for(
        "a backup on the new schedule",
        Duration::from_secs(60),
        || backup_dirs(&setup).iter().any(|(_, complete)| *complete),
    );
    assert_eq!(daemon.stop(Duration::from_secs(90)), 0);
}

#[test]
fn a_run_past_its_timeout_fails_as_timed_out_and_stops_pg_dump() {
    let setup = Setup::new("", "timeout = \"2s\"");
    let lock = setup.cluster.hold_lock("app", "app.users");
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 10, "{}", run.all());
    assert!(run.stderr.contains("timed out after 2s"), "{}", run.all());
    assert!(
        run.stderr.contains("hint: the job's timeout is 2s"),
        "{}",
        run.all()
    );
    no_pg_dump_left(&setup);
    lock.release();
    assert!(backup_dirs(&setup).iter().all(|(_, c)| !c));
    let records = records(&setup);
    assert_eq!(with_outcome(&records, "timed_out").len(), 1, "{records:?}");
}

#[test]
fn retries_try_again_with_backoff_and_record_the_attempts() {
    // The server cannot be reached (nothing listens on its port: a restart,
    // a failover): a temporary failure, so the retries run; the record says
    // how many attempts there were.
    let setup = Setup::new("", "retries = 2\nretry_delay = \"100ms\"");
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let here = format!("127.0.0.1:{}/", setup.cluster.port);
    std::fs::write(
        &setup.config,
        config.replace(&here, &format!("127.0.0.1:{port}/")),
    )
    .unwrap();
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert_eq!(
        run.stderr.matches("trying again in").count(),
        2,
        "{}",
        run.all()
    );
    let first = records(&setup);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["attempts"], 3);
    assert_eq!(first[0]["outcome"], "failed");

    // A database that does not exist will not appear by trying again: one
    // attempt, however many retries are allowed.
    std::fs::write(&setup.config, config.replace("/app\"", "/missing\"")).unwrap();
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(!run.stderr.contains("trying again in"), "{}", run.all());
    let both = records(&setup);
    assert_eq!(both.len(), 2);
    assert!(both.iter().any(|r| r["attempts"] == 1), "{both:?}");
}

/// Runs `backup check ARGS` and returns its exit code and line.
fn check(setup: &Setup, args: &[&str]) -> (i32, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let run = setup.backup(&all);
    (run.code, run.stdout.trim().to_owned())
}

#[test]
fn check_exit_codes_follow_the_nagios_convention() {
    let setup = Setup::new("", "schedule = \"0 3 * * *\"");
    let (code, line) = check(&setup, &[]);
    assert_eq!(
        (
            code,
            line.starts_with("BACKUP CRITICAL - nightly: no complete backup")
        ),
        (2, true),
        "{line}"
    );

    assert!(setup.backup(&["run", "nightly"]).ok());
    let (code, line) = check(&setup, &[]);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("BACKUP OK - nightly: newest backup"),
        "{line}"
    );

    std::thread::sleep(Duration::from_millis(2100));
    let (code, line) = check(&setup, &["--max-age", "1s"]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("more than 1s (--max-age)"), "{line}");

    let good = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, good.replace("/app\"", "/missing\"")).unwrap();
    assert_eq!(setup.backup(&["run", "nightly"]).code, 4);
    std::fs::write(&setup.config, &good).unwrap();
    let (code, line) = check(&setup, &["--max-age", "1h"]);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("last run failed"), "{line}");

    let status = setup.backup(&["--json", "status"]);
    assert!(status.ok(), "{}", status.all());
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    let job = &status["jobs"][0];
    assert_eq!(job["last_run"]["outcome"], "failed");
    assert_eq!(job["last_success"]["outcome"], "succeeded");
    assert!(job["newest_backup"]["id"].is_string());
    assert!(job["next_run"].is_string());
    let text = setup.backup(&["status"]);
    assert!(
        text.stdout.contains("restore tested: never"),
        "{}",
        text.all()
    );
}

/// One performance datum as the Nagios plugin guidelines write it:
/// `'label'=value[UOM];[warn];[crit];[min];[max]`.
#[derive(Debug)]
struct PerfDatum {
    label: String,
    value: f64,
    uom: String,
    warn: Option<f64>,
    crit: Option<f64>,
}

/// What a monitor reads from a plugin: its state, text and performance data.
#[derive(Debug)]
struct PluginOutput {
    state: String,
    text: String,
    perf: Vec<PerfDatum>,
}

impl PluginOutput {
    fn perf(&self, label: &str) -> Option<&PerfDatum> {
        self.perf.iter().find(|p| p.label == label)
    }
}

/// Reads `stdout` as Nagios reads a plugin's output, failing the test where
/// it breaks the guidelines: exactly one line, `BACKUP STATE - text`, then
/// optionally `|` and space-separated performance data.
fn nagios(stdout: &str) -> PluginOutput {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "not exactly one line: {stdout:?}");
    let (status, perfdata) = match lines[0].split_once('|') {
        Some((status, perf)) => (status.trim_end(), Some(perf.trim())),
        None => (lines[0], None),
    };
    let rest = status
        .strip_prefix("BACKUP ")
        .unwrap_or_else(|| panic!("no service name: {stdout:?}"));
    let (state, text) = rest
        .split_once(" - ")
        .unwrap_or_else(|| panic!("no ' - ' after the state: {stdout:?}"));
    assert!(
        ["OK", "WARNING", "CRITICAL", "UNKNOWN"].contains(&state),
        "{stdout:?}"
    );
    let mut perf = Vec::new();
    let mut chars = perfdata.unwrap_or("").chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut label = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        label.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => label.push(c),
                    None => panic!("unterminated quoted label in {stdout:?}"),
                }
            }
            assert_eq!(chars.next(), Some('='), "{stdout:?}");
        } else {
            for c in chars.by_ref() {
                match c {
                    '=' => break,
                    ' ' | '\'' => panic!("a label with a space must be quoted: {stdout:?}"),
                    c => label.push(c),
                }
            }
        }
        assert!(!label.is_empty(), "{stdout:?}");
        let mut datum = String::new();
        while let Some(&c) = chars.peek() {
            if c == ' ' {
                break;
            }
            datum.push(c);
            chars.next();
        }
        let fields: Vec<&str> = datum.split(';').collect();
        assert!(fields.len() <= 5, "{datum} in {stdout:?}");
        let number_end = fields[0]
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
            .unwrap_or(fields[0].len());
        let (value, uom) = fields[0].split_at(number_end);
        assert!(
            ["", "s", "ms", "us", "%", "B", "KB", "MB", "TB", "c"].contains(&uom),
            "unit {uom} in {stdout:?}"
        );
        let number = |f: Option<&&str>| -> Option<f64> {
            f.filter(|f| !f.is_empty())
                .map(|f| f.parse().unwrap_or_else(|_| panic!("{f} in {stdout:?}")))
        };
        perf.push(PerfDatum {
            label,
            value: value
                .parse()
                .unwrap_or_else(|_| panic!("value {value} in {stdout:?}")),
            uom: uom.to_owned(),
            warn: number(fields.get(1)),
            crit: number(fields.get(2)),
        });
        number(fields.get(3));
        number(fields.get(4));
    }
    PluginOutput {
        state: state.to_owned(),
        text: text.to_owned(),
        perf,
    }
}

/// `backup check ARGS` as a monitor runs it: the exit code and what it read.
fn plugin(setup: &Setup, config: Option<&std::path::Path>, args: &[&str]) -> (i32, PluginOutput) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let run = common::run_backup(config.unwrap_or(&setup.config), &all);
    assert!((0..=3).contains(&run.code), "{}", run.all());
    (run.code, nagios(&run.stdout))
}

#[test]
fn check_is_a_nagios_plugin_one_line_with_perfdata_and_exit_0_to_3() {
    let setup = Setup::new("", "schedule = \"0 3 * * *\"");
    // Twice the daily interval: the threshold for CRITICAL.
    let limit = 2.0 * 86_400.0;

    let (code, out) = plugin(&setup, None, &["--job", "nightly"]);
    assert_eq!((code, out.state.as_str()), (2, "CRITICAL"), "{out:?}");
    assert!(out.text.contains("no complete backup"), "{out:?}");

    assert!(setup.backup(&["run", "nightly"]).ok());
    let (code, out) = plugin(&setup, None, &["--job", "nightly"]);
    assert_eq!((code, out.state.as_str()), (0, "OK"), "{out:?}");
    let age = out.perf("age").unwrap();
    assert_eq!(
        (age.uom.as_str(), age.warn, age.crit),
        ("s", None, Some(limit))
    );
    assert!((0.0..600.0).contains(&age.value), "{out:?}");
    let size = out.perf("size").unwrap();
    assert_eq!(size.uom, "B");
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let stored: u64 = setup.manifest(&id)["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["stored_size"].as_u64().unwrap())
        .sum();
    assert_eq!(size.value, stored as f64, "{out:?}");
    let duration = out.perf("duration").unwrap();
    assert_eq!(duration.uom, "s");
    assert!(duration.value > 0.0, "{out:?}");

    // All jobs: every label names its job.
    let (code, out) = plugin(&setup, None, &[]);
    assert_eq!(code, 0, "{out:?}");
    let labels: Vec<&str> = out.perf.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["nightly age", "nightly size", "nightly duration"]);

    // The threshold given is the one shown.
    let (code, out) = plugin(&setup, None, &["--job", "nightly", "--max-age", "0s"]);
    assert_eq!((code, out.state.as_str()), (2, "CRITICAL"), "{out:?}");
    assert_eq!(out.perf("age").unwrap().crit, Some(0.0), "{out:?}");

    let good = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, good.replace("/app\"", "/missing\"")).unwrap();
    assert_eq!(setup.backup(&["run", "nightly"]).code, 4);
    std::fs::write(&setup.config, &good).unwrap();
    let (code, out) = plugin(&setup, None, &["--job", "nightly"]);
    assert_eq!((code, out.state.as_str()), (1, "WARNING"), "{out:?}");
    assert!(out.text.contains("last run failed"), "{out:?}");

    // A storage that cannot be read: no backup to count on, and why, in one line.
    let blocked = setup.work.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let unreadable = setup.work.path().join("unreadable-storage.toml");
    let backups = setup.backups.display().to_string();
    std::fs::write(
        &unreadable,
        good.replace(&backups, &blocked.join("backups").display().to_string()),
    )
    .unwrap();
    let (code, out) = plugin(&setup, Some(&unreadable), &["--job", "nightly"]);
    assert_eq!((code, out.state.as_str()), (2, "CRITICAL"), "{out:?}");
    assert!(out.text.contains("not a directory"), "{out:?}");

    // UNKNOWN: whatever keeps check from judging.
    let broken = setup.work.path().join("broken.toml");
    std::fs::write(&broken, "[jobs.nightly\ntype = ").unwrap();
    let missing = setup.work.path().join("missing.toml");
    for (config, args, says) in [
        (Some(&broken), &["--job", "nightly"][..], "broken.toml"),
        (Some(&missing), &[][..], "missing.toml"),
        (None, &["--job", "nope"][..], "no job named 'nope'"),
        (None, &["--bogus"][..], "'--bogus'"),
        (None, &["--max-age", "soon"][..], "'soon'"),
    ] {
        let (code, out) = plugin(&setup, config.map(|p| p.as_path()), args);
        assert_eq!(
            (code, out.state.as_str()),
            (3, "UNKNOWN"),
            "{args:?}: {out:?}"
        );
        assert!(out.text.contains(says), "{args:?}: {out:?}");
        assert!(out.perf.is_empty(), "{out:?}");
    }
}

/// A local HTTP receiver that answers 200 and keeps every request body.
fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(v) = serde_json::from_slice(&body)
            {
                kept.lock().unwrap().push(v);
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

#[test]
fn failures_and_recoveries_reach_a_webhook_and_slack() {
    let setup = Setup::new("", "");
    let (hook_url, hook_all) = receiver();
    let (slack_url, slack) = receiver();
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str(
        "\n[notifications.ops]\ntype = \"webhook\"\nurl_env = \"HOOK_URL\"\n\n\
         [notifications.chat]\ntype = \"slack\"\nurl_env = \"SLACK_URL\"\n",
    );
    let good = config.clone();
    std::fs::write(&setup.config, config.replace("/app\"", "/missing\"")).unwrap();
    let env = [
        ("HOOK_URL", hook_url.as_str()),
        ("SLACK_URL", slack_url.as_str()),
    ];
    assert_eq!(setup.backup_with(&["run", "nightly"], &env).code, 4);
    std::fs::write(&setup.config, &good).unwrap();
    assert!(setup.backup_with(&["run", "nightly"], &env).ok());
    // Success after success is not announced unless asked for.
    assert!(setup.backup_with(&["run", "nightly"], &env).ok());

    let hook = hook_all.lock().unwrap().clone();
    let events: Vec<&str> = hook.iter().map(|b| b["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["failure", "recovery"], "{hook:#?}");
    assert_eq!(hook[0]["job"], "nightly");
    assert!(
        hook[0]["error"].as_str().unwrap().contains("missing"),
        "{hook:#?}"
    );
    let slack = slack.lock().unwrap().clone();
    assert_eq!(slack.len(), 2, "{slack:#?}");
    assert!(
        slack[0]["text"]
            .as_str()
            .unwrap()
            .contains("job nightly failed"),
        "{slack:#?}"
    );
    assert!(
        slack[1]["text"].as_str().unwrap().contains("recovered"),
        "{slack:#?}"
    );

    // A command run by hand is announced like a scheduled run: a verify that
    // finds the newest backup damaged fails, leaves its record and is told.
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let dir = setup.backups.join("nightly").join(&id);
    let data = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("data.dump")
        })
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let verify = setup.backup_with(&["verify", "--job", "nightly"], &env);
    assert_eq!(verify.code, 6, "{}", verify.all());
    let hook = hook_all.lock().unwrap().clone();
    assert_eq!(hook.len(), 3, "{hook:#?}");
    assert_eq!(hook[2]["event"], "failure", "{hook:#?}");
    assert_eq!(hook[2]["kind"], "verify", "{hook:#?}");
    assert!(
        records(&setup)
            .iter()
            .any(|r| r["kind"] == "verify" && r["outcome"] == "failed")
    );
}

#[test]
fn a_dead_notifier_never_changes_the_outcome() {
    let setup = Setup::new("", "");
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str(
        "\n[notifications.ops]\ntype = \"webhook\"\nurl_env = \"HOOK_URL\"\non_success = true\n",
    );
    std::fs::write(&setup.config, config).unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/nobody-listens");
    let run = setup.backup_with(&["run", "nightly"], &[("HOOK_URL", &url)]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stderr
            .contains("not sent after 3 tries: cannot connect"),
        "{}",
        run.all()
    );
    assert!(
        !run.stderr.contains("nobody-listens"),
        "the URL is a secret: {}",
        run.all()
    );
}

#[test]
fn config_check_prints_the_next_five_runs_in_the_jobs_zone() {
    let setup = Setup::new("", "schedule = \"0 3 * * SAT#1\"");
    let run = setup.backup(&["config", "check"]);
    assert!(run.ok(), "{}", run.all());
    let runs: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.contains(" Sat 03:00:00 +09:00"))
        .collect();
    assert_eq!(runs.len(), 5, "{}", run.stdout);
}

#[test]
fn dumps_and_heavy_maintenance_never_share_a_database() {
    let setup = Setup::new("", "");
    let key = backup::lock::lock_key("backup database app");
    // Heavy maintenance (here: another session standing in for VACUUM FULL)
    // holds the database's lock: a backup waits for it, then runs.
    let heavy = setup.cluster.hold_advisory_lock("app", key);
    let child = setup.spawn_backup_with(&["run", "nightly"], &[]);
    wait_for("the backup to wait", Duration::from_secs(30), || {
        setup.cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'backup' AND query LIKE '%advisory_lock_shared%'",
        ) != "0"
    });
    // The query's text shows from its parse on, before it has run: past a
    // whole poll interval (500 ms), one try has surely met the lock.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        backup_dirs(&setup).is_empty(),
        "the dump started under heavy maintenance"
    );
    heavy.release();
    let run = common::Run::from(child.wait_with_output().unwrap());
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stderr
            .contains("waiting: heavy maintenance holds database app"),
        "{}",
        run.all()
    );

    // The reverse: while a dump runs, the database's lock cannot be taken alone.
    let table = setup.cluster.hold_lock("app", "app.users");
    let child = setup.spawn_backup_with(&["run", "nightly"], &[]);
    wait_for("the dump to start", Duration::from_secs(30), || {
        dumps(&setup) == 1
    });
    assert_eq!(
        setup
            .cluster
            .psql("app", &format!("SELECT pg_try_advisory_lock({key})")),
        "f"
    );
    table.release();
    assert!(common::Run::from(child.wait_with_output().unwrap()).ok());
}

#[test]
fn catch_up_runs_the_newest_missed_fire_time_once_after_downtime() {
    let setup = Setup::new("", "schedule = \"0 3 * * *\"\ncatch_up = \"latest\"");
    // The job last ran two days ago; the daemon was down since.
    let now = jiff::Timestamp::now();
    let then = now - jiff::SignedDuration::from_hours(48);
    let reports = setup.backups.join("nightly").join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    let old = serde_json::json!({
        "format": 1, "run_id": "20000101T000000000000Z-backup", "job": "nightly", "kind": "backup",
        "trigger": "schedule", "scheduled_for": then, "started_at": then, "finished_at": then,
        "outcome": "succeeded", "succeeded": true, "attempts": 1, "error": null, "details": {}
    });
    std::fs::write(
        reports.join("20000101T000000000000Z-backup.json"),
        old.to_string(),
    )
    .unwrap();
    // The newest fire time's run was interrupted by a shutdown: still missed.
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let today = now.to_zoned(tokyo.clone()).date();
    let mut newest_fire = today
        .at(3, 0, 0, 0)
        .to_zoned(tokyo.clone())
        .unwrap()
        .timestamp();
    if newest_fire > now {
        newest_fire = today
            .yesterday()
            .unwrap()
            .at(3, 0, 0, 0)
            .to_zoned(tokyo)
            .unwrap()
            .timestamp();
    }
    let interrupted = serde_json::json!({
        "format": 1, "run_id": "20000102T000000000000Z-backup", "job": "nightly", "kind": "backup",
        "trigger": "schedule", "scheduled_for": newest_fire, "started_at": newest_fire,
        "finished_at": newest_fire, "outcome": "interrupted", "succeeded": false, "attempts": 1,
        "error": "stopped by SIGTERM or SIGINT", "details": {}
    });
    std::fs::write(
        reports.join("20000102T000000000000Z-backup.json"),
        interrupted.to_string(),
    )
    .unwrap();

    let daemon = Daemon::start(&setup, "daemon", &[]);
    wait_for("the catch-up run", Duration::from_secs(60), || {
        records(&setup)
            .iter()
            .any(|r| r["trigger"] == "catch-up" && r["outcome"] == "succeeded")
    });
    assert_eq!(daemon.stop(Duration::from_secs(60)), 0);
    let caught: Vec<Value> = records(&setup)
        .into_iter()
        .filter(|r| r["trigger"] == "catch-up")
        .collect();
    assert_eq!(caught.len(), 1);
    // It ran for the newest 03:00 in Tokyo that had passed.
    let fire: jiff::Timestamp = caught[0]["scheduled_for"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let local = fire.to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap());
    assert_eq!(local.strftime("%H:%M:%S").to_string(), "03:00:00");
    assert_eq!(fire, newest_fire);
    assert!(
        caught[0]["run_id"]
            .as_str()
            .unwrap()
            .ends_with("-backup-catch-up")
    );
    assert_eq!(
        with_outcome(&records(&setup), "interrupted").len(),
        1,
        "the evidence stays"
    );

    // Started again: the newest fire time is recorded now, nothing to catch up.
    let daemon = Daemon::start(&setup, "again", &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.stop(Duration::from_secs(60)), 0);
    let caught = records(&setup)
        .into_iter()
        .filter(|r| r["trigger"] == "catch-up")
        .count();
    assert_eq!(caught, 1);
}

#[test]
fn json_logs_carry_the_job_and_the_run_id() {
    let setup = Setup::new("", "");
    let run = setup.backup(&["--log-format", "json", "run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let lines: Vec<Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let run_id = records(&setup)[0]["run_id"].as_str().unwrap().to_owned();
    let in_span = lines
        .iter()
        .filter(|l| l["span"]["job"] == "nightly" && l["span"]["run_id"] == run_id.as_str())
        .count();
    assert!(in_span >= 2, "{}", run.stderr);
}

#[test]
fn metrics_are_the_classic_text_promtool_accepts_and_openmetrics_when_asked() {
    let setup = Setup::new("", "schedule = \"0 0 1 1 *\"");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let daemon = Daemon::start(&setup, "daemon", &[]);

    // No Accept header, as curl and classic scrapers send: format 0.0.4.
    let classic = common::http_get_with(daemon.port, "/metrics", &[]).unwrap();
    assert_eq!(classic.status, 200, "{}", classic.body);
    assert_eq!(
        classic.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(!classic.body.contains("# EOF"), "{}", classic.body);
    assert!(
        classic.body.contains("# TYPE backup_runs_total counter\n"),
        "{}",
        classic.body
    );
    let (code, said) = common::run_promtool(&["check", "metrics"], &classic.body);
    assert_eq!((code, said.as_str()), (0, ""), "{}", classic.body);

    // What Prometheus sends: OpenMetrics first, with q-values.
    let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                  version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let open = common::http_get_with(daemon.port, "/metrics", &[("Accept", accept)]).unwrap();
    assert_eq!(open.status, 200, "{}", open.body);
    assert_eq!(
        open.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(open.body.ends_with("\n# EOF\n"), "{}", open.body);
    // promtool reads OpenMetrics where it backfills: every sample needs a
    // timestamp there, so each gets one; the rest is parsed as served.
    let stamped: String = open
        .body
        .lines()
        .map(|l| match l.starts_with('#') {
            true => format!("{l}\n"),
            false => format!("{l} 1700000000\n"),
        })
        .collect();
    let file = setup.work.path().join("metrics.om");
    std::fs::write(&file, &stamped).unwrap();
    let blocks = setup.work.path().join("blocks");
    let (code, said) = common::run_promtool(
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            file.to_str().unwrap(),
            blocks.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{said}\n{}", open.body);
    // The same series in both.
    let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    assert_eq!(samples(&open.body), samples(&classic.body));
    assert_eq!(daemon.stop(Duration::from_secs(60)), 0);
}

#[test]
fn the_alert_rules_pass_promtool() {
    let rules =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/deploy/prometheus-alerts.yml");
    let (code, said) = common::run_promtool(&["check", "rules", rules.to_str().unwrap()], "");
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn the_job_file_in_the_kubernetes_manifests_is_valid() {
    let manifest = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/deploy/kubernetes/deployment.yaml"),
    )
    .unwrap();
    let (_, rest) = manifest.split_once("app.toml: |\n").unwrap();
    let (embedded, _) = rest.split_once("\n---").unwrap();
    let text: String = embedded
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, text).unwrap();
    let run = common::run_backup_with(
        &path,
        &["config", "check"],
        &[
            ("APP_DB_PASSWORD", "x"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T/B/x",
            ),
        ],
    );
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("schedule:    0 3 * * *"),
        "{}",
        run.all()
    );
}

#[test]
fn an_interrupted_backup_run_stops_pg_dump_and_records_it() {
    let setup = Setup::new("", "");
    let lock = setup.cluster.hold_lock("app", "app.users");
    let child = setup.spawn_backup_with(&["run", "nightly"], &[]);
    wait_for(
        "the dump to wait on the lock",
        Duration::from_secs(30),
        || dumps(&setup) == 1,
    );
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let run = common::Run::from(child.wait_with_output().unwrap());
    assert_eq!(run.code, 130, "{}", run.all());
    // One error, saying what was stopped: the backup, not a maintenance statement.
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(
        errors,
        [
            "error: SIGTERM received: job nightly: the backup in progress has no manifest, \
          so it is never listed or restored"
        ],
        "{}",
        run.all()
    );
    assert!(!run.all().contains("maintenance"), "{}", run.all());
    assert!(
        run.stderr.contains("hint: run the job again"),
        "{}",
        run.all()
    );
    no_pg_dump_left(&setup);
    lock.release();
    let records = records(&setup);
    assert_eq!(
        with_outcome(&records, "interrupted").len(),
        1,
        "{records:?}"
    );
    assert!(backup_dirs(&setup).iter().all(|(_, complete)| !complete));
}

#[test]
fn a_run_whose_lock_session_dies_stops_and_is_retried_under_a_new_lock() {
    let setup = Setup::new("", "retries = 1\nretry_delay = \"100ms\"");
    let table = setup.cluster.hold_lock("app", "app.users");
    let child = setup.spawn_backup_with(&["run", "nightly"], &[]);
    let dump_waiting = || dumps_waiting(&setup) == 1;
    wait_for(
        "the dump to wait on the table",
        Duration::from_secs(30),
        dump_waiting,
    );
    // The server ends the session that holds the job's lock (a restart, an
    // administrator): the run must not go on without it.
    let lock_session = "SELECT pid FROM pg_stat_activity \
         WHERE application_name = 'backup' AND query LIKE '%advisory_lock_shared%'";
    let first = setup.cluster.psql("postgres", lock_session);
    assert!(!first.is_empty());
    setup
        .cluster
        .psql("postgres", &format!("SELECT pg_terminate_backend({first})"));
    // The retry takes the lock again on a new session, and dumps again.
    wait_for(
        "the retry under a new lock",
        Duration::from_secs(40),
        || {
            let now = setup.cluster.psql("postgres", lock_session);
            !now.is_empty() && now != first && dump_waiting()
        },
    );
    table.release();
    let run = common::Run::from(child.wait_with_output().unwrap());
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stderr
            .contains("lost the session holding the job's lock"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("taking the lock again"),
        "{}",
        run.all()
    );
    let records = records(&setup);
    assert_eq!(records[0]["attempts"], 2, "{records:?}");
    assert_eq!(backup_dirs(&setup).iter().filter(|(_, c)| *c).count(), 1);
}

#[test]
fn backup_run_refuses_while_the_job_runs_elsewhere() {
    let setup = Setup::new("", "");
    // Another process (a daemon replica) holds the job's lock.
    let other = setup
        .cluster
        .hold_advisory_lock("app", backup::lock::lock_key("backup job nightly"));
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains(
            "job nightly: another process (a daemon replica or `backup run`) is running this job"
        ),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("hint: wait for that run to finish"),
        "{}",
        run.all()
    );
    assert!(backup_dirs(&setup).is_empty());
    other.release();
    assert!(setup.backup(&["run", "nightly"]).ok());
}

#[test]
fn sigterm_lets_a_running_backup_finish_within_the_grace() {
    let (setup, lock, daemon) = a_daemon_with_a_blocked_backup("60s");
    shut_down_with_one_running(&daemon, libc::SIGTERM);
    // The run is let go on: once the table is free it completes.
    lock.release();
    assert_eq!(daemon.wait(Duration::from_secs(60)), 0);
    let records = records(&setup);
    let ran: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] != "skipped")
        .collect();
    assert_eq!(ran.len(), 1, "{records:#?}");
    assert_eq!(ran[0]["outcome"], "succeeded", "{records:#?}");
    assert_eq!(setup.list().len(), 1);
}

#[test]
fn a_second_signal_cancels_the_running_backup_at_once() {
    let (setup, lock, daemon) = a_daemon_with_a_blocked_backup("10m");
    shut_down_with_one_running(&daemon, libc::SIGINT);
    // Far inside the 10 minutes of grace.
    assert_eq!(daemon.stop(Duration::from_secs(30)), 0);
    no_pg_dump_left(&setup);
    lock.release();
    assert_eq!(with_outcome(&records(&setup), "interrupted").len(), 1);
    assert!(setup.list().is_empty());
}
