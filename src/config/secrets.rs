//! Secrets a job file names: `<key>_env` or `<key>_file`, never the value.
//! They are read when a command needs them (`crate::secret`); the checks
//! here run on a value then, and never repeat it.

use std::path::PathBuf;

use toml::Spanned;

use super::sources::Source;
use crate::error::Result;
use crate::secret::{Problem, SecretRef, SecretSource};

/// The secret named by `<key>_env` or `<key>_file` (at most one of them),
/// read when a command needs it.
pub(super) fn secret_ref(
    source: &Source,
    section: &str,
    key: &str,
    env_name: &Option<Spanned<String>>,
    file: &Option<Spanned<PathBuf>>,
) -> Result<Option<SecretRef>> {
    match (env_name, file) {
        (Some(_), Some(file)) => Err(source.error(
            file,
            format!("[{section}] sets both {key}_env and {key}_file; keep one"),
        )),
        (Some(var), None) => Ok(Some(SecretRef::named(
            SecretSource::Env(var.get_ref().clone()),
            section,
            &format!("{key}_env"),
            source.origin(var),
        ))),
        (None, Some(file)) => Ok(Some(SecretRef::named(
            SecretSource::File(file.get_ref().clone()),
            section,
            &format!("{key}_file"),
            source.origin(file),
        ))),
        (None, None) => Ok(None),
    }
}

// Checks run on a secret's value when it is read, by a command or by
// `config check`; their messages never repeat the value.

pub(super) fn passphrase_not_empty(value: &str) -> std::result::Result<(), Problem> {
    if value.is_empty() {
        return Err(Problem::new("the passphrase is empty")
            .with_hint("an empty passphrase protects nothing: set one, or use recipients"));
    }
    Ok(())
}

pub(super) fn http_url(value: &str) -> std::result::Result<(), Problem> {
    if !(value.starts_with("https://") || value.starts_with("http://")) {
        return Err(
            Problem::new("the url does not start with https:// or http://")
                .with_hint("set the whole webhook url, scheme included"),
        );
    }
    Ok(())
}

/// A bearer token guessed in a few tries protects nothing.
pub(super) fn daemon_token(value: &str) -> std::result::Result<(), Problem> {
    if value.trim().len() < DAEMON_TOKEN_MIN {
        return Err(Problem::new(format!(
            "the token is shorter than {DAEMON_TOKEN_MIN} characters"
        ))
        .with_hint("make one with `openssl rand -hex 32`"));
    }
    Ok(())
}

const DAEMON_TOKEN_MIN: usize = 16;

pub(super) fn not_empty(value: &str) -> std::result::Result<(), Problem> {
    if value.is_empty() {
        return Err(Problem::new("the value is empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, check, error_of, load_text, test_env, with_remote};

    #[test]
    fn a_password_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pg.pass");
        std::fs::write(&file, "s3cret-in-a-file\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let text = GOOD.replace(
            "password_env = \"APP_DB_PASSWORD\"",
            &format!("password_file = \"{}\"", file.display()),
        );
        let e = error_of(&text);
        assert!(
            e.contains("password_file") && e.contains("others may read it"),
            "{e}"
        );
        assert!(e.contains("chmod 600") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check(&text).is_ok());
    }

    #[test]
    fn unset_password_env_is_an_error() {
        let err = error_of(&GOOD.replace("APP_DB_PASSWORD", "NOT_SET_ANYWHERE"));
        assert!(err.contains("NOT_SET_ANYWHERE"), "{err}");
        assert!(err.contains("jobs/app.toml:6"), "{err}");
        assert!(err.contains("hint: export NOT_SET_ANYWHERE"), "{err}");
    }

    #[test]
    fn a_job_file_loads_without_its_secrets_and_names_each_of_them() {
        let text = with_remote("[notifications.ops]\ntype = \"slack\"\nurl_env = \"SLACK_URL\"\n")
            .replace(
                "compression = \"gzip\"",
                "encryption = { passphrase_env = \"PASSPHRASE\" }",
            );
        // Not one variable set, no file read: loading needs none of them.
        let config = load_text(&text, &|_| None).unwrap();
        let named: Vec<(String, String)> = config
            .secrets()
            .iter()
            .map(|s| (s.name(), s.origin().unwrap().to_string()))
            .collect();
        let expected = [
            ("[databases.app] password_env", "jobs/app.toml:6"),
            ("[storages.blob] access_key_env", "jobs/app.toml:32"),
            ("[storages.s3] access_key_id_env", "jobs/app.toml:20"),
            ("[storages.s3] secret_access_key_env", "jobs/app.toml:21"),
            ("[notifications.ops] url_env", "jobs/app.toml:37"),
            (
                "[jobs.nightly.encryption] passphrase_env",
                "jobs/app.toml:43",
            ),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(named, expected);
        for secret in config.secrets() {
            let unresolved = secret.resolve_with(&|_| None).unwrap_err();
            assert!(unresolved.missing, "{unresolved:?}");
            assert!(unresolved.message.contains("is not set"), "{unresolved:?}");
        }
        // Children are still started without these variables, whichever
        // way they reach the database.
        let (_, backup) = config.backup_job("nightly").unwrap();
        for names in [
            &config.databases["app"].secret_env,
            &backup.database().unwrap().secret_env,
        ] {
            for var in [
                "APP_DB_PASSWORD",
                "S3_ID",
                "AZ_KEY",
                "SLACK_URL",
                "PASSPHRASE",
            ] {
                assert!(names.iter().any(|n| n == var), "{var} in {names:?}");
            }
        }
    }

    #[test]
    fn checks_on_a_value_run_when_it_is_read() {
        let empty_passphrase = GOOD.replace(
            "compression = \"gzip\"",
            "encryption = { passphrase_env = \"EMPTY\" }",
        );
        assert!(load_text(&empty_passphrase, &test_env).is_ok());
        let err = error_of(&empty_passphrase);
        assert!(
            err.contains("[jobs.nightly.encryption] passphrase_env: the passphrase is empty"),
            "{err}"
        );
        let empty_key = with_remote("").replace(
            "access_key_id_env = \"S3_ID\"",
            "access_key_id_env = \"EMPTY\"",
        );
        let err = error_of(&empty_key);
        assert!(
            err.contains("[storages.s3] access_key_id_env: the value is empty"),
            "{err}"
        );
        let connection_string = with_remote("").replace(
            "access_key_env = \"AZ_KEY\"",
            "connection_string_env = \"AZ_KEY\"",
        );
        let err = error_of(&connection_string);
        assert!(
            err.contains("[storages.blob] connection_string_env: not a connection string"),
            "{err}"
        );
        assert!(!err.contains("storage-s3cret"), "{err}");
    }
}
