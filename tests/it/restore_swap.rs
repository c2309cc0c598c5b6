//! A restore never destroys the database it replaces before the new copy is
//! proven: it restores beside it, proves, then swaps. What a database is
//! besides its contents (settings, grants, comment, owner) comes back too.
//! Against a real PostgreSQL (tests/it/common).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{self, Cluster, Setup};

fn backup_ok(setup: &Setup) -> String {
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    setup.list()[0]["id"].as_str().unwrap().to_owned()
}

fn restore(setup: &Setup, args: &[&str]) -> common::Run {
    let mut all = vec!["restore", "--job", "nightly"];
    all.extend_from_slice(args);
    setup.backup(&all)
}

fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

/// Databases a restore works under, left behind.
fn restore_leftovers(c: &Cluster) -> Vec<String> {
    c.databases()
        .into_iter()
        .filter(|d| d.contains("__restoring_") || d.contains("__replaced_"))
        .collect()
}

#[test]
fn a_corrupt_backup_never_touches_the_database_it_would_replace() {
    let setup = Setup::new("", "");
    let id = backup_ok(&setup);
    let c = &setup.cluster;
    c.create_db("precious");
    c.psql(
        "precious",
        "CREATE TABLE ledger (id int, note text); INSERT INTO ledger VALUES (1, 'keep me')",
    );
    let before = c.table_digests("precious");
    flip_a_byte(
        &setup
            .backups
            .join("nightly")
            .join(&id)
            .join("data.dump.zst"),
    );

    // The plan says what will happen, and that two copies need room.
    let run = restore(
        &setup,
        &[
            "--latest",
            "--target-db",
            "precious",
            "--clean",
            "--dry-run",
        ],
    );
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout
            .contains("replaced only once the new copy is proven")
            && run.stdout.contains("room for both"),
        "{}",
        run.all()
    );
    let staging = format!("precious__restoring_{}", id.to_lowercase());
    assert!(run.stdout.contains(&staging), "{}", run.all());

    for jobs in ["1", "2"] {
        let run = restore(
            &setup,
            &[
                "--latest",
                "--target-db",
                "precious",
                "--clean",
                "--jobs",
                jobs,
            ],
        );
        assert_eq!(run.code, 6, "{}", run.all());
        assert!(run.stderr.contains("is corrupt"), "{}", run.all());
        assert!(
            run.stderr.contains("database precious was not touched")
                && run.stderr.contains("was dropped"),
            "{}",
            run.all()
        );
        assert_eq!(c.table_digests("precious"), before, "--jobs {jobs}");
        assert_eq!(restore_leftovers(c), Vec::<String>::new());
    }

    // --keep-failed leaves the copy for a look, and says where.
    let run = restore(
        &setup,
        &[
            "--latest",
            "--target-db",
            "precious",
            "--clean",
            "--keep-failed",
        ],
    );
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(
        run.stderr
            .contains(&format!("the restored copy is kept as database {staging}")),
        "{}",
        run.all()
    );
    assert_eq!(restore_leftovers(c), vec![staging.clone()]);
    assert_eq!(c.table_digests("precious"), before);
    // A kept copy is never dropped behind the operator's back: the same
    // restore is refused until it is gone.
    let run = restore(&setup, &["--latest", "--target-db", "precious", "--clean"]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains(&staging) && run.stderr.contains("kept by --keep-failed"),
        "{}",
        run.all()
    );
    c.psql("postgres", &format!("DROP DATABASE {staging}"));

    // --in-place alone replaces nothing: replacing is what --clean says.
    let run = restore(
        &setup,
        &["--latest", "--target-db", "precious", "--in-place"],
    );
    assert_eq!(run.code, 9, "{}", run.all());
    assert_eq!(c.table_digests("precious"), before);
    // --in-place is the old way, and its plan says so.
    let run = restore(
        &setup,
        &[
            "--latest",
            "--target-db",
            "precious",
            "--clean",
            "--in-place",
            "--dry-run",
        ],
    );
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("DROPPED FIRST"), "{}", run.all());

    // A good backup replaces the database; nothing is left beside it.
    let good = backup_ok(&setup);
    assert_ne!(good, id);
    let run = restore(&setup, &["--latest", "--target-db", "precious", "--clean"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout
            .contains("it replaced the database that was there"),
        "{}",
        run.all()
    );
    assert_eq!(c.table_digests("precious"), c.table_digests("app"));
    assert_eq!(restore_leftovers(c), Vec::<String>::new());

    // --in-place with the corrupt backup drops first: the documented risk.
    let run = restore(
        &setup,
        &[
            "--id",
            &id,
            "--target-db",
            "precious",
            "--clean",
            "--in-place",
        ],
    );
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(run.stderr.contains("must not be trusted"), "{}", run.all());
}

/// A `pg_restore` that waits for `<dir>/hold` to go before it starts, so a
/// test can stop a restore in the middle.
fn held_pg_restore(dir: &Path, bindir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        // It gives up once its parent is gone (killed by the test).
        "#!/bin/sh\nif [ \"$1\" = --version ]; then exec {real} --version; fi\n\
         while [ -e {hold} ]; do kill -0 $PPID || exit 1; sleep 0.1; done\nexec {real} \"$@\"\n",
        real = bindir.join("pg_restore").display(),
        hold = dir.join("hold").display()
    );
    std::fs::write(dir.join("pg_restore"), script).unwrap();
    std::fs::set_permissions(
        dir.join("pg_restore"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    for tool in ["pg_dump", "pg_dumpall", "psql"] {
        std::os::unix::fs::symlink(bindir.join(tool), dir.join(tool)).unwrap();
    }
}

/// The sample database and a job whose `pg_restore` waits while
/// `<tools>/hold` exists; returns the setup and `<tools>`.
fn with_held_pg_restore() -> (Setup, std::path::PathBuf) {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let tools = cluster.dir.path().join("tools");
    held_pg_restore(&tools, cluster.client_bindir());
    let setup = Setup::with_cluster(
        cluster,
        &format!("pg_bin_dir = \"{}\"", tools.display()),
        "",
    );
    (setup, tools)
}

#[test]
fn an_interrupted_restore_leaves_the_target_and_its_copy_is_cleared() {
    let (setup, tools) = with_held_pg_restore();
    let id = backup_ok(&setup);
    let c = &setup.cluster;
    c.create_db("precious");
    c.psql("precious", "CREATE TABLE ledger AS SELECT 1 AS id");
    let before = c.table_digests("precious");
    let staging = format!("precious__restoring_{}", id.to_lowercase());
    let args = [
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "precious",
        "--clean",
    ];
    let limit = std::time::Duration::from_secs(60);

    for signal in [libc::SIGTERM, libc::SIGKILL] {
        std::fs::write(tools.join("hold"), "").unwrap();
        let child = setup.spawn_backup_with(&args, &[]);
        common::wait_for("the copy being restored", limit, || {
            c.databases().contains(&staging)
        });
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        assert_eq!(c.table_digests("precious"), before, "signal {signal}");
        if signal == libc::SIGTERM {
            // Stopped, it drops its copy itself.
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("database precious is as it was"),
                "{stderr}"
            );
            common::wait_for("the copy to be dropped", limit, || {
                !c.databases().contains(&staging)
            });
        } else {
            // Killed, it leaves its copy (unmarked if killed before the COMMENT);
            // the next restore drops it.
            assert!(c.databases().contains(&staging));
        }
    }
    std::fs::remove_file(tools.join("hold")).unwrap();
    assert_next_restore_drops(&setup, &args, &staging, "precious");
}

/// The database's own properties, as one comparable line.
fn properties(c: &Cluster, db: &str) -> String {
    c.psql(
        "postgres",
        &format!(
            "SELECT pg_get_userbyid(d.datdba) || ' | ' || coalesce(shobj_description(d.oid, 'pg_database'), '-') \
             || ' | ' || coalesce((SELECT string_agg(g, ',' ORDER BY g) FROM ( \
                    SELECT coalesce(pg_get_userbyid(nullif(a.grantee, 0)), 'PUBLIC') || ':' || a.privilege_type AS g \
                    FROM aclexplode(d.datacl) a WHERE a.grantee <> d.datdba) t), 'default') \
             || ' | ' || coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM ( \
                    SELECT coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '*') || ':' || c AS x \
                    FROM pg_db_role_setting s, unnest(s.setconfig) c WHERE s.setdatabase = d.oid) t), 'none') \
             || ' | ' || d.datconnlimit \
             FROM pg_database d WHERE d.datname = '{db}'"
        ),
    )
}

#[test]
fn database_settings_grants_comment_and_owner_come_back() {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    cluster.psql(
        "postgres",
        "CREATE ROLE app_owner NOLOGIN; ALTER DATABASE app OWNER TO app_owner",
    );
    for sql in [
        "ALTER DATABASE app SET work_mem = '64MB'",
        "ALTER DATABASE app SET search_path = app, \"$user\", public",
        "ALTER ROLE app_reader IN DATABASE app SET statement_timeout = '5s'",
        "COMMENT ON DATABASE app IS 'the shop''s orders'",
        "REVOKE ALL ON DATABASE app FROM PUBLIC",
        "GRANT CONNECT ON DATABASE app TO app_reader",
        "ALTER DATABASE app CONNECTION LIMIT 40",
    ] {
        cluster.psql("postgres", sql);
    }
    let source = properties(&cluster, "app");
    assert!(
        source.contains("app_owner | the shop's orders | app_reader:CONNECT")
            && source.contains("search_path=app, \"$user\", public")
            && source.contains("app_reader:statement_timeout=5s")
            && source.ends_with("| 40"),
        "{source}"
    );
    let setup = Setup::with_cluster(cluster, "", "");
    let id = backup_ok(&setup);
    let manifest = setup.manifest(&id);
    let captured = &manifest["database_properties"];
    assert_eq!(captured["owner"], "app_owner", "{manifest}");
    assert_eq!(captured["comment"], "the shop's orders");
    assert_eq!(captured["settings"].as_array().unwrap().len(), 3);
    assert!(
        manifest["system_identifier"].as_str().is_some(),
        "{manifest}"
    );

    // Into a new database: what the source was.
    let c = &setup.cluster;
    let run = restore(&setup, &["--latest", "--target-db", "copy"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(properties(c, "copy"), source);

    // Replacing a database keeps what it has of its own, and adds what the
    // backup has beyond it.
    c.psql(
        "postgres",
        "CREATE ROLE copy_owner NOLOGIN; ALTER DATABASE copy OWNER TO copy_owner",
    );
    c.psql("postgres", "COMMENT ON DATABASE copy IS 'the copy''s own'");
    c.psql("postgres", "ALTER DATABASE copy SET work_mem = '1GB'");
    c.psql("postgres", "ALTER DATABASE copy RESET search_path");
    let own = properties(c, "copy");
    assert!(own.starts_with("copy_owner | the copy's own"), "{own}");
    let run = restore(&setup, &["--latest", "--target-db", "copy", "--clean"]);
    assert!(run.ok(), "{}", run.all());
    let replaced = properties(c, "copy");
    assert!(
        replaced.starts_with("copy_owner | the copy's own")
            && replaced.contains("work_mem=1GB")
            && replaced.contains("search_path=app, \"$user\", public")
            && replaced.contains("app_reader:statement_timeout=5s"),
        "{replaced}"
    );

    // The source lost: it comes back whole, under its own name.
    c.psql("postgres", "DROP DATABASE app");
    let run = restore(&setup, &["--latest", "--target-db", "app"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(properties(c, "app"), source);

    // A restore test runs its checks in a database with the same settings
    // and grants (its comment stays the scratch marker).
    setup.append_to_config("\n[jobs.test]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\nchecks = [\n  \
          { name = \"settings\", sql = \"SELECT count(*) FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database()\", equals = 2 },\n  \
          { name = \"grants\", sql = \"SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = current_database() AND a.privilege_type = 'CONNECT' AND pg_get_userbyid(a.grantee) = 'app_reader'\", equals = 1 },\n]\n");
    let run = setup.backup(&["run", "test"]);
    assert!(run.ok(), "{}", run.all());

    // A drill, into a throwaway cluster: the roles come from the globals, the
    // properties from the manifest, the comment too.
    let report = setup.work.path().join("drill.md");
    let run = setup.backup(&[
        "drill",
        "--job",
        "test",
        "--report",
        report.to_str().unwrap(),
    ]);
    assert!(run.ok(), "{}", run.all());
    let report = std::fs::read_to_string(report).unwrap();
    assert!(
        report.contains("| apply the database's settings, grants and comment |")
            && !report.contains("FAILED"),
        "{report}"
    );
}

#[test]
fn anything_a_user_made_makes_a_database_not_empty() {
    let setup = Setup::new("", "");
    backup_ok(&setup);
    let c = &setup.cluster;
    for (name, sql, what) in [
        ("only_lo", "SELECT lo_create(0)", "1 large object"),
        ("only_type", "CREATE TYPE mood AS ENUM ('ok')", "1 type"),
        (
            "only_composite",
            "CREATE TYPE pair AS (a int, b int)",
            "1 type",
        ),
        (
            "only_domain",
            "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
            "1 type",
        ),
        ("only_schema", "CREATE SCHEMA empty_yet", "1 schema"),
        (
            "only_subscription",
            "CREATE SUBSCRIPTION later CONNECTION 'dbname=nowhere' PUBLICATION p \
             WITH (connect = false)",
            "1 subscription",
        ),
        (
            "public_changed",
            "COMMENT ON SCHEMA public IS 'ours'",
            "1 changed public schema",
        ),
        (
            "only_function",
            "CREATE FUNCTION public.answer() RETURNS int LANGUAGE sql AS 'SELECT 42'",
            "1 function",
        ),
        (
            "only_collation",
            "CREATE COLLATION mine (provider = libc, locale = 'C')",
            "1 other object",
        ),
    ] {
        c.create_db(name);
        c.psql(name, sql);
        let run = restore(&setup, &["--latest", "--target-db", name]);
        assert_eq!(run.code, 9, "{name}: {}", run.all());
        assert!(
            run.stderr
                .contains(&format!("database {name} exists and is not empty ({what})")),
            "{name}: {}",
            run.all()
        );
    }
    // Created and left empty: restored into.
    c.create_db("empty");
    let run = restore(&setup, &["--latest", "--target-db", "empty"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(c.table_digests("empty"), c.table_digests("app"));
}

#[test]
fn a_manifest_that_describes_no_restorable_backup_is_refused_before_anything_is_made() {
    let setup = Setup::new("", "");
    let older = backup_ok(&setup);
    let newest = backup_ok(&setup);
    assert_ne!(older, newest);
    let path = setup
        .backups
        .join("nightly")
        .join(&newest)
        .join("manifest.json");
    let good = std::fs::read_to_string(&path).unwrap();
    let c = &setup.cluster;
    let databases = c.databases();

    let mut manifest: serde_json::Value = serde_json::from_str(&good).unwrap();
    manifest["objects"]
        .as_array_mut()
        .unwrap()
        .retain(|o| o["role"] != "data");
    std::fs::write(&path, manifest.to_string()).unwrap();
    for selector in [&["--latest"][..], &["--id", &newest]] {
        let run = restore(&setup, &[selector, &["--target-db", "fresh"]].concat());
        assert_eq!(run.code, 6, "{}", run.all());
        assert!(
            run.stderr
                .contains(&format!("nightly/{newest}/manifest.json"))
                && run.stderr.contains("lists no data object"),
            "{}",
            run.all()
        );
        assert_eq!(c.databases(), databases, "a database was made");
    }
    // Never an older backup than asked for, silently: the hint names it.
    let run = restore(&setup, &["--latest", "--target-db", "fresh"]);
    assert!(
        run.stderr
            .contains(&format!("the one before it is {older}")),
        "{}",
        run.all()
    );
    // verify says so before it reads a byte, and fails.
    let run = setup.backup(&["verify", "--job", "nightly", "--all"]);
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(
        run.stdout
            .contains(&format!("backup {newest} in storage disk: BAD")),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("lists no data object"), "{}", run.all());

    // The data object relabelled as the globals, and the other way round.
    let mut manifest: serde_json::Value = serde_json::from_str(&good).unwrap();
    for o in manifest["objects"].as_array_mut().unwrap() {
        o["role"] = if o["role"] == "data" {
            "globals".into()
        } else {
            "data".into()
        };
    }
    std::fs::write(&path, manifest.to_string()).unwrap();
    let run = setup.backup(&["verify", "--job", "nightly", "--id", &newest]);
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(run.stdout.contains("is called"), "{}", run.all());

    // A forged id is never listed, and no command says "a bug" about it.
    let mut manifest: serde_json::Value = serde_json::from_str(&good).unwrap();
    manifest["id"] = "../../etc".into();
    std::fs::write(&path, manifest.to_string()).unwrap();
    let run = setup.backup(&["--json", "list", "--job", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    assert!(!run.stdout.contains("../../etc"), "{}", run.all());
    assert!(run.stderr.contains("not a backup id"), "{}", run.all());
    for args in [
        &["verify", "--job", "nightly", "--id", &newest][..],
        &[
            "restore",
            "--job",
            "nightly",
            "--id",
            &newest,
            "--target-db",
            "x",
        ],
    ] {
        let run = setup.backup(args);
        assert_eq!(run.code, 6, "{args:?}: {}", run.all());
        assert!(!run.stderr.contains("a bug"), "{}", run.all());
    }
    std::fs::write(&path, good).unwrap();
    let run = restore(&setup, &["--latest", "--target-db", "fresh"]);
    assert!(run.ok(), "{}", run.all());
}

#[test]
fn a_target_name_postgres_would_refuse_is_a_usage_error() {
    let setup = Setup::new("", "");
    for name in ["", &"x".repeat(200)] {
        let run = restore(&setup, &["--latest", "--target-db", name]);
        assert_eq!(run.code, 2, "{}", run.all());
        assert!(run.stderr.contains("hint:"), "{}", run.all());
    }
}

#[test]
fn a_files_restore_with_force_replaces_the_directory_only_once_the_copy_checks_out() {
    let cluster = Cluster::start();
    cluster.create_db("app");
    let setup = Setup::with_cluster(cluster, "", "");
    let tree = setup.work.path().join("uploads");
    std::fs::create_dir_all(tree.join("a")).unwrap();
    std::fs::write(tree.join("a/one.txt"), "one").unwrap();
    std::fs::write(tree.join("two.txt"), "two").unwrap();
    setup.append_to_config(&format!(
        "\n[jobs.uploads]\ntype = \"files\"\npath = \"{}\"\nstorages = [\"disk\"]\n",
        tree.display()
    ));
    let run = setup.backup(&["run", "uploads"]);
    assert!(run.ok(), "{}", run.all());
    let run = setup.backup(&["--json", "list", "--job", "uploads"]);
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let id = listed[0]["id"].as_str().unwrap().to_owned();

    // The live directory moved on since.
    let target = setup.work.path().join("live");
    std::fs::create_dir_all(target.join("a")).unwrap();
    std::fs::write(target.join("a/one.txt"), "changed").unwrap();
    std::fs::write(target.join("new.txt"), "made since").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o750)).unwrap();
    let listing = |dir: &Path| {
        let mut out = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    dirs.push(p.clone());
                } else {
                    out.push(format!(
                        "{}={}",
                        p.strip_prefix(dir).unwrap().display(),
                        std::fs::read_to_string(&p).unwrap()
                    ));
                }
            }
        }
        out.sort();
        out
    };
    let before = listing(&target);
    let restore_dir = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--job",
            "uploads",
            "--latest",
            "--target-dir",
            target.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        setup.backup(&args)
    };
    // A copy an interrupted restore left beside it is removed first.
    let stale = setup.work.path().join(".live.restoring-20200101T000000Z");
    std::fs::create_dir_all(stale.join("half")).unwrap();
    let run = restore_dir(&["--force", "--dry-run"]);
    assert!(
        run.stdout
            .contains(&format!("first:    remove {}", stale.display())),
        "{}",
        run.all()
    );

    // Corrupt: the live directory stays as it was, no copy is left.
    let object = setup
        .backups
        .join("uploads")
        .join(&id)
        .join("files.tar.zst");
    let good = std::fs::read(&object).unwrap();
    flip_a_byte(&object);
    let run = restore_dir(&["--force"]);
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(run.stderr.contains("was not touched"), "{}", run.all());
    assert_eq!(listing(&target), before);
    assert!(!stale.exists(), "the interrupted copy is gone");
    // --keep-failed keeps the copy under a name the next restore leaves alone.
    let run = restore_dir(&["--force", "--keep-failed"]);
    assert_eq!(run.code, 6, "{}", run.all());
    let kept = setup.work.path().join(format!(".live.failed-{id}"));
    assert!(kept.is_dir(), "{}", run.all());
    std::fs::remove_dir_all(&kept).unwrap();
    let leftovers: Vec<String> = std::fs::read_dir(setup.work.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".restoring-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Whole: the directory becomes the backup exactly, keeping its own mode.
    std::fs::write(&object, good).unwrap();
    let run = restore_dir(&["--force", "--dry-run"]);
    assert!(
        run.stdout
            .contains("replaced only once the restored copy checks out"),
        "{}",
        run.all()
    );
    let run = restore_dir(&["--force"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(listing(&target), listing(&tree));
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o750
    );
    let leftovers: Vec<String> = std::fs::read_dir(setup.work.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".live"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // --in-place writes into it, as tar -x would: what is not in the backup stays.
    std::fs::write(target.join("new.txt"), "made since").unwrap();
    let run = restore_dir(&["--in-place"]);
    assert_eq!(
        run.code,
        9,
        "--in-place alone replaces nothing: {}",
        run.all()
    );
    let run = restore_dir(&["--force", "--in-place"]);
    assert!(run.ok(), "{}", run.all());
    assert!(listing(&target).contains(&"new.txt=made since".to_owned()));
    assert!(listing(&target).contains(&"a/one.txt=one".to_owned()));
}

#[test]
fn a_target_that_fills_while_its_copy_is_restored_is_not_replaced_without_clean() {
    let (setup, tools) = with_held_pg_restore();
    let id = backup_ok(&setup);
    let c = &setup.cluster;
    // Empty when the restore is planned: no --clean needed, then.
    c.create_db("fresh");
    let staging = format!("fresh__restoring_{}", id.to_lowercase());
    std::fs::write(tools.join("hold"), "").unwrap();
    let child = setup.spawn_backup_with(
        &[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "fresh",
        ],
        &[],
    );
    common::wait_for(
        "the copy being restored",
        std::time::Duration::from_secs(60),
        || c.databases().contains(&staging),
    );
    // An application writes into it meanwhile.
    c.psql(
        "fresh",
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    std::fs::remove_file(tools.join("hold")).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(
        stderr.contains("was empty when the restore was planned and now holds")
            && stderr.contains(&format!("the restored copy is kept as database {staging}")),
        "{stderr}"
    );
    assert_eq!(c.psql("fresh", "SELECT count(*) FROM orders"), "1000");
    // The proven copy is kept, marked, with how to put it in place by hand.
    assert!(c.databases().contains(&staging));
    assert!(stderr.contains("ALTER DATABASE"), "{stderr}");
    assert_eq!(c.table_digests(&staging), c.table_digests("app"));
}

#[test]
fn a_copy_that_restores_but_fails_its_proof_never_replaces_the_target() {
    let setup = Setup::new("", "");
    let id = backup_ok(&setup);
    let c = &setup.cluster;
    c.create_db("precious");
    c.psql("precious", "CREATE TABLE ledger AS SELECT 1 AS id");
    let before = c.table_digests("precious");
    // A manifest that reads, whose counts the restored data does not match:
    // pg_restore succeeds, the proof does not.
    let path = setup
        .backups
        .join("nightly")
        .join(&id)
        .join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let table = &mut manifest["tables"][0];
    let name = format!(
        "{}.{}",
        table["schema"].as_str().unwrap(),
        table["name"].as_str().unwrap()
    );
    table["rows"] = (table["rows"].as_i64().unwrap() + 1).into();
    std::fs::write(&path, manifest.to_string()).unwrap();
    let run = restore(&setup, &["--latest", "--target-db", "precious", "--clean"]);
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("rows of {name}"))
            && run.stderr.contains("database precious was not touched"),
        "{}",
        run.all()
    );
    assert_eq!(c.table_digests("precious"), before);
    assert_eq!(restore_leftovers(c), Vec::<String>::new());
}

#[test]
fn a_copy_killed_before_it_was_marked_is_dropped_only_while_empty() {
    // A restore killed between CREATE DATABASE and the COMMENT that marks
    // its copy leaves an unmarked database under the copy's name.
    let setup = Setup::new("", "");
    let id = backup_ok(&setup);
    let c = &setup.cluster;
    let staging = format!("fresh__restoring_{}", id.to_lowercase());
    c.create_db(&staging);
    c.psql(&staging, "CREATE TABLE mine AS SELECT 1 AS id");
    let args = [
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "fresh",
    ];
    let run = setup.backup(&args);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains(&format!("database {staging}")),
        "{}",
        run.all()
    );
    assert!(c.databases().contains(&staging));

    c.psql(&staging, "DROP TABLE mine");
    assert_next_restore_drops(&setup, &args, &staging, "fresh");
}

/// The plan says `staging` goes first, and the restore (`args`) drops it,
/// restores `target` and leaves nothing behind.
fn assert_next_restore_drops(setup: &Setup, args: &[&str], staging: &str, target: &str) {
    let c = &setup.cluster;
    let run = setup.backup(&[args, &["--dry-run"]].concat());
    assert!(
        run.stdout.contains(&format!(
            "first:     drop {staging}, left by an interrupted restore"
        )),
        "{}",
        run.all()
    );
    let run = setup.backup(args);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(c.table_digests(target), c.table_digests("app"));
    assert_eq!(restore_leftovers(c), Vec::<String>::new());
}
