//! Row counts taken from the archive itself (issue 28): one read of each
//! table per backup, and a `verify` that counts the rows again without a
//! database.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Cluster, Setup};

/// `seq_scan + idx_scan` of every user table of `app`, by `schema.name`.
fn scans(setup: &Setup) -> BTreeMap<String, i64> {
    setup
        .cluster
        .psql(
            "app",
            "SELECT schemaname || '.' || relname || '=' || \
             (coalesce(seq_scan, 0) + coalesce(idx_scan, 0)) FROM pg_stat_user_tables",
        )
        .lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once('=')?;
            Some((name.to_owned(), n.parse().ok()?))
        })
        .collect()
}

/// The manifest's tables of backup `id`, by `schema.name`.
fn manifest_rows(manifest: &Value) -> BTreeMap<String, i64> {
    manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                format!(
                    "{}.{}",
                    t["schema"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                ),
                t["rows"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Each table's own rows in `app` are what `rows` says.
fn assert_counts_are_the_databases(setup: &Setup, rows: &BTreeMap<String, i64>) {
    for (table, n) in rows {
        let (schema, name) = table.split_once('.').unwrap();
        let counted: i64 = setup
            .cluster
            .psql(
                "app",
                &format!("SELECT count(*) FROM ONLY \"{schema}\".\"{name}\""),
            )
            .parse()
            .unwrap();
        assert_eq!(*n, counted, "{table}");
    }
}

#[test]
fn a_backup_reads_each_table_once_and_takes_its_counts_from_the_archive() {
    let setup = Setup::new("", "");
    let before = scans(&setup);
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let manifest = setup.manifest(&id);
    assert_eq!(manifest["rows_from"], "archive", "{manifest:#}");
    assert_eq!(manifest["row_counts"], "only", "{manifest:#}");
    let rows = manifest_rows(&manifest);
    assert!(rows.len() >= 3, "{rows:?}");

    // The backends' statistics reach the server when they end: wait for
    // every table to have moved, then give a second scan time to show.
    let started = Instant::now();
    let mut after = scans(&setup);
    while rows.keys().any(|t| after.get(t) == before.get(t))
        && started.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(200));
        after = scans(&setup);
    }
    std::thread::sleep(Duration::from_secs(1));
    after = scans(&setup);
    for table in rows.keys() {
        assert_eq!(
            after.get(table).copied().unwrap_or(0) - before.get(table).copied().unwrap_or(0),
            1,
            "{table}: scans before {before:?}, after {after:?}"
        );
    }

    // The counts are the tables' own rows, as a count in the database says.
    assert_counts_are_the_databases(&setup, &rows);

    // verify counts them again from the stored archive.
    let good = setup.backup(&["--json", "verify", "--job", "nightly"]);
    assert!(good.ok(), "{}", good.all());
    let json: Value = serde_json::from_str(&good.stdout).unwrap();
    let total: i64 = rows.values().sum();
    assert_eq!(
        json["backups"][0]["objects"][0]["rows"],
        Value::from(total),
        "{json:#}"
    );
}

#[test]
fn a_manifest_whose_count_of_one_table_was_edited_fails_verify_naming_it() {
    let setup = Setup::new("", "");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let good = setup.backup(&["verify", "--job", "nightly"]);
    assert!(good.ok(), "{}", good.all());
    assert!(
        good.stdout
            .contains("rows are the manifest's, table by table"),
        "{}",
        good.all()
    );

    let path = setup
        .backups
        .join("nightly")
        .join(&id)
        .join("manifest.json");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut manifest = original.clone();
    let tables = manifest["tables"].as_array_mut().unwrap();
    let edited = tables
        .iter_mut()
        .find(|t| t["rows"].as_i64().unwrap() > 0)
        .unwrap();
    let name = format!(
        "{}.{}",
        edited["schema"].as_str().unwrap(),
        edited["name"].as_str().unwrap()
    );
    let rows = edited["rows"].as_i64().unwrap();
    edited["rows"] = (rows - 1).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();

    let bad = setup.backup(&["verify", "--job", "nightly"]);
    assert_eq!(bad.code, 6, "{}", bad.all());
    assert!(
        bad.stderr.contains(&format!(
            "table {name}: {} rows in the manifest, {rows} in the archive",
            rows - 1
        )),
        "{}",
        bad.all()
    );
    assert!(bad.stdout.contains("BAD  data.dump.zst"), "{}", bad.all());

    // A manifest written before the counts came from the archive (no
    // rows_from; count(*) in the snapshot) is held to the archive too.
    manifest.as_object_mut().unwrap().remove("rows_from");
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    let bad = setup.backup(&["verify", "--job", "nightly"]);
    assert_eq!(bad.code, 6, "{}", bad.all());
    assert!(
        bad.stderr.contains(&format!("table {name}: ")),
        "{}",
        bad.all()
    );
    // As written, less rows_from: good.
    let mut older = original;
    older.as_object_mut().unwrap().remove("rows_from");
    std::fs::write(&path, serde_json::to_vec_pretty(&older).unwrap()).unwrap();
    let good = setup.backup(&["verify", "--job", "nightly"]);
    assert!(good.ok(), "{}", good.all());
}

/// A `pg_dump` whose archives claim version 1.99, which no reader knows.
fn future_pg_dump(bindir: &Path) -> String {
    format!(
        "#!/usr/bin/python3\n\
         import subprocess, sys\n\
         real = {real:?}\n\
         if sys.argv[1:] == ['--version']:\n\
         \x20   sys.exit(subprocess.call([real, '--version']))\n\
         dump = subprocess.Popen([real] + sys.argv[1:], stdout=subprocess.PIPE)\n\
         head = bytearray(dump.stdout.read(7))\n\
         if len(head) == 7:\n\
         \x20   head[6] = 99\n\
         out = sys.stdout.buffer\n\
         out.write(head)\n\
         while True:\n\
         \x20   chunk = dump.stdout.read(65536)\n\
         \x20   if not chunk:\n\
         \x20       break\n\
         \x20   out.write(chunk)\n\
         out.flush()\n\
         sys.exit(dump.wait())\n",
        real = bindir.join("pg_dump").display().to_string()
    )
}

/// A cluster with the fixtures in `app`, and a job `nightly` whose
/// `pg_dump` is `script(real pg_dump's bindir)`.
fn setup_with_pg_dump(prepare: &str, script: impl FnOnce(&Path) -> String) -> Setup {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    if !prepare.is_empty() {
        cluster.psql("app", prepare);
    }
    let wrappers = cluster.dir.path().join("wrappers");
    let bindir = cluster.client_bindir().to_owned();
    common::fake_pg_dump(&wrappers, &bindir, &script(&bindir));
    Setup::with_cluster(
        cluster,
        &format!("pg_bin_dir = \"{}\"", wrappers.display()),
        "",
    )
}

#[test]
fn an_archive_this_reader_does_not_know_is_counted_in_the_snapshot_and_said() {
    let setup = setup_with_pg_dump("", future_pg_dump);
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let manifest = setup.manifest(&id);
    assert_eq!(manifest["rows_from"], Value::Null, "{manifest:#}");
    let warnings = manifest["warnings"].to_string();
    assert!(
        warnings.contains("counted with count(*)") && warnings.contains("version 1.99"),
        "{manifest:#}"
    );
    assert_counts_are_the_databases(&setup, &manifest_rows(&manifest));
}

#[test]
fn a_backup_of_a_standby_says_which_unlogged_tables_restore_empty() {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    cluster.psql(
        "app",
        "CREATE UNLOGGED TABLE public.scratch AS SELECT g FROM generate_series(1, 50) g",
    );
    let standby = cluster.standby();
    let setup = Setup::with_cluster(cluster, "", "");
    setup.use_url(&standby.url("app"));
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let manifest = setup.manifest(&id);
    let rows = manifest_rows(&manifest);
    assert_eq!(rows.get("public.scratch"), Some(&0), "{manifest:#}");
    assert!(
        manifest["warnings"].to_string().contains(
            "no rows for unlogged tables on a standby: 1 table(s) restore empty: public.scratch"
        ),
        "{manifest:#}"
    );
    // Not onto the standby, which is read-only: said so.
    let refused = setup.backup(&[
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "restored",
        "--yes",
    ]);
    assert_ne!(refused.code, 0, "{}", refused.all());
    assert!(
        refused
            .stderr
            .contains("the server is read-only (a standby"),
        "{}",
        refused.all()
    );
    // Restored on the primary, the table is there, empty, as the manifest says.
    setup.use_url(&setup.cluster.url("app"));
    let restored = setup.backup(&[
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "restored",
    ]);
    assert!(restored.ok(), "{}", restored.all());
    assert_eq!(
        setup
            .cluster
            .psql("restored", "SELECT count(*) FROM public.scratch"),
        "0"
    );
}

#[test]
fn tables_named_in_a_latin1_database_are_counted_by_oid_and_verify_says_what_it_could_not_compare()
{
    let setup = Setup::new("", "");
    let c = &setup.cluster;
    c.psql(
        "postgres",
        "CREATE DATABASE lat TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'",
    );
    c.psql(
        "lat",
        "DO $$ BEGIN \
           EXECUTE format('CREATE TABLE %I (x int)', 'caf' || chr(233)); \
           EXECUTE format('INSERT INTO %I SELECT generate_series(1, 4)', 'caf' || chr(233)); \
         END $$; \
         CREATE TABLE plain (x int); INSERT INTO plain VALUES (1)",
    );
    setup.use_url(&c.url("lat"));
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let manifest = setup.manifest(&id);
    let rows = manifest_rows(&manifest);
    assert_eq!(rows.get("public.café"), Some(&4), "{manifest:#}");
    assert_eq!(rows.get("public.plain"), Some(&1), "{manifest:#}");
    assert_eq!(manifest["warnings"], Value::Array(vec![]), "{manifest:#}");

    let verify = setup.backup(&["--json", "verify", "--job", "nightly"]);
    assert!(verify.ok(), "{}", verify.all());
    let json: Value = serde_json::from_str(&verify.stdout).unwrap();
    let data = &json["backups"][0]["objects"][0];
    assert_eq!(data["rows"], 1, "{json:#}");
    assert_eq!(data["tables_not_recounted"], 1, "{json:#}");
    let text = setup.backup(&["verify", "--job", "nightly"]);
    assert!(
        text.stdout.contains("1 table(s) named outside ASCII"),
        "{}",
        text.all()
    );
}

/// A `pg_dump` that runs `before` first, then the real one with `args`
/// added.
fn wrapped_pg_dump(before: &str, args: &str) -> impl FnOnce(&Path) -> String {
    let (before, args) = (before.to_owned(), args.to_owned());
    move |bindir| {
        format!(
            "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\n{before}\nexec {real} {args} \"$@\"\n",
            real = bindir.join("pg_dump").display()
        )
    }
}

#[test]
fn the_snapshot_session_outlives_an_idle_in_transaction_timeout_set_for_the_database() {
    let setup = setup_with_pg_dump("", wrapped_pg_dump("sleep 3", ""));
    setup.cluster.psql(
        "postgres",
        "ALTER DATABASE app SET idle_in_transaction_session_timeout = '1s'",
    );
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(setup.manifest(&id)["rows_from"], "archive");
}

#[test]
fn a_table_pg_dump_left_without_data_fails_the_backup_naming_it() {
    let setup = setup_with_pg_dump(
        "CREATE TABLE public.kept AS SELECT g FROM generate_series(1, 10) g",
        wrapped_pg_dump("", "--exclude-table-data=public.kept"),
    );
    let run = setup.backup(&["run", "nightly"]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr
            .contains("pg_dump wrote no data for 1 table(s) of the database: public.kept"),
        "{}",
        run.all()
    );
    assert!(setup.list().is_empty());
}
