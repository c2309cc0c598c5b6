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
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::model::Retry;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    const PART: u64 = 1024;

    /// An in-memory multipart service that fails parts on purpose.
    #[derive(Default)]
    struct Fake {
        state: Mutex<State>,
        /// Parts whose first attempt fails with a temporary error.
        flaky: Option<fn(u32) -> bool>,
        /// A part that fails every attempt with a permanent error.
        refused: Option<u32>,
        /// The first completion succeeds, but its answer is lost.
        lose_completion_answer: bool,
    }

    #[derive(Default)]
    struct State {
        objects: BTreeMap<String, Vec<u8>>,
        /// Open uploads: their parts by number.
        uploads: BTreeMap<u64, BTreeMap<u32, Bytes>>,
        next_upload: u64,
        /// Attempts per part number.
        tries: BTreeMap<u32, u32>,
        puts: u32,
        begins: u32,
        aborts: u32,
        completions: u32,
        sending: usize,
        most_sending: usize,
    }

    impl Fake {
        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap()
        }
    }

    #[async_trait]
    impl Multipart for Fake {
        type Upload = u64;
        type Part = u32;

        async fn put_once(&self, _: &str, key: &str, body: Bytes, moved: Moved) -> Result<()> {
            moved.tick();
            let mut state = self.state();
            state.puts += 1;
            state.objects.insert(key.to_owned(), body.to_vec());
            Ok(())
        }

        async fn begin(&self, _: &str, _: &str) -> Result<u64> {
            let mut state = self.state();
            state.begins += 1;
            state.next_upload += 1;
            let id = state.next_upload;
            state.uploads.insert(id, BTreeMap::new());
            Ok(id)
        }

        async fn upload_part(
            &self,
            what: &str,
            _: &str,
            upload: &u64,
            number: u32,
            body: Bytes,
            moved: Moved,
        ) -> Result<u32> {
            let tries = {
                let mut state = self.state();
                state.sending += 1;
                state.most_sending = state.most_sending.max(state.sending);
                let tries = state.tries.entry(number).or_default();
                *tries += 1;
                *tries
            };
            // Parts take time, so several are in flight at once.
            tokio::time::sleep(Duration::from_millis(10)).await;
            moved.tick();
            let mut state = self.state();
            state.sending -= 1;
            if self.refused == Some(number) {
                return Err(Error::storage(format!("{what}: AccessDenied")));
            }
            if tries == 1 && self.flaky.is_some_and(|flaky| flaky(number)) {
                return Err(Error::storage(format!("{what}: SlowDown")).temporary());
            }
            let Some(parts) = state.uploads.get_mut(upload) else {
                return Err(Error::storage(format!("{what}: NoSuchUpload")));
            };
            parts.insert(number, body);
            Ok(number)
        }

        async fn complete(&self, what: &str, key: &str, upload: &u64, parts: &[u32]) -> Result<()> {
            let mut state = self.state();
            state.completions += 1;
            let Some(stored) = state.uploads.remove(upload) else {
                return Err(Error::storage(format!("{what}: NoSuchUpload")));
            };
            let listed: Vec<u32> = stored.keys().copied().collect();
            assert_eq!(parts, listed, "every part, in order");
            let object = stored.values().flat_map(|b| b.to_vec()).collect();
            state.objects.insert(key.to_owned(), object);
            if self.lose_completion_answer && state.completions == 1 {
                return Err(Error::storage(format!("{what}: connection reset")).temporary());
            }
            Ok(())
        }

        async fn abort(&self, what: &str, _: &str, upload: &u64) -> Result<()> {
            let mut state = self.state();
            state.aborts += 1;
            match state.uploads.remove(upload) {
                Some(_) => Ok(()),
                None => Err(Error::storage(format!("{what}: NoSuchUpload"))),
            }
        }

        fn upload_gone(&self, error: &Error) -> bool {
            error.message().contains("NoSuchUpload")
        }

        async fn stored_size(&self, key: &str) -> Option<u64> {
            self.state().objects.get(key).map(|o| o.len() as u64)
        }
    }

    /// A plan of 1 KiB parts that double every ten; the retrier's health is
    /// per storage name, process-wide, so each test has its own.
    fn plan(test: &str) -> Plan {
        Plan {
            storage: format!("parted-test-{test}"),
            retry: Retrier::new(
                &format!("parted-test-{test}"),
                Retry {
                    attempts: 4,
                    first_delay: Duration::from_millis(100),
                    max_delay: Duration::from_secs(1),
                    max_time: Duration::from_secs(60),
                    io_timeout: Duration::from_secs(60),
                },
            ),
            part_size: PART,
            parts_per_step: 10,
            max_part_size: 4 * PART,
            max_parts: 1_000,
            in_flight: 3,
            complete_patience: Duration::from_secs(300),
            staging: Staging::Upload {
                begin: "start upload of",
                abort: "abort upload of",
                left_over: "a lifecycle rule removes such uploads",
            },
            words: Words {
                part: "part",
                part_setting: "part_size",
                complete: "complete upload of",
            },
        }
    }

    fn start(fake: &Arc<Fake>, plan: Plan) -> PartedWriter<Fake> {
        PartedWriter::new(fake.clone(), plan, "job/backup/data.dump.zst")
    }

    /// Bytes that say where they are, so a part out of place shows.
    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    /// Writes `data` in chunks that straddle part boundaries.
    async fn write_all(writer: &mut PartedWriter<Fake>, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(333) {
            writer.write(chunk).await?;
        }
        Ok(())
    }

    fn one_in_ten(number: u32) -> bool {
        number.is_multiple_of(10)
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_part_failures_are_retried_and_the_object_has_every_byte_in_order() {
        let fake = Arc::new(Fake {
            flaky: Some(one_in_ten),
            ..Fake::default()
        });
        let bytes = data(50_000);
        let mut writer = Box::new(start(&fake, plan("temporary")));
        write_all(&mut writer, &bytes).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), 50_000);

        let state = fake.state();
        assert_eq!(state.objects["job/backup/data.dump.zst"], bytes);
        assert!(state.uploads.is_empty());
        assert_eq!((state.begins, state.puts, state.aborts), (1, 0, 0));
        // 10 parts of 1 KiB, 10 of 2 KiB, then 4 KiB ones: 25 in all.
        assert_eq!(state.tries.len(), 25);
        for (number, tries) in &state.tries {
            assert_eq!(*tries, if one_in_ten(*number) { 2 } else { 1 }, "{number}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_refused_for_good_fails_the_write_and_its_abort_leaves_nothing() {
        let fake = Arc::new(Fake {
            flaky: Some(one_in_ten),
            refused: Some(5),
            ..Fake::default()
        });
        let mut writer = Box::new(start(&fake, plan("permanent")));
        let err = write_all(&mut writer, &data(50_000)).await.unwrap_err();
        assert_eq!(
            err.message(),
            "storage parted-test-permanent: upload job/backup/data.dump.zst (part 5): AccessDenied"
        );
        assert!(!err.is_temporary());
        writer.abort().await.unwrap();

        let state = fake.state();
        assert_eq!(state.tries[&5], 1, "a refusal is not retried");
        assert!(state.objects.is_empty(), "nothing is visible");
        assert!(state.uploads.is_empty(), "no parts are kept");
        assert_eq!(state.aborts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_fails_at_finish_aborts_its_upload() {
        // 3 KiB is three parts, the third sent only by `finish`.
        let fake = Arc::new(Fake {
            refused: Some(3),
            ..Fake::default()
        });
        let mut writer = Box::new(start(&fake, plan("finish")));
        write_all(&mut writer, &data(3 * PART as usize))
            .await
            .unwrap();
        let err = writer.finish().await.unwrap_err();
        assert!(err.message().contains("(part 3): AccessDenied"), "{err}");

        let state = fake.state();
        assert!(state.objects.is_empty());
        assert!(state.uploads.is_empty());
        assert_eq!((state.aborts, state.completions), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_dropped_unfinished_aborts_its_upload() {
        let fake = Arc::new(Fake::default());
        let mut writer = start(&fake, plan("drop"));
        write_all(&mut writer, &data(5 * PART as usize))
            .await
            .unwrap();
        assert_eq!(fake.state().uploads.len(), 1);
        drop(writer);

        for _ in 0..1_000 {
            if fake.state().uploads.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state = fake.state();
        assert!(state.uploads.is_empty(), "the upload was aborted");
        assert_eq!(state.aborts, 1);
        assert!(state.objects.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_of_at_most_one_part_is_put_once() {
        for len in [0, 500, PART as usize] {
            let fake = Arc::new(Fake::default());
            let bytes = data(len);
            let mut writer = Box::new(start(&fake, plan("small")));
            write_all(&mut writer, &bytes).await.unwrap();
            assert_eq!(writer.finish().await.unwrap(), len as u64);

            let state = fake.state();
            assert_eq!(state.objects["job/backup/data.dump.zst"], bytes, "{len}");
            assert_eq!((state.puts, state.begins), (1, 0), "{len}");
            assert!(state.tries.is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_more_parts_are_sent_at_once_than_the_limit() {
        let fake = Arc::new(Fake::default());
        let mut writer = Box::new(start(&fake, plan("in-flight")));
        write_all(&mut writer, &data(20 * PART as usize))
            .await
            .unwrap();
        writer.finish().await.unwrap();
        assert_eq!(fake.state().most_sending, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_completion_whose_answer_was_lost_is_checked_by_the_object_size() {
        let fake = Arc::new(Fake {
            lose_completion_answer: true,
            ..Fake::default()
        });
        let bytes = data(5 * PART as usize);
        let mut writer = Box::new(start(&fake, plan("lost-answer")));
        write_all(&mut writer, &bytes).await.unwrap();
        assert_eq!(writer.finish().await.unwrap(), bytes.len() as u64);

        let state = fake.state();
        assert_eq!(state.completions, 2, "retried, and found the upload gone");
        assert_eq!(state.objects["job/backup/data.dump.zst"], bytes);
        assert_eq!(state.aborts, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_that_needs_more_parts_than_allowed_fails_with_a_hint() {
        let fake = Arc::new(Fake::default());
        let plan = Plan {
            max_parts: 3,
            ..plan("too-many")
        };
        let mut writer = Box::new(start(&fake, plan));
        let err = write_all(&mut writer, &data(4 * PART as usize + 1))
            .await
            .unwrap_err();
        assert_eq!(
            err.message(),
            "storage parted-test-too-many: upload job/backup/data.dump.zst: the object needs \
             more than 3 parts"
        );
        assert_eq!(
            err.hint(),
            Some("raise part_size in the storage's settings")
        );
        writer.abort().await.unwrap();
        assert!(fake.state().uploads.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn uncommitted_parts_are_left_to_the_service_when_a_writer_is_dropped() {
        let fake = Arc::new(Fake {
            refused: Some(2),
            ..Fake::default()
        });
        let uncommitted = |test| Plan {
            staging: Staging::Uncommitted,
            ..plan(test)
        };
        let mut writer = Box::new(start(&fake, uncommitted("uncommitted")));
        write_all(&mut writer, &data(3 * PART as usize))
            .await
            .unwrap();
        writer.finish().await.unwrap_err();
        {
            let state = fake.state();
            assert_eq!((state.begins, state.aborts), (1, 1));
        }

        let mut writer = start(&fake, uncommitted("uncommitted"));
        write_all(&mut writer, &data(PART as usize + 1))
            .await
            .unwrap();
        drop(writer);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let state = fake.state();
        assert_eq!((state.begins, state.aborts), (2, 1), "no clean-up to run");
        assert!(state.objects.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_fetches_every_page_and_retries_one_alone() {
        let retry = plan("list").retry;
        let fetched = Mutex::new(Vec::new());
        let items = list_pages(&retry, "storage x: list y", |token: Option<u32>| {
            let page = token.unwrap_or(0);
            let first_try = {
                let mut fetched = fetched.lock().unwrap();
                fetched.push(page);
                fetched.iter().filter(|p| **p == page).count() == 1
            };
            async move {
                if page == 2 && first_try {
                    return Err(Error::new(Kind::Storage, "503").temporary());
                }
                let next = (page < 3).then_some(page + 1);
                Ok(((page * 3..page * 3 + 3).collect::<Vec<_>>(), next))
            }
        })
        .await
        .unwrap();
        assert_eq!(items, (0..12).collect::<Vec<_>>());
        assert_eq!(*fetched.lock().unwrap(), [0, 1, 2, 2, 3]);
    }
}
