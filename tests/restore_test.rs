//! Restore tests end to end on real PostgreSQL: a good backup passes and
//! leaves nothing behind, a manifest that does not match its data fails
//! naming the table and both counts, a failing user check fails naming the
//! check, and the daemon runs the test on its schedule and shows it in /metrics.

mod common;

use common::Setup;
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

fn databases(setup: &Setup) -> Vec<String> {
    setup
        .cluster
        .psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The newest record of `kind` under the backup job's reports.
fn newest_record(setup: &Setup, kind: &str) -> Value {
    let dir = setup.backups.join("nightly").join("reports");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(&format!("-{kind}.json")))
        .collect();
    names.sort();
    let name = names
        .last()
        .unwrap_or_else(|| panic!("no {kind} record in {dir:?}"));
    serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
}

#[test]
fn a_good_backup_passes_and_leaves_no_scratch_database() {
    let setup = setup_with(TEST_JOB);
    let before = databases(&setup);
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
    assert_eq!(databases(&setup), before, "a dry run creates nothing");

    let run = setup.backup(&["run", "weekly-restore-test"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("passed"), "{}", run.all());
    assert!(
        run.stdout
            .contains("ok     users exist: expected >= 1, found 5000"),
        "{}",
        run.all()
    );
    assert_eq!(databases(&setup), before, "the scratch database is dropped");

    let record = newest_record(&setup, "restore-test");
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
    assert!(databases(&setup).contains(&scratch), "kept");
    let record = newest_record(&setup, "restore-test");
    assert_eq!(record["outcome"], "failed");
    assert_eq!(record["details"]["kept"], true);
    assert!(setup.list()[0]["restore_tested_at"].is_null());
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
    let before = databases(&setup);
    let run = setup.backup(&["run", "weekly-restore-test"]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr
            .contains("at least a million users: expected >= 1000000, found 5000"),
        "{}",
        run.all()
    );
    assert_eq!(databases(&setup), before, "dropped on failure too");
}
