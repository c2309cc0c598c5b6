//! Maintenance jobs and `backup db report` against a real PostgreSQL: tables
//! bloated on purpose (autovacuum off for them), sessions that hold locks,
//! a REINDEX CONCURRENTLY made to fail.
//!
//! Which table gets which task, and why, is unit-tested in
//! src/jobs/maintenance/plan/; these tests show the statements run, change what
//! they should, and stay out of the application's way.

use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::{self, Cluster, Setup};
use serde_json::Value;

/// Tables for one test in schema `m` of database `app`: `bloated` has 75 %
/// dead tuples, `clean` none. Autovacuum is off for both, so only the job
/// cleans them. One psql call (one transaction) each: ANALYZE must come
/// after the inserts have committed.
const BLOATED: &[&str] = &[
    "CREATE SCHEMA m;
     CREATE TABLE m.bloated (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = off);
     INSERT INTO m.bloated SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g;
     CREATE TABLE m.clean (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = off);
     INSERT INTO m.clean SELECT g, repeat('y', 100) FROM generate_series(1, 50000) g;",
    "ANALYZE m.bloated, m.clean",
    "UPDATE m.bloated SET payload = repeat('z', 100);
     DELETE FROM m.bloated WHERE id % 2 = 0;",
];

/// A cluster with an empty `app`, a job file whose backup job is not used,
/// and each of `sql` run in `app` by a psql of its own; `jobs` (TOML)
/// appended to the job file.
fn setup(sql: &[&str], jobs: &str) -> Setup {
    let cluster = Cluster::start();
    cluster.create_db("app");
    for s in sql {
        cluster.psql("app", s);
    }
    let setup = Setup::with_cluster(cluster, "", "");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(jobs);
    std::fs::write(&setup.config, text).unwrap();
    setup
}

fn json_run(setup: &Setup, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let run = setup.backup(&all);
    assert!(run.ok(), "{}", run.all());
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.all()))
}

/// `SELECT` one value from `app`.
fn value(setup: &Setup, sql: &str) -> String {
    setup.cluster.psql("app", sql).trim().to_owned()
}

fn dead_tuples(setup: &Setup, table: &str) -> i64 {
    value(
        setup,
        &format!("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = '{table}'::regclass"),
    )
    .parse()
    .unwrap()
}

fn step<'a>(outcome: &'a Value, action: &str, table: &str) -> &'a Value {
    outcome["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["action"] == action && s["table"] == table)
        .unwrap_or_else(|| panic!("no {action} of {table} in {outcome:#}"))
}

/// The run records of `job`, oldest first.
fn records(setup: &Setup, job: &str) -> Vec<Value> {
    let dir = setup.backups.join(job).join("reports");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

/// What a running dump of `app` holds, as far as other jobs can tell: the
/// database's advisory lock, shared.
fn a_running_dump(setup: &Setup) -> common::LockHolder {
    setup
        .cluster
        .hold_advisory_lock_shared("app", backup::lock::lock_key("backup database app"))
}

/// Waits for a spawned `backup`, killing it and failing after `limit`.
fn finish(mut child: Child, limit: Duration) -> common::Run {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "backup did not finish within {limit:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    common::Run::from(child.wait_with_output().unwrap())
}

#[test]
fn vacuum_cleans_the_bloated_table_leaves_the_clean_one_and_records_both() {
    let setup = setup(
        BLOATED,
        "\n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"vacuum-analyze\"]\ntables = [\"m.*\"]\n",
    );
    let dead_before = dead_tuples(&setup, "m.bloated");
    assert!(dead_before >= 70_000, "{dead_before}");

    // The plan says what and why, and changes nothing.
    let run = setup.backup(&["run", "tidy", "--dry-run"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("1. vacuum-analyze m.bloated:")
            && run.stdout.contains("dead tuples, 75% of the table"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("m.clean: below the thresholds"),
        "{}",
        run.stdout
    );
    assert_eq!(dead_tuples(&setup, "m.bloated"), dead_before);
    assert_eq!(
        value(
            &setup,
            "SELECT count(*) FROM pg_stat_user_tables WHERE last_vacuum IS NOT NULL"
        ),
        "0"
    );
    assert!(
        !setup.backups.join("tidy").exists(),
        "a dry run writes no record"
    );

    let out = json_run(&setup, &["run", "tidy"]);
    let outcome = &out[0];
    assert_eq!(outcome["ok"], true, "{outcome:#}");
    let s = step(outcome, "vacuum-analyze", "bloated");
    assert_eq!(s["status"], "done", "{s:#}");
    assert_eq!(s["sql"], "VACUUM (ANALYZE, SKIP_LOCKED) \"m\".\"bloated\"");
    assert!(
        s["before"]["dead_tuples"].as_i64().unwrap() >= 70_000,
        "{s:#}"
    );
    assert_eq!(s["after"]["dead_tuples"], 0, "{s:#}");
    assert!(s["after"]["last_vacuum"].is_string(), "{s:#}");
    assert!(s["after"]["total_bytes"].as_i64().unwrap() > 0, "{s:#}");
    assert_eq!(outcome["steps"].as_array().unwrap().len(), 1, "{outcome:#}");
    assert!(
        outcome["left_alone"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["table"] == "m.clean"),
        "{outcome:#}"
    );

    assert_eq!(dead_tuples(&setup, "m.bloated"), 0);
    assert_eq!(
        value(
            &setup,
            "SELECT last_vacuum IS NULL FROM pg_stat_user_tables WHERE relid = 'm.clean'::regclass"
        ),
        "t",
        "the clean table was left alone"
    );

    // The record keeps before and after, in the file's first storage.
    let records = records(&setup, "tidy");
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["kind"], "maintenance");
    assert_eq!(r["outcome"], "succeeded");
    let s = step(&r["details"], "vacuum-analyze", "bloated");
    assert!(
        s["before"]["dead_tuples"].as_i64().unwrap() >= 70_000,
        "{r:#}"
    );
    assert_eq!(s["after"]["dead_tuples"], 0, "{r:#}");
    assert!(s["seconds"].is_number(), "{r:#}");

    // status and check know maintenance jobs too.
    let run = setup.backup(&["status", "--job", "tidy"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("job tidy (maintenance)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("last run:       succeeded"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("newest backup"), "{}", run.stdout);
    let run = setup.backup(&["check", "--job", "tidy"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.starts_with("BACKUP OK - tidy: last success"),
        "{}",
        run.stdout
    );
}

#[test]
fn vacuum_full_shrinks_and_reindex_rebuilds_bloated_indexes_concurrently() {
    let setup = setup(
        &[
            "CREATE SCHEMA m;
             CREATE TABLE m.shrink (id int, payload text) WITH (autovacuum_enabled = off);
             INSERT INTO m.shrink SELECT g, repeat('s', 200) FROM generate_series(1, 40000) g;
             DELETE FROM m.shrink WHERE id % 10 <> 0;
             CREATE TABLE m.idx (id int PRIMARY KEY, v int) WITH (autovacuum_enabled = off);
             CREATE INDEX idx_v ON m.idx (v);
             INSERT INTO m.idx SELECT g, g FROM generate_series(1, 100000) g;
             DELETE FROM m.idx WHERE id % 10 <> 0;",
            "VACUUM ANALYZE m.idx",
        ],
        "\n[jobs.shrink]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"vacuum-full\"]\ntables = [\"m.shrink\"]\n\
         \n[jobs.rebuild]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"reindex\"]\ntables = [\"m.idx\"]\nmin_index_bloat = 0.8\n",
    );
    let size = |rel: &str| -> i64 {
        value(&setup, &format!("SELECT pg_total_relation_size('{rel}')"))
            .parse()
            .unwrap()
    };
    let before = size("m.shrink");
    let out = json_run(&setup, &["run", "shrink"]);
    let s = step(&out[0], "vacuum-full", "shrink");
    assert_eq!(s["status"], "done", "{s:#}");
    assert_eq!(s["sql"], "VACUUM (FULL, SKIP_LOCKED) \"m\".\"shrink\"");
    let after = size("m.shrink");
    assert!(after * 4 < before, "{before} -> {after}");
    assert_eq!(s["after"]["total_bytes"].as_i64().unwrap(), after, "{s:#}");

    // Without pgstattuple, bloat is estimated from the statistics.
    let plan = json_run(&setup, &["run", "rebuild", "--dry-run"]);
    let steps = plan[0]["preview"]["plan"]["steps"]
        .as_array()
        .unwrap()
        .clone();
    let names: Vec<&str> = steps.iter().map(|s| s["index"].as_str().unwrap()).collect();
    assert_eq!(names, ["idx_pkey", "idx_v"], "{plan:#}");
    assert!(
        steps.iter().all(|s| s["reason"]
            .as_str()
            .unwrap()
            .contains("estimated from statistics")),
        "{plan:#}"
    );

    // With it, measured.
    setup.cluster.psql("app", "CREATE EXTENSION pgstattuple");
    let index_before = size("m.idx_v");
    let out = json_run(&setup, &["run", "rebuild"]);
    for index in ["idx_pkey", "idx_v"] {
        let s = out[0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["index"] == index)
            .unwrap_or_else(|| panic!("{index} not rebuilt: {out:#}"));
        assert_eq!(s["status"], "done", "{s:#}");
        assert_eq!(
            s["sql"],
            format!("REINDEX INDEX CONCURRENTLY \"m\".\"{index}\"")
        );
        assert!(
            s["reason"]
                .as_str()
                .unwrap()
                .contains("measured with pgstattuple"),
            "{s:#}"
        );
        assert!(
            s["after"]["total_bytes"].as_i64().unwrap() * 3
                < s["before"]["total_bytes"].as_i64().unwrap(),
            "{s:#}"
        );
    }
    assert!(size("m.idx_v") * 3 < index_before);
    assert_eq!(
        value(&setup, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0"
    );
}

#[test]
fn a_table_whose_lock_stays_busy_is_skipped_and_named_and_the_rest_is_done() {
    let mut sql = BLOATED.to_vec();
    sql.extend([
        "CREATE TABLE m.busy (id int, payload text) WITH (autovacuum_enabled = off);
         INSERT INTO m.busy SELECT g, repeat('b', 100) FROM generate_series(1, 50000) g;
         CREATE INDEX busy_id ON m.busy (id);",
        "ANALYZE m.busy",
        "DELETE FROM m.busy",
    ]);
    let setup = setup(
        &sql,
        "\n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"vacuum\"]\ntables = [\"m.*\"]\nlock_timeout = \"500ms\"\nlock_retries = 1\n\
         \n[jobs.rebuild]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"reindex\"]\ntables = [\"m.busy\"]\nall = true\nlock_timeout = \"500ms\"\nlock_retries = 1\n",
    );
    let holder = setup.cluster.hold_lock("app", "m.busy");
    let child = setup.spawn_backup_with(&["--json", "run", "tidy"], &[]);
    let run = finish(child, Duration::from_secs(60));
    assert!(
        run.ok(),
        "a busy table is skipped, not a failure: {}",
        run.all()
    );
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    let busy = step(&out[0], "vacuum", "busy");
    assert_eq!(busy["status"], "skipped", "{busy:#}");
    assert!(
        busy["note"]
            .as_str()
            .unwrap()
            .contains("held a conflicting lock through 2 tries"),
        "{busy:#}"
    );
    // The note names who holds it.
    assert!(
        busy["note"]
            .as_str()
            .unwrap()
            .contains("(psql, user postgres, idle in transaction for")
            && busy["note"]
                .as_str()
                .unwrap()
                .contains("AccessExclusiveLock)"),
        "{busy:#}"
    );
    assert_eq!(step(&out[0], "vacuum", "bloated")["status"], "done");
    assert!(
        run.stderr.contains("vacuum m.busy: skipped"),
        "{}",
        run.stderr
    );
    // Nobody queued behind the lock while the job ran, and nothing is left waiting.
    assert_eq!(
        value(
            &setup,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ),
        "0"
    );
    holder.release();
    assert_eq!(dead_tuples(&setup, "m.bloated"), 0);
    assert!(
        dead_tuples(&setup, "m.busy") > 0,
        "the busy table was not touched"
    );

    let records = records(&setup, "tidy");
    let r = records.last().unwrap();
    assert_eq!(r["outcome"], "succeeded");
    let busy = step(&r["details"], "vacuum", "busy");
    assert_eq!(busy["status"], "skipped", "{r:#}");

    // REINDEX CONCURRENTLY does not even start while the lock is held, so it
    // leaves no half-built copy either.
    let holder = setup.cluster.hold_lock("app", "m.busy");
    let run = finish(
        setup.spawn_backup_with(&["--json", "run", "rebuild"], &[]),
        Duration::from_secs(60),
    );
    assert!(run.ok(), "{}", run.all());
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    let s = step(&out[0], "reindex", "busy");
    assert_eq!(s["status"], "skipped", "{s:#}");
    assert!(
        s["note"].as_str().unwrap().contains("AccessExclusiveLock"),
        "{s:#}"
    );
    holder.release();
    assert_eq!(
        value(&setup, "SELECT count(*) FROM pg_index WHERE NOT indisvalid"),
        "0"
    );
}

#[test]
fn the_leftover_of_a_failed_reindex_concurrently_is_dropped() {
    let setup = setup(
        &["CREATE SCHEMA m;
         CREATE FUNCTION m.picky(x int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
         BEGIN
           IF current_setting('test.fail', true) = 'on' THEN RAISE EXCEPTION 'told to fail'; END IF;
           RETURN x;
         END $$;
         CREATE TABLE m.expr (id int);
         INSERT INTO m.expr SELECT generate_series(1, 1000);
         CREATE INDEX expr_idx ON m.expr (m.picky(id));"],
        "\n[jobs.rebuild]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"reindex\"]\ntables = [\"m.*\"]\n",
    );
    let failed = setup.cluster.psql_output(
        "app",
        &[
            "-c",
            "SET test.fail = 'on'",
            "-c",
            "REINDEX INDEX CONCURRENTLY m.expr_idx",
        ],
    );
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("told to fail"),
        "{failed:?}"
    );
    let invalid = "SELECT string_agg(c.relname, ',') FROM pg_index i \
                   JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid";
    assert_eq!(value(&setup, invalid), "expr_idx_ccnew");

    let out = json_run(&setup, &["run", "rebuild"]);
    let s = step(&out[0], "drop-leftover", "expr");
    assert_eq!(s["index"], "expr_idx_ccnew");
    assert_eq!(s["status"], "done", "{s:#}");
    assert_eq!(
        s["sql"],
        "DROP INDEX CONCURRENTLY IF EXISTS \"m\".\"expr_idx_ccnew\""
    );
    assert_eq!(value(&setup, invalid), "");
    assert_eq!(
        value(
            &setup,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'expr_idx'"
        ),
        "1",
        "the index itself stays"
    );
}

#[test]
fn after_the_window_closes_nothing_new_starts() {
    // A window that starts two hours from now, Tokyo time: now is outside it.
    let hour: u32 = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap())
        .hour() as u32;
    let window = format!("{:02}:00-{:02}:00", (hour + 2) % 24, (hour + 3) % 24);
    let setup = setup(
        BLOATED,
        &format!(
            "\n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
             tasks = [\"vacuum\"]\ntables = [\"m.*\"]\nwindow = \"{window}\"\n"
        ),
    );
    let out = json_run(&setup, &["run", "tidy"]);
    let s = step(&out[0], "vacuum", "bloated");
    assert_eq!(s["status"], "skipped", "{s:#}");
    assert_eq!(
        s["note"],
        format!("not started: outside the window {window}")
    );
    assert_eq!(out[0]["window_closed"], true);
    assert!(
        dead_tuples(&setup, "m.bloated") > 70_000,
        "nothing was vacuumed"
    );
}

#[test]
fn heavy_maintenance_waits_for_a_running_dump_of_its_database() {
    let setup = setup(
        BLOATED,
        "\n[jobs.shrink]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"vacuum-full\"]\ntables = [\"m.*\"]\n",
    );
    let dump = a_running_dump(&setup);
    let mut child = setup.spawn_backup_with(&["run", "shrink"], &[]);
    // Released once the run says it waits, however long it took to get there.
    let stderr = child.stderr.take().unwrap();
    let (said_it_waits, waits) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("waiting: a backup of database app is running") {
                let _ = said_it_waits.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let waited = waits.recv_timeout(Duration::from_secs(60));
    assert!(
        dead_tuples(&setup, "m.bloated") > 70_000,
        "VACUUM FULL ran beside a dump"
    );
    dump.release();
    let run = finish(child, Duration::from_secs(60));
    let stderr = reader.join().unwrap();
    assert!(waited.is_ok(), "the run never said it waits:\n{stderr}");
    assert!(run.ok(), "{}{stderr}", run.stdout);
}

#[test]
fn db_report_ranks_the_bloated_table_first_by_dead_tuples() {
    let setup = setup(BLOATED, "");
    let run = setup.backup(&["db", "report", "--database", "app"]);
    assert!(run.ok(), "{}", run.all());
    for section in [
        "Largest tables",
        "Indexes, largest first",
        "Dead tuples, most first",
        "Transaction-ID age",
        "Connections",
        "Statements or transactions running longer than 5m",
    ] {
        assert!(run.stdout.contains(section), "{section}: {}", run.stdout);
    }
    let dead = run.stdout.split("Dead tuples, most first").nth(1).unwrap();
    let first_row = dead.lines().nth(2).unwrap();
    assert!(first_row.trim_start().starts_with("m.bloated "), "{dead}");

    let report = json_run(&setup, &["db", "report", "--database", "app"]);
    assert_eq!(report["dead_tuples"][0]["name"], "bloated");
    assert!(report["dead_tuples"][0]["dead_tuples"].as_i64().unwrap() >= 70_000);
    assert!(
        report["database_xid_ages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["database"] == "app")
    );

    // A session idle in its transaction for a second, and a lower bar.
    let holder = setup.cluster.hold_lock("app", "m.clean");
    std::thread::sleep(Duration::from_millis(1500));
    let run = setup.backup(&["db", "report", "--database", "app", "--long", "1s"]);
    assert!(run.ok(), "{}", run.all());
    let long = run.stdout.split("running longer than 1s").nth(1).unwrap();
    assert!(
        long.contains("idle in transaction") && long.contains("LOCK TABLE m.clean"),
        "{long}"
    );
    holder.release();

    let run = setup.backup(&["db", "report", "--database", "nope"]);
    assert_eq!(run.code, 7, "{}", run.all());
    assert!(
        run.stderr.contains("declared databases: app"),
        "{}",
        run.all()
    );
}

#[test]
fn a_maintenance_run_past_its_timeout_fails_as_timed_out_and_is_recorded() {
    let setup = setup(
        BLOATED,
        "\n[jobs.shrink]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"vacuum-full\"]\ntables = [\"m.*\"]\ntimeout = \"2s\"\n",
    );
    // A dump that never ends, as far as the heavy job can tell.
    let _dump = a_running_dump(&setup);
    let child = setup.spawn_backup_with(&["run", "shrink"], &[]);
    let run = finish(child, Duration::from_secs(60));
    assert_eq!(run.code, 10, "{}", run.all());
    assert!(run.stderr.contains("timed out after 2s"), "{}", run.all());
    let records = records(&setup, "shrink");
    assert_eq!(records.last().unwrap()["outcome"], "timed_out");
    assert!(dead_tuples(&setup, "m.bloated") > 70_000);
}

#[test]
fn on_a_standby_the_job_does_nothing_and_says_so() {
    let setup = setup(BLOATED, "");
    let standby = setup.cluster.standby();
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "\n[databases.replica]\nurl = \"{}\"\npassword_file = \"{}\"\n\
         \n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"replica\"\ntasks = [\"vacuum\", \"reindex\"]\n",
        standby.url("app"),
        standby.password_file.display()
    ));
    std::fs::write(&setup.config, text).unwrap();

    let run = setup.backup(&["run", "tidy", "--dry-run"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("the server is a standby"),
        "{}",
        run.stdout
    );

    let run = setup.backup(&["run", "tidy"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout
            .contains("database app is a standby: nothing done"),
        "{}",
        run.stdout
    );
    let records = records(&setup, "tidy");
    assert_eq!(records[0]["outcome"], "succeeded");
    assert_eq!(records[0]["details"]["standby"], true);
    assert!(dead_tuples(&setup, "m.bloated") > 70_000);
}

#[test]
fn tables_the_role_may_not_maintain_are_left_alone_and_say_whose_they_are() {
    let mut sql = BLOATED.to_vec();
    let create = format!(
        "CREATE ROLE maint LOGIN PASSWORD '{}'; GRANT USAGE ON SCHEMA m TO maint; \
         GRANT SELECT ON ALL TABLES IN SCHEMA m TO maint; \
         CREATE TABLE m.mine (id int) WITH (autovacuum_enabled = off); \
         ALTER TABLE m.mine OWNER TO maint",
        common::PASSWORD
    );
    sql.push(&create);
    let setup = setup(&sql, "");
    let mut text = std::fs::read_to_string(&setup.config).unwrap();
    text.push_str(&format!(
        "\n[databases.as_maint]\nurl = \"{}\"\npassword_file = \"{}\"\n\
         \n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"as_maint\"\n\
         tasks = [\"vacuum\"]\ntables = [\"m.*\"]\nall = true\n",
        setup.cluster.url("app").replace("postgres@", "maint@"),
        setup.cluster.password_file.display()
    ));
    std::fs::write(&setup.config, text).unwrap();
    let out = json_run(&setup, &["run", "tidy"]);
    let steps: Vec<&str> = out[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["table"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["mine"], "{out:#}");
    assert_eq!(step(&out[0], "vacuum", "mine")["status"], "done");
    let reason = out[0]["left_alone"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["table"] == "m.bloated")
        .unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("may not maintain it") && reason.contains("(postgres)"),
        "{reason}"
    );
    assert!(dead_tuples(&setup, "m.bloated") > 70_000);
}

#[test]
fn a_run_stopped_mid_step_records_what_it_did_and_the_next_run_cleans_up() {
    let setup = setup(
        BLOATED,
        "\n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
         tasks = [\"vacuum\", \"reindex\"]\ntables = [\"m.bloated\"]\nall = true\ntimeout = \"10s\"\n",
    );
    // An old snapshot: REINDEX CONCURRENTLY builds its copy, then waits for it.
    let snapshot = setup.cluster.hold_snapshot("postgres");
    let app_snapshot = setup.cluster.hold_snapshot("app");
    let run = finish(
        setup.spawn_backup_with(&["run", "tidy"], &[]),
        Duration::from_secs(60),
    );
    assert_eq!(run.code, 10, "{}", run.all());
    let records = records(&setup, "tidy");
    let r = records.last().unwrap();
    assert_eq!(r["outcome"], "timed_out", "{r:#}");
    assert_eq!(
        step(&r["details"], "vacuum", "bloated")["status"],
        "done",
        "{r:#}"
    );
    let stopped = &r["details"]["stopped_during"];
    assert_eq!(stopped["action"], "reindex", "{r:#}");
    assert!(
        stopped["sql"]
            .as_str()
            .unwrap()
            .starts_with("REINDEX INDEX CONCURRENTLY"),
        "{r:#}"
    );
    // The cancelled REINDEX was stopped on the server, not left waiting. The
    // cancel request may reach it after the process has exited: give it time.
    common::wait_for(
        "the cancelled REINDEX to leave the server",
        Duration::from_secs(20),
        || {
            value(
                &setup,
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'REINDEX%'",
            ) == "0"
        },
    );
    drop(snapshot);
    drop(app_snapshot);
    let leftovers = "SELECT count(*) FROM pg_index WHERE NOT indisvalid";
    let out = json_run(&setup, &["run", "tidy"]);
    assert_eq!(out[0]["ok"], true, "{out:#}");
    assert_eq!(value(&setup, leftovers), "0");
}
