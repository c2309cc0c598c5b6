//! The multipart writer against a fake service that fails parts, temporarily
//! and for good, with paused time so retry delays cost nothing.

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
