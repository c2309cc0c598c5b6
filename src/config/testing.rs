//! What the tests of every room share: a good job file, its secrets'
//! environment, and loading a text as `jobs/app.toml`.

use std::path::PathBuf;

use super::sources::{Source, parse};
use super::{EnvLookup, validate};
use crate::error::Result;
use crate::model::Config;

pub(super) const GOOD: &str = r#"
timezone = "Asia/Tokyo"

[databases.app]
url = "postgresql://app@127.0.0.1:5432/app"
password_env = "APP_DB_PASSWORD"

[storages.disk]
type = "local"
path = "/var/backups/app"

[jobs.nightly]
type = "backup"
database = "app"
storages = ["disk"]
compression = "gzip"
"#;

pub(super) fn test_env(name: &str) -> Option<String> {
    match name {
        "APP_DB_PASSWORD" => Some("s3cret-from-env".to_owned()),
        "S3_ID" => Some("AKIDEXAMPLE".to_owned()),
        "BACKUP_PASSPHRASE" => Some("correct horse battery staple".to_owned()),
        "APP_DB_HOST" => Some("10.0.0.5".to_owned()),
        "S3_SECRET" | "AZ_KEY" | "AZ_SAS" => Some("storage-s3cret".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// Loads `text` as `jobs/app.toml`, reading no secret.
pub(super) fn load_text(text: &str, env: EnvLookup) -> Result<Config> {
    let source = Source {
        path: PathBuf::from("jobs/app.toml"),
        text: text.to_owned(),
    };
    let raw = parse(&source)?;
    validate(vec![(&source, raw)], env)
}

/// Loads `text`, then reads every secret it names, as `config check
/// --strict` does: the first that cannot be read is the error.
pub(super) fn check(text: &str) -> Result<Config> {
    let config = load_text(text, &test_env)?;
    for secret in config.secrets() {
        secret.resolve_with(&test_env).map_err(|u| u.to_error())?;
    }
    Ok(config)
}

pub(super) fn error_of(text: &str) -> String {
    match check(text) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e}\nhint: {}", e.hint().unwrap_or("")),
    }
}

pub(super) const REMOTE: &str = r#"
[storages.s3]
type = "s3"
bucket = "backups"
prefix = "/prod/app/"
region = "ap-northeast-1"
endpoint = "http://127.0.0.1:9000/"
path_style = true
access_key_id_env = "S3_ID"
secret_access_key_env = "S3_SECRET"
sse = "aws:kms"
kms_key_id = "alias/backups"
part_size = "64MiB"
retry_attempts = 4
retry_max_time = "2m"

[storages.blob]
type = "azure"
account = "campbackendstorage"
container = "database-backups"
access_key_env = "AZ_KEY"
block_size = "4 MiB"
"#;

pub(super) fn with_remote(extra: &str) -> String {
    GOOD.replace(
        "[jobs.nightly]",
        &format!("{REMOTE}\n{extra}\n[jobs.nightly]"),
    )
    .replace(
        "storages = [\"disk\"]",
        "storages = [\"disk\", \"s3\", \"blob\"]",
    )
}

/// The line of `text` that holds `needle`.
pub(super) fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).unwrap()].matches('\n').count() + 1
}
