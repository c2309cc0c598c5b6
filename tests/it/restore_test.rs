//! Restore tests end to end on real PostgreSQL: a good backup passes and
//! leaves nothing behind, a manifest that does not match its data fails
//! naming the table and both counts, a failing user check fails naming the
//! check, and the daemon runs the test on its schedule and shows it in /metrics.

use crate::common::{self, Setup};
use serde_json::Value;

const TEST_JOB: &str = r#"
[jobs.weekly-restore-test]
type = "restore-test"
backup_job = "nightly"
checks = [
  { name = "users exist", sql = "SELECT count(*) FROM app.users", min = 1 },
  { sql = "SELECT count(*) FROM app.orgs", equals = 50 },
]
"#;

fn setup_with(test_job: &str) -> Setup {
    let setup = Setup::new("", test_job);
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    setup
}

#[test]
fn a_good_backup_passes_and_leaves_no_scratch_database() {
    let setup = setup_with(TEST_JOB);
    let before = setup.cluster.databases();
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let scratch = format!("app_restore_test_{}", id.to_lowercase());

    let plan = setup.backup(&["run", "weekly-restore-test", "--dry-run"]);
    assert!(plan.ok(), "{}", plan.all());
    for expected in [
        id.as_str(),
        scratch.as_str(),
        "users exist: >= 1",
        "SELECT count(*) FROM app.orgs: = 50",
        "dry run: nothing was changed",
    ] {
        assert!(plan.stdout.contains(expected), "{expected}: {}", plan.all());
    }
    assert_eq!(
        setup.cluster.databases(),
        before,
        "a dry run creates nothing"
    );

    let run = setup.backup(&["run", "weekly-restore-test"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("passed"), "{}", run.all());
    assert!(
        run.stdout
            .contains("ok     users exist: expected >= 1, found 5000"),
        "{}",
        run.all()
    );
    assert_eq!(
        setup.cluster.databases(),
        before,
        "the scratch database is dropped"
    );

    let record = setup.newest_record("restore-test");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert_eq!(record["job"], "weekly-restore-test");
    let d = &record["details"];
    assert_eq!(d["backup_id"], id.as_str());
    assert_eq!(d["scratch_database"], scratch.as_str());
    assert!(d["rto_seconds"].as_f64().unwrap() > 0.0, "{d:#}");
    assert!(d["raw_bytes"].as_u64().unwrap() > 0);
    let checks = d["checks"].as_array().unwrap();
    let find = |name: &str| {
        checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no check {name}: {d:#}"))
    };
    assert_eq!(
        find("table count")["actual"],
        find("table count")["expected"]
    );
    assert_eq!(find("extension hstore")["passed"], true);
    assert_eq!(find("SELECT count(*) FROM app.orgs")["actual"], "50");
    assert!(checks.iter().all(|c| c["passed"] == true), "{d:#}");

    // list and status say the backup restores.
    assert!(setup.list()[0]["restore_tested_at"].is_string());
    let status = setup.backup(&["status"]);
    assert!(
        status.stdout.contains(&format!("backup {id}")),
        "{}",
        status.all()
    );
}

#[test]
fn a_manifest_that_does_not_match_its_data_fails_naming_the_table() {
    let setup = setup_with(&format!("{TEST_JOB}keep_on_failure = true\n"));
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    // Craft the lie: the manifest says one more user than the dump holds.
    let path = setup
        .backups
        .join("nightly")
        .join(&id)
        .join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for t in manifest["tables"].as_array_mut().unwrap() {
        if t["schema"] == "app" && t["name"] == "users" {
            t["rows"] = Value::from(5001);
        }
    }
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let run = setup.backup(&["run", "weekly-restore-test"]);
    assert_eq!(run.code, 6, "an integrity failure: {}", run.all());
    assert!(
        run.stderr
            .contains("rows of app.users: expected 5001, found 5000"),
        "{}",
        run.all()
    );
    // keep_on_failure leaves it for a look, and the next run clears it.
    let scratch = format!("app_restore_test_{}", id.to_lowercase());
    assert!(setup.cluster.databases().contains(&scratch), "kept");
    let record = setup.newest_record("restore-test");
    assert_eq!(record["outcome"], "failed");
    assert_eq!(record["details"]["kept"], true);
    assert!(setup.list()[0]["restore_tested_at"].is_null());

    // The next test, of a newer backup, drops the one kept before it.
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let plan = setup.backup(&["run", "weekly-restore-test", "--dry-run"]);
    assert!(
        plan.stdout.contains(&format!("first:     drop {scratch}")),
        "{}",
        plan.all()
    );
    let run = setup.backup(&["run", "weekly-restore-test"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        !setup
            .cluster
            .databases()
            .iter()
            .any(|d| d.contains("restore_test")),
        "{:?}",
        setup.cluster.databases()
    );
}

#[test]
fn a_database_of_that_name_not_made_by_the_test_is_refused_untouched() {
    let setup = setup_with(&format!("{TEST_JOB}scratch_database = \"reporting\"\n"));
    setup.cluster.psql("postgres", "CREATE DATABASE reporting");
    setup
        .cluster
        .psql("reporting", "CREATE TABLE keep_me (x int)");
    let run = setup.backup(&["run", "weekly-restore-test"]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains("database reporting exists")
            && run.stderr.contains("not a scratch database"),
        "{}",
        run.all()
    );
    assert_eq!(
        setup
            .cluster
            .psql("reporting", "SELECT count(*) FROM keep_me"),
        "0"
    );
}

#[test]
fn a_failing_user_check_fails_the_run_and_says_which() {
    let setup = setup_with(
        r#"
[jobs.weekly-restore-test]
type = "restore-test"
backup_job = "nightly"
checks = [{ name = "at least a million users", sql = "SELECT count(*) FROM app.users", min = 1000000 }]
"#,
    );
    let before = setup.cluster.databases();
    let run = setup.backup(&["run", "weekly-restore-test"]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr
            .contains("at least a million users: expected >= 1000000, found 5000"),
        "{}",
        run.all()
    );
    assert_eq!(setup.cluster.databases(), before, "dropped on failure too");
}

/// The stored data object of backup `id`.
fn data_object(setup: &Setup, id: &str) -> std::path::PathBuf {
    setup.backups.join("nightly").join(id).join("data.dump.zst")
}

#[test]
fn verify_passes_a_good_backup_and_names_a_flipped_or_truncated_object() {
    let setup = setup_with("");
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();

    let good = setup.backup(&["verify", "--job", "nightly"]);
    assert!(good.ok(), "{}", good.all());
    assert!(
        good.stdout
            .contains(&format!("backup {id} in storage disk: ok")),
        "{}",
        good.all()
    );
    assert!(
        good.stdout.contains("a pg_dump archive of"),
        "{}",
        good.all()
    );
    assert_eq!(setup.newest_record("verify")["outcome"], "succeeded");

    // One flipped byte in the middle of the stored object.
    let path = data_object(&setup, &id);
    let original = std::fs::read(&path).unwrap();
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&path, &flipped).unwrap();
    let bad = setup.backup(&["verify", "--job", "nightly", "--id", &id]);
    assert_eq!(bad.code, 6, "{}", bad.all());
    assert!(
        bad.stderr
            .contains(&format!("backup {id} in storage disk: data.dump.zst"))
            && bad.stderr.contains("stored size"),
        "{}",
        bad.all()
    );
    let record = setup.newest_record("verify");
    assert_eq!(record["outcome"], "failed");
    assert!(
        record["error"].as_str().unwrap().contains("data.dump.zst"),
        "{record:#}"
    );

    // Cut short.
    std::fs::write(&path, &original[..original.len() / 3]).unwrap();
    let cut = setup.backup(&["--json", "verify", "--job", "nightly", "--all"]);
    assert_eq!(cut.code, 6, "{}", cut.all());
    let json: Value = serde_json::from_str(&cut.stdout).unwrap();
    assert_eq!(json["ok"], false);
    let object = &json["backups"][0]["objects"][0];
    assert_eq!(object["key"], "data.dump.zst");
    assert!(
        object["error"]
            .as_str()
            .unwrap()
            .contains(&format!("stored size {}", original.len() / 3)),
        "{json:#}"
    );
    // The globals beside it are still good, and said so.
    assert_eq!(json["backups"][0]["objects"][1]["error"], Value::Null);
}

#[test]
fn verify_finds_an_archive_that_is_not_a_pg_dump_archive() {
    let setup = setup_with("");
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    // Digests that match garbage: only pg_restore --list can tell.
    let garbage = b"this is not a pg_dump archive\n".repeat(100);
    let stored = zstd::encode_all(&garbage[..], 3).unwrap();
    std::fs::write(data_object(&setup, &id), &stored).unwrap();
    let path = setup
        .backups
        .join("nightly")
        .join(&id)
        .join("manifest.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let object = &mut manifest["objects"][0];
    object["raw_size"] = garbage.len().into();
    object["raw_sha256"] = sha(&garbage).into();
    object["stored_size"] = stored.len().into();
    object["stored_sha256"] = sha(&stored).into();
    std::fs::write(&path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let run = setup.backup(&["verify", "--job", "nightly"]);
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(
        run.stderr.contains("does not read as a pg_dump archive"),
        "{}",
        run.all()
    );
}

/// A fresh working directory holding only a copy of the job file, and a temp
/// dir the server's user can reach (as root the cluster runs as `postgres`).
fn fresh_host(setup: &Setup) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let fresh = tempfile::Builder::new()
        .prefix("backup-drill-host-")
        .tempdir()
        .unwrap();
    let tmp = fresh.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    for dir in [fresh.path(), tmp.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let config = fresh.path().join("job.toml");
    std::fs::copy(&setup.config, &config).unwrap();
    (fresh, config, tmp)
}

/// The command lines of processes still running from a drill's cluster under
/// `tmp`, this test's TMPDIR: drills of tests running alongside have their own.
fn drill_servers(tmp: &std::path::Path) -> String {
    let mine = format!("{}/backup-drill-", tmp.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        // A process may end between listing and reading: that is not one left.
        let bytes = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let line = String::from_utf8_lossy(&bytes).replace('\0', " ");
        if line.contains(&mine) {
            found.push(line.trim_end().to_owned());
        }
    }
    found.join("\n")
}

fn leftovers(tmp: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_drill_from_a_fresh_host_restores_checks_reports_and_leaves_nothing() {
    let setup = setup_with(TEST_JOB);
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let (fresh, config, tmp) = fresh_host(&setup);
    let env = [("TMPDIR", tmp.to_str().unwrap())];

    let plan = common::run_backup_in(
        fresh.path(),
        &config,
        &["drill", "--job", "nightly", "--dry-run"],
        &env,
    );
    assert!(plan.ok(), "{}", plan.all());
    assert!(
        plan.stdout.contains("a throwaway cluster"),
        "{}",
        plan.all()
    );
    assert!(
        plan.stdout.contains("users exist: >= 1"),
        "checks of the restore-test job: {}",
        plan.all()
    );
    assert!(leftovers(&tmp).is_empty(), "a dry run makes nothing");

    let run = common::run_backup_in(
        fresh.path(),
        &config,
        &["drill", "--job", "nightly", "--report", "drill-report.md"],
        &env,
    );
    assert!(run.ok(), "{}", run.all());
    let report = std::fs::read_to_string(fresh.path().join("drill-report.md")).unwrap();
    for expected in [
        "# Disaster-recovery drill: job nightly",
        "| Result | **PASSED** |",
        &format!("| Backup | {id} of job nightly"),
        "| RTO | ",
        "(start of the drill to verified data)",
        "| RPO | ",
        "restore globals (roles)",
        "| users exist | >= 1 | 5000 | passed |",
        "| exact row counts |",
        "| extension hstore |",
        "| app.users | 5000 | 5000 |",
        "stop the throwaway cluster and remove its files | ",
    ] {
        assert!(report.contains(expected), "{expected}:\n{report}");
    }
    assert_eq!(run.stdout, report, "the report is also the output");
    assert!(
        leftovers(&tmp).is_empty(),
        "temp files left: {:?}",
        leftovers(&tmp)
    );
    assert_eq!(drill_servers(&tmp), "", "a server still runs");
    let record = setup.newest_record("drill");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert!(record["details"]["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(record["details"]["rpo_seconds"].as_f64().unwrap() > 0.0);

    // A report FILE ending in .html is the same report as a page.
    let run = common::run_backup_in(
        fresh.path(),
        &config,
        &["drill", "--job", "nightly", "--report", "drill-report.html"],
        &env,
    );
    assert!(run.ok(), "{}", run.all());
    let html = std::fs::read_to_string(fresh.path().join("drill-report.html")).unwrap();
    for expected in [
        "<!DOCTYPE html>",
        "<h1>Disaster-recovery drill: job nightly</h1>",
        "<tr><th>Result</th><td><strong class=\"ok\">PASSED</strong></td></tr>",
        "<td>users exist</td><td>&gt;= 1</td><td>5000</td><td>passed</td>",
        "<td>app.users</td><td class=\"num\">5000</td>",
    ] {
        assert!(html.contains(expected), "{expected}:\n{html}");
    }
    assert!(!html.contains("<script") && !html.contains("http"));
    // The status page shows the drill with the RTO and RPO it measured.
    let run = common::run_backup_in(
        fresh.path(),
        &config,
        &["report", "--html", "status.html", "--job", "nightly"],
        &env,
    );
    assert!(run.ok(), "{}", run.all());
    let page = std::fs::read_to_string(fresh.path().join("status.html")).unwrap();
    assert!(
        page.contains("<dt>Last restore test or drill</dt><dd>drill "),
        "{page}"
    );
    assert!(page.contains("; RTO ") && page.contains("; RPO "), "{page}");
    assert!(page.contains("id=\"rto-nightly\""), "the RTO chart");
}

#[test]
fn a_drill_into_a_given_server_leaves_its_roles_alone_and_drops_what_it_made() {
    let setup = setup_with(TEST_JOB);
    let dr = common::Cluster::start();
    // A live role on the DR server whose password the backup's globals hold
    // differently: the drill must not change it.
    let before = dr.psql(
        "postgres",
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'",
    );
    let url = dr.url("postgres");
    let env = [("PGPASSWORD", common::PASSWORD)];
    let run = setup.backup_with(&["drill", "--job", "nightly", "--target-url", &url], &env);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("| Result | **PASSED** |"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains("roles that exist on the target were left as they are: postgres"),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("drop database app"), "{}", run.all());
    assert_eq!(
        dr.psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'"
        ),
        before
    );
    assert_eq!(
        dr.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'app'"
        ),
        "0"
    );

    // A database of the backup's name there is never touched.
    dr.psql("postgres", "CREATE DATABASE app");
    dr.psql("app", "CREATE TABLE mine (x int)");
    let refused = setup.backup_with(&["drill", "--job", "nightly", "--target-url", &url], &env);
    assert_eq!(refused.code, 9, "{}", refused.all());
    assert_eq!(dr.psql("app", "SELECT count(*) FROM mine"), "0");
}

#[test]
fn a_failing_drill_says_why_in_its_report_and_still_cleans_up() {
    let setup = setup_with(
        r#"
[jobs.strict-test]
type = "restore-test"
backup_job = "nightly"
checks = [{ name = "no users at all", sql = "SELECT count(*) FROM app.users", equals = 0 }]
"#,
    );
    let (fresh, config, tmp) = fresh_host(&setup);
    let env = [("TMPDIR", tmp.to_str().unwrap())];
    let run = common::run_backup_in(
        fresh.path(),
        &config,
        &["drill", "--job", "strict-test", "--report", "r.md"],
        &env,
    );
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(
        run.stderr
            .contains("no users at all: expected = 0, found 5000"),
        "{}",
        run.all()
    );
    let report = std::fs::read_to_string(fresh.path().join("r.md")).unwrap();
    assert!(report.contains("| Result | **FAILED**"), "{report}");
    assert!(
        report.contains("| no users at all | = 0 | 5000 | **FAILED** |"),
        "{report}"
    );
    assert!(
        leftovers(&tmp).is_empty(),
        "temp files left: {:?}",
        leftovers(&tmp)
    );
    assert_eq!(drill_servers(&tmp), "");

    // A drill that fails mid-way (the stored data is gone) still tears down.
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    std::fs::write(data_object(&setup, &id), b"truncated").unwrap();
    let broken = common::run_backup_in(fresh.path(), &config, &["drill", "--job", "nightly"], &env);
    assert_ne!(broken.code, 0, "{}", broken.all());
    assert!(broken.stdout.contains("**FAILED**"), "{}", broken.all());
    assert!(broken.stdout.contains("data.dump.zst"), "{}", broken.all());
    assert!(
        leftovers(&tmp).is_empty(),
        "temp files left: {:?}",
        leftovers(&tmp)
    );
    assert_eq!(drill_servers(&tmp), "");
}

#[test]
fn an_interrupted_drill_still_stops_its_cluster_and_removes_its_files() {
    let setup = setup_with("");
    let (fresh, config, tmp) = fresh_host(&setup);
    // While the cluster is being made (the hardest moment), then once it runs.
    for wait_for_server in [false, true] {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_backup"))
            .args([
                "--config",
                config.to_str().unwrap(),
                "drill",
                "--job",
                "nightly",
            ])
            .current_dir(fresh.path())
            .env("TMPDIR", &tmp)
            .env_remove("BACKUP_CONFIG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let ready = || {
            if wait_for_server {
                !drill_servers(&tmp).is_empty()
            } else {
                !leftovers(&tmp).is_empty()
            }
        };
        while !ready() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            leftovers(&tmp).is_empty(),
            "temp files left: {:?}",
            leftovers(&tmp)
        );
        assert_eq!(drill_servers(&tmp), "");
    }
}
