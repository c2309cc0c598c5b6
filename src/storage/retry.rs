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
//! and stop at whichever comes first: the attempt count or the time budget.
//! Every attempt also has a deadline, because a request that never answers
//! (a hung upload) is the failure other tools' users meet most.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How hard to try. One value per storage, from its job-file settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all, the first included; at least 1.
    pub attempts: u32,
    /// The cap of the first wait; doubled after every failure.
    pub first_delay: Duration,
    /// No single wait is longer than this.
    pub max_delay: Duration,
    /// No retry starts once this much time has passed since the first attempt.
    pub max_time: Duration,
    /// One attempt that has not finished after this long is abandoned as temporary.
    pub attempt_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 8,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_time: Duration::from_secs(300),
            attempt_timeout: Duration::from_secs(300),
        }
    }
}

impl Retry {
    /// Runs `attempt` until it succeeds, fails permanently, or the budget is
    /// spent. `what` names the request in messages ("storage s3: upload part 3
    /// of nightly/…/data.dump.zst").
    pub async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let error = match tokio::time::timeout(self.attempt_timeout, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => e,
                Err(_) => Error::storage(format!(
                    "{what}: no answer within {}",
                    show(self.attempt_timeout)
                ))
                .temporary(),
            };
            if !error.is_temporary() {
                return Err(error);
            }
            let delay = self.delay(tries);
            let out_of_time = started.elapsed() + delay >= self.max_time;
            if tries >= self.attempts.max(1) || out_of_time {
                return Err(gave_up(error, tries, started.elapsed()));
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
    Error::new(error.kind(), message).with_hint(hint)
}

fn show(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        crate::time::show_duration(jiff::SignedDuration::from_secs(d.as_secs() as i64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick() -> Retry {
        Retry {
            attempts: 4,
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_time: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(10),
        }
    }

    #[tokio::test]
    async fn temporary_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let value = quick()
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
        let err = quick()
            .run("put", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::storage("403 access denied").with_hint("check the key"))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(err.message(), "403 access denied");
        assert_eq!(err.hint(), Some("check the key"));
    }

    #[tokio::test]
    async fn the_attempt_count_bounds_the_retries() {
        let calls = AtomicU32::new(0);
        let err = quick()
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

    #[tokio::test]
    async fn a_hung_attempt_times_out_and_is_retried() {
        let calls = AtomicU32::new(0);
        let retry = Retry {
            attempt_timeout: Duration::from_millis(20),
            ..quick()
        };
        let value = retry
            .run("get", || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    std::future::pending::<()>().await;
                }
                Ok("answered")
            })
            .await
            .unwrap();
        assert_eq!(value, "answered");
    }

    #[tokio::test]
    async fn the_time_budget_bounds_the_retries() {
        let retry = Retry {
            attempts: 1000,
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(5),
            max_time: Duration::from_millis(60),
            attempt_timeout: Duration::from_secs(1),
        };
        let started = Instant::now();
        let err = retry
            .run("list", || async {
                Err::<(), _>(Error::storage("500 internal error").temporary())
            })
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(err.message().contains("gave up after"), "{err}");
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
