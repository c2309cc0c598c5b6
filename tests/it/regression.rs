//! PostgreSQL's own regression database (every kind of object the server
//! has, some 600 tables) through `backup run` and `backup restore`, serial and
//! parallel: the schema that comes back must be the one a plain
//! `pg_dump -Fc | pg_restore` of the same database gives. Not the original's:
//! pg_dump itself moves some inherited columns, in both.
//!
//! The suite (its SQL, data and schedule, `regress.so` built for this server
//! beside contrib's `refint.so` and `autoinc.so`, and `pg_regress`) is what
//! `scripts/test` fetches with `ensure_regress` (scripts/lib/regress.sh) and
//! names in `BACKUP_TEST_REGRESS_DIR`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::{Cluster, PASSWORD, Setup};

/// Where `ensure_regress` put the suite; the test fails, never skips, without it.
fn regress_dir() -> PathBuf {
    let dir = std::env::var_os("BACKUP_TEST_REGRESS_DIR").map(PathBuf::from);
    let Some(dir) = dir.filter(|d| !d.as_os_str().is_empty()) else {
        panic!(
            "BACKUP_TEST_REGRESS_DIR is not set: run scripts/test, which fetches \
             PostgreSQL's regression suite (ensure_regress in scripts/lib/regress.sh) \
             and sets it"
        );
    };
    for part in [
        "pg_regress",
        "lib/regress.so",
        "lib/refint.so",
        "src/test/regress/parallel_schedule",
    ] {
        assert!(
            dir.join(part).exists(),
            "{} has no {part}: run scripts/test again (ensure_regress)",
            dir.display()
        );
    }
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    let out = Command::new("cp")
        .arg("-R")
        .arg(from)
        .arg(to)
        .output()
        .expect("run cp");
    assert!(
        out.status.success(),
        "cp -R {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the parallel schedule against `cluster`, which leaves the database
/// `regression` behind. A test that fails does not matter here; the
/// database the schedule leaves does.
fn build_regression_database(cluster: &Cluster, suite: &Path) {
    // The server reads the suite's data files and regress.so, and writes into
    // the output directory (lo_export): all of it goes in the cluster's own
    // directory, which the server's user owns, and pg_regress runs as that user.
    let work = cluster.dir.path().join("regress");
    std::fs::create_dir(&work).unwrap();
    copy_tree(&suite.join("src/test/regress"), &work.join("suite"));
    copy_tree(&suite.join("lib"), &work.join("lib"));
    let out_dir = work.join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&work)
            .output()
            .expect("chown");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pg_regress = std::fs::canonicalize(suite.join("pg_regress")).unwrap();
    let mut command = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&pg_regress);
        c
    } else {
        Command::new(&pg_regress)
    };
    let suite_dir = work.join("suite");
    // --use-existing creates no database.
    cluster.create_db("regression");
    let out = command
        .arg("--use-existing")
        .arg(format!("--host={}", cluster.dir.path().display()))
        .arg(format!("--port={}", cluster.port))
        .arg("--user=postgres")
        .arg("--dbname=regression")
        .arg(format!("--bindir={}", cluster.client_bindir().display()))
        .arg(format!("--inputdir={}", suite_dir.display()))
        .arg(format!("--outputdir={}", out_dir.display()))
        .arg(format!("--dlpath={}", work.join("lib").display()))
        .arg(format!(
            "--schedule={}",
            suite_dir.join("parallel_schedule").display()
        ))
        .current_dir(&work)
        .stdin(Stdio::null())
        .output()
        .expect("run pg_regress");
    let said = String::from_utf8_lossy(&out.stdout);
    let failed: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("FAILED"))
        .filter_map(|l| l.split_whitespace().find(|w| *w != "test"))
        .collect();
    if !failed.is_empty() {
        eprintln!("pg_regress: these tests failed: {}", failed.join(" "));
    }
    let tables: u64 = cluster
        .psql(
            "regression",
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
        )
        .parse()
        .unwrap();
    assert!(
        tables > 300,
        "pg_regress left {tables} tables in the regression database; it said:\n{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("pg_regress left {tables} tables in the regression database");
}

/// `pg_dump -Fc regression | pg_restore -d target`: the reference.
fn plain_copy(cluster: &Cluster, target: &str) {
    cluster.create_db(target);
    let mut dump = Command::new(cluster.client_bindir().join("pg_dump"))
        .args(["-Fc", "--no-password", "-d", &cluster.url("regression")])
        .env("PGPASSWORD", PASSWORD)
        .stdout(Stdio::piped())
        .spawn()
        .expect("run pg_dump");
    let restore = Command::new(cluster.client_bindir().join("pg_restore"))
        .args(["--no-password", "-d", &cluster.url(target)])
        .env("PGPASSWORD", PASSWORD)
        .stdin(dump.stdout.take().unwrap())
        .output()
        .expect("run pg_restore");
    assert!(
        dump.wait().unwrap().success(),
        "pg_dump of regression failed"
    );
    assert!(
        restore.status.success(),
        "the plain pg_restore of regression failed: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
}

/// Fails with a unified diff of the two schemas when they differ.
fn assert_same_schema(work: &Path, expected: (&str, &str), got: (&str, &str)) {
    if expected.1 == got.1 {
        return;
    }
    let (a, b) = (
        work.join(format!("{}.sql", expected.0)),
        work.join(format!("{}.sql", got.0)),
    );
    std::fs::write(&a, expected.1).unwrap();
    std::fs::write(&b, got.1).unwrap();
    let diff = Command::new("diff")
        .arg("-u")
        .arg(&a)
        .arg(&b)
        .output()
        .expect("run diff");
    panic!(
        "the schema of {} differs from {}'s:\n{}",
        got.0,
        expected.0,
        String::from_utf8_lossy(&diff.stdout)
    );
}

#[test]
fn the_regression_database_restores_to_the_schema_a_plain_pg_restore_gives() {
    let suite = regress_dir();
    let started = Instant::now();
    let lap = |what: &str| eprintln!("{:>6.1}s  {what}", started.elapsed().as_secs_f64());

    let cluster = Cluster::start();
    build_regression_database(&cluster, &suite);
    lap("pg_regress built the regression database");

    let setup = Setup::with_cluster(cluster, "", "");
    let config = std::fs::read_to_string(&setup.config).unwrap();
    let config = config.replace(&setup.cluster.url("app"), &setup.cluster.url("regression"));
    std::fs::write(&setup.config, config).unwrap();

    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    lap("backup run");

    for jobs in ["1", "2"] {
        let target = format!("restored_jobs{jobs}");
        let run = setup.backup(&[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            &target,
            "--jobs",
            jobs,
            "--yes",
        ]);
        assert!(run.ok(), "restore --jobs {jobs}: {}", run.all());
        lap(&format!("backup restore --jobs {jobs}"));
    }

    plain_copy(&setup.cluster, "plain");
    lap("pg_dump -Fc | pg_restore");

    let plain = setup.cluster.schema_dump("plain");
    assert!(
        plain.contains("CREATE TABLE public.onek"),
        "the reference has the suite's tables"
    );
    for jobs in ["1", "2"] {
        let target = format!("restored_jobs{jobs}");
        let restored = setup.cluster.schema_dump(&target);
        assert_same_schema(setup.work.path(), ("plain", &plain), (&target, &restored));
    }
    lap("schemas compared");
}
