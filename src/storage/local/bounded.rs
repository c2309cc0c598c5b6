//! Waiting on a file system that may hang: every call runs off the async
//! threads and fails once it has moved nothing for `io_timeout`; a reader
//! fails a read the same way; once one has hung, what follows waits less.

use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use super::LocalStorage;
use crate::error::{Error, Result};
use crate::nofollow;
use crate::storage::health::FailureKind;
use crate::storage::retry::{Moved, show};

impl LocalStorage {
    /// Whether the file system has just hung on us: what follows (removing
    /// the temporary file, the run record) gets a short wait, and nothing
    /// waits on it in a place that cannot time out.
    fn is_down(&self) -> bool {
        self.health.down_for().is_some()
    }

    /// `limit`, or less while the file system has just hung.
    fn limit(&self, limit: std::time::Duration) -> std::time::Duration {
        if self.is_down() {
            limit.min(crate::storage::retry::DOWN_IO_TIMEOUT)
        } else {
            limit
        }
    }

    /// Removes a writer's temporary file; on a file system that has just
    /// hung, from a thread of its own that nobody waits for (the unlink may
    /// never return; prune removes what it leaves).
    pub(super) fn remove_temp(&self, dir: &Arc<File>, temp: &str) -> std::io::Result<()> {
        if !self.is_down() {
            return nofollow::remove_file_at(dir, OsStr::new(temp));
        }
        let (dir, temp) = (dir.clone(), temp.to_owned());
        let spawned = std::thread::Builder::new()
            .name("unlink".into())
            .spawn(move || nofollow::remove_file_at(&dir, OsStr::new(&temp)));
        spawned.map(|_| ())
    }

    /// The error of an operation on `what` that moved nothing for `waited`.
    fn hung(&self, what: impl std::fmt::Display, waited: std::time::Duration) -> Error {
        let message = format!(
            "storage {}: {what}: the file system did not answer for {}",
            self.name,
            show(waited)
        );
        self.health.failed(FailureKind::Timeout, &message);
        Error::storage(message).with_hint(
            "a hung network mount (NFS, SMB) or a failing disk: check the mount and the \
             kernel log (dmesg); io_timeout in the storage's settings sets how long to wait",
        )
    }

    /// Waits up to `limit` for `work`; fails as [`LocalStorage::hung`] after.
    pub(super) async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        limit: std::time::Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        let limit = self.limit(limit);
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| self.hung(what(), limit))
    }

    /// Runs file system work off the async threads, for as long as it moves:
    /// `work` ticks the [`Moved`] it is given as it goes (a listing, once per
    /// entry), and fails as [`LocalStorage::hung`] on `what` once nothing
    /// moved for `io_timeout`.
    pub(super) async fn blocking<T: Send + 'static>(
        &self,
        what: String,
        work: impl FnOnce(&LocalStorage, &Moved) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        let limit = self.limit(self.io_timeout);
        let moved = Moved::new();
        let watched = moved.clone();
        let task = tokio::task::spawn_blocking(move || work(&this, &moved));
        tokio::select! {
            joined = task => {
                let result = joined.map_err(|e| {
                    Error::internal(format!(
                        "storage {}: a file system task failed: {e}",
                        self.name
                    ))
                })?;
                self.health.answered();
                result
            }
            () = watched.stalled(limit) => Err(self.hung(what, limit)),
        }
    }
}

/// A file being read, failing once a read has waited `io_timeout` for the
/// file system.
pub(super) struct Watched {
    pub(super) inner: tokio::io::BufReader<tokio::fs::File>,
    /// When the read now waiting gives up.
    pub(super) deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The file system hung: every later read says so at once.
    pub(super) hung: Option<String>,
    pub(super) storage: LocalStorage,
    pub(super) path: PathBuf,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(message) = &this.hung {
            return Poll::Ready(Err(std::io::Error::other(Error::storage(message.clone()))));
        }
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, out) {
            Poll::Ready(result) => {
                this.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = this.storage.limit(this.storage.io_timeout);
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.deadline = None;
                        let error = this
                            .storage
                            .hung(format!("reading {}", this.path.display()), timeout);
                        this.hung = Some(error.message().to_owned());
                        Poll::Ready(Err(std::io::Error::other(error)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::storage::local::runtime;
    use crate::storage::{Key, Storage};

    /// A file system call that never returns (a hard NFS mount whose server
    /// is gone) cannot be made here; one that sleeps past io_timeout is
    /// the same to the code that waits for it.
    #[test]
    fn an_operation_that_hangs_fails_after_io_timeout_and_one_that_moves_does_not() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("hung-disk", dir.path())
                .with_io_timeout(std::time::Duration::from_millis(200));
            let started = std::time::Instant::now();
            let err = storage
                .blocking("writing /mnt/x".to_owned(), |_, _| {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    Ok(())
                })
                .await
                .unwrap_err();
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
            assert_eq!(err.kind(), Kind::Storage);
            assert!(
                err.message().contains(
                    "storage hung-disk: writing /mnt/x: the file system did not answer for 200ms"
                ),
                "{err}"
            );
            assert!(err.hint().unwrap().contains("io_timeout"));
            let (_, counts, _) = crate::storage::health::snapshot()
                .into_iter()
                .find(|(name, ..)| name == "hung-disk")
                .unwrap();
            assert_eq!(counts[0], (FailureKind::Timeout, 1));

            // A long listing that moves all the while is not cut.
            let listed = storage
                .blocking("listing".to_owned(), |_, moved| {
                    for _ in 0..50 {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        moved.tick();
                    }
                    Ok(10)
                })
                .await
                .unwrap();
            assert_eq!(listed, 10);
        });
    }

    /// Once the file system has hung, a writer's clean-up never waits on it
    /// where nothing can time out: the unlink goes to a thread of its own.
    #[test]
    fn an_abort_on_a_file_system_that_hung_does_not_wait_for_it() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("hung-abort", dir.path());
            let mut writer = storage
                .writer(&Key::new("j/b/data").unwrap())
                .await
                .unwrap();
            writer.write(b"half a backup").await.unwrap();
            crate::storage::health::of("hung-abort")
                .failed(FailureKind::Timeout, "writing j/b/data: no answer");
            writer.abort().await.unwrap();
            let temp_left = || {
                std::fs::read_dir(dir.path().join("j/b"))
                    .unwrap()
                    .flatten()
                    .count()
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while temp_left() > 0 {
                assert!(std::time::Instant::now() < deadline, "the unlink never ran");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
    }
}
