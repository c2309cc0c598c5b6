//! A parallel restore never fails at random. Partitioned tables referenced
//! by foreign keys made plain `pg_restore -j N` of a streamed archive fail
//! about one time in two here: partitions' indexes attached in parallel
//! sessions left their parent index invalid, and the foreign keys then found
//! no unique constraint. Against a real PostgreSQL (tests/it/common).

use crate::common::{Cluster, Setup};

#[test]
fn partitioned_tables_referenced_by_foreign_keys_restore_in_parallel_every_time() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    cluster.load_fixture("app", "partitioned_fks.sql");
    let setup = Setup::with_cluster(cluster, "", "");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let c = &setup.cluster;
    let shape = |db: &str| {
        c.psql(
            db,
            "SELECT (SELECT count(*) FROM pg_constraint WHERE contype = 'f') || ' foreign keys, ' || \
                    (SELECT count(*) FROM pg_index WHERE NOT indisvalid) || ' invalid indexes'",
        )
    };
    let source = shape("app");
    assert_eq!(source, "384 foreign keys, 0 invalid indexes");
    let mut failures = Vec::new();
    for jobs in ["2", "4"] {
        for round in 0..20 {
            let run = setup.backup(&[
                "restore",
                "--job",
                "nightly",
                "--latest",
                "--target-db",
                "copy",
                "--clean",
                "--jobs",
                jobs,
            ]);
            if !run.ok() {
                failures.push(format!("--jobs {jobs}, round {round}: {}", run.stderr));
                continue;
            }
            assert_eq!(shape("copy"), source, "--jobs {jobs}, round {round}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 40 parallel restores failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        setup.temp_files(),
        Vec::<String>::new(),
        "spool left behind"
    );
}

#[test]
fn restore_tests_and_drills_restore_in_parallel_the_same_way() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    cluster.load_fixture("app", "partitioned_fks.sql");
    let setup = Setup::with_cluster(cluster, "", "");
    setup.append_to_config("\n[jobs.test]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\njobs = 4\nchecks = [\n  \
          { name = \"foreign keys\", sql = \"SELECT count(*) FROM pg_constraint WHERE contype = 'f'\", equals = 384 },\n  \
          { name = \"invalid indexes\", sql = \"SELECT count(*) FROM pg_index WHERE NOT indisvalid\", equals = 0 },\n]\n");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let run = setup.backup(&["run", "test", "--dry-run"]);
    assert!(run.stdout.contains("4 parallel jobs"), "{}", run.all());
    for round in 0..5 {
        let run = setup.backup(&["run", "test"]);
        assert!(run.ok(), "round {round}: {}", run.all());
    }
    // A drill takes the restore-test job's jobs, or --jobs.
    let run = setup.backup(&["drill", "--job", "test", "--dry-run"]);
    assert!(run.stdout.contains("with 4 parallel jobs"), "{}", run.all());
    let run = setup.backup(&["drill", "--job", "nightly", "--jobs", "3"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        setup.temp_files(),
        Vec::<String>::new(),
        "spool left behind"
    );
}

#[test]
fn event_triggers_never_fire_on_the_restores_own_attachments() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    // Partitioned indexes and an event trigger that logs DDL, no foreign key.
    cluster.psql(
        "app",
        "CREATE TABLE ddl_audit (command text); \
         CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO ddl_audit SELECT command_tag FROM pg_event_trigger_ddl_commands(); END $$; \
         CREATE TABLE measurements (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
         CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         INSERT INTO measurements SELECT g, date '2025-06-01' + g FROM generate_series(1, 400) g",
    );
    cluster.psql(
        "app",
        "CREATE EVENT TRIGGER audit ON ddl_command_end EXECUTE FUNCTION log_ddl()",
    );
    let setup = Setup::with_cluster(cluster, "", "");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    for (target, jobs) in [("one", "1"), ("two", "2")] {
        let run = setup.backup(&[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            target,
            "--jobs",
            jobs,
        ]);
        assert!(run.ok(), "--jobs {jobs}: {}", run.all());
        assert_eq!(
            setup.cluster.psql(target, "SELECT count(*) FROM ddl_audit"),
            "0",
            "--jobs {jobs}"
        );
    }
}
