//! Notifications: a failed run, and the first success after failures, are
//! announced to every `[notifications.NAME]` (optionally every success too).
//!
//! A notifier that fails is retried a few times and then logged; it never
//! changes the outcome of the run it is about. Nor does one whose url
//! cannot be read (a variable not set on this host): it is logged as not sent.

use std::time::Duration;

use serde_json::json;

use crate::model::{Notifier, NotifierKind};
use crate::report::{Outcome, RunRecord};

/// How often a notification is tried, and how long each try may take.
const TRIES: u32 = 3;
const TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a run's end says to the people watching, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Failure,
    Recovery,
    Success,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Failure => "failure",
            Event::Recovery => "recovery",
            Event::Success => "success",
        }
    }
}

/// The event a run's end makes, given how the previous run ended.
pub fn event_of(outcome: Outcome, previous: Option<Outcome>) -> Option<Event> {
    match outcome {
        Outcome::Skipped => None,
        Outcome::Succeeded if previous.is_some_and(Outcome::is_failure) => Some(Event::Recovery),
        Outcome::Succeeded => Some(Event::Success),
        _ => Some(Event::Failure),
    }
}

/// Deliveries still going; the process waits for them before it exits.
static SENDING: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// How long the process waits at exit for deliveries: every try of one.
pub const FINISH_LIMIT: Duration = Duration::from_secs(35);

/// Announces the run in the background: a slow or dead receiver must not
/// hold the job's lock or delay its next run.
pub fn spawn(
    notifiers: Vec<std::sync::Arc<Notifier>>,
    record: RunRecord,
    previous: Option<Outcome>,
) {
    if notifiers.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            SENDING.spawn_on(
                async move { announce(&notifiers, &record, previous).await },
                &runtime,
            );
        }
        Err(_) => tracing::warn!(
            "notifications for run {} not sent: no runtime",
            record.run_id
        ),
    }
}

/// Waits up to `limit` for the deliveries started so far; false if some
/// were still going.
pub async fn finish(limit: Duration) -> bool {
    SENDING.close();
    let done = tokio::time::timeout(limit, SENDING.wait()).await.is_ok();
    SENDING.reopen();
    done
}

/// Sends the run's event to every notifier that wants it, waiting for the
/// deliveries (bounded by the tries and their timeout).
pub async fn announce(
    notifiers: &[std::sync::Arc<Notifier>],
    record: &RunRecord,
    previous: Option<Outcome>,
) {
    let Some(event) = event_of(record.outcome, previous) else {
        return;
    };
    let wanted: Vec<_> = notifiers
        .iter()
        .filter(|n| event != Event::Success || n.on_success)
        .collect();
    if wanted.is_empty() {
        return;
    }
    let client = match reqwest::Client::builder().timeout(TRY_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return tracing::warn!("cannot send notifications: {e}"),
    };
    let sends = wanted.iter().map(|n| send(&client, n, event, record));
    futures::future::join_all(sends).await;
}

/// The largest `details` a webhook gets whole; a maintenance run of a big
/// database keeps far more, which the run record has.
const DETAILS_LIMIT: usize = 32 << 10;

fn details_to_send(details: &serde_json::Value) -> serde_json::Value {
    let size = details.to_string().len();
    if size <= DETAILS_LIMIT {
        details.clone()
    } else {
        json!({ "omitted": format!("{size} bytes: read the run record") })
    }
}

fn body(kind: NotifierKind, event: Event, record: &RunRecord) -> serde_json::Value {
    let headline = match event {
        Event::Failure => format!(
            "backup: job {} {} ({} run {})",
            record.job,
            record.outcome.name().replace('_', " "),
            record.kind,
            record.run_id
        ),
        Event::Recovery => format!(
            "backup: job {} recovered: {} run {} succeeded",
            record.job, record.kind, record.run_id
        ),
        Event::Success => format!(
            "backup: job {} succeeded ({} run {})",
            record.job, record.kind, record.run_id
        ),
    };
    match kind {
        NotifierKind::Slack => {
            let text = match &record.error {
                Some(error) if event == Event::Failure => format!("{headline}\n> {error}"),
                _ => headline,
            };
            json!({ "text": text })
        }
        NotifierKind::Webhook => json!({
            "event": event.name(),
            "summary": headline,
            "job": record.job,
            "kind": record.kind,
            "run_id": record.run_id,
            "outcome": record.outcome.name(),
            "trigger": record.trigger.name(),
            "started_at": record.started_at,
            "finished_at": record.finished_at,
            "error": record.error,
            "details": details_to_send(&record.details),
        }),
    }
}

async fn send(client: &reqwest::Client, notifier: &Notifier, event: Event, record: &RunRecord) {
    // The url is read when there is something to send; one that cannot be
    // read is a delivery that failed, never a run that failed.
    let url = match notifier.url.resolve() {
        Ok(url) => url,
        Err(e) => {
            tracing::warn!(
                "notification {}: {} not sent: {e}{}",
                notifier.name,
                event.name(),
                e.hint().map_or(String::new(), |h| format!(" ({h})"))
            );
            return;
        }
    };
    let body = body(notifier.kind, event, record);
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=TRIES {
        let sent = client
            .post(url.expose())
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        // The URL holds a token: reqwest's errors quote it, so say only what failed.
        let problem = match sent {
            Ok(response) if response.status().is_success() => {
                tracing::info!("notification {}: sent {}", notifier.name, event.name());
                return;
            }
            Ok(response) => format!("the receiver answered {}", response.status()),
            Err(e) if e.is_timeout() => "no answer in time".to_owned(),
            Err(e) if e.is_connect() => "cannot connect".to_owned(),
            Err(_) => "the request failed".to_owned(),
        };
        if attempt == TRIES {
            tracing::warn!(
                "notification {}: {} not sent after {TRIES} tries: {problem}",
                notifier.name,
                event.name()
            );
            return;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_details_stay_in_the_record() {
        let small = json!({"backup_id": "20261125T030000Z"});
        assert_eq!(details_to_send(&small), small);
        let steps: Vec<String> = (0..5000).map(|i| format!("step {i}")).collect();
        let sent = details_to_send(&json!({ "steps": steps }));
        assert!(
            sent["omitted"]
                .as_str()
                .unwrap()
                .ends_with("bytes: read the run record")
        );
    }

    #[test]
    fn failures_and_recoveries_are_told_apart() {
        use Outcome::*;
        assert_eq!(event_of(Failed, None), Some(Event::Failure));
        assert_eq!(event_of(TimedOut, Some(Succeeded)), Some(Event::Failure));
        assert_eq!(event_of(Succeeded, Some(Failed)), Some(Event::Recovery));
        assert_eq!(
            event_of(Succeeded, Some(Interrupted)),
            Some(Event::Recovery)
        );
        assert_eq!(event_of(Succeeded, Some(Succeeded)), Some(Event::Success));
        assert_eq!(event_of(Succeeded, None), Some(Event::Success));
        assert_eq!(event_of(Skipped, Some(Failed)), None);
    }
}
