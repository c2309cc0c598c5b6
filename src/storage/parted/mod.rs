//! What S3 and Azure share: the multipart writer, and the paged listing.
//!
//! Both store a large object the same way: parts sent one by one (S3
//! UploadPart, Azure Put Block), then one request that makes them the object
//! (CompleteMultipartUpload, Put Block List). A service implements the single
//! attempts of [`Multipart`]; [`PartedWriter`] does the rest, once for both:
//! - it fills one part at a time and sends it while filling the next, with at
//!   most `in_flight` parts being sent, so memory stays at part size × (in
//!   flight + 1); parts grow ([`part_size`]) so a stream of unknown length
//!   never runs out of them;
//! - an object smaller than one part goes in a single request;
//! - every request goes through the storage's [`Retrier`]: a part is retried
//!   from its buffer and timed on the progress of its body ([`Moved`]), so a
//!   slow link is never cut and a dead one is seen within `io_timeout`;
//! - the object is completed in `finish`, and the upload aborted on any
//!   failure, on `abort` and on drop: an unfinished backup leaves no object,
//!   and no parts stored, and billed, forever.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinSet;

use super::retry::{Moved, Retrier};
use super::{ObjectWriter, PartBuffers, part_size};
use crate::error::{Error, Result};

/// The requests of one service's multipart uploads, each a single attempt:
/// [`PartedWriter`] retries them. `what` names the request in the messages of
/// the errors they return ("storage s3: upload nightly/…/data.dump.zst (part 3)").
#[async_trait]
pub(crate) trait Multipart: Send + Sync + 'static {
    /// What names a started upload (S3's upload id); `()` where there is none.
    type Upload: Clone + Send + Sync + 'static;
    /// What the completing request lists for a part sent (S3's part number and
    /// ETag, Azure's block id).
    type Part: Send + Sync + 'static;

    /// Stores `body` as the whole object, in one request.
    async fn put_once(&self, what: &str, key: &str, body: Bytes, moved: Moved) -> Result<()>;
    /// Starts an upload to `key`.
    async fn begin(&self, what: &str, key: &str) -> Result<Self::Upload>;
    /// Sends part `number` (from 1).
    async fn upload_part(
        &self,
        what: &str,
        key: &str,
        upload: &Self::Upload,
        number: u32,
        body: Bytes,
        moved: Moved,
    ) -> Result<Self::Part>;
    /// Makes `parts`, in order, the object.
    async fn complete(
        &self,
        what: &str,
        key: &str,
        upload: &Self::Upload,
        parts: &[Self::Part],
    ) -> Result<()>;
    /// Drops the upload and every part sent.
    async fn abort(&self, what: &str, key: &str, upload: &Self::Upload) -> Result<()>;

    /// Whether `error` says the upload is no longer there: aborted, or
    /// completed by an attempt whose answer was lost.
    fn upload_gone(&self, error: &Error) -> bool {
        let _ = error;
        false
    }

    /// The size of the object now stored under `key`, if it can be told.
    async fn stored_size(&self, key: &str) -> Option<u64> {
        let _ = key;
        None
    }
}

/// How a service's uploads are cut, bounded and named.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The storage's name, for messages.
    pub storage: String,
    pub retry: Retrier,
    /// The size of the first parts, and of the largest object sent in one request.
    pub part_size: u64,
    /// Parts sent at one size before the size doubles.
    pub parts_per_step: u32,
    pub max_part_size: u64,
    pub max_parts: u32,
    /// Parts being sent at once.
    pub in_flight: usize,
    /// How long the completion's first attempt may go without an answer.
    pub complete_patience: Duration,
    pub staging: Staging,
    pub words: Words,
}

/// Where parts wait until the object is complete.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Staging {
    /// In an upload that requests start and abort, and that the service keeps,
    /// and bills, until one or the other (S3).
    Upload {
        /// The request that starts it: "start upload of".
        begin: &'static str,
        /// The request that drops it: "abort upload of".
        abort: &'static str,
        /// What removes an upload nothing was left to abort.
        left_over: &'static str,
    },
    /// Under the key, invisible until completed, and discarded by the service
    /// on its own (Azure's uncommitted blocks, after a week): `begin` and
    /// `abort` make no request, so they are not retried, nor taken as an
    /// answer from the storage, and a writer dropped unfinished has nothing to
    /// clean up.
    Uncommitted,
}

/// The service's words, for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words {
    /// One piece of the object: "part", "block".
    pub part: &'static str,
    /// The setting that sizes it: "part_size", "block_size".
    pub part_setting: &'static str,
    /// The request that makes the object: "complete upload of", "commit".
    pub complete: &'static str,
}

/// The writer of one object through a [`Multipart`] service.
pub(crate) struct PartedWriter<S: Multipart> {
    service: Arc<S>,
    plan: Plan,
    key: String,
    buf: PartBuffers,
    /// The upload, once more than one part's worth was written.
    upload: Option<S::Upload>,
    /// Parts sent, by number, in the order their sending ended.
    parts: Vec<(u32, S::Part)>,
    /// Part uploads under way; each gives back its buffer when done.
    in_flight: JoinSet<Result<(u32, S::Part, Bytes)>>,
    next_part: u32,
    size: u64,
}

impl<S: Multipart> PartedWriter<S> {
    pub(crate) fn new(service: Arc<S>, plan: Plan, key: &str) -> PartedWriter<S> {
        PartedWriter {
            service,
            plan,
            key: key.to_owned(),
            buf: PartBuffers::default(),
            upload: None,
            parts: Vec::new(),
            in_flight: JoinSet::new(),
            next_part: 1,
            size: 0,
        }
    }

    fn what(&self, action: &str) -> String {
        format!("storage {}: {action} {}", self.plan.storage, self.key)
    }

    fn current_part_size(&self) -> usize {
        part_size(
            self.plan.part_size,
            self.next_part - 1,
            self.plan.parts_per_step,
            self.plan.max_part_size,
        ) as usize
    }

    async fn begin(&self) -> Result<S::Upload> {
        match self.plan.staging {
            Staging::Upload { begin, .. } => {
                let what = self.what(begin);
                self.plan
                    .retry
                    .run(&what, || self.service.begin(&what, &self.key))
                    .await
            }
            Staging::Uncommitted => self.service.begin(&self.what("upload"), &self.key).await,
        }
    }

    /// Sends the buffered part, waiting first if the in-flight limit is reached.
    async fn send_part(&mut self) -> Result<()> {
        let Words {
            part, part_setting, ..
        } = self.plan.words;
        if self.next_part > self.plan.max_parts {
            return Err(Error::storage(format!(
                "{}: the object needs more than {} {part}s",
                self.what("upload"),
                self.plan.max_parts
            ))
            .with_hint(format!("raise {part_setting} in the storage's settings")));
        }
        let upload = match &self.upload {
            Some(upload) => upload.clone(),
            None => {
                let upload = self.begin().await?;
                self.upload = Some(upload.clone());
                upload
            }
        };
        while self.in_flight.len() >= self.plan.in_flight {
            self.collect_one().await?;
        }
        let number = self.next_part;
        self.next_part += 1;
        let body = self.buf.take();
        let what = format!("{} ({part} {number})", self.what("upload"));
        let (service, retry, key) = (
            self.service.clone(),
            self.plan.retry.clone(),
            self.key.clone(),
        );
        self.in_flight.spawn(async move {
            let sent = retry
                .run_moving(&what, |moved| {
                    service.upload_part(&what, &key, &upload, number, body.clone(), moved)
                })
                .await?;
            Ok((number, sent, body))
        });
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<()> {
        match self.in_flight.join_next().await {
            Some(Ok(Ok((number, part, body)))) => {
                self.parts.push((number, part));
                self.buf.recycle(body);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(e),
            Some(Err(join)) => Err(Error::internal(format!(
                "{}: a {} upload stopped: {join}",
                self.what("upload"),
                self.plan.words.part
            ))),
            None => Ok(()),
        }
    }

    async fn complete(&mut self) -> Result<u64> {
        let Some(upload) = self.upload.clone() else {
            let body = self.buf.take();
            let what = self.what("upload");
            self.plan
                .retry
                .run_moving(&what, |moved| {
                    self.service.put_once(&what, &self.key, body.clone(), moved)
                })
                .await?;
            return Ok(self.size);
        };
        if !self.buf.is_empty() {
            self.send_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|(number, _)| *number);
        let parts: Vec<S::Part> = parts.into_iter().map(|(_, part)| part).collect();
        let what = self.what(self.plan.words.complete);
        let gone = |e: &Error| self.service.upload_gone(e);
        let mut attempts = 0;
        let result = self
            .plan
            .retry
            .run_patient(&what, self.plan.complete_patience, &gone, || {
                attempts += 1;
                self.service.complete(&what, &self.key, &upload, &parts)
            })
            .await;
        match result {
            // A retry after a completion whose answer was lost finds the upload
            // gone: the object is there if it has the size we wrote.
            Err(e) if attempts > 1 && gone(&e) => {
                let found = tokio::time::timeout(
                    self.plan.retry.io_timeout(),
                    self.service.stored_size(&self.key),
                )
                .await;
                if found.ok().flatten() != Some(self.size) {
                    return Err(e);
                }
            }
            other => other?,
        }
        self.upload = None;
        Ok(self.size)
    }

    /// Stops the parts being sent, then drops the upload.
    async fn discard(&mut self) -> Result<()> {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        let Some(upload) = self.upload.take() else {
            return Ok(());
        };
        match self.plan.staging {
            Staging::Upload { abort, .. } => {
                let what = self.what(abort);
                abort_upload(&*self.service, &self.plan.retry, &what, &self.key, &upload).await
            }
            Staging::Uncommitted => {
                let what = self.what("upload");
                self.service.abort(&what, &self.key, &upload).await
            }
        }
    }
}

/// Aborts an upload, taking one already gone (aborted, or completed
/// elsewhere) as done: nothing is left either way.
async fn abort_upload<S: Multipart>(
    service: &S,
    retry: &Retrier,
    what: &str,
    key: &str,
    upload: &S::Upload,
) -> Result<()> {
    let gone = |e: &Error| service.upload_gone(e);
    let result = retry
        .run_expecting(what, &gone, || service.abort(what, key, upload))
        .await;
    match result {
        Err(e) if gone(&e) => Ok(()),
        other => other,
    }
}

#[async_trait]
impl<S: Multipart> ObjectWriter for PartedWriter<S> {
    async fn write(&mut self, mut chunk: &[u8]) -> Result<()> {
        self.size += chunk.len() as u64;
        while !chunk.is_empty() {
            let part = self.current_part_size();
            // A full part is sent only once more bytes arrive: the last part
            // may be short, but only the last, and an object of exactly one
            // part goes in a single request.
            if self.buf.len() >= part {
                self.send_part().await?;
                continue;
            }
            let taken = self.buf.fill(chunk, part);
            chunk = &chunk[taken..];
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        match self.complete().await {
            Ok(size) => Ok(size),
            Err(e) => {
                if let Err(abort) = self.discard().await {
                    tracing::warn!(error = %abort, "could not abort a failed upload");
                }
                Err(e)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.discard().await
    }
}

impl<S: Multipart> Drop for PartedWriter<S> {
    fn drop(&mut self) {
        // Dropped unfinished (a cancelled task, a panic): abort in the
        // background so the parts are not kept, and billed, forever.
        let Staging::Upload {
            abort, left_over, ..
        } = self.plan.staging
        else {
            return;
        };
        let Some(upload) = self.upload.take() else {
            return;
        };
        self.in_flight.abort_all();
        let what = self.what(abort);
        let (service, retry, key, task_what) = (
            self.service.clone(),
            self.plan.retry.clone(),
            self.key.clone(),
            what.clone(),
        );
        let started = super::spawn_cleanup(async move {
            if let Err(e) = abort_upload(&*service, &retry, &task_what, &key, &upload).await {
                tracing::warn!(error = %e, "could not abort an abandoned upload");
            }
        });
        if !started {
            tracing::warn!("{what}: no runtime left to abort it; {left_over}");
        }
    }
}

/// Every item of a paged listing: one request per page, each retried on its
/// own from the token that asks for it, so a failed page costs one page.
/// `page` fetches the page a token names (the first for `None`) and returns
/// its items and the next page's token, `None` after the last.
pub(crate) async fn list_pages<T, Token, F, Fut>(
    retry: &Retrier,
    what: &str,
    mut page: F,
) -> Result<Vec<T>>
where
    Token: Clone,
    F: FnMut(Option<Token>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<Token>)>>,
{
    let mut items = Vec::new();
    let mut token = None;
    loop {
        let (found, next) = retry.run(what, || page(token.clone())).await?;
        items.extend(found);
        match next {
            Some(next) => token = Some(next),
            None => return Ok(items),
        }
    }
}

#[cfg(test)]
mod tests;
