//! One conformance suite run against every storage backend: memory, local,
//! S3 (moto) and Azure Blob (Azurite). A backend passes when it keeps the
//! contract in `src/storage/mod.rs`, whatever it is built on.

use std::sync::Arc;

use backup::error::Kind;
use backup::storage::{Key, ObjectInfo, Storage};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::common::proxy::{FaultProxy, Faults};
use crate::common::servers;

const MIB: u64 = 1 << 20;

/// A backend under test and the part (or block) size it was opened with, so
/// the suite can write objects of exactly one part and one part plus a byte.
struct Backend {
    storage: Arc<dyn Storage>,
    part: u64,
    /// Keeps a local backend's directory alive for the test.
    _dir: Option<tempfile::TempDir>,
    bucket: Option<String>,
    /// Whether a writer that is never finished nor aborted (its process
    /// killed) leaves something for `clean_unfinished` to remove: a local
    /// temporary file, an S3 multipart upload. Azure discards uncommitted
    /// blocks by itself, and memory keeps nothing.
    leaves_unfinished: bool,
    /// Whether the server tells when an unfinished write started. moto dates
    /// every multipart upload 2010-11-10 (moto/s3/responses.py), so there
    /// every one is old.
    dates_unfinished: bool,
}

/// Deterministic bytes that do not compress to nothing and differ per seed.
fn data(len: u64, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn key(text: &str) -> Key {
    Key::new(text).expect("valid key")
}

async fn put(storage: &dyn Storage, k: &Key, bytes: &[u8]) -> u64 {
    let mut writer = storage.writer(k).await.expect("writer");
    // Uneven chunks, as the pipeline hands them over.
    for chunk in bytes.chunks(200_003) {
        writer.write(chunk).await.expect("write");
    }
    writer.finish().await.expect("finish")
}

async fn get(storage: &dyn Storage, k: &Key) -> Vec<u8> {
    let mut reader = storage.reader(k).await.expect("reader");
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.expect("read");
    bytes
}

async fn keys_under(storage: &dyn Storage, prefix: &str) -> Vec<ObjectInfo> {
    storage.list(&key(prefix)).await.expect("list")
}

async fn round_trips_keep_every_byte(b: Backend) {
    let sizes = [0, 1, b.part, b.part + 1, 50 * MIB];
    for (i, size) in sizes.into_iter().enumerate() {
        let k = key(&format!("rt/obj-{size}"));
        let bytes = data(size, i as u64);
        let written = put(b.storage.as_ref(), &k, &bytes).await;
        assert_eq!(written, size, "finish reports the size of {k}");
        let read = get(b.storage.as_ref(), &k).await;
        assert_eq!(read.len() as u64, size, "length of {k}");
        assert_eq!(sha(&read), sha(&bytes), "sha256 of {k}");
    }
    let listed = keys_under(b.storage.as_ref(), "rt").await;
    let sizes_listed: Vec<u64> = listed.iter().map(|o| o.size).collect();
    assert_eq!(listed.len(), sizes.len(), "{listed:?}");
    for size in sizes {
        assert!(sizes_listed.contains(&size), "size {size} in {listed:?}");
    }
    // Every real backend dates its objects: the WAL archive's times come from it.
    let now = jiff::Timestamp::now();
    for o in &listed {
        match o.modified {
            Some(at) => assert!(
                (now - at).get_seconds().abs() < 3600,
                "{} dated {at}, now is {now}",
                o.key
            ),
            None => assert_eq!(b.storage.name(), "mem", "{} has no date", o.key),
        }
    }
}

async fn abort_and_drop_leave_nothing(b: Backend) {
    let k = key("gone/aborted");
    let mut writer = b.storage.writer(&k).await.unwrap();
    writer
        .write(&data(2 * b.part + 10, 1))
        .await
        .expect("write several parts");
    writer.abort().await.expect("abort");

    let k2 = key("gone/dropped");
    let mut writer = b.storage.writer(&k2).await.unwrap();
    writer.write(&data(2 * b.part + 10, 2)).await.unwrap();
    drop(writer);

    assert!(keys_under(b.storage.as_ref(), "gone").await.is_empty());
    for k in [&k, &k2] {
        let err = b.storage.reader(k).await.err().expect("nothing to read");
        assert_eq!(err.kind(), Kind::NotFound, "{err}");
    }
}

async fn listing_pages_through_2500_keys(b: Backend) {
    use futures::StreamExt;
    let storage = b.storage.clone();
    futures::stream::iter(0..2500)
        .map(|i| {
            let storage = storage.clone();
            async move {
                put(storage.as_ref(), &key(&format!("many/{i:05}")), b"x").await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // A sibling whose name shares the prefix's text must not be listed.
    put(b.storage.as_ref(), &key("many-not/1"), b"y").await;
    let listed = keys_under(b.storage.as_ref(), "many").await;
    assert_eq!(listed.len(), 2500);
    let expected: Vec<String> = (0..2500).map(|i| format!("many/{i:05}")).collect();
    let got: Vec<&str> = listed.iter().map(|o| o.key.as_str()).collect();
    assert_eq!(got, expected, "every key once, in key order");
}

async fn delete_removes_and_tolerates_missing(b: Backend) {
    let k = key("del/one");
    put(b.storage.as_ref(), &k, b"bytes").await;
    b.storage.delete(&k).await.expect("delete");
    assert!(keys_under(b.storage.as_ref(), "del").await.is_empty());
    b.storage
        .delete(&k)
        .await
        .expect("deleting a missing key is fine");

    let many: Vec<Key> = (0..5).map(|i| key(&format!("del/many/{i}"))).collect();
    for k in &many {
        put(b.storage.as_ref(), k, b"z").await;
    }
    b.storage.delete_many(&many).await.expect("delete_many");
    assert!(keys_under(b.storage.as_ref(), "del").await.is_empty());
}

async fn a_missing_key_is_not_found(b: Backend) {
    let err = b
        .storage
        .reader(&key("nothing/here"))
        .await
        .err()
        .expect("missing");
    assert_eq!(err.kind(), Kind::NotFound, "{err}");
    assert!(err.message().contains("nothing/here"), "{err}");
    assert!(keys_under(b.storage.as_ref(), "nothing").await.is_empty());
}

async fn two_writers_at_once(b: Backend) {
    let (ka, kb) = (key("two/a"), key("two/b"));
    let (da, db) = (data(3 * b.part + 7, 10), data(2 * b.part + 3, 11));
    let mut wa = b.storage.writer(&ka).await.unwrap();
    let mut wb = b.storage.writer(&kb).await.unwrap();
    let chunk = 300_007;
    let (mut ca, mut cb) = (da.chunks(chunk), db.chunks(chunk));
    loop {
        let (a, bb) = (ca.next(), cb.next());
        if a.is_none() && bb.is_none() {
            break;
        }
        if let Some(a) = a {
            wa.write(a).await.unwrap();
        }
        if let Some(bb) = bb {
            wb.write(bb).await.unwrap();
        }
    }
    let (ra, rb) = tokio::join!(wa.finish(), wb.finish());
    assert_eq!(ra.unwrap(), da.len() as u64);
    assert_eq!(rb.unwrap(), db.len() as u64);
    assert_eq!(sha(&get(b.storage.as_ref(), &ka).await), sha(&da));
    assert_eq!(sha(&get(b.storage.as_ref(), &kb).await), sha(&db));
}

/// A writer whose process was killed (SIGKILL, the OOM killer) runs no
/// clean-up at all: `forget` is that, in-process.
async fn killed_writer(storage: &dyn Storage, k: &Key, len: u64) {
    let mut writer = storage.writer(k).await.expect("writer");
    writer.write(&data(len, 7)).await.expect("write");
    std::mem::forget(writer);
}

async fn clean_unfinished_removes_what_killed_writers_left_once_old(b: Backend) {
    let storage = b.storage.as_ref();
    let done = key("unf/done/object");
    put(storage, &done, &data(b.part + 1, 8)).await;
    // More than a part: a multipart upload is open.
    killed_writer(storage, &key("unf/killed/object"), b.part + 1).await;
    // Beside the prefix, not under it: never touched.
    killed_writer(storage, &key("unf-not/killed"), b.part + 1).await;
    let left = usize::from(b.leaves_unfinished);

    let now = jiff::Timestamp::now();
    let hour = jiff::SignedDuration::from_hours(1);
    let before_it = now.checked_sub(hour).unwrap();
    if b.dates_unfinished {
        assert_eq!(
            storage
                .clean_unfinished(&key("unf"), before_it)
                .await
                .expect("clean"),
            0,
            "a write younger than `before` may still be going: kept"
        );
    }
    let after_it = now.checked_add(hour).unwrap();
    assert_eq!(
        storage
            .clean_unfinished(&key("unf"), after_it)
            .await
            .expect("clean"),
        left,
        "the killed writer's leftovers, once older than `before`"
    );
    assert_eq!(
        storage
            .clean_unfinished(&key("unf"), after_it)
            .await
            .expect("clean again"),
        0,
        "nothing is left the second time"
    );
    let listed: Vec<String> = keys_under(storage, "unf")
        .await
        .into_iter()
        .map(|o| o.key.as_str().to_owned())
        .collect();
    assert_eq!(listed, ["unf/done/object"], "finished objects stay");
    assert_eq!(sha(&get(storage, &done).await), sha(&data(b.part + 1, 8)));
    assert_eq!(
        storage
            .clean_unfinished(&key("unf-not"), after_it)
            .await
            .expect("clean the sibling"),
        left,
        "the sibling prefix's leftover was still there"
    );
}

macro_rules! conformance {
    ($backend:ident) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn round_trips_keep_every_byte() {
                super::round_trips_keep_every_byte(backends::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn abort_and_drop_leave_nothing() {
                super::abort_and_drop_leave_nothing(backends::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn listing_pages_through_2500_keys() {
                super::listing_pages_through_2500_keys(backends::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delete_removes_and_tolerates_missing() {
                super::delete_removes_and_tolerates_missing(backends::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_missing_key_is_not_found() {
                super::a_missing_key_is_not_found(backends::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_writers_at_once() {
                super::two_writers_at_once(backends::$backend().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn clean_unfinished_removes_what_killed_writers_left_once_old() {
                super::clean_unfinished_removes_what_killed_writers_left_once_old(
                    backends::$backend().await,
                )
                .await;
            }
        }
    };
}

mod backends {
    use super::*;
    use backup::model::{StorageKind, StorageSpec};

    pub async fn memory() -> Backend {
        Backend {
            storage: Arc::new(backup::storage::MemoryStorage::new("mem")),
            part: MIB,
            _dir: None,
            bucket: None,
            leaves_unfinished: false,
            dates_unfinished: true,
        }
    }

    pub async fn local() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        Backend {
            storage: Arc::new(backup::storage::LocalStorage::new("disk", dir.path())),
            part: MIB,
            _dir: Some(dir),
            bucket: None,
            leaves_unfinished: true,
            dates_unfinished: true,
        }
    }

    pub async fn s3() -> Backend {
        s3_at(&servers::s3_endpoint()).await
    }

    /// An S3 backend reached through `endpoint` (the server, or a proxy to it).
    pub async fn s3_at(endpoint: &str) -> Backend {
        let bucket = servers::create_bucket("conformance").await;
        let part = 5 * MIB; // S3's smallest part
        let spec = StorageSpec {
            name: "s3".to_owned(),
            kind: StorageKind::S3(servers::s3_spec_at(endpoint, &bucket, part)),
            retry: servers::test_retry(),
        };
        Backend {
            storage: backup::storage::open(&spec).await.expect("open s3"),
            part,
            _dir: None,
            bucket: Some(bucket),
            leaves_unfinished: true,
            dates_unfinished: false,
        }
    }

    pub async fn azure() -> Backend {
        azure_at(&servers::azure_endpoint()).await
    }

    /// An Azure backend reached through `endpoint` (the server, or a proxy to it).
    pub async fn azure_at(endpoint: &str) -> Backend {
        let container = servers::create_container("conformance").await;
        let part = MIB; // small blocks, so the suite crosses block boundaries
        let spec = StorageSpec {
            name: "blob".to_owned(),
            kind: StorageKind::Azure(servers::azure_spec_at(endpoint, &container, part)),
            retry: servers::test_retry(),
        };
        Backend {
            storage: backup::storage::open(&spec).await.expect("open azure"),
            part,
            _dir: None,
            bucket: None,
            leaves_unfinished: false,
            dates_unfinished: true,
        }
    }
}

conformance!(memory);
conformance!(local);
conformance!(s3);
conformance!(azure);

/// S3 only: an aborted or dropped multipart upload leaves no upload open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_aborted_uploads_leave_no_parts() {
    let b = backends::s3().await;
    let bucket = b.bucket.clone().expect("an s3 backend has a bucket");
    let mut writer = b.storage.writer(&key("parts/a")).await.unwrap();
    writer.write(&data(3 * b.part, 5)).await.unwrap();
    writer.abort().await.unwrap();
    let mut writer = b.storage.writer(&key("parts/b")).await.unwrap();
    writer.write(&data(3 * b.part, 6)).await.unwrap();
    drop(writer);
    // The drop aborts in the background.
    for _ in 0..100 {
        if servers::open_uploads(&bucket).await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("multipart uploads left open in {bucket}");
}

/// Writes a small object, one of exactly one part and one of six parts and a
/// byte through a slow proxy, and returns the request lines of each write and
/// the most requests that were open at once during the large one.
fn requests_of_writes(
    upstream: &str,
    open: fn(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = Backend>>>,
) -> (Vec<String>, Vec<String>, Vec<String>, u64) {
    let proxy = FaultProxy::start(
        upstream,
        Faults {
            // Slow enough that parts overlap whenever the writer lets them.
            delay: std::time::Duration::from_millis(100),
            ..Faults::default()
        },
        5,
    );
    let url = proxy.url_for(upstream);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let b = open(url).await;
        let mut seen = Vec::new();
        for (name, size) in [
            ("shape/small", 1024),
            ("shape/one-part", b.part),
            ("shape/large", 6 * b.part + 1),
        ] {
            proxy.clear();
            let bytes = data(size, size);
            put(b.storage.as_ref(), &key(name), &bytes).await;
            assert_eq!(sha(&get(b.storage.as_ref(), &key(name)).await), sha(&bytes));
            let lines: Vec<String> = proxy
                .request_lines()
                .into_iter()
                // Azure escapes the '/' in blob names.
                .filter(|l| l.replace("%2F", "/").contains(name) && !l.starts_with("GET "))
                .collect();
            seen.push((lines, proxy.most_open()));
        }
        let (large, most_open) = seen.pop().unwrap();
        let (one_part, _) = seen.pop().unwrap();
        let (small, _) = seen.pop().unwrap();
        (small, one_part, large, most_open)
    })
}

#[test]
fn s3_sends_objects_up_to_one_part_whole_and_larger_ones_in_bounded_parts() {
    let (small, one_part, large, most_open) = requests_of_writes(&servers::s3_endpoint(), |url| {
        Box::pin(async move { backends::s3_at(&url).await })
    });
    for lines in [&small, &one_part] {
        assert_eq!(lines.len(), 1, "one PutObject: {lines:?}");
        assert!(
            lines[0].starts_with("PUT ") && !lines[0].contains("partNumber"),
            "{lines:?}"
        );
    }
    let count = |pattern: &str| large.iter().filter(|l| l.contains(pattern)).count();
    assert_eq!(count("uploads"), 1, "one CreateMultipartUpload: {large:?}");
    assert_eq!(count("partNumber="), 7, "seven UploadPart: {large:?}");
    assert_eq!(
        large
            .iter()
            .filter(|l| l.starts_with("POST ") && l.contains("uploadId="))
            .count(),
        1,
        "one CompleteMultipartUpload: {large:?}"
    );
    assert_eq!(
        most_open, 2,
        "parts_in_flight = 2 parts at once, no more, no fewer"
    );
}

#[test]
fn azure_sends_objects_up_to_one_block_whole_and_larger_ones_in_bounded_blocks() {
    let (small, one_block, large, most_open) =
        requests_of_writes(&servers::azure_endpoint(), |url| {
            Box::pin(async move { backends::azure_at(&url).await })
        });
    for lines in [&small, &one_block] {
        assert_eq!(lines.len(), 1, "one Put Blob: {lines:?}");
        assert!(
            lines[0].starts_with("PUT ") && !lines[0].contains("comp=block"),
            "{lines:?}"
        );
    }
    let count = |pattern: &str| large.iter().filter(|l| l.contains(pattern)).count();
    assert_eq!(
        large
            .iter()
            .filter(|l| l.contains("comp=block") && !l.contains("comp=blocklist"))
            .count(),
        7,
        "seven Put Block: {large:?}"
    );
    assert_eq!(count("comp=blocklist"), 1, "one Put Block List: {large:?}");
    assert_eq!(
        most_open, 2,
        "blocks_in_flight = 2 blocks at once, no more, no fewer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_objects_get_the_storage_class_and_encryption_asked_for() {
    use backup::model::{Sse, StorageKind, StorageSpec};
    let bucket = servers::create_bucket("options").await;
    let part = 5 * MIB;
    let cases = [
        ("STANDARD_IA", Sse::Aes256, "AES256", None),
        (
            "GLACIER_IR",
            Sse::Kms {
                key_id: Some("alias/backups".to_owned()),
            },
            "aws:kms",
            Some("alias/backups"),
        ),
    ];
    for (class, sse, expected_sse, expected_key) in cases {
        let mut s3 = servers::s3_spec_at(&servers::s3_endpoint(), &bucket, part);
        s3.prefix = Some(class.to_lowercase());
        s3.storage_class = Some(class.to_owned());
        s3.sse = Some(sse);
        let spec = StorageSpec {
            name: "s3".to_owned(),
            kind: StorageKind::S3(s3),
            retry: servers::test_retry(),
        };
        let storage = backup::storage::open(&spec).await.expect("open s3");
        // One single PUT and one multipart upload.
        for (name, size) in [("small", 10), ("large", 2 * part + 1)] {
            put(storage.as_ref(), &key(name), &data(size, 3)).await;
            let full = format!("{}/{name}", class.to_lowercase());
            let (got_class, got_sse, got_key) = servers::s3_object_options(&bucket, &full).await;
            assert_eq!(got_class, class, "storage class of {full}");
            assert_eq!(got_sse, expected_sse, "encryption of {full}");
            if let Some(expected) = expected_key {
                assert!(
                    got_key.as_deref().is_some_and(|k| k.contains(expected)),
                    "kms key of {full}: {got_key:?}"
                );
            }
        }
    }
}
