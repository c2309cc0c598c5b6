//! `backup wal push` and `backup wal fetch` as PostgreSQL runs them: the
//! archive of a real cluster (tests/it/common/archiving.rs), in real
//! storages, with archiving paused and resumed to build a backlog.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::archiving::{Archiving, JOB, Options};
use crate::common::proxy::{FaultProxy, Faults};
use crate::common::servers::{self, block_on};
use crate::common::{self, Run, wait_for};

/// Keeps every segment in `pg_wal` for the test to read back.
const KEEP_WAL: &str = "wal_keep_size = '2GB'\n";
/// `archive_command` fails until [`resume`]: `.ready` files pile up.
const PAUSED: &str = "archive_command = 'false'\n";

/// The `archive_command` the harness sets, for [`resume`].
fn archive_command(a: &Archiving, env: &[(&str, &str)]) -> String {
    let env: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    format!(
        "{env}{} --config {} wal push --job {JOB} %p",
        env!("CARGO_BIN_EXE_backup"),
        a.config.display()
    )
}

/// Sets the real `archive_command` on a cluster started [`PAUSED`].
fn resume(a: &Archiving, env: &[(&str, &str)]) {
    a.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        archive_command(a, env)
    ));
    a.psql("SELECT pg_reload_conf()");
}

/// Finishes `n` segments (something written into each) and returns their
/// names, oldest first.
fn switch(a: &Archiving, n: usize) -> Vec<String> {
    a.psql("CREATE TABLE IF NOT EXISTS wal_filler(x int)");
    (0..n)
        .map(|_| {
            a.psql("INSERT INTO wal_filler VALUES (1)");
            a.psql("SELECT pg_walfile_name(pg_switch_wal())")
        })
        .collect()
}

fn ready(a: &Archiving, segment: &str) -> bool {
    a.wal_dir()
        .join("archive_status")
        .join(format!("{segment}.ready"))
        .exists()
}

/// Waits until the archiver has tried (and failed) `segment` at least once.
fn wait_failed(a: &Archiving, segment: &str) {
    wait_for(
        &format!("a failed attempt at {segment}"),
        Duration::from_secs(60),
        || {
            a.psql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver")
                .starts_with(segment)
        },
    );
}

/// The archive's objects (relative to `<job>/wal`) of `segment`.
fn objects_of(a: &Archiving, segment: &str) -> Vec<String> {
    a.archived()
        .into_iter()
        .filter(|f| f.contains(&format!("/{segment}-")))
        .collect()
}

/// A directory the server's user may write, for fetched files.
fn target_dir(a: &Archiving, name: &str) -> PathBuf {
    let dir = a.work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    common::chown_tree_to_postgres(&dir);
    dir
}

fn fetch(a: &Archiving, name: &str, target: &Path, env: &[(&str, &str)]) -> Run {
    a.backup_with(
        &["wal", "fetch", "--job", JOB, name, target.to_str().unwrap()],
        env,
    )
}

fn ok(run: Run) -> Run {
    assert!(run.ok(), "{}", run.all());
    run
}

fn segment_bytes(a: &Archiving, segment: &str) -> Vec<u8> {
    std::fs::read(a.wal_dir().join(segment)).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `f` with `standby.signal` in the directory the commands run in,
/// as in a standby's data directory.
fn as_standby<T>(a: &Archiving, f: impl FnOnce() -> T) -> T {
    let signal = a.work.join("standby.signal");
    std::fs::write(&signal, b"").unwrap();
    let out = f();
    std::fs::remove_file(&signal).unwrap();
    out
}

/// The spool directory of the files fetched ahead for the commands'
/// working directory: the only recovery of the test.
fn fetched_dir(a: &Archiving) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(a.spool.join(JOB).join("fetched"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// How many log lines say `segment` went into a storage.
fn uploads_of(log: &str, segment: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(&format!("archived {segment} ("))
                || l.contains(&format!("archived {segment} ahead ("))
        })
        .count()
}

#[test]
fn the_same_segment_twice_is_a_no_op_and_other_bytes_under_its_name_are_refused() {
    let a = Archiving::with(Options {
        settings: KEEP_WAL,
        ..Options::default()
    });
    let segment = a.switch_and_wait();
    let before = a.stored_files();
    let object = objects_of(&a, &segment).pop().expect("archived");
    let stored = std::fs::read(a.backups.join(JOB).join("wal").join(&object)).unwrap();

    let copy = target_dir(&a, "copy").join(&segment);
    std::fs::copy(a.wal_dir().join(&segment), &copy).unwrap();
    common::chown_tree_to_postgres(&copy);
    let push = |path: &Path| a.backup(&["wal", "push", "--job", JOB, path.to_str().unwrap()]);
    let again = ok(push(&copy));
    assert!(
        again.stderr.contains("was archived already"),
        "{}",
        again.all()
    );
    assert_eq!(a.stored_files(), before);

    // A spool note is trusted only for the storages it names.
    let sha = sha256_hex(&std::fs::read(&copy).unwrap());
    let note = a.spool.join(JOB).join("pushed").join(&segment);
    let write_note = |storages: &str| {
        std::fs::write(
            &note,
            format!("{{\"sha256\": \"{sha}\", \"storages\": {storages}}}"),
        )
        .unwrap();
        common::chown_tree_to_postgres(&note);
    };
    write_note("[\"elsewhere\"]");
    let elsewhere = ok(push(&copy));
    assert!(
        elsewhere.stderr.contains("was archived already"),
        "looked at the storage: {}",
        elsewhere.all()
    );
    write_note("[\"disk\"]");
    let noted = ok(push(&copy));
    assert!(
        noted.stderr.contains("was pushed ahead already"),
        "{}",
        noted.all()
    );
    assert!(!note.exists());

    // One byte differs: refused, with what to check, and nothing rewritten.
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[4096] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    let other = push(&copy);
    assert_eq!(other.code, 9, "{}", other.all());
    assert!(other.stderr.contains("other contents"), "{}", other.all());
    assert!(other.stderr.contains("hint:"), "{}", other.all());
    assert_eq!(a.stored_files(), before);
    assert_eq!(
        std::fs::read(a.backups.join(JOB).join("wal").join(&object)).unwrap(),
        stored
    );

    // A file that is not there is named, and is not a crash for PostgreSQL.
    let missing = push(&copy.with_file_name("000000010000000000000FFF"));
    assert_eq!(missing.code, 7, "{}", missing.all());
    assert!(
        missing
            .stderr
            .contains("000000010000000000000FFF does not exist"),
        "{}",
        missing.all()
    );
    // Both failures are counted for status and the metrics.
    let total = std::fs::read_to_string(a.spool.join(JOB).join("push-failures.total")).unwrap();
    assert_eq!(total.trim(), "2");
    let log = std::fs::read_to_string(a.spool.join(JOB).join("push-failures.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert_eq!(last["file"], "000000010000000000000FFF");
    assert!(
        last["error"].as_str().unwrap().contains("does not exist"),
        "{last}"
    );
    assert!(
        last["at"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok(),
        "{last}"
    );

    // Another server's copy beside ours, as two pushes racing leave it:
    // a push refuses, and a fetch trusts neither (126: recovery stops).
    let theirs = std::fs::read(&copy).unwrap();
    let their_sha = sha256_hex(&theirs);
    let dir = a
        .backups
        .join(JOB)
        .join("wal")
        .join(&object)
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::write(
        dir.join(format!("{segment}-{their_sha}.zst")),
        zstd::encode_all(&theirs[..], 3).unwrap(),
    )
    .unwrap();
    common::chown_tree_to_postgres(&dir);
    std::fs::copy(a.wal_dir().join(&segment), &copy).unwrap();
    let refused = push(&copy);
    assert_eq!(refused.code, 9, "{}", refused.all());
    assert!(refused.stderr.contains(&their_sha), "{}", refused.all());
    let target = target_dir(&a, "restore").join("RECOVERYXLOG");
    let run = fetch(&a, &segment, &target, &[]);
    assert_eq!(run.code, 126, "{}", run.all());
    assert!(
        run.stderr.contains("two copies") && run.stderr.contains(&their_sha),
        "{}",
        run.all()
    );
    assert!(!target.exists());
}

#[test]
fn segments_pushed_ahead_are_uploaded_once_and_later_calls_return_from_the_spool() {
    let a = Archiving::with(Options {
        settings: &format!("{KEEP_WAL}{PAUSED}"),
        ..Options::default()
    });
    let segments = switch(&a, 20);
    let last = segments.last().unwrap();
    wait_for("20 segments ready", Duration::from_secs(30), || {
        segments.iter().all(|s| ready(&a, s))
    });
    resume(&a, &[]);
    a.wait_archived(last);

    let log = a.cluster.log();
    for s in &segments {
        assert_eq!(uploads_of(&log, s), 1, "{s} uploaded once\n{log}");
        assert_eq!(objects_of(&a, s).len(), 1, "{s}: {:?}", a.archived());
    }
    // PostgreSQL's calls for what was pushed ahead uploaded nothing.
    let from_spool = log.matches("was pushed ahead already").count();
    assert!(
        from_spool >= 12,
        "{from_spool} calls answered by the spool\n{log}"
    );
    let pushed_ahead = log.matches(" ahead (").count();
    assert_eq!(from_spool, pushed_ahead, "{log}");
    let left: Vec<_> = std::fs::read_dir(a.spool.join(JOB).join("pushed"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "every note was used: {left:?}");
}

#[test]
fn a_failing_storage_keeps_the_segments_in_pg_wal_until_it_recovers() {
    let bucket = block_on(servers::create_bucket("walpush"));
    let s3 = servers::s3_endpoint();
    let proxy = FaultProxy::start(&s3, Faults::default(), 24);
    let section = servers::s3_section(
        "s3",
        &proxy.url_for(&s3),
        &bucket,
        "retry_attempts = 2\nretry_max_time = \"2s\"\nio_timeout = \"2s\"",
    );
    let env = servers::s3_env();
    let a = Archiving::with(Options {
        settings: KEEP_WAL,
        extra_storages: &section,
        storages: &["disk", "s3"],
        env: &env,
        ..Options::default()
    });
    a.switch_and_wait();

    proxy.set(Faults {
        error_500: 1.0,
        ..Faults::default()
    });
    let segments = switch(&a, 3);
    wait_failed(&a, &segments[0]);
    for s in &segments {
        assert!(ready(&a, s), "{s} is kept for another try");
    }
    let failures = std::fs::read_to_string(a.spool.join(JOB).join("push-failures.total")).unwrap();
    assert!(failures.trim().parse::<u64>().unwrap() >= 1, "{failures}");
    let log = std::fs::read_to_string(a.spool.join(JOB).join("push-failures.jsonl")).unwrap();
    assert!(
        log.contains(&segments[0]) && log.contains("storage s3"),
        "{log}"
    );
    // A file the archive lacks, while a storage is down, is not "not archived":
    // the storage that did not answer may hold it.
    let target = target_dir(&a, "fetched").join("RECOVERYXLOG");
    let unsure = fetch(&a, "0000000100000000000000F0", &target, &env);
    assert_eq!(unsure.code, 126, "{}", unsure.all());
    assert!(unsure.stderr.contains("storage s3"), "{}", unsure.all());

    proxy.set(Faults::default());
    // A switch wakes the archiver at once, instead of its minute's wait.
    let after = switch(&a, 1);
    a.wait_archived(&after[0]);
    let keys = block_on(servers::bucket_keys(&bucket));
    for s in segments.iter().chain(&after) {
        assert_eq!(
            objects_of(&a, s).len(),
            1,
            "{s} on disk: {:?}",
            a.archived()
        );
        assert_eq!(
            keys.iter()
                .filter(|k| k.contains(&format!("/{s}-")))
                .count(),
            1,
            "{s} in s3: {keys:?}"
        );
        assert!(!ready(&a, s), "{s} done");
    }
}

#[test]
fn past_wal_queue_max_a_segment_is_dropped_marked_and_said_loudly() {
    let a = Archiving::with(Options {
        settings: &format!("{KEEP_WAL}{PAUSED}"),
        extra_job: "wal_queue_max = \"20MiB\"",
        ..Options::default()
    });
    // 48 MiB waiting: the first two go (48, then 32 MiB > 20 MiB), the
    // third is archived (16 MiB).
    let segments = switch(&a, 3);
    wait_for("3 segments ready", Duration::from_secs(30), || {
        segments.iter().all(|s| ready(&a, s))
    });
    resume(&a, &[]);
    a.wait_archived(&segments[2]);
    for dropped in &segments[..2] {
        assert!(objects_of(&a, dropped).is_empty(), "{:?}", a.archived());
        let marker = a
            .backups
            .join(JOB)
            .join("wal")
            .join("dropped")
            .join(format!("{dropped}.json"));
        let marker: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
        assert_eq!(marker["file"], dropped.as_str());
        assert_eq!(marker["limit_bytes"], 20 << 20);
        assert!(
            marker["backlog_bytes"].as_u64().unwrap() > 20 << 20,
            "{marker}"
        );
        assert!(
            marker["dropped_at"]
                .as_str()
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok(),
            "{marker}"
        );
    }
    assert_eq!(objects_of(&a, &segments[2]).len(), 1, "{:?}", a.archived());
    let log = a.cluster.log();
    let loud: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("was NOT archived"))
        .collect();
    assert_eq!(loud.len(), 2, "{log}");
    assert!(loud.iter().all(|l| l.contains("ERROR")), "{loud:?}");

    // By hand, beside a backlog of its own: the push returns 0 and says so.
    let dir = target_dir(&a, "copy");
    let name = "0000000100000000000000FA";
    let copy = dir.join(name);
    std::fs::copy(a.wal_dir().join(&segments[2]), &copy).unwrap();
    std::fs::create_dir_all(dir.join("archive_status")).unwrap();
    for s in ["0000000100000000000000FA", "0000000100000000000000FB"] {
        std::fs::write(dir.join("archive_status").join(format!("{s}.ready")), b"").unwrap();
    }
    common::chown_tree_to_postgres(&dir);
    let run = ok(a.backup(&[
        "--json",
        "wal",
        "push",
        "--job",
        JOB,
        copy.to_str().unwrap(),
    ]));
    let out: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(out["outcome"], "dropped", "{}", run.all());
    assert_eq!(out["marked"], serde_json::json!(["disk"]));
    assert!(
        a.backups
            .join(JOB)
            .join("wal")
            .join("dropped")
            .join(format!("{name}.json"))
            .is_file()
    );
    assert!(objects_of(&a, name).is_empty());
}

#[test]
fn fetch_returns_archived_bytes_refuses_corrupt_ones_and_serves_prefetched_ones_from_the_spool() {
    let a = Archiving::with(Options {
        settings: KEEP_WAL,
        ..Options::default()
    });
    let dir = target_dir(&a, "restore");
    let segment = a.switch_and_wait();
    let target = dir.join("RECOVERYXLOG");
    ok(fetch(&a, &segment, &target, &[]));
    assert!(std::fs::read(&target).unwrap() == segment_bytes(&a, &segment));

    // Not archived: exit 1, and nothing said.
    for name in ["0000000100000000000000F0", "00000002.history"] {
        let missing = dir.join("missing");
        let run = fetch(&a, name, &missing, &[]);
        assert_eq!(run.code, 1, "{}", run.all());
        assert!(run.stdout.is_empty(), "{}", run.all());
        assert!(
            !run.stderr.to_lowercase().contains("error"),
            "{}",
            run.all()
        );
        assert!(!missing.exists());
    }

    // A flipped byte in the stored object: refused, and nothing written.
    let object = objects_of(&a, &segment).pop().unwrap();
    let path = a.backups.join(JOB).join("wal").join(&object);
    let mut stored = std::fs::read(&path).unwrap();
    let middle = stored.len() / 2;
    stored[middle] ^= 0x55;
    std::fs::write(&path, &stored).unwrap();
    // 126: PostgreSQL stops recovery rather than end it here and promote.
    let corrupt = dir.join("corrupt");
    let run = fetch(&a, &segment, &corrupt, &[]);
    assert_eq!(run.code, 126, "{}", run.all());
    assert!(
        run.stderr.contains("corrupt") && run.stderr.contains("storage disk"),
        "{}",
        run.all()
    );
    assert!(!corrupt.exists());
    // A standby hears a failure below 126: it tries streaming and asks again.
    let run = as_standby(&a, || fetch(&a, &segment, &corrupt, &[]));
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(!corrupt.exists());
    // A job file that does not read, or a command line that does not
    // parse, is no answer either.
    let broken = a.backup(&["wal", "fetch", "--job", "nope", &segment, "x"]);
    assert_eq!(broken.code, 126, "{}", broken.all());
    let mistyped = a.backup(&["wal", "fetch", "--jbo", JOB, &segment, "x"]);
    assert_eq!(mistyped.code, 126, "{}", mistyped.all());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("RECOVERYXLOG")]);

    // Prefetch: the next segments land in the spool shortly after the
    // first, fetched by a process the call left in the background.
    let next: Vec<String> = (0..3).map(|_| a.switch_and_wait()).collect();
    ok(fetch(&a, &next[0], &target, &[]));
    let fetched = fetched_dir(&a);
    wait_for(
        "the next segments fetched ahead",
        Duration::from_secs(30),
        || next[1..].iter().all(|s| fetched.join(s).is_file()),
    );
    // With the storage gone, the spool still answers.
    let moved = a.work.join("backups-away");
    std::fs::rename(&a.backups, &moved).unwrap();
    let run = ok(fetch(&a, &next[1], &target, &[]));
    assert!(!run.stderr.contains("from storage"), "{}", run.all());
    std::fs::rename(&moved, &a.backups).unwrap();
    assert!(std::fs::read(&target).unwrap() == segment_bytes(&a, &next[1]));
    assert!(!fetched.join(&next[1]).exists(), "taken from the spool");
}

#[test]
fn an_encrypted_archive_fetches_only_with_its_key() {
    let key = age::x25519::Identity::generate();
    let public = key.to_public().to_string();
    let secret = age::secrecy::ExposeSecret::expose_secret(&key.to_string()).to_owned();
    let job = format!("encryption = {{ recipients = [\"{public}\"] }}");
    let a = Archiving::with(Options {
        settings: KEEP_WAL,
        extra_job: &job,
        ..Options::default()
    });
    let segment = a.switch_and_wait();
    let object = objects_of(&a, &segment).pop().unwrap();
    assert!(object.ends_with(".zst.age"), "{object}");
    let dir = target_dir(&a, "restore");
    let target = dir.join("RECOVERYXLOG");
    // Without the key recovery must stop, not end here.
    let without = fetch(&a, &segment, &target, &[]);
    assert_eq!(without.code, 126, "{}", without.all());
    assert!(
        without.stderr.contains("BACKUP_AGE_IDENTITY"),
        "{}",
        without.all()
    );
    assert!(!target.exists());
    ok(fetch(
        &a,
        &segment,
        &target,
        &[("BACKUP_AGE_IDENTITY", &secret)],
    ));
    assert!(std::fs::read(&target).unwrap() == segment_bytes(&a, &segment));
}

#[test]
fn push_and_fetch_go_through_s3_and_azure() {
    let (bucket, container, sections, env) = servers::s3_and_azure("walpush");
    let a = Archiving::with(Options {
        settings: KEEP_WAL,
        extra_storages: &sections,
        storages: &["s3", "blob"],
        env: &env,
        ..Options::default()
    });
    let segment = a.switch_and_wait();
    let in_s3 = block_on(servers::bucket_keys(&bucket));
    let in_blob = block_on(servers::container_blobs(&container));
    for keys in [&in_s3, &in_blob] {
        assert!(
            keys.iter()
                .any(|k| k.contains(&format!("{JOB}/wal/")) && k.contains(&format!("/{segment}-"))),
            "{keys:?}"
        );
    }
    let dir = target_dir(&a, "restore");
    // The first storage that has it: s3.
    let run = ok(fetch(&a, &segment, &dir.join("from-s3"), &env));
    assert!(run.stderr.contains("from storage s3"), "{}", run.all());
    // The same job with only its Azure storage.
    let config = std::fs::read_to_string(&a.config).unwrap();
    std::fs::write(
        &a.config,
        config.replace("storages = [\"s3\", \"blob\"]", "storages = [\"blob\"]"),
    )
    .unwrap();
    let run = fetch(&a, &segment, &dir.join("from-blob"), &env);
    std::fs::write(&a.config, &config).unwrap();
    assert!(run.ok(), "{}", run.all());
    assert!(run.stderr.contains("from storage blob"), "{}", run.all());
    let bytes = segment_bytes(&a, &segment);
    assert!(std::fs::read(dir.join("from-s3")).unwrap() == bytes);
    assert!(std::fs::read(dir.join("from-blob")).unwrap() == bytes);
}

/// The background fetches (`wal fetch --ahead-of`) of this test's job
/// file still running: their process ids.
fn fetching_ahead(a: &Archiving) -> Vec<u32> {
    let config = a.config.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bytes = std::fs::read(entry.path().join("cmdline")).ok()?;
            let line = String::from_utf8_lossy(&bytes).replace('\0', " ");
            (line.contains("--ahead-of") && line.contains(&config)).then_some(pid)
        })
        .collect()
}

#[test]
fn recovery_through_fetch_takes_later_segments_from_the_spool_and_leaves_no_process_behind() {
    let a = Archiving::start();
    a.psql("CREATE TABLE ahead(v int)");
    // A copy of the cluster without WAL, as a base backup lays it down.
    let data = a.cluster.dir().join("restored");
    let port = a.cluster.port().to_string();
    let out = a.cluster.server_program(
        "pg_basebackup",
        &[
            "-h",
            a.cluster.dir().to_str().unwrap(),
            "-p",
            &port,
            "-U",
            "postgres",
            "-D",
            data.to_str().unwrap(),
            "-X",
            "none",
            "--checkpoint=fast",
            "--no-sync",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Eight segments to replay, each with a row.
    for v in 0..8 {
        a.psql(&format!("INSERT INTO ahead VALUES ({v})"));
        a.psql("SELECT pg_switch_wal()");
    }
    a.switch_and_wait();

    // Replay through `wal fetch` (prefetch 4, the default), which says at
    // debug level where each file came from.
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let restored_port = crate::common::archiving::free_port();
    let conf = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
    text.push_str(&format!(
        "\nrestore_command = 'BACKUP_LOG=debug {} --config {} wal fetch --job {JOB} %f %p'\n\
         recovery_target_action = 'promote'\narchive_mode = off\nport = {restored_port}\n\
         listen_addresses = ''\nunix_socket_directories = '{}'\n",
        crate::common::archiving::server_readable_binary().display(),
        a.config.display(),
        a.cluster.dir().display()
    ));
    std::fs::write(&conf, text).unwrap();
    common::chown_tree_to_postgres(&data);
    let log = a.cluster.dir().join("restored.log");
    let data_arg = data.to_str().unwrap().to_owned();
    let log_arg = log.to_str().unwrap().to_owned();
    let started = a
        .cluster
        .server_program("pg_ctl", &["-D", &data_arg, "-l", &log_arg, "start"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let _stop = a.restored(&data, restored_port);
    // Every background fetch seen during recovery: detached, in `/`.
    let mut seen = std::collections::BTreeMap::new();
    let restored_port = restored_port.to_string();
    let restored_psql = |sql: &str| {
        let out = a.cluster.server_program(
            "psql",
            &[
                "-h",
                a.cluster.dir().to_str().unwrap(),
                "-p",
                &restored_port,
                "-U",
                "postgres",
                "-XAtc",
                sql,
                "postgres",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let in_recovery = || restored_psql("SELECT pg_is_in_recovery()") != "f";
    let begun = std::time::Instant::now();
    while in_recovery() {
        assert!(
            begun.elapsed() < Duration::from_secs(120),
            "recovery did not end: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        for pid in fetching_ahead(&a) {
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let (Ok(cwd), Ok(stat)) = (
                std::fs::read_link(proc.join("cwd")),
                std::fs::read_to_string(proc.join("stat")),
            ) else {
                continue;
            };
            // The process group: the fifth field, after the name's ')'.
            let group = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok());
            seen.insert(pid, (cwd, group));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("archive recovery complete"), "{said}");
    assert_eq!(restored_psql("SELECT count(*) FROM ahead"), "8");
    // Later segments came from the spool.
    let from_spool = said
        .lines()
        .filter(|l| l.contains("restored") && l.contains("fetched ahead"))
        .count();
    let from_storage = said.matches("from storage disk").count();
    assert!(from_spool >= 4, "{from_spool} from the spool\n{said}");
    assert!(from_storage >= 1, "{said}");
    // A background fetch lives a fraction of a second: on a busy machine
    // the polling may see none. The spool's answers above prove it ran; each
    // one seen must hold nothing and lead its own group.
    for (pid, (cwd, group)) in &seen {
        assert_eq!(cwd, Path::new("/"), "process {pid}");
        assert_eq!(*group, Some(*pid), "process {pid} leads its own group");
    }
    // None is left once recovery is over, and none holds the directory.
    wait_for(
        "the background fetches to end",
        Duration::from_secs(15),
        || fetching_ahead(&a).is_empty(),
    );
    drop(_stop);
    assert_eq!(
        crate::common::archiving::processes_on(&data),
        Vec::<String>::new()
    );
}
