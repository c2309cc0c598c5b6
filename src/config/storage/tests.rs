//! The storage sections' tests: sizes, and every backend's settings and
//! mistakes as a job file states them.

use super::*;
use crate::config::testing::{GOOD, check, error_of, line_of, test_env, with_remote};

#[test]
fn sizes_take_units() {
    assert_eq!(parse_size("16MiB"), Some(16 * MIB));
    assert_eq!(parse_size("8 MiB"), Some(8 * MIB));
    assert_eq!(parse_size("64MB"), Some(64_000_000));
    assert_eq!(parse_size("1024"), Some(1024));
    for bad in ["", "MiB", "16 mb", "1.5GiB", "-1"] {
        assert_eq!(parse_size(bad), None, "{bad:?}");
    }
}

#[test]
fn endpoints_at_an_address_use_path_style() {
    for yes in [
        "http://127.0.0.1:9000",
        "http://localhost:9000/",
        "https://[::1]:9000",
        "http://10.0.0.5",
    ] {
        assert!(is_ip_or_localhost(yes), "{yes}");
    }
    for no in [
        "http://minio:9000",
        "https://s3.ap-northeast-1.amazonaws.com",
    ] {
        assert!(!is_ip_or_localhost(no), "{no}");
    }
}

#[test]
fn s3_and_azure_storages_resolve_with_defaults_and_secrets() {
    use crate::model::{AzureAuth, Sse, StorageKind};
    let config = check(&with_remote("")).unwrap();
    let (_, backup) = config.backup_job("nightly").unwrap();
    let names: Vec<&str> = backup.storages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["disk", "s3", "blob"]);
    let StorageKind::S3(s3) = &backup.storages[1].kind else {
        panic!("s3")
    };
    assert_eq!(s3.prefix.as_deref(), Some("prod/app"));
    assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(s3.part_size, 64 << 20);
    assert_eq!(s3.parts_in_flight, 2);
    assert_eq!(
        s3.sse,
        Some(Sse::Kms {
            key_id: Some("alias/backups".into())
        })
    );
    let keys = s3.keys.as_ref().unwrap();
    assert_eq!(
        keys.secret_access_key
            .resolve_with(&test_env)
            .unwrap()
            .expose(),
        "storage-s3cret"
    );
    assert_eq!(backup.storages[1].retry.attempts, 4);
    assert_eq!(backup.storages[1].retry.max_time.as_secs(), 120);
    assert_eq!(
        backup.storages[1].retry.io_timeout.as_secs(),
        60,
        "the default"
    );
    let StorageKind::Azure(az) = &backup.storages[2].kind else {
        panic!("azure")
    };
    assert_eq!(az.block_size, 4 << 20);
    assert!(matches!(az.auth, AzureAuth::AccountKey(_)));
    assert!(!format!("{config:?}").contains("storage-s3cret"));
}

#[test]
fn remote_storage_mistakes_name_the_key() {
    for (from, to, expect) in [
        ("bucket = \"backups\"\n", "", "needs `bucket`"),
        (
            "part_size = \"64MiB\"",
            "part_size = \"1MiB\"",
            "part_size must be between 5.0 MiB",
        ),
        (
            "part_size = \"64MiB\"",
            "part_size = \"lots\"",
            "part_size is not a size",
        ),
        (
            "sse = \"aws:kms\"",
            "sse = \"AES256\"",
            "kms_key_id needs sse = \"aws:kms\"",
        ),
        ("sse = \"aws:kms\"", "sse = \"rot13\"", "sse 'rot13'"),
        (
            "retry_max_time = \"2m\"",
            "retry_max_time = \"soon\"",
            "not a duration",
        ),
        (
            "endpoint = \"http://127.0.0.1:9000/\"",
            "endpoint = \"127.0.0.1:9000\"",
            "not an http(s) URL",
        ),
        ("secret_access_key_env = \"S3_SECRET\"\n", "", "need both"),
        (
            "access_key_env = \"AZ_KEY\"",
            "access_key_env = \"AZ_KEY\"\nsas_token_env = \"AZ_SAS\"",
            "more than one",
        ),
        (
            "container = \"database-backups\"",
            "container = \"database-backups\"\nbucket = \"x\"",
            "`bucket` does not apply to type = \"azure\"",
        ),
        (
            "path_style = true",
            "path_style = true\npath = \"/x\"",
            "`path` does not apply to type = \"s3\"",
        ),
        (
            "access_key_id_env = \"S3_ID\"",
            "access_key_id_env = \"NOT_SET\"",
            "NOT_SET is not set",
        ),
        (
            "retry_max_time = \"2m\"",
            "retry_max_time = \"2m\"\nio_timeout = \"30s\"\nrequest_timeout = \"1m\"",
            "request_timeout and io_timeout are the same setting",
        ),
        (
            "retry_max_time = \"2m\"",
            "retry_max_time = \"2m\"\nio_timeout = \"0s\"",
            "io_timeout = '0s' is not a duration",
        ),
    ] {
        let text = with_remote("");
        assert!(text.contains(from), "{from}");
        let err = error_of(&text.replace(from, to));
        assert!(err.contains(expect), "{from} -> {to}: {err}");
        assert!(!err.contains("storage-s3cret"), "{err}");
    }
}

#[test]
fn io_timeout_is_set_per_storage_and_request_timeout_is_its_old_name() {
    let text = with_remote("")
        .replace(
            "retry_max_time = \"2m\"",
            "retry_max_time = \"2m\"\nio_timeout = \"90s\"",
        )
        .replace(
            "block_size = \"4 MiB\"",
            "block_size = \"4 MiB\"\nrequest_timeout = \"2m\"",
        );
    let config = check(&text).unwrap();
    let (_, backup) = config.backup_job("nightly").unwrap();
    let timeouts: Vec<u64> = backup
        .storages
        .iter()
        .map(|s| s.retry.io_timeout.as_secs())
        .collect();
    assert_eq!(timeouts, [60, 90, 120]);
    let local = GOOD.replacen(
        "type = \"local\"",
        "type = \"local\"\nio_timeout = \"5m\"",
        1,
    );
    assert!(local.contains("io_timeout"));
    let config = check(&local).unwrap();
    let (_, backup) = config.backup_job("nightly").unwrap();
    assert_eq!(backup.storages[0].retry.io_timeout.as_secs(), 300);
}

#[test]
fn bucket_container_and_endpoint_the_service_would_refuse_are_config_errors() {
    let bad = [
        (
            "bucket = \"backups\"",
            "bucket = \"\"",
            "bucket '' is not valid: it must be 3 to 63",
        ),
        (
            "bucket = \"backups\"",
            "bucket = \"..\"",
            "bucket '..' is not valid",
        ),
        ("bucket = \"backups\"", "bucket = \"a..b\"", "two dots"),
        (
            "bucket = \"backups\"",
            "bucket = \"Backups\"",
            "only lowercase",
        ),
        (
            "bucket = \"backups\"",
            "bucket = \"my_backups\"",
            "only lowercase",
        ),
        (
            "bucket = \"backups\"",
            "bucket = \"-backups\"",
            "start and end",
        ),
        (
            "bucket = \"backups\"",
            "bucket = \"192.168.5.4\"",
            "IP address",
        ),
        (
            "container = \"database-backups\"",
            "container = \"\"",
            "container '' is not valid",
        ),
        (
            "container = \"database-backups\"",
            "container = \"db.backups\"",
            "only lowercase",
        ),
        (
            "container = \"database-backups\"",
            "container = \"db--backups\"",
            "two hyphens",
        ),
        (
            "container = \"database-backups\"",
            "container = \"db-\"",
            "start and end",
        ),
        (
            "endpoint = \"http://127.0.0.1:9000/\"",
            "endpoint = \"http://[::1\"",
            "endpoint 'http://[::1' is not a valid URL: invalid IPv6 address",
        ),
        (
            "endpoint = \"http://127.0.0.1:9000/\"",
            "endpoint = \"http://:9000\"",
            "endpoint 'http://:9000' is not a valid URL",
        ),
    ];
    for (from, to, expect) in bad {
        let text = with_remote("").replace(from, to);
        let line = line_of(&text, to);
        let err = error_of(&text);
        let section = if to.starts_with("container") {
            "blob"
        } else {
            "s3"
        };
        let head = format!("jobs/app.toml:{line}: [storages.{section}] ");
        assert!(err.starts_with(&head), "{to}: {err}");
        assert!(err.contains(expect), "{to}: {err}");
        assert!(err.contains("\nhint: "), "{to}: {err}");
    }
    let long = format!("bucket = \"{}\"", "b".repeat(64));
    assert!(error_of(&with_remote("").replace("bucket = \"backups\"", &long)).contains("3 to 63"));
    for (from, to) in [
        ("bucket = \"backups\"", "bucket = \"my.backups-2026\""),
        (
            "bucket = \"backups\"",
            format!("bucket = \"{}\"", "b".repeat(63)).as_str(),
        ),
        (
            "container = \"database-backups\"",
            "container = \"db-backups-2\"",
        ),
        (
            "endpoint = \"http://127.0.0.1:9000/\"",
            "endpoint = \"http://[::1]:9000\"",
        ),
        (
            "endpoint = \"http://127.0.0.1:9000/\"",
            "endpoint = \"https://minio.internal\"",
        ),
    ] {
        let text = with_remote("").replace(from, to);
        assert!(check(&text).is_ok(), "{to}: {:?}", check(&text).err());
    }
}
