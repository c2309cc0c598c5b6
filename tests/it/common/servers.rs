//! The S3 and Azure Blob servers `scripts/test` starts (moto and Azurite on
//! 127.0.0.1), and storage specs pointing at them. Tests that need a server
//! fail with a clear message when it is missing: they are never skipped.

use backup::model::{
    AzureAuth, AzureSpec, Retry, S3Keys, S3Spec, SecretRef, StorageKind, StorageSpec,
};

/// moto accepts any keys; these are what the test job files use too.
pub const S3_ACCESS_KEY_ID: &str = "backup-test-key";
pub const S3_SECRET_ACCESS_KEY: &str = "backup-test-secret-8b2f";
/// Azurite's well-known development account.
pub const AZURE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

fn required(var: &str, server: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: this test needs the {server} server that scripts/test starts; \
             run scripts/test, or start it yourself and export {var}"
        )
    })
}

pub fn s3_endpoint() -> String {
    required("BACKUP_TEST_S3_ENDPOINT", "S3 (moto)")
}

pub fn azure_endpoint() -> String {
    required("BACKUP_TEST_AZURE_ENDPOINT", "Azure Blob (Azurite)")
}

/// A name unique to this process and call, valid as a bucket or container name.
pub fn unique_name(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Retries quick enough for tests that expect to exhaust them.
pub fn test_retry() -> Retry {
    Retry {
        attempts: 6,
        first_delay: std::time::Duration::from_millis(20),
        max_delay: std::time::Duration::from_millis(200),
        max_time: std::time::Duration::from_secs(60),
        io_timeout: std::time::Duration::from_secs(60),
    }
}

pub fn s3_spec_at(endpoint: &str, bucket: &str, part_size: u64) -> S3Spec {
    S3Spec {
        bucket: bucket.to_owned(),
        prefix: Some("conformance".to_owned()),
        region: Some("us-east-1".to_owned()),
        endpoint: Some(endpoint.to_owned()),
        path_style: true,
        keys: Some(S3Keys {
            access_key_id: SecretRef::given(S3_ACCESS_KEY_ID),
            secret_access_key: SecretRef::given(S3_SECRET_ACCESS_KEY),
            session_token: None,
        }),
        storage_class: None,
        sse: None,
        part_size,
        parts_in_flight: 2,
    }
}

/// Creates a bucket on the test S3 server and returns its name.
pub async fn create_bucket(tag: &str) -> String {
    let bucket = unique_name(tag);
    let spec = s3_spec_at(&s3_endpoint(), &bucket, 5 << 20);
    let client = s3_client(&spec).await;
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    bucket
}

async fn s3_client(spec: &S3Spec) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(spec.endpoint.clone().expect("test endpoint"))
        .force_path_style(true)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            S3_ACCESS_KEY_ID,
            S3_SECRET_ACCESS_KEY,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// Multipart uploads still open in a bucket (none after a clean abort).
pub async fn open_uploads(bucket: &str) -> usize {
    let spec = s3_spec_at(&s3_endpoint(), bucket, 5 << 20);
    let out = s3_client(&spec)
        .await
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("list multipart uploads");
    out.uploads().len()
}

pub fn s3_storage_spec(name: &str, endpoint: &str, bucket: &str) -> StorageSpec {
    StorageSpec {
        name: name.to_owned(),
        kind: StorageKind::S3(s3_spec_at(endpoint, bucket, 5 << 20)),
        retry: test_retry(),
    }
}

pub fn azure_spec_at(endpoint: &str, container: &str, block_size: u64) -> AzureSpec {
    AzureSpec {
        account: AZURE_ACCOUNT.to_owned(),
        container: container.to_owned(),
        prefix: Some("conformance".to_owned()),
        endpoint: Some(endpoint.to_owned()),
        auth: AzureAuth::AccountKey(SecretRef::given(AZURE_KEY)),
        block_size,
        blocks_in_flight: 2,
    }
}

/// Every key in a bucket, listed straight from the server (no proxy, no prefix).
pub async fn bucket_keys(bucket: &str) -> Vec<String> {
    let spec = s3_spec_at(&s3_endpoint(), bucket, 5 << 20);
    let client = s3_client(&spec).await;
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list bucket");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match page.next_continuation_token() {
            Some(next) => token = Some(next.to_owned()),
            None => return keys,
        }
    }
}

/// The bytes of one object in a bucket of the test S3 server.
pub async fn s3_object(bucket: &str, key: &str) -> Vec<u8> {
    let spec = s3_spec_at(&s3_endpoint(), bucket, 5 << 20);
    let client = s3_client(&spec).await;
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("get object");
    object
        .body
        .collect()
        .await
        .expect("read object")
        .into_bytes()
        .to_vec()
}

/// A fresh bucket and container, as `[storages.s3]` and `[storages.blob]`
/// sections, and the environment that holds their keys.
pub fn s3_and_azure(tag: &str) -> (String, String, String, Vec<(&'static str, &'static str)>) {
    let bucket = block_on(create_bucket(tag));
    let container = block_on(create_container(tag));
    let sections = format!(
        "{}\n{}",
        s3_section("s3", &s3_endpoint(), &bucket, ""),
        azure_section("blob", &azure_endpoint(), &container, "")
    );
    let mut env = s3_env().to_vec();
    env.extend(azure_env());
    (bucket, container, sections, env)
}

/// Runs a future to completion from a synchronous test.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A `[storages.NAME]` section for the test S3 server at `endpoint` (the
/// server itself, or a proxy in front of it), keys from the environment that
/// [`s3_env`] sets.
pub fn s3_section(name: &str, endpoint: &str, bucket: &str, extra: &str) -> String {
    format!(
        "[storages.{name}]\ntype = \"s3\"\nbucket = \"{bucket}\"\nprefix = \"prod/db\"\n\
         region = \"us-east-1\"\nendpoint = \"{endpoint}\"\npath_style = true\n\
         access_key_id_env = \"TEST_S3_ACCESS_KEY_ID\"\n\
         secret_access_key_env = \"TEST_S3_SECRET_ACCESS_KEY\"\npart_size = \"5MiB\"\n{extra}\n"
    )
}

pub fn s3_env() -> [(&'static str, &'static str); 2] {
    [
        ("TEST_S3_ACCESS_KEY_ID", S3_ACCESS_KEY_ID),
        ("TEST_S3_SECRET_ACCESS_KEY", S3_SECRET_ACCESS_KEY),
    ]
}

/// Creates a container on the test Azure server and returns its name.
pub async fn create_container(tag: &str) -> String {
    let container = unique_name(tag);
    let spec = StorageSpec {
        name: "setup".to_owned(),
        kind: StorageKind::Azure(azure_spec_at(&azure_endpoint(), &container, 8 << 20)),
        retry: test_retry(),
    };
    let StorageKind::Azure(az) = &spec.kind else {
        unreachable!()
    };
    backup::storage::AzureStorage::connect("setup", az, spec.retry)
        .expect("azure client")
        .create_container()
        .await
        .unwrap_or_else(|e| panic!("create container {container}: {e}"));
    container
}

/// A `[storages.NAME]` section for the test Azure server at `endpoint`, with
/// the account key from the environment that [`azure_env`] sets.
pub fn azure_section(name: &str, endpoint: &str, container: &str, extra: &str) -> String {
    format!(
        "[storages.{name}]\ntype = \"azure\"\naccount = \"{AZURE_ACCOUNT}\"\n\
         container = \"{container}\"\nprefix = \"prod/db\"\nendpoint = \"{endpoint}\"\n\
         access_key_env = \"TEST_AZURE_KEY\"\nblock_size = \"1MiB\"\n{extra}\n"
    )
}

pub fn azure_env() -> [(&'static str, &'static str); 1] {
    [("TEST_AZURE_KEY", AZURE_KEY)]
}

/// A service SAS for one container of the test Azure account, with the given
/// permissions (`"racwdl"`, `"rl"`, ...): the kind of token an operator is
/// handed for one container. Signed here, independently of the program's own
/// account-SAS code (https://learn.microsoft.com/rest/api/storageservices/create-service-sas).
pub fn container_sas(container: &str, permissions: &str) -> String {
    let version = "2022-11-02";
    let fmt = |t: jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let now = jiff::Timestamp::now();
    let start = fmt(now - jiff::SignedDuration::from_mins(5));
    let expiry = fmt(now + jiff::SignedDuration::from_hours(1));
    let resource = format!("/blob/{AZURE_ACCOUNT}/{container}");
    // permissions, start, expiry, resource, identifier, IP, protocol, version,
    // signed resource, snapshot time, encryption scope, then five response headers.
    let to_sign = format!(
        "{permissions}\n{start}\n{expiry}\n{resource}\n\n\nhttps,http\n{version}\nc\n\n\n\n\n\n\n"
    );
    let key = azure_core::credentials::Secret::new(AZURE_KEY.to_owned());
    let signature = azure_core::hmac::hmac_sha256(&to_sign, &key).expect("sign the SAS");
    let mut url = azure_core::http::Url::parse("http://sas/").unwrap();
    url.query_pairs_mut()
        .append_pair("sv", version)
        .append_pair("sp", permissions)
        .append_pair("st", &start)
        .append_pair("se", &expiry)
        .append_pair("spr", "https,http")
        .append_pair("sr", "c")
        .append_pair("sig", &signature);
    url.query().unwrap().to_owned()
}

/// Every blob under `prod/` in a container (where the test job files put
/// theirs), listed straight from the server, not through a proxy.
pub async fn container_blobs(container: &str) -> Vec<String> {
    container_blobs_under(container, "prod").await
}

/// Every blob under `prefix` in a container, listed straight from the server.
pub async fn container_blobs_under(container: &str, prefix: &str) -> Vec<String> {
    use backup::storage::{Key, Storage};
    let mut spec = azure_spec_at(&azure_endpoint(), container, 8 << 20);
    spec.prefix = None;
    let storage =
        backup::storage::AzureStorage::connect("check", &spec, test_retry()).expect("azure client");
    let listed = storage
        .list(&Key::new(prefix).unwrap())
        .await
        .expect("list container");
    listed
        .into_iter()
        .map(|o| o.key.as_str().to_owned())
        .collect()
}

/// The storage class and server-side encryption S3 reports for a key (full
/// key, prefix included), as HeadObject returns them.
pub async fn s3_object_options(bucket: &str, key: &str) -> (String, String, Option<String>) {
    let spec = s3_spec_at(&s3_endpoint(), bucket, 5 << 20);
    let head = s3_client(&spec)
        .await
        .head_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("head {key}: {e:?}"));
    (
        head.storage_class()
            .map_or("STANDARD".to_owned(), |c| c.as_str().to_owned()),
        head.server_side_encryption()
            .map_or(String::new(), |s| s.as_str().to_owned()),
        head.ssekms_key_id().map(str::to_owned),
    )
}

/// Starts a multipart upload of `key` and leaves it open, as a killed run does.
pub async fn start_upload(bucket: &str, key: &str) {
    let spec = s3_spec_at(&s3_endpoint(), bucket, 5 << 20);
    s3_client(&spec)
        .await
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("create multipart upload");
}
