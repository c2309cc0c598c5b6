//! The five systems of ../shared/SCENARIOS.md, each run from its example job
//! file (jobs/examples/) against a throwaway PostgreSQL seeded with its
//! fixture, asserting what its runbook checks by hand today.
//!
//! A job file is used as shipped: where its servers are comes from the
//! environment (`${NAME:-default}` in the file), which each test points at
//! its own servers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::common::archiving::{Archiving, Options};
use crate::common::servers::{self, block_on};
use crate::common::{self, Cluster, PASSWORD, Run};
use backup::model::{BackupId, StorageKind, StorageSpec};
use backup::storage::Key;

/// `jobs/examples/NAME.toml`, as shipped.
fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("jobs/examples")
        .join(format!("{name}.toml"))
}

/// The environment of a run, borrowed as the runner takes it.
fn env_of<'a>(vars: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    vars.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// A cluster with the application's role and database seeded from
/// `fixtures/FIXTURE`, and a working directory for the test.
fn seeded(role: &str, db: &str, fixture: &str) -> (Cluster, tempfile::TempDir) {
    let cluster = Cluster::start();
    app_database(&cluster, role, db);
    cluster.load_fixture(db, fixture);
    let work = tempfile::Builder::new()
        .prefix(&format!("backup-test-{role}-"))
        .tempdir()
        .unwrap();
    (cluster, work)
}

/// The role and database an application owns, as its compose file makes
/// them (a superuser, like the postgres image's POSTGRES_USER).
fn app_database(cluster: &Cluster, role: &str, db: &str) {
    cluster.psql(
        "postgres",
        &format!("CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"),
    );
    cluster.psql("postgres", &format!("CREATE DATABASE {db} OWNER {role}"));
}

fn run(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let run = common::run_backup_with(config, args, env);
    assert!(run.ok(), "backup {args:?}: {}", run.all());
    run
}

const SHIOJIRI_DB: &str = "shiojiri_rainbow_seeker_production";
const NEAR_STATION: &str = "SELECT count(*) FROM rainbow_sightings WHERE ST_DWithin(location::geography, ST_SetSRID(ST_MakePoint(137.954, 36.115), 4326)::geography, 3000)";

#[test]
fn shiojiri_postgis_restores_with_clean_and_its_policies_keep_what_the_runbook_says() {
    let (cluster, _work) = seeded("shiojiri_rainbow_seeker", SHIOJIRI_DB, "shiojiri.sql");
    let endpoint = servers::s3_endpoint();
    let bucket = block_on(servers::create_bucket("shiojiri"));
    let config = example("shiojiri");
    let vars = [
        ("SHIOJIRI_DB_HOST", "127.0.0.1".to_owned()),
        ("SHIOJIRI_DB_PORT", cluster.port.to_string()),
        ("SHIOJIRI_S3_BUCKET", bucket.clone()),
        ("SHIOJIRI_S3_REGION", "us-east-1".to_owned()),
        ("SHIOJIRI_S3_ENDPOINT", endpoint.clone()),
        ("SHIOJIRI_DB_PASSWORD", PASSWORD.to_owned()),
        (
            "SHIOJIRI_S3_ACCESS_KEY_ID",
            servers::S3_ACCESS_KEY_ID.to_owned(),
        ),
        (
            "SHIOJIRI_S3_SECRET_ACCESS_KEY",
            servers::S3_SECRET_ACCESS_KEY.to_owned(),
        ),
    ];
    let env = env_of(&vars);
    run(&config, &["config", "check"], &env);

    // The 6-hourly backup, to S3.
    run(&config, &["run", "db"], &env);
    let near = cluster.psql(SHIOJIRI_DB, NEAR_STATION);
    assert_ne!(near, "0");
    let digests = cluster.table_digests(SHIOJIRI_DB);

    // Bad data, a lost spatial index; the runbook's restore: app stopped,
    // pg_restore --clean into production.
    cluster.psql(
        SHIOJIRI_DB,
        "DELETE FROM rainbow_sightings WHERE id % 2 = 0; DROP INDEX rainbow_sightings_location_idx",
    );
    run(
        &config,
        &[
            "restore",
            "--job",
            "db",
            "--latest",
            "--target-db",
            SHIOJIRI_DB,
            "--clean",
            "--yes",
        ],
        &env,
    );
    assert_eq!(cluster.table_digests(SHIOJIRI_DB), digests);
    assert_eq!(cluster.psql(SHIOJIRI_DB, NEAR_STATION), near);
    assert_eq!(
        cluster.psql(
            SHIOJIRI_DB,
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'rainbow_sightings_location_idx'"
        ),
        "CREATE INDEX rainbow_sightings_location_idx ON public.rainbow_sightings USING gist (location)"
    );

    // Monthly VACUUM ANALYZE; the quarterly restore test and DR drill.
    run(&config, &["run", "vacuum"], &env);
    let test = run(&config, &["run", "restore-check"], &env);
    for check in [
        "PostGIS answers",
        "sightings within 3 km of Shiojiri station",
    ] {
        assert!(test.stdout.contains(check), "{check}: {}", test.all());
    }
    let drill = run(&config, &["drill", "--job", "db"], &env);
    for expected in [
        "| Result | **PASSED** |",
        "| extension postgis |",
        &format!("| sightings within 3 km of Shiojiri station | >= 1 | {near} | passed |"),
    ] {
        assert!(
            drill.stdout.contains(expected),
            "{expected}: {}",
            drill.all()
        );
    }

    // "日次 30日" and "6時間毎 7日" over 40 days of 6-hourly backups.
    let storage = StorageSpec {
        name: "s3".into(),
        kind: StorageKind::S3({
            let mut spec = servers::s3_spec_at(&endpoint, &bucket, 5 << 20);
            spec.prefix = Some("postgres".into());
            spec
        }),
        retry: servers::test_retry(),
    };
    let storage = block_on(backup::storage::open(&storage)).unwrap();
    let now = jiff::Timestamp::now();
    let mut history = Vec::new();
    for i in 1..=160 {
        let at = now - jiff::SignedDuration::from_hours(6 * i);
        let id = BackupId::from_start(at, 0);
        let manifest = serde_json::json!({
            "format": 1, "id": id, "job": "db", "database": "production",
            "dbname": SHIOJIRI_DB, "server_version": "15", "pg_dump_version": "15",
            "snapshot_at": at, "started_at": at, "finished_at": at,
            "compression": "zstd", "encryption": null,
            "objects": [{"key": "data.dump.zst", "role": "data", "raw_size": 4,
                         "raw_sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                         "stored_size": 4, "stored_sha256": "0000000000000000000000000000000000000000000000000000000000000000"}],
            "tables": [], "warnings": [],
        });
        for (name, bytes) in [
            ("data.dump.zst", b"data".to_vec()),
            ("manifest.json", serde_json::to_vec(&manifest).unwrap()),
        ] {
            let key = Key::new(format!("db/{id}/{name}")).unwrap();
            block_on(backup::storage::write_small(storage.as_ref(), &key, &bytes)).unwrap();
        }
        history.push((id.to_string(), at));
    }
    let plan = run(
        &config,
        &["--json", "prune", "--job", "db", "--dry-run"],
        &env,
    );
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let kept: BTreeSet<String> = plan[0]["storages"][0]["plan"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan in {plan:#}"))
        .iter()
        .filter(|e| e["action"] == "keep")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let mut newest_of_day = BTreeSet::new();
    let mut days_seen = BTreeSet::new();
    for (id, at) in &history {
        // Newest first: the first of each day is its newest.
        if days_seen.insert(at.to_zoned(tokyo.clone()).date()) {
            newest_of_day.insert(id.clone());
        }
    }
    for (id, at) in &history {
        let age = now.duration_since(*at);
        // The 28 hours kept are the 28 newest backups: the real one made
        // above and the 27 newest here, whatever their day.
        let expected = if age < jiff::SignedDuration::from_hours(7 * 24) {
            true
        } else if age == jiff::SignedDuration::from_hours(7 * 24) {
            continue; // the 29th newest: kept only as the newest of its day
        } else if age < jiff::SignedDuration::from_hours(29 * 24) {
            newest_of_day.contains(id)
        } else if age > jiff::SignedDuration::from_hours(31 * 24) {
            false // past max_age
        } else {
            continue; // the edge of the 30th day depends on the clock
        };
        assert_eq!(kept.contains(id), expected, "{id} ({age:?} old): {plan:#}");
    }
}

#[test]
fn every_example_job_file_passes_config_check_as_shipped() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        // Every secret a file names, set to something.
        let text = std::fs::read_to_string(&path).unwrap();
        let names: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.split_once("_env = \""))
            .filter_map(|(_, rest)| rest.split('"').next().map(str::to_owned))
            .collect();
        // A URL must read as one (it is checked); nothing is sent by a check.
        let env: Vec<(&str, &str)> = names
            .iter()
            .map(|n| {
                let value = if n.ends_with("_URL") {
                    "https://hooks.example.com/x"
                } else {
                    "x"
                };
                (n.as_str(), value)
            })
            .collect();
        let run = run(&path, &["config", "check"], &env);
        assert!(run.stdout.contains("configuration OK"), "{}", run.all());
        checked += 1;
    }
    assert!(checked >= 1, "no job file in {}", dir.display());
}

/// The variables a job file takes secrets from (`*_env = "NAME"`), each
/// with its line.
fn secret_variables(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with('#'))
        .filter_map(|(i, l)| {
            let (_, rest) = l.split_once("_env = \"")?;
            Some((rest.split('"').next()?.to_owned(), i + 1))
        })
        .collect()
}

/// `backup ARGS` on `config` with none of `unset` in its environment.
fn run_without(config: &Path, args: &[&str], unset: &[(String, usize)]) -> Run {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backup"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("BACKUP_CONFIG")
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::null());
    for (name, _) in unset {
        command.env_remove(name);
    }
    Run::from(command.output().expect("run backup"))
}

#[test]
fn every_example_job_file_passes_config_check_with_no_secret_exported() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let vars = secret_variables(&std::fs::read_to_string(&path).unwrap());
        assert!(!vars.is_empty(), "{} names no secret", path.display());

        // Each secret that cannot be read here is a warning naming where.
        let run = run_without(&path, &["config", "check"], &vars);
        assert_eq!(run.code, 0, "{}", run.all());
        assert!(run.stdout.contains("configuration OK"), "{}", run.all());
        for (name, line) in &vars {
            let warning = format!(
                "environment variable {name} is not set ({}:{line})",
                path.display()
            );
            assert!(
                run.stderr
                    .lines()
                    .any(|l| l.starts_with("warning: [") && l.ends_with(&warning)),
                "{warning}: {}",
                run.all()
            );
        }

        // --strict: the same are errors, exit 3.
        let strict = run_without(&path, &["config", "check", "--strict"], &vars);
        assert_eq!(strict.code, 3, "{}", strict.all());
        assert!(
            !strict.stdout.contains("configuration OK"),
            "{}",
            strict.all()
        );
        for (name, _) in &vars {
            let error = format!("environment variable {name} is not set");
            assert!(
                strict
                    .stderr
                    .lines()
                    .any(|l| l.starts_with("error: [") && l.contains(&error)),
                "{error}: {}",
                strict.all()
            );
        }

        // --json carries them too.
        let json = run_without(&path, &["--json", "config", "check"], &vars);
        assert_eq!(json.code, 0, "{}", json.all());
        let out: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(out["ok"], true, "{out}");
        let warnings = out["warnings"].as_array().unwrap();
        assert_eq!(warnings.len(), vars.len(), "{out}");
        for (name, line) in &vars {
            let at = format!("{}:{line}", path.display());
            assert!(
                warnings.iter().any(|w| w["defined_at"] == at.as_str()
                    && w["message"].as_str().unwrap().contains(name.as_str())),
                "{name} at {at}: {out}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 1, "no job file in {}", dir.display());
}

/// The newest run record in `reports` whose name ends with `suffix`.
fn newest_record(reports: &Path, suffix: &str) -> serde_json::Value {
    let newest = std::fs::read_dir(reports)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .max()
        .unwrap_or_else(|| panic!("no *{suffix} in {}", reports.display()));
    serde_json::from_slice(&std::fs::read(newest).unwrap()).unwrap()
}

/// A child process killed if the test fails before it ends it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Rewrites backup `id`'s manifest in `storages` as if its data were as of `at`.
fn age_backup(storages: &[StorageSpec], job: &str, id: &str, at: jiff::Timestamp) {
    for spec in storages {
        let storage = block_on(backup::storage::open(spec)).unwrap();
        let key = Key::new(format!("{job}/{id}/manifest.json")).unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(
            &block_on(backup::storage::read_small(storage.as_ref(), &key, 1 << 20)).unwrap(),
        )
        .unwrap();
        for field in ["snapshot_at", "started_at", "finished_at"] {
            manifest[field] = serde_json::json!(at);
        }
        let bytes = serde_json::to_vec(&manifest).unwrap();
        block_on(backup::storage::write_small(storage.as_ref(), &key, &bytes)).unwrap();
    }
}

fn s3_storage(endpoint: &str, bucket: &str, prefix: &str) -> StorageSpec {
    let mut spec = servers::s3_spec_at(endpoint, bucket, 5 << 20);
    spec.prefix = Some(prefix.into());
    StorageSpec {
        name: "s3".into(),
        kind: StorageKind::S3(spec),
        retry: servers::test_retry(),
    }
}

#[test]
fn oneshot_checks_from_a_monitor_restores_latest_and_shows_growth() {
    let (cluster, work) = seeded("oneshot", "oneshot_db", "oneshot.sql");
    let endpoint = servers::s3_endpoint();
    let bucket = block_on(servers::create_bucket("oneshot"));
    let backups = work.path().join("backup/postgres");
    let config = example("oneshot");
    let vars = [
        ("ONESHOT_DB_HOST", "127.0.0.1".to_owned()),
        ("ONESHOT_DB_PORT", cluster.port.to_string()),
        ("ONESHOT_BACKUP_DIR", backups.display().to_string()),
        ("ONESHOT_S3_BUCKET", bucket.clone()),
        ("ONESHOT_S3_ENDPOINT", endpoint.clone()),
        ("ONESHOT_DB_PASSWORD", PASSWORD.to_owned()),
        (
            "ONESHOT_MINIO_ACCESS_KEY",
            servers::S3_ACCESS_KEY_ID.to_owned(),
        ),
        (
            "ONESHOT_MINIO_SECRET_KEY",
            servers::S3_SECRET_ACCESS_KEY.to_owned(),
        ),
    ];
    let env = env_of(&vars);
    let check = |expected: i32, says: &str| {
        let run = common::run_backup_with(&config, &["check", "--job", "nightly"], &env);
        assert_eq!(run.code, expected, "{}", run.all());
        assert!(run.stdout.contains(says), "{says}: {}", run.all());
    };
    check(2, "BACKUP CRITICAL - nightly: no complete backup");

    run(&config, &["run", "nightly"], &env);
    let listed = run(&config, &["--json", "list", "--job", "nightly"], &env);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let first = listed[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed[0]["storages"], serde_json::json!(["local", "minio"]));
    check(0, "BACKUP OK");

    // Three days without a backup: the monitor goes critical.
    let local = StorageSpec {
        name: "local".into(),
        kind: StorageKind::Local {
            path: backups.clone(),
        },
        retry: servers::test_retry(),
    };
    let three_days_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72);
    age_backup(
        &[local, s3_storage(&endpoint, &bucket, "postgres")],
        "nightly",
        &first,
        three_days_ago,
    );
    check(2, "BACKUP CRITICAL - nightly: newest backup");

    // The data grows; the next backup clears the alarm, and status reads
    // the growth off the history.
    cluster.psql(
        "oneshot_db",
        "INSERT INTO \"Shot\" (id, \"authorId\", title, \"createdAt\") \
         SELECT 'n' || i, 'u1', 'new ' || i, now() FROM generate_series(1, 5000) AS i",
    );
    run(&config, &["run", "nightly"], &env);
    check(0, "BACKUP OK");
    let status = run(&config, &["status", "--job", "nightly"], &env);
    let growth = status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("growth:"))
        .unwrap_or_else(|| panic!("no growth line: {}", status.all()));
    assert!(
        growth.contains(&format!("+5000 rows since {first} (3d")) && growth.contains("per 30 days"),
        "{growth}"
    );
    let json = run(&config, &["--json", "status", "--job", "nightly"], &env);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let g = &json["jobs"][0]["growth"];
    assert_eq!(
        g["rows"].as_i64().unwrap() - g["since_rows"].as_i64().unwrap(),
        5000,
        "{json:#}"
    );
    assert!(g["raw_size"].as_u64().unwrap() > g["since_raw_size"].as_u64().unwrap());

    // The runbook's restore: the latest backup into oneshot_db.
    let digests = cluster.table_digests("oneshot_db");
    cluster.psql("oneshot_db", "DELETE FROM \"Shot\"; DELETE FROM \"User\"");
    run(
        &config,
        &[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "oneshot_db",
            "--clean",
            "--yes",
        ],
        &env,
    );
    assert_eq!(cluster.table_digests("oneshot_db"), digests);
}

#[test]
fn shodo_rolls_back_to_a_moment_written_in_jst_and_keeps_the_evidence() {
    let (cluster, work) = seeded("shodo", "shodo", "shodo.sql");
    let backups = work.path().join("backup/postgres");
    let config = example("shodo");
    let vars = [
        ("SHODO_DB_HOST", "127.0.0.1".to_owned()),
        ("SHODO_DB_PORT", cluster.port.to_string()),
        ("SHODO_BACKUP_DIR", backups.display().to_string()),
        ("SHODO_DB_PASSWORD", PASSWORD.to_owned()),
    ];
    let env = env_of(&vars);

    // An older backup, a good write, backup.sh, then a bad write (a broken
    // rescoring job), then the next backup: the rollback must pick the middle one.
    run(&config, &["run", "hourly"], &env);
    std::thread::sleep(std::time::Duration::from_secs(1));
    cluster.psql(
        "shodo",
        "INSERT INTO audit_logs (actor, action, at) VALUES ('user:1', 'work.submit', now())",
    );
    run(&config, &["run", "hourly"], &env);
    let good = cluster.table_digests("shodo");
    std::thread::sleep(std::time::Duration::from_secs(2));
    cluster.psql(
        "shodo",
        "UPDATE evaluations SET score = 0, feedback = '{}'; \
         INSERT INTO audit_logs (actor, action, at) VALUES ('job:rescore', 'evaluations.rescore', now())",
    );
    run(&config, &["run", "hourly"], &env);
    let listed = run(&config, &["--json", "list", "--job", "hourly"], &env);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let (newer, older) = (&listed[0], &listed[1]);
    let older_id = older["id"].as_str().unwrap();
    let older_at: jiff::Timestamp = older["snapshot_at"].as_str().unwrap().parse().unwrap();
    let newer_at: jiff::Timestamp = newer["snapshot_at"].as_str().unwrap().parse().unwrap();

    // pitr-recovery.sh --timestamp="... JST" --confirm=yes: a moment between them.
    // Whole seconds, as an operator writes it.
    let between = jiff::Timestamp::from_second(older_at.as_second() + 1).unwrap();
    assert!(between < newer_at);
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let at = format!(
        "{} JST",
        between.to_zoned(tokyo).strftime("%Y-%m-%d %H:%M:%S")
    );
    let restore = run(
        &config,
        &[
            "restore",
            "--job",
            "hourly",
            "--at",
            &at,
            "--target-db",
            "shodo",
            "--clean",
            "--yes",
        ],
        &env,
    );
    assert!(restore.all().contains(older_id), "{}", restore.all());
    assert_eq!(
        cluster.table_digests("shodo"),
        good,
        "the state before the bad write"
    );

    // The evidence: a run record naming the backup, the moment asked for and the target.
    let reports = backups.join("hourly/reports");
    let record = newest_record(&reports, "-restore.json");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert_eq!(record["details"]["backup_id"], older_id, "{record:#}");
    assert_eq!(record["details"]["target_db"], "shodo", "{record:#}");
    let requested: jiff::Timestamp = record["details"]["requested_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(requested, between);

    // verify-data.sh.
    let verified = run(&config, &["run", "verify-data"], &env);
    assert!(
        verified.stdout.contains("every work has its evaluation"),
        "{}",
        verified.all()
    );
}

/// The rollback of the runbook (データベースロールバック（PITR）) through the
/// WAL archive: the cluster as it was at the second the operator names, not
/// the dump before it. PostgreSQL archives into the job file's `cluster` job
/// through the built binary, as postgres-primary-0 would; every command of
/// that job runs as the server's user, as its daemon would.
#[test]
fn shodo_rolls_the_cluster_back_to_the_second_through_its_wal_archive() {
    let a = Archiving::with(Options {
        push_job: Some("cluster"),
        // archive_command's environment: where the job file puts the storage.
        env: &[("SHODO_BACKUP_DIR", "@WORK@/backups")],
        ..Options::default()
    });
    // The job file as shipped, where the server's user reads it (a checkout
    // under a home directory is out of its reach): archive_command names it.
    std::fs::copy(example("shodo"), &a.config).unwrap();
    app_database(&a.cluster, "shodo", "shodo");
    a.cluster.load_fixture("shodo", "shodo.sql");
    let target = a.work.join("restored");
    let vars = [
        ("SHODO_DB_HOST", "127.0.0.1".to_owned()),
        ("SHODO_DB_PORT", a.cluster.port.to_string()),
        ("SHODO_BACKUP_DIR", a.backups.display().to_string()),
        ("SHODO_DB_PASSWORD", PASSWORD.to_owned()),
        // A physical job's run lock is a file of this host.
        (
            "BACKUP_LOCK_DIR",
            a.work.join("locks").display().to_string(),
        ),
    ];
    let env = env_of(&vars);
    let backup = |args: &[&str]| {
        let run = a.backup_with(args, &env);
        assert!(
            run.ok(),
            "backup {args:?}: {}\n{}",
            run.all(),
            a.cluster.log()
        );
        run
    };
    backup(&["config", "check"]);

    // The nightly base backup, then a day's writes.
    backup(&["run", "cluster"]);
    let listed = backup(&["--json", "list", "--job", "cluster"]);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let base_id = listed[0]["id"].as_str().unwrap().to_owned();
    a.cluster.psql(
        "shodo",
        "INSERT INTO audit_logs (actor, action, at) \
         SELECT 'user:' || i, 'work.submit', now() FROM generate_series(1, 200) AS i; \
         INSERT INTO evaluations (work_id, model, score, feedback, created_at) \
         SELECT id, 'shodo-eval-v3', 88, '{\"balance\": 9}', now() FROM works WHERE id <= 300",
    );
    let good = a.cluster.table_digests("shodo");
    let evaluations = a.cluster.psql("shodo", "SELECT count(*) FROM evaluations");

    // The moment on-call writes down, in whole seconds: after every write
    // above committed, before the bad one.
    let at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 1).unwrap();
    while jiff::Timestamp::now() < at + jiff::SignedDuration::from_secs(1) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // A broken cleanup job deletes most evaluations; the service writes on.
    a.cluster
        .psql("shodo", "DELETE FROM evaluations WHERE score < 90");
    a.cluster.psql(
        "shodo",
        "INSERT INTO audit_logs (actor, action, at) \
         SELECT 'user:' || i, 'work.submit.after', now() FROM generate_series(1, 50) AS i; \
         INSERT INTO users (email, name, created_at) VALUES ('late@shodo.example', '遅筆', now())",
    );
    // The segment holding it all reaches the archive (pg_switch_wal()).
    a.switch_and_wait();

    // pitr-recovery.sh --timestamp="<TIME> JST" --confirm=yes.
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let at_jst = format!("{} JST", at.to_zoned(tokyo).strftime("%Y-%m-%d %H:%M:%S"));
    let dir = target.to_str().unwrap();
    // The plan first: which base backup, what WAL; nothing written.
    let plan = backup(&[
        "restore",
        "--job",
        "cluster",
        "--at",
        &at_jst,
        "--target-dir",
        dir,
        "--dry-run",
    ]);
    assert!(plan.all().contains(&base_id), "{}", plan.all());
    assert!(!target.exists(), "a dry run wrote {}", target.display());
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let _server = StopOnDrop {
        cluster: &a.cluster,
        data: target.clone(),
    };
    let restore = backup(&[
        "--json",
        "restore",
        "--job",
        "cluster",
        "--at",
        &at_jst,
        "--target-dir",
        dir,
        "--start",
        "--port",
        &port.to_string(),
        // The runbook's rollback: the restored cluster becomes the primary.
        "--archive",
        "--yes",
    ]);
    let restored: serde_json::Value =
        serde_json::from_str(&restore.stdout).unwrap_or_else(|e| panic!("{e}: {}", restore.all()));
    assert_eq!(restored["port"], port, "{restored:#}");
    assert!(restored.to_string().contains(&base_id), "{restored:#}");

    // The restored server, as the application reaches it: every row written
    // before the moment, the delete and everything after it not.
    let restored_db = Remote {
        bindir: a.cluster.client_bindir(),
        url: format!("postgresql://shodo@127.0.0.1:{port}/shodo"),
    };
    assert_eq!(restored_db.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        restored_db.psql("SELECT count(*) FROM evaluations"),
        evaluations
    );
    assert_eq!(
        restored_db.psql("SELECT count(*) FROM audit_logs WHERE action = 'work.submit.after'"),
        "0"
    );
    assert_eq!(
        restored_db.table_digests(),
        good,
        "the cluster as it was at {at_jst}"
    );

    // The evidence: a run record under the job naming the backup.
    let record = newest_record(&a.backups.join("cluster/reports"), "-restore.json");
    assert_eq!(record["outcome"], "succeeded", "{record:#}");
    assert!(record.to_string().contains(&base_id), "{record:#}");
}

/// A server `backup restore --start` left running on a data directory:
/// stopped at the end of the test, whatever happened.
struct StopOnDrop<'a> {
    cluster: &'a Cluster,
    data: PathBuf,
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let data = self.data.to_str().unwrap_or_default();
            let _ = self
                .cluster
                .server_program("pg_ctl", &["-D", data, "-m", "immediate", "-w", "stop"]);
        }
    }
}

/// A database on a server the harness did not start, over TCP with the
/// harness's password, as an application connects.
struct Remote<'a> {
    bindir: &'a Path,
    url: String,
}

impl Remote<'_> {
    fn psql(&self, sql: &str) -> String {
        let out = std::process::Command::new(self.bindir.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url,
                "-c",
                sql,
            ])
            .env("PGPASSWORD", PASSWORD)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// [`Cluster::table_digests`], on this database.
    fn table_digests(&self) -> std::collections::BTreeMap<String, String> {
        let tables = self.psql("SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1");
        tables
            .lines()
            .map(|t| {
                let digest = self.psql(&format!("SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM {t} x"));
                (t.to_owned(), digest)
            })
            .collect()
    }
}

#[test]
fn rosterhub_restores_latest_with_four_jobs_and_answers_its_probes() {
    let (cluster, work) = seeded("rosterhub", "rosterhub", "rosterhub.sql");
    let config = example("rosterhub");
    let vars = [
        ("ROSTERHUB_DB_HOST", "127.0.0.1".to_owned()),
        ("ROSTERHUB_DB_PORT", cluster.port.to_string()),
        (
            "ROSTERHUB_BACKUP_DIR",
            work.path().join("backups").display().to_string(),
        ),
        ("ROSTERHUB_DB_PASSWORD", PASSWORD.to_owned()),
    ];
    let env = env_of(&vars);

    // The manual backup, then corruption; the runbook's restore and its check.
    run(&config, &["run", "nightly"], &env);
    let counts = |cluster: &Cluster| {
        (
            cluster.psql("rosterhub", "SELECT count(*) FROM users"),
            cluster.psql("rosterhub", "SELECT count(*) FROM orgs"),
        )
    };
    let before = counts(&cluster);
    let digests = cluster.table_digests("rosterhub");
    cluster.psql(
        "rosterhub",
        "DELETE FROM shifts WHERE user_id % 3 = 0; DELETE FROM users WHERE id % 3 = 0 AND role <> 'owner'; \
         UPDATE orgs SET plan = 'free'",
    );
    assert_ne!(counts(&cluster), before);
    let restore = run(
        &config,
        &[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "rosterhub",
            "--clean",
            "--jobs",
            "4",
            "--yes",
        ],
        &env,
    );
    assert!(restore.stdout.contains("tables match"), "{}", restore.all());
    let record = newest_record(
        &work.path().join("backups/nightly/reports"),
        "-restore.json",
    );
    assert_eq!(record["details"]["jobs"], 4, "{record:#}");
    assert_eq!(counts(&cluster), before);
    assert_eq!(cluster.table_digests("rosterhub"), digests);

    // The daemon, as the Deployment runs it: the probes the platform has.
    let (daemon, port) = common::start_daemon(&work.path().join("daemon.log"), |listen| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_backup"));
        command
            .arg("--config")
            .arg(&config)
            .args(["daemon", "--listen", listen])
            .envs(env.iter().copied())
            .env_remove("BACKUP_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        command
    });
    let mut daemon = KillOnDrop(daemon);
    let answers: Vec<(u16, String)> = ["/health/live", "/health/ready", "/health", "/metrics"]
        .iter()
        .map(|path| common::http_get(port, path).unwrap())
        .collect();
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let started = std::time::Instant::now();
    let stopped = loop {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed().as_secs() < 90, "the daemon did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    for (answer, path) in
        answers
            .iter()
            .zip(["/health/live", "/health/ready", "/health", "/metrics"])
    {
        assert_eq!(answer.0, 200, "{path}: {}", answer.1);
    }
    let health: serde_json::Value = serde_json::from_str(&answers[2].1).unwrap();
    let checked: Vec<&str> = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == true)
        .map(|c| c["what"].as_str().unwrap())
        .collect();
    assert_eq!(
        checked,
        ["storage backups", "database rosterhub"],
        "{health:#}"
    );
    assert!(
        answers[3]
            .1
            .contains("backup_last_success_timestamp_seconds{job=\"nightly\",type=\"backup\"}"),
        "{}",
        answers[3].1
    );
    assert!(stopped.success(), "{stopped:?}");
}

#[test]
fn camp_backend_backs_up_to_azure_tests_restores_and_keeps_its_maintenance_calendar() {
    let cluster = Cluster::start();
    cluster.create_db("camp_backend_db");
    cluster.load_fixture("camp_backend_db", "camp-backend.sql");
    let container = block_on(servers::create_container("camp"));
    let work = tempfile::Builder::new()
        .prefix("backup-test-camp-")
        .tempdir()
        .unwrap();
    let config = example("camp-backend");
    let vars = camp_env(&container, work.path());
    let mut vars = vars.to_vec();
    vars.push(("CAMP_DB_URL", cluster.url("camp_backend_db")));
    let env = env_of(&vars);

    // The calendar of 7.2 and 7.3, as the daemon will keep it.
    let checked = run(&config, &["--json", "config", "check"], &env);
    let jobs: serde_json::Value = serde_json::from_str(&checked.stdout).unwrap();
    let next = |name: &str| -> Vec<String> {
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["job"] == name)
            .unwrap_or_else(|| panic!("no job {name}"))["next_runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    for run in next("restore-test") {
        assert!(run.contains(" Wed 10:00:00 +09:00"), "{run}");
    }
    for run in next("vacuum-full") {
        let day: u32 = run[8..10].parse().unwrap();
        assert!(
            run.contains(" Sat 01:00:00 +09:00") && day <= 7,
            "not a first Saturday: {run}"
        );
    }

    // The hourly (and daily) backup to the container, then the weekly restore
    // test into camp_backend_db_restore_test with its counts.
    run(&config, &["run", "db"], &env);
    let blobs = block_on(servers::container_blobs_under(
        &container,
        "camp_backend_db",
    ));
    assert!(
        blobs
            .iter()
            .any(|b| b.starts_with("camp_backend_db/db/") && b.ends_with("/manifest.json")),
        "{blobs:?}"
    );
    let test = run(&config, &["run", "restore-test"], &env);
    for expected in [
        "camp_backend_db_restore_test",
        "ok     tables in schema public: expected >= 3, found 3",
        "ok     users: expected >= 1, found 3000",
        "ok     projects: expected >= 1, found 1200",
        "ok     project_members: expected >= 1, found 6000",
        "scratch database dropped",
    ] {
        assert!(test.stdout.contains(expected), "{expected}: {}", test.all());
    }
    let databases = cluster.databases();
    assert!(
        !databases.iter().any(|d| d.contains("restore_test")),
        "{databases:?}"
    );

    // The maintenance jobs run, each leaving its record.
    for job in ["vacuum", "vacuum-full", "reindex"] {
        run(&config, &["run", job], &env);
    }
    let blobs = block_on(servers::container_blobs_under(
        &container,
        "camp_backend_db",
    ));
    for job in ["vacuum", "vacuum-full", "reindex"] {
        assert!(
            blobs.iter().any(
                |b| b.starts_with(&format!("camp_backend_db/{job}/reports/"))
                    && b.ends_with("-maintenance.json")
            ),
            "{job}: {blobs:?}"
        );
    }

    // restore-database.sh: over the live database, without owners and grants.
    let digests = cluster.table_digests("camp_backend_db");
    cluster.psql("camp_backend_db", "DELETE FROM project_members");
    run(
        &config,
        &[
            "restore",
            "--job",
            "db",
            "--latest",
            "--target-db",
            "camp_backend_db",
            "--clean",
            "--no-owner",
            "--no-acl",
            "--yes",
        ],
        &env,
    );
    assert_eq!(cluster.table_digests("camp_backend_db"), digests);
}

/// What a tree holds, as a restore must bring it back: every entry's kind,
/// permission bits and mtime, with a file's bytes or a link's target.
fn tree_state(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let what = if meta.is_symlink() {
                format!("link -> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                todo.push(path.clone());
                format!("dir {:o} {}", meta.mode() & 0o7777, meta.mtime())
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap();
                format!(
                    "file {:o} {} {} {}",
                    meta.mode() & 0o7777,
                    meta.mtime(),
                    bytes.len(),
                    backup::archive::sha256_hex(&bytes)
                )
            } else {
                "other".to_owned()
            };
            out.insert(name, what);
        }
    }
    out
}

fn set_mtime(path: &Path, secs: u64) {
    let times = std::fs::FileTimes::new()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    std::fs::File::open(path).unwrap().set_times(times).unwrap();
}

/// camp-backend's storage and directories at the test's Azurite and under `work`.
fn camp_env(container: &str, work: &Path) -> [(&'static str, String); 7] {
    [
        ("CAMP_STORAGE_ACCOUNT", servers::AZURE_ACCOUNT.to_owned()),
        ("CAMP_STORAGE_ENDPOINT", servers::azure_endpoint()),
        ("CAMP_STORAGE_CONTAINER", container.to_owned()),
        (
            "CAMP_UPLOADS_BACKUP_DIR",
            work.join("var/backups/uploads").display().to_string(),
        ),
        (
            "CAMP_UPLOADS_DIR",
            work.join("srv/uploads").display().to_string(),
        ),
        ("CAMP_DB_PASSWORD", PASSWORD.to_owned()),
        ("CAMP_STORAGE_KEY", servers::AZURE_KEY.to_owned()),
    ]
}

/// camp-backend's uploads (2.4.2 backup-local-storage.sh, a tar.gz of the
/// directory daily), as its `type = "files"` job: to the runbook's disk and
/// to the Azure container, verified, restored by time and as it was.
#[test]
fn camp_backend_uploads_back_up_to_disk_and_azure_and_come_back_as_they_were() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let container = block_on(servers::create_container("uploads"));
    let work = tempfile::Builder::new()
        .prefix("backup-test-uploads-")
        .tempdir()
        .unwrap();
    let uploads = work.path().join("srv/uploads");
    let disk = work.path().join("var/backups/uploads");
    let config = example("camp-backend");
    let locks = work.path().join("locks");
    let mut vars = camp_env(&container, work.path()).to_vec();
    vars.push(("BACKUP_LOCK_DIR", locks.display().to_string()));
    let env = env_of(&vars);

    // What users uploaded: nested directories, a private file, an
    // executable, a large file, a link inside the tree and one out of it
    // (stored as a link, never followed), an empty directory, and a FIFO,
    // which is left out and named.
    std::fs::create_dir_all(uploads.join("projects/42/attachments")).unwrap();
    std::fs::create_dir_all(uploads.join("avatars")).unwrap();
    std::fs::create_dir_all(uploads.join("tmp")).unwrap();
    std::fs::write(uploads.join("avatars/u1.png"), b"\x89PNG fake avatar").unwrap();
    std::fs::write(
        uploads.join("projects/42/attachments/spec.pdf"),
        b"%PDF-1.7",
    )
    .unwrap();
    let large: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(uploads.join("projects/42/attachments/video.bin"), &large).unwrap();
    std::fs::write(uploads.join("projects/42/private.txt"), "only the app").unwrap();
    std::fs::set_permissions(
        uploads.join("projects/42/private.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(uploads.join("convert.sh"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        uploads.join("convert.sh"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    symlink("../avatars/u1.png", uploads.join("projects/42/owner.png")).unwrap();
    symlink("/etc/hostname", uploads.join("hostname")).unwrap();
    let fifo = std::ffi::CString::new(uploads.join("tmp/pipe").display().to_string()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    for (i, file) in [
        "avatars/u1.png",
        "projects/42/attachments/spec.pdf",
        "projects/42/attachments/video.bin",
        "projects/42/private.txt",
        "convert.sh",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&uploads.join(file), 1_700_000_000 + i as u64 * 86_400);
    }
    set_mtime(&uploads.join("projects/42/attachments"), 1_690_000_000);
    let mut before = tree_state(&uploads);
    before.remove("tmp/pipe");

    run(&config, &["config", "check"], &env);
    let first = run(&config, &["--json", "run", "uploads"], &env);
    let listed = run(&config, &["--json", "list", "--job", "uploads"], &env);
    let backups: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(backups.len(), 1, "{}", listed.all());
    let id = backups[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        backups[0]["directory"],
        uploads.display().to_string(),
        "{}",
        listed.all()
    );
    let storages: Vec<&str> = backups[0]["storages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(storages, ["uploads-disk", "blob"], "{}", first.all());
    let warnings = backups[0]["warnings"].to_string();
    assert!(warnings.contains("tmp/pipe"), "{warnings}");
    // One tar object and the manifest, in both places.
    let on_disk = disk.join("uploads").join(&id);
    assert!(on_disk.join("files.tar.zst").is_file(), "{}", first.all());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(on_disk.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["tree"]["files"], 5, "{manifest}");
    assert_eq!(manifest["tree"]["symlinks"], 2, "{manifest}");
    assert_eq!(manifest["objects"][0]["role"], "files", "{manifest}");
    let blobs = block_on(servers::container_blobs_under(
        &container,
        "camp_backend_db",
    ));
    for name in ["files.tar.zst", "manifest.json"] {
        let blob = format!("camp_backend_db/uploads/{id}/{name}");
        assert!(blobs.contains(&blob), "{blob}: {blobs:?}");
    }

    // Every entry read back from both storages.
    let verified = run(
        &config,
        &["--json", "verify", "--job", "uploads", "--latest"],
        &env,
    );
    let checks: serde_json::Value = serde_json::from_str(&verified.stdout).unwrap();
    assert_eq!(checks["ok"], true, "{}", verified.all());
    let checks = checks["backups"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{}", verified.all());
    for check in checks {
        let object = &check["objects"][0];
        assert!(object["error"].is_null(), "{check}");
        // 5 files, 5 directories (tmp among them), 2 links.
        assert_eq!(object["archive_entries"], 12, "{check}");
    }

    // A second day: a new upload, a changed one.
    // `--at` is written to the second, as people write it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = jiff::Timestamp::now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(uploads.join("avatars/u2.png"), "a new avatar").unwrap();
    std::fs::write(uploads.join("projects/42/private.txt"), "edited").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run(&config, &["run", "uploads"], &env);

    // restore --at the first day into a new directory: the tree as it was,
    // with modes, times and links.
    let at = between
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap())
        .strftime("%Y-%m-%d %H:%M:%S JST")
        .to_string();
    let restored = work.path().join("restored");
    let out = run(
        &config,
        &[
            "restore",
            "--job",
            "uploads",
            "--at",
            &at,
            "--target-dir",
            restored.to_str().unwrap(),
            "--yes",
        ],
        &env,
    );
    assert!(
        out.stderr.contains(&format!("selected backup {id}")),
        "{}",
        out.all()
    );
    assert_eq!(tree_state(&restored), before);
    assert!(
        std::fs::symlink_metadata(restored.join("hostname"))
            .unwrap()
            .is_symlink()
    );
    // The restore's run record names the backup and the directory.
    let record = newest_record(&disk.join("uploads/reports"), "-restore.json");
    assert_eq!(record["details"]["backup_id"], id.as_str(), "{record}");
    assert_eq!(
        record["details"]["target_dir"],
        restored.display().to_string(),
        "{record}"
    );

    // A directory that is not empty is refused, and nothing is written.
    let latest = [
        "restore",
        "--job",
        "uploads",
        "--latest",
        "--target-dir",
        restored.to_str().unwrap(),
        "--yes",
    ];
    let refused = common::run_backup_with(&config, &latest, &env);
    assert_eq!(refused.code, 9, "{}", refused.all());
    assert!(refused.stderr.contains("is not empty"), "{}", refused.all());
    assert!(refused.stderr.contains("--force"), "{}", refused.all());
    assert_eq!(tree_state(&restored), before);
    // --in-place writes the latest backup into it: the changed file replaced,
    // the new one added, a file of the target's own kept. (--force replaces
    // the whole directory once the restored copy checks out: tests/it/restore_swap.rs.)
    std::fs::write(restored.join("notes.txt"), "mine").unwrap();
    let mut forced = latest.to_vec();
    forced.extend(["--force", "--in-place"]);
    // A directory where the backup has a file stops it, and the error is
    // that, not the broken pipe behind it; the hint says the target is partial.
    std::fs::create_dir(restored.join("avatars/u2.png")).unwrap();
    let blocked = common::run_backup_with(&config, &forced, &env);
    assert_ne!(blocked.code, 0, "{}", blocked.all());
    assert!(
        blocked.stderr.contains("cannot restore avatars/u2.png")
            && !blocked.stderr.contains("broken pipe")
            && blocked.stderr.contains("may now hold part of the backup"),
        "{}",
        blocked.all()
    );
    std::fs::remove_dir(restored.join("avatars/u2.png")).unwrap();
    run(&config, &forced, &env);
    assert_eq!(
        std::fs::read_to_string(restored.join("projects/42/private.txt")).unwrap(),
        "edited"
    );
    assert!(restored.join("avatars/u2.png").is_file());
    assert_eq!(
        std::fs::read_to_string(restored.join("notes.txt")).unwrap(),
        "mine"
    );

    // A damaged copy on disk: verify names it and exits 6, and a restore
    // from it fails rather than leaving a tree that looks whole.
    let latest_id = {
        let listed = run(&config, &["--json", "list", "--job", "uploads"], &env);
        let backups: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
        backups[0]["id"].as_str().unwrap().to_owned()
    };
    let tar = disk.join("uploads").join(&latest_id).join("files.tar.zst");
    let mut bytes = std::fs::read(&tar).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&tar, &bytes).unwrap();
    let bad = common::run_backup_with(
        &config,
        &["verify", "--job", "uploads", "--id", &latest_id],
        &env,
    );
    assert_eq!(bad.code, 6, "{}", bad.all());
    assert!(bad.all().contains("files.tar.zst"), "{}", bad.all());
    let broken = common::run_backup_with(
        &config,
        &[
            "restore",
            "--job",
            "uploads",
            "--latest",
            "--storage",
            "uploads-disk",
            "--target-dir",
            work.path().join("from-bad-copy").to_str().unwrap(),
            "--yes",
        ],
        &env,
    );
    assert_eq!(broken.code, 6, "{}", broken.all());
    // The good copy in the container still restores.
    let from_blob = work.path().join("from-blob");
    run(
        &config,
        &[
            "restore",
            "--job",
            "uploads",
            "--latest",
            "--storage",
            "blob",
            "--target-dir",
            from_blob.to_str().unwrap(),
            "--yes",
        ],
        &env,
    );
    assert_eq!(
        std::fs::read_to_string(from_blob.join("avatars/u2.png")).unwrap(),
        "a new avatar"
    );

    // Retention is the runbook's 30 days with a week kept: both stay.
    let plan = run(&config, &["prune", "--job", "uploads", "--dry-run"], &env);
    assert_eq!(plan.stdout.matches("  keep ").count(), 4, "{}", plan.all());
    assert!(!plan.stdout.contains("  delete "), "{}", plan.all());

    // The run lock of a files job is a lock file of the host: while another
    // process holds it, a second run is refused, and prune keeps even an
    // old incomplete backup, which that run may be writing.
    let stale = disk.join("uploads/20200101T000000Z");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("files.tar.zst"), "partial").unwrap();
    let held = hold_lock_file(&locks.join("uploads.lock"));
    let second = common::run_backup_with(&config, &["run", "uploads"], &env);
    assert_eq!(second.code, 9, "{}", second.all());
    assert!(
        second.stderr.contains("is running this job"),
        "{}",
        second.all()
    );
    let plan = run(&config, &["prune", "--job", "uploads", "--dry-run"], &env);
    assert!(
        plan.stdout.contains("a run of the job is going on"),
        "{}",
        plan.all()
    );
    drop(held);
    let plan = run(&config, &["prune", "--job", "uploads", "--dry-run"], &env);
    assert!(
        plan.stdout.contains("  delete 20200101T000000Z"),
        "{}",
        plan.all()
    );
}

/// Holds the open-file-description lock a files job's run takes on `path`.
fn hold_lock_file(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    assert_eq!(
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut lock) },
        0
    );
    file
}
