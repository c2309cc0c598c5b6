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
    assert_eq!(newest_record(&setup, "verify")["outcome"], "succeeded");

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
    let record = newest_record(&setup, "verify");
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
