//! The five systems of ../shared/SCENARIOS.md, each run from its example job
//! file (jobs/examples/) against a throwaway PostgreSQL seeded with its
//! fixture, asserting what its runbook checks by hand today.
//!
//! A job file is used as shipped, but for where its servers are: the test
//! points the database url and the storages at the test's own servers.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use backup::model::{BackupId, StorageKind, StorageSpec};
use backup::storage::Key;
use common::servers::{self, block_on};
use common::{Cluster, PASSWORD, Run};

/// `jobs/examples/NAME.toml`, with each `(from, to)` replaced (each `from`
/// must be there), written into `dir`.
fn example(name: &str, dir: &Path, replace: &[(&str, String)]) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("jobs/examples")
        .join(format!("{name}.toml"));
    let mut text = std::fs::read_to_string(&source).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{from} is not in {}", source.display());
        text = text.replace(from, to);
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
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
    let (cluster, work) = seeded("shiojiri_rainbow_seeker", SHIOJIRI_DB, "shiojiri.sql");
    let endpoint = servers::s3_endpoint();
    let bucket = block_on(servers::create_bucket("shiojiri"));
    let config = example(
        "shiojiri",
        work.path(),
        &[
            ("@db:5432/", format!("@127.0.0.1:{}/", cluster.port)),
            ("shiojiri-rainbow-seeker-backups", bucket.clone()),
            (
                "region = \"ap-northeast-1\"",
                format!("region = \"us-east-1\"\nendpoint = \"{endpoint}\"\npath_style = true"),
            ),
        ],
    );
    let env = [
        ("SHIOJIRI_DB_PASSWORD", PASSWORD),
        ("SHIOJIRI_S3_ACCESS_KEY_ID", servers::S3_ACCESS_KEY_ID),
        (
            "SHIOJIRI_S3_SECRET_ACCESS_KEY",
            servers::S3_SECRET_ACCESS_KEY,
        ),
    ];
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
                         "raw_sha256": "00", "stored_size": 4, "stored_sha256": "00"}],
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
        let env: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "x")).collect();
        let run = run(&path, &["config", "check"], &env);
        assert!(run.stdout.contains("configuration OK"), "{}", run.all());
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
    let config = example(
        "oneshot",
        work.path(),
        &[
            ("@postgres:5432/", format!("@127.0.0.1:{}/", cluster.port)),
            ("/backup/postgres", backups.display().to_string()),
            ("oneshot-backups", bucket.clone()),
            ("http://minio:9000", endpoint.clone()),
        ],
    );
    let env = [
        ("ONESHOT_DB_PASSWORD", PASSWORD),
        ("ONESHOT_MINIO_ACCESS_KEY", servers::S3_ACCESS_KEY_ID),
        ("ONESHOT_MINIO_SECRET_KEY", servers::S3_SECRET_ACCESS_KEY),
    ];
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
    let config = example(
        "shodo",
        work.path(),
        &[
            (
                "@postgres-primary.shodo.svc.cluster.local:5432/",
                format!("@127.0.0.1:{}/", cluster.port),
            ),
            ("/backup/postgres", backups.display().to_string()),
        ],
    );
    let env = [("SHODO_DB_PASSWORD", PASSWORD)];

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

#[test]
fn rosterhub_restores_latest_with_four_jobs_and_answers_its_probes() {
    let (cluster, work) = seeded("rosterhub", "rosterhub", "rosterhub.sql");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = example(
        "rosterhub",
        work.path(),
        &[
            (
                "@postgres.rosterhub.svc.cluster.local:5432/",
                format!("@127.0.0.1:{}/", cluster.port),
            ),
            (
                "path = \"/backups\"",
                format!("path = \"{}\"", work.path().join("backups").display()),
            ),
            ("0.0.0.0:9187", format!("127.0.0.1:{port}")),
        ],
    );
    let env = [("ROSTERHUB_DB_PASSWORD", PASSWORD)];

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
    let mut daemon = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_backup"))
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .envs(env)
            .env_remove("BACKUP_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = std::time::Instant::now();
    while common::http_get(port, "/health/live").is_none() {
        assert!(
            started.elapsed().as_secs() < 30,
            "the daemon did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let answers: Vec<(u16, String)> = ["/health/live", "/health/ready", "/health", "/metrics"]
        .iter()
        .map(|path| common::http_get(port, path).unwrap())
        .collect();
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
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
    let endpoint = servers::azure_endpoint();
    let container = block_on(servers::create_container("camp"));
    let work = tempfile::Builder::new()
        .prefix("backup-test-camp-")
        .tempdir()
        .unwrap();
    let url_line = "url = \"postgresql://postgres@camp-backend-prod-db.postgres.database.azure.com:5432/camp_backend_db?sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt\"";
    let config = example(
        "camp-backend",
        work.path(),
        &[
            (
                url_line,
                format!("url = \"{}\"", cluster.url("camp_backend_db")),
            ),
            (
                "account = \"campbackendstorage\"",
                format!(
                    "account = \"{}\"\nendpoint = \"{endpoint}\"",
                    servers::AZURE_ACCOUNT
                ),
            ),
            (
                "container = \"database-backups\"",
                format!("container = \"{container}\""),
            ),
        ],
    );
    let env = [
        ("CAMP_DB_PASSWORD", PASSWORD),
        ("CAMP_STORAGE_KEY", servers::AZURE_KEY),
    ];

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
