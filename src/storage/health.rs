//! What each storage's requests have met in this process: how many failed
//! and why, the last failure, and whether the storage has just stopped
//! answering.
//!
//! Two things read it. The retry layer, so that once a storage has stopped
//! answering (a request stalled twice in a row), what follows at once (aborting the upload, writing the run
//! record, the clean-ups) gets one short try instead of a full budget each:
//! a dead storage costs a run a bounded minute or two, not twenty. And the
//! daemon's `/metrics` and the run records, so an operator sees which storage
//! failed and how (`backup_storage_errors_total{storage, kind}`).
//!
//! Keyed by the storage's name from the job file: a storage is opened afresh
//! for every run, and what the last run met must outlive its handle.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// After a request stalled twice, the storage counts as down for this long unless a
/// request succeeds meanwhile: long enough for the clean-ups of the run that
/// met it, short enough that a later run gets a full budget again.
const DOWN_FOR: Duration = Duration::from_secs(300);

/// How a storage operation failed, once the retry layer gave up on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Nothing moved for the I/O timeout: the storage stopped answering.
    Timeout,
    /// Temporary errors (5xx, throttling, resets) until the budget was spent.
    Unavailable,
    /// A permanent refusal: access denied, a missing bucket, a full disk.
    Error,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Unavailable => "unavailable",
            FailureKind::Error => "error",
        }
    }
}

/// The last failure of a storage, as kept in run records and shown by `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub storage: String,
    pub kind: FailureKind,
    pub at: jiff::Timestamp,
    pub message: String,
}

#[derive(Debug, Default)]
struct State {
    counts: BTreeMap<FailureKind, u64>,
    last: Option<Failure>,
    /// When a request last gave up because nothing moved, unless one
    /// succeeded since. Temporary errors do not count: they come back fast,
    /// and their retries are bounded by the budget already.
    down_since: Option<Instant>,
}

/// One storage's record; cheap to share between its requests.
#[derive(Debug)]
pub struct Health {
    storage: String,
    state: Mutex<State>,
}

static REGISTRY: LazyLock<Mutex<BTreeMap<String, Arc<Health>>>> = LazyLock::new(Mutex::default);

/// The record of the storage named `storage`, made on first use.
pub fn of(storage: &str) -> Arc<Health> {
    let mut registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(health) = registry.get(storage) {
        return health.clone();
    }
    registry
        .entry(storage.to_owned())
        .or_insert_with(|| {
            Arc::new(Health {
                storage: storage.to_owned(),
                state: Mutex::default(),
            })
        })
        .clone()
}

/// A storage's name, its failure counts by kind, and its last failure.
pub type Summary = (String, Vec<(FailureKind, u64)>, Option<Failure>);

/// Whether the storage named `storage` has just stopped answering.
pub fn is_down(storage: &str) -> bool {
    of(storage).down_for().is_some()
}

/// Every storage's failure counts by kind (zeros included for the kinds it
/// has not met, so a counter exists before its first failure), and its last
/// failure.
pub fn snapshot() -> Vec<Summary> {
    let registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    registry
        .values()
        .map(|health| {
            let state = health.lock();
            let counts = [
                FailureKind::Timeout,
                FailureKind::Unavailable,
                FailureKind::Error,
            ]
            .into_iter()
            .map(|kind| (kind, state.counts.get(&kind).copied().unwrap_or(0)))
            .collect();
            (health.storage.clone(), counts, state.last.clone())
        })
        .collect()
}

/// The failures every storage met since `since`, the last one each: what a
/// run record keeps.
pub fn failures_since(since: jiff::Timestamp) -> Vec<Failure> {
    let registry = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    registry
        .values()
        .filter_map(|health| health.lock().last.clone())
        .filter(|failure| failure.at >= since)
        .collect()
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request answered: the storage is up.
    pub fn answered(&self) {
        let mut state = self.lock();
        if state.down_since.is_some() {
            tracing::info!(storage = %self.storage, "the storage answers again");
            state.down_since = None;
        }
    }

    /// A request failed for good.
    pub fn failed(&self, kind: FailureKind, message: &str) {
        let mut state = self.lock();
        *state.counts.entry(kind).or_default() += 1;
        state.last = Some(Failure {
            storage: self.storage.clone(),
            kind,
            at: jiff::Timestamp::now(),
            message: message.to_owned(),
        });
        // Since the first stall, not the latest: the short tries that follow
        // fail too, and must not move when the storage stopped answering.
        let down = state
            .down_since
            .is_some_and(|since| since.elapsed() < DOWN_FOR);
        if kind == FailureKind::Timeout && !down {
            state.down_since = Some(Instant::now());
        }
    }

    /// How long ago the storage stopped answering, if it has just done so.
    pub fn down_for(&self) -> Option<Duration> {
        let mut state = self.lock();
        match state.down_since {
            Some(since) if since.elapsed() < DOWN_FOR => Some(since.elapsed()),
            Some(_) => {
                state.down_since = None;
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_marks_the_storage_down_until_a_request_answers() {
        let health = of("health-test-down");
        assert!(health.down_for().is_none());
        health.failed(FailureKind::Timeout, "upload x: nothing moved for 2m");
        assert!(health.down_for().is_some());
        // The short tries that follow fail too: still down since the first.
        std::thread::sleep(Duration::from_millis(50));
        health.failed(
            FailureKind::Timeout,
            "abort upload of x: nothing moved for 20s",
        );
        assert!(health.down_for().unwrap() >= Duration::from_millis(50));
        health.answered();
        assert!(health.down_for().is_none());

        // A refusal, or 503s until the budget ran out, are counted, but the
        // storage answered.
        health.failed(FailureKind::Unavailable, "503");
        health.failed(FailureKind::Error, "403");
        assert!(health.down_for().is_none());

        let (_, counts, last) = snapshot()
            .into_iter()
            .find(|(name, ..)| name == "health-test-down")
            .unwrap();
        assert_eq!(
            counts,
            vec![
                (FailureKind::Timeout, 2),
                (FailureKind::Unavailable, 1),
                (FailureKind::Error, 1)
            ]
        );
        assert_eq!(last.unwrap().message, "403");
    }
}
