//! `[daemon]` and `[notifications.NAME]`: how `backup daemon` serves, and
//! where it announces runs.

use crate::secret::SecretRef;

/// `[daemon]`: how `backup daemon` serves and stops.
#[derive(Debug, Clone, Default)]
pub struct DaemonSettings {
    /// Where the status page, `/health/*` and `/metrics` are served.
    pub listen: Option<std::net::SocketAddr>,
    /// How long running jobs may finish after SIGTERM before they are cancelled.
    pub grace: Option<std::time::Duration>,
    /// `token_env`: the bearer token `/`, `/health` and `/metrics` require
    /// when the daemon listens on an address other than loopback.
    pub token: Option<SecretRef>,
}

/// `[notifications.NAME]`: where failures and recoveries are announced.
#[derive(Debug, Clone)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    /// Webhook URLs carry their token: a secret, read when sending. An
    /// e-mail notifier has none.
    pub url: Option<SecretRef>,
    pub email: Option<Email>,
    /// Also announce every success, not only recoveries (a ping always
    /// tells successes: it is how its check knows the job is alive).
    pub on_success: bool,
    /// `jobs = [...]`: runs of these jobs only; `None`: of every job.
    pub jobs: Option<Vec<String>>,
}

impl Notifier {
    /// Whether runs of `job` are announced here.
    pub fn follows(&self, job: &str) -> bool {
        self.jobs
            .as_ref()
            .is_none_or(|jobs| jobs.iter().any(|j| j == job))
    }

    /// The secrets it holds, for `config check` and the environment of
    /// child processes.
    pub fn secrets(&self) -> impl Iterator<Item = &SecretRef> {
        self.url.iter().chain(
            self.email
                .iter()
                .flat_map(|e| e.username.iter().chain(e.password.iter())),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierKind {
    /// A JSON document POSTed as is.
    Webhook,
    /// Slack's incoming-webhook format (`{"text": ...}`).
    Slack,
    /// A Microsoft Teams Workflows webhook: an Adaptive Card.
    Teams,
    /// A Discord webhook (`{"content": ...}`).
    Discord,
    /// A healthchecks-style check: `URL/start`, `URL`, `URL/fail`.
    Ping,
    /// Mail through an SMTP server.
    Email,
}

impl NotifierKind {
    pub fn name(self) -> &'static str {
        match self {
            NotifierKind::Webhook => "webhook",
            NotifierKind::Slack => "slack",
            NotifierKind::Teams => "teams",
            NotifierKind::Discord => "discord",
            NotifierKind::Ping => "ping",
            NotifierKind::Email => "email",
        }
    }
}

/// `type = "email"`: where and to whom.
#[derive(Debug, Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub from: String,
    pub to: Vec<String>,
    pub username: Option<SecretRef>,
    pub password: Option<SecretRef>,
}

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// `smtps://`: TLS from the first byte.
    Tls,
    /// `smtp://` to another host: STARTTLS, or nothing is sent.
    StartTls,
    /// `smtp://` on loopback, or `insecure = true`: STARTTLS when offered.
    StartTlsIfOffered,
}
