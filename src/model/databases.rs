//! `[databases.NAME]`: the PostgreSQL databases jobs dump, maintain and
//! restore into.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::secret::SecretRef;

/// A PostgreSQL database declared under `[databases.NAME]`.
#[derive(Clone)]
pub struct Database {
    pub name: String,
    /// The libpq connection string as written, without a password in it.
    pub url: String,
    pub password: Option<SecretRef>,
    /// Where the password comes from, for display: `env APP_DB_PASSWORD`.
    pub password_from: Option<String>,
    /// The one directory the client programs (`pg_dump`, `pg_restore`,
    /// `pg_dumpall`, `psql`, `pg_basebackup`) are taken from, as it is.
    pub pg_bin_dir: Option<PathBuf>,
    /// Directories searched for the client programs, beside the usual
    /// package layouts: the nearest major at least the server's is taken
    /// ([`crate::pg::tool_path`]).
    pub pg_bin_dirs: Vec<PathBuf>,
    /// The environment variables the configuration takes secrets from: the
    /// client programs started for this database need none of them, and are
    /// started without them.
    pub secret_env: Arc<[String]>,
}

impl Database {
    /// A placeholder for a reference resolved once every file is read.
    pub fn unresolved() -> Self {
        Database {
            name: String::new(),
            url: String::new(),
            password: None,
            password_from: None,
            pg_bin_dir: None,
            pg_bin_dirs: Vec::new(),
            secret_env: Arc::default(),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("password", &self.password)
            .field("password_from", &self.password_from)
            .field("pg_bin_dir", &self.pg_bin_dir)
            .field("pg_bin_dirs", &self.pg_bin_dirs)
            .field("secret_env", &self.secret_env)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let db = Database {
            name: "app".into(),
            url: "postgresql://app@db/app".into(),
            password: Some(SecretRef::given("hunter2")),
            password_from: Some("env APP_DB_PASSWORD".into()),
            pg_bin_dir: None,
            pg_bin_dirs: Vec::new(),
            secret_env: Arc::default(),
        };
        let shown = format!("{db:?} {:?}", crate::secret::Secret::new("hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
