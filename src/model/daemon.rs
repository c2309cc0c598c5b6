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
    /// Webhook URLs carry their token: a secret, read when sending.
    pub url: SecretRef,
    /// Also announce every success, not only recoveries.
    pub on_success: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifierKind {
    /// A JSON document POSTed as is.
    Webhook,
    /// Slack's incoming-webhook format (`{"text": ...}`).
    Slack,
}
