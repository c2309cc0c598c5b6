//! `[storages.NAME]` sections: one flat table whose keys depend on `type`.
//!
//! Flat rather than an internally tagged enum: serde buffers tagged enums, which
//! loses the spans that let errors name a line. So the raw struct holds every
//! key of every type, and [`validate_storage`] refuses a key that does not belong
//! to the declared type, naming it.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::secrets::{not_empty, secret_ref};
use super::sources::Source;
use crate::error::Result;
use crate::model::{AzureAuth, AzureSpec, Retry, S3Keys, S3Spec, Sse, StorageKind, StorageSpec};

const MIB: u64 = 1024 * 1024;
/// S3's limits on a multipart upload's parts (all but the last).
const S3_MIN_PART: u64 = 5 * MIB;
const S3_MAX_PART: u64 = 5 * 1024 * MIB;
/// Azure's largest block.
const AZURE_MAX_BLOCK: u64 = 4000 * MIB;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    pub(super) path: Option<Spanned<PathBuf>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) bucket: Option<Spanned<String>>,
    pub(super) region: Option<Spanned<String>>,
    path_style: Option<Spanned<bool>>,
    access_key_id_env: Option<Spanned<String>>,
    access_key_id_file: Option<Spanned<PathBuf>>,
    secret_access_key_env: Option<Spanned<String>>,
    secret_access_key_file: Option<Spanned<PathBuf>>,
    session_token_env: Option<Spanned<String>>,
    session_token_file: Option<Spanned<PathBuf>>,
    storage_class: Option<Spanned<String>>,
    sse: Option<Spanned<String>>,
    kms_key_id: Option<Spanned<String>>,
    part_size: Option<Spanned<Size>>,
    parts_in_flight: Option<Spanned<i64>>,
    pub(super) account: Option<Spanned<String>>,
    pub(super) container: Option<Spanned<String>>,
    access_key_env: Option<Spanned<String>>,
    access_key_file: Option<Spanned<PathBuf>>,
    sas_token_env: Option<Spanned<String>>,
    sas_token_file: Option<Spanned<PathBuf>>,
    connection_string_env: Option<Spanned<String>>,
    connection_string_file: Option<Spanned<PathBuf>>,
    block_size: Option<Spanned<Size>>,
    blocks_in_flight: Option<Spanned<i64>>,
    retry_attempts: Option<Spanned<i64>>,
    retry_max_time: Option<Spanned<String>>,
    io_timeout: Option<Spanned<String>>,
    /// The name `io_timeout` had before requests were timed on progress.
    request_timeout: Option<Spanned<String>>,
}

/// A byte count: an integer, or a string with a unit ("16MiB", "8 MB").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(i64),
    Text(String),
}

impl Size {
    pub(super) fn bytes(&self) -> Option<u64> {
        match self {
            Size::Bytes(n) => u64::try_from(*n).ok(),
            Size::Text(text) => parse_size(text),
        }
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let value: u64 = text[..digits].parse().ok()?;
    let unit = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    value.checked_mul(unit)
}

/// The keys each type accepts beyond `type`.
const LOCAL_KEYS: &[&str] = &["path", "io_timeout"];
const REMOTE_KEYS: &[&str] = &[
    "prefix",
    "endpoint",
    "retry_attempts",
    "retry_max_time",
    "io_timeout",
    "request_timeout",
];
const S3_KEYS: &[&str] = &[
    "bucket",
    "region",
    "path_style",
    "access_key_id_env",
    "access_key_id_file",
    "secret_access_key_env",
    "secret_access_key_file",
    "session_token_env",
    "session_token_file",
    "storage_class",
    "sse",
    "kms_key_id",
    "part_size",
    "parts_in_flight",
];
const AZURE_KEYS: &[&str] = &[
    "account",
    "container",
    "access_key_env",
    "access_key_file",
    "sas_token_env",
    "sas_token_file",
    "connection_string_env",
    "connection_string_file",
    "block_size",
    "blocks_in_flight",
];

impl RawStorage {
    /// Every optional key that is set, with its span, for the per-type check.
    fn set_keys(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        macro_rules! keys {
            ($($field:ident),* $(,)?) => {{
                let mut set = Vec::new();
                $(if let Some(v) = &self.$field {
                    set.push((stringify!($field), v.span()));
                })*
                set
            }};
        }
        keys!(
            path,
            prefix,
            endpoint,
            bucket,
            region,
            path_style,
            access_key_id_env,
            access_key_id_file,
            secret_access_key_env,
            secret_access_key_file,
            session_token_env,
            session_token_file,
            storage_class,
            sse,
            kms_key_id,
            part_size,
            parts_in_flight,
            account,
            container,
            access_key_env,
            access_key_file,
            sas_token_env,
            sas_token_file,
            connection_string_env,
            connection_string_file,
            block_size,
            blocks_in_flight,
            retry_attempts,
            retry_max_time,
            io_timeout,
            request_timeout,
        )
    }
}

pub(super) fn validate_storage(
    source: &Source,
    name: &str,
    raw: &Spanned<RawStorage>,
) -> Result<StorageSpec> {
    let storage = raw.get_ref();
    let section = format!("storages.{name}");
    let kind_name = storage.kind.get_ref().as_str();
    let allowed: Vec<&str> = match kind_name {
        "local" => LOCAL_KEYS.to_vec(),
        "s3" => [REMOTE_KEYS, S3_KEYS].concat(),
        "azure" => [REMOTE_KEYS, AZURE_KEYS].concat(),
        other => {
            return Err(source
                .error(
                    &storage.kind,
                    format!("[{section}] type '{other}' is not supported"),
                )
                .with_hint("supported storage types: local, s3, azure"));
        }
    };
    for (key, span) in storage.set_keys() {
        if !allowed.contains(&key) {
            let at = Spanned::new(span, ());
            return Err(source
                .error(
                    &at,
                    format!("[{section}] `{key}` does not apply to type = \"{kind_name}\""),
                )
                .with_hint(format!(
                    "keys of a {kind_name} storage: type, {}",
                    allowed.join(", ")
                )));
        }
    }
    let v = Validator {
        source,
        section: &section,
        raw,
    };
    let kind = match kind_name {
        "local" => {
            let path = v.required(&storage.path, "path")?;
            if !path.get_ref().is_absolute() {
                return Err(source
                    .error(path, format!("[{section}] path must be absolute"))
                    .with_hint("a relative path would depend on the directory backup runs in"));
            }
            StorageKind::Local {
                path: path.get_ref().clone(),
            }
        }
        "s3" => StorageKind::S3(validate_s3(&v, storage)?),
        _ => StorageKind::Azure(validate_azure(&v, storage)?),
    };
    Ok(StorageSpec {
        name: name.to_owned(),
        kind,
        retry: validate_retry(&v, storage)?,
    })
}

/// Shared checks, so every message names the section and the line alike.
struct Validator<'a> {
    source: &'a Source,
    section: &'a str,
    raw: &'a Spanned<RawStorage>,
}

impl Validator<'_> {
    fn required<'v, T>(&self, value: &'v Option<Spanned<T>>, key: &str) -> Result<&'v Spanned<T>> {
        value.as_ref().ok_or_else(|| {
            let kind = self.raw.get_ref().kind.get_ref();
            self.source.error(
                self.raw,
                format!("[{}] type = \"{kind}\" needs `{key}`", self.section),
            )
        })
    }

    fn error<T>(&self, at: &Spanned<T>, message: impl std::fmt::Display) -> crate::error::Error {
        self.source
            .error(at, format!("[{}] {message}", self.section))
    }

    fn count(
        &self,
        value: &Option<Spanned<i64>>,
        key: &str,
        default: usize,
        max: usize,
    ) -> Result<usize> {
        match value {
            None => Ok(default),
            Some(n) => match usize::try_from(*n.get_ref()) {
                Ok(n @ 1..) if n <= max => Ok(n),
                _ => Err(self.error(n, format!("{key} must be between 1 and {max}"))),
            },
        }
    }

    fn size(
        &self,
        value: &Option<Spanned<Size>>,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64> {
        let Some(size) = value else {
            return Ok(default);
        };
        match size.get_ref().bytes() {
            Some(n) if (min..=max).contains(&n) => Ok(n),
            Some(_) => Err(self.error(
                size,
                format!(
                    "{key} must be between {} and {}",
                    crate::report::bytes_human(min),
                    crate::report::bytes_human(max)
                ),
            )),
            None => Err(self.error(size, format!("{key} is not a size")).with_hint(
                "write bytes as an integer or with a unit: \"16MiB\", \"8 MiB\", \"64MB\"",
            )),
        }
    }

    fn duration(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
    ) -> Result<Option<std::time::Duration>> {
        let Some(text) = value else {
            return Ok(None);
        };
        match crate::time::parse_duration(text.get_ref()) {
            Some(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(self
                .error(
                    text,
                    format!("{key} = '{}' is not a duration", text.get_ref()),
                )
                .with_hint("write a number and a unit: \"30s\", \"5m\", \"1h\"")),
        }
    }

    /// A prefix without slashes at either end, whose segments are valid in keys.
    fn prefix(&self, value: &Option<Spanned<String>>) -> Result<Option<String>> {
        let Some(prefix) = value else {
            return Ok(None);
        };
        let trimmed = prefix.get_ref().trim_matches('/');
        if trimmed.is_empty() {
            return Ok(None);
        }
        crate::storage::Key::new(trimmed).map_err(|_| {
            self.error(
                prefix,
                format!("prefix '{}' is not a valid path", prefix.get_ref()),
            )
            .with_hint("use '/'-separated names without empty, '.' or '..' segments")
        })?;
        Ok(Some(trimmed.to_owned()))
    }

    fn endpoint(&self, value: &Option<Spanned<String>>) -> Result<Option<String>> {
        let Some(endpoint) = value else {
            return Ok(None);
        };
        let text = endpoint.get_ref().trim_end_matches('/');
        if !(text.starts_with("https://") || text.starts_with("http://")) {
            return Err(self
                .error(
                    endpoint,
                    format!("endpoint '{}' is not an http(s) URL", endpoint.get_ref()),
                )
                .with_hint("write the scheme too, e.g. \"http://127.0.0.1:9000\""));
        }
        // Else the first request would fail, long after `config check` passed.
        let problem = match reqwest::Url::parse(text) {
            Ok(url) if url.host_str().is_some_and(|h| !h.is_empty()) => None,
            Ok(_) => Some("it names no host".to_owned()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(problem) = problem {
            return Err(self
                .error(
                    endpoint,
                    format!(
                        "endpoint '{}' is not a valid URL: {problem}",
                        endpoint.get_ref()
                    ),
                )
                .with_hint(
                    "write scheme, host and port, e.g. \"http://127.0.0.1:9000\" or \"http://[::1]:9000\"",
                ));
        }
        Ok(Some(text.to_owned()))
    }

    /// A bucket or container name that the service would refuse, refused
    /// here with the service's rule.
    fn name(
        &self,
        value: &Spanned<String>,
        key: &str,
        problem: fn(&str) -> Option<&'static str>,
        rule: &str,
    ) -> Result<String> {
        let name = value.get_ref();
        match problem(name) {
            None => Ok(name.clone()),
            Some(why) => Err(self
                .error(value, format!("{key} '{name}' is not valid: {why}"))
                .with_hint(rule.to_owned())),
        }
    }
}

/// Why S3 would refuse `name` as a bucket name, if it would: 3 to 63
/// characters of lowercase letters, digits, '.' and '-', starting and ending
/// with a letter or digit, no ".." and not an IP address (AWS's rules, which
/// MinIO and other S3-compatibles keep).
fn bucket_problem(name: &str) -> Option<&'static str> {
    if !(3..=63).contains(&name.len()) {
        return Some("it must be 3 to 63 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
    {
        return Some("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Some("it must start and end with a letter or digit");
    }
    if name.contains("..") {
        return Some("two dots may not follow each other");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some("it may not be an IP address");
    }
    None
}

const BUCKET_RULE: &str = "S3 bucket names are 3 to 63 lowercase letters, digits, '.' and '-', \
                           starting and ending with a letter or digit";

/// Why Azure would refuse `name` as a container name, if it would: 3 to 63
/// characters of lowercase letters, digits and '-', starting and ending with
/// a letter or digit, no "--".
fn container_problem(name: &str) -> Option<&'static str> {
    if !(3..=63).contains(&name.len()) {
        return Some("it must be 3 to 63 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Some("only lowercase letters, digits and '-' are allowed");
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(name.chars().next()) || !alnum(name.chars().last()) {
        return Some("it must start and end with a letter or digit");
    }
    if name.contains("--") {
        return Some("two hyphens may not follow each other");
    }
    None
}

const CONTAINER_RULE: &str = "Azure container names are 3 to 63 lowercase letters, digits and \
                              '-', starting and ending with a letter or digit";

/// Whether an `http(s)://host[:port][/...]` endpoint's host is an IP
/// address or `localhost`.
fn is_ip_or_localhost(endpoint: &str) -> bool {
    let authority = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok()
}

fn validate_s3(v: &Validator, raw: &RawStorage) -> Result<S3Spec> {
    let bucket = v.name(
        v.required(&raw.bucket, "bucket")?,
        "bucket",
        bucket_problem,
        BUCKET_RULE,
    )?;
    let section = v.section;
    let secret = |key, env_name, file| secret_ref(v.source, section, key, env_name, file);
    let id = secret(
        "access_key_id",
        &raw.access_key_id_env,
        &raw.access_key_id_file,
    )?;
    let key = secret(
        "secret_access_key",
        &raw.secret_access_key_env,
        &raw.secret_access_key_file,
    )?;
    let token = secret(
        "session_token",
        &raw.session_token_env,
        &raw.session_token_file,
    )?;
    // Read when the storage is opened; an empty key is a mistake, not a login.
    let keys = match (id, key) {
        (Some(id), Some(key)) => Some(S3Keys {
            access_key_id: id.checked(not_empty),
            secret_access_key: key.checked(not_empty),
            session_token: token,
        }),
        (None, None) if token.is_none() => None,
        _ => {
            return Err(v
                .source
                .error(
                    v.raw,
                    format!(
                        "[{section}] static S3 keys need both access_key_id_* and secret_access_key_*"
                    ),
                )
                .with_hint(
                    "set both, or neither to use the AWS credential chain (environment, \
                     profile, web identity, instance metadata)",
                ));
        }
    };
    let sse = match &raw.sse {
        None => {
            if let Some(kms) = &raw.kms_key_id {
                return Err(v.error(kms, "kms_key_id needs sse = \"aws:kms\""));
            }
            None
        }
        Some(sse) => match sse.get_ref().as_str() {
            "AES256" => {
                if let Some(kms) = &raw.kms_key_id {
                    return Err(v.error(kms, "kms_key_id needs sse = \"aws:kms\", not \"AES256\""));
                }
                Some(Sse::Aes256)
            }
            "aws:kms" => Some(Sse::Kms {
                key_id: raw.kms_key_id.as_ref().map(|k| k.get_ref().clone()),
            }),
            other => {
                return Err(v
                    .error(sse, format!("sse '{other}' is not supported"))
                    .with_hint("use \"AES256\" or \"aws:kms\""));
            }
        },
    };
    let endpoint = v.endpoint(&raw.endpoint)?;
    // A bucket cannot be a subdomain of an IP address or of localhost, so
    // virtual-hosted addressing could never reach such an endpoint.
    let path_style = match &raw.path_style {
        Some(p) => *p.get_ref(),
        None => endpoint.as_deref().is_some_and(is_ip_or_localhost),
    };
    Ok(S3Spec {
        bucket,
        prefix: v.prefix(&raw.prefix)?,
        region: raw.region.as_ref().map(|r| r.get_ref().clone()),
        endpoint,
        path_style,
        keys,
        storage_class: raw.storage_class.as_ref().map(|c| c.get_ref().clone()),
        sse,
        part_size: v.size(
            &raw.part_size,
            "part_size",
            16 * MIB,
            S3_MIN_PART,
            S3_MAX_PART,
        )?,
        parts_in_flight: v.count(&raw.parts_in_flight, "parts_in_flight", 2, 64)?,
    })
}

fn validate_azure(v: &Validator, raw: &RawStorage) -> Result<AzureSpec> {
    let section = v.section;
    let secret = |key, env_name, file| secret_ref(v.source, section, key, env_name, file);
    let key = secret("access_key", &raw.access_key_env, &raw.access_key_file)?;
    let sas = secret("sas_token", &raw.sas_token_env, &raw.sas_token_file)?;
    let conn = secret(
        "connection_string",
        &raw.connection_string_env,
        &raw.connection_string_file,
    )?;
    let auth = match (key, sas, conn) {
        (None, None, None) => AzureAuth::EntraId,
        (Some(key), None, None) => AzureAuth::AccountKey(key.checked(not_empty)),
        (None, Some(sas), None) => AzureAuth::SasToken(sas.checked(not_empty)),
        (None, None, Some(conn)) => AzureAuth::ConnectionString(
            conn.checked(crate::storage::AzureStorage::check_connection_string),
        ),
        _ => {
            return Err(v
                .source
                .error(
                    v.raw,
                    format!("[{section}] sets more than one of access_key_*, sas_token_*, connection_string_*"),
                )
                .with_hint("keep one; with none, Entra ID (managed identity, workload identity, Azure CLI) is used"));
        }
    };
    let account = match (&raw.account, &auth) {
        (Some(account), _) => account.get_ref().clone(),
        // A connection string names its account.
        (None, AzureAuth::ConnectionString(_)) => String::new(),
        (None, _) => v.required(&raw.account, "account")?.get_ref().clone(),
    };
    Ok(AzureSpec {
        account,
        container: v.name(
            v.required(&raw.container, "container")?,
            "container",
            container_problem,
            CONTAINER_RULE,
        )?,
        prefix: v.prefix(&raw.prefix)?,
        endpoint: v.endpoint(&raw.endpoint)?,
        auth,
        block_size: v.size(
            &raw.block_size,
            "block_size",
            8 * MIB,
            1024,
            AZURE_MAX_BLOCK,
        )?,
        blocks_in_flight: v.count(&raw.blocks_in_flight, "blocks_in_flight", 2, 64)?,
    })
}

fn validate_retry(v: &Validator, raw: &RawStorage) -> Result<Retry> {
    let default = Retry::default();
    let attempts = v.count(
        &raw.retry_attempts,
        "retry_attempts",
        default.attempts as usize,
        100,
    )?;
    Ok(Retry {
        attempts: attempts as u32,
        max_time: v
            .duration(&raw.retry_max_time, "retry_max_time")?
            .unwrap_or(default.max_time),
        io_timeout: match (&raw.io_timeout, &raw.request_timeout) {
            (Some(_), Some(old)) => {
                return Err(v
                    .error(old, "request_timeout and io_timeout are the same setting")
                    .with_hint("keep io_timeout (request_timeout is its older name)"));
            }
            (Some(_), None) => v.duration(&raw.io_timeout, "io_timeout")?,
            (None, Some(_)) => v.duration(&raw.request_timeout, "request_timeout")?,
            (None, None) => None,
        }
        .unwrap_or(default.io_timeout),
        ..default
    })
}

#[cfg(test)]
mod tests;
