//! Downloads that survive a dropped connection: a reader that, when the body
//! of a GET fails or stalls part-way, asks again from the byte it had reached.
//!
//! A restore of a large backup reads one object for a long time; without this a
//! reset connection an hour in would fail the restore. The resumed request goes
//! through the same [`Retrier`] as every other request, and a resume that
//! makes no progress counts against the attempt budget, so a server that always
//! fails at the same byte still ends in an error. A body that moves nothing for
//! `io_timeout` is resumed once; when the resumed request answers nothing for
//! as long, the storage has stopped answering and the read fails.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::mpsc;

use super::ObjectReader;
use super::health::FailureKind;
use super::retry::{Retrier, show};
use crate::error::{Error, Result};

/// A backend's way to open one object from a byte offset (an HTTP Range request).
#[async_trait]
pub trait OpenAt: Send + Sync + 'static {
    async fn open_at(&self, offset: u64) -> Result<ObjectReader>;
}

/// Chunks handed from the download task to the reader; with 64 KiB chunks this
/// bounds the read-ahead at 256 KiB.
const QUEUE: usize = 4;
const CHUNK: usize = 64 * 1024;

/// Opens the object (retrying the first request) and returns a reader that
/// resumes on failures mid-stream. `what` names the object in messages.
pub async fn open(source: Arc<dyn OpenAt>, retry: Retrier, what: String) -> Result<ObjectReader> {
    let first = retry.run(&what, || source.open_at(0)).await?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(download(source, first, retry, what, tx));
    Ok(Box::pin(Resuming {
        rx,
        current: Bytes::new(),
        failed: None,
    }))
}

async fn download(
    source: Arc<dyn OpenAt>,
    mut reader: ObjectReader,
    retry: Retrier,
    what: String,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let mut offset = 0u64;
    let mut stalled_resumes = 0u32;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let io_timeout = retry.io_timeout();
        let (failure, stalled) = match tokio::time::timeout(io_timeout, reader.read(&mut buf)).await
        {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => {
                offset += n as u64;
                stalled_resumes = 0;
                if tx
                    .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return; // the reader was dropped
                }
                continue;
            }
            Ok(Err(e)) => (e.to_string(), false),
            Err(_) => (format!("nothing moved for {}", show(io_timeout)), true),
        };
        // Anything that breaks a body part-way is the network's doing; the
        // reopened request reports a permanent cause (a deleted object) itself.
        stalled_resumes += 1;
        if stalled_resumes > retry.policy.attempts {
            let error = Error::storage(format!(
                "{what}: the download failed at byte {offset} {} times without progress: {failure}",
                retry.policy.attempts
            ));
            retry
                .health()
                .failed(FailureKind::Unavailable, error.message());
            let _ = tx.send(Err(io::Error::other(error))).await;
            return;
        }
        tracing::warn!(object = %what, offset, error = %failure, "download interrupted, resuming");
        let reopened = if stalled {
            resume_after_stall(&*source, &retry, &what, offset, io_timeout).await
        } else {
            retry.run(&what, || source.open_at(offset)).await
        };
        match reopened {
            Ok(next) => reader = next,
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(e))).await;
                return;
            }
        }
    }
}

/// Reopens a body that stalled: a first try that answers nothing either
/// is the second stall in a row, and the end (see [`Retrier::run_moving`]).
async fn resume_after_stall(
    source: &dyn OpenAt,
    retry: &Retrier,
    what: &str,
    offset: u64,
    io_timeout: std::time::Duration,
) -> Result<ObjectReader> {
    match tokio::time::timeout(io_timeout, source.open_at(offset)).await {
        Ok(Ok(reader)) => Ok(reader),
        Ok(Err(e)) if e.is_temporary() => retry.run(what, || source.open_at(offset)).await,
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let message = format!(
                "{what}: nothing moved for {} at byte {offset}, nor in the request resuming \
                 from there (the storage stopped answering)",
                show(io_timeout)
            );
            retry.health().failed(FailureKind::Timeout, &message);
            Err(Error::storage(message).with_hint(
                "the storage took the connection but sent nothing for io_timeout, twice: \
                 check the service, the network path and any proxy between",
            ))
        }
    }
}

struct Resuming {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// The failure that ended the download, said again on every later read:
    /// after it the channel is closed, which must not read as the object's end
    /// (a reader that goes on, to hash what is left, would take a cut-off
    /// object for a corrupt one).
    failed: Option<(crate::error::Kind, String, Option<String>)>,
}

impl Resuming {
    fn failure(&self) -> Option<io::Error> {
        let (kind, message, hint) = self.failed.as_ref()?;
        let mut error = Error::new(*kind, message.clone());
        if let Some(hint) = hint {
            error = error.with_hint(hint.clone());
        }
        Some(io::Error::other(error))
    }
}

impl AsyncRead for Resuming {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            if let Some(failure) = self.failure() {
                return Poll::Ready(Err(failure));
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())), // end of object
                Poll::Ready(Some(Err(e))) => {
                    let kept = match e.get_ref().and_then(|inner| inner.downcast_ref::<Error>()) {
                        Some(ours) => (
                            ours.kind(),
                            ours.message().to_owned(),
                            ours.hint().map(str::to_owned),
                        ),
                        None => (crate::error::Kind::Storage, e.to_string(), None),
                    };
                    self.failed = Some(kept);
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
            }
        }
        let n = self.current.len().min(out.remaining());
        let chunk = self.current.split_to(n);
        out.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Serves `data`, but every body it hands out breaks after `break_after` bytes.
    struct Flaky {
        data: Vec<u8>,
        break_after: usize,
        opens: Mutex<Vec<u64>>,
    }

    #[async_trait]
    impl OpenAt for Flaky {
        async fn open_at(&self, offset: u64) -> Result<ObjectReader> {
            self.opens.lock().unwrap().push(offset);
            let start = offset as usize;
            let end = (start + self.break_after).min(self.data.len());
            let body = std::io::Cursor::new(self.data[start..end].to_vec());
            let broken = end < self.data.len();
            let tail: ObjectReader = if broken {
                Box::pin(FailingRead)
            } else {
                Box::pin(tokio::io::empty())
            };
            Ok(Box::pin(body.chain(tail)))
        }
    }

    struct FailingRead;
    impl AsyncRead for FailingRead {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionReset)))
        }
    }

    fn retry() -> Retrier {
        Retrier::new(
            "resume-test",
            crate::model::Retry {
                attempts: 3,
                first_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(2),
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn a_broken_body_is_resumed_from_its_offset() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let source = Arc::new(Flaky {
            data: data.clone(),
            break_after: 100_000,
            opens: Mutex::default(),
        });
        let mut reader = open(source.clone(), retry(), "obj".into()).await.unwrap();
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "bytes differ after resuming");
        assert_eq!(*source.opens.lock().unwrap(), vec![0, 100_000, 200_000]);
    }

    /// Serves a body that stops after `stall_after` bytes and never ends,
    /// and, once asked again, answers nothing at all: a frozen server.
    struct Freezes {
        stall_after: usize,
        opens: Mutex<u32>,
    }

    #[async_trait]
    impl OpenAt for Freezes {
        async fn open_at(&self, _: u64) -> Result<ObjectReader> {
            let first = {
                let mut opens = self.opens.lock().unwrap();
                *opens += 1;
                *opens == 1
            };
            if !first {
                std::future::pending::<()>().await;
            }
            let body = std::io::Cursor::new(vec![1u8; self.stall_after]);
            let (_keep_open, silent) = tokio::io::duplex(1);
            // The write half lives as long as the reader: a stream that is
            // open and silent, not one that ended.
            std::mem::forget(_keep_open);
            Ok(Box::pin(body.chain(silent)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_download_from_a_storage_that_stops_answering_fails_after_two_stalls() {
        let source = Arc::new(Freezes {
            stall_after: 1000,
            opens: Mutex::default(),
        });
        let retry = Retrier::new(
            "resume-test-frozen",
            crate::model::Retry {
                io_timeout: Duration::from_secs(60),
                ..Default::default()
            },
        );
        let started = tokio::time::Instant::now();
        let mut reader = open(source.clone(), retry, "storage s3: download x".into())
            .await
            .unwrap();
        let mut got = Vec::new();
        let err = reader.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(got.len(), 1000);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(120) && took < Duration::from_secs(125),
            "{took:?}"
        );
        assert!(err.to_string().contains("stopped answering"), "{err}");
        assert!(err.to_string().contains("at byte 1000"), "{err}");
        assert_eq!(*source.opens.lock().unwrap(), 2);
        // Read on, as a digest of the rest does: the failure again, never an end.
        let again = reader.read(&mut [0u8; 16]).await.unwrap_err();
        assert!(again.to_string().contains("stopped answering"), "{again}");
    }

    #[tokio::test]
    async fn a_body_that_never_progresses_fails_after_the_budget() {
        let source = Arc::new(Flaky {
            data: vec![7; 1000],
            break_after: 0,
            opens: Mutex::default(),
        });
        let mut reader = open(source, retry(), "obj".into()).await.unwrap();
        let err = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("without progress"), "{err}");
    }
}
