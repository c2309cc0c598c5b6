//! End to end through the remote backends: backup, list, `restore --at` via
//! S3 (moto) and Azure Blob (Azurite), a job writing to two storages, a fresh
//! host restoring from nothing but the job file, and a flaky or dead network
//! between `backup` and the server (tests/it/common/proxy.rs).

use crate::common::proxy::{FaultProxy, Faults};
use crate::common::servers::{self, block_on};
use crate::common::{self, Cluster, Setup};

fn s3_setup(endpoint: &str, bucket: &str, storages: &[&str], extra: &str) -> Setup {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let section = servers::s3_section("s3", endpoint, bucket, extra);
    Setup::with_storages(cluster, "", &section, storages, "")
}

fn run_ok(setup: &Setup, args: &[&str]) -> common::Run {
    let run = setup.backup_with(args, &servers::s3_env());
    assert!(run.ok(), "{}", run.all());
    run
}

fn listed(setup: &Setup) -> Vec<serde_json::Value> {
    let run = run_ok(setup, &["--json", "list", "--job", "nightly"]);
    serde_json::from_str(&run.stdout).expect("list --json prints JSON")
}

fn id_of(backup: &serde_json::Value) -> String {
    backup["id"].as_str().unwrap().to_owned()
}

/// Two backups with a row inserted between them, then `restore --at` a time
/// between their snapshots, written with the zone `zone` ("JST" or "UTC"): the
/// first backup is picked and restores without the row. Returns the backups
/// as listed, newest first, both on `storage`.
fn two_backups_then_restore_at_the_first(
    setup: &Setup,
    env: &[(&str, &str)],
    storage: &str,
    zone: &str,
) -> Vec<serde_json::Value> {
    let ok = |args: &[&str]| {
        let run = setup.backup_with(args, env);
        assert!(run.ok(), "{}", run.all());
        run
    };
    ok(&["run", "nightly"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    setup.cluster.psql(
        "app",
        "INSERT INTO \"Audit Log\".\"Entries\" VALUES ('after the first backup', now())",
    );
    ok(&["run", "nightly"]);
    let run = ok(&["--json", "list", "--job", "nightly"]);
    let backups: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(backups.len(), 2, "{backups:?}");
    for backup in &backups {
        assert_eq!(backup["storages"], serde_json::json!([storage]));
    }
    let first = id_of(&backups[1]);

    let t1: jiff::Timestamp = backups[1]["snapshot_at"].as_str().unwrap().parse().unwrap();
    let tz = match zone {
        "JST" => jiff::tz::TimeZone::get("Asia/Tokyo").unwrap(),
        _ => jiff::tz::TimeZone::UTC,
    };
    let at = jiff::Timestamp::from_second(t1.as_second() + 1)
        .unwrap()
        .to_zoned(tz)
        .strftime(&format!("%Y-%m-%d %H:%M:%S {zone}"))
        .to_string();
    let run = ok(&[
        "restore",
        "--job",
        "nightly",
        "--at",
        &at,
        "--target-db",
        "at_first",
    ]);
    assert!(
        run.stderr.contains(&format!("selected backup {first}")),
        "{}",
        run.all()
    );
    assert_eq!(
        setup
            .cluster
            .psql("at_first", "SELECT count(*) FROM \"Audit Log\".\"Entries\""),
        "2"
    );
    backups
}

#[test]
fn s3_backup_list_restore_at_and_a_fresh_host_restores_everything() {
    let bucket = block_on(servers::create_bucket("e2e"));
    let setup = s3_setup(&servers::s3_endpoint(), &bucket, &["s3"], "");
    let backups = two_backups_then_restore_at_the_first(&setup, &servers::s3_env(), "s3", "JST");
    let (second, first) = (id_of(&backups[0]), id_of(&backups[1]));
    let keys = block_on(servers::bucket_keys(&bucket));
    for name in ["data.dump.zst", "globals.sql.zst", "manifest.json"] {
        let key = format!("prod/db/nightly/{first}/{name}");
        assert!(keys.contains(&key), "{key} in {keys:?}");
    }
    assert!(
        !setup.backups.join("nightly").exists(),
        "nothing went to the local disk"
    );

    // A fresh host: only the job file, copied elsewhere, and the credentials.
    let host = tempfile::tempdir().unwrap();
    let config = host.path().join("jobs.toml");
    std::fs::copy(&setup.config, &config).unwrap();
    let home = host.path().to_str().unwrap();
    let mut env = servers::s3_env().to_vec();
    env.extend([("HOME", home), ("TMPDIR", home)]);
    let run = common::run_backup_with(&config, &["--json", "list"], &env);
    assert!(run.ok(), "{}", run.all());
    let fresh: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let ids: Vec<String> = fresh.iter().map(id_of).collect();
    assert_eq!(ids, vec![second.clone(), first.clone()]);
    for (id, db) in [(&first, "fresh_first"), (&second, "fresh_second")] {
        let run = common::run_backup_with(
            &config,
            &["restore", "--job", "nightly", "--id", id, "--target-db", db],
            &env,
        );
        assert!(run.ok(), "{}", run.all());
    }
    assert_eq!(
        setup.cluster.table_digests("fresh_second"),
        setup.cluster.table_digests("app"),
        "the newest backup restores to the data as it is now"
    );
}

#[test]
fn two_storages_hold_the_same_backup_and_a_failing_one_is_named() {
    let bucket = block_on(servers::create_bucket("two"));
    let setup = s3_setup(&servers::s3_endpoint(), &bucket, &["disk", "s3"], "");
    run_ok(&setup, &["run", "nightly"]);
    let backups = listed(&setup);
    assert_eq!(backups[0]["storages"], serde_json::json!(["disk", "s3"]));
    let id = id_of(&backups[0]);
    let disk = std::fs::read(setup.backups.join(format!("nightly/{id}/data.dump.zst"))).unwrap();
    assert!(!disk.is_empty());
    for storage in ["s3", "disk"] {
        let db = format!("from_{storage}");
        let run = run_ok(
            &setup,
            &[
                "restore",
                "--job",
                "nightly",
                "--latest",
                "--storage",
                storage,
                "--target-db",
                &db,
            ],
        );
        assert!(run.stderr.contains(storage), "{}", run.all());
        assert_eq!(
            setup.cluster.table_digests(&db),
            setup.cluster.table_digests("app")
        );
    }

    // The same job with a bucket that does not exist: the disk copy completes,
    // the run fails naming the S3 storage, and list shows where the backup is.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(
        &setup.config,
        text.replace(
            &format!("bucket = \"{bucket}\""),
            "bucket = \"no-such-bucket\"",
        ),
    )
    .unwrap();
    let run = setup.backup_with(&["run", "nightly"], &servers::s3_env());
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(run.stderr.contains("storage s3"), "{}", run.all());
    assert!(run.stderr.contains("NoSuchBucket"), "{}", run.all());
    assert!(run.stderr.contains("hint:"), "{}", run.all());
    let run = setup.backup_with(&["--json", "list", "--job", "nightly"], &servers::s3_env());
    assert!(
        run.ok(),
        "a failing storage does not hide the others: {}",
        run.all()
    );
    assert!(run.stderr.contains("storage s3"), "{}", run.all());
    let backups: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(backups.len(), 2);
    assert_eq!(backups[0]["storages"], serde_json::json!(["disk"]));
}

/// A table of about 60 MB of hex text that compresses only to half.
fn load_bulk(cluster: &Cluster) {
    cluster.psql(
        "app",
        "CREATE TABLE app.bulk AS SELECT g AS id, md5(g::text) || md5((g * 7)::text) \
         || md5(random()::text) || md5(random()::text) AS payload \
         FROM generate_series(1, 420000) g",
    );
}

/// A bad network: a fifth of the requests fail (error answers, resets, cut
/// responses), which the retry layer must absorb.
const FLAKY: Faults = Faults {
    error_500: 0.08,
    reset: 0.07,
    cut_response: 0.05,
    delay: std::time::Duration::ZERO,
    trickle: None,
};

/// No network: every request is answered with an error or reset.
const DEAD: Faults = Faults {
    error_500: 0.5,
    reset: 0.5,
    cut_response: 0.0,
    delay: std::time::Duration::ZERO,
    trickle: None,
};

/// The retry settings for the two: room to absorb a flaky network, and a
/// small budget for a dead one.
const PATIENT: &str = "retry_attempts = 10\nretry_max_time = \"2m\"";
const BRIEF: &str = "retry_attempts = 3\nretry_max_time = \"20s\"";

/// Backs up the bulk table through a flaky proxy and restores it with
/// `restore_extra` flags: the copy equals the original.
fn survives_a_flaky_network(
    setup: &Setup,
    proxy: &FaultProxy,
    env: &[(&str, &str)],
    restore_extra: &[&str],
) {
    load_bulk(&setup.cluster);
    let run = setup.backup_with(&["run", "nightly"], env);
    assert!(run.ok(), "{}", run.all());
    let run = setup.backup_with(&["--json", "list", "--job", "nightly"], env);
    let backups: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let raw = backups[0]["raw_size"].as_u64().unwrap();
    assert!(raw > 50 << 20, "a 50 MiB backup, got {raw}");
    let mut restore = vec![
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "copy",
    ];
    restore.extend_from_slice(restore_extra);
    let run = setup.backup_with(&restore, env);
    assert!(run.ok(), "{}", run.all());
    assert!(proxy.failed() > 0, "the proxy failed requests");
    eprintln!(
        "proxy: {} of {} requests failed",
        proxy.failed(),
        proxy.requests()
    );
    assert_eq!(
        setup.cluster.table_digests("copy"),
        setup.cluster.table_digests("app")
    );
}

/// Backs up through a dead proxy with the [`BRIEF`] budget: the run fails as a
/// storage error saying it gave up, with a hint, within bounded time.
fn gives_up_on_a_dead_network(setup: &Setup, env: &[(&str, &str)]) {
    let started = std::time::Instant::now();
    let run = setup.backup_with(&["run", "nightly"], env);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(
        run.stderr.contains("gave up after 3 attempts"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("hint:"), "{}", run.all());
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
}

#[test]
fn a_flaky_network_costs_retries_not_the_backup() {
    let bucket = block_on(servers::create_bucket("flaky"));
    let upstream = servers::s3_endpoint();
    let proxy = FaultProxy::start(&upstream, FLAKY, 20261123);
    let setup = s3_setup(&proxy.url_for(&upstream), &bucket, &["s3"], PATIENT);
    survives_a_flaky_network(&setup, &proxy, &servers::s3_env(), &["--jobs", "2"]);
}

#[test]
fn a_dead_network_fails_the_backup_after_the_retry_budget() {
    let bucket = block_on(servers::create_bucket("dead"));
    let upstream = servers::s3_endpoint();
    let proxy = FaultProxy::start(&upstream, DEAD, 7);
    let setup = s3_setup(&proxy.url_for(&upstream), &bucket, &["s3"], BRIEF);
    gives_up_on_a_dead_network(&setup, &servers::s3_env());
    let keys = block_on(servers::bucket_keys(&bucket));
    assert!(keys.is_empty(), "nothing complete was left: {keys:?}");
    assert_eq!(block_on(servers::open_uploads(&bucket)), 0);
}

fn azure_setup(endpoint: &str, container: &str, storage_extra: &str) -> Setup {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let section = servers::azure_section("blob", endpoint, container, storage_extra);
    Setup::with_storages(cluster, "", &section, &["blob"], "")
}

#[test]
fn azure_backup_list_restore_at_and_a_fresh_host_restores() {
    let container = block_on(servers::create_container("e2e"));
    let setup = azure_setup(&servers::azure_endpoint(), &container, "");
    two_backups_then_restore_at_the_first(&setup, &servers::azure_env(), "blob", "UTC");

    // A fresh host with the job file, reaching the account by a connection string.
    let host = tempfile::tempdir().unwrap();
    let config = host.path().join("jobs.toml");
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        "access_key_env = \"TEST_AZURE_KEY\"",
        "connection_string_env = \"TEST_AZURE_CONNECTION\"",
    );
    std::fs::write(&config, text).unwrap();
    let connection = format!(
        "DefaultEndpointsProtocol=http;AccountName={};AccountKey={};BlobEndpoint={};",
        servers::AZURE_ACCOUNT,
        servers::AZURE_KEY,
        servers::azure_endpoint()
    );
    let home = host.path().to_str().unwrap();
    let env = [
        ("TEST_AZURE_CONNECTION", connection.as_str()),
        ("HOME", home),
        ("TMPDIR", home),
    ];
    let run = common::run_backup_with(
        &config,
        &[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "fresh",
        ],
        &env,
    );
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        setup.cluster.table_digests("fresh"),
        setup.cluster.table_digests("app")
    );
}

/// An Azure backup whose credential was refused: a 403 with a hint, not
/// retried, and `secret` shown nowhere.
fn refused_at_once(run: &common::Run, secret: &str) {
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(run.stderr.contains("HTTP 403"), "{}", run.all());
    assert!(
        run.stderr.contains("hint: the credential was refused"),
        "{}",
        run.all()
    );
    assert!(
        !run.stderr.contains("gave up"),
        "a 403 is not retried: {}",
        run.all()
    );
    for shown in [&run.stderr, &run.stdout] {
        assert!(!shown.contains(secret), "{secret}: {}", run.all());
    }
}

#[test]
fn a_wrong_azure_key_fails_at_once_with_a_hint_and_never_shows_the_key() {
    let container = block_on(servers::create_container("badkey"));
    let setup = azure_setup(&servers::azure_endpoint(), &container, "");
    let wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk=";
    let started = std::time::Instant::now();
    let run = setup.backup_with(&["run", "nightly"], &[("TEST_AZURE_KEY", wrong)]);
    refused_at_once(&run, wrong);
    refused_at_once(&run, "sig=");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn a_flaky_network_to_azure_costs_retries_not_the_backup() {
    let container = block_on(servers::create_container("flaky"));
    let upstream = servers::azure_endpoint();
    let proxy = FaultProxy::start(&upstream, FLAKY, 11);
    let setup = azure_setup(&proxy.url_for(&upstream), &container, PATIENT);
    survives_a_flaky_network(&setup, &proxy, &servers::azure_env(), &[]);
}

#[test]
fn an_interrupted_backup_aborts_its_upload_and_leaves_nothing() {
    let bucket = block_on(servers::create_bucket("sigterm"));
    let upstream = servers::s3_endpoint();
    // A slow network, so the upload is still under way when the signal comes.
    let proxy = FaultProxy::start(
        &upstream,
        Faults {
            delay: std::time::Duration::from_millis(300),
            ..Faults::default()
        },
        3,
    );
    let setup = s3_setup(&proxy.url_for(&upstream), &bucket, &["s3"], "");
    load_bulk(&setup.cluster);
    let child = setup.spawn_backup_with(&["run", "nightly"], &servers::s3_env());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !proxy
        .request_lines()
        .iter()
        .any(|line| line.contains("partNumber="))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no part upload started: {:?}",
            proxy.request_lines()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let run = common::Run::from(child.wait_with_output().unwrap());

    assert_eq!(run.code, 130, "{}", run.all());
    assert!(run.stderr.contains("SIGTERM received"), "{}", run.all());
    assert!(
        run.stderr.contains("hint: run the job again"),
        "{}",
        run.all()
    );
    // Nothing of the backup is left; only the run record saying it was interrupted.
    let keys = block_on(servers::bucket_keys(&bucket));
    assert!(
        matches!(&keys[..], [record] if record.contains("/nightly/reports/") && record.ends_with("-backup.json")),
        "nothing but the run record was left in the bucket: {keys:?}"
    );
    let record = setup.backup_with(&["--json", "status"], &servers::s3_env());
    assert!(
        record.stdout.contains("\"outcome\": \"interrupted\""),
        "{}",
        record.all()
    );
    assert_eq!(
        block_on(servers::open_uploads(&bucket)),
        0,
        "the multipart upload was aborted before the process exited"
    );
    let lines = proxy.request_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("DELETE ") && l.contains("uploadId=")),
        "an AbortMultipartUpload was sent: {lines:?}"
    );
}

#[test]
fn s3_keys_come_from_files_or_the_aws_credential_chain_and_none_fails_at_once() {
    let bucket = block_on(servers::create_bucket("creds"));
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let keys = tempfile::tempdir().unwrap();
    let (id_file, secret_file) = (keys.path().join("id"), keys.path().join("secret"));
    std::fs::write(&id_file, format!("{}\n", servers::S3_ACCESS_KEY_ID)).unwrap();
    std::fs::write(&secret_file, format!("{}\n", servers::S3_SECRET_ACCESS_KEY)).unwrap();
    let section = servers::s3_section("s3", &servers::s3_endpoint(), &bucket, "")
        .replace(
            "access_key_id_env = \"TEST_S3_ACCESS_KEY_ID\"",
            &format!("access_key_id_file = \"{}\"", id_file.display()),
        )
        .replace(
            "secret_access_key_env = \"TEST_S3_SECRET_ACCESS_KEY\"",
            &format!("secret_access_key_file = \"{}\"", secret_file.display()),
        );
    let setup = Setup::with_storages(cluster, "", &section, &["s3"], "");
    // A key file others may read is refused, naming it, before anything runs.
    let refused = setup.backup(&["run", "nightly"]);
    assert_eq!(refused.code, 3, "{}", refused.all());
    assert!(
        refused.stderr.contains("access_key_id_file")
            && refused.stderr.contains("others may read it")
            && refused.stderr.contains("hint: chmod 600"),
        "{}",
        refused.all()
    );
    assert!(!refused.stderr.contains(servers::S3_SECRET_ACCESS_KEY));
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [&id_file, &secret_file] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "keys from files: {}", run.all());

    // No keys in the job file: the AWS credential chain, here its environment
    // variables. HOME has no profile, and instance metadata is off (127.0.0.1 only).
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let chained: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("access_key_id_file") && !l.starts_with("secret_access_key_file")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&setup.config, chained).unwrap();
    let home = tempfile::tempdir().unwrap();
    let home = home.path().to_str().unwrap();
    let no_imds = [("HOME", home), ("AWS_EC2_METADATA_DISABLED", "true")];
    let mut env = no_imds.to_vec();
    env.extend([
        ("AWS_ACCESS_KEY_ID", servers::S3_ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", servers::S3_SECRET_ACCESS_KEY),
    ]);
    let run = setup.backup_with(&["--json", "list", "--job", "nightly"], &env);
    assert!(run.ok(), "keys from the chain: {}", run.all());
    let listed: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.len(), 1, "{}", run.all());

    // Nothing anywhere: a configuration error at once, saying what was tried.
    let started = std::time::Instant::now();
    let run = setup.backup_with(&["run", "nightly"], &no_imds);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr.contains("storage s3: AWS credentials"),
        "{}",
        run.all()
    );
    assert!(
        run.stderr.contains("Environment"),
        "what was tried: {}",
        run.all()
    );
    assert!(
        run.stderr
            .contains("hint: give the storage access_key_id_env"),
        "{}",
        run.all()
    );
    assert!(
        !run.stderr.contains("gave up"),
        "not retried: {}",
        run.all()
    );
    assert!(
        !run.stderr.contains("DispatchFailure"),
        "no Debug dumps: {}",
        run.all()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn azure_takes_an_operators_sas_token_and_a_read_only_one_is_refused_at_once() {
    let container = block_on(servers::create_container("sas"));
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let section = servers::azure_section("blob", &servers::azure_endpoint(), &container, "")
        .replace(
            "access_key_env = \"TEST_AZURE_KEY\"",
            "sas_token_env = \"TEST_AZURE_SAS\"",
        );
    let setup = Setup::with_storages(cluster, "", &section, &["blob"], "");
    let full = servers::container_sas(&container, "racwdl");
    let env = [("TEST_AZURE_SAS", full.as_str())];
    let run = setup.backup_with(&["run", "nightly"], &env);
    assert!(run.ok(), "{}", run.all());
    let run = setup.backup_with(
        &[
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "copy",
        ],
        &env,
    );
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        setup.cluster.table_digests("copy"),
        setup.cluster.table_digests("app")
    );

    // A token that may only read and list: the upload is refused (403), not
    // retried, and the token's signature appears nowhere.
    let read_only = servers::container_sas(&container, "rl");
    let signature = read_only.split("sig=").nth(1).unwrap().to_owned();
    let run = setup.backup_with(
        &["run", "nightly"],
        &[("TEST_AZURE_SAS", read_only.as_str())],
    );
    refused_at_once(&run, &signature);
    let run = setup.backup_with(&["--json", "list", "--job", "nightly"], &env);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        listed.len(),
        1,
        "the refused run left nothing listed: {}",
        run.all()
    );
}

#[test]
fn entra_id_over_plain_http_is_a_configuration_error() {
    let container = "never-created";
    let cluster = Cluster::start();
    // No key, token or connection string: Entra ID, which must not send a
    // bearer token over http.
    let section = servers::azure_section("blob", &servers::azure_endpoint(), container, "")
        .replace("access_key_env = \"TEST_AZURE_KEY\"\n", "");
    let setup = Setup::with_storages(cluster, "", &section, &["blob"], "");
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr.contains("Entra ID needs an https endpoint"),
        "{}",
        run.all()
    );
    assert!(run.stderr.contains("hint:"), "{}", run.all());
}

#[test]
fn a_dead_network_to_azure_fails_the_backup_after_the_retry_budget() {
    let container = block_on(servers::create_container("dead"));
    let upstream = servers::azure_endpoint();
    let proxy = FaultProxy::start(&upstream, DEAD, 13);
    let setup = azure_setup(&proxy.url_for(&upstream), &container, BRIEF);
    gives_up_on_a_dead_network(&setup, &servers::azure_env());
    let blobs = block_on(servers::container_blobs(&container));
    assert!(blobs.is_empty(), "nothing complete was left: {blobs:?}");
}

/// Restore tests, verify and drills read from S3 and Azure as from a disk:
/// one job writing to both, a restore test filing its record in both, a
/// drill from S3, and a corrupted S3 copy that verify names while it passes
/// the Azure one.
#[test]
fn restore_test_verify_and_drill_through_s3_and_azure() {
    let (bucket, container, sections, env) = servers::s3_and_azure("proof");
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let setup = Setup::with_storages(
        cluster,
        "",
        &sections,
        &["s3", "blob"],
        "\n[jobs.rt]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\n\
         checks = [{ sql = \"SELECT count(*) FROM app.users\", equals = 5000 }]\n",
    );
    let ok = |args: &[&str]| {
        let run = setup.backup_with(args, &env);
        assert!(run.ok(), "{}", run.all());
        run
    };
    ok(&["run", "nightly"]);
    let id = {
        let run = ok(&["--json", "list", "--job", "nightly"]);
        let list: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        id_of(&list[0])
    };

    let test = ok(&["run", "rt"]);
    assert!(test.stdout.contains("from s3"), "{}", test.all());
    let keys = block_on(servers::bucket_keys(&bucket));
    assert!(
        keys.iter().any(|k| k.starts_with("prod/db/nightly/reports/") && k.ends_with("-restore-test.json")),
        "{keys:?}"
    );
    let blobs = block_on(servers::container_blobs(&container));
    assert!(
        blobs.iter().any(|k| k.ends_with("-restore-test.json")),
        "{blobs:?}"
    );
    let run = ok(&["--json", "list", "--job", "nightly"]);
    let list: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(list[0]["restore_tested_at"].is_string(), "{list:#}");

    let drill = ok(&["drill", "--job", "nightly"]);
    assert!(
        drill.stdout.contains("| Result | **PASSED** |"),
        "{}",
        drill.all()
    );
    assert!(
        drill
            .stdout
            .contains(&format!("storage s3 (s3://{bucket}/prod/db")),
        "{}",
        drill.all()
    );

    let good = ok(&["verify", "--job", "nightly"]);
    assert!(
        good.stdout
            .contains(&format!("backup {id} in storage s3: ok")),
        "{}",
        good.all()
    );
    assert!(
        good.stdout
            .contains(&format!("backup {id} in storage blob: ok")),
        "{}",
        good.all()
    );

    // Corrupt the S3 copy behind the program's back.
    let spec = servers::s3_storage_spec("s3", &servers::s3_endpoint(), &bucket);
    let backup::model::StorageKind::S3(mut s3) = spec.kind else {
        unreachable!()
    };
    s3.prefix = Some("prod/db".to_owned());
    let spec = backup::model::StorageSpec {
        kind: backup::model::StorageKind::S3(s3),
        ..spec
    };
    block_on(async {
        let storage = backup::storage::open(&spec).await.unwrap();
        let key = backup::storage::Key::new(format!("nightly/{id}/data.dump.zst")).unwrap();
        backup::storage::write_small(storage.as_ref(), &key, b"not what was stored")
            .await
            .unwrap();
    });
    let bad = setup.backup_with(&["verify", "--job", "nightly"], &env);
    assert_eq!(bad.code, 6, "{}", bad.all());
    assert!(
        bad.stderr
            .contains(&format!("backup {id} in storage s3: data.dump.zst")),
        "{}",
        bad.all()
    );
    assert!(
        bad.stdout
            .contains(&format!("backup {id} in storage blob: ok")),
        "{}",
        bad.all()
    );
}
