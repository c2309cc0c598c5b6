//! The WAL a base backup needs, awaited in the archive: its manifest is
//! written only once every segment from its start to its stop is in every
//! storage that holds its base tar (DESIGN.md: a base backup is complete
//! when its manifest exists).
//!
//! `pg_basebackup -X none` returns once the server has archived the last
//! segment, so with `archive_command` pushing to this job the segments are
//! there at once. They never come when it pushes elsewhere: the wait is
//! bounded by `wal_wait`, polled with a backoff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::model::Clock;
use crate::storage::Storage;
use crate::wal::{Segment, WalFile, object::list_dir};

const FIRST_POLL: Duration = Duration::from_millis(250);
const LONGEST_POLL: Duration = Duration::from_secs(5);

/// A storage still missing segments, and why, when listing it failed.
struct Pending {
    storage: Arc<dyn Storage>,
    missing: Vec<Segment>,
    error: Option<Error>,
}

/// Waits up to `wait` until each of `segments` is archived in each of
/// `storages`. Returns the storages that have them all, and each other one
/// with what it lacks.
pub(super) async fn await_segments(
    job: &str,
    storages: &[Arc<dyn Storage>],
    segments: &[Segment],
    segment_size: u64,
    wait: Duration,
    clock: &dyn Clock,
) -> (Vec<Arc<dyn Storage>>, Vec<(String, Error)>) {
    let deadline = jiff::SignedDuration::try_from(wait)
        .ok()
        .and_then(|w| clock.now().checked_add(w).ok())
        .unwrap_or(jiff::Timestamp::MAX);
    let mut pending: Vec<Pending> = storages
        .iter()
        .map(|s| Pending {
            storage: s.clone(),
            missing: segments.to_vec(),
            error: None,
        })
        .collect();
    let mut complete = Vec::new();
    let mut delay = FIRST_POLL;
    loop {
        // Every storage is asked at once: the wait is the slowest one's.
        let checks = pending
            .iter()
            .map(|p| still_missing(p.storage.as_ref(), job, &p.missing, segment_size));
        let results = futures::future::join_all(checks).await;
        for (p, result) in pending.iter_mut().zip(results) {
            match result {
                Ok(missing) => {
                    p.missing = missing;
                    p.error = None;
                }
                Err(e) => p.error = Some(e),
            }
        }
        let (done, rest): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|p| p.missing.is_empty() && p.error.is_none());
        complete.extend(done.into_iter().map(|p| p.storage));
        pending = rest;
        let now = clock.now();
        if pending.is_empty() || now >= deadline {
            break;
        }
        let left = deadline.duration_since(now).unsigned_abs();
        clock.sleep(delay.min(left)).await;
        delay = (delay * 2).min(LONGEST_POLL);
    }
    let failed = pending
        .into_iter()
        .map(|p| {
            let name = p.storage.name().to_owned();
            let detail = match (&p.error, p.missing.as_slice()) {
                (Some(e), _) => format!("storage {name} could not be listed: {e}"),
                (None, [one]) => format!("storage {name} lacks {}", one.name(segment_size)),
                (None, [first, .., last]) => format!(
                    "storage {name} lacks {} segments, {} to {}",
                    p.missing.len(),
                    first.name(segment_size),
                    last.name(segment_size)
                ),
                (None, []) => format!("storage {name}"),
            };
            (name, super::stream::not_archived(job, wait, &detail))
        })
        .collect();
    (complete, failed)
}

/// Which of `missing` `storage` does not hold yet: one listing per
/// directory of the archive (a directory holds 4 GiB of WAL).
async fn still_missing(
    storage: &dyn Storage,
    job: &str,
    missing: &[Segment],
    segment_size: u64,
) -> Result<Vec<Segment>> {
    let mut by_directory: BTreeMap<String, Vec<(Segment, WalFile)>> = BTreeMap::new();
    for segment in missing {
        let file = WalFile::Segment(segment.name(segment_size));
        let directory = file.prefix(job)?.to_string();
        by_directory
            .entry(directory)
            .or_default()
            .push((*segment, file));
    }
    let mut left = Vec::new();
    for files in by_directory.values() {
        let prefix = files[0].1.prefix(job)?;
        let archived = list_dir(storage, &prefix).await?;
        left.extend(
            files
                .iter()
                .filter(|(_, file)| !archived.iter().any(|a| a.file == *file))
                .map(|(segment, _)| *segment),
        );
    }
    left.sort();
    Ok(left)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::Compression;
    use crate::storage::MemoryStorage;

    const SIZE: u64 = 16 << 20;

    /// A clock whose sleeps pass at once, moving it on.
    struct Stepping(Mutex<jiff::Timestamp>);

    impl Clock for Stepping {
        fn now(&self) -> jiff::Timestamp {
            *self.0.lock().unwrap()
        }
        fn sleep(&self, d: Duration) -> futures::future::BoxFuture<'static, ()> {
            let mut now = self.0.lock().unwrap();
            *now = now
                .checked_add(jiff::SignedDuration::try_from(d).unwrap())
                .unwrap();
            Box::pin(std::future::ready(()))
        }
    }

    fn archive(storage: &MemoryStorage, segment: Segment) {
        let key = WalFile::Segment(segment.name(SIZE))
            .key("base", &"ab".repeat(32), Compression::Zstd(3), false)
            .unwrap();
        storage.put(&key, vec![1]);
    }

    fn segments(from: u64, to: u64) -> Vec<Segment> {
        (from..=to)
            .map(|number| Segment {
                timeline: 1,
                number,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_storage_with_every_segment_is_complete_at_once() {
        let disk = Arc::new(MemoryStorage::new("disk"));
        // Across a log boundary: two directories of the archive.
        let needed = segments(0xFE, 0x101);
        for s in &needed {
            archive(&disk, *s);
        }
        let empty = Arc::new(MemoryStorage::new("s3"));
        let clock = Stepping(Mutex::new("2024-01-20T03:00:00Z".parse().unwrap()));
        let storages: Vec<Arc<dyn Storage>> = vec![disk, empty];
        let (complete, failed) = await_segments(
            "base",
            &storages,
            &needed,
            SIZE,
            Duration::from_secs(10),
            &clock,
        )
        .await;
        assert_eq!(complete.len(), 1);
        assert_eq!(complete[0].name(), "disk");
        assert_eq!(failed.len(), 1);
        let (storage, e) = &failed[0];
        assert_eq!(storage, "s3");
        assert!(
            e.message().contains(
                "storage s3 lacks 4 segments, 0000000100000000000000FE to 000000010000000100000001"
            ),
            "{e}"
        );
        assert!(e.message().contains("not archived within 10s"), "{e}");
        assert!(e.hint().unwrap().contains("backup wal check --job base"));
        // The bound held: ten seconds of sleeps, not more.
        let waited = clock
            .now()
            .duration_since("2024-01-20T03:00:00Z".parse().unwrap());
        assert_eq!(waited.as_secs(), 10);
    }

    #[tokio::test]
    async fn a_segment_of_another_timeline_does_not_count() {
        let disk = Arc::new(MemoryStorage::new("disk"));
        archive(
            &disk,
            Segment {
                timeline: 2,
                number: 3,
            },
        );
        let clock = Stepping(Mutex::new("2024-01-20T03:00:00Z".parse().unwrap()));
        let storages: Vec<Arc<dyn Storage>> = vec![disk];
        let (complete, failed) = await_segments(
            "base",
            &storages,
            &segments(3, 3),
            SIZE,
            Duration::from_secs(1),
            &clock,
        )
        .await;
        assert!(complete.is_empty());
        assert!(
            failed[0]
                .1
                .message()
                .contains("lacks 000000010000000000000003"),
            "{}",
            failed[0].1
        );
    }
}
