//! The focused set on every PostgreSQL major the tool supports, 13 to 18
//! (issue 26, point 1): operators run all of them, while the full suite runs
//! on Debian's 15 only. One test per major, each with a cluster of that major
//! holding the sample fixture, walks through what an operator does with it:
//! back up (with the nearest `pg_dump` at least as new as the server, as the
//! tool picks it: 15's for 13 to 15 here, 18's for 16 to 18), verify,
//! restore and compare every table, a restore-test job, a drill (whose
//! throwaway server must be of the backup's own major), a maintenance job
//! rebuilding indexes with `REINDEX CONCURRENTLY`, and `backup db report`.
//!
//! What differs between majors is what these catch: the catalogs the tool's
//! queries read, what `pg_restore` 18 writes into an older server (16 here
//! has no client of its own: its restores go through `psql`), the server a
//! drill picks, and the statements maintenance runs.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Cluster, MAJORS, Setup, server_bindir_of};

/// The major of the client programs the tool picks for a server of
/// `major`: the nearest installed one at least as new (npm's builds have
/// none).
fn client_major(major: u32) -> u32 {
    MAJORS
        .into_iter()
        .filter(|m| *m >= major && server_bindir_of(*m).join("pg_dump").is_file())
        .min()
        .expect("PostgreSQL 18's client programs are installed")
}

/// How long one `backup` command may take here before the test fails.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// One test per major, so a failure names the major.
macro_rules! on_every_major {
    ($($name:ident: $major:literal,)*) => {
        $(
            #[test]
            fn $name() {
                backup_verify_restore_test_drill_maintenance_and_report_on($major);
            }
        )*

        #[test]
        fn every_major_has_its_test() {
            assert_eq!([$($major),*], MAJORS);
        }
    };
}

on_every_major! {
    backup_verify_restore_test_drill_maintenance_and_report_on_postgresql_13: 13,
    backup_verify_restore_test_drill_maintenance_and_report_on_postgresql_14: 14,
    backup_verify_restore_test_drill_maintenance_and_report_on_postgresql_15: 15,
    backup_verify_restore_test_drill_maintenance_and_report_on_postgresql_16: 16,
    backup_verify_restore_test_drill_maintenance_and_report_on_postgresql_17: 17,
    backup_verify_restore_test_drill_maintenance_and_report_on_postgresql_18: 18,
}

const JOBS: &str = r#"
[jobs.restore-check]
type = "restore-test"
backup_job = "nightly"
checks = [{ name = "every user", sql = "SELECT count(*) FROM app.users", equals = 5000 }]

[jobs.tidy]
type = "maintenance"
database = "app"
tasks = ["vacuum-analyze", "reindex"]
all = true
reindex_concurrently = true
tables = ["app.*"]
"#;

fn backup_verify_restore_test_drill_maintenance_and_report_on(major: u32) {
    let cluster = Cluster::start_major(major, "");
    cluster.load_fixtures("app");
    // Every major's programs: the tool takes the nearest client programs
    // among them, and a drill's server of the backup's major.
    let setup = Setup::with_cluster(cluster, &common::every_pg_bin_dir(), "");
    setup.append_to_config(JOBS);
    let source = setup.cluster.table_digests("app");
    assert!(source.len() >= 6, "{source:?}");

    // 1. The backup: of this server, by the nearest pg_dump at least as new.
    let run = bounded(&setup, &["run", "nightly"]);
    assert!(run.ok(), "PostgreSQL {major}: backup run: {}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let manifest = setup.manifest(&id);
    let server_version = manifest["server_version"].as_str().unwrap();
    assert_eq!(major_of(server_version), Some(major), "{manifest:#}");
    let pg_dump_version = manifest["pg_dump_version"].as_str().unwrap();
    assert!(
        pg_dump_version.starts_with(&format!("pg_dump (PostgreSQL) {}.", client_major(major))),
        "PostgreSQL {major}: dumped by {pg_dump_version:?}"
    );

    // 2. Verify reads it back, as a pg_dump archive too.
    let run = bounded(&setup, &["verify", "--job", "nightly"]);
    assert!(run.ok(), "PostgreSQL {major}: verify: {}", run.all());
    assert!(
        run.stdout
            .contains(&format!("backup {id} in storage disk: ok")),
        "{}",
        run.all()
    );

    // 3. A restore beside the source: every row, and a record naming both servers.
    let run = bounded(
        &setup,
        &[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "restored",
        ],
    );
    assert!(run.ok(), "PostgreSQL {major}: restore: {}", run.all());
    assert_eq!(
        setup.cluster.table_digests("restored"),
        source,
        "PostgreSQL {major}: the restored tables differ"
    );
    let record = setup.newest_record("restore");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    for key in ["source_server_version", "target_server_version"] {
        let version = record["details"][key].as_str().unwrap_or_default();
        assert_eq!(major_of(version), Some(major), "{key}: {record:#}");
    }

    // 4. A restore-test job: a scratch copy proven and dropped.
    let run = bounded(&setup, &["run", "restore-check"]);
    assert!(run.ok(), "PostgreSQL {major}: restore test: {}", run.all());
    assert!(
        run.stdout
            .contains("ok     every user: expected = 5000, found 5000"),
        "{}",
        run.all()
    );
    let record = setup.newest_record("restore-test");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert!(
        !setup
            .cluster
            .databases()
            .iter()
            .any(|d| d.contains("restore_test")),
        "{:?}",
        setup.cluster.databases()
    );

    // 5. A drill, into a throwaway cluster of this same major.
    let tmp = drill_tmp(&setup);
    let run = bounded_with(
        &setup,
        &["drill", "--job", "nightly"],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    assert!(run.ok(), "PostgreSQL {major}: drill: {}", run.all());
    let into = format!("| Restored into | a throwaway cluster (PostgreSQL {major}.");
    assert!(run.stdout.contains(&into), "{into}: {}", run.all());
    let bindir = format!(", {}) on 127.0.0.1", server_bindir_of(major).display());
    assert!(run.stdout.contains(&bindir), "{bindir}: {}", run.all());
    for expected in [
        "| Result | **PASSED** |",
        "| every user | = 5000 | 5000 | passed |",
        "| extension hstore |",
        "| app.users | 5000 | 5000 |",
    ] {
        assert!(run.stdout.contains(expected), "{expected}: {}", run.all());
    }
    let record = setup.newest_record("drill");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "the drill left {leftovers:?}");

    // 6. Maintenance: every table vacuumed and analyzed, every index rebuilt
    // concurrently.
    let run = bounded(&setup, &["--json", "run", "tidy"]);
    assert!(run.ok(), "PostgreSQL {major}: maintenance: {}", run.all());
    let out: Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.all()));
    let outcome = &out[0];
    assert_eq!(outcome["ok"], true, "{outcome:#}");
    let steps = outcome["steps"].as_array().unwrap();
    assert!(
        steps.iter().all(|s| s["status"] == "done"),
        "PostgreSQL {major}: {outcome:#}"
    );
    let vacuumed = |table: &str| {
        steps
            .iter()
            .any(|s| s["action"] == "vacuum-analyze" && s["table"] == table)
    };
    assert!(
        vacuumed("events") && vacuumed("users"),
        "PostgreSQL {major}: {outcome:#}"
    );
    let reindexed: Vec<&str> = steps
        .iter()
        .filter(|s| s["action"] == "reindex")
        .map(|s| s["sql"].as_str().unwrap())
        .collect();
    assert!(
        reindexed.contains(&"REINDEX INDEX CONCURRENTLY \"app\".\"users_org_idx\""),
        "PostgreSQL {major}: {outcome:#}"
    );
    assert!(
        reindexed
            .iter()
            .all(|sql| sql.starts_with("REINDEX INDEX CONCURRENTLY ")),
        "PostgreSQL {major}: {reindexed:?}"
    );
    assert_eq!(
        setup
            .cluster
            .psql("app", "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0"
    );

    // 7. The report on the database, its largest table first.
    let run = bounded(&setup, &["db", "report", "--database", "app"]);
    assert!(run.ok(), "PostgreSQL {major}: db report: {}", run.all());
    let largest = run
        .stdout
        .split("Largest tables")
        .nth(1)
        .unwrap_or_else(|| panic!("no largest tables: {}", run.all()));
    let first_row = largest.lines().nth(2).unwrap_or_default();
    assert!(
        first_row.trim_start().starts_with("app.events "),
        "PostgreSQL {major}: {}",
        run.stdout
    );
}

/// The major of a `server_version` ("13.23", "15.14 (Debian 15.14-0+deb12u1)").
fn major_of(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A temp dir for the drill that the server's user can reach: as root, the
/// drill's cluster runs as `postgres`, and the test's own dir is root's.
fn drill_tmp(setup: &Setup) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let tmp = setup.work.path().join("drill-tmp");
    std::fs::create_dir(&tmp).unwrap();
    for dir in [setup.work.path(), tmp.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    tmp
}

/// [`Setup::backup`], failing the test if it takes longer than [`COMMAND_LIMIT`].
fn bounded(setup: &Setup, args: &[&str]) -> common::Run {
    bounded_with(setup, args, &[])
}

fn bounded_with(setup: &Setup, args: &[&str], env: &[(&str, &str)]) -> common::Run {
    let child = setup.spawn_backup_with(args, env);
    finish(child, args, COMMAND_LIMIT)
}

/// Waits for a spawned `backup`, reading its output as it comes (a full pipe
/// would stop it), stopping it and failing after `limit`.
fn finish(mut child: Child, args: &[&str], limit: Duration) -> common::Run {
    use std::io::Read;
    use std::sync::mpsc;
    fn drain(mut from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            let _ = send.send(String::from_utf8_lossy(&bytes).into_owned());
        });
        receive
    }
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    // What a stopped run's programs left holding its pipes must not hang the test.
    let said = |from: mpsc::Receiver<String>| {
        from.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| "(not closed)".to_owned())
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            // SIGINT first: a drill then stops its cluster and removes its files.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let stopping = Instant::now();
            while child.try_wait().unwrap().is_none()
                && stopping.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "backup {} did not finish within {limit:?}\n--- stdout\n{}\n--- stderr\n{}",
                args.join(" "),
                said(stdout),
                said(stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    common::Run {
        code: status.code().unwrap_or(-1),
        stdout: said(stdout),
        stderr: said(stderr),
    }
}
