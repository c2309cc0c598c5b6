//! The engine under test: in-memory storages, in-process locks, a files job
//! (no server needed) and scripted work that fails, hangs or succeeds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::catalog::Selector;
use crate::jobs::files::Replace;
use crate::jobs::verify::Selection;
use crate::model::{BackupId, Job, SystemClock};
use crate::storage::{Key, MemoryStorage};

/// Hands out one in-memory storage per name, kept across opens.
#[derive(Default)]
struct Memory(Mutex<BTreeMap<String, MemoryStorage>>);

#[async_trait]
impl OpenStorage for Memory {
    async fn open(&self, spec: &StorageSpec) -> Result<Arc<dyn Storage>> {
        let mut stores = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let store = stores
            .entry(spec.name.clone())
            .or_insert_with(|| MemoryStorage::new(&spec.name));
        Ok(Arc::new(store.clone()))
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    engine: Engine,
    memory: Arc<Memory>,
    locks: InProcessLocks,
}

/// A files job `uploads` (kept: its newest backup) and a prune job for it,
/// plus `extra` TOML.
fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let source = dir.path().join("uploads");
    std::fs::create_dir(&source).expect("source dir");
    std::fs::write(source.join("a.txt"), "the first file").expect("a file");
    std::fs::write(source.join("b.txt"), "the second file").expect("a file");
    let path = dir.path().join("backup.toml");
    std::fs::write(
        &path,
        format!(
            "timezone = \"UTC\"\n\
             [storages.disk]\ntype = \"local\"\npath = \"{unused}\"\n\
             [jobs.uploads]\ntype = \"files\"\npath = \"{source}\"\nstorages = [\"disk\"]\n\
             retention = {{ keep_last = 1 }}\n\
             [jobs.uploads-prune]\ntype = \"prune\"\nbackup_job = \"uploads\"\n{extra}",
            unused = dir.path().join("unused").display(),
            source = source.display(),
        ),
    )
    .expect("job file");
    let config = crate::config::load(Some(&path)).expect("a good job file");
    let memory = Arc::new(Memory::default());
    let locks = InProcessLocks::default();
    let engine = Engine::new(
        config,
        Arc::new(SystemClock),
        Arc::new(crate::report::Hidden),
    )
    .with_storages(memory.clone())
    .with_locks(Arc::new(locks.clone()));
    Fixture {
        dir,
        engine,
        memory,
        locks,
    }
}

impl Fixture {
    fn disk(&self) -> MemoryStorage {
        let stores = self.memory.0.lock().unwrap_or_else(|p| p.into_inner());
        stores
            .get("disk")
            .cloned()
            .expect("storage disk was opened")
    }

    /// Every run record under `dir`'s `reports/`, oldest first.
    async fn records(&self, dir: &str) -> Vec<RunRecord> {
        let disk = self.disk();
        let mut out = Vec::new();
        for key in report::record_keys(&disk, dir).await.expect("listing") {
            let record = report::read_record(&disk, &key).await.expect("read");
            out.push(record.expect("listed"));
        }
        out.sort_by_key(|r| r.started_at);
        out
    }

    fn job(&self) -> &Job {
        self.engine.config.job("uploads").expect("job uploads")
    }
}

/// Work that fails as scripted, sleeps if told, and counts its executions.
struct Scripted<'a> {
    job: &'a Job,
    failures: Mutex<Vec<Error>>,
    sleep: Option<Duration>,
    retries: u32,
    timeout: Option<Duration>,
    locks: bool,
    executions: AtomicU32,
}

impl<'a> Scripted<'a> {
    fn new(job: &'a Job) -> Self {
        Scripted {
            job,
            failures: Mutex::default(),
            sleep: None,
            retries: 0,
            timeout: None,
            locks: false,
            executions: AtomicU32::new(0),
        }
    }

    /// Fails with `failures`, in order, before it succeeds.
    fn failing(self, failures: Vec<Error>) -> Self {
        let mut reversed = failures;
        reversed.reverse();
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()) = reversed;
        self
    }
}

#[async_trait]
impl Work for Scripted<'_> {
    type Plan = ();
    type Made = ();

    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn job(&self) -> &Job {
        self.job
    }
    fn locking(&self) -> Option<DatabaseUse> {
        self.locks.then_some(DatabaseUse::Shared)
    }
    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
    fn retries(&self) -> (u32, Duration) {
        (self.retries, Duration::from_millis(1))
    }
    fn stop(&self) -> Stop<'_> {
        Stop::Prune
    }
    async fn plan(&self, _: &Run<'_>) -> Result<()> {
        Ok(())
    }
    async fn execute(&self, _: &(), _: &Run<'_>) -> Result<()> {
        self.executions.fetch_add(1, Ordering::SeqCst);
        let failure = self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        if let Some(e) = failure {
            return Err(e);
        }
        if let Some(sleep) = self.sleep {
            tokio::time::sleep(sleep).await;
        }
        Ok(())
    }
    fn failure(&self, _: &()) -> Option<String> {
        None
    }
    fn details(&self, _: Option<&()>, _: Option<&()>) -> serde_json::Value {
        serde_json::json!({})
    }
}

fn done<M>(end: RunEnd<M>) -> Finished<M> {
    match end {
        RunEnd::Done(done) => *done,
        RunEnd::Elsewhere(why) => panic!("not run: {why}"),
    }
}

fn manual() -> RunRequest {
    RunRequest::manual(&CancellationToken::new())
}

#[tokio::test]
async fn temporary_failures_are_retried_and_the_record_counts_the_attempts() {
    let f = fixture("");
    let mut work = Scripted::new(f.job()).failing(vec![
        Error::storage("the network blinked").temporary(),
        Error::database("the server restarted").temporary(),
    ]);
    work.retries = 2;
    let end = done(f.engine.run_work(&work, None, manual()).await.expect("ran"));
    assert!(end.result.is_ok(), "{:?}", end.result);
    assert_eq!(work.executions.load(Ordering::SeqCst), 3);
    let records = f.records("uploads").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].attempts, 3);
    assert_eq!(records[0].outcome, Outcome::Succeeded);
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried_however_many_retries_are_allowed() {
    let f = fixture("");
    for permanent in [
        Error::config("[jobs.uploads] is wrong"),
        Error::integrity("digest mismatch"),
        Error::database("database missing does not exist"),
    ] {
        let mut work = Scripted::new(f.job()).failing(vec![permanent]);
        work.retries = 5;
        let end = done(f.engine.run_work(&work, None, manual()).await.expect("ran"));
        assert!(end.result.is_err());
        assert_eq!(work.executions.load(Ordering::SeqCst), 1);
        assert_eq!(end.record.attempts, 1);
        assert_eq!(end.record.outcome, Outcome::Failed);
    }
    // Temporary failures past the retries end the run too.
    let mut work = Scripted::new(f.job()).failing(vec![
        Error::storage("blink").temporary(),
        Error::storage("blink").temporary(),
    ]);
    work.retries = 1;
    let end = done(f.engine.run_work(&work, None, manual()).await.expect("ran"));
    assert!(end.result.is_err());
    assert_eq!(end.record.attempts, 2);
}

#[tokio::test]
async fn a_storage_outage_that_outlasted_its_own_retries_is_tried_again_by_the_run() {
    let f = fixture("");
    let mut work = Scripted::new(f.job()).failing(vec![
        Error::storage("s3: nothing moved for 1m in each of 2 attempts in a row").outage(),
    ]);
    work.retries = 1;
    let end = done(f.engine.run_work(&work, None, manual()).await.expect("ran"));
    assert!(end.result.is_ok(), "{:?}", end.result);
    assert_eq!(end.record.attempts, 2);
}

#[tokio::test]
async fn work_stopped_before_it_began_is_recorded_as_interrupted_and_not_run() {
    let f = fixture("");
    let work = Scripted::new(f.job());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let end = done(
        f.engine
            .run_work(&work, None, RunRequest::manual(&cancel))
            .await
            .expect("asked"),
    );
    assert_eq!(end.record.outcome, Outcome::Interrupted);
    assert_eq!(work.executions.load(Ordering::SeqCst), 0);
    let e = f.engine.plan(&work, &cancel).await.expect_err("stopped");
    assert_eq!(e.kind(), Kind::Interrupted);
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_is_cancelled_and_recorded_as_timed_out() {
    let f = fixture("");
    let mut work = Scripted::new(f.job());
    work.sleep = Some(Duration::from_secs(3600));
    work.timeout = Some(Duration::from_secs(60));
    let end = done(f.engine.run_work(&work, None, manual()).await.expect("ran"));
    let e = end.result.expect_err("timed out");
    assert_eq!(e.kind(), Kind::TimedOut);
    assert!(e.hint().unwrap_or("").contains("raise `timeout`"), "{e}");
    assert_eq!(end.record.outcome, Outcome::TimedOut);
    assert_eq!(f.records("uploads").await.len(), 1);
}

#[tokio::test]
async fn a_stopped_run_is_recorded_as_interrupted_with_what_it_left() {
    let f = fixture("");
    let mut work = Scripted::new(f.job());
    work.sleep = Some(Duration::from_secs(3600));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
    });
    let end = done(
        f.engine
            .run_work(&work, None, RunRequest::manual(&cancel))
            .await
            .expect("ran"),
    );
    assert_eq!(end.record.outcome, Outcome::Interrupted);
    let error = end.record.error.unwrap_or_default();
    assert!(
        error.contains("stopped by SIGTERM or SIGINT: prune was stopped"),
        "{error}"
    );
}

#[tokio::test]
async fn a_job_whose_lock_is_held_elsewhere_is_not_run_nor_recorded() {
    let f = fixture("");
    let _held = f.locks.hold("uploads").expect("free");
    match f.engine.run("uploads", manual()).await.expect("asked") {
        RunEnd::Elsewhere(why) => assert!(why.contains("another process"), "{why}"),
        RunEnd::Done(done) => panic!("ran: {:?}", done.record),
    }
    let e = f
        .engine
        .run_now("uploads", manual())
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), Kind::Refused);
    assert!(
        f.memory
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get("disk")
            .is_some()
    );
    assert!(f.records("uploads").await.is_empty());
}

#[tokio::test]
async fn a_replica_that_finds_the_fire_time_already_run_does_not_run_it_again() {
    let f = fixture("");
    let at: jiff::Timestamp = "2026-12-05T03:00:00Z".parse().expect("a time");
    let scheduled = || RunRequest {
        trigger: Trigger::Schedule,
        scheduled_for: Some(at),
        ..manual()
    };
    let first = done(f.engine.run("uploads", scheduled()).await.expect("ran"));
    assert_eq!(first.record.outcome, Outcome::Succeeded);
    match f.engine.run("uploads", scheduled()).await.expect("asked") {
        RunEnd::Elsewhere(why) => assert!(why.contains("already run"), "{why}"),
        RunEnd::Done(done) => panic!("ran twice: {:?}", done.record),
    }
    let backups = f
        .records("uploads")
        .await
        .into_iter()
        .filter(|r| r.kind == "files")
        .count();
    assert_eq!(backups, 1);
}

#[tokio::test]
async fn a_fire_time_not_run_is_recorded_as_skipped() {
    let f = fixture("");
    let at: jiff::Timestamp = "2026-12-05T03:00:00Z".parse().expect("a time");
    f.engine
        .record_skipped("uploads", at, "the previous run was still going")
        .await;
    let records = f.records("uploads").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, Outcome::Skipped);
    assert!(
        records[0].run_id.ends_with("-skipped"),
        "{}",
        records[0].run_id
    );
    assert_eq!(records[0].scheduled_for, Some(at));
}

/// Kinds of the records under `dir`, in order.
async fn kinds(f: &Fixture, dir: &str) -> Vec<String> {
    f.records(dir).await.into_iter().map(|r| r.kind).collect()
}

#[tokio::test]
async fn every_acting_command_leaves_one_run_record() {
    let f = fixture("");
    let cancel = CancellationToken::new();
    let engine = &f.engine;
    // A run, and the prune its retention policy brings after it.
    let first = engine
        .run_now("uploads", manual())
        .await
        .expect("backed up");
    assert!(first.unrecorded.is_none());
    assert_eq!(kinds(&f, "uploads").await, ["files", "prune"]);

    let verify = Verify::new(&engine.config, "uploads", Selection::Latest, None).expect("a job");
    let checks = engine.act(&verify, None, &cancel).await.expect("verified");
    assert!(crate::jobs::verify::failure(&checks.value).is_none());

    let listed = engine.list(Some("uploads")).await.expect("listed");
    let id: BackupId = listed[0].1[0].manifest.id.clone();
    let pin = Pin::new(&engine.config, "uploads", id.clone(), Some("audit")).expect("a job");
    let pinned = engine.act(&pin, None, &cancel).await.expect("pinned");
    assert_eq!(pinned.value, ["disk"]);
    let unpin = Pin::new(&engine.config, "uploads", id.clone(), None).expect("a job");
    engine.act(&unpin, None, &cancel).await.expect("unpinned");

    let target = f.dir.path().join("restored");
    let restore = RestoreDir::new(
        &engine.config,
        "uploads",
        Selector::Latest,
        None,
        &target,
        Replace::default(),
    )
    .expect("a files job");
    engine.act(&restore, None, &cancel).await.expect("restored");
    assert_eq!(
        std::fs::read_to_string(target.join("b.txt")).expect("restored file"),
        "the second file"
    );

    let (job, spec) = engine.config.backup_job("uploads").expect("a job");
    let prune = Prune::new(job, spec).expect("a policy");
    engine.act(&prune, None, &cancel).await.expect("pruned");
    assert_eq!(
        kinds(&f, "uploads").await,
        [
            "files", "prune", "verify", "pin", "unpin", "restore", "prune"
        ]
    );

    // A prune job leaves one record, not one per storage plus its own.
    engine
        .run_now("uploads-prune", manual())
        .await
        .expect("pruned");
    assert_eq!(kinds(&f, "uploads-prune").await, ["prune"]);
    assert_eq!(kinds(&f, "uploads").await.len(), 7);
}

#[tokio::test]
async fn a_lost_lock_stops_the_attempt_and_the_retry_takes_it_again() {
    let f = fixture("");
    let mut work = Scripted::new(f.job());
    work.locks = true;
    work.retries = 1;
    work.sleep = Some(Duration::from_millis(300));
    let locks = f.locks.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        locks.lose("uploads");
    });
    let end = done(f.engine.run_work(&work, None, manual()).await.expect("ran"));
    assert!(end.result.is_ok(), "{:?}", end.result);
    assert_eq!(end.record.attempts, 2);
    assert_eq!(work.executions.load(Ordering::SeqCst), 2);
    // Given back at the end of the run.
    assert!(f.locks.hold("uploads").is_some());
}

/// A webhook receiver on 127.0.0.1: each request's body, as it arrives.
async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}/hook", listener.local_addr().expect("bound"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then as many body bytes as Content-Length says.
            let body = loop {
                let Ok(n) = socket.read(&mut buf).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body.to_owned());
                    }
                }
            };
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            if let Some(body) = body {
                let _ = tx.send(body);
            }
        }
    });
    (url, rx)
}

#[tokio::test]
async fn a_failed_manual_verify_notifies() {
    let (url, mut bodies) = webhook().await;
    let secret = tempfile::tempdir().expect("temp dir");
    let url_file = secret.path().join("hook-url");
    std::fs::write(&url_file, &url).expect("url file");
    std::fs::set_permissions(
        &url_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("mode");
    let f = fixture(&format!(
        "[notifications.ops]\ntype = \"webhook\"\nurl_file = \"{}\"\n",
        url_file.display()
    ));
    let cancel = CancellationToken::new();
    f.engine
        .run_now("uploads", manual())
        .await
        .expect("backed up");
    // Its success is not announced (no `on_success`): the first body is the
    // verify's. The stored tar is damaged: verify must find it, record it and say so.
    let disk = f.disk();
    let prefix = Key::new("uploads").expect("a key");
    let data = disk
        .list(&prefix)
        .await
        .expect("listed")
        .into_iter()
        .find(|o| o.key.file_name().starts_with("files.tar"))
        .expect("the files object");
    let mut bytes = disk.get(&data.key).expect("stored");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    disk.put(&data.key, bytes);
    let verify = Verify::new(&f.engine.config, "uploads", Selection::Latest, None).expect("a job");
    let checks = f.engine.act(&verify, None, &cancel).await.expect("ran");
    assert!(crate::jobs::verify::failure(&checks.value).is_some());
    let body = tokio::time::timeout(Duration::from_secs(20), bodies.recv())
        .await
        .expect("a notification in time")
        .expect("a body");
    assert!(body.contains("verify"), "{body}");
    assert!(body.contains("failed"), "{body}");
    let records = f.records("uploads").await;
    let verify = records
        .iter()
        .find(|r| r.kind == "verify")
        .expect("a record");
    assert_eq!(verify.outcome, Outcome::Failed);
}
