//! What a backup is of, and what it says of itself: the database the url
//! names and no other, one database per job's history, `snapshot_at` that no
//! commit in the backup postdates, row counts as pg_dump dumps them, and a
//! run record that is stored or a command that says it was not.
//! Against a real PostgreSQL (tests/it/common).

use std::process::{Command, Stdio};

use crate::common::{self, Cluster, Setup};

fn backup_ok(setup: &Setup) -> String {
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    setup.list()[0]["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_url_that_names_no_database_is_a_config_error_whatever_the_environment_says() {
    let setup = Setup::new("", "");
    let port = setup.cluster.port;
    for url in [
        String::new(),
        format!("postgresql://postgres@127.0.0.1:{port}"),
    ] {
        setup.use_url(&url);
        for args in [&["config", "check"][..], &["run", "nightly"]] {
            // PGDATABASE would have named one: it must not count.
            let run = setup.backup_with(args, &[("PGDATABASE", "app")]);
            assert_eq!(run.code, 3, "{url:?} {args:?}: {}", run.all());
            assert!(run.stderr.contains("names no database"), "{}", run.all());
            assert!(run.stderr.contains("hint:"), "{}", run.all());
        }
    }
    assert!(
        setup.stored_files().is_empty(),
        "{:?}",
        setup.stored_files()
    );
}

#[test]
fn a_job_backs_up_one_database_and_refuses_another_until_told() {
    let setup = Setup::new("", "");
    let first = backup_ok(&setup);
    let system = setup.manifest(&first)["system_identifier"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(system.parse::<u64>().is_ok(), "{system}");

    // Another database of the same server.
    let c = &setup.cluster;
    c.create_db("other");
    c.psql("other", "CREATE TABLE t AS SELECT 1 AS x");
    setup.use_url(&c.url("other"));
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains("this is database other of cluster")
            && run
                .stderr
                .contains(&format!("previous backup {first} is of database app")),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("--accept-new-source"), "{}", run.all());
    assert_eq!(setup.list().len(), 1, "nothing new is listed");

    // Another cluster, a database of the same name.
    let elsewhere = Cluster::start();
    elsewhere.load_fixtures("app");
    setup.use_url(&elsewhere.url("app"));
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains("this is database app of cluster")
            && run
                .stderr
                .contains(&format!("database app of cluster {system}")),
        "{}",
        run.all()
    );

    // A deliberate move: taken, and the manifest says so.
    let run = setup.backup(&["run", "nightly", "--accept-new-source"]);
    assert!(run.ok(), "{}", run.all());
    let listed = setup.list();
    assert_eq!(listed.len(), 2);
    let moved = setup.manifest(listed[0]["id"].as_str().unwrap());
    assert_ne!(moved["system_identifier"], system.as_str());
    assert!(
        moved["warnings"][0]
            .as_str()
            .unwrap()
            .contains("the source changed, accepted with --accept-new-source"),
        "{moved}"
    );
    // From then on the new source is the job's.
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
}

#[test]
fn no_commit_in_a_snapshot_is_dated_after_its_snapshot_at() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    cluster.psql("app", "CREATE TABLE ticks (at timestamptz NOT NULL)");
    // Commits as fast as one session can, each row stamped just before its
    // commit: a snapshot holding a row stamped after its `at` is dated too early.
    let mut writer = Command::new(cluster.client_bindir().join("psql"))
        .args(["-X", "-q", "-d", &cluster.url("app"), "-c"])
        .arg(
            "DO $$ DECLARE deadline timestamptz := clock_timestamp() + interval '60 s'; BEGIN \
             LOOP INSERT INTO ticks VALUES (clock_timestamp()); COMMIT; \
             EXIT WHEN clock_timestamp() > deadline; END LOOP; END $$",
        )
        .env("PGPASSWORD", common::PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let setup = Setup::with_cluster(cluster, "", "");
    common::wait_for(
        "the writer's first rows",
        std::time::Duration::from_secs(30),
        || {
            setup
                .cluster
                .psql("app", "SELECT count(*) > 100 FROM ticks")
                == "t"
        },
    );
    let config = backup::config::load(Some(setup.config.as_path())).unwrap();
    let db = config.databases["app"].clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let late = runtime.block_on(async {
        let conn = backup::pg::connect(&db, None).await.unwrap();
        let mut late = Vec::new();
        for _ in 0..300 {
            let snapshot = backup::pg::export_snapshot(&conn).await.unwrap();
            let row = conn
                .client
                .query_one(
                    "SELECT to_char(max(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM ticks",
                    &[],
                )
                .await
                .unwrap();
            let newest: jiff::Timestamp = row.get::<_, String>(0).parse().unwrap();
            if newest > snapshot.at {
                late.push(format!("row at {newest} in a snapshot dated {}", snapshot.at));
            }
            backup::pg::end_snapshot(&conn).await.unwrap();
        }
        late
    });
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(
        late.is_empty(),
        "{} of 300 snapshots hold a commit made after their snapshot_at: {:?}",
        late.len(),
        &late[..late.len().min(3)]
    );
}

#[test]
fn an_inheritance_parent_counts_its_own_rows_as_pg_dump_dumps_them() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    cluster.psql(
        "app",
        "CREATE TABLE animal (name text); \
         CREATE TABLE dog (good boolean) INHERITS (animal); \
         INSERT INTO animal VALUES ('generic'), ('other'); \
         INSERT INTO dog VALUES ('rex', true), ('fido', true), ('spot', true)",
    );
    let setup = Setup::with_cluster(cluster, "", "");
    let id = backup_ok(&setup);
    let manifest = setup.manifest(&id);
    let rows = |name: &str| {
        manifest["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["rows"].as_i64().unwrap())
    };
    assert_eq!(rows("animal"), Some(2), "{manifest}");
    assert_eq!(rows("dog"), Some(3));
    let run = setup.backup(&[
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "copy",
    ]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("(5 rows)"), "{}", run.all());

    // Manifests written before counted a parent with its children, and said
    // nothing of how: they restore and prove as they were counted.
    assert_eq!(manifest["row_counts"], "only");
    let path = setup
        .backups
        .join("nightly")
        .join(&id)
        .join("manifest.json");
    let mut old = manifest.clone();
    old.as_object_mut().unwrap().remove("row_counts");
    for t in old["tables"].as_array_mut().unwrap() {
        if t["name"] == "animal" {
            t["rows"] = 5.into();
        }
    }
    std::fs::write(&path, old.to_string()).unwrap();
    let run = setup.backup(&[
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "from_old",
    ]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("(8 rows)"), "{}", run.all());
}

#[test]
fn a_run_record_that_cannot_be_stored_fails_the_command_not_the_backup() {
    let setup = Setup::new("", "");
    // Where the records go is taken by a file: every write of one fails.
    let reports = setup.backups.join("nightly").join("reports");
    std::fs::create_dir_all(reports.parent().unwrap()).unwrap();
    std::fs::write(&reports, "in the way").unwrap();

    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(
        run.stderr.contains("run's record") && run.stderr.contains("could not be stored"),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("complete in disk"), "{}", run.all());
    // The backup itself is whole, listed and restorable.
    let listed = setup.list();
    assert_eq!(listed.len(), 1);
    let run = setup.backup(&[
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "copy",
    ]);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(run.stdout.contains("restored backup"), "{}", run.all());
    assert_eq!(
        setup.cluster.table_digests("copy"),
        setup.cluster.table_digests("app")
    );
    let run = setup.backup(&["verify", "--job", "nightly"]);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(run.stderr.contains("could not be stored"), "{}", run.all());
}
