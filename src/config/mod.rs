//! Job files: TOML parsed into raw structs, then validated into [`crate::model`].
//!
//! Two stages, as in ripgrep's flags: the raw structs only mirror the file
//! (`deny_unknown_fields`, every value wrapped in `Spanned` so errors can name
//! the line); [`validate`] is the one place that checks references, names
//! secrets and applies defaults. Errors name the file, the line and the key.
//!
//! Secrets are not read here: a [`SecretRef`](crate::secret::SecretRef) says
//! where each one is, and is read when a command needs it (`crate::secret`).
//! So a host without the database's password can still list, verify and prune.
//!
//! The rooms, in the order a file goes through them:
//! - `sources`: finding the files, reading and parsing each one;
//! - `raw`: the raw structs the parser fills;
//! - `expand`: `${NAME}` in the locations (urls, paths);
//! - here: [`validate`]'s order, and the file-wide settings (`timezone`,
//!   `[daemon]`, `[notifications.NAME]`);
//! - `databases`, `storage`: the sections jobs refer to;
//! - `jobs`: what every job has; `backup`, `maintenance` and `restore_test`:
//!   the options of each type;
//! - `secrets`: the `<key>_env` and `<key>_file` of every section;
//! - `references`: what is resolved once every file is read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use toml::Spanned;

mod backup;
mod databases;
mod expand;
mod jobs;
mod maintenance;
mod raw;
mod references;
mod restore_test;
mod secrets;
mod sources;
mod storage;
#[cfg(test)]
mod testing;

pub use jobs::HEAVY_MAINTENANCE_TIMEOUT;

use crate::error::{Error, Result};
use crate::model::{Config, Email, Notifier, NotifierKind, SmtpSecurity};
use crate::secret::Origin;
use databases::validate_database;
use jobs::{MAX_JOB_NAME, is_job_name, validate_job};
use raw::{RawFile, RawNotification};
use references::{
    give_databases_secret_env, reports_storage, resolve_prune_jobs, resolve_restore_tests,
};
use secrets::{http_url, not_empty, secret_ref};
use sources::{Source, config_files, parse, read_job_file};
use storage::validate_storage;

/// The file name looked for when neither `--config` nor `$BACKUP_CONFIG` is set.
pub const DEFAULT_PATH: &str = "backup.toml";

/// Where to read the configuration: `--config`, else `$BACKUP_CONFIG`, else
/// `./backup.toml`. The caller resolves the first two (clap reads the env var).
pub fn load(path: Option<&Path>) -> Result<Config> {
    let path = path.unwrap_or(Path::new(DEFAULT_PATH));
    let files = config_files(path)?;
    let is_dir = path.is_dir();
    let mut sources = Vec::with_capacity(files.len());
    for file in files {
        let text = read_job_file(&file)?;
        sources.push(Source { path: file, text });
    }
    let parsed = sources
        .iter()
        .map(|s| parse(s).map(|raw| (s, raw)))
        .collect::<Result<Vec<_>>>()?;
    let mut config = validate(parsed, &|name| std::env::var(name).ok())?;
    config.source = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    // Files of shared databases and storages are fine in a directory, but
    // one of them must run something: else every command has nothing to do.
    if is_dir && config.jobs.is_empty() {
        return Err(Error::config(format!(
            "{}: its *.toml files declare no job",
            path.display()
        ))
        .with_hint(
            "add a [jobs.NAME] table to one of them; see the job file format in README.md",
        ));
    }
    Ok(config)
}

/// Secrets and the environment come in through `env`, so tests need not touch
/// the process environment.
type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn validate(mut files: Vec<(&Source, RawFile)>, env: EnvLookup) -> Result<Config> {
    for (source, raw) in files.iter_mut() {
        // An empty file (or a truncated one) must not pass as "OK: 0 jobs".
        if raw.jobs.is_empty()
            && raw.databases.is_empty()
            && raw.storages.is_empty()
            && raw.notifications.is_empty()
            && raw.daemon.is_none()
        {
            return Err(Error::config(format!(
                "{}: declares no job, database or storage",
                source.path.display()
            ))
            .with_hint(
                "a job file declares [jobs.NAME] tables; see the job file format in README.md",
            ));
        }
        expand::locations(source, raw, env)?;
    }
    let mut config = Config::default();
    let mut seen: BTreeMap<String, Origin> = BTreeMap::new();
    let mut check_unique = |section: &str, name: &str, origin: Origin| -> Result<()> {
        let key = format!("{section}.{name}");
        if let Some(first) = seen.get(&key) {
            return Err(Error::config(format!(
                "{origin}: [{key}] is declared twice (first at {first})"
            )));
        }
        seen.insert(key, origin);
        Ok(())
    };

    // Databases and storages first: jobs in any file may refer to them.
    for (source, raw) in &files {
        for (name, db) in &raw.databases {
            check_unique("databases", name, source.origin(db))?;
            let db = validate_database(source, name, db)?;
            config.databases.insert(name.clone(), Arc::new(db));
        }
        for (name, storage) in &raw.storages {
            check_unique("storages", name, source.origin(storage))?;
            let spec = validate_storage(source, name, storage)?;
            config.storages.insert(name.clone(), Arc::new(spec));
        }
    }
    for (source, raw) in &files {
        validate_daemon(source, raw, &mut config)?;
        for (name, notification) in &raw.notifications {
            check_unique("notifications", name, source.origin(notification))?;
            let notifier = validate_notification(source, name, notification)?;
            config.notifiers.push(Arc::new(notifier));
        }
        let timezone = match &raw.timezone {
            Some(zone) => zone_of(source, zone)?,
            None => TimeZone::system(),
        };
        let reports = reports_storage(source, raw, &config)?;
        for (name, job) in &raw.jobs {
            check_unique("jobs", name, source.origin(job))?;
            if !is_job_name(name) {
                return Err(source
                    .error(
                        job,
                        format!("[jobs.{name}]: a job name is used in storage paths"),
                    )
                    .with_hint(
                        "use letters, digits, '-', '_' and '.', starting with a letter or digit",
                    ));
            }
            if name.len() > MAX_JOB_NAME {
                let start: String = name.chars().take(20).collect();
                return Err(source
                    .error(
                        job,
                        format!(
                            "[jobs.{start}...]: a job name may be at most {MAX_JOB_NAME} \
                             characters, and this one has {}",
                            name.len()
                        ),
                    )
                    .with_hint("choose a shorter name"));
            }
            let job = validate_job(source, name, job, timezone.clone(), &config, &reports)?;
            config.jobs.insert(name.clone(), job);
        }
    }
    check_notified_jobs(&files, &config)?;
    resolve_prune_jobs(&mut config)?;
    resolve_restore_tests(&mut config)?;
    give_databases_secret_env(&mut config);
    Ok(config)
}

fn zone_of(source: &Source, zone: &Spanned<String>) -> Result<TimeZone> {
    if let Some(tz) = zone_file(zone.get_ref()) {
        return Ok(tz);
    }
    TimeZone::get(zone.get_ref()).map_err(|_| {
        source
            .error(
                zone,
                format!("timezone '{}' is not a known time zone", zone.get_ref()),
            )
            .with_hint("use an IANA name such as \"Asia/Tokyo\" or \"UTC\"")
    })
}

/// The zone named `name` read from its own file in the system's zoneinfo,
/// when it has one: the file `TimeZone::get` would use. Every command loads
/// the job file, and `restore_command` runs one a WAL segment; `get` looks
/// a name up by walking the whole zoneinfo tree first (for names spelled
/// in another case), a millisecond each time.
fn zone_file(name: &str) -> Option<TimeZone> {
    if name == "UTC" {
        return Some(TimeZone::UTC);
    }
    let plain = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
    };
    // `right/` and `posix/` are copies with other rules that `get` does not list.
    if !name.split('/').all(plain) || name.starts_with("right/") || name.starts_with("posix/") {
        return None;
    }
    let dir = std::env::var_os("TZDIR")
        .map(std::path::PathBuf::from)
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| "/usr/share/zoneinfo".into());
    let bytes = std::fs::read(dir.join(name)).ok()?;
    TimeZone::tzif(name, &bytes).ok()
}

fn duration_of(
    source: &Source,
    section: &str,
    key: &str,
    raw: &Spanned<String>,
) -> Result<Duration> {
    crate::time::parse_duration(raw.get_ref()).ok_or_else(|| {
        source
            .error(
                raw,
                format!("[{section}] {key} = '{}' is not a duration", raw.get_ref()),
            )
            .with_hint("write a number and a unit, such as \"90s\", \"30m\", \"2h\" or \"1h30m\"")
    })
}

fn validate_daemon(source: &Source, raw: &RawFile, config: &mut Config) -> Result<()> {
    let Some(daemon) = &raw.daemon else {
        return Ok(());
    };
    if let Some(listen) = &daemon.listen {
        if config.daemon.listen.is_some() {
            return Err(source.error(listen, "[daemon] listen is set in two files; keep one"));
        }
        let addr = listen.get_ref().parse().map_err(|_| {
            source
                .error(
                    listen,
                    format!("[daemon] listen = '{}' is not an address", listen.get_ref()),
                )
                .with_hint("write an IP address and a port, such as \"127.0.0.1:9187\"")
        })?;
        config.daemon.listen = Some(addr);
    }
    if let Some(grace) = &daemon.grace {
        if config.daemon.grace.is_some() {
            return Err(source.error(grace, "[daemon] grace is set in two files; keep one"));
        }
        config.daemon.grace = Some(duration_of(source, "daemon", "grace", grace)?);
    }
    if let Some(var) = &daemon.token_env {
        if config.daemon.token.is_some() {
            return Err(source.error(var, "[daemon] token_env is set in two files; keep one"));
        }
        config.daemon.token = secret_ref(source, "daemon", "token", &daemon.token_env, &None)?
            .map(|token| token.checked(secrets::daemon_token));
    }
    Ok(())
}

fn validate_notification(
    source: &Source,
    name: &str,
    raw: &Spanned<RawNotification>,
) -> Result<Notifier> {
    let n = raw.get_ref();
    let kind = match n.kind.get_ref().as_str() {
        "webhook" => NotifierKind::Webhook,
        "slack" => NotifierKind::Slack,
        "teams" => NotifierKind::Teams,
        "discord" => NotifierKind::Discord,
        "ping" => NotifierKind::Ping,
        "email" => NotifierKind::Email,
        other => {
            return Err(source
                .error(
                    &n.kind,
                    format!("[notifications.{name}] type '{other}' is not supported"),
                )
                .with_hint(
                    "use \"webhook\" (a JSON POST), \"slack\", \"teams\" or \"discord\" (their \
                     webhooks), \"ping\" (a healthchecks-style check) or \"email\" (SMTP)",
                ));
        }
    };
    let section = format!("notifications.{name}");
    let not_here = |key: &str, at: std::ops::Range<usize>| {
        Error::config(format!(
            "{}: [{section}] `{key}` does not apply to a {} notification",
            source.origin_at(at.start),
            kind.name()
        ))
    };
    let jobs = n.jobs.as_ref().map(|jobs| {
        jobs.get_ref()
            .iter()
            .map(|j| j.get_ref().clone())
            .collect::<Vec<_>>()
    });
    if kind == NotifierKind::Email {
        if let Some(url) = n.url_env.as_ref() {
            return Err(not_here("url_env", url.span()));
        }
        if let Some(url) = n.url_file.as_ref() {
            return Err(not_here("url_file", url.span()));
        }
        return Ok(Notifier {
            name: name.to_owned(),
            kind,
            url: None,
            email: Some(validate_email(source, &section, raw)?),
            on_success: n.on_success.unwrap_or(false),
            jobs,
        });
    }
    for (key, at) in [
        ("smtp", n.smtp.as_ref().map(|v| v.span())),
        ("from", n.from.as_ref().map(|v| v.span())),
        ("to", n.to.as_ref().map(|v| v.span())),
        ("username_env", n.username_env.as_ref().map(|v| v.span())),
        ("username_file", n.username_file.as_ref().map(|v| v.span())),
        ("password_env", n.password_env.as_ref().map(|v| v.span())),
        ("password_file", n.password_file.as_ref().map(|v| v.span())),
    ] {
        if let Some(at) = at {
            return Err(not_here(key, at));
        }
    }
    if n.insecure.is_some() {
        return Err(source
            .error(
                raw,
                format!("[{section}] `insecure` applies to e-mail only"),
            )
            .with_hint("leave it out"));
    }
    let url = secret_ref(source, &section, "url", &n.url_env, &n.url_file)?.ok_or_else(|| {
        source
            .error(raw, format!("[{section}] needs url_env or url_file"))
            .with_hint("webhook URLs carry a token, so they come from the environment or a file")
    })?;
    Ok(Notifier {
        name: name.to_owned(),
        kind,
        url: Some(url.checked(http_url)),
        email: None,
        on_success: n.on_success.unwrap_or(false),
        jobs,
    })
}

/// `type = "email"`: `smtp = "smtp[s]://host[:port]"`, `from`, `to`, and
/// the credentials from the environment or files.
fn validate_email(source: &Source, section: &str, raw: &Spanned<RawNotification>) -> Result<Email> {
    let n = raw.get_ref();
    let Some(smtp) = &n.smtp else {
        return Err(source
            .error(raw, format!("[{section}] needs smtp"))
            .with_hint(
                "smtp = \"smtp://mail.example.com:587\" (STARTTLS) or \"smtps://...:465\"",
            ));
    };
    let (security, rest, default_port) = match smtp.get_ref().split_once("://") {
        Some(("smtp", rest)) => (SmtpSecurity::StartTls, rest, 587),
        Some(("smtps", rest)) => (SmtpSecurity::Tls, rest, 465),
        _ => {
            return Err(source
                .error(
                    smtp,
                    format!("[{section}] smtp is not an smtp:// or smtps:// address"),
                )
                .with_hint(
                    "smtp = \"smtp://mail.example.com:587\" (STARTTLS) or \"smtps://...:465\"",
                ));
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(source
            .error(
                smtp,
                format!("[{section}] smtp holds a user name or password"),
            )
            .with_hint(
                "put them in username_env/password_env (or *_file), never in the job file",
            ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse::<u16>().ok()),
        _ => (rest, Some(default_port)),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let (Some(port), false) = (
        port.filter(|p| *p > 0),
        host.is_empty() || host.contains('/'),
    ) else {
        return Err(source
            .error(
                smtp,
                format!("[{section}] smtp has no host and port that read"),
            )
            .with_hint("smtp = \"smtp://mail.example.com:587\""));
    };
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if security == SmtpSecurity::Tls && n.insecure.is_some() {
        return Err(source
            .error(
                smtp,
                format!("[{section}] insecure applies to smtp:// only"),
            )
            .with_hint("smtps:// is TLS from the start: leave insecure out"));
    }
    let security = match security {
        SmtpSecurity::StartTls if loopback || n.insecure == Some(true) => {
            SmtpSecurity::StartTlsIfOffered
        }
        s => s,
    };
    let credentials = n.username_env.is_some() || n.username_file.is_some();
    if security == SmtpSecurity::StartTlsIfOffered && !loopback && credentials {
        return Err(source
            .error(
                smtp,
                format!(
                    "[{section}] insecure = true with a login: the password could cross the \
                     network in plain text"
                ),
            )
            .with_hint("use a server that offers STARTTLS (leave insecure out), or no login"));
    }
    let from = n.from.as_ref().ok_or_else(|| {
        source
            .error(raw, format!("[{section}] needs from"))
            .with_hint("from = \"backup@example.com\"")
    })?;
    let address = |value: &Spanned<String>| -> Result<String> {
        value
            .get_ref()
            .parse::<lettre::Address>()
            .map(|_| value.get_ref().clone())
            .map_err(|e| {
                source.error(
                    value,
                    format!(
                        "[{section}] '{}' is not an e-mail address: {e}",
                        value.get_ref()
                    ),
                )
            })
    };
    let from = address(from)?;
    let to = match &n.to {
        Some(to) if !to.get_ref().is_empty() => to
            .get_ref()
            .iter()
            .map(address)
            .collect::<Result<Vec<_>>>()?,
        _ => {
            return Err(source
                .error(
                    raw,
                    format!("[{section}] needs to = [...], one address or more"),
                )
                .with_hint("to = [\"ops@example.com\"]"));
        }
    };
    let username = secret_ref(
        source,
        section,
        "username",
        &n.username_env,
        &n.username_file,
    )?;
    let password = secret_ref(
        source,
        section,
        "password",
        &n.password_env,
        &n.password_file,
    )?;
    if username.is_some() != password.is_some() {
        return Err(source
            .error(
                raw,
                format!("[{section}] sets a user name or a password without the other"),
            )
            .with_hint("set both (username_env and password_env), or neither"));
    }
    Ok(Email {
        host: host.to_owned(),
        port,
        security,
        from,
        to,
        username: username.map(|u| u.checked(not_empty)),
        password: password.map(|p| p.checked(not_empty)),
    })
}

/// Every `jobs = [...]` of a notification names a declared job.
fn check_notified_jobs(files: &[(&Source, RawFile)], config: &Config) -> Result<()> {
    for (source, raw) in files {
        for (name, notification) in &raw.notifications {
            let Some(jobs) = &notification.get_ref().jobs else {
                continue;
            };
            if jobs.get_ref().is_empty() {
                return Err(source
                    .error(
                        jobs,
                        format!("[notifications.{name}] jobs = [] follows no job"),
                    )
                    .with_hint("name the jobs it is for, or leave jobs out for every job"));
            }
            if let Some(job) = jobs
                .get_ref()
                .iter()
                .find(|j| !config.jobs.contains_key(j.get_ref()))
            {
                return Err(source
                    .error(
                        job,
                        format!(
                            "[notifications.{name}] jobs names '{}', which is not a declared job",
                            job.get_ref()
                        ),
                    )
                    .with_hint(declared("jobs", config.jobs.keys())));
            }
        }
    }
    Ok(())
}

/// A hint naming what is declared: `declared storages: disk, s3`.
fn declared<'a>(what: &str, names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<&str> = names.map(String::as_str).collect();
    if names.is_empty() {
        format!("the configuration declares no {what}")
    } else {
        format!("declared {what}: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::{GOOD, check, error_of, test_env};
    use crate::model::Compression;

    #[test]
    fn a_zone_read_from_its_file_is_the_zone_get_finds() {
        let at: jiff::Timestamp = "2024-07-01T00:00:00Z".parse().unwrap();
        for name in ["Asia/Tokyo", "Europe/Berlin", "America/New_York", "UTC"] {
            let fast = zone_file(name).unwrap();
            let slow = TimeZone::get(name).unwrap();
            assert_eq!(fast.to_offset(at), slow.to_offset(at), "{name}");
            assert_eq!(fast.iana_name(), Some(name));
        }
        // Left to `get`: another case, and anything that is not a plain name.
        for name in [
            "asia/tokyo",
            "../etc/passwd",
            "/etc/localtime",
            "Asia//Tokyo",
            "",
            "right/Asia/Tokyo",
        ] {
            assert!(zone_file(name).is_none(), "{name}");
        }
    }

    #[test]
    fn a_good_file_resolves_every_reference() {
        let config = check(GOOD).unwrap();
        let (job, backup) = config.backup_job("nightly").unwrap();
        assert_eq!(job.timezone.iana_name(), Some("Asia/Tokyo"));
        assert_eq!(job.origin.line, 12);
        assert_eq!(
            backup
                .database()
                .unwrap()
                .password
                .as_ref()
                .unwrap()
                .resolve_with(&test_env)
                .unwrap()
                .expose(),
            "s3cret-from-env"
        );
        assert_eq!(backup.storages[0].name, "disk");
        assert_eq!(backup.compression, Compression::Gzip(6));
        assert!(!format!("{config:?}").contains("s3cret-from-env"));
    }

    #[test]
    fn bad_values_are_rejected() {
        for (from, to, expect) in [
            ("\"gzip\"", "\"lz4\"", "compression 'lz4'"),
            ("\"Asia/Tokyo\"", "\"Mars/Olympus\"", "Mars/Olympus"),
            ("/var/backups/app", "relative/dir", "must be absolute"),
            ("type = \"local\"", "type = \"ftp\"", "type 'ftp'"),
            (
                "storages = [\"disk\"]",
                "storages = [\"disk\", \"disk\"]",
                "twice",
            ),
        ] {
            let err = error_of(&GOOD.replace(from, to));
            assert!(err.contains(expect), "{from} -> {to}: {err}");
        }
    }

    #[test]
    fn a_file_that_declares_nothing_is_an_error() {
        for text in ["", "\n# nothing yet\n", "timezone = \"UTC\"\n"] {
            let err = error_of(text);
            assert!(
                err.starts_with("jobs/app.toml: declares no job, database or storage"),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn a_directory_whose_files_declare_no_job_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let shared = "[storages.disk]\ntype = \"local\"\npath = \"/var/backups/app\"\n";
        std::fs::write(dir.path().join("storages.toml"), shared).unwrap();
        let err = load(Some(dir.path())).unwrap_err();
        assert_eq!(
            err.message(),
            format!("{}: its *.toml files declare no job", dir.path().display())
        );
        assert_eq!(err.kind(), crate::error::Kind::Config);
        // One file of them empty: named.
        std::fs::write(dir.path().join("empty.toml"), "").unwrap();
        let err = load(Some(dir.path())).unwrap_err();
        assert_eq!(
            err.message(),
            format!(
                "{}: declares no job, database or storage",
                dir.path().join("empty.toml").display()
            )
        );
    }
}
