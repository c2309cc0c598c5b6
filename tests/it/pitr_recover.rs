//! A recovery server on a data directory taken from the harness cluster
//! (`pg_basebackup -X none`, recovery settings written here by hand),
//! replaying the job's WAL archive through `backup wal fetch`, and the proof
//! of what it reached (src/jobs/pitr/recover.rs and prove.rs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backup::error::Kind;
use backup::jobs::pitr::Target;
use backup::jobs::pitr::prove::prove;
use backup::jobs::pitr::recover::{KEPT_LOG, RecoveryEnd, RecoveryServer};
use backup::model::Check;
use backup::pg::cluster::ServerInstall;
use jiff::Timestamp;
use tokio_util::sync::CancellationToken;

use crate::common::archiving::{Archiving, JOB, server_readable_binary};
use crate::common::{chown_tree_to_postgres, wait_for};

/// How long a recovery of a few segments may take here.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

fn install(a: &Archiving) -> ServerInstall {
    let bindir = a.cluster.bindir().to_owned();
    let (major, version) = backup::pg::tool_version(&bindir.join("initdb")).unwrap();
    ServerInstall {
        bindir,
        major,
        version,
        searched: Vec::new(),
        secret_env: Arc::from(Vec::<String>::new()),
    }
}

/// A copy of the cluster as it is now, without WAL: the server's base
/// backup ends with a segment switch and waits until that segment is
/// archived.
fn base_backup(a: &Archiving, name: &str) -> PathBuf {
    let data = a.cluster.dir().join(name);
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
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

/// `recovery.signal`, and in `postgresql.auto.conf` what `backup restore`
/// writes: replay through `wal fetch` up to `target`, then promote. The
/// recovered server archives nothing.
fn recovery_settings(a: &Archiving, data: &Path, target: Option<Timestamp>, more: &str) {
    std::fs::write(data.join("recovery.signal"), "").unwrap();
    let mut settings = format!(
        "\nrestore_command = '{} --config {} wal fetch --job {JOB} %f %p'\n\
         recovery_target_action = 'promote'\narchive_mode = off\n{more}\n",
        server_readable_binary().display(),
        a.config.display()
    );
    if let Some(t) = target {
        // Not RFC 3339: recovery_target_time refuses a `Z`.
        settings.push_str(&format!(
            "recovery_target_time = '{}'\n",
            t.strftime("%Y-%m-%d %H:%M:%S%.f+00")
        ));
    }
    let conf = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap_or_default();
    text.push_str(&settings);
    std::fs::write(&conf, text).unwrap();
    chown_tree_to_postgres(data);
}

/// The cluster's clock, now.
fn server_now(a: &Archiving) -> Timestamp {
    a.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .parse()
    .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn wait(
    rt: &tokio::runtime::Runtime,
    server: &RecoveryServer,
) -> backup::error::Result<RecoveryEnd> {
    rt.block_on(async {
        tokio::time::timeout(RECOVERY_LIMIT, server.wait(&CancellationToken::new()))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "recovery did not end in {RECOVERY_LIMIT:?}: {}",
                    std::fs::read_to_string(server.log()).unwrap_or_default()
                )
            })
    })
}

fn count_check(name: &str, sql: &str, equals: f64) -> Check {
    Check {
        name: name.to_owned(),
        sql: sql.to_owned(),
        equals: Some(equals),
        min: None,
        max: None,
    }
}

#[test]
fn a_recovery_to_a_time_stops_before_the_first_later_transaction_and_proves_it() {
    let a = Archiving::start();
    let locks = a.work.join("locks");
    let run = a.backup_with(
        &["run", JOB],
        &[("BACKUP_LOCK_DIR", locks.to_str().unwrap())],
    );
    assert!(run.ok(), "{}", run.all());
    a.psql("CREATE TABLE pitr(v text PRIMARY KEY, big text)");
    let data = base_backup(&a, "restored");
    // Replayed from the archive: a row with a TOASTed value before the
    // target, one after it.
    a.psql("INSERT INTO pitr VALUES ('before', repeat(md5('x'), 10000))");
    let target = server_now(&a);
    a.psql("INSERT INTO pitr VALUES ('after', 'later')");
    a.switch_and_wait();
    recovery_settings(&a, &data, Some(target), "");

    let install = install(&a);
    let rt = runtime();
    let server = RecoveryServer::start(&install, &data, None, None).unwrap();
    let private = server.log().parent().unwrap().to_owned();
    let end = wait(&rt, &server).unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::read_to_string(server.log()).unwrap();
    let stop = end.stopped_before.clone().expect("a stop point");
    assert_eq!(stop.what, "commit", "{log}");
    assert!(stop.at > target, "{stop:?} after {target}");
    let replayed = end.last_replayed.expect("a transaction replayed");
    assert!(
        replayed <= target,
        "{replayed} at or before {target}\n{log}"
    );
    assert_eq!(end.timeline, 2, "{log}");
    assert!(!end.paused);
    assert!(end.segments_restored >= 1, "{end:?}\n{log}");
    assert!(end.replayed_bytes.is_some_and(|b| b > 0), "{end:?}");
    assert_eq!(
        server.database().url.split('@').next(),
        Some("postgresql://postgres")
    );

    let checks = [
        count_check(
            "the row written before the target",
            "SELECT count(*) FROM pitr WHERE v = 'before' AND length(big) = 320000",
            1.0,
        ),
        count_check(
            "the row written after the target",
            "SELECT count(*) FROM pitr WHERE v = 'after'",
            1.0,
        ),
    ];
    let proof = rt
        .block_on(prove(
            server.database(),
            &install,
            &Target::Time(target),
            &end,
            &checks,
            "postgres",
        ))
        .unwrap();
    let check = |name: &str| {
        proof
            .checks
            .iter()
            .find(|c| c.check == name)
            .unwrap_or_else(|| panic!("no check {name}: {:?}", proof.checks))
    };
    assert!(check("recovery reached the target").passed, "{proof:?}");
    let not_applied = check("the first transaction after the target was not applied");
    assert!(not_applied.passed, "{not_applied:?}");
    assert!(
        check("the row written before the target").passed,
        "{proof:?}"
    );
    // The later row is not there: the one check that fails.
    assert!(!check("the row written after the target").passed);
    let failure = proof.failure().expect("a failed check");
    assert!(
        failure.starts_with("1 of ") && failure.contains("the row written after the target"),
        "{failure}"
    );
    let names: Vec<&str> = proof.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["postgres", "template1"], "{proof:?}");
    for db in &proof.databases {
        assert!(db.bytes > 0, "{db:?}");
        assert_eq!(db.amcheck.as_deref(), Some("ok"), "{db:?}");
        assert!(check(&format!("database {} read end to end (pg_dump)", db.name)).passed);
        assert!(check(&format!("pg_amcheck of database {}", db.name)).passed);
    }
    // The database holding the TOASTed row was read whole.
    assert!(proof.databases[0].bytes > 320_000, "{proof:?}");
    // amcheck was created for the check only.
    let left = rt.block_on(async {
        let conn = backup::pg::connect(server.database(), None).await.unwrap();
        backup::pg::single_value(
            &conn,
            "SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'",
        )
        .await
        .unwrap()
    });
    assert_eq!(left.as_deref(), Some("0"));

    server.stop().unwrap();
    assert!(!private.exists(), "{} removed", private.display());
    assert!(!data.join("postmaster.pid").exists());
}

#[test]
fn a_recovery_to_the_latest_replays_the_whole_archive_and_is_handed_over() {
    let a = Archiving::start();
    a.psql("CREATE TABLE pitr(v text)");
    let data = base_backup(&a, "restored");
    a.psql("INSERT INTO pitr VALUES ('one')");
    a.psql("INSERT INTO pitr VALUES ('two')");
    a.switch_and_wait();
    let last_write = server_now(&a);
    // Handed over, the server runs on the directory's own settings: a port
    // and socket of this test's, no TCP.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    recovery_settings(
        &a,
        &data,
        None,
        &format!(
            "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'",
            a.cluster.dir().display()
        ),
    );

    let install = install(&a);
    let rt = runtime();
    let server = RecoveryServer::start(&install, &data, None, Some("postgres")).unwrap();
    let end = wait(&rt, &server).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(end.stopped_before, None, "{end:?}");
    assert_eq!(end.timeline, 2);
    assert!(
        end.last_replayed.is_some_and(|t| t <= last_write),
        "{end:?}"
    );
    let proof = rt
        .block_on(prove(
            server.database(),
            &install,
            &Target::Latest,
            &end,
            &[count_check("both rows", "SELECT count(*) FROM pitr", 2.0)],
            "postgres",
        ))
        .unwrap();
    assert_eq!(proof.failure(), None, "{proof:?}");
    assert!(
        proof
            .checks
            .iter()
            .any(|c| c.check == "recovery replayed the whole archive" && c.passed),
        "{proof:?}"
    );

    let handed = server.hand_over().unwrap();
    assert_eq!(handed.port, port);
    assert_eq!(handed.log, data.join(KEPT_LOG));
    let log = std::fs::read_to_string(&handed.log).unwrap();
    assert!(log.contains("archive recovery complete"), "{log}");
    let port_text = port.to_string();
    let out = a.cluster.server_program(
        "psql",
        &[
            "-h",
            a.cluster.dir().to_str().unwrap(),
            "-p",
            &port_text,
            "-U",
            "postgres",
            "-XAtc",
            "SELECT count(*) FROM pitr",
            "postgres",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stop = std::process::Command::new("sh")
        .args(["-c", &handed.stop_command])
        .output()
        .unwrap();
    assert!(
        stop.status.success(),
        "{}: {}",
        handed.stop_command,
        String::from_utf8_lossy(&stop.stderr)
    );
    wait_for(
        "the handed-over server to stop",
        Duration::from_secs(30),
        || !data.join("postmaster.pid").exists(),
    );
}

#[test]
fn a_recovery_the_archive_cannot_carry_to_its_target_fails_quoting_the_server() {
    let a = Archiving::start();
    a.psql("CREATE TABLE pitr(v text)");
    let corrupt = base_backup(&a, "corrupt");
    let cut = base_backup(&a, "cut");
    a.psql("INSERT INTO pitr VALUES ('before')");
    let target = server_now(&a);
    a.psql("INSERT INTO pitr VALUES ('after')");
    let segment = a.switch_and_wait();
    let object = a
        .archived()
        .into_iter()
        .find(|f| f.contains(&format!("/{segment}-")))
        .unwrap_or_else(|| panic!("{segment} archived: {:?}", a.archived()));
    let stored = a.backups.join(JOB).join("wal").join(&object);
    let install = install(&a);
    let rt = runtime();

    // A copy whose content is not what its name says: `wal fetch` refuses
    // it, and recovery stops with FATAL.
    std::fs::write(
        &stored,
        zstd::encode_all(&vec![0u8; 16 << 20][..], 1).unwrap(),
    )
    .unwrap();
    recovery_settings(&a, &corrupt, Some(target), "");
    let server = RecoveryServer::start(&install, &corrupt, None, None).unwrap();
    let err = wait(&rt, &server).expect_err("recovery fails");
    let message = err.to_string();
    assert_eq!(err.kind(), Kind::Tool, "{message}");
    assert!(
        message.contains(&format!(
            "FATAL: could not restore file \"{segment}\" from archive"
        )),
        "{message}"
    );
    // The refusals of the sessions tried while the server started are not.
    assert!(!message.contains("starting up"), "{message}");
    // What `wal fetch` said is quoted too.
    assert!(message.contains("error: "), "{message}");
    assert!(
        message.contains("the last WAL file restored from the archive: "),
        "{message}"
    );
    drop(server);

    // The segment gone: the archive ends before the target.
    std::fs::remove_file(&stored).unwrap();
    recovery_settings(&a, &cut, Some(target), "");
    let server = RecoveryServer::start(&install, &cut, None, None).unwrap();
    let err = wait(&rt, &server).expect_err("recovery fails");
    let message = err.to_string();
    assert!(
        message.contains("FATAL: recovery ended before configured recovery target was reached"),
        "{message}"
    );
    assert!(
        message.contains("the last WAL file restored from the archive: 0000000100000000"),
        "{message}"
    );
    assert!(
        !message.contains(&format!("restored from the archive: {segment}")),
        "{message}"
    );
    let hint = err.hint().unwrap_or_default();
    assert!(hint.contains(KEPT_LOG), "{hint}");
    let kept = std::fs::read_to_string(cut.join(KEPT_LOG)).unwrap();
    assert!(
        kept.contains("recovery ended before configured recovery target"),
        "{kept}"
    );
    drop(server);
    assert!(!cut.join("postmaster.pid").exists());
}
