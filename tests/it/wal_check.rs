//! `backup wal check` against real clusters, and the WAL archive as
//! `status`, `check` and the daemon's `/metrics` show it.
//!
//! No base backup is made here: the archive is judged from its oldest
//! segment, as for a job whose first base backup has not run yet.

use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::archiving::{Archiving, JOB, Options};
use crate::common::{self, Run};

fn json(run: &Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}\n{}", run.all()))
}

fn finding<'a>(report: &'a Value, setting: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["setting"] == setting)
        .unwrap_or_else(|| panic!("no finding for {setting}: {report:#}"))
}

/// `check --job base --json`: the whole document and the one job's detail.
fn check(a: &Archiving) -> (Run, Value) {
    let run = a.backup(&["--json", "check", "--job", JOB]);
    let doc = json(&run);
    let job = doc["jobs"][0].clone();
    (run, job)
}

/// The object of `segment` in the `disk` storage.
fn object_of(a: &Archiving, segment: &str) -> std::path::PathBuf {
    let archived = a.archived();
    let name = archived
        .iter()
        .find(|f| f.contains(&format!("/{segment}-")))
        .unwrap_or_else(|| panic!("{segment} is not archived: {archived:?}"));
    a.backups.join(JOB).join("wal").join(name)
}

#[test]
fn wal_check_proves_the_chain_on_a_good_setup() {
    let a = Archiving::start();
    let run = a.backup(&["wal", "check", "--job", JOB]);
    assert!(run.ok(), "{}\n{}", run.all(), a.cluster.log());
    let proven = run
        .stdout
        .lines()
        .find(|l| l.starts_with("segment "))
        .unwrap_or_else(|| panic!("{}", run.all()));
    // `segment 000000010000000000000003 archived to disk in 0.4s`
    let segment = proven.split_whitespace().nth(1).unwrap();
    assert!(proven.contains(" archived to disk in "), "{proven}");
    object_of(&a, segment);
    for setting in [
        "wal_level",
        "archive_mode",
        "archive_command",
        "max_wal_senders",
    ] {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.trim_start().starts_with("ok") && l.contains(setting)),
            "{setting}: {}",
            run.all()
        );
    }

    // A second proof switches another segment, and says so in JSON.
    let run = a.backup(&["--json", "wal", "check", "--job", JOB, "--timeout", "30s"]);
    assert!(run.ok(), "{}", run.all());
    let report = json(&run);
    assert_eq!(report["ok"], true);
    let again = report["proof"]["segment"].as_str().unwrap();
    assert!(again > segment, "{again} after {segment}");
    assert_eq!(report["proof"]["arrived"][0]["storage"], "disk");
    assert_eq!(report["proof"]["missing"], serde_json::json!([]));
    object_of(&a, again);
    assert_eq!(finding(&report, "role")["verdict"], "ok");
}

#[test]
fn wal_check_names_archive_mode_and_archive_command_when_archiving_is_off() {
    let a = Archiving::with(Options {
        no_archiving: true,
        ..Options::default()
    });
    let before = a.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let run = a.backup(&["wal", "check", "--job", JOB]);
    // Config: a setting is wrong.
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("PROBLEM") && l.contains("archive_mode = off")),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("fix: set archive_mode = on"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("archive_command is empty"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("archive_mode = off"), "{}", run.all());
    assert!(run.stderr.contains("restart the server"), "{}", run.all());
    // Nothing was switched: the chain is not tried with archiving off.
    assert!(
        run.stdout.contains("chain not proven: not tried"),
        "{}",
        run.all()
    );
    assert_eq!(
        a.psql("SELECT pg_walfile_name(pg_current_wal_lsn())"),
        before
    );
    let report = json(&a.backup(&["--json", "wal", "check", "--job", JOB]));
    assert_eq!(report["ok"], false);
    assert_eq!(finding(&report, "archive_mode")["verdict"], "problem");
    assert_eq!(finding(&report, "wal_level")["verdict"], "ok");
    assert!(report["proof"].is_null(), "{report:#}");
}

#[test]
fn wal_check_names_the_job_archive_command_pushes_to_instead() {
    let a = Archiving::with(Options {
        push_job: Some("other"),
        ..Options::default()
    });
    a.append_to_config(
        "[jobs.other]\ntype = \"physical\"\ndatabase = \"app\"\nstorages = [\"disk\"]\n",
    );
    let run = a.backup(&["wal", "check", "--job", JOB]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stdout.contains("pushes to job other, not to job base"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("fix: change --job other to --job base"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("job other"), "{}", run.all());
    // The other job's own check passes: its archive gets the segment.
    let run = a.backup(&["wal", "check", "--job", "other"]);
    assert!(run.ok(), "{}", run.all());
}

#[test]
fn a_storage_the_segment_never_reaches_fails_the_proof_naming_it() {
    // A storage the server's user may not write to: every push fails there.
    let locked = tempfile::tempdir().unwrap();
    let extra = format!(
        "[storages.locked]\ntype = \"local\"\npath = \"{}\"\n",
        locked.path().display()
    );
    let a = Archiving::with(Options {
        extra_storages: &extra,
        storages: &["disk", "locked"],
        ..Options::default()
    });
    // As root, who may read both: the proof waits on the storages, not on
    // a listing it may not make.
    let run = common::run_backup(
        &a.config,
        &["wal", "check", "--job", JOB, "--timeout", "3s"],
    );
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(
        run.stderr
            .contains("did not reach storage locked within 3s (disk has it)"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("; not in locked after 3s"),
        "{}",
        run.all()
    );
    // PostgreSQL's archiver says it fails, and where to look.
    assert!(
        run.stderr.contains("hint: archive_command fails: "),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("see the server log"), "{}", run.all());
}

#[test]
fn status_shows_the_newest_segment_and_check_warns_once_it_is_older_than_wal_max_age() {
    let a = Archiving::with(Options {
        extra_job: "wal_max_age = \"1s\"",
        ..Options::default()
    });
    a.switch_and_wait();
    let newest = a.switch_and_wait();
    let run = a.backup(&["status", "--job", JOB]);
    assert!(run.ok(), "{}", run.all());
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("wal:"))
        .unwrap_or_else(|| panic!("{}", run.all()));
    assert!(
        line.contains(&format!("newest {newest} archived ")),
        "{line}"
    );
    assert!(line.contains("no gaps; push failures: 0"), "{line}");
    assert!(line.contains("no base backup"), "{line}");
    let status = json(&a.backup(&["--json", "status", "--job", JOB]));
    let wal = &status["jobs"][0]["wal"];
    assert_eq!(wal["newest"]["segment"], newest.as_str(), "{wal:#}");
    assert!(wal["newest"]["archived_at"].is_string(), "{wal:#}");
    assert_eq!(wal["max_age_seconds"], 1);

    std::thread::sleep(Duration::from_millis(2100));
    let (run, job) = check(&a);
    assert_eq!(job["wal_status"], "WARNING", "{}", run.all());
    let summary = job["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("newest archived WAL {newest} is ")),
        "{summary}"
    );
    assert!(summary.contains("more than 1s (wal_max_age)"), "{summary}");
    // No base backup yet: that alone is CRITICAL, as for a logical job.
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(summary.contains("no complete backup"), "{summary}");
    // The plugin line carries the WAL's age with its threshold.
    let run = a.backup(&["check", "--job", JOB]);
    let perf = run.stdout.split(" | ").nth(1).unwrap_or_default();
    assert!(
        perf.split_whitespace()
            .any(|p| p.starts_with("wal_age=") && p.ends_with("s;1;")),
        "{}",
        run.all()
    );
}

#[test]
fn a_segment_deleted_from_the_middle_of_the_archive_is_a_gap_and_critical() {
    let a = Archiving::start();
    let segments: Vec<String> = (0..4).map(|_| a.switch_and_wait()).collect();
    let (_, job) = check(&a);
    assert_ne!(job["wal_status"], "CRITICAL", "{job:#}");
    std::fs::remove_file(object_of(&a, &segments[1])).unwrap();

    let (run, job) = check(&a);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_eq!(job["wal_status"], "CRITICAL", "{job:#}");
    let summary = job["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("WAL gap: {0} .. {0} missing", segments[1])),
        "{summary}"
    );
    let gap = &job["state"]["wal"]["gaps"][0];
    assert_eq!(gap["after"]["segment"], segments[0].as_str(), "{gap:#}");
    assert_eq!(gap["resumes"]["segment"], segments[2].as_str(), "{gap:#}");

    let run = a.backup(&["status", "--job", JOB]);
    assert!(run.stdout.contains("; 1 GAP;"), "{}", run.all());
    assert!(
        run.stdout.contains(&format!(
            "wal gap:        {0} .. {0} (1 segment missing): recovery stops after {1}",
            segments[1], segments[0]
        )),
        "{}",
        run.all()
    );
}

#[test]
fn a_segment_wal_push_dropped_is_critical() {
    let a = Archiving::start();
    let newest = a.switch_and_wait();
    let (_, job) = check(&a);
    assert_ne!(job["wal_status"], "CRITICAL", "{job:#}");
    // What `wal push` leaves when wal_queue_max made it skip a segment: one
    // the archive will never hold.
    let dropped = "0000000100000000000000F0";
    let dir = a.backups.join(JOB).join("wal").join("dropped");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{dropped}.json")),
        serde_json::json!({
            "file": dropped,
            "dropped_at": "2026-12-06T01:00:00Z",
            "backlog_bytes": 9u64 << 30,
            "limit_bytes": 8u64 << 30,
        })
        .to_string(),
    )
    .unwrap();
    common::chown_tree_to_postgres(&a.backups);

    let (run, job) = check(&a);
    assert_eq!(run.code, 2, "{}", run.all());
    assert_eq!(job["wal_status"], "CRITICAL", "{job:#}");
    let summary = job["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("WAL segment {dropped} dropped by wal push")),
        "{summary}"
    );
    assert_eq!(job["state"]["wal"]["dropped"][0]["file"], dropped);
    // The drop marker is not taken for an archived segment.
    assert_eq!(job["state"]["wal"]["newest"]["segment"], newest.as_str());

    let run = a.backup(&["status", "--job", JOB]);
    assert!(run.stdout.contains("1 DROPPED segment"), "{}", run.all());
    assert!(
        run.stdout.contains(&format!(
            "wal dropped:    {dropped} at 2026-12-06 10:00:00 JST"
        )),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("9.0 GiB"), "{}", run.all());
}

/// The daemon, killed when the test ends however it ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_wal_metrics_are_served_and_pass_promtool() {
    // The daemon needs a schedule; this one does not fire during the test.
    let a = Archiving::with(Options {
        extra_job: "schedule = \"0 0 1 1 *\"",
        ..Options::default()
    });
    a.switch_and_wait();
    // What `wal push` counts in its spool when pushes fail.
    let spool = a.spool.join(JOB);
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("push-failures.total"), "2\n").unwrap();

    let log = a.work.join("daemon.log");
    let (child, port) = common::start_daemon(&log, |listen| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backup"));
        command
            .arg("--config")
            .arg(&a.config)
            .args(["daemon", "--listen", listen])
            .env_remove("BACKUP_CONFIG")
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    });
    let _daemon = Daemon(child);
    let (status, text) = common::http_get(port, "/metrics").unwrap();
    assert_eq!(status, 200, "{text}");
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .and_then(|v| v.trim().parse().ok())
    };
    let archived = value(r#"backup_wal_last_archived_timestamp_seconds{job="base"}"#)
        .unwrap_or_else(|| panic!("{text}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - 300.0..now + 5.0).contains(&archived),
        "{archived} vs {now}"
    );
    assert_eq!(
        value(r#"backup_wal_push_failures_total{job="base"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(value(r#"backup_wal_gaps{job="base"}"#), Some(0.0), "{text}");
    let (code, said) = common::run_promtool(&["check", "metrics"], &text);
    assert_eq!((code, said.as_str()), (0, ""), "{text}");
}
