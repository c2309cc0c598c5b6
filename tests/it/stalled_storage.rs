//! A storage that stops answering, and one that is only slow, between
//! `backup` and real S3 (moto) and Azure Blob (Azurite) servers: the fault
//! proxy (tests/it/common/proxy.rs) freezes, so connections stay open and no
//! byte moves (what `kill -STOP` of the server, a network partition or a
//! stuck proxy look like), or trickles bytes through.
//!
//! The storages here set `io_timeout = "2s"`: the bound a frozen storage
//! must be failed within is `io_timeout × 2 + 60 s`, and the default 60 s
//! would make every test here take minutes.

use std::time::{Duration, Instant};

use crate::common::proxy::{FaultProxy, Faults, Trickle};
use crate::common::servers::{self, block_on};
use crate::common::{self, Cluster, Run, Setup};

const IO_TIMEOUT: &str = "io_timeout = \"2s\"";
/// `io_timeout × 2 + 60 s` with the io_timeout above.
const BOUND: Duration = Duration::from_secs(2 * 2 + 60);

fn s3_setup(proxy: &FaultProxy, bucket: &str, extra: &str) -> Setup {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let endpoint = proxy.url_for(&servers::s3_endpoint());
    let section = servers::s3_section("s3", &endpoint, bucket, extra);
    Setup::with_storages(cluster, "", &section, &["s3"], "")
}

fn azure_setup(proxy: &FaultProxy, container: &str, extra: &str) -> Setup {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let endpoint = proxy.url_for(&servers::azure_endpoint());
    let section = servers::azure_section("blob", &endpoint, container, extra);
    Setup::with_storages(cluster, "", &section, &["blob"], "")
}

/// A table of `rows` rows of 128 hex characters, half of them random: about
/// 60 bytes a row once compressed.
fn load_bulk(cluster: &Cluster, rows: u32) {
    cluster.psql(
        "app",
        &format!(
            "CREATE TABLE app.bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) \
             || md5(random()::text) || md5(random()::text) AS payload \
             FROM generate_series(1, {rows}) g"
        ),
    );
}

/// Waits until the proxy has seen a request line containing `needle`.
fn wait_for_request(proxy: &FaultProxy, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy.request_lines().iter().any(|l| l.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no request with {needle} was sent: {:?}",
            proxy.request_lines()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for a command started with `spawn_backup_with`, killing it (and
/// failing) if it outlives `limit`; returns how it ended and how long it took
/// from `since`.
fn finish_within(child: std::process::Child, since: Instant, limit: Duration) -> (Run, Duration) {
    let pid = child.id();
    let waiter = std::thread::spawn(move || Run::from(child.wait_with_output().unwrap()));
    while !waiter.is_finished() {
        if since.elapsed() > limit + Duration::from_secs(30) {
            // SAFETY: kill(2) on the pid of our own child, not yet reaped.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let run = waiter.join().unwrap();
            panic!("still running after {limit:?}: {}", run.all());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (waiter.join().unwrap(), since.elapsed())
}

/// A backup whose storage freezes while a part or block is on its way: it
/// fails within the bound, naming the storage and the stall, says where its
/// run record could not go, and leaves nothing listed.
fn a_frozen_storage_fails_the_backup(
    setup: &Setup,
    proxy: &FaultProxy,
    env: &[(&str, &str)],
    storage: &str,
    upload_request: &str,
) {
    load_bulk(&setup.cluster, 300_000);
    let child = setup.spawn_backup_with(&["run", "nightly"], env);
    wait_for_request(proxy, upload_request);
    proxy.freeze();
    let frozen_at = Instant::now();
    let (run, took) = finish_within(child, frozen_at, BOUND);

    assert_eq!(run.code, 5, "{}", run.all());
    assert!(took < BOUND, "took {took:?}: {}", run.all());
    let said = run.all();
    assert!(
        said.contains(&format!("error: job nightly: storage {storage}: ")),
        "{said}"
    );
    assert!(said.contains("nothing moved for 2s"), "{said}");
    assert!(said.contains("(the storage stopped answering)"), "{said}");
    assert!(said.contains("hint: "), "{said}");
    assert!(
        said.contains(&format!(
            "could not be stored in {storage} (it is in no storage)"
        )),
        "{said}"
    );

    proxy.thaw();
    assert!(setup.list_with(env).is_empty(), "nothing is listed");
    // The storage answers again: the next run works as ever.
    let run = setup.backup_with(&["run", "nightly"], env);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(setup.list_with(env).len(), 1);
}

#[test]
fn a_frozen_s3_fails_the_backup_within_the_bound() {
    let bucket = block_on(servers::create_bucket("frozen"));
    let proxy = FaultProxy::start(&servers::s3_endpoint(), Faults::default(), 1);
    let setup = s3_setup(&proxy, &bucket, IO_TIMEOUT);
    a_frozen_storage_fails_the_backup(&setup, &proxy, &servers::s3_env(), "s3", "partNumber=");
    let keys = block_on(servers::bucket_keys(&bucket));
    assert_eq!(
        keys.iter().filter(|k| k.ends_with("manifest.json")).count(),
        1,
        "only the second backup is complete: {keys:?}"
    );
}

#[test]
fn a_frozen_azure_fails_the_backup_within_the_bound() {
    let container = block_on(servers::create_container("frozen"));
    let proxy = FaultProxy::start(&servers::azure_endpoint(), Faults::default(), 2);
    let setup = azure_setup(&proxy, &container, IO_TIMEOUT);
    a_frozen_storage_fails_the_backup(&setup, &proxy, &servers::azure_env(), "blob", "comp=block");
}

/// Reads that stop part-way: `verify` and `restore` of a backup whose
/// storage freezes while its dump is being downloaded fail within the
/// bound, and the restore leaves the target as it was.
fn frozen_reads(setup: &Setup, proxy: &FaultProxy, env: &[(&str, &str)], storage: &str) {
    load_bulk(&setup.cluster, 150_000);
    let run = setup.backup_with(&["run", "nightly"], env);
    assert!(run.ok(), "{}", run.all());
    // Slow enough that the dump is still on its way when the freeze comes.
    let slow = Faults {
        trickle: Some(Trickle {
            bytes: 16 * 1024,
            every: Duration::from_millis(50),
        }),
        ..Faults::default()
    };
    for command in [
        vec!["verify", "--job", "nightly"],
        vec![
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "copy",
        ],
    ] {
        proxy.set(slow);
        proxy.clear();
        let child = setup.spawn_backup_with(&command, env);
        wait_for_request(proxy, "GET ");
        wait_for_request(proxy, "data.dump");
        // Some of the dump has come through.
        std::thread::sleep(Duration::from_millis(500));
        proxy.freeze();
        let (run, took) = finish_within(child, Instant::now(), BOUND);
        proxy.thaw();
        proxy.set(Faults::default());
        let said = run.all();
        assert_eq!(run.code, 5, "{command:?}: {said}");
        assert!(took < BOUND, "{command:?} took {took:?}: {said}");
        assert!(said.contains(&format!("storage {storage}: ")), "{said}");
        assert!(said.contains("stopped answering"), "{said}");
        if command[0] == "verify" {
            // A storage that failed found nothing wrong with the backup.
            assert!(said.contains("UNREAD  data.dump.zst"), "{said}");
            assert!(!said.contains("BAD "), "{said}");
            assert!(said.contains("nothing was found wrong"), "{said}");
        } else {
            assert!(said.contains("database copy was not created"), "{said}");
        }
    }
    let exists = setup.cluster.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'copy%'",
    );
    assert_eq!(
        exists.trim(),
        "0",
        "no copy, and no half-restored one, is left"
    );
}

#[test]
fn verify_and_restore_from_a_frozen_s3_fail_within_the_bound() {
    let bucket = block_on(servers::create_bucket("frozen-read"));
    let proxy = FaultProxy::start(&servers::s3_endpoint(), Faults::default(), 3);
    let setup = s3_setup(&proxy, &bucket, IO_TIMEOUT);
    frozen_reads(&setup, &proxy, &servers::s3_env(), "s3");
}

#[test]
fn verify_and_restore_from_a_frozen_azure_fail_within_the_bound() {
    let container = block_on(servers::create_container("frozen-read"));
    let proxy = FaultProxy::start(&servers::azure_endpoint(), Faults::default(), 4);
    let setup = azure_setup(&proxy, &container, IO_TIMEOUT);
    frozen_reads(&setup, &proxy, &servers::azure_env(), "blob");
}

/// A trickle of about 1.3 MB/s: slow, never silent for long.
fn trickling() -> Faults {
    Faults {
        trickle: Some(Trickle {
            bytes: 32 * 1024,
            every: Duration::from_millis(25),
        }),
        ..Faults::default()
    }
}

/// A slow storage is not a dead one: through a proxy that trickles, a backup
/// and its verify each take longer than io_timeout (5 s here) in all, but
/// never wait that long for a byte, and succeed. (The last up to 4 MiB of a
/// body sit in the kernel's send buffer with no progress to see: at this
/// rate they drain in about 3 s.)
fn a_slow_storage_is_never_cut(setup: &Setup, env: &[(&str, &str)]) {
    load_bulk(&setup.cluster, 200_000);
    for args in [&["run", "nightly"][..], &["verify", "--job", "nightly"][..]] {
        let started = Instant::now();
        let run = setup.backup_with(args, env);
        assert!(run.ok(), "{args:?}: {}", run.all());
        assert!(
            started.elapsed() > Duration::from_secs(5),
            "{args:?} took {:?}: not slow enough to show anything",
            started.elapsed()
        );
        assert!(!run.stderr.contains("nothing moved"), "{}", run.all());
    }
}

#[test]
fn a_slow_s3_is_never_cut() {
    let bucket = block_on(servers::create_bucket("slow"));
    let proxy = FaultProxy::start(&servers::s3_endpoint(), trickling(), 5);
    let setup = s3_setup(&proxy, &bucket, "io_timeout = \"5s\"");
    a_slow_storage_is_never_cut(&setup, &servers::s3_env());
}

#[test]
fn a_slow_azure_is_never_cut() {
    let container = block_on(servers::create_container("slow"));
    let proxy = FaultProxy::start(&servers::azure_endpoint(), trickling(), 8);
    let setup = azure_setup(&proxy, &container, "io_timeout = \"5s\"");
    a_slow_storage_is_never_cut(&setup, &servers::azure_env());
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The daemon's run against a frozen storage fails within the bound and
/// shows in `/metrics` and `status`; once the storage answers, the job runs
/// again at its next fire time.
#[test]
fn the_daemon_fails_a_run_on_a_frozen_storage_and_runs_again_once_it_answers() {
    let bucket = block_on(servers::create_bucket("frozen-daemon"));
    let proxy = FaultProxy::start(&servers::s3_endpoint(), Faults::default(), 6);
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let endpoint = proxy.url_for(&servers::s3_endpoint());
    let section = servers::s3_section("s3", &endpoint, &bucket, IO_TIMEOUT);
    let setup = Setup::with_storages(
        cluster,
        "",
        &section,
        &["s3"],
        "schedule = \"*/10 * * * * *\"",
    );
    let env = servers::s3_env();
    let log = setup.work.path().join("daemon.log");
    let (mut daemon, port) = common::start_daemon(&log, |listen| {
        let mut command = setup.command(&["daemon", "--listen", listen], &env);
        command.stdout(std::process::Stdio::null());
        command
    });
    proxy.freeze();
    let scrape = || {
        common::http_get(port, "/metrics")
            .map(|(_, text)| text)
            .unwrap_or_default()
    };
    let runs = |text: &str, outcome: &str| {
        metric(
            text,
            &format!(r#"backup_runs_total{{job="nightly",type="backup",outcome="{outcome}"}}"#),
        )
        .unwrap_or(0.0)
    };
    let deadline = Instant::now() + Duration::from_secs(10) + BOUND;
    let text = loop {
        let text = scrape();
        if runs(&text, "failed") >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no failed run within the bound: {}\n{text}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let timeouts = metric(
        &text,
        r#"backup_storage_errors_total{storage="s3",kind="timeout"}"#,
    )
    .unwrap_or(0.0);
    assert!(timeouts >= 1.0, "{text}");
    assert!(
        metric(
            &text,
            r#"backup_storage_last_error_timestamp_seconds{storage="s3"}"#
        )
        .is_some(),
        "{text}"
    );
    assert_eq!(runs(&text, "succeeded"), 0.0, "{text}");
    let (code, said) = common::run_promtool(&["check", "metrics"], &text);
    assert_eq!((code, said.as_str()), (0, ""), "{text}");

    proxy.thaw();
    let deadline = Instant::now() + Duration::from_secs(60);
    while runs(&scrape(), "succeeded") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "no run succeeded after the storage came back: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: kill(2) on the pid of our own child, not yet reaped.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let _ = daemon.wait();
    assert_eq!(setup.list_with(&env).len(), 1);
}

/// The storage failure a run met is in its record, and `status` shows it.
#[test]
fn status_shows_the_storage_failure_of_the_last_run() {
    let bucket = block_on(servers::create_bucket("frozen-status"));
    let proxy = FaultProxy::start(&servers::s3_endpoint(), Faults::default(), 7);
    let endpoint = proxy.url_for(&servers::s3_endpoint());
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    // Records also go to a local disk, which keeps answering.
    let section = servers::s3_section("s3", &endpoint, &bucket, IO_TIMEOUT);
    let setup = Setup::with_storages(cluster, "", &section, &["disk", "s3"], "");
    let env = servers::s3_env();
    proxy.freeze();
    let started = Instant::now();
    let run = setup.backup_with(&["run", "nightly"], &env);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(started.elapsed() < BOUND);
    assert!(
        run.stderr
            .contains("could not be stored in s3 (it is in disk)"),
        "{}",
        run.all()
    );
    proxy.thaw();
    let status = setup.backup_with(&["status"], &env);
    assert!(
        status.stdout.contains("storage error:  s3 timeout"),
        "{}",
        status.all()
    );
    assert!(
        status.stdout.contains("stopped answering"),
        "{}",
        status.all()
    );
    let json = setup.backup_with(&["--json", "status"], &env);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let errors = &value["jobs"][0]["last_run"]["storage_errors"];
    assert_eq!(errors[0]["storage"], "s3", "{value}");
    assert_eq!(errors[0]["kind"], "timeout", "{value}");
}
