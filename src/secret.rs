//! Secrets a job file names, read the first time a command needs them.
//!
//! A job file says where a password or key is (`*_env`, `*_file`); loading it
//! reads none of them, so `list`, `status`, `verify` or `prune` work on a host
//! that has only the storage's keys, and `config check` passes on a laptop
//! without the database's password. A [`SecretRef`] is read when a connection,
//! a client program, a storage, a seal or a notification needs it, once: the
//! value is kept for the next user. A secret that cannot be read is a
//! configuration error naming the file, the line, the key and the variable.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::error::{Error, Kind, Result};

/// A password or key, read. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself. Call only where it is handed to a driver or a child's
    /// environment, never where it could be formatted.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a value came from, so errors can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// Where a secret's value is read from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `*_env = "NAME"`.
    Env(String),
    /// `*_file = "/path"`; refused when others than its owner may read it.
    File(PathBuf),
    /// A value `backup` made itself (a drill's throwaway server).
    Given(Secret),
}

/// What a value must be, said as a problem when it is not: run when the
/// secret is read, by commands and by `config check` alike.
pub type SecretCheck = fn(&str) -> std::result::Result<(), Problem>;

/// Why a value was refused, and what to do about it. Never holds the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub message: String,
    pub hint: Option<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>) -> Self {
        Problem {
            message: message.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A secret named in a job file: where it is, which key of which section
/// named it and on which line, and its value once read. Clones share it
/// all, the value read included, so a configuration reads each secret once.
#[derive(Clone)]
pub struct SecretRef(Arc<Named>);

#[derive(Clone)]
struct Named {
    source: SecretSource,
    /// `databases.app`, `storages.s3`, `jobs.nightly.encryption`.
    section: String,
    /// The key as written: `password_env`, `secret_access_key_file`.
    key: String,
    origin: Option<Origin>,
    check: Option<SecretCheck>,
    value: OnceLock<Secret>,
}

/// A secret that cannot be read, said the way `config check` and errors say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// `[databases.app] password_env: environment variable APP_DB_PASSWORD is not set`.
    pub message: String,
    /// The job file and line of the key.
    pub origin: Option<Origin>,
    pub hint: Option<String>,
    /// Not on this host (a variable not set, a file that is not there or
    /// cannot be opened), rather than there and wrong.
    pub missing: bool,
}

impl Unresolved {
    /// The configuration error (exit 3) a command fails with.
    pub fn to_error(&self) -> Error {
        let message = match &self.origin {
            Some(origin) => format!("{origin}: {}", self.message),
            None => self.message.clone(),
        };
        let err = Error::config(message);
        match &self.hint {
            Some(hint) => err.with_hint(hint.clone()),
            None => err,
        }
    }
}

impl SecretRef {
    /// The secret `section`'s `key` names, declared at `origin`.
    pub fn named(source: SecretSource, section: &str, key: &str, origin: Origin) -> Self {
        SecretRef(Arc::new(Named {
            source,
            section: section.to_owned(),
            key: key.to_owned(),
            origin: Some(origin),
            check: None,
            value: OnceLock::new(),
        }))
    }

    /// A value at hand, for a server `backup` started itself.
    pub fn given(value: impl Into<String>) -> Self {
        SecretRef(Arc::new(Named {
            source: SecretSource::Given(Secret::new(value)),
            section: String::new(),
            key: String::new(),
            origin: None,
            check: None,
            value: OnceLock::new(),
        }))
    }

    /// Adds what the value must be.
    pub fn checked(self, check: SecretCheck) -> Self {
        let mut named = Arc::unwrap_or_clone(self.0);
        named.check = Some(check);
        SecretRef(Arc::new(named))
    }

    /// Where it comes from, for messages: `env APP_DB_PASSWORD`, `file /run/secrets/pg`.
    pub fn describe(&self) -> String {
        match &self.0.source {
            SecretSource::Env(name) => format!("env {name}"),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Given(_) => "a value set by backup".to_owned(),
        }
    }

    /// The environment variable it is read from, if it is one.
    pub fn env_var(&self) -> Option<&str> {
        match &self.0.source {
            SecretSource::Env(name) => Some(name),
            SecretSource::File(_) | SecretSource::Given(_) => None,
        }
    }

    /// `[databases.app] password_env`, as the job file says it.
    pub fn name(&self) -> String {
        format!("[{}] {}", self.0.section, self.0.key)
    }

    pub fn origin(&self) -> Option<&Origin> {
        self.0.origin.as_ref()
    }

    /// The value, read now if no one read it before; a configuration error
    /// (exit 3) naming the file, line, key and variable if it cannot be.
    pub fn resolve(&self) -> Result<&Secret> {
        self.try_resolve().map_err(|u| u.to_error())
    }

    /// [`SecretRef::resolve`], saying why not as `config check` shows it.
    pub fn try_resolve(&self) -> std::result::Result<&Secret, Unresolved> {
        self.resolve_with(&|name| std::env::var(name).ok())
    }

    /// [`SecretRef::try_resolve`] with the environment given, for tests.
    pub fn resolve_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> std::result::Result<&Secret, Unresolved> {
        if let Some(value) = self.0.value.get() {
            return Ok(value);
        }
        // A failure is not kept: a file that appears later is read then.
        let value = self.read(env)?;
        Ok(self.0.value.get_or_init(|| value))
    }

    fn read(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> std::result::Result<Secret, Unresolved> {
        let unresolved = |message: String, hint: Option<String>, missing| Unresolved {
            message: format!("{}: {message}", self.name()),
            origin: self.0.origin.clone(),
            hint,
            missing,
        };
        let value = match &self.0.source {
            SecretSource::Given(value) => return Ok(value.clone()),
            SecretSource::Env(name) => env(name).ok_or_else(|| {
                unresolved(
                    format!("environment variable {name} is not set"),
                    Some(format!("export {name} before running backup")),
                    true,
                )
            })?,
            SecretSource::File(path) => {
                let text = read_private(path).map_err(|e| {
                    let missing = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<std::io::Error>())
                        .is_some_and(|io| {
                            matches!(
                                io.kind(),
                                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                            )
                        });
                    let hint = e.hint().map(str::to_owned).unwrap_or_else(|| {
                        format!(
                            "put the secret in {} (mode 600), or point {} at the file that holds it",
                            path.display(),
                            self.0.key
                        )
                    });
                    unresolved(e.message().to_owned(), Some(hint), missing)
                })?;
                text.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        if let Some(check) = self.0.check {
            check(&value).map_err(|p| unresolved(p.message, p.hint, false))?;
        }
        Ok(Secret::new(value))
    }
}

/// The source, section, key and line; not the value read, nor the check.
impl PartialEq for SecretRef {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&self.0, &other.0);
        a.source == b.source && a.section == b.section && a.key == b.key && a.origin == b.origin
    }
}

impl Eq for SecretRef {}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({})", self.describe())
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Refuses a file holding a secret that others than its owner may read.
pub fn refuse_shared_secret(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(Kind::Config, format!("reading {}", path.display()), e))?;
    judge_secret_file(path, &meta)
}

fn judge_secret_file(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode();
    // Devices and pipes (a secret handed over on a file descriptor) have
    // the modes of their kind, not of a file someone wrote.
    if meta.is_file() && mode & 0o077 != 0 {
        return Err(Error::config(format!(
            "{} holds a secret and others may read it (mode {:o})",
            path.display(),
            mode & 0o777
        ))
        .with_hint(format!("chmod 600 {}", path.display())));
    }
    Ok(())
}

/// Reads a file holding a secret, refusing it (as [`refuse_shared_secret`])
/// when others may read it, as libpq refuses such a `.pgpass`. The mode is
/// read from the open file, so the file judged is the file read.
pub fn read_private(path: &Path) -> Result<String> {
    let reading = |e| Error::io(Kind::Config, format!("reading {}", path.display()), e);
    let mut file = std::fs::File::open(path).map_err(reading)?;
    judge_secret_file(path, &file.metadata().map_err(reading)?)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(reading)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            file: PathBuf::from("jobs/app.toml"),
            line: 7,
        }
    }

    fn env_ref(name: &str) -> SecretRef {
        SecretRef::named(
            SecretSource::Env(name.to_owned()),
            "databases.app",
            "password_env",
            origin(),
        )
    }

    #[test]
    fn an_unset_variable_names_file_line_key_and_variable() {
        let secret = env_ref("APP_DB_PASSWORD");
        let unresolved = secret.resolve_with(&|_| None).unwrap_err();
        assert_eq!(
            unresolved.message,
            "[databases.app] password_env: environment variable APP_DB_PASSWORD is not set"
        );
        assert!(unresolved.missing);
        let e = unresolved.to_error();
        assert_eq!(e.kind(), Kind::Config);
        assert_eq!(e.exit_code(), 3);
        assert_eq!(
            e.message(),
            "jobs/app.toml:7: [databases.app] password_env: environment variable \
             APP_DB_PASSWORD is not set"
        );
        assert_eq!(
            e.hint(),
            Some("export APP_DB_PASSWORD before running backup")
        );
    }

    #[test]
    fn a_value_is_read_once_and_kept() {
        let secret = env_ref("APP_DB_PASSWORD");
        let reads = std::cell::Cell::new(0);
        let env = |_: &str| {
            reads.set(reads.get() + 1);
            Some("first".to_owned())
        };
        assert_eq!(secret.resolve_with(&env).unwrap().expose(), "first");
        // Clones share what was read: the environment is not asked again,
        // and a variable unset since changes nothing.
        let clone = secret.clone();
        assert_eq!(clone.resolve_with(&env).unwrap().expose(), "first");
        assert_eq!(clone.resolve_with(&|_| None).unwrap().expose(), "first");
        assert_eq!(reads.get(), 1);
    }

    #[test]
    fn a_failure_is_not_kept() {
        let secret = env_ref("APP_DB_PASSWORD");
        assert!(secret.resolve_with(&|_| None).is_err());
        let later = secret
            .resolve_with(&|_| Some("set since".to_owned()))
            .unwrap();
        assert_eq!(later.expose(), "set since");
    }

    #[test]
    fn secret_files_are_read_without_their_newline_and_refused_when_shared() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pg.pass");
        let secret = SecretRef::named(
            SecretSource::File(path.clone()),
            "databases.app",
            "password_file",
            origin(),
        );
        let absent = secret.resolve_with(&|_| None).unwrap_err();
        assert!(absent.missing, "{absent:?}");
        assert!(absent.message.contains("password_file"), "{absent:?}");

        std::fs::write(&path, "s3cret-in-a-file\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let shared = secret.resolve_with(&|_| None).unwrap_err();
        assert!(!shared.missing, "there, and wrong: {shared:?}");
        assert!(shared.message.contains("others may read it"), "{shared:?}");
        assert_eq!(shared.hint, Some(format!("chmod 600 {}", path.display())));
        assert!(!format!("{shared:?}").contains("s3cret"));

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            secret.resolve_with(&|_| None).unwrap().expose(),
            "s3cret-in-a-file"
        );
    }

    #[test]
    fn checks_run_on_the_value_when_it_is_read() {
        fn not_empty(value: &str) -> std::result::Result<(), Problem> {
            if value.is_empty() {
                Err(Problem::new("the passphrase is empty").with_hint("set one"))
            } else {
                Ok(())
            }
        }
        let secret = SecretRef::named(
            SecretSource::Env("P".to_owned()),
            "jobs.nightly.encryption",
            "passphrase_env",
            origin(),
        )
        .checked(not_empty);
        let empty = secret.resolve_with(&|_| Some(String::new())).unwrap_err();
        assert_eq!(
            empty.message,
            "[jobs.nightly.encryption] passphrase_env: the passphrase is empty"
        );
        assert!(!empty.missing);
        assert_eq!(empty.hint.as_deref(), Some("set one"));
        assert!(secret.resolve_with(&|_| Some("x".to_owned())).is_ok());
    }

    #[test]
    fn debug_and_display_name_the_source_never_the_value() {
        let secret = env_ref("APP_DB_PASSWORD");
        secret
            .resolve_with(&|_| Some("hunter2".to_owned()))
            .unwrap();
        let given = SecretRef::given("hunter2");
        let shown = format!("{secret:?} {secret} {given:?} {given}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("env APP_DB_PASSWORD"), "{shown}");
    }
}
