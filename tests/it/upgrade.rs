//! Major upgrades through a logical backup, as an operator does them: back
//! up on the old server, point the job at a new PostgreSQL 18, and
//! `restore --globals` there. The data (every row), the extensions and the
//! roles with their privileges come across, and the restore's record names
//! both servers. The other way, into an older major, is refused before
//! anything is written.

use crate::common::{Cluster, Setup, every_pg_bin_dir};

/// `restore --job nightly --latest --target-db app EXTRA...`.
fn restore_into_app(setup: &Setup, extra: &[&str]) -> crate::common::Run {
    let mut args = vec![
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "app",
    ];
    args.extend_from_slice(extra);
    setup.backup(&args)
}

fn one_value(cluster: &Cluster, db: &str, sql: &str) -> String {
    cluster.psql(db, sql).trim().to_owned()
}

fn upgrade_to_18_from(major: u32) {
    let old = Cluster::start_major(major, "");
    old.load_fixtures("app");
    let setup = Setup::with_cluster(old, &every_pg_bin_dir(), "");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let manifest = setup.manifest(&id);
    let source_version = manifest["server_version"].as_str().unwrap().to_owned();
    assert!(
        source_version.starts_with(&format!("{major}.")),
        "{manifest:#}"
    );
    let rows = setup.cluster.table_digests("app");
    assert!(rows.len() >= 6, "{rows:?}");

    // The new server: empty, none of the old one's roles.
    let new = Cluster::start_major(18, "");
    assert_eq!(
        one_value(
            &new,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'app_reader'"
        ),
        "0"
    );
    setup.use_url(&new.url("app"));
    // Without the roles, the restore fails, says why, and leaves nothing.
    let run = restore_into_app(&setup, &["--yes"]);
    assert!(!run.ok(), "{}", run.all());
    assert!(
        run.stderr.contains("restore again with --globals"),
        "{}",
        run.all()
    );
    assert!(
        !new.databases().contains(&"app".to_owned()),
        "{:?}",
        new.databases()
    );
    let plan = restore_into_app(&setup, &["--globals", "--dry-run"]);
    assert!(plan.ok(), "{}", plan.all());
    assert!(
        plan.stdout
            .contains("roles:     created from the backup's globals"),
        "{}",
        plan.stdout
    );
    let run = restore_into_app(&setup, &["--globals", "--yes"]);
    assert!(run.ok(), "{}", run.all());

    assert_eq!(new.table_digests("app"), rows, "every row, on 18");
    assert_eq!(
        one_value(
            &new,
            "app",
            "SELECT count(*) FROM pg_extension WHERE extname = 'hstore'"
        ),
        "1"
    );
    assert_eq!(
        one_value(
            &new,
            "app",
            "SELECT has_table_privilege('app_reader', 'app.users', 'SELECT')"
        ),
        "t",
        "the role came from the globals, and its grants with the dump"
    );
    let record = setup.newest_record("restore");
    let details = &record["details"];
    assert_eq!(
        details["source_server_version"],
        source_version.as_str(),
        "{record:#}"
    );
    assert!(
        details["target_server_version"]
            .as_str()
            .unwrap()
            .starts_with("18."),
        "{record:#}"
    );
}

#[test]
fn a_dump_of_postgresql_13_restores_into_18_with_its_roles_and_extensions() {
    upgrade_to_18_from(13);
}

#[test]
fn a_dump_of_postgresql_15_restores_into_18_with_its_roles_and_extensions() {
    upgrade_to_18_from(15);
}

#[test]
fn a_dump_of_18_is_refused_by_an_older_server_before_anything_is_written() {
    let new = Cluster::start_major(18, "");
    new.load_fixtures("app");
    let setup = Setup::with_cluster(new, &every_pg_bin_dir(), "");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());

    let old = Cluster::start_major(15, "");
    let databases = old.databases();
    setup.use_url(&old.url("app"));
    let run = restore_into_app(&setup, &["--globals", "--yes"]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains("was taken from PostgreSQL 18.")
            && run.stderr.contains("an older major")
            && run.stderr.contains("nothing was written"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr
            .contains("hint: restore into a server of PostgreSQL 18 or newer"),
        "{}",
        run.all()
    );
    assert_eq!(old.databases(), databases, "no database made");
    assert_eq!(
        one_value(
            &old,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'app_reader'"
        ),
        "0",
        "no role made"
    );
}

/// 16 has no client programs of its own here: its backups are 18's
/// `pg_dump`, and restores into it go through `psql` (pg_restore 18 would
/// send `SET transaction_timeout`). A failure there stops at the first
/// error and names it, as pg_restore's own does, and leaves nothing.
#[test]
fn a_restore_into_16_through_psql_stops_at_the_first_error_and_names_it() {
    let source = Cluster::start_major(16, "");
    source.load_fixtures("app");
    let setup = Setup::with_cluster(source, &every_pg_bin_dir(), "");
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let dumped_by = setup.manifest(&id)["pg_dump_version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        dumped_by.starts_with("pg_dump (PostgreSQL) 18."),
        "{dumped_by}"
    );
    let rows = setup.cluster.table_digests("app");

    let fresh = Cluster::start_major(16, "");
    setup.use_url(&fresh.url("app"));
    let run = restore_into_app(&setup, &["--jobs", "2", "--yes"]);
    assert_eq!(run.code, 8, "{}", run.all());
    assert!(
        run.stderr.contains("role \"app_reader\" does not exist"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("restore again with --globals"),
        "{}",
        run.all()
    );
    assert!(!run.stderr.contains("transaction_timeout"), "{}", run.all());
    assert!(
        !fresh.databases().iter().any(|d| d.starts_with("app")),
        "{:?}",
        fresh.databases()
    );

    let run = restore_into_app(&setup, &["--jobs", "2", "--yes", "--globals"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stderr.contains("restoring with one job, not 2"),
        "{}",
        run.all()
    );
    assert_eq!(fresh.table_digests("app"), rows);
}
