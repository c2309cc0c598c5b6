//! Point-in-time recovery of a physical job, end to end: `restore --at` to
//! the second (the runbook's rollback, on local storage and on S3 with
//! encryption), the moments refused before anything is written, a restore
//! across a timeline switch, drills that pass and fail leaving nothing
//! behind, `--force` over an existing directory, and the scheduled
//! restore test of a physical job.
//!
//! Every cluster here archives into job `base` through the built binary
//! (tests/it/common/archiving.rs); every CLI call is bounded in time.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::archiving::{self, Archiving, JOB, Options, Restored};
use crate::common::{self, Run, servers};

/// A refusal, a dry run, a listing.
pub(crate) const QUICK: Duration = Duration::from_secs(60);
/// A base backup, or a restore with its replay and proof, or a drill.
pub(crate) const LONG: Duration = Duration::from_secs(180);

/// Rows committed before the noted moment.
pub(crate) const KEPT: i64 = 500;

/// A moment between two commits, to the second, as an operator writes it.
pub(crate) struct Moment {
    /// "2026-12-06 14:30:05 JST"
    pub(crate) jst: String,
    pub(crate) epoch: i64,
}

impl Moment {
    /// The moment as the server reads it, for comparisons made there.
    fn sql(&self) -> String {
        format!("to_timestamp({})", self.epoch)
    }
}

/// The next whole second on the server's clock; returns once that clock
/// has passed it. Everything committed before the call committed before
/// the moment, everything committed after it after: a commit's timestamp
/// is taken at commit, and the server's clock is the one recovery compares.
pub(crate) fn note_time(psql: impl Fn(&str) -> String) -> Moment {
    let row = psql(
        "SELECT extract(epoch FROM m)::bigint || '|' \
         || to_char(m AT TIME ZONE 'Asia/Tokyo', 'YYYY-MM-DD HH24:MI:SS') \
         FROM (SELECT date_trunc('second', clock_timestamp()) + interval '1 second' AS m) s",
    );
    let (epoch, local) = row.split_once('|').expect("epoch|local time");
    psql(&format!(
        "SELECT pg_sleep_until(to_timestamp({epoch}) + interval '100 milliseconds')"
    ));
    Moment {
        jst: format!("{local} JST"),
        epoch: epoch.parse().expect("an epoch"),
    }
}

/// A moment `shift` (an SQL interval) from the server's now, as an
/// operator writes it.
fn moment_from_now(a: &Archiving, shift: &str) -> String {
    a.psql(&format!(
        "SELECT to_char((now() + interval '{shift}') AT TIME ZONE 'Asia/Tokyo', \
         'YYYY-MM-DD HH24:MI:SS') || ' JST'"
    ))
}

/// `backup --json list --job base`: the job's backups, newest first.
pub(crate) fn list(a: &Archiving, env: &[(&str, &str)]) -> Vec<Value> {
    let run = a.run_within(QUICK, &["--json", "list", "--job", JOB], env);
    assert!(run.ok(), "{}", run.all());
    serde_json::from_str(&run.stdout).expect("list --json prints JSON")
}

/// A base backup of the cluster now; returns the backup as `list` shows it.
pub(crate) fn base_backup(a: &Archiving, env: &[(&str, &str)]) -> Value {
    let run = a.run_within(LONG, &["run", JOB], env);
    assert!(run.ok(), "{}\n{}", run.all(), a.cluster.log());
    list(a, env).swap_remove(0)
}

/// Rows `from..=to` of `t`, one commit.
pub(crate) fn insert(psql: impl Fn(&str) -> String, from: i64, to: i64, note: &str) {
    psql(&format!(
        "INSERT INTO t SELECT g, '{note}' FROM generate_series({from}, {to}) g"
    ));
}

/// The runbook's rollback, up to the restore: a base backup, rows
/// 1..=KEPT in five commits, TIME, the bad `DELETE`, more rows, and the
/// WAL of all of it archived.
pub(crate) struct Rollback {
    pub(crate) backup: Value,
    pub(crate) time: Moment,
}

fn rollback(a: &Archiving, env: &[(&str, &str)]) -> Rollback {
    let backup = base_backup(a, env);
    a.psql("CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)");
    for chunk in 0..5 {
        insert(
            |s| a.psql(s),
            chunk * KEPT / 5 + 1,
            (chunk + 1) * KEPT / 5,
            "before",
        );
    }
    let time = note_time(|s| a.psql(s));
    a.psql("DELETE FROM t WHERE id % 2 = 0");
    insert(|s| a.psql(s), KEPT + 1, KEPT + 100, "after");
    a.switch_and_wait();
    Rollback { backup, time }
}

/// `[--json] restore --job base --at TIME --target-dir DIR --yes MORE`.
pub(crate) fn restore_as(
    a: &Archiving,
    json: bool,
    at: &str,
    dir: &Path,
    more: &[&str],
    env: &[(&str, &str)],
) -> Run {
    let mut args = if json { vec!["--json"] } else { vec![] };
    args.extend_from_slice(&[
        "restore",
        "--job",
        JOB,
        "--at",
        at,
        "--target-dir",
        dir.to_str().unwrap(),
        "--yes",
    ]);
    args.extend_from_slice(more);
    a.run_within(LONG, &args, env)
}

fn restore(a: &Archiving, at: &str, dir: &Path, more: &[&str], env: &[(&str, &str)]) -> Run {
    restore_as(a, false, at, dir, more, env)
}

/// [`restore_as`] with `--start --port P`, the server guarded: stopped
/// when the guard goes, whatever the test found.
pub(crate) fn restore_started(
    a: &Archiving,
    at: &str,
    dir: &Path,
    json: bool,
    env: &[(&str, &str)],
) -> (Run, Restored) {
    restore_started_with(a, at, dir, json, &[], env)
}

/// [`restore_started`] with more arguments (`--archive`).
fn restore_started_with(
    a: &Archiving,
    at: &str,
    dir: &Path,
    json: bool,
    more: &[&str],
    env: &[(&str, &str)],
) -> (Run, Restored) {
    let port = archiving::free_port();
    let server = a.restored(dir, port);
    let port = port.to_string();
    let mut args = vec!["--start", "--port", &port];
    args.extend_from_slice(more);
    let run = restore_as(a, json, at, dir, &args, env);
    (run, server)
}

/// All a command said, on either stream: where a line goes is not the point.
pub(crate) fn said(run: &Run) -> String {
    format!("{}\n{}", run.stdout, run.stderr)
}

/// The timeline the server writes on now.
fn timeline(server: &Restored) -> String {
    server.psql(
        "postgres",
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    )
}

/// The restored cluster is the one of the noted moment: every row committed
/// before it, not the delete nor any row after it, promoted, and its last
/// replayed transaction at or before the moment.
pub(crate) fn assert_rolled_back(a: &Archiving, server: &Restored, s: &Rollback) {
    assert_eq!(
        server.psql(
            "postgres",
            "SELECT count(*) || '|' || min(id) || '|' || max(id) || '|' \
             || count(*) FILTER (WHERE note <> 'before') FROM t"
        ),
        format!("{KEPT}|1|{KEPT}|0"),
        "rows of t after the rollback to {}\n{}",
        s.time.jst,
        a.cluster.log()
    );
    assert_eq!(server.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    // Promoted: writing on a timeline of its own. (The last replayed
    // transaction is in the proof: the server was restarted since.)
    assert_ne!(timeline(server), "00000001");
}

/// The data directory a restore wrote: private to the server's user.
pub(crate) fn assert_data_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", dir.display());
    assert!(dir.join("PG_VERSION").is_file(), "{}", dir.display());
}

/// The entries of `dir`, sorted; nothing when it does not exist.
pub(crate) fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A refusal before anything was written: non-zero, saying `says`, and
/// `parent` (where the target was to be) as it was.
pub(crate) fn assert_refused(run: &Run, says: &[&str], parent: &Path, before: &[String]) {
    assert_ne!(run.code, 0, "{}", run.all());
    for said in says {
        assert!(run.stderr.contains(said), "{said}: {}", run.all());
    }
    assert_eq!(entries(parent), before, "written: {}", run.all());
}

#[test]
fn a_rollback_on_local_storage_brings_back_every_row_before_time_and_nothing_after() {
    let a = Archiving::start();
    let s = rollback(&a, &[]);
    let dir = a.own_dir("restores").join("rolled-back");
    let (run, server) = restore_started(&a, &s.time.jst, &dir, false, &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(said(&run).contains("recovered to"), "{}", run.all());
    assert!(
        said(&run).contains(s.backup["id"].as_str().unwrap()),
        "names the base backup: {}",
        run.all()
    );
    assert_data_dir(&dir);
    assert_rolled_back(&a, &server, &s);
    server.stop();
    assert_eq!(archiving::processes_on(&dir), Vec::<String>::new());
}

/// The same rollback on every major 13 to 18, then a drill of the job.
/// 15 is Debian's; 18 PyPI's complete install; 13, 14, 16 and 17 npm's
/// server-only builds, whose backups and proofs take the nearest client
/// programs found through `pg_bin_dirs`, and whose plans do without
/// `pg_waldump` (a note says so).
fn a_rollback_on(major: u32) {
    let a = Archiving::with(Options {
        major: Some(major),
        extra_db: &common::every_pg_bin_dir(),
        ..Default::default()
    });
    let s = rollback(&a, &[]);
    let id = s.backup["id"].as_str().unwrap();
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(a.backups.join(JOB).join(id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert!(
        manifest["server_version"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{major}.")),
        "{manifest:#}"
    );
    let dir = a.own_dir("restores").join("rolled-back");
    let (run, server) = restore_started(&a, &s.time.jst, &dir, false, &[]);
    assert!(run.ok(), "PostgreSQL {major}: {}", run.all());
    assert!(said(&run).contains("recovered to"), "{}", run.all());
    assert!(
        said(&run).contains(&format!("PostgreSQL {major}.")),
        "{}",
        run.all()
    );
    assert_data_dir(&dir);
    assert_eq!(
        std::fs::read_to_string(dir.join("PG_VERSION"))
            .unwrap()
            .trim(),
        major.to_string()
    );
    assert_rolled_back(&a, &server, &s);
    server.stop();
    assert_eq!(archiving::processes_on(&dir), Vec::<String>::new());

    // The rehearsal of the same: a throwaway server of the same major.
    let report = a.own_dir("out").join("drill.md");
    let run = a.run_within(
        LONG,
        &["drill", "--job", JOB, "--report", report.to_str().unwrap()],
        &[],
    );
    assert!(run.ok(), "PostgreSQL {major}: drill: {}", run.all());
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("| Result | **PASSED** |"), "{text}");
    assert!(text.contains(&format!("PostgreSQL {major}.")), "{text}");
    assert_nothing_left(&a);
}

macro_rules! rollback_on_every_major {
    ($($name:ident: $major:literal,)*) => {
        $(
            #[test]
            fn $name() {
                a_rollback_on($major);
            }
        )*

        #[test]
        fn every_major_has_its_rollback() {
            assert_eq!([$($major),*], common::MAJORS);
        }
    };
}

rollback_on_every_major! {
    a_rollback_and_a_drill_on_postgresql_13_bring_back_every_row_before_time_and_nothing_after: 13,
    a_rollback_and_a_drill_on_postgresql_14_bring_back_every_row_before_time_and_nothing_after: 14,
    a_rollback_and_a_drill_on_postgresql_15_bring_back_every_row_before_time_and_nothing_after: 15,
    a_rollback_and_a_drill_on_postgresql_16_bring_back_every_row_before_time_and_nothing_after: 16,
    a_rollback_and_a_drill_on_postgresql_17_bring_back_every_row_before_time_and_nothing_after: 17,
    a_rollback_and_a_drill_on_postgresql_18_bring_back_every_row_before_time_and_nothing_after: 18,
}

#[test]
fn a_rollback_from_encrypted_s3_brings_back_every_row_before_time_and_nothing_after() {
    use age::secrecy::ExposeSecret;
    let bucket = servers::block_on(servers::create_bucket("pitr"));
    let key = age::x25519::Identity::generate();
    let secret = key.to_string().expose_secret().to_owned();
    let s3 = servers::s3_section("s3", &servers::s3_endpoint(), &bucket, "");
    let job = format!(
        "encryption = {{ recipients = [\"{}\"] }}\nwal_wait = \"30s\"",
        key.to_public()
    );
    let storage_env = servers::s3_env();
    let a = Archiving::with(Options {
        extra_storages: &s3,
        storages: &["s3"],
        extra_job: &job,
        env: &storage_env,
        ..Options::default()
    });
    // The restore, and the `wal fetch` its server runs, find the key and
    // the storage's credentials where an operator puts them.
    let mut env = storage_env.to_vec();
    env.push(("BACKUP_AGE_IDENTITY", secret.as_str()));
    let s = rollback(&a, &env);
    let id = s.backup["id"].as_str().unwrap().to_owned();
    let keys = servers::block_on(servers::bucket_keys(&bucket));
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("prod/db/{JOB}/wal/")) && k.ends_with(".zst.age")),
        "{keys:?}"
    );
    assert_eq!(a.stored_files(), Vec::<String>::new(), "all of it in S3");

    let dir = a.own_dir("restores").join("rolled-back");
    let (run, server) = restore_started(&a, &s.time.jst, &dir, true, &env);
    assert!(run.ok(), "{}", run.all());
    let v: Value = serde_json::from_str(&run.stdout).expect("restore --json prints JSON");
    assert_eq!(v["job"], JOB, "{v:#}");
    assert_eq!(v["backup"], id.as_str(), "{v:#}");
    assert_eq!(v["target_dir"], dir.to_str().unwrap(), "{v:#}");
    assert_eq!(v["started"], true, "{v:#}");
    assert_eq!(v["port"], server.port, "{v:#}");
    let recovered_to = v["recovered_to"].as_str().expect("recovered_to");
    assert_eq!(
        a.psql(&format!(
            "SELECT '{recovered_to}'::timestamptz <= {}",
            s.time.sql()
        )),
        "t",
        "{v:#}"
    );
    let checks = v["proof"]["checks"].as_array().expect("proof.checks");
    assert!(!checks.is_empty(), "{v:#}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{v:#}");
    let databases = v["proof"]["databases"].as_array().expect("proof.databases");
    assert!(
        databases.iter().any(|d| d["name"] == "postgres"),
        "every database read: {v:#}"
    );
    assert_data_dir(&dir);
    assert_rolled_back(&a, &server, &s);
}

#[test]
fn a_dry_run_prints_the_plan_and_writes_nothing() {
    let a = Archiving::start();
    let s = rollback(&a, &[]);
    let id = s.backup["id"].as_str().unwrap();
    let physical = &s.backup["physical"];
    let (wal_start, wal_stop) = (
        physical["wal_start"].as_str().unwrap(),
        physical["wal_stop"].as_str().unwrap(),
    );
    let parent = a.own_dir("restores");
    let dir = parent.join("planned");

    let run = restore(&a, &s.time.jst, &dir, &["--dry-run"], &[]);
    assert!(run.ok(), "{}", run.all());
    for expected in [id, wal_start, "window", dir.to_str().unwrap()] {
        assert!(said(&run).contains(expected), "{expected}: {}", run.all());
    }
    assert_eq!(entries(&parent), Vec::<String>::new(), "{}", run.all());

    let run = restore_as(&a, true, &s.time.jst, &dir, &["--dry-run"], &[]);
    assert!(run.ok(), "{}", run.all());
    let v: Value = serde_json::from_str(&run.stdout).expect("--json prints JSON");
    assert_eq!(v["dry_run"], true, "{v:#}");
    assert_eq!(v["job"], JOB, "{v:#}");
    assert_eq!(v["backup"], id, "{v:#}");
    assert_eq!(v["timeline"], 1, "{v:#}");
    assert_eq!(v["target_dir"], dir.to_str().unwrap(), "{v:#}");
    assert_eq!(v["wal"]["first"], wal_start, "{v:#}");
    let last = v["wal"]["last"].as_str().expect("wal.last");
    assert!(last >= wal_stop, "replays past the backup's end: {v:#}");
    assert!(v["wal"]["segments"].as_u64().unwrap_or(0) >= 1, "{v:#}");
    assert!(v["wal"]["bytes"].as_u64().unwrap_or(0) > 0, "{v:#}");
    assert!(v["space_needed"].as_u64().unwrap_or(0) > 0, "{v:#}");
    let (from, to) = (
        v["window"]["from"].as_str().expect("window.from"),
        v["window"]["to"].as_str().expect("window.to"),
    );
    assert_eq!(
        a.psql(&format!(
            "SELECT '{from}'::timestamptz < {t} AND {t} < '{to}'::timestamptz",
            t = s.time.sql()
        )),
        "t",
        "the moment lies inside the window: {v:#}"
    );
    assert_eq!(entries(&parent), Vec::<String>::new(), "{}", run.all());
}

#[test]
fn moments_before_and_after_the_window_are_refused_before_anything_is_written() {
    let a = Archiving::start();
    // Before the first base backup: the cluster was made a moment ago.
    let early = moment_from_now(&a, "-1 hour");
    let s = rollback(&a, &[]);
    let late = moment_from_now(&a, "1 hour");
    let parent = a.own_dir("restores");
    let dir = parent.join("refused");

    let run = restore(&a, &early, &dir, &[], &[]);
    assert_refused(&run, &["before the recovery window"], &parent, &[]);
    let run = restore(&a, &late, &dir, &["--start"], &[]);
    assert_refused(
        &run,
        &["after the recovery window", "backup wal check", "--latest"],
        &parent,
        &[],
    );
    // A non-empty directory without --force, at a good moment.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mine"), "kept").unwrap();
    crate::common::chown_tree_to_postgres(&parent);
    let run = restore(&a, &s.time.jst, &dir, &[], &[]);
    assert_refused(&run, &["is not empty"], &parent, &["refused".to_owned()]);
    assert_eq!(entries(&dir), ["mine"]);
}

#[test]
fn a_moment_past_a_gap_in_the_archive_is_refused_naming_the_gap() {
    let a = Archiving::start();
    let backup = base_backup(&a, &[]);
    let wal_stop = backup["physical"]["wal_stop"].as_str().unwrap().to_owned();
    a.psql("CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)");
    insert(|s| a.psql(s), 1, 100, "before");
    let gap = a.switch_and_wait();
    assert!(gap > wal_stop, "{gap} follows the backup's {wal_stop}");
    insert(|s| a.psql(s), 101, 200, "before");
    let time = note_time(|s| a.psql(s));
    insert(|s| a.psql(s), 201, 300, "after");
    let last = a.switch_and_wait();
    assert!(last > gap);
    std::fs::remove_file(a.wal_object(&gap)).unwrap();

    let parent = a.own_dir("restores");
    let run = restore(&a, &time.jst, &parent.join("refused"), &["--start"], &[]);
    assert_refused(&run, &["gap", &gap], &parent, &[]);
}

#[test]
fn a_restore_across_a_timeline_switch_follows_the_history_file() {
    let a = Archiving::start();
    let s = rollback(&a, &[]);
    let restores = a.own_dir("restores");

    // Restored to TIME1, the server promotes onto timeline 2 and archives
    // it into the same job.
    // It becomes the primary: --archive, so its timeline reaches the archive.
    let (run, first) = restore_started_with(
        &a,
        &s.time.jst,
        &restores.join("first"),
        false,
        &["--archive"],
        &[],
    );
    assert!(run.ok(), "{}", run.all());
    assert_rolled_back(&a, &first, &s);
    assert_eq!(timeline(&first), "00000002");
    insert(|q| first.psql("postgres", q), 2001, 2100, "timeline 2");
    let time2 = note_time(|q| first.psql("postgres", q));
    insert(|q| first.psql("postgres", q), 3001, 3100, "after time 2");
    let segment = first.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(segment.starts_with("00000002"), "{segment}");
    crate::common::wait_for(
        &format!("{segment} archived by the restored server"),
        Duration::from_secs(60),
        || {
            let last = first.psql(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            );
            last.len() >= 24 && last[..24] >= *segment
        },
    );
    assert!(
        a.archived_segments(2).contains(&segment),
        "{:?}",
        a.archived()
    );
    assert!(
        a.archived().iter().any(|f| f.contains("00000002.history")),
        "{:?}",
        a.archived()
    );
    first.stop();
    drop(first);

    // TIME2 lies on timeline 2: replay follows the history file there.
    let (run, second) = restore_started(&a, &time2.jst, &restores.join("second"), false, &[]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        second.psql(
            "postgres",
            "SELECT count(*) || '|' || count(*) FILTER (WHERE note = 'timeline 2') || '|' \
             || count(*) FILTER (WHERE note NOT IN ('before', 'timeline 2')) FROM t"
        ),
        format!("{}|100|0", KEPT + 100),
        "rows of t on timeline 2 at {}",
        time2.jst
    );
    assert_eq!(timeline(&second), "00000003");
}

/// A restore-test job of the physical job, with a check that holds at every
/// moment of the window.
const RESTORE_TEST: &str = r#"
[jobs.base-restore-test]
type = "restore-test"
backup_job = "base"
checks = [
  { name = "rows of t", sql = "SELECT count(*) FROM t", min = 100 },
]
"#;

/// A cluster with the restore-test job, `t` written before and after a
/// base backup, and its WAL archived; returns the backup and the segment
/// holding the writes after it.
fn tested_job() -> (Archiving, Value, String) {
    let a = Archiving::start();
    a.psql("CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)");
    insert(|s| a.psql(s), 1, 100, "before the backup");
    let backup = base_backup(&a, &[]);
    insert(|s| a.psql(s), 101, 5000, "after the backup");
    let segment = a.switch_and_wait();
    assert!(
        segment.as_str() > backup["physical"]["wal_stop"].as_str().unwrap(),
        "{segment}"
    );
    a.append_to_config(RESTORE_TEST);
    (a, backup, segment)
}

/// The newest run record of `kind` filed under the physical job.
fn newest_record(a: &Archiving, kind: &str) -> Value {
    let dir = a.backups.join(JOB).join("reports");
    let mut names: Vec<String> = entries(&dir)
        .into_iter()
        .filter(|n| n.ends_with(&format!("-{kind}.json")))
        .collect();
    names.sort();
    let name = names
        .last()
        .unwrap_or_else(|| panic!("no {kind} record in {}", dir.display()));
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

/// Nothing of a drill or test is left: no temp files, no server, and the
/// throwaway cluster archived nothing into the job (no timeline 2).
pub(crate) fn assert_nothing_left(a: &Archiving) {
    assert_eq!(a.temp_files(), Vec::<String>::new(), "temp files left");
    assert_eq!(
        archiving::processes_on(&a.work.join("tmp")),
        Vec::<String>::new(),
        "a server still runs"
    );
    assert_eq!(a.archived_segments(2), Vec::<String>::new());
    assert!(
        !a.archived().iter().any(|f| f.contains("00000002.history")),
        "{:?}",
        a.archived()
    );
}

#[test]
fn a_drill_of_a_physical_job_passes_reports_rto_and_rpo_and_leaves_nothing() {
    let (a, backup, _) = tested_job();
    let id = backup["id"].as_str().unwrap();
    let report = a.own_dir("out").join("drill.md");
    let run = a.run_within(
        LONG,
        &["drill", "--job", JOB, "--report", report.to_str().unwrap()],
        &[],
    );
    assert!(run.ok(), "{}", run.all());
    let text = std::fs::read_to_string(&report).unwrap();
    for expected in [
        "# Disaster-recovery drill: job base",
        "| Result | **PASSED** |",
        id,
        "| RTO | ",
        "| RPO | ",
        "replay",
        "rows of t",
    ] {
        assert!(text.contains(expected), "{expected}:\n{text}");
    }
    assert_nothing_left(&a);
    let record = newest_record(&a, "drill");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert!(record["details"]["rto_seconds"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(
        record["details"]["rpo_seconds"].as_f64().is_some(),
        "{record:#}"
    );
}

#[test]
fn a_drill_over_a_corrupted_wal_segment_fails_naming_it_and_leaves_nothing() {
    let (a, _, segment) = tested_job();
    archiving::corrupt_middle(&a.wal_object(&segment), 64);
    let report = a.own_dir("out").join("drill.md");
    let run = a.run_within(
        LONG,
        &["drill", "--job", JOB, "--report", report.to_str().unwrap()],
        &[],
    );
    assert_ne!(run.code, 0, "{}", run.all());
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}): {}", run.all()));
    assert!(text.contains("**FAILED**"), "{text}");
    assert!(text.contains(&segment), "names {segment}:\n{text}");
    assert_nothing_left(&a);
    assert_eq!(newest_record(&a, "drill")["outcome"], "failed");
}

#[test]
fn force_keeps_the_old_directory_until_the_new_one_is_complete() {
    let a = Archiving::start();
    let s = rollback(&a, &[]);
    let id = s.backup["id"].as_str().unwrap();
    let parent = a.own_dir("restores");
    let dir = parent.join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("old-marker"), "the old content").unwrap();
    crate::common::chown_tree_to_postgres(&parent);
    let unchanged = |run: &Run| {
        assert_eq!(entries(&parent), ["data"], "{}", run.all());
        assert_eq!(entries(&dir), ["old-marker"], "{}", run.all());
        assert_eq!(
            std::fs::read_to_string(dir.join("old-marker")).unwrap(),
            "the old content"
        );
    };

    // A base backup that fails on the way: the old content stays, and
    // nothing of the new one is left beside it.
    let base = a.backups.join(JOB).join(id).join("base.tar.zst");
    let original = archiving::corrupt_middle(&base, 4096);
    let run = restore(&a, &s.time.jst, &dir, &["--force"], &[]);
    assert_ne!(run.code, 0, "{}", run.all());
    unchanged(&run);

    archiving::restore_bytes(&base, &original);
    let run = restore(&a, &s.time.jst, &dir, &["--force"], &[]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(entries(&parent), ["data"], "{}", run.all());
    assert!(!dir.join("old-marker").exists());
    assert_data_dir(&dir);
    assert!(dir.join("recovery.signal").is_file());
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    for expected in [
        "restore_command",
        "wal fetch",
        "recovery_target_time",
        "recovery_target_action = 'promote'",
    ] {
        assert!(auto.contains(expected), "{expected}:\n{auto}");
    }
    // Not started: it says how.
    assert!(said(&run).contains("pg_ctl"), "{}", run.all());
    assert_eq!(archiving::processes_on(&dir), Vec::<String>::new());
}

// Where `status --json` and `list --json` show the moment a physical
// restore test recovered to.
const STATUS_TESTED_MOMENT: &str = "tested_moment";
const LIST_TESTED_MOMENT: &str = "restore_tested_moment";

#[test]
fn a_restore_test_of_a_physical_job_is_filed_under_it_and_shown_in_status_and_list() {
    let (a, backup, _) = tested_job();
    let id = backup["id"].as_str().unwrap();
    let run = a.run_within(LONG, &["run", "base-restore-test"], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(said(&run).contains("passed"), "{}", run.all());
    assert_nothing_left(&a);

    let record = newest_record(&a, "restore-test");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert_eq!(record["job"], "base-restore-test", "{record:#}");
    assert_eq!(record["details"]["backup_id"], id, "{record:#}");
    let checks = record["details"]["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["check"] == "rows of t" && c["passed"] == true),
        "{record:#}"
    );

    let run = a.run_within(QUICK, &["--json", "status", "--job", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    let status: Value = serde_json::from_str(&run.stdout).expect("status --json");
    let tested = &status["jobs"][0]["last_restore_test"];
    assert_eq!(tested["outcome"], "succeeded", "{status:#}");
    assert_eq!(tested["backup_id"], id, "{status:#}");
    assert!(tested[STATUS_TESTED_MOMENT].is_string(), "{status:#}");
    let run = a.run_within(QUICK, &["status", "--job", JOB], &[]);
    assert!(run.stdout.contains("restore tested: "), "{}", run.all());
    assert!(
        !run.stdout.contains("restore tested: never"),
        "{}",
        run.all()
    );

    let rows = list(&a, &[]);
    assert!(rows[0]["restore_tested_at"].is_string(), "{rows:#?}");
    assert!(rows[0][LIST_TESTED_MOMENT].is_string(), "{rows:#?}");
}

/// A base backup starts only with its own major's server: a 17 backup on a
/// host with only 18 (and Debian's 15) is refused by the plan, which names
/// what to install, before anything is written.
#[test]
fn a_base_backup_of_17_is_refused_by_a_host_without_a_17_server() {
    let a = Archiving::with(Options {
        major: Some(17),
        extra_db: &common::every_pg_bin_dir(),
        ..Default::default()
    });
    base_backup(&a, &[]);
    a.switch_and_wait();
    let text = std::fs::read_to_string(&a.config).unwrap();
    let only_18 = format!(
        "pg_bin_dirs = [{:?}]",
        common::server_bindir_of(18).display().to_string()
    );
    let listed = text
        .lines()
        .find(|l| l.starts_with("pg_bin_dirs"))
        .unwrap()
        .to_owned();
    std::fs::write(&a.config, text.replace(&listed, &only_18)).unwrap();
    let parent = a.own_dir("restores");
    let before = entries(&parent);
    let target = parent.join("r");
    let args = [
        "restore",
        "--job",
        JOB,
        "--latest",
        "--target-dir",
        target.to_str().unwrap(),
        "--yes",
    ];
    let run = a.run_within(LONG, &args, &[]);
    assert_refused(
        &run,
        &[
            "is of PostgreSQL 17",
            "a base backup starts only with the binaries of its own major version",
            "hint: install postgresql-17",
        ],
        &parent,
        &before,
    );
}
