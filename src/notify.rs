//! Notifications: a failed run, and the first success after failures, are
//! announced to every `[notifications.NAME]` that follows the job
//! (optionally every success too): a JSON webhook, Slack, Microsoft Teams
//! (an Adaptive Card), Discord, e-mail over SMTP, and healthchecks-style
//! pings, which also hear when a run starts and every success, since a
//! check that hears nothing is how a silent job is noticed.
//!
//! A notifier that fails is retried a few times and then logged; it never
//! changes the outcome of the run it is about. Nor does one whose url
//! cannot be read (a variable not set on this host): it is logged as not sent.

use std::time::Duration;

use serde_json::json;

use crate::model::{Email, Notifier, NotifierKind, SmtpSecurity};
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
/// `pings`: the run is its job's own (see the engine's `own_run`), which
/// is all a ping reports.
pub fn spawn(
    notifiers: Vec<std::sync::Arc<Notifier>>,
    record: RunRecord,
    previous: Option<Outcome>,
    pings: bool,
) {
    if notifiers.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            SENDING.spawn_on(
                async move { announce(&notifiers, &record, previous, pings).await },
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
    pings: bool,
) {
    let Some(event) = event_of(record.outcome, previous) else {
        return;
    };
    let wanted: Vec<_> = notifiers
        .iter()
        .filter(|n| n.follows(&record.job))
        .filter(|n| pings || n.kind != NotifierKind::Ping)
        .filter(|n| event != Event::Success || n.on_success || n.kind == NotifierKind::Ping)
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

/// One lock per job: a run's start ping holds it until it is delivered
/// (or given up), and the end's ping waits for it, so a check hears them in
/// order however short the run.
fn ping_order(job: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static ORDER: std::sync::LazyLock<
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    > = std::sync::LazyLock::new(Default::default);
    ORDER
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(job.to_owned())
        .or_default()
        .clone()
}

/// Tells the pings that follow `job` that a run of it began (`URL/start`),
/// in the background.
pub fn spawn_start(notifiers: &[std::sync::Arc<Notifier>], job: &str) {
    let pings: Vec<_> = notifiers
        .iter()
        .filter(|n| n.kind == NotifierKind::Ping && n.follows(job))
        .cloned()
        .collect();
    if pings.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    // Taken now, so the end of a short run cannot overtake its start.
    let order = ping_order(job).try_lock_owned().ok();
    let job = job.to_owned();
    SENDING.spawn_on(
        async move {
            let _order = order;
            let client = match reqwest::Client::builder().timeout(TRY_TIMEOUT).build() {
                Ok(c) => c,
                Err(e) => return tracing::warn!("cannot send notifications: {e}"),
            };
            let body = format!("backup: job {job} started");
            let sends = pings
                .iter()
                .map(|n| post(&client, n, "start", "/start", "text/plain", body.clone()));
            futures::future::join_all(sends).await;
        },
        &runtime,
    );
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

/// What the run's end is, in one line.
fn headline(event: Event, record: &RunRecord) -> String {
    match event {
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
    }
}

/// The headline, and the error under it for a failure: the chat message.
fn text(event: Event, record: &RunRecord) -> String {
    let headline = headline(event, record);
    match &record.error {
        Some(error) if event == Event::Failure => format!("{headline}\n> {error}"),
        _ => headline,
    }
}

/// The run's facts, as label and value, for a card or a mail.
fn facts(record: &RunRecord) -> Vec<(&'static str, String)> {
    let mut facts = vec![
        ("Job", record.job.clone()),
        ("Run", format!("{} ({})", record.run_id, record.kind)),
        ("Outcome", record.outcome.name().replace('_', " ")),
        ("Trigger", record.trigger.name().to_owned()),
        ("Started", record.started_at.to_string()),
        ("Finished", record.finished_at.to_string()),
    ];
    if let Some(error) = &record.error {
        facts.push(("Error", error.clone()));
    }
    facts
}

/// Discord refuses a message over 2,000 characters.
const DISCORD_LIMIT: usize = 2000;

fn body(kind: NotifierKind, event: Event, record: &RunRecord) -> serde_json::Value {
    let headline = headline(event, record);
    match kind {
        NotifierKind::Slack => json!({ "text": text(event, record) }),
        NotifierKind::Discord => {
            let mut content = text(event, record);
            if content.chars().count() > DISCORD_LIMIT {
                content = content.chars().take(DISCORD_LIMIT - 1).collect::<String>() + "…";
            }
            // An error text must not ping @everyone.
            json!({ "content": content, "allowed_mentions": { "parse": [] } })
        }
        NotifierKind::Teams => {
            let facts: Vec<serde_json::Value> = facts(record)
                .into_iter()
                .map(|(title, value)| json!({ "title": title, "value": value }))
                .collect();
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            {
                                "type": "TextBlock",
                                "text": headline,
                                "weight": "Bolder",
                                "size": "Medium",
                                "wrap": true,
                                "color": if event == Event::Failure { "Attention" } else { "Good" },
                            },
                            { "type": "FactSet", "facts": facts },
                        ],
                    },
                }],
            })
        }
        NotifierKind::Webhook | NotifierKind::Ping | NotifierKind::Email => json!({
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

/// A mail's subject and plain-text body: the chat message's facts.
fn mail(event: Event, record: &RunRecord) -> (String, String) {
    let mut body = text(event, record);
    body.push_str("\n\n");
    for (label, value) in facts(record) {
        body.push_str(&format!("{label}: {value}\n"));
    }
    body.push_str("\nThe run record holds the rest: `backup status` and `backup list` read it.\n");
    (headline(event, record), body)
}

async fn send(client: &reqwest::Client, notifier: &Notifier, event: Event, record: &RunRecord) {
    match notifier.kind {
        NotifierKind::Email => {
            let Some(email) = &notifier.email else {
                return tracing::warn!("notification {}: no mail settings", notifier.name);
            };
            let (subject, body) = mail(event, record);
            retrying(notifier, event.name(), || send_mail(email, &subject, &body)).await;
        }
        NotifierKind::Ping => {
            let _order = ping_order(&record.job).lock_owned().await;
            let suffix = if event == Event::Failure { "/fail" } else { "" };
            post(
                client,
                notifier,
                event.name(),
                suffix,
                "text/plain",
                text(event, record),
            )
            .await;
        }
        kind => {
            let body = body(kind, event, record).to_string();
            post(client, notifier, event.name(), "", "application/json", body).await;
        }
    }
}

/// POSTs `body` to the notifier's URL (with `suffix` after it), tried a few
/// times. The URL is read only now; one that cannot be read is a delivery
/// that failed, never a run that failed.
async fn post(
    client: &reqwest::Client,
    notifier: &Notifier,
    what: &str,
    suffix: &str,
    content_type: &str,
    body: String,
) {
    let url = match notifier.url.as_ref().map(|u| u.resolve()) {
        Some(Ok(url)) => url,
        Some(Err(e)) => {
            tracing::warn!(
                "notification {}: {what} not sent: {e}{}",
                notifier.name,
                e.hint().map_or(String::new(), |h| format!(" ({h})"))
            );
            return;
        }
        None => return tracing::warn!("notification {}: no url", notifier.name),
    };
    let Some(target) = with_path(url.expose(), suffix) else {
        return tracing::warn!(
            "notification {}: {what} not sent: its url does not read as one",
            notifier.name
        );
    };
    retrying(notifier, what, || async {
        let sent = client
            .post(&target)
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await;
        // The URL holds a token: reqwest's errors quote it, so say only what failed.
        match sent {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("the receiver answered {}", response.status()).into()),
            Err(e) if e.is_timeout() => Err("no answer in time".to_owned().into()),
            Err(e) if e.is_connect() => Err("cannot connect".to_owned().into()),
            Err(_) => Err("the request failed".to_owned().into()),
        }
    })
    .await;
}

/// Why a delivery failed, and whether trying again could help.
struct Undelivered {
    problem: String,
    permanent: bool,
}

impl From<String> for Undelivered {
    fn from(problem: String) -> Self {
        Undelivered {
            problem,
            permanent: false,
        }
    }
}

/// `url` with `suffix` (`/start`, `/fail`) added to its path, before any
/// query: `https://hc-ping.com/UUID` → `https://hc-ping.com/UUID/fail`.
fn with_path(url: &str, suffix: &str) -> Option<String> {
    let Some(segment) = suffix.strip_prefix('/') else {
        return Some(url.to_owned());
    };
    let mut url = reqwest::Url::parse(url).ok()?;
    url.path_segments_mut().ok()?.pop_if_empty().push(segment);
    Some(url.to_string())
}

/// Runs `attempt` up to [`TRIES`] times, the delay doubling, unless it
/// fails for good (a password refused); logs the end.
async fn retrying<F, Fut>(notifier: &Notifier, what: &str, mut attempt: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), Undelivered>>,
{
    let mut delay = Duration::from_millis(500);
    for tried in 1..=TRIES {
        let problem = match attempt().await {
            Ok(()) => {
                tracing::info!("notification {}: sent {what}", notifier.name);
                return;
            }
            Err(Undelivered {
                problem,
                permanent: true,
            }) => {
                return tracing::warn!(
                    "notification {}: {what} not sent: {problem}",
                    notifier.name
                );
            }
            Err(u) => u.problem,
        };
        if tried == TRIES {
            tracing::warn!(
                "notification {}: {what} not sent after {TRIES} tries: {problem}",
                notifier.name
            );
            return;
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
}

/// One mail through the notifier's SMTP server.
async fn send_mail(
    email: &Email,
    subject: &str,
    body: &str,
) -> std::result::Result<(), Undelivered> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let mut message = Message::builder()
        .from(email.from.parse().map_err(|e| format!("from: {e}"))?)
        .subject(subject)
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for to in &email.to {
        message = message.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    let message = message
        .body(body.to_owned())
        .map_err(|e| format!("the mail cannot be built: {e}"))?;
    let tls = TlsParameters::new(email.host.clone()).map_err(|e| format!("TLS: {e}"))?;
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&email.host)
        .port(email.port)
        .timeout(Some(TRY_TIMEOUT))
        .tls(match email.security {
            SmtpSecurity::Tls => Tls::Wrapper(tls),
            SmtpSecurity::StartTls => Tls::Required(tls),
            SmtpSecurity::StartTlsIfOffered => Tls::Opportunistic(tls),
        });
    if let (Some(user), Some(password)) = (&email.username, &email.password) {
        let user = user.resolve().map_err(|e| e.message().to_owned())?;
        let password = password.resolve().map_err(|e| e.message().to_owned())?;
        transport = transport.credentials(Credentials::new(
            user.expose().to_owned(),
            password.expose().to_owned(),
        ));
    }
    transport
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| Undelivered {
            problem: format!("{}:{}: {e}", email.host, email.port),
            permanent: e.is_permanent(),
        })
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
    fn a_ping_suffix_goes_into_the_path_never_after_the_query() {
        assert_eq!(
            with_path("https://hc-ping.com/abc", "/fail").as_deref(),
            Some("https://hc-ping.com/abc/fail")
        );
        assert_eq!(
            with_path("https://hc-ping.com/abc/", "/start").as_deref(),
            Some("https://hc-ping.com/abc/start")
        );
        assert_eq!(
            with_path("https://ping.example/p/abc?rid=1", "/fail").as_deref(),
            Some("https://ping.example/p/abc/fail?rid=1")
        );
        assert_eq!(
            with_path("https://hc-ping.com/abc?x=1", "").as_deref(),
            Some("https://hc-ping.com/abc?x=1")
        );
        assert_eq!(with_path("not a url", "/fail"), None);
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
