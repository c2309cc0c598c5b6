//! The one error type of `backup`, and the exit codes it maps to.
//!
//! Error policy (after rustic_core and pgBackRest):
//! - every failure has a [`Kind`]; the kind alone decides the process exit code,
//!   and the table in README.md documents each code;
//! - messages are lowercase and name what failed (job, object, database, file);
//! - a suggested fix goes in `hint`, printed on its own `hint:` line;
//! - `temporary` says whether trying again may help (a dropped connection, a
//!   throttled request); the retry layer retries those and nothing else;
//! - secrets never reach a message: callers pass names, not values.

use std::fmt;

/// What went wrong, in the operator's terms. Each kind is one exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bug or an unexpected condition in `backup` itself.
    Internal,
    /// The job file is malformed, inconsistent or refers to something missing.
    Config,
    /// PostgreSQL could not be reached, refused the login, or a query failed.
    Database,
    /// The storage backend could not read, write, list or delete.
    Storage,
    /// Data does not match what was recorded: digest, size or row counts.
    Integrity,
    /// The requested backup, object or job does not exist.
    NotFound,
    /// An external tool (`pg_dump`, `pg_restore`, ...) is missing, too old or failed.
    Tool,
    /// The operation was refused to protect data (non-empty target, no confirmation).
    Refused,
    /// A command-line value could not be understood.
    Usage,
    /// SIGINT or SIGTERM stopped the command before it finished.
    Interrupted,
    /// A run went on past its job's `timeout` and was cancelled.
    TimedOut,
    /// `backup check` found something to look at (Nagios WARNING).
    CheckWarning,
    /// `backup check` found backups missing or too old (Nagios CRITICAL).
    CheckCritical,
    /// `backup check` could not judge: a job file it cannot read, an unknown
    /// job, a bad flag (Nagios UNKNOWN).
    CheckUnknown,
}

impl Kind {
    /// The process exit code for this kind (documented in README.md).
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Internal => 1,
            Kind::Usage => 2,
            Kind::Config => 3,
            Kind::Database => 4,
            Kind::Storage => 5,
            Kind::Integrity => 6,
            Kind::NotFound => 7,
            Kind::Tool => 8,
            Kind::Refused => 9,
            // What shells report for a command stopped by Ctrl-C (128 + SIGINT).
            Kind::TimedOut => 10,
            // The monitoring-plugin convention, which `check` speaks.
            Kind::CheckWarning => 1,
            Kind::CheckCritical => 2,
            Kind::CheckUnknown => 3,
            Kind::Interrupted => 130,
        }
    }
}

/// An error with its kind, a specific message, an optional hint and cause.
pub struct Error {
    kind: Kind,
    message: String,
    hint: Option<String>,
    temporary: bool,
    /// An outage that outlasted the request's own retries: see [`Error::outage`].
    outage: bool,
    /// Already printed where it happened; only the exit code is left to give.
    reported: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
            temporary: false,
            outage: false,
            reported: false,
            source: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(Kind::Internal, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(Kind::Config, message)
    }
    pub fn database(message: impl Into<String>) -> Self {
        Error::new(Kind::Database, message)
    }
    pub fn storage(message: impl Into<String>) -> Self {
        Error::new(Kind::Storage, message)
    }
    pub fn integrity(message: impl Into<String>) -> Self {
        Error::new(Kind::Integrity, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(Kind::NotFound, message)
    }
    pub fn tool(message: impl Into<String>) -> Self {
        Error::new(Kind::Tool, message)
    }
    pub fn refused(message: impl Into<String>) -> Self {
        Error::new(Kind::Refused, message)
    }
    pub fn usage(message: impl Into<String>) -> Self {
        Error::new(Kind::Usage, message)
    }
    pub fn interrupted(message: impl Into<String>) -> Self {
        Error::new(Kind::Interrupted, message)
    }

    pub fn timed_out(message: impl Into<String>) -> Self {
        Error::new(Kind::TimedOut, message)
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Marks the error as one that may go away if the operation is tried again.
    pub fn temporary(mut self) -> Self {
        self.temporary = true;
        self
    }

    /// Marks the error as printed already, so `main` only turns it into the exit code.
    pub fn reported(mut self) -> Self {
        self.reported = true;
        self
    }

    pub fn is_reported(&self) -> bool {
        self.reported
    }

    /// The same error again, for a second reader: kind, message, hint and
    /// whether it is temporary; the cause is kept as text in the message.
    pub fn again(&self) -> Self {
        Error {
            kind: self.kind,
            message: self.message.clone(),
            hint: self.hint.clone(),
            temporary: self.temporary,
            outage: self.outage,
            reported: self.reported,
            source: None,
        }
    }

    /// Prefixes the message with context, keeping kind, hint and cause.
    /// What the message already begins with is not said twice: a storage's
    /// errors name the storage, so `job nightly: storage disk` before
    /// `storage disk: reading x` gives `job nightly: storage disk: reading x`.
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        let context = context.to_string();
        // The context's tails at each ": ", longest first, then none.
        let tails = std::iter::once(context.as_str())
            .chain(context.match_indices(": ").map(|(i, _)| &context[i + 2..]));
        let said = tails
            .filter(|tail| !tail.is_empty())
            .find(|tail| {
                self.message
                    .strip_prefix(tail)
                    .is_some_and(|rest| rest.starts_with(": "))
            })
            .map_or(0, str::len);
        let head = &context[..context.len() - said];
        self.message = if said == 0 {
            format!("{context}: {}", self.message)
        } else {
            format!("{head}{}", self.message)
        };
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Marks an outage that outlasted a request's own retries (a storage that
    /// stopped answering, or kept failing): not tried again within the
    /// request, but a later attempt of the whole run may find it over.
    pub fn outage(mut self) -> Self {
        self.outage = true;
        self
    }

    /// Whether a later attempt of the whole run may succeed: a temporary
    /// error, or an outage. What a job's `retries` try again.
    pub fn may_pass(&self) -> bool {
        self.temporary || self.outage
    }
    pub fn exit_code(&self) -> u8 {
        self.kind.exit_code()
    }

    /// An I/O error on `what` (a path or object), temporary when the kind of
    /// failure suggests a retry could succeed.
    ///
    /// An I/O error that carries one of ours (a storage read failing under a
    /// decoder) is that error, with `what` for context: its kind and hint are
    /// what the operator needs, not "an I/O error".
    pub fn io(kind: Kind, what: impl fmt::Display, err: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return match err.into_inner().map(|inner| inner.downcast::<Error>()) {
                Some(Ok(ours)) => ours.context(what),
                Some(Err(other)) => Error::new(kind, format!("{what}: {other}")),
                None => Error::new(kind, what.to_string()),
            };
        }
        let temporary = matches!(
            err.kind(),
            K::Interrupted
                | K::TimedOut
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::WouldBlock
        );
        let hint = match err.kind() {
            K::StorageFull => Some("free space on the device or point the storage elsewhere"),
            K::PermissionDenied => Some("check the ownership and mode of the path"),
            _ => None,
        };
        let mut e = Error::new(kind, format!("{what}: {}", io_message(&err)));
        e.temporary = temporary;
        e.hint = hint.map(str::to_owned);
        e.with_source(err)
    }
}

/// `std::io::Error`'s Display starts with a capital and appends "(os error N)".
fn io_message(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(hint) = &self.hint {
            d.field("hint", hint);
        }
        if self.temporary {
            d.field("temporary", &true);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct() {
        let kinds = [
            Kind::Internal,
            Kind::Usage,
            Kind::Config,
            Kind::Database,
            Kind::Storage,
            Kind::Integrity,
            Kind::NotFound,
            Kind::Tool,
            Kind::Refused,
            Kind::Interrupted,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| k.exit_code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), kinds.len());
    }

    #[test]
    fn io_errors_are_lowercase_without_os_code() {
        let err = std::io::Error::from_raw_os_error(28); // ENOSPC
        let e = Error::io(Kind::Storage, "/backups/x", err);
        assert_eq!(e.message(), "/backups/x: no space left on device");
        assert!(e.hint().is_some());
    }

    #[test]
    fn context_names_each_thing_once() {
        let e = Error::storage("storage disk: /b/x: not a directory");
        assert_eq!(
            e.context("job nightly: storage disk").message(),
            "job nightly: storage disk: /b/x: not a directory"
        );
        let e = Error::not_found("job fs: reading directory /x: no such file or directory");
        assert_eq!(
            e.context("job fs").message(),
            "job fs: reading directory /x: no such file or directory"
        );
        // Only whole names count: `storage d` is not `storage disk`.
        let e = Error::storage("storage disk: full");
        assert_eq!(
            e.context("storage d").message(),
            "storage d: storage disk: full"
        );
        let e = Error::storage("reading x: gone");
        assert_eq!(
            e.context("job a: storage disk").message(),
            "job a: storage disk: reading x: gone"
        );
    }
}
