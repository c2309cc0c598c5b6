//! The options of a backup or files job: its storages, compression,
//! retention and encryption.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::raw::{RawEncryption, RawJob, RawRetention};
use super::secrets::{passphrase_not_empty, secret_ref};
use super::sources::Source;
use super::{declared, duration_of};
use crate::error::{Error, Result};
use crate::model::{BackupJob, BackupSource, Compression, Config, EncryptionSpec, StorageSpec};

pub(super) fn validate_backup_job(
    source: &Source,
    name: &str,
    raw: &Spanned<RawJob>,
    config: &Config,
    backup_source: BackupSource,
) -> Result<BackupJob> {
    let job = raw.get_ref();
    let names = job.storages.as_ref().ok_or_else(|| {
        source.error(
            raw,
            format!("[jobs.{name}] a backup job needs `storages = [\"...\"]`"),
        )
    })?;
    if names.get_ref().is_empty() {
        return Err(source.error(names, format!("[jobs.{name}] storages is empty")));
    }
    let mut storages: Vec<Arc<StorageSpec>> = Vec::new();
    for storage in names.get_ref() {
        let spec = config
            .storages
            .get(storage.get_ref())
            .cloned()
            .ok_or_else(|| {
                source
                    .error(
                        storage,
                        format!(
                            "[jobs.{name}] storages: '{}' is not a declared storage",
                            storage.get_ref()
                        ),
                    )
                    .with_hint(declared("storages", config.storages.keys()))
            })?;
        if storages.iter().any(|s| s.name == spec.name) {
            return Err(source.error(
                storage,
                format!("[jobs.{name}] storages lists '{}' twice", spec.name),
            ));
        }
        storages.push(spec);
    }
    let compression = validate_compression(source, name, job)?;
    let retention = match &job.retention {
        Some(raw) => Some(validate_retention(source, name, raw)?),
        None => None,
    };
    let incomplete_after = match &job.incomplete_after {
        Some(raw) => duration_of(source, &format!("jobs.{name}"), "incomplete_after", raw)?,
        None => Duration::from_secs(24 * 3600),
    };
    let encryption = match &job.encryption {
        Some(raw) => Some(validate_encryption(source, name, raw)?),
        None => None,
    };
    Ok(BackupJob {
        source: backup_source,
        storages,
        compression,
        retention,
        incomplete_after,
        encryption,
    })
}

/// `encryption = { ... }`: recipients that parse, from the file or the list,
/// never both, and an identity file only others cannot read; or a passphrase.
fn validate_encryption(
    source: &Source,
    name: &str,
    raw: &Spanned<RawEncryption>,
) -> Result<EncryptionSpec> {
    use crate::keys::Recipients;
    let enc = raw.get_ref();
    let section = format!("[jobs.{name}] encryption");
    let passphrase = secret_ref(
        source,
        &format!("jobs.{name}.encryption"),
        "passphrase",
        &enc.passphrase_env,
        &enc.passphrase_file,
    )?
    .map(|p| p.checked(passphrase_not_empty));
    let recipients = match (&enc.recipients, &enc.recipients_file) {
        // age takes a passphrase only as the one recipient of a file.
        (Some(_), _) | (_, Some(_)) if passphrase.is_some() => {
            return Err(source
                .error(
                    raw,
                    format!("{section}: give recipients or a passphrase, not both"),
                )
                .with_hint(
                    "age encrypts to a passphrase alone; recipients (public keys) are the \
                     safer choice, as the hosts taking backups then cannot read them",
                ));
        }
        // Sealed to the passphrase once it is read, at the backup.
        (None, None) if passphrase.is_some() => None,
        (Some(keys), None) => Some(
            Recipients::parse(keys.iter().map(String::as_str))
                .map_err(|e| source.error(raw, format!("{section}: recipients: {e}")))?,
        ),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                source.error(
                    raw,
                    format!("{section}: recipients_file {}: {e}", path.display()),
                )
            })?;
            Some(Recipients::parse_file(&text).map_err(|e| {
                source.error(
                    raw,
                    format!("{section}: recipients_file {}: {e}", path.display()),
                )
            })?)
        }
        (Some(_), Some(_)) => {
            return Err(source.error(
                raw,
                format!("{section}: give `recipients` or `recipients_file`, not both"),
            ));
        }
        (None, None) => {
            return Err(source
                .error(
                    raw,
                    format!(
                        "{section} needs `recipients`, `recipients_file`, `passphrase_env` \
                         or `passphrase_file`"
                    ),
                )
                .with_hint("recipients = [\"age1...\"]: the public keys of `age-keygen`"));
        }
    };
    if let Some(path) = &enc.identity_file
        && path.exists()
    {
        crate::secret::refuse_shared_secret(path).map_err(|e| {
            Error::config(format!(
                "{}: {section}: {}",
                source.origin(raw),
                e.message()
            ))
            .with_hint(format!("chmod 600 {}", path.display()))
        })?;
    }
    Ok(EncryptionSpec {
        recipients: recipients.map(Arc::new),
        identity_file: enc.identity_file.clone(),
        passphrase,
    })
}

/// `retention = { ... }`: counts of at least 1, `max_age` long enough for
/// every bucket rule, and something to keep.
fn validate_retention(
    source: &Source,
    name: &str,
    raw: &Spanned<RawRetention>,
) -> Result<crate::model::RetentionPolicy> {
    use crate::model::{RetentionBucket as Bucket, RetentionPolicy as Policy};
    let r = raw.get_ref();
    let section = format!("jobs.{name}");
    let count = |key: &str, v: &Option<Spanned<i64>>| -> Result<u32> {
        match v {
            None => Ok(0),
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(c) if c >= 1 => Ok(c),
                _ => Err(source
                    .error(
                        n,
                        format!(
                            "[{section}] retention.{key} = {} must be 1 or more",
                            n.get_ref()
                        ),
                    )
                    .with_hint(format!("leave {key} out to not use it"))),
            },
        }
    };
    let mut policy = Policy {
        keep_last: count("keep_last", &r.keep_last)?,
        keep_hourly: count("keep_hourly", &r.keep_hourly)?,
        keep_daily: count("keep_daily", &r.keep_daily)?,
        keep_weekly: count("keep_weekly", &r.keep_weekly)?,
        keep_monthly: count("keep_monthly", &r.keep_monthly)?,
        keep_yearly: count("keep_yearly", &r.keep_yearly)?,
        max_age: None,
        min_keep: count("min_keep", &r.min_keep)?,
    };
    if let Some(age) = &r.max_age {
        let d = duration_of(source, &section, "retention.max_age", age)?;
        if d.is_zero() {
            return Err(source.error(
                age,
                format!("[{section}] retention.max_age must be more than 0"),
            ));
        }
        // A bucket rule that max_age cuts short says one thing and does another.
        for bucket in Bucket::ALL {
            let n = policy.count(bucket);
            if n > 0 && bucket.span(n) > d {
                return Err(source
                    .error(
                        age,
                        format!(
                            "[{section}] retention: {} = {n} reaches back {}, but max_age = {} \
                             deletes everything older",
                            bucket.key(),
                            crate::time::show_std_duration(bucket.span(n)),
                            age.get_ref()
                        ),
                    )
                    .with_hint(format!(
                        "raise max_age to at least {} or lower {}",
                        crate::time::show_std_duration(bucket.span(n)),
                        bucket.key()
                    )));
            }
        }
        policy.max_age = Some(d);
    }
    if policy.is_empty() {
        return Err(source
            .error(
                raw,
                format!("[{section}] retention keeps nothing by itself"),
            )
            .with_hint(
                "set keep_last, keep_hourly, keep_daily, keep_weekly, keep_monthly, keep_yearly \
                 or max_age, e.g. retention = { keep_daily = 30, max_age = \"30d\" }",
            ));
    }
    Ok(policy)
}

fn validate_compression(source: &Source, name: &str, job: &RawJob) -> Result<Compression> {
    let algorithm = job
        .compression
        .as_ref()
        .map_or("zstd", |c| c.get_ref().as_str());
    let level = job.compression_level.as_ref();
    let out_of_range = |range: &str| {
        let at = level.expect("only called with a level");
        source.error(
            at,
            format!(
                "[jobs.{name}] compression_level {} is outside {range}",
                at.get_ref()
            ),
        )
    };
    match algorithm {
        "zstd" => match level.map(|l| *l.get_ref()) {
            None => Ok(Compression::Zstd(Compression::DEFAULT_ZSTD_LEVEL)),
            Some(l @ 1..=19) => Ok(Compression::Zstd(l as i32)),
            Some(_) => Err(out_of_range("1..=19 for zstd")),
        },
        "gzip" => match level.map(|l| *l.get_ref()) {
            None => Ok(Compression::Gzip(Compression::DEFAULT_GZIP_LEVEL)),
            Some(l @ 1..=9) => Ok(Compression::Gzip(l as u32)),
            Some(_) => Err(out_of_range("1..=9 for gzip")),
        },
        "none" => match level {
            None => Ok(Compression::None),
            Some(l) => Err(source.error(
                l,
                format!(
                    "[jobs.{name}] compression_level makes no sense with compression = \"none\""
                ),
            )),
        },
        other => {
            let at = job
                .compression
                .as_ref()
                .expect("a named algorithm comes from the file");
            Err(source
                .error(
                    at,
                    format!("[jobs.{name}] compression '{other}' is not supported"),
                )
                .with_hint("use \"zstd\" (default), \"gzip\" or \"none\""))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{GOOD, check, error_of};

    #[test]
    fn retention_policies_of_the_seeds_parse_and_mistakes_are_named() {
        let with =
            |policy: &str| GOOD.replace("compression = \"gzip\"", &format!("retention = {policy}"));
        // Shiojiri: 30 days of dailies plus 7 days of 6-hourly backups.
        let config = check(&with(
            "{ keep_daily = 30, keep_hourly = 28, max_age = \"30d\" }",
        ))
        .unwrap();
        let (_, job) = config.backup_job("nightly").unwrap();
        let policy = job.retention.as_ref().unwrap();
        assert_eq!((policy.keep_daily, policy.keep_hourly), (30, 28));
        assert_eq!(policy.max_age, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(job.incomplete_after, Duration::from_secs(86_400));
        // camp-backend: 30 days plus 7 days of hourly.
        assert!(
            check(&with(
                "{ keep_daily = 30, keep_hourly = 168, max_age = \"30d\" }"
            ))
            .is_ok()
        );
        for (policy, expected) in [
            ("{}", "retention keeps nothing by itself"),
            ("{ min_keep = 3 }", "retention keeps nothing by itself"),
            (
                "{ keep_daily = 0 }",
                "retention.keep_daily = 0 must be 1 or more",
            ),
            (
                "{ keep_daily = 60, max_age = \"30d\" }",
                "keep_daily = 60 reaches back 60d, but max_age = 30d",
            ),
            (
                "{ keep_monthly = 12, max_age = \"90d\" }",
                "keep_monthly = 12 reaches back",
            ),
            ("{ keep_forever = true }", "unknown key `keep_forever`"),
        ] {
            let e = error_of(&with(policy));
            assert!(e.contains(expected), "{policy}: {e}");
        }
    }

    #[test]
    fn encryption_takes_recipients_and_refuses_mistakes() {
        use std::os::unix::fs::PermissionsExt;
        let public = age::x25519::Identity::generate().to_public().to_string();
        let with =
            |enc: &str| GOOD.replace("compression = \"gzip\"", &format!("encryption = {enc}"));
        let config = check(&with(&format!("{{ recipients = [\"{public}\"] }}"))).unwrap();
        let (_, job) = config.backup_job("nightly").unwrap();
        assert!(job.encryption.is_some());
        let config = check(&with("{ passphrase_env = \"BACKUP_PASSPHRASE\" }")).unwrap();
        let (_, job) = config.backup_job("nightly").unwrap();
        let spec = job.encryption.as_ref().unwrap();
        assert!(spec.passphrase.is_some());
        assert!(!format!("{spec:?}").contains("battery"), "{spec:?}");
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("key.txt");
        std::fs::write(&shared, "AGE-SECRET-KEY-1\n").unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
        for (enc, expected) in [
            (
                "{ recipients = [\"age1nope\"] }".to_owned(),
                "'age1nope' is not an age X25519 recipient",
            ),
            (
                "{}".to_owned(),
                "needs `recipients`, `recipients_file`, `passphrase_env`",
            ),
            (
                format!(
                    "{{ recipients = [\"{public}\"], passphrase_env = \"BACKUP_PASSPHRASE\" }}"
                ),
                "give recipients or a passphrase, not both",
            ),
            (
                "{ passphrase_env = \"UNSET_PASSPHRASE\" }".to_owned(),
                "environment variable UNSET_PASSPHRASE is not set",
            ),
            (
                format!("{{ passphrase_file = \"{}\" }}", shared.display()),
                "others may read it",
            ),
            (
                format!("{{ recipients = [\"{public}\"], recipients_file = \"/x\" }}"),
                "not both",
            ),
            (
                format!(
                    "{{ recipients = [\"{public}\"], identity_file = \"{}\" }}",
                    shared.display()
                ),
                "others may read it",
            ),
            ("{ recipient = [] }".to_owned(), "unknown key `recipient`"),
        ] {
            let e = error_of(&with(&enc));
            assert!(e.contains(expected), "{enc}: {e}");
        }
    }

    #[test]
    fn compression_defaults_to_zstd_level_3() {
        let config = check(&GOOD.replace("compression = \"gzip\"", "")).unwrap();
        let (_, backup) = config.backup_job("nightly").unwrap();
        assert_eq!(backup.compression, Compression::Zstd(3));
    }
}
