//! Physical jobs: base backups, and the WAL archive PostgreSQL fills
//! through `backup wal push` (tests/it/common/archiving.rs sets it up).

use std::io::Read;
use std::time::{Duration, Instant};

use crate::common::archiving::{Archiving, JOB, Options};
use crate::common::servers;

#[test]
fn a_physical_job_reads_from_the_job_file_with_its_wal_settings() {
    let a = Archiving::with(Options {
        no_archiving: true,
        extra_job: "wal_push_ahead = 8\nwal_queue_max = \"8GiB\"\nwal_max_age = \"30m\"",
        ..Options::default()
    });
    let run = a.backup(&["config", "check"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains(JOB), "{}", run.all());
    assert!(a.cluster.data_dir().join("PG_VERSION").exists());
    a.append_to_config("[jobs.bad]\ntype = \"physical\"\ndatabase = \"app\"\nstorages = [\"disk\"]\nwal_push_ahead = 100\n");
    let run = a.backup(&["config", "check"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stderr.contains("wal_push_ahead = 100"), "{}", run.all());
}

#[test]
fn postgresql_archives_its_wal_through_wal_push() {
    let a = Archiving::start();
    let segment = a.switch_and_wait();
    let archived = a.archived();
    assert!(
        archived
            .iter()
            .any(|f| f.contains(&format!("/{segment}-")) && f.ends_with(".zst")),
        "{archived:?}\n{}",
        a.cluster.log()
    );
    // The stored object is the segment, compressed: zstd gives it back.
    let object = archived.iter().find(|f| f.contains(&segment)).unwrap();
    let stored = std::fs::read(a.backups.join(JOB).join("wal").join(object)).unwrap();
    let raw = zstd::decode_all(&stored[..]).unwrap();
    assert_eq!(raw.len(), 16 << 20);
    let sha = crate::common::sha256_hex(&raw);
    assert!(object.contains(&sha), "{object} names its raw digest {sha}");
}

/// `backup ARGS` as [`Archiving::backup`] runs it, with a lock directory of
/// the test's own: a physical job's run lock is a file of this host, and
/// every test here names its job `base`.
fn backup(a: &Archiving, args: &[&str], env: &[(&str, &str)]) -> crate::common::Run {
    let locks = a.work.join("locks");
    let mut all = env.to_vec();
    all.push(("BACKUP_LOCK_DIR", locks.to_str().unwrap()));
    a.backup_with(args, &all)
}

/// The one complete backup of the job in `disk`: its id and manifest.
fn only_backup(a: &Archiving) -> (String, serde_json::Value) {
    let manifests: Vec<String> = a
        .stored_files()
        .into_iter()
        .filter(|f| f.starts_with(&format!("{JOB}/")) && f.ends_with("/manifest.json"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let id = manifests[0].split('/').nth(1).unwrap().to_owned();
    let text = std::fs::read_to_string(a.backups.join(&manifests[0])).unwrap();
    (id, serde_json::from_str(&text).unwrap())
}

/// Nothing of a backup of the job is stored: its WAL archive aside.
fn no_backup(a: &Archiving) -> Vec<String> {
    a.stored_files()
        .into_iter()
        .filter(|f| f.starts_with(&format!("{JOB}/")) && !f.starts_with(&format!("{JOB}/wal/")))
        .filter(|f| !f.starts_with(&format!("{JOB}/reports/")))
        .collect()
}

/// The names of the 16 MiB segments from `first` to `last`.
fn segments(first: &str, last: &str) -> Vec<String> {
    let number = |name: &str| {
        u64::from_str_radix(&name[8..16], 16).unwrap() * 256
            + u64::from_str_radix(&name[16..], 16).unwrap()
    };
    (number(first)..=number(last))
        .map(|n| format!("{}{:08X}{:08X}", &first[..8], n / 256, n % 256))
        .collect()
}

/// `pgbench ARGS postgres` against the cluster, through its socket.
fn pgbench(a: &Archiving, args: &[&str]) -> std::process::Output {
    let dir = a.cluster.dir().to_str().unwrap().to_owned();
    let port = a.cluster.port().to_string();
    let mut all = vec!["-h", &dir, "-p", &port, "-U", "postgres"];
    all.extend_from_slice(args);
    all.push("postgres");
    a.cluster.server_program("pgbench", &all)
}

#[test]
fn a_base_backup_taken_while_pgbench_writes_is_complete_once_its_wal_is_archived() {
    let a = Archiving::start();
    let init = pgbench(&a, &["-i", "-s", "2", "-q"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let (load, run) = std::thread::scope(|s| {
        let load = s.spawn(|| pgbench(&a, &["-T", "5", "-c", "2"]));
        std::thread::sleep(Duration::from_millis(500));
        let run = backup(&a, &["run", JOB], &[]);
        (load.join().unwrap(), run)
    });
    assert!(run.ok(), "{}\n{}", run.all(), a.cluster.log());
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );

    let (id, m) = only_backup(&a);
    let p = &m["physical"];
    assert_eq!(m["database"], "app");
    assert_eq!(m["dbname"], "postgres");
    assert!(
        m["pg_dump_version"]
            .as_str()
            .unwrap()
            .starts_with("pg_basebackup (PostgreSQL)"),
        "{m}"
    );
    assert_eq!(
        m["system_identifier"].as_str().unwrap(),
        a.psql("SELECT system_identifier FROM pg_control_system()")
    );
    assert_eq!(m["tables"], serde_json::json!([]));
    assert_eq!(m["objects"].as_array().unwrap().len(), 2);
    assert_eq!(m["objects"][0]["role"], "base");
    assert_eq!(m["objects"][0]["key"], "base.tar.zst");
    // A copy of the tar's backup_manifest, which the next incremental
    // backup is taken against: zstd reads it without backup.
    assert_eq!(m["objects"][1]["role"], "backup_manifest");
    assert_eq!(m["objects"][1]["key"], "backup_manifest.zst");
    let copy = std::process::Command::new("zstd")
        .args(["-dc", "--"])
        .arg(a.backups.join(JOB).join(&id).join("backup_manifest.zst"))
        .output()
        .unwrap();
    assert!(copy.status.success());
    assert!(
        String::from_utf8_lossy(&copy.stdout)
            .starts_with("{ \"PostgreSQL-Backup-Manifest-Version\""),
        "{}",
        String::from_utf8_lossy(&copy.stdout[..copy.stdout.len().min(200)])
    );
    assert_eq!(
        copy.stdout.len() as u64,
        m["objects"][1]["raw_size"].as_u64().unwrap()
    );
    assert_eq!(p["timeline"], 1);
    assert_eq!(p["wal_segment_size"], 16 << 20);
    assert_eq!(p["manifest_checksums"], "CRC32C");
    assert_eq!(m["snapshot_at"], p["stop_time"]);
    // The locations, as the server reads them, lie in the segments named.
    let lsn = |field: &str| {
        a.psql(&format!(
            "SELECT pg_walfile_name('{}'::pg_lsn)",
            p[field].as_str().unwrap()
        ))
    };
    let (wal_start, wal_stop) = (
        p["wal_start"].as_str().unwrap(),
        p["wal_stop"].as_str().unwrap(),
    );
    assert_eq!(lsn("start_lsn"), wal_start);
    assert!(lsn("stop_lsn").as_str() >= wal_stop, "{p}");
    assert!(
        a.psql(&format!(
            "SELECT '{}'::pg_lsn < '{}'::pg_lsn",
            p["start_lsn"].as_str().unwrap(),
            p["stop_lsn"].as_str().unwrap()
        )) == "t"
    );
    // Every segment it needs is in the archive.
    let archived = a.archived();
    let needed = segments(wal_start, wal_stop);
    for segment in &needed {
        assert!(
            archived
                .iter()
                .any(|f| f.starts_with(&format!("{}/{segment}-", &segment[..16]))),
            "{segment} is not archived: {archived:?}"
        );
    }

    // The stored object is what the manifest says, and a tar of the cluster.
    let base = a.backups.join(JOB).join(&id).join("base.tar.zst");
    let stored = std::fs::read(&base).unwrap();
    assert_eq!(
        crate::common::sha256_hex(&stored),
        m["objects"][0]["stored_sha256"].as_str().unwrap()
    );
    let listing = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("zstd -d -c '{}' | tar -t", base.display()))
        .output()
        .unwrap();
    assert!(
        listing.status.success(),
        "{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let names = String::from_utf8_lossy(&listing.stdout);
    for name in [
        "PG_VERSION",
        "backup_manifest",
        "backup_label",
        "global/pg_control",
    ] {
        assert!(names.lines().any(|l| l == name), "{name} not in\n{names}");
    }

    // `list` says what it is.
    let list = backup(&a, &["--json", "list", "--job", JOB], &[]);
    assert!(list.ok(), "{}", list.all());
    let rows: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["physical"]["wal_start"], wal_start);
    let list = backup(&a, &["list", "--job", JOB], &[]);
    assert!(list.stdout.contains("cluster of app"), "{}", list.all());
}

#[test]
fn a_cluster_without_archive_mode_is_refused_before_anything_is_written() {
    let a = Archiving::with(Options {
        no_archiving: true,
        ..Options::default()
    });
    let started = Instant::now();
    let run = backup(&a, &["run", JOB], &[]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(run.stderr.contains("archive_mode = off"), "{}", run.all());
    assert!(
        run.stderr
            .contains(&format!("backup wal check --job {JOB}")),
        "{}",
        run.all()
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(no_backup(&a), Vec::<String>::new());
}

#[test]
fn wal_archived_into_another_job_fails_the_backup_within_wal_wait() {
    let a = Archiving::with(Options {
        push_job: Some("other"),
        // A job timeout: a wait the bound missed fails instead of hanging.
        extra_job: "wal_wait = \"10s\"\ntimeout = \"90s\"",
        ..Options::default()
    });
    a.append_to_config(&format!(
        "[jobs.other]\ntype = \"physical\"\ndatabase = \"app\"\nstorages = [\"disk\"]\nspool_path = \"{}\"\n",
        a.spool.display()
    ));
    let started = Instant::now();
    let run = backup(&a, &["run", JOB], &[]);
    let took = started.elapsed();
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr.contains("was not archived within 10s"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("archive_command"), "{}", run.all());
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(60),
        "{took:?}"
    );
    // The base tar went with the run: nothing of it is left.
    assert_eq!(no_backup(&a), Vec::<String>::new());
    assert!(
        a.stored_files().iter().any(|f| f.starts_with("other/wal/")),
        "{:?}",
        a.stored_files()
    );
}

/// The WAL senders of the cluster: a base backup's server side.
fn wal_senders(a: &Archiving) -> String {
    a.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'")
}

#[test]
fn a_server_that_cannot_archive_is_not_waited_for_past_wal_wait() {
    // archive_command fails: the server would wait inside pg_basebackup for ever.
    let a = Archiving::with(Options {
        settings: "archive_command = 'false'",
        extra_job: "wal_wait = \"10m\"\ntimeout = \"6s\"",
        ..Options::default()
    });
    // First the job's timeout stops the run while the server waits.
    let run = backup(&a, &["run", JOB], &[]);
    assert_eq!(run.code, 10, "{}", run.all());
    assert_eq!(no_backup(&a), Vec::<String>::new());
    // Whatever that left on the server, the next run ends it, and its own
    // wait ends at wal_wait.
    let config = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        config.replace(
            "wal_wait = \"10m\"\ntimeout = \"6s\"",
            "wal_wait = \"5s\"\ntimeout = \"90s\"",
        ),
    )
    .unwrap();
    let started = Instant::now();
    let run = backup(&a, &["run", JOB], &[]);
    let took = started.elapsed();
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr.contains("was not archived within 5s")
            && run.stderr.contains("still waited for the archive"),
        "{}",
        run.all()
    );
    assert!(took < Duration::from_secs(40), "{took:?}");
    assert_eq!(no_backup(&a), Vec::<String>::new());
    crate::common::wait_for("the WAL senders to end", Duration::from_secs(20), || {
        wal_senders(&a) == "0"
    });
}

#[test]
fn a_standby_and_a_cluster_with_tablespaces_are_refused_by_name() {
    let a = Archiving::start();
    {
        let standby = a.cluster.standby();
        a.append_to_config(&format!(
            "[databases.replica]\nurl = \"{}\"\npassword_file = \"{}\"\n\n\
             [jobs.replica]\ntype = \"physical\"\ndatabase = \"replica\"\nstorages = [\"disk\"]\nspool_path = \"{}\"\n",
            standby.url("postgres"),
            a.cluster.password_file.display(),
            a.spool.display()
        ));
        let run = backup(&a, &["run", "replica"], &[]);
        assert_eq!(run.code, 9, "{}", run.all());
        assert!(run.stderr.contains("is a standby"), "{}", run.all());
    }
    let location = a.cluster.dir().join("ts_extra");
    std::fs::create_dir(&location).unwrap();
    crate::common::chown_tree_to_postgres(&location);
    a.psql(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        location.display()
    ));
    let run = backup(&a, &["run", JOB], &[]);
    assert_eq!(run.code, 9, "{}", run.all());
    assert!(
        run.stderr.contains("(extra)") && run.stderr.contains("not supported yet"),
        "{}",
        run.all()
    );
    assert_eq!(no_backup(&a), Vec::<String>::new());
}

#[test]
fn an_encrypted_base_backup_goes_to_s3_with_its_wal() {
    let bucket = servers::block_on(servers::create_bucket("physical"));
    let key = age::x25519::Identity::generate();
    let s3 = servers::s3_section("s3", &servers::s3_endpoint(), &bucket, "");
    let job = format!(
        "encryption = {{ recipients = [\"{}\"] }}\nwal_wait = \"30s\"",
        key.to_public()
    );
    let env = servers::s3_env();
    let a = Archiving::with(Options {
        extra_storages: &s3,
        storages: &["disk", "s3"],
        extra_job: &job,
        env: &env,
        ..Options::default()
    });
    let run = backup(&a, &["run", JOB], &env);
    assert!(run.ok(), "{}\n{}", run.all(), a.cluster.log());
    let (id, m) = only_backup(&a);
    assert_eq!(m["encryption"], "age");
    assert_eq!(m["objects"][0]["key"], "base.tar.zst.age");
    let keys = servers::block_on(servers::bucket_keys(&bucket));
    let prefix = format!("prod/db/{JOB}/{id}/");
    assert!(keys.contains(&format!("{prefix}manifest.json")), "{keys:?}");
    // The WAL it needs is in S3, sealed too.
    let wal_stop = m["physical"]["wal_stop"].as_str().unwrap();
    assert!(
        keys.iter().any(|k| k.starts_with(&format!(
            "prod/db/{JOB}/wal/{}/{wal_stop}-",
            &wal_stop[..16]
        )) && k.ends_with(".zst.age")),
        "{keys:?}"
    );
    // The object opens with the key, and is the cluster with its manifest.
    let stored = servers::block_on(servers::s3_object(
        &bucket,
        &format!("{prefix}base.tar.zst.age"),
    ));
    assert_eq!(
        crate::common::sha256_hex(&stored),
        m["objects"][0]["stored_sha256"].as_str().unwrap()
    );
    let mut compressed = Vec::new();
    age::Decryptor::new(&stored[..])
        .unwrap()
        .decrypt(std::iter::once(&key as &dyn age::Identity))
        .unwrap()
        .read_to_end(&mut compressed)
        .unwrap();
    let raw = zstd::decode_all(&compressed[..]).unwrap();
    assert_eq!(
        crate::common::sha256_hex(&raw),
        m["objects"][0]["raw_sha256"].as_str().unwrap()
    );
    let mut archive = tar::Archive::new(&raw[..]);
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    for name in ["PG_VERSION", "backup_manifest"] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
}

#[test]
fn a_role_needs_replication_not_superuser() {
    let a = Archiving::start();
    a.psql(&format!(
        "CREATE ROLE rep LOGIN PASSWORD '{}'",
        crate::common::PASSWORD
    ));
    let config = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        config.replace("postgresql://postgres@", "postgresql://rep@"),
    )
    .unwrap();
    let run = backup(&a, &["run", JOB], &[]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr.contains("role rep may not take base backups")
            && run.stderr.contains("ALTER ROLE \"rep\" REPLICATION"),
        "{}",
        run.all()
    );
    assert_eq!(no_backup(&a), Vec::<String>::new());
    a.psql("ALTER ROLE rep REPLICATION");
    let run = backup(&a, &["run", JOB], &[]);
    assert!(run.ok(), "{}\n{}", run.all(), a.cluster.log());
    let (_, m) = only_backup(&a);
    assert_eq!(m["physical"]["timeline"], 1);
}

/// A physical job's life with real base backups: verify against the tar's
/// backup_manifest (and PostgreSQL's own pg_verifybackup agrees), the
/// archive read back from the oldest kept backup, retention after a second
/// backup, and what status and check say of it.
#[test]
fn base_backups_verify_prune_with_their_wal_and_show_in_status_and_check() {
    let a = Archiving::with(Options {
        extra_job: "retention = { keep_last = 1 }",
        ..Options::default()
    });
    a.psql("CREATE TABLE kept AS SELECT g FROM generate_series(1, 20000) g");
    let run = backup(&a, &["run", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("on timeline 1, archived"),
        "{}",
        run.all()
    );
    let (first, manifest) = only_backup(&a);
    let first_start = manifest["physical"]["wal_start"]
        .as_str()
        .unwrap()
        .to_owned();

    let run = backup(&a, &["verify", "--job", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("match the tar's backup_manifest"),
        "{}",
        run.all()
    );
    // The tar as stored, unpacked by hand, passes pg_verifybackup.
    let unpacked = a.work.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let stored = a.backups.join(JOB).join(&first).join("base.tar.zst");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -q -dc '{}' | tar -x -C '{}'",
            stored.display(),
            unpacked.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::common::chown_tree_to_postgres(&unpacked);
    let out = a
        .cluster
        .server_program("pg_verifybackup", &["-n", unpacked.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // More WAL, a second base backup; keep_last = 1 prunes the first, and
    // with it exactly the WAL below the second's first segment.
    a.psql("INSERT INTO kept SELECT g FROM generate_series(1, 20000) g");
    a.switch_and_wait();
    a.switch_and_wait();
    let run = backup(&a, &["run", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    let (second, manifest) = only_backup(&a);
    assert_ne!(first, second);
    let second_start = manifest["physical"]["wal_start"]
        .as_str()
        .unwrap()
        .to_owned();
    let left: Vec<String> = a
        .archived()
        .into_iter()
        .filter(|f| !f.starts_with("history/") && !f.starts_with("dropped/"))
        .map(|f| f.split('/').nth(1).unwrap()[..24].to_owned())
        .collect();
    assert!(!left.is_empty());
    assert!(
        left.iter().all(|s| *s >= second_start),
        "WAL below {second_start} survived: {left:?}"
    );
    assert!(
        !left.contains(&first_start),
        "{first_start} of the pruned backup is still there: {left:?}"
    );

    let run = backup(&a, &["verify", "--job", JOB, "--wal"], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains(&second),
        "starts from the backup: {}",
        run.all()
    );

    let run = backup(&a, &["status", "--job", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("newest 0000000"), "{}", run.all());
    assert!(run.stdout.contains("no gaps"), "{}", run.all());
    let run = backup(&a, &["check", "--job", JOB], &[]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("wal_age="), "{}", run.all());
}

/// Base backups and their WAL on Azure Blob, sealed with age: stored,
/// verified file by file and segment by segment with the key, and unreadable
/// without it.
#[test]
fn an_encrypted_physical_job_on_azure_verifies_its_base_backup_and_wal() {
    use age::secrecy::ExposeSecret;
    let container = servers::block_on(servers::create_container("physical"));
    let key = age::x25519::Identity::generate();
    let secret = key.to_string().expose_secret().to_owned();
    let blob = servers::azure_section("blob", &servers::azure_endpoint(), &container, "");
    let job = format!(
        "encryption = {{ recipients = [\"{}\"] }}\nwal_wait = \"30s\"",
        key.to_public()
    );
    let env = servers::azure_env();
    let a = Archiving::with(Options {
        extra_storages: &blob,
        storages: &["blob"],
        extra_job: &job,
        env: &env,
        ..Options::default()
    });
    let run = backup(&a, &["run", JOB], &env);
    assert!(run.ok(), "{}\n{}", run.all(), a.cluster.log());
    a.switch_and_wait();
    let with_key: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain(std::iter::once(("BACKUP_AGE_IDENTITY", secret.as_str())))
        .collect();
    let run = backup(&a, &["verify", "--job", JOB], &with_key);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("match the tar's backup_manifest"),
        "{}",
        run.all()
    );
    let run = backup(&a, &["verify", "--job", JOB, "--wal"], &with_key);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains("where base backup"), "{}", run.all());
    // Without the key nothing reads, and verify says what is missing.
    let run = backup(&a, &["verify", "--job", JOB], &env);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("no identity to decrypt it"),
        "{}",
        run.all()
    );
}
