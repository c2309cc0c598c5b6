//! Where archives live: one trait, a backend per kind of storage.
//!
//! The contract every backend keeps (and `tests/it/storage_conformance.rs` checks):
//! - nothing is visible under a key until its writer's `finish` succeeds;
//!   `abort`, or dropping an unfinished writer, leaves nothing behind;
//! - `reader` streams, so no object is ever held in memory whole;
//! - `list` returns every key under a prefix, however many;
//! - errors say whether they are temporary (see [`crate::error`]).

mod azure;
pub mod health;
mod local;
mod memory;
mod parted;
pub mod resume;
pub mod retry;
mod s3;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::error::{Error, Result};
use crate::model::{StorageKind, StorageSpec};

pub use azure::AzureStorage;
pub use local::LocalStorage;
pub use memory::MemoryStorage;
pub use s3::S3Storage;

/// A validated object key: `/`-separated, relative, no `.` or `..` segments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    pub fn new(key: impl Into<String>) -> Result<Key> {
        let key = key.into();
        let valid = !key.is_empty()
            && !key.starts_with('/')
            && !key.ends_with('/')
            && key.split('/').all(|segment| {
                !segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && !segment.contains(['\\', '\0'])
            });
        if valid {
            Ok(Key(key))
        } else {
            Err(Error::internal(format!(
                "'{key}' is not a valid object key"
            )))
        }
    }

    /// Joins a relative part onto this key, validating the result.
    pub fn join(&self, part: &str) -> Result<Key> {
        Key::new(format!("{}/{part}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment, the object's file name.
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An object found by `list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: Key,
    pub size: u64,
    /// When it was written, as the backend says; `None` where it keeps no
    /// time (memory). The WAL archive dates its segments by it.
    pub modified: Option<jiff::Timestamp>,
}

pub type ObjectReader = Pin<Box<dyn AsyncRead + Send>>;

#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// The name from the job file, used in messages.
    fn name(&self) -> &str;
    /// Starts writing `key`; nothing is visible there until `finish`.
    async fn writer(&self, key: &Key) -> Result<Box<dyn ObjectWriter>>;
    /// Streams the object; a missing object is a [`crate::error::Kind::NotFound`].
    async fn reader(&self, key: &Key) -> Result<ObjectReader>;
    /// Every object whose key starts with `prefix/`, in key order.
    async fn list(&self, prefix: &Key) -> Result<Vec<ObjectInfo>>;
    /// Deletes `key`; deleting a missing object is not an error.
    async fn delete(&self, key: &Key) -> Result<()>;
    /// Deletes several keys, in batches where the backend has them.
    async fn delete_many(&self, keys: &[Key]) -> Result<()> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }
    /// Removes what writers under `prefix/` left before `before` and never
    /// finished nor aborted (a process killed with SIGKILL or by the OOM
    /// killer runs no clean-up): S3 multipart uploads started before it, a
    /// local disk's temporary files last written before it. Returns how
    /// many. Callers make sure no writer of theirs is still going (prune
    /// holds off while the job's lock is held). Backends whose service
    /// discards unfinished writes by itself (Azure drops uncommitted blocks
    /// after a week), or that keep nothing (memory), have none.
    async fn clean_unfinished(&self, prefix: &Key, before: jiff::Timestamp) -> Result<usize> {
        let _ = (prefix, before);
        Ok(0)
    }
}

#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    /// Makes the object visible, durably. Returns its size.
    async fn finish(self: Box<Self>) -> Result<u64>;
    /// Discards everything written; nothing is left under the key.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// Opens the backend a storage spec describes. Remote backends resolve their
/// credentials here, so a missing one fails before any work starts.
pub async fn open(spec: &StorageSpec) -> Result<Arc<dyn Storage>> {
    match &spec.kind {
        StorageKind::Local { path } => Ok(Arc::new(
            LocalStorage::new(&spec.name, path).with_io_timeout(spec.retry.io_timeout),
        )),
        StorageKind::S3(s3) => Ok(Arc::new(
            S3Storage::connect(&spec.name, s3, spec.retry).await?,
        )),
        StorageKind::Azure(az) => Ok(Arc::new(AzureStorage::connect(&spec.name, az, spec.retry)?)),
    }
}

/// Opens the storage and lists a key nothing is stored under: what every
/// backup does first, so a storage that answers this can be written to by
/// the jobs, as far as asking without writing can tell.
pub async fn probe(spec: &StorageSpec) -> Result<()> {
    let storage = open(spec).await?;
    let key = Key::new(".backup-health")?;
    storage.list(&key).await.map(|_| ())
}

/// The size of part `index` (from 0) of a multipart upload whose first parts are
/// `base` bytes: doubled after every `per_step` parts, up to `max`, so a stream
/// of unknown length never runs out of parts, while small objects keep small parts.
pub fn part_size(base: u64, index: u32, per_step: u32, max: u64) -> u64 {
    let doublings = (index / per_step.max(1)).min(16);
    base.saturating_mul(1 << doublings).min(max.max(base))
}

/// The buffers of one multipart (or block) writer: the part being filled, and
/// the spare buffers of parts whose upload ended, reused rather than freed.
///
/// A buffer holds exactly one part, never more, and is allocated once and reused
/// for the whole object, so a writer holds at most `in flight + 1` of them. Reuse
/// also spares the allocator a part-sized free and malloc per part: measured with
/// heaptrack and GNU time, freeing them let glibc keep up to a part's worth more
/// resident.
#[derive(Default)]
pub(crate) struct PartBuffers {
    filling: bytes::BytesMut,
    spare: Vec<bytes::BytesMut>,
}

impl PartBuffers {
    /// Appends as much of `chunk` as fits in the part being filled, whose size
    /// is `part`; returns how many bytes it took.
    pub(crate) fn fill(&mut self, chunk: &[u8], part: usize) -> usize {
        if self.filling.capacity() == 0 {
            self.filling = self.fresh(part);
        }
        let taken = chunk.len().min(part.saturating_sub(self.filling.len()));
        self.filling.extend_from_slice(&chunk[..taken]);
        taken
    }

    pub(crate) fn len(&self) -> usize {
        self.filling.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.filling.is_empty()
    }

    /// Takes the part filled so far; the next `fill` starts a new one.
    pub(crate) fn take(&mut self) -> bytes::Bytes {
        std::mem::take(&mut self.filling).freeze()
    }

    /// Gives back a part whose upload ended; its buffer is kept for a later
    /// part when nothing else holds it.
    pub(crate) fn recycle(&mut self, part: bytes::Bytes) {
        if let Ok(mut buffer) = part.try_into_mut() {
            buffer.clear();
            self.spare.push(buffer);
        }
    }

    /// An empty buffer with room for a part of `size` bytes: a spare if one is
    /// large enough (parts grow), else a new one.
    fn fresh(&mut self, size: usize) -> bytes::BytesMut {
        self.spare.retain(|b| b.capacity() >= size);
        self.spare
            .pop()
            .unwrap_or_else(|| bytes::BytesMut::with_capacity(size))
    }
}

/// Clean-ups that writers dropped unfinished left running in the background
/// (an S3 multipart upload to abort). A `Drop` cannot wait, so they are
/// tracked here and the process waits for them before it exits: an interrupted
/// or failed run must not leave parts stored, and billed, forever.
static CLEANUPS: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Starts a clean-up in the background; false when there is no runtime to run it.
pub(crate) fn spawn_cleanup(task: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            CLEANUPS.spawn_on(task, &runtime);
            true
        }
        Err(_) => false,
    }
}

/// Waits up to `limit` for every clean-up started so far; false when some
/// were still running at the limit.
pub async fn finish_cleanups(limit: std::time::Duration) -> bool {
    CLEANUPS.close();
    let done = tokio::time::timeout(limit, CLEANUPS.wait()).await.is_ok();
    CLEANUPS.reopen();
    done
}

/// Reads a whole small object (manifests, reports) into memory.
pub async fn read_small(storage: &dyn Storage, key: &Key, limit: u64) -> Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let reader = storage.reader(key).await?;
    let mut buf = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| {
            Error::io(
                crate::error::Kind::Storage,
                format!("{}: {key}", storage.name()),
                e,
            )
        })?;
    if buf.len() as u64 > limit {
        return Err(Error::integrity(format!(
            "{}: {key} is larger than {limit} bytes, which no valid object of its kind is",
            storage.name()
        )));
    }
    Ok(buf)
}

/// Writes a whole small object in one go.
pub async fn write_small(storage: &dyn Storage, key: &Key, bytes: &[u8]) -> Result<()> {
    let mut writer = storage.writer(key).await?;
    if let Err(e) = writer.write(bytes).await {
        let _ = writer.abort().await;
        return Err(e);
    }
    writer.finish().await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_grow_so_five_tebibytes_fit_in_ten_thousand() {
        let base = 16 << 20;
        let max = 5 << 30;
        assert_eq!(part_size(base, 0, 1000, max), base);
        assert_eq!(part_size(base, 999, 1000, max), base);
        assert_eq!(part_size(base, 1000, 1000, max), 2 * base);
        let total: u64 = (0..10_000).map(|i| part_size(base, i, 1000, max)).sum();
        assert!(total >= 5 << 40, "{total}");
        assert_eq!(
            part_size(base, 9_999, 1000, max),
            max,
            "within S3's part limit"
        );
    }

    #[test]
    fn part_buffers_hold_one_part_and_are_reused_not_reallocated() {
        let part = 1024;
        let mut buffers = PartBuffers::default();
        assert_eq!(buffers.fill(&[1; 1000], part), 1000);
        assert_eq!(buffers.fill(&[2; 100], part), 24, "no more than a part");
        let first = buffers.take();
        assert_eq!(first.len(), part);
        let address = first.as_ptr();
        buffers.recycle(first);
        assert_eq!(buffers.fill(&[3; 2000], part), part);
        let second = buffers.take();
        assert_eq!(
            second.as_ptr(),
            address,
            "the first part's buffer came back"
        );
        assert_eq!(second[..], [3; 1024], "holding only new bytes");

        // Parts grew: a spare smaller than the new part is dropped, not used.
        buffers.recycle(second);
        assert_eq!(buffers.fill(&[4; 10], 4 * part), 10);
        assert!(buffers.filling.capacity() >= 4 * part);
        assert!(buffers.spare.is_empty());
        let last = buffers.take();
        assert_eq!(last.len(), 10);
        assert!(buffers.is_empty());
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "a/./b", "a/", "a\\b"] {
            assert!(Key::new(bad).is_err(), "{bad:?}");
        }
        let key = Key::new("job/20261122T030000Z").unwrap();
        assert_eq!(
            key.join("manifest.json").unwrap().as_str(),
            "job/20261122T030000Z/manifest.json"
        );
        assert!(key.join("../x").is_err());
        assert_eq!(key.file_name(), "20261122T030000Z");
    }
}
