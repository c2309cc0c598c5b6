//! End to end against a real PostgreSQL: back up, list, restore, and the ways
//! each can go wrong. Every test starts its own cluster (tests/it/common).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{self, Cluster, Setup};

fn backup_ok(setup: &Setup) -> String {
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let listed = setup.list();
    listed[0]["id"].as_str().unwrap().to_owned()
}

fn restore(setup: &Setup, args: &[&str]) -> common::Run {
    let mut all = vec!["restore", "--job", "nightly"];
    all.extend_from_slice(args);
    setup.backup(&all)
}

#[test]
fn backup_then_restore_reproduces_every_table_and_definition() {
    let setup = Setup::new("", "");
    let id = backup_ok(&setup);

    let files = setup.stored_files();
    for name in ["data.dump.zst", "globals.sql.zst", "manifest.json"] {
        assert!(files.contains(&format!("nightly/{id}/{name}")), "{files:?}");
    }
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("nightly/reports/") && f.ends_with("-backup.json")),
        "{files:?}"
    );

    let manifest = setup.manifest(&id);
    assert_eq!(manifest["format"], 1);
    assert_eq!(manifest["compression"], "zstd");
    let rows = |schema: &str, name: &str| {
        manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["schema"] == schema && t["name"] == name)
            .map(|t| t["rows"].as_i64().unwrap())
    };
    assert_eq!(rows("app", "events"), Some(120_000));
    assert_eq!(rows("app", "users"), Some(5_000));
    assert_eq!(rows("billing", "invoices_2023"), Some(428));
    assert_eq!(rows("Audit Log", "Entries"), Some(2));
    assert_eq!(
        rows("billing", "invoices"),
        None,
        "a partitioned parent is counted through its partitions"
    );

    // Roles travel in globals.sql.
    let globals = setup.globals(&id);
    assert!(globals.contains("CREATE ROLE app_reader"), "{globals}");

    let source = setup.cluster.table_digests("app");
    assert!(source.len() >= 6, "{source:?}");
    for (target, jobs) in [("restored", "1"), ("restored_parallel", "4")] {
        let run = restore(&setup, &["--latest", "--target-db", target, "--jobs", jobs]);
        assert!(run.ok(), "{}", run.all());
        assert!(
            run.stdout.contains("match the backup's row counts"),
            "{}",
            run.all()
        );
        assert_eq!(
            setup.cluster.table_digests(target),
            source,
            "table contents differ after --jobs {jobs}"
        );
        assert_eq!(
            setup.cluster.schema_dump(target),
            setup.cluster.schema_dump("app"),
            "definitions differ"
        );
    }
    let seq = setup
        .cluster
        .psql("restored", "SELECT last_value FROM billing.invoice_number");
    assert_eq!(seq, "1800");
    // The spool file of --jobs 4 went to $TMPDIR and is gone.
    assert_eq!(
        setup.temp_files(),
        Vec::<String>::new(),
        "spool files left behind"
    );
}

#[test]
fn gzip_and_uncompressed_backups_restore_too() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    cluster.psql(
        "app",
        "CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g",
    );
    let source = cluster.table_digests("app");
    let gzip = Setup::with_cluster(cluster, "", "compression = \"gzip\"");
    let id = backup_ok(&gzip);
    assert!(
        gzip.stored_files()
            .contains(&format!("nightly/{id}/data.dump.gz"))
    );
    let run = restore(&gzip, &["--id", &id, "--target-db", "from_gzip"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(gzip.cluster.table_digests("from_gzip"), source);

    let plain = Setup::with_cluster(gzip.cluster, "", "compression = \"none\"");
    let id = backup_ok(&plain);
    assert!(
        plain
            .stored_files()
            .contains(&format!("nightly/{id}/data.dump"))
    );
    let run = restore(&plain, &["--latest", "--target-db", "from_plain"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(plain.cluster.table_digests("from_plain"), source);
}

#[test]
fn writes_during_the_backup_keep_parity_with_the_manifest() {
    let setup = Setup::new("", "");
    let c = &setup.cluster;
    c.psql("app", "CREATE TABLE app.ticks (id bigserial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp(), pad text)");
    let script = setup.work.path().join("insert.sql");
    std::fs::write(&script, "INSERT INTO app.ticks (pad) SELECT repeat('x', 200) FROM generate_series(1, 20);\nUPDATE app.users SET bio = md5(random()::text) WHERE id = 1 + (random() * 4999)::int;\n").unwrap();
    let mut writer = std::process::Command::new(c.client_bindir().join("pgbench"))
        .args([
            "-n",
            "-c",
            "2",
            // Outlasts the backup however slow the machine; killed after it.
            "-T",
            "300",
            "-f",
            script.to_str().unwrap(),
            &c.url("app"),
        ])
        .env("PGPASSWORD", common::PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgbench");
    // Let the writers get going before the snapshot.
    let started = std::time::Instant::now();
    while c.psql("app", "SELECT count(*) FROM app.ticks") == "0" && started.elapsed().as_secs() < 10
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let run = setup.backup(&["run", "nightly"]);
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let manifest = setup.manifest(&id);
    assert_eq!(manifest["rows_from"], "archive", "{manifest:#}");
    let in_manifest = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ticks")
        .unwrap()["rows"]
        .as_i64()
        .unwrap();
    let now: i64 = c
        .psql("app", "SELECT count(*) FROM app.ticks")
        .parse()
        .unwrap();
    assert!(
        in_manifest > 0 && in_manifest < now,
        "writes ran during the backup: {in_manifest} in the manifest, {now} now"
    );

    // The restore compares every table with the manifest and fails on any difference.
    let run = restore(&setup, &["--latest", "--target-db", "restored"]);
    assert!(run.ok(), "{}", run.all());
    let restored: i64 = c
        .psql("restored", "SELECT count(*) FROM app.ticks")
        .parse()
        .unwrap();
    assert_eq!(restored, in_manifest);
}

#[test]
fn restore_at_picks_the_newest_backup_not_after_the_time() {
    let setup = Setup::new("", "");
    let first = backup_ok(&setup);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    setup.cluster.psql(
        "app",
        "INSERT INTO \"Audit Log\".\"Entries\" VALUES ('after the first backup', now())",
    );
    let second = backup_ok(&setup);
    assert_ne!(first, second);

    let snapshot = |id: &str| {
        setup.manifest(id)["snapshot_at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    };
    let (t1, t2) = (snapshot(&first), snapshot(&second));
    // A whole second after the first snapshot and before the second.
    let between = jiff::Timestamp::from_second(t1.as_second() + 1).unwrap();
    assert!(t1 < between && between < t2, "{t1} {between} {t2}");
    let tokyo = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let local = between
        .to_zoned(tokyo.clone())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let utc = between
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();

    let run = restore(
        &setup,
        &["--at", &format!("{local} JST"), "--target-db", "at_between"],
    );
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stderr.contains(&format!("selected backup {first}")),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("before the requested"), "{}", run.all());
    assert_eq!(
        setup.cluster.psql(
            "at_between",
            "SELECT count(*) FROM \"Audit Log\".\"Entries\""
        ),
        "2"
    );

    // Every documented form of the same instant selects the same backup.
    for at in [
        format!("{local} +09:00"),
        format!("{local} Asia/Tokyo"),
        local.clone(),
        format!("{utc} UTC"),
        between.to_string(),
    ] {
        let run = restore(
            &setup,
            &["--at", &at, "--target-db", "never_created", "--dry-run"],
        );
        assert!(run.ok(), "{at}: {}", run.all());
        assert!(
            run.stderr.contains(&format!("selected backup {first}")),
            "{at}: {}",
            run.all()
        );
        assert!(
            run.stdout.contains("dry run: nothing was changed"),
            "{}",
            run.all()
        );
    }
    assert_eq!(
        setup.cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'never_created'"
        ),
        "0"
    );

    let before = jiff::Timestamp::from_second(t1.as_second() - 3600)
        .unwrap()
        .to_string();
    let run = restore(&setup, &["--at", &before, "--target-db", "too_early"]);
    assert_eq!(run.code, 7, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("the oldest is {first}")),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("hint:"), "{}", run.all());
}

#[test]
fn a_flipped_byte_in_the_archive_fails_the_restore_and_names_the_object() {
    let setup = Setup::new("", "");
    let id = backup_ok(&setup);
    let path = setup
        .backups
        .join("nightly")
        .join(&id)
        .join("data.dump.zst");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();

    for jobs in ["1", "3"] {
        let target = format!("corrupt_{jobs}");
        let run = restore(
            &setup,
            &["--latest", "--target-db", &target, "--jobs", jobs],
        );
        assert_eq!(run.code, 6, "{}", run.all());
        assert!(
            run.stderr.contains(&format!("nightly/{id}/data.dump.zst")),
            "{}",
            run.all()
        );
        assert!(run.stderr.contains("is corrupt"), "{}", run.all());
        // The copy was restored under a name of its own and dropped: the
        // target never appeared.
        assert!(
            run.stderr
                .contains(&format!("database {target} was not created")),
            "{}",
            run.all()
        );
        assert!(!setup.cluster.databases().contains(&target));
    }
    assert!(
        setup
            .cluster
            .databases()
            .iter()
            .all(|d| !d.contains("__restoring_")),
        "{:?}",
        setup.cluster.databases()
    );
    assert_eq!(
        setup.temp_files(),
        Vec::<String>::new(),
        "a failed restore left its spool file"
    );
}

/// A `pg_dump` that streams part of a dump and is then killed.
fn dying_pg_dump(dir: &Path, bindir: &Path) {
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\n{real} \"$@\" | head -c 200000\nkill -9 $$\n",
        real = bindir.join("pg_dump").display()
    );
    common::fake_pg_dump(dir, bindir, &script);
}

#[test]
fn a_killed_pg_dump_fails_the_run_and_leaves_nothing_listed() {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let wrappers = cluster.dir.path().join("wrappers");
    dying_pg_dump(&wrappers, cluster.client_bindir());
    let setup = Setup::with_cluster(
        cluster,
        &format!("pg_bin_dir = \"{}\"", wrappers.display()),
        "",
    );
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 8, "{}", run.all());
    assert!(
        run.stderr.contains("pg_dump was killed by signal 9"),
        "{}",
        run.all()
    );
    assert!(setup.list().is_empty());
    let files = setup.stored_files();
    assert!(
        files.iter().all(|f| f.starts_with("nightly/reports/")),
        "only the run record may remain: {files:?}"
    );
    let record = std::fs::read_to_string(setup.backups.join(&files[0])).unwrap();
    assert!(record.contains("\"succeeded\": false"), "{record}");
}

#[test]
fn a_pg_dump_older_than_the_server_is_refused_with_a_hint() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    let old = cluster.dir.path().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("pg_dump"),
        "#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n",
    )
    .unwrap();
    std::fs::set_permissions(old.join("pg_dump"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let setup = Setup::with_cluster(cluster, &format!("pg_bin_dir = \"{}\"", old.display()), "");
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 8, "{}", run.all());
    assert!(
        run.stderr.contains("is version 9, older than the server"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("hint: install postgresql-client-"),
        "{}",
        run.all()
    );
}

#[test]
fn an_existing_non_empty_target_is_refused_without_clean_and_left_untouched() {
    let setup = Setup::new("", "");
    backup_ok(&setup);
    let c = &setup.cluster;
    c.create_db("precious");
    c.psql("precious", "CREATE TABLE app_data (id int, note text); INSERT INTO app_data VALUES (1, 'keep me'), (2, 'me too')");
    let before = c.table_digests("precious");

    let run = restore(&setup, &["--latest", "--target-db", "precious"]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr
            .contains("database precious exists and is not empty"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("nothing was changed"), "{}", run.all());
    assert!(
        run.stderr.contains("hint:") && run.stderr.contains("--clean"),
        "{}",
        run.all()
    );
    assert_eq!(c.table_digests("precious"), before);

    // A session on the target blocks --clean: dropping under a running app is refused.
    let mut session = std::process::Command::new(c.client_bindir().join("psql"))
        .args(["-X", "-d", &c.url("precious"), "-c", "SELECT pg_sleep(30)"])
        .env("PGPASSWORD", common::PASSWORD)
        .env("PGAPPNAME", "still-running-app")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while c.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'still-running-app'",
    ) == "0"
    {
        assert!(
            started.elapsed().as_secs() < 10,
            "the session did not appear"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let run = restore(&setup, &["--latest", "--target-db", "precious", "--clean"]);
    let _ = session.kill();
    let _ = session.wait();
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(run.stderr.contains("still-running-app"), "{}", run.all());
    assert_eq!(c.table_digests("precious"), before);

    // With --clean the database is replaced by exactly the backup, keeping what
    // belongs to the database itself: owner, settings, grants.
    c.psql("precious", "ALTER DATABASE precious SET work_mem = '64MB'");
    c.psql(
        "precious",
        "ALTER DATABASE precious SET search_path = app, public",
    );
    c.psql("precious", "REVOKE CONNECT ON DATABASE precious FROM PUBLIC; GRANT CONNECT ON DATABASE precious TO app_reader");
    let properties = |c: &Cluster| {
        c.psql("postgres", "SELECT (SELECT array_agg(a::text ORDER BY a::text) FROM unnest(d.datacl) a)::text || ' ' || (SELECT array_agg(x ORDER BY x)::text FROM pg_db_role_setting s, unnest(s.setconfig) x WHERE s.setdatabase = d.oid) FROM pg_database d WHERE datname = 'precious'")
    };
    let kept = properties(c);
    c.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'still-running-app'");
    while c.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'precious'",
    ) != "0"
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let run = restore(&setup, &["--latest", "--target-db", "precious", "--clean"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(c.table_digests("precious"), c.table_digests("app"));
    assert_eq!(properties(c), kept);
    assert!(
        kept.contains("app_reader=c/") && kept.contains("search_path=app, public"),
        "{kept}"
    );
    // And again, in parallel: rolling back twice is normal on a bad day.
    let run = restore(
        &setup,
        &[
            "--latest",
            "--target-db",
            "precious",
            "--clean",
            "--jobs",
            "2",
        ],
    );
    assert!(run.ok(), "{}", run.all());
    assert_eq!(c.table_digests("precious"), c.table_digests("app"));
}

#[test]
fn a_wrong_password_is_a_clear_error_that_never_shows_the_password() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    let setup = Setup::with_cluster(cluster, "", "");
    let wrong = "Wr0ng-Passw0rd-7e1f";
    std::fs::write(&setup.cluster.password_file, wrong).unwrap();

    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr
            .contains("password authentication failed for user \"postgres\""),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("hint: check the password in file"),
        "{}",
        run.all()
    );
    let check = setup.backup(&["config", "check"]);
    assert!(check.ok(), "{}", check.all());
    let restore = restore(&setup, &["--latest", "--target-db", "x"]);
    for output in [&run, &check, &restore] {
        assert!(
            !output.all().contains(wrong),
            "the password leaked: {}",
            output.all()
        );
    }
    for file in setup.stored_files() {
        let text = std::fs::read_to_string(setup.backups.join(&file)).unwrap_or_default();
        assert!(!text.contains(wrong), "the password leaked into {file}");
    }
}

#[test]
fn an_unknown_key_in_a_job_file_names_the_key_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.toml");
    std::fs::write(&path, "timezone = \"UTC\"\n\n[databases.app]\nurl = \"postgresql://app@127.0.0.1/app\"\n\n[storages.disk]\ntype = \"local\"\npath = \"/tmp/x\"\n\n[jobs.nightly]\ntype = \"backup\"\ndatabase = \"app\"\nstorages = [\"disk\"]\ncompresion = \"zstd\"\n").unwrap();
    let run = common::run_backup(&path, &["config", "check"]);
    assert_eq!(run.code, 3, "{}", run.all());
    let expected = format!("{}:14:1: unknown key `compresion`", path.display());
    assert!(run.stderr.contains(&expected), "{}", run.all());
    let run = common::run_backup(&path, &["run", "nightly"]);
    assert_eq!(run.code, 3, "{}", run.all());
}

/// `backup --config CONFIG config check`, killed (and the test failed) if it
/// has not exited within 5 s: a read that never ends must not hang the suite
/// (nor, reading /dev/zero, take the memory of the machine).
fn config_check_within_limit(config: &Path) -> common::Run {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_backup"))
        .arg("--config")
        .arg(config)
        .args(["config", "check"])
        .env_remove("BACKUP_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("config check of {} did not return", config.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    common::Run::from(child.wait_with_output().unwrap())
}

#[test]
fn a_job_file_that_is_a_device_a_fifo_or_over_1_mib_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // A comment is valid TOML: only its size is wrong.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    let holds_fifo = dir.path().join("with-fifo");
    std::fs::create_dir(&holds_fifo).unwrap();
    std::fs::write(holds_fifo.join("a.toml"), "timezone = \"UTC\"\n").unwrap();
    let c_path = std::ffi::CString::new(holds_fifo.join("b.toml").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let holds_big = dir.path().join("with-big");
    std::fs::create_dir(&holds_big).unwrap();
    std::fs::copy(&big, holds_big.join("big.toml")).unwrap();
    for (config, names, says) in [
        (
            Path::new("/dev/zero"),
            Path::new("/dev/zero"),
            "is a device",
        ),
        (&fifo, &fifo, "is a FIFO"),
        (&big, &big, "is larger than"),
        (&holds_fifo, &holds_fifo.join("b.toml"), "is a FIFO"),
        (&holds_big, &holds_big.join("big.toml"), "is larger than"),
    ] {
        let run = config_check_within_limit(config);
        assert_eq!(run.code, 3, "{}", run.all());
        let expected = format!("error: {}: {says}", names.display());
        assert!(run.stderr.starts_with(&expected), "{}", run.all());
        assert!(run.stderr.contains("\nhint: "), "{}", run.all());
    }
}

#[test]
fn an_empty_job_file_is_an_error_not_zero_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("backup.toml");
    std::fs::write(&empty, "").unwrap();
    let run = common::run_backup(&empty, &["config", "check"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(!run.stdout.contains("configuration OK"), "{}", run.all());
    let expected = format!(
        "error: {}: declares no job, database or storage\n",
        empty.display()
    );
    assert!(run.stderr.starts_with(&expected), "{}", run.all());
}

#[test]
fn a_failed_files_job_names_the_job_and_the_storage_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let backups = dir.path().join("backups");
    let config = dir.path().join("fs.toml");
    let job_file = |storage: &Path, source: &Path| {
        format!(
            "timezone = \"UTC\"\n[storages.disk]\ntype = \"local\"\npath = \"{}\"\n\n\
             [jobs.fs]\ntype = \"files\"\npath = \"{}\"\nstorages = [\"disk\"]\n",
            storage.display(),
            source.display()
        )
    };
    std::fs::write(&config, job_file(&backups, &missing)).unwrap();
    let errors = |run: &common::Run| -> Vec<String> {
        run.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .map(str::to_owned)
            .collect()
    };

    let run = common::run_backup(&config, &["run", "fs"]);
    assert_eq!(run.code, 7, "{}", run.all());
    assert_eq!(
        errors(&run),
        [format!(
            "error: job fs: reading directory {}: no such file or directory",
            missing.display()
        )],
        "{}",
        run.all()
    );
    // The run record is the job's own: it does not name the job again.
    let reports = backups.join("fs").join("reports");
    let record = std::fs::read_dir(&reports)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record.path()).unwrap()).unwrap();
    assert_eq!(
        record["error"],
        format!(
            "reading directory {}: no such file or directory",
            missing.display()
        )
    );

    // A storage that fails names itself, and is named once.
    let blocked = dir.path().join("a-file");
    std::fs::write(&blocked, "").unwrap();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("a.txt"), "a").unwrap();
    std::fs::write(&config, job_file(&blocked.join("backups"), source.path())).unwrap();
    let run = common::run_backup(&config, &["run", "fs"]);
    assert_eq!(run.code, 5, "{}", run.all());
    let said = errors(&run);
    assert_eq!(said.len(), 1, "{}", run.all());
    assert_eq!(
        said[0],
        format!(
            "error: job fs: storage disk: {}/backups: not a directory",
            blocked.display()
        ),
        "{}",
        run.all()
    );
    // Nor do the log lines about the run record it could not store.
    assert!(
        !run.stderr.contains("storage disk: storage disk"),
        "{}",
        run.all()
    );

    // Prune wraps the storage's error, which names the storage already.
    let with_retention =
        job_file(&blocked.join("backups"), source.path()) + "retention = { keep_last = 2 }\n";
    std::fs::write(&config, with_retention).unwrap();
    let run = common::run_backup(&config, &["prune"]);
    assert_eq!(run.code, 5, "{}", run.all());
    assert_eq!(
        errors(&run),
        [format!(
            "error: job fs: storage disk: {}/backups: not a directory",
            blocked.display()
        )],
        "{}",
        run.all()
    );
}

#[test]
fn the_example_job_file_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/example.toml");
    let run = common::run_backup_with(
        &example,
        &["config", "check"],
        &[
            ("APP_DB_PASSWORD", "x"),
            ("S3_ACCESS_KEY_ID", "id"),
            ("S3_SECRET_ACCESS_KEY", "secret"),
        ],
    );
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("job nightly (backup)"), "{}", run.all());
    assert!(
        run.stdout.contains("job tidy (maintenance)"),
        "{}",
        run.all()
    );
}

#[test]
fn a_role_that_may_not_read_role_passwords_still_gets_a_backup_with_a_warning() {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    // Plain SELECT grants, as a least-privilege backup role has them
    // (pg_read_all_data would include pg_authid).
    cluster.psql(
        "app",
        &format!("CREATE ROLE dumper LOGIN PASSWORD '{}'", common::PASSWORD),
    );
    cluster.psql(
        "app",
        "GRANT USAGE ON SCHEMA app, billing, \"Audit Log\" TO dumper; \
        GRANT SELECT ON ALL TABLES IN SCHEMA app, billing, \"Audit Log\" TO dumper; \
        GRANT SELECT ON ALL SEQUENCES IN SCHEMA app, billing TO dumper",
    );
    let setup = Setup::with_cluster(cluster, "", "");
    let config = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace("postgresql://postgres@", "postgresql://dumper@");
    std::fs::write(&setup.config, config).unwrap();

    let id = backup_ok(&setup);
    let manifest = setup.manifest(&id);
    let warnings = manifest["warnings"].to_string();
    assert!(
        warnings.contains("role passwords are not in this backup"),
        "{warnings}"
    );
    let globals = setup.globals(&id);
    assert!(globals.contains("CREATE ROLE app_reader"), "{globals}");
    assert!(
        !globals.contains("SCRAM-SHA-256$"),
        "no password hashes without the privilege"
    );
}

/// Runs `backup ARGS` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_terminal(setup: &Setup, args: &str, answer: &str) -> common::Run {
    use std::io::Write;
    let command = format!(
        "{} --config {} {args}",
        env!("CARGO_BIN_EXE_backup"),
        setup.config.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux script");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(answer.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    common::Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn on_a_terminal_restore_asks_first_and_anything_but_the_answer_cancels() {
    let setup = Setup::new("", "");
    backup_ok(&setup);
    let run = on_terminal(
        &setup,
        "restore --job nightly --latest --target-db asked",
        "no\n",
    );
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(run.stdout.contains("type yes to continue"), "{}", run.all());
    assert!(
        run.stdout
            .contains("restore cancelled; nothing was changed"),
        "{}",
        run.all()
    );
    assert_eq!(
        setup.cluster.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'asked'"
        ),
        "0"
    );

    let run = on_terminal(
        &setup,
        "restore --job nightly --latest --target-db asked",
        "yes\n",
    );
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        setup
            .cluster
            .psql("asked", "SELECT count(*) FROM app.events"),
        "120000"
    );

    // Replacing a database asks for its name, not a reflexive "yes".
    let run = on_terminal(
        &setup,
        "restore --job nightly --latest --target-db asked --clean",
        "yes\n",
    );
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stdout.contains("type asked to continue"),
        "{}",
        run.all()
    );
    let run = on_terminal(
        &setup,
        "restore --job nightly --latest --target-db asked --clean",
        "asked\n",
    );
    assert!(run.ok(), "{}", run.all());
}

#[test]
fn a_full_disk_fails_the_backup_clearly_and_leaves_nothing_that_looks_complete() {
    let setup = Setup::new("", "compression = \"none\"");
    std::fs::create_dir_all(&setup.backups).unwrap();
    // The namespace's root is this process's user, not the server's: it gets
    // a private copy of the password, as an operator's own file would be.
    let own = setup.work.path().join("password");
    std::fs::copy(&setup.cluster.password_file, &own).unwrap();
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        setup.cluster.password_file.to_str().unwrap(),
        own.to_str().unwrap(),
    );
    std::fs::write(&setup.config, text).unwrap();
    // A 1 MiB file system of its own, in a private mount namespace (root or
    // not): the uncompressed dump is several MiB.
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {dir} || exit 99\n\
         {bin} --config {config} run nightly; echo \"exit=$?\"\n\
         cd {dir} && find . -type f | sort",
        dir = setup.backups.display(),
        bin = env!("CARGO_BIN_EXE_backup"),
        config = setup.config.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .output()
        .expect("util-linux unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(99),
        "cannot mount a tmpfs here: {stderr}"
    );
    assert!(stdout.contains("exit=5"), "{stdout}\n{stderr}");
    assert!(stderr.contains("no space left on device"), "{stderr}");
    assert!(stderr.contains("hint: free space"), "{stderr}");
    let files: Vec<&str> = stdout.lines().filter(|l| l.starts_with("./")).collect();
    assert!(
        files.iter().all(|f| f.starts_with("./nightly/reports/")),
        "half-written files left: {files:?}"
    );
}

#[test]
fn a_restore_onto_a_server_without_the_roles_says_how_to_proceed() {
    let setup = Setup::new("", "");
    backup_ok(&setup);
    let c = &setup.cluster;
    c.psql("app", "REVOKE ALL ON SCHEMA app FROM app_reader; REVOKE ALL ON ALL TABLES IN SCHEMA app FROM app_reader; DROP ROLE app_reader");
    let run = restore(&setup, &["--latest", "--target-db", "no_roles"]);
    assert_eq!(run.code, 8, "{}", run.all());
    assert!(
        run.stderr.contains("role \"app_reader\" does not exist"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("hint: the backup's roles are missing"),
        "{}",
        run.all()
    );
    let run = restore(
        &setup,
        &[
            "--latest",
            "--target-db",
            "no_roles",
            "--clean",
            "--no-owner",
            "--no-acl",
        ],
    );
    assert!(run.ok(), "{}", run.all());
}
