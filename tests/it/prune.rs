//! `backup prune` end to end, on every backend: 40 backups spread over a
//! month, the survivors exactly the plan's keeps, incomplete backups cleaned,
//! a delete that fails reported and finished by a second run.
//!
//! Which backup each rule keeps is unit- and property-tested in
//! src/retention.rs; these tests show prune carries a plan out faithfully.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::common::servers::{self, block_on};
use crate::common::{self, Cluster, Setup};
use backup::model::{BackupId, StorageKind, StorageSpec};
use backup::storage::{Key, Storage};
use serde_json::{Value, json};

const POLICY: &str =
    "retention = { keep_last = 3, keep_daily = 7, keep_weekly = 3 }\nincomplete_after = \"24h\"";

/// A manifest like the ones `backup run` writes, for a backup whose data is as of `at`.
fn manifest(id: &BackupId, at: jiff::Timestamp) -> Value {
    json!({
        "format": 1, "id": id, "job": "nightly", "database": "app", "dbname": "app",
        "server_version": "15", "pg_dump_version": "15",
        "snapshot_at": at, "started_at": at, "finished_at": at,
        "compression": "zstd", "encryption": null,
        "objects": [{"key": "data.dump.zst", "role": "data", "raw_size": 4,
                     "raw_sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                         "stored_size": 4, "stored_sha256": "0000000000000000000000000000000000000000000000000000000000000000"}],
        "tables": [], "warnings": [],
    })
}

async fn put(storage: &dyn Storage, key: String, bytes: &[u8]) {
    backup::storage::write_small(storage, &Key::new(key).unwrap(), bytes)
        .await
        .unwrap();
}

/// 40 complete backups, one every 19 hours back from now, an incomplete one
/// three days old (a run that died) and one an hour old (maybe running).
/// Returns the ids of the incomplete ones, old then young.
async fn seed(storage: &dyn Storage) -> (String, String) {
    let now = jiff::Timestamp::now();
    for i in 0..40 {
        let at = now - jiff::SignedDuration::from_hours(19 * i + 1);
        let id = BackupId::from_start(at, 0);
        put(storage, format!("nightly/{id}/data.dump.zst"), b"data").await;
        let m = serde_json::to_vec(&manifest(&id, at)).unwrap();
        put(storage, format!("nightly/{id}/manifest.json"), &m).await;
    }
    let mut incomplete = Vec::new();
    for hours in [72, 1] {
        // A second past the hour: never the id of a complete one.
        let at = now - jiff::SignedDuration::from_secs(hours * 3600 + 1);
        let id = BackupId::from_start(at, 0);
        put(storage, format!("nightly/{id}/data.dump.zst"), b"part").await;
        incomplete.push(id.to_string());
    }
    (incomplete[0].clone(), incomplete[1].clone())
}

/// The backup ids that have any object in `storage`.
async fn ids_in(storage: &dyn Storage) -> BTreeSet<String> {
    storage
        .list(&Key::new("nightly").unwrap())
        .await
        .unwrap()
        .iter()
        .filter_map(|o| o.key.as_str().split('/').rev().nth(1).map(str::to_owned))
        .filter(|id| BackupId::parse(id).is_ok())
        .collect()
}

fn prune_json(setup: &Setup, env: &[(&str, &str)], args: &[&str]) -> (common::Run, Value) {
    let mut all = vec!["--json", "prune", "--job", "nightly"];
    all.extend_from_slice(args);
    let run = setup.backup_with(&all, env);
    let value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    (run, value)
}

fn entries(out: &Value, action: &str) -> BTreeSet<String> {
    out[0]["storages"][0]["plan"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan in {out:#}"))
        .iter()
        .filter(|e| e["action"] == action)
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The whole story on one storage.
fn prune_leaves_exactly_the_plans_keeps(
    setup: &Setup,
    env: &[(&str, &str)],
    storage: Arc<dyn Storage>,
) {
    let (old_incomplete, young_incomplete) = block_on(seed(storage.as_ref()));
    assert_eq!(block_on(ids_in(storage.as_ref())).len(), 42);

    let (run, plan) = prune_json(setup, env, &["--dry-run"]);
    assert!(run.ok(), "{}", run.all());
    let keep = entries(&plan, "keep");
    let delete = entries(&plan, "delete");
    assert_eq!(keep.len() + delete.len(), 42);
    assert!(delete.contains(&old_incomplete), "{plan:#}");
    assert!(keep.contains(&young_incomplete), "{plan:#}");
    // 3 last, 7 days (the newest 3 among them), 3 weeks: 7..=13 complete ones.
    let kept_complete = keep.len() - 1;
    assert!(
        (7..=13).contains(&kept_complete),
        "{kept_complete}: {plan:#}"
    );
    assert_eq!(
        block_on(ids_in(storage.as_ref())).len(),
        42,
        "a dry run deletes nothing"
    );

    let (run, done) = prune_json(setup, env, &[]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        entries(&done, "keep"),
        keep,
        "the plan changed between runs"
    );
    assert_eq!(block_on(ids_in(storage.as_ref())), keep);
    let listed: Vec<Value> = serde_json::from_str(
        &setup
            .backup_with(&["--json", "list", "--job", "nightly"], env)
            .stdout,
    )
    .unwrap();
    assert_eq!(listed.len(), kept_complete);

    // Planning again deletes nothing more.
    let (run, again) = prune_json(setup, env, &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(entries(&again, "delete").is_empty(), "{again:#}");
}

/// Seeds the job's `disk` storage and returns a complete backup that the
/// plan deletes.
fn a_complete_backup_the_plan_deletes(setup: &Setup) -> String {
    block_on(seed(local_storage(setup).as_ref()));
    let (_, plan) = prune_json(setup, &[], &["--dry-run"]);
    entries(&plan, "delete")
        .into_iter()
        .find(|id| {
            setup
                .backups
                .join("nightly")
                .join(id)
                .join("manifest.json")
                .exists()
        })
        .unwrap()
}

/// The job's `disk` storage, opened as `backup` opens it.
fn local_storage(setup: &Setup) -> Arc<dyn Storage> {
    let spec = StorageSpec {
        name: "disk".into(),
        kind: StorageKind::Local {
            path: setup.backups.clone(),
        },
        retry: servers::test_retry(),
    };
    block_on(backup::storage::open(&spec)).unwrap()
}

fn setup_with(section: &str, storage: &str) -> Setup {
    let cluster = Cluster::start();
    cluster.create_db("app");
    Setup::with_storages(cluster, "", section, &[storage], POLICY)
}

#[test]
fn local_prune_keeps_exactly_the_plan() {
    let setup = setup_with("", "disk");
    let storage = local_storage(&setup);
    prune_leaves_exactly_the_plans_keeps(&setup, &[], storage);
}

#[test]
fn s3_prune_keeps_exactly_the_plan() {
    let endpoint = servers::s3_endpoint();
    let bucket = block_on(servers::create_bucket("prune"));
    let setup = setup_with(&servers::s3_section("s3", &endpoint, &bucket, ""), "s3");
    let mut spec = servers::s3_spec_at(&endpoint, &bucket, 5 << 20);
    spec.prefix = Some("prod/db".into());
    let spec = StorageSpec {
        name: "s3".into(),
        kind: StorageKind::S3(spec),
        retry: servers::test_retry(),
    };
    let storage = block_on(backup::storage::open(&spec)).unwrap();
    prune_leaves_exactly_the_plans_keeps(&setup, &servers::s3_env(), storage);
}

#[test]
fn azure_prune_keeps_exactly_the_plan() {
    let endpoint = servers::azure_endpoint();
    let container = block_on(servers::create_container("prune"));
    let setup = setup_with(
        &servers::azure_section("blob", &endpoint, &container, ""),
        "blob",
    );
    let mut spec = servers::azure_spec_at(&endpoint, &container, 1 << 20);
    spec.prefix = Some("prod/db".into());
    let spec = StorageSpec {
        name: "blob".into(),
        kind: StorageKind::Azure(spec),
        retry: servers::test_retry(),
    };
    let storage = block_on(backup::storage::open(&spec)).unwrap();
    prune_leaves_exactly_the_plans_keeps(&setup, &servers::azure_env(), storage);
}

/// Makes a file impossible to delete until dropped: immutable for root (who
/// ignores permissions), a read-only directory for anyone else.
struct Undeletable(std::path::PathBuf);

impl Undeletable {
    fn new(file: std::path::PathBuf) -> Undeletable {
        let ok = if unsafe { libc::geteuid() } == 0 {
            std::process::Command::new("chattr")
                .arg("+i")
                .arg(&file)
                .status()
                .is_ok_and(|s| s.success())
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                file.parent().unwrap(),
                std::fs::Permissions::from_mode(0o555),
            )
            .is_ok()
        };
        assert!(ok, "could not make {} undeletable", file.display());
        Undeletable(file)
    }
}

impl Drop for Undeletable {
    fn drop(&mut self) {
        if unsafe { libc::geteuid() } == 0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(
                self.0.parent().unwrap(),
                std::fs::Permissions::from_mode(0o755),
            );
        }
    }
}

#[test]
fn a_delete_that_fails_exits_non_zero_and_a_second_run_finishes() {
    let setup = setup_with("", "disk");
    let doomed = a_complete_backup_the_plan_deletes(&setup);
    let stuck = Undeletable::new(
        setup
            .backups
            .join("nightly")
            .join(&doomed)
            .join("data.dump.zst"),
    );

    let (run, _) = prune_json(&setup, &[], &[]);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("{doomed} in disk")) && run.stderr.contains("hint:"),
        "{}",
        run.all()
    );
    // Its manifest went first: it is no longer listed as a backup.
    assert!(
        !setup
            .backups
            .join("nightly")
            .join(&doomed)
            .join("manifest.json")
            .exists()
    );
    let listed = setup.backup(&["--json", "list", "--job", "nightly"]).stdout;
    assert!(!listed.contains(&doomed), "{listed}");

    drop(stuck);
    let (run, _) = prune_json(&setup, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(!setup.backups.join("nightly").join(&doomed).exists());
}

#[test]
fn prune_without_a_policy_says_how_to_write_one() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    let setup = Setup::with_cluster(cluster, "", "");
    let run = setup.backup(&["prune"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(
        run.stderr.contains("no backup job has a retention policy"),
        "{}",
        run.all()
    );
    let run = setup.backup(&["prune", "--job", "nightly"]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("keep_daily = 30"), "{}", run.all());
}

#[test]
fn a_good_backup_of_a_job_with_a_policy_prunes_after_itself() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    let setup = Setup::with_cluster(cluster, "", "retention = { keep_last = 2 }");
    for _ in 0..3 {
        let run = setup.backup(&["run", "nightly"]);
        assert!(run.ok(), "{}", run.all());
    }
    assert_eq!(setup.list().len(), 2);
    let reports = std::fs::read_dir(setup.backups.join("nightly/reports")).unwrap();
    let prunes = reports
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with("-prune.json"))
        .count();
    assert_eq!(prunes, 3, "one prune record per backup");
}

#[test]
fn a_pinned_backup_survives_prune_until_unpinned() {
    let setup = setup_with("", "disk");
    let oldest = a_complete_backup_the_plan_deletes(&setup);

    let run = setup.backup(&["pin", &oldest, "--job", "nightly", "--reason", "legal hold"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("pinned in disk"), "{}", run.stdout);
    let run = setup.backup(&["list", "--job", "nightly"]);
    let line = run
        .stdout
        .lines()
        .find(|l| l.contains(&oldest))
        .unwrap()
        .to_owned();
    assert!(line.ends_with("pinned: legal hold"), "{line}");

    let (run, done) = prune_json(&setup, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    let entry = done[0]["storages"][0]["plan"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == oldest.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["action"], "keep");
    assert_eq!(entry["reasons"], json!(["pinned: legal hold"]));
    assert!(
        setup
            .backups
            .join("nightly")
            .join(&oldest)
            .join("manifest.json")
            .exists()
    );

    let run = setup.backup(&["unpin", &oldest, "--job", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let (run, _) = prune_json(&setup, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(!setup.backups.join("nightly").join(&oldest).exists());

    let run = setup.backup(&["pin", "20000101T000000Z", "--job", "nightly"]);
    assert_eq!(run.code, 7, "{}", run.all());
    assert!(
        run.stderr.contains("no complete backup 20000101T000000Z"),
        "{}",
        run.all()
    );
}

#[test]
fn s3_prune_aborts_uploads_a_killed_run_left_open() {
    let endpoint = servers::s3_endpoint();
    let bucket = block_on(servers::create_bucket("prune-mpu"));
    let cluster = Cluster::start();
    cluster.create_db("app");
    let setup = Setup::with_storages(
        cluster,
        "",
        &servers::s3_section("s3", &endpoint, &bucket, ""),
        &["s3"],
        "retention = { keep_last = 3 }\nincomplete_after = \"1s\"",
    );
    block_on(servers::start_upload(
        &bucket,
        "prod/db/nightly/20261125T000000Z/data.dump.zst",
    ));
    // Not ours: another tool's upload beside the job's prefix stays.
    block_on(servers::start_upload(&bucket, "prod/db/other/x"));
    assert_eq!(block_on(servers::open_uploads(&bucket)), 2);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (run, out) = prune_json(&setup, &servers::s3_env(), &[]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(out[0]["storages"][0]["unfinished_cleaned"], 1, "{out:#}");
    assert_eq!(block_on(servers::open_uploads(&bucket)), 1);
}

#[test]
fn a_prune_job_runs_the_backup_jobs_retention_and_records_it() {
    let setup = setup_with("", "disk");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str("\n[jobs.cleanup]\ntype = \"prune\"\nbackup_job = \"nightly\"\n");
    std::fs::write(&setup.config, text).unwrap();
    let storage = local_storage(&setup);
    block_on(seed(storage.as_ref()));

    let run = setup.backup(&["run", "cleanup", "--dry-run"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("(dry run: nothing deleted)"),
        "{}",
        run.stdout
    );
    assert_eq!(block_on(ids_in(storage.as_ref())).len(), 42);

    let run = setup.backup(&["run", "cleanup"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("DELETED"), "{}", run.stdout);
    assert!(block_on(ids_in(storage.as_ref())).len() < 42);
    let records: Vec<String> = std::fs::read_dir(setup.backups.join("cleanup/reports"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].ends_with("-prune.json"), "{records:?}");
}

#[test]
fn while_the_job_runs_no_incomplete_backup_is_deleted_whatever_its_age() {
    let setup = setup_with("", "disk");
    let storage = local_storage(&setup);
    let (old_incomplete, _) = block_on(seed(storage.as_ref()));
    // A backup that has been running for three days holds the job's lock.
    let running = setup
        .cluster
        .hold_advisory_lock("app", backup::lock::lock_key("backup job nightly"));
    let (run, out) = prune_json(&setup, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(entries(&out, "keep").contains(&old_incomplete), "{out:#}");
    assert!(block_on(ids_in(storage.as_ref())).contains(&old_incomplete));
    running.release();
    let (run, out) = prune_json(&setup, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(entries(&out, "delete").contains(&old_incomplete), "{out:#}");
}

#[test]
fn a_failed_run_recorded_in_one_storage_holds_the_prune_of_all() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    let work = tempfile::tempdir().unwrap();
    let second = work.path().join("second");
    let setup = Setup::with_storages(
        cluster,
        "",
        &format!(
            "[storages.disk2]\ntype = \"local\"\npath = \"{}\"\n",
            second.display()
        ),
        &["disk", "disk2"],
        POLICY,
    );
    let mut storages = Vec::new();
    for (name, path) in [("disk", setup.backups.clone()), ("disk2", second.clone())] {
        let spec = StorageSpec {
            name: name.into(),
            kind: StorageKind::Local { path },
            retry: servers::test_retry(),
        };
        let storage = block_on(backup::storage::open(&spec)).unwrap();
        block_on(seed(storage.as_ref()));
        storages.push(storage);
    }
    // The newest run failed, and only the second storage could take its record.
    let now = jiff::Timestamp::now();
    let run_id = format!("{}-backup", now.strftime("%Y%m%dT%H%M%S%6fZ"));
    let record = json!({
        "format": 1, "run_id": run_id, "job": "nightly", "kind": "backup",
        "trigger": "schedule", "started_at": now, "finished_at": now,
        "outcome": "failed", "succeeded": false, "attempts": 1,
        "error": "pg_dump: connection lost", "details": {},
    });
    block_on(put(
        storages[1].as_ref(),
        format!("nightly/reports/{run_id}.json"),
        &serde_json::to_vec(&record).unwrap(),
    ));
    let (run, out) = prune_json(&setup, &[], &[]);
    assert!(run.ok(), "{}", run.all());
    for storage in out[0]["storages"].as_array().unwrap() {
        let held = storage["plan"]["held"].as_str().unwrap_or_default();
        assert!(
            held.contains(&run_id) && held.contains("(failed)"),
            "{storage:#}"
        );
    }
    for storage in &storages {
        assert_eq!(block_on(ids_in(storage.as_ref())).len(), 42);
    }
}
