//! The one retry layer every remote backend sends its requests through.
//!
//! A request is one unit that can be repeated from what the caller still holds:
//! a part or block from its buffer, a page of a listing from its continuation
//! token, a GET from its byte offset. So a dropped connection costs one request,
//! never the backup.
//!
//! Only errors the backend marked [`Error::is_temporary`] are retried (5xx, 429,
//! throttling, timeouts, connection resets); a 403 or a 404 fails at once with
//! the backend's own message. Waits grow exponentially with full jitter (the AWS
//! architecture blog's "full jitter": a uniform draw below the capped exponential)
//! and stop at whichever comes first: the attempt count or the time budget,
//! counted from the first failure.
//!
//! Requests are timed on progress, not as a whole (pgBackRest's `io-timeout`):
//! a request whose body moves no byte, and that gets no answer, for
//! `io_timeout` is stalled; one that keeps moving is never cut, however large.
//! A stalled request is tried once more; when that one moves nothing either,
//! the storage is taken as not answering and the request fails, so a frozen
//! storage costs `2 × io_timeout`, not a whole retry budget. After that, for a
//! while ([`super::health`]), every request to the storage gets one short try:
//! the clean-ups of the failed run (abort, run record) are bounded too.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::health::{FailureKind, Health};
use crate::error::{Error, Kind, Result};
use crate::model::Retry;

/// The stall limit of the one try a request gets while its storage is down.
pub const DOWN_IO_TIMEOUT: Duration = Duration::from_secs(20);

/// When one request last moved a byte; bumped by the bodies that carry it.
#[derive(Debug, Clone)]
pub struct Moved(Arc<MovedInner>);

#[derive(Debug)]
struct MovedInner {
    last: AtomicU64,
    any: std::sync::atomic::AtomicBool,
}

/// The instant `Moved` counts from, shared so a value is one `u64`. Tokio's
/// clock, so tests can run a stall of minutes in no time.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

fn since_epoch() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl Moved {
    pub fn new() -> Moved {
        Moved(Arc::new(MovedInner {
            last: AtomicU64::new(since_epoch()),
            any: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Bytes went out or came in.
    pub fn tick(&self) {
        self.0.last.store(since_epoch(), Ordering::Relaxed);
        self.0.any.store(true, Ordering::Relaxed);
    }

    /// Whether anything moved since the request started.
    pub fn any(&self) -> bool {
        self.0.any.load(Ordering::Relaxed)
    }

    /// How long nothing has moved.
    pub fn idle(&self) -> Duration {
        Duration::from_millis(since_epoch().saturating_sub(self.0.last.load(Ordering::Relaxed)))
    }

    /// Returns once nothing has moved for `limit`.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            let idle = self.idle();
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

impl Default for Moved {
    fn default() -> Self {
        Moved::new()
    }
}

/// A storage's policy with its health: what its requests run through.
#[derive(Debug, Clone)]
pub struct Retrier {
    pub policy: Retry,
    health: Arc<Health>,
}

/// How one attempt ended when it did not succeed.
enum Failed {
    /// Nothing moved for the stall limit.
    Stalled(Error),
    Error(Error),
}

impl Retrier {
    pub fn new(storage: &str, policy: Retry) -> Retrier {
        Retrier {
            policy,
            health: super::health::of(storage),
        }
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The stall limit of requests now: short while the storage is down.
    pub fn io_timeout(&self) -> Duration {
        match self.health.down_for() {
            Some(_) => self.policy.io_timeout.min(DOWN_IO_TIMEOUT),
            None => self.policy.io_timeout,
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently, or the budget is
    /// spent. `what` names the request in messages ("storage s3: upload part 3
    /// of nightly/…/data.dump.zst"). The attempt has until its answer to
    /// move; one whose body takes long passes a [`Moved`] with
    /// [`Retrier::run_moving`].
    pub async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_moving(what, |_| attempt()).await
    }

    /// [`Retrier::run`] for a request that says when its bytes move.
    pub async fn run_moving<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T>
    where
        F: FnMut(Moved) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_within(what, self.policy.io_timeout, &|_| false, attempt)
            .await
    }

    /// [`Retrier::run`] for a request whose permanent errors `expected`
    /// accepts are answers the caller takes as they are (an abort that finds
    /// the upload gone): not counted as the storage's failures.
    pub async fn run_expecting<T, F, Fut>(
        &self,
        what: &str,
        expected: &(dyn Fn(&Error) -> bool + Sync),
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_within(what, self.policy.io_timeout, expected, |_| attempt())
            .await
    }

    /// [`Retrier::run_expecting`] for a request the service may take long to
    /// answer while it shows us nothing (S3 completes a large multipart upload
    /// in minutes, sending whitespace the SDK does not let us see): its first
    /// attempt's stall limit is at least `least`. A retry finds the work done
    /// or not begun, and gets the usual limit.
    pub async fn run_patient<T, F, Fut>(
        &self,
        what: &str,
        least: Duration,
        expected: &(dyn Fn(&Error) -> bool + Sync),
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.run_within(what, self.policy.io_timeout.max(least), expected, |_| {
            attempt()
        })
        .await
    }

    /// The loop: `first_limit` is the first attempt's stall limit.
    async fn run_within<T, F, Fut>(
        &self,
        what: &str,
        first_limit: Duration,
        expected: &(dyn Fn(&Error) -> bool + Sync),
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Moved) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let down = self.health.down_for();
        let attempts = match down {
            // Just failed: one short try, so the clean-ups of a run that met a
            // dead storage end in seconds.
            Some(_) => 1,
            None => self.policy.attempts.max(1),
        };
        let limit = |tries: u32| {
            let limit = if tries == 1 {
                first_limit
            } else {
                self.policy.io_timeout
            };
            match down {
                Some(_) => limit.min(DOWN_IO_TIMEOUT),
                None => limit,
            }
        };
        let mut first_failure: Option<Instant> = None;
        let mut stalls_in_a_row = 0u32;
        // When the streak of stalls began to move nothing.
        let mut quiet_since = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let io_timeout = limit(tries);
            let moved = Moved::new();
            let outcome = tokio::select! {
                result = attempt(moved.clone()) => match result {
                    Ok(value) => Ok(value),
                    Err(e) => Err(Failed::Error(e)),
                },
                () = moved.stalled(io_timeout) => Err(Failed::Stalled(
                    Error::storage(format!("{what}: nothing moved for {}", show(io_timeout)))
                        .temporary(),
                )),
            };
            let (error, stalled) = match outcome {
                Ok(value) => {
                    self.health.answered();
                    return Ok(value);
                }
                Err(Failed::Stalled(e)) => (e, true),
                Err(Failed::Error(e)) => (e, false),
            };
            let failed_at = Instant::now();
            let first = *first_failure.get_or_insert(failed_at);
            if !error.is_temporary() {
                // An answer, if not the one wanted: the storage is up.
                self.health.answered();
                if matches!(error.kind(), Kind::Storage) && !expected(&error) {
                    self.health.failed(FailureKind::Error, error.message());
                }
                return Err(error);
            }
            // A stall is retried once; a retry that stalls too means the
            // storage stopped answering, whatever budget is left. (A frozen
            // server's kernel still takes a new connection's first bytes, so
            // "moved nothing at all" is no test.)
            stalls_in_a_row = if stalled { stalls_in_a_row + 1 } else { 0 };
            if stalls_in_a_row == 1 {
                quiet_since = failed_at - io_timeout;
            }
            if stalls_in_a_row >= 2 {
                let quiet = failed_at - quiet_since;
                // The two had one limit, unless the first was a patient one.
                let each = (limit(tries - 1) == io_timeout).then_some(io_timeout);
                return Err(self.stopped_answering(what, each, stalls_in_a_row, quiet));
            }
            let delay = self.policy.delay(tries);
            let out_of_time = first.elapsed() + delay >= self.policy.max_time;
            if tries >= attempts || out_of_time {
                let error = match down {
                    Some(ago) if stalled => self.still_down(what, io_timeout, ago),
                    _ => gave_up(error, tries, first.elapsed()),
                };
                let kind = if stalled {
                    FailureKind::Timeout
                } else {
                    FailureKind::Unavailable
                };
                self.health.failed(kind, error.message());
                return Err(error);
            }
            tracing::warn!(
                request = what,
                attempt = tries,
                error = %error,
                wait_ms = delay.as_millis() as u64,
                "temporary storage error, retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// A request that stalled in two attempts in a row.
    fn stopped_answering(
        &self,
        what: &str,
        each: Option<Duration>,
        stalls: u32,
        quiet: Duration,
    ) -> Error {
        let each = each.map_or(" in".to_owned(), |d| format!(" for {} in each of", show(d)));
        let message = format!(
            "{what}: nothing moved{each} {stalls} attempts in a row, {} in all \
             (the storage stopped answering)",
            show(quiet),
        );
        self.health.failed(FailureKind::Timeout, &message);
        Error::storage(message).outage().with_hint(format!(
            "no byte went to or came from the storage for io_timeout ({}), twice (no \
             connection, or one that took nothing and gave nothing back): check the \
             service, the network path and any proxy between; raise io_timeout in the \
             storage's settings only for a link that is slow, not dead",
            show(self.policy.io_timeout)
        ))
    }

    /// The one short try of a storage that had just stopped answering.
    fn still_down(&self, what: &str, io_timeout: Duration, ago: Duration) -> Error {
        Error::storage(format!(
            "{what}: nothing moved for {}; the storage stopped answering {} ago",
            show(io_timeout),
            show(ago)
        ))
        .outage()
        .with_hint(
            "the storage does not answer: check the service and the network path to it; \
             what is left there is cleaned up by a later run or prune",
        )
    }
}

impl Retry {
    /// The wait after the `failures`-th failure: uniform in [0, min(max, first × 2^(n-1))].
    fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let cap = self
            .first_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        cap.mul_f64(fastrand::f64())
    }
}

fn gave_up(error: Error, tries: u32, elapsed: Duration) -> Error {
    let hint = error.hint().map(str::to_owned).unwrap_or_else(|| {
        "the storage kept failing with temporary errors: check the network path and the \
         service's status, or raise retry_attempts / retry_max_time in the storage's settings"
            .to_owned()
    });
    let attempts = if tries == 1 { "attempt" } else { "attempts" };
    let message = format!(
        "{} (gave up after {tries} {attempts} in {})",
        error.message(),
        show(elapsed)
    );
    Error::new(error.kind(), message).with_hint(hint).outage()
}

pub(crate) fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        crate::time::show_duration(jiff::SignedDuration::from_secs(d.as_secs() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn quick() -> Retry {
        Retry {
            attempts: 4,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_time: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
        }
    }

    /// A retrier of its own: health is kept per storage name, process-wide.
    fn retrier(test: &str, policy: Retry) -> Retrier {
        Retrier::new(&format!("retry-test-{test}"), policy)
    }

    #[tokio::test]
    async fn temporary_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let value = retrier("temporary", quick())
            .run("put", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Error::storage("503 slow down").temporary())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(value, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_fail_at_once() {
        let calls = AtomicU32::new(0);
        let retrier = retrier("permanent", quick());
        let err = retrier
            .run("put", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::storage("403 access denied").with_hint("check the key"))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.message(), "403 access denied");
        assert_eq!(err.hint(), Some("check the key"));
        assert!(
            retrier.health().down_for().is_none(),
            "a refusal is an answer"
        );
    }

    #[tokio::test]
    async fn the_attempt_count_bounds_the_retries() {
        let calls = AtomicU32::new(0);
        let err = retrier("count", quick())
            .run("put", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::storage("connection reset").temporary())
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(err.message().contains("gave up after 4 attempts"), "{err}");
        assert!(!err.is_temporary(), "a spent budget is final");
        assert!(err.hint().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_attempt_is_retried_and_a_moving_one_is_never_cut() {
        let calls = AtomicU32::new(0);
        let retrier = retrier(
            "stall-once",
            Retry {
                io_timeout: Duration::from_secs(60),
                ..quick()
            },
        );
        let value = retrier
            .run_moving("upload", |moved| {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        std::future::pending::<()>().await;
                    }
                    // Ten minutes in all, but never a minute without a byte.
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        moved.tick();
                    }
                    Ok("answered")
                }
            })
            .await
            .unwrap();
        assert_eq!(value, "answered");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_storage_that_stops_answering_fails_after_two_stalls_and_then_at_once() {
        let retrier = retrier(
            "frozen",
            Retry {
                attempts: 100,
                io_timeout: Duration::from_secs(60),
                max_time: Duration::from_secs(3600),
                ..quick()
            },
        );
        let started = tokio::time::Instant::now();
        let err = retrier
            .run_moving("storage s3: upload x (part 25)", |moved| async move {
                // Some bytes go out, then nothing ever again.
                moved.tick();
                std::future::pending::<Result<()>>().await
            })
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(120) && took < Duration::from_secs(125),
            "{took:?}"
        );
        assert!(
            err.message()
                .contains("nothing moved for 1m in each of 2 attempts in a row, 2m in all"),
            "{err}"
        );
        assert!(err.message().contains("part 25"), "{err}");
        assert!(err.hint().unwrap().contains("io_timeout"), "{err:?}");
        assert!(retrier.health().down_for().is_some());

        // What follows at once (an abort, the run record) gets one short try.
        let started = tokio::time::Instant::now();
        let err = retrier
            .run("storage s3: abort upload of x", || {
                std::future::pending::<Result<()>>()
            })
            .await
            .unwrap_err();
        assert_eq!(started.elapsed().as_secs(), DOWN_IO_TIMEOUT.as_secs());
        assert!(err.message().contains("stopped answering"), "{err}");

        let (_, counts, last) = crate::storage::health::snapshot()
            .into_iter()
            .find(|(name, ..)| name == "retry-test-frozen")
            .unwrap();
        assert_eq!(counts[0], (FailureKind::Timeout, 2));
        assert!(last.unwrap().message.contains("abort upload"));

        // It answers again: the full budget is back.
        retrier.run("list", || async { Ok(()) }).await.unwrap();
        assert!(retrier.health().down_for().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_budget_counts_from_the_first_failure() {
        let calls = AtomicU32::new(0);
        let retry = Retry {
            attempts: 1000,
            first_delay: Duration::from_secs(5),
            max_delay: Duration::from_secs(5),
            max_time: Duration::from_secs(60),
            io_timeout: Duration::from_secs(600),
        };
        let started = tokio::time::Instant::now();
        let err = retrier("budget", retry)
            .run("list", || {
                let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    if first {
                        // A slow first answer is not a failure, and costs no budget.
                        tokio::time::sleep(Duration::from_secs(300)).await;
                    }
                    Err::<(), _>(Error::storage("500 internal error").temporary())
                }
            })
            .await
            .unwrap_err();
        let after_first_failure = started.elapsed() - Duration::from_secs(300);
        assert!(
            after_first_failure <= Duration::from_secs(60),
            "{after_first_failure:?}"
        );
        assert!(
            calls.load(Ordering::SeqCst) > 2,
            "retried within the budget"
        );
        assert!(err.message().contains("gave up after"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_patient_request_waits_long_once_and_expected_answers_are_not_failures() {
        let retrier = retrier(
            "patient",
            Retry {
                io_timeout: Duration::from_secs(60),
                ..quick()
            },
        );
        let started = tokio::time::Instant::now();
        let err = retrier
            .run_patient(
                "complete upload of x",
                Duration::from_secs(300),
                &|_| false,
                std::future::pending::<Result<()>>,
            )
            .await
            .unwrap_err();
        // Five minutes for the first try, the usual minute for the retry.
        assert_eq!(started.elapsed().as_secs(), 360, "{err}");
        assert!(
            err.message()
                .contains("nothing moved in 2 attempts in a row, 6m in all"),
            "{err}"
        );
        assert!(retrier.health().down_for().is_some());

        // A refusal is an answer: the storage is up again, and one the
        // caller expects is not counted as a failure.
        let gone = |e: &Error| e.message().contains("NoSuchUpload");
        let err = retrier
            .run_expecting("abort upload of x", &gone, || async {
                Err::<(), _>(Error::storage("NoSuchUpload: gone"))
            })
            .await
            .unwrap_err();
        assert!(gone(&err));
        assert!(retrier.health().down_for().is_none());
        let (_, counts, _) = crate::storage::health::snapshot()
            .into_iter()
            .find(|(name, ..)| name == "retry-test-patient")
            .unwrap();
        assert_eq!(counts[2], (FailureKind::Error, 0), "{counts:?}");
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let retry = Retry {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..Retry::default()
        };
        for failures in 1..40 {
            let cap = Duration::from_millis(100 * (1u64 << (failures - 1).min(20)))
                .min(Duration::from_secs(1));
            assert!(retry.delay(failures) <= cap);
        }
    }
}
