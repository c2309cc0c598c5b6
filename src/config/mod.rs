//! Job files: TOML parsed into raw structs, then validated into [`crate::model`].
//!
//! Two stages, as in ripgrep's flags: the raw structs only mirror the file
//! (`deny_unknown_fields`, every value wrapped in `Spanned` so errors can name
//! the line); [`validate`] is the one place that checks references, names
//! secrets and applies defaults. Errors name the file, the line and the key.
//!
//! Secrets are not read here: a [`SecretRef`] says where each one is, and is
//! read when a command needs it (`crate::secret`). So a host without the
//! database's password can still list, verify and prune.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use serde::Deserialize;
use toml::Spanned;

mod expand;
mod maintenance;
mod restore_test;
mod storage;

use crate::error::{Error, Result};
use crate::model::{
    BackupJob, BackupSource, CatchUp, Compression, Config, Database, EncryptionSpec, Job, JobKind,
    Notifier, NotifierKind, Overlap, PruneJob, RunPolicy, StorageSpec,
};
use crate::schedule::Schedule;
use crate::secret::{Origin, Problem, SecretRef, SecretSource};
use storage::{RawStorage, validate_storage};

/// The file name looked for when neither `--config` nor `$BACKUP_CONFIG` is set.
pub const DEFAULT_PATH: &str = "backup.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    timezone: Option<Spanned<String>>,
    #[serde(default)]
    databases: BTreeMap<String, Spanned<RawDatabase>>,
    #[serde(default)]
    storages: BTreeMap<String, Spanned<RawStorage>>,
    #[serde(default)]
    jobs: BTreeMap<String, Spanned<RawJob>>,
    daemon: Option<RawDaemon>,
    #[serde(default)]
    notifications: BTreeMap<String, Spanned<RawNotification>>,
    /// The storage for the run records of this file's jobs that have none.
    reports: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<Spanned<String>>,
    grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotification {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    url_env: Option<Spanned<String>>,
    url_file: Option<Spanned<PathBuf>>,
    on_success: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Spanned<String>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<PathBuf>>,
    pg_bin_dir: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    database: Option<Spanned<String>>,
    storages: Option<Spanned<Vec<Spanned<String>>>>,
    compression: Option<Spanned<String>>,
    compression_level: Option<Spanned<i64>>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    overlap: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    retry_delay: Option<Spanned<String>>,
    catch_up: Option<Spanned<String>>,
    tasks: Option<Spanned<Vec<Spanned<String>>>>,
    all: Option<Spanned<bool>>,
    tables: Option<Spanned<Vec<Spanned<String>>>>,
    exclude: Option<Spanned<Vec<Spanned<String>>>>,
    min_dead_ratio: Option<Spanned<f64>>,
    min_dead_tuples: Option<Spanned<i64>>,
    min_table_size: Option<Spanned<storage::Size>>,
    min_index_bloat: Option<Spanned<f64>>,
    min_table_bloat: Option<Spanned<f64>>,
    lock_timeout: Option<Spanned<String>>,
    lock_retries: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    reindex_concurrently: Option<Spanned<bool>>,
    retention: Option<Spanned<RawRetention>>,
    incomplete_after: Option<Spanned<String>>,
    encryption: Option<Spanned<RawEncryption>>,
    backup_job: Option<Spanned<String>>,
    at: Option<Spanned<String>>,
    target: Option<Spanned<String>>,
    scratch_database: Option<Spanned<String>>,
    checks: Option<Vec<restore_test::RawCheck>>,
    keep_on_failure: Option<Spanned<bool>>,
    jobs: Option<Spanned<i64>>,
    path: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    recipients: Option<Vec<String>>,
    recipients_file: Option<PathBuf>,
    identity_file: Option<PathBuf>,
    passphrase_env: Option<Spanned<String>>,
    passphrase_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    keep_last: Option<Spanned<i64>>,
    keep_hourly: Option<Spanned<i64>>,
    keep_daily: Option<Spanned<i64>>,
    keep_weekly: Option<Spanned<i64>>,
    keep_monthly: Option<Spanned<i64>>,
    keep_yearly: Option<Spanned<i64>>,
    max_age: Option<Spanned<String>>,
    min_keep: Option<Spanned<i64>>,
}

impl RawJob {
    /// The keys that only some job types take, each with where it starts in
    /// the file, when present.
    fn typed_keys(&self) -> Vec<(&'static str, usize)> {
        fn at<T>(key: &'static str, v: &Option<Spanned<T>>) -> Option<(&'static str, usize)> {
            v.as_ref().map(|s| (key, s.span().start))
        }
        [
            at("storages", &self.storages),
            at("compression", &self.compression),
            at("compression_level", &self.compression_level),
            at("tasks", &self.tasks),
            at("all", &self.all),
            at("tables", &self.tables),
            at("exclude", &self.exclude),
            at("min_dead_ratio", &self.min_dead_ratio),
            at("min_dead_tuples", &self.min_dead_tuples),
            at("min_table_size", &self.min_table_size),
            at("min_index_bloat", &self.min_index_bloat),
            at("min_table_bloat", &self.min_table_bloat),
            at("lock_timeout", &self.lock_timeout),
            at("lock_retries", &self.lock_retries),
            at("window", &self.window),
            at("reindex_concurrently", &self.reindex_concurrently),
            at("retention", &self.retention),
            at("incomplete_after", &self.incomplete_after),
            at("encryption", &self.encryption),
            at("backup_job", &self.backup_job),
            at("at", &self.at),
            at("target", &self.target),
            at("scratch_database", &self.scratch_database),
            at("keep_on_failure", &self.keep_on_failure),
            at("jobs", &self.jobs),
            at("path", &self.path),
        ]
        .into_iter()
        .flatten()
        // `checks` is a list of tables, which carry no span of their own.
        .chain(self.checks.as_ref().map(|_| ("checks", 0)))
        .collect()
    }
}

/// The type-specific keys each job type takes.
const BACKUP_KEYS: &[&str] = &[
    "storages",
    "compression",
    "compression_level",
    "retention",
    "incomplete_after",
    "encryption",
];

/// One parsed file, kept with its text so spans turn into line numbers.
struct Source {
    path: PathBuf,
    text: String,
}

impl Source {
    fn origin<T>(&self, spanned: &Spanned<T>) -> Origin {
        self.origin_at(spanned.span().start)
    }

    fn origin_at(&self, offset: usize) -> Origin {
        let line = self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1;
        Origin {
            file: self.path.clone(),
            line,
        }
    }

    fn error<T>(&self, at: &Spanned<T>, message: impl std::fmt::Display) -> Error {
        Error::config(format!("{}: {message}", self.origin(at)))
    }
}

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
    let config = validate(parsed, &|name| std::env::var(name).ok())?;
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

/// The most a job file may hold: real ones are a few KiB, and a bound keeps a
/// wrong `--config` (`/dev/zero`, a log file) from eating the memory.
const MAX_JOB_FILE: u64 = 1 << 20;

/// The text of one job file, which must be a regular file of at most
/// [`MAX_JOB_FILE`] bytes: a device or a FIFO would never end, or block.
fn read_job_file(path: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io_error = |e| Error::io(crate::error::Kind::Config, path.display(), e);
    let hint = "--config takes a job file (a regular file of at most 1 MiB) or a directory of them";
    // Opening a FIFO would wait for a writer: no waiting, and the type is
    // checked on what was opened, so a swap after a check changes nothing.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something other than a regular file"
        };
        return Err(
            Error::config(format!("{}: is {what}, not a job file", path.display())).with_hint(hint),
        );
    }
    let too_big = || {
        Error::config(format!(
            "{}: is larger than the 1 MiB a job file may hold",
            path.display()
        ))
        .with_hint(hint)
    };
    if meta.len() > MAX_JOB_FILE {
        return Err(too_big());
    }
    // It may grow after the check: read one byte past the limit, no more.
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_JOB_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > MAX_JOB_FILE {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|_| {
        Error::config(format!("{}: is not UTF-8 text", path.display()))
            .with_hint("a job file is TOML, which is UTF-8")
    })
}

/// A file is itself; a directory is every `*.toml` in it, in name order.
fn config_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::io(crate::error::Kind::Config, path.display(), e).with_hint(
            "pass --config PATH or set BACKUP_CONFIG to a job file or a directory of them",
        )
    })?;
    if !meta.is_dir() {
        return Ok(vec![path.to_owned()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Error::io(crate::error::Kind::Config, path.display(), e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(crate::error::Kind::Config, path.display(), e))?;
        let p = entry.path();
        // Whatever its type: one that is not a job file is an error, not skipped.
        if p.extension().is_some_and(|e| e == "toml") {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(Error::config(format!(
            "{}: no *.toml files in this directory",
            path.display()
        )));
    }
    Ok(files)
}

fn parse(source: &Source) -> Result<RawFile> {
    toml::from_str(&source.text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let before = &source.text[..span.start.min(source.text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("{}:{line}:{column}", source.path.display())
            }
            None => source.path.display().to_string(),
        };
        let message = e.message().replace("unknown field", "unknown key");
        Error::config(format!("{at}: {message}"))
            .with_hint("see the job file format in README.md; keys are case-sensitive")
    })
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
    resolve_prune_jobs(&mut config)?;
    resolve_restore_tests(&mut config)?;
    give_databases_secret_env(&mut config);
    Ok(config)
}

fn zone_of(source: &Source, zone: &Spanned<String>) -> Result<TimeZone> {
    TimeZone::get(zone.get_ref()).map_err(|_| {
        source
            .error(
                zone,
                format!("timezone '{}' is not a known time zone", zone.get_ref()),
            )
            .with_hint("use an IANA name such as \"Asia/Tokyo\" or \"UTC\"")
    })
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
        other => {
            return Err(source
                .error(
                    &n.kind,
                    format!("[notifications.{name}] type '{other}' is not supported"),
                )
                .with_hint("use \"webhook\" (a JSON POST) or \"slack\" (an incoming webhook)"));
        }
    };
    let section = format!("notifications.{name}");
    let url = secret_ref(source, &section, "url", &n.url_env, &n.url_file)?.ok_or_else(|| {
        source
            .error(raw, format!("[{section}] needs url_env or url_file"))
            .with_hint("webhook URLs carry a token, so they come from the environment or a file")
    })?;
    Ok(Notifier {
        name: name.to_owned(),
        kind,
        url: url.checked(http_url),
        on_success: n.on_success.unwrap_or(false),
    })
}

fn validate_database(source: &Source, name: &str, raw: &Spanned<RawDatabase>) -> Result<Database> {
    let db = raw.get_ref();
    let url = db.url.get_ref();
    let (parsed, tls) = crate::pg::url::parse(url).map_err(|e| {
        source
            .error(
                &db.url,
                format!("[databases.{name}] url is not a valid connection string: {e}"),
            )
            .with_hint("write a libpq URI such as postgresql://user@host:5432/dbname")
    })?;
    // Without a database name libpq (and we) would take PGDATABASE or the
    // user's name: the job would back up whatever the environment says, and
    // its prune would judge the real backups by that.
    if parsed.get_dbname().is_none_or(str::is_empty) {
        return Err(source
            .error(
                &db.url,
                // Never the url itself: it may still hold a password here.
                format!(
                    "[databases.{name}] url {}names no database",
                    if url.trim().is_empty() {
                        "is empty: it "
                    } else {
                        ""
                    }
                ),
            )
            .with_hint(
                "write the database's name in the url, such as postgresql://user@host:5432/dbname: \
                 a job never falls back to PGDATABASE or the user's name",
            ));
    }
    // A CA file that is not there, a client key others may read: said by
    // `config check`, not at the first backup.
    let mut resolved = parsed.clone();
    crate::pg::url::apply_libpq_defaults(&mut resolved);
    if let Err(e) = tls.connector(&resolved) {
        let hint = e.hint().map(str::to_owned);
        let err = source.error(&db.url, format!("[databases.{name}] {}", e.message()));
        return Err(match hint {
            Some(hint) => err.with_hint(hint),
            None => err,
        });
    }
    if parsed.get_password().is_some() {
        return Err(source
            .error(
                &db.url,
                format!("[databases.{name}] url contains a password"),
            )
            .with_hint(
                "move it to password_env or password_file: a password in a url ends up in \
                 process listings and logs",
            ));
    }
    let password = secret_ref(
        source,
        &format!("databases.{name}"),
        "password",
        &db.password_env,
        &db.password_file,
    )?;
    Ok(Database {
        name: name.to_owned(),
        url: url.clone(),
        password_from: password.as_ref().map(SecretRef::describe),
        password,
        pg_bin_dir: db.pg_bin_dir.as_ref().map(|p| p.get_ref().clone()),
        // Known once every file is read: `give_databases_secret_env`.
        secret_env: Arc::default(),
    })
}

/// Points each prune job at its backup job, which must have a retention policy.
fn resolve_prune_jobs(config: &mut Config) -> Result<()> {
    let targets: Vec<(String, String, Origin)> = config
        .jobs
        .values()
        .filter_map(|j| match &j.kind {
            JobKind::Prune(p) => Some((j.name.clone(), p.backup_job.clone(), j.origin.clone())),
            _ => None,
        })
        .collect();
    for (name, target, origin) in targets {
        let resolved = match config.jobs.get(&target).map(|j| &j.kind) {
            Some(JobKind::Backup(b)) if b.retention.is_some() => {
                (b.database().cloned(), b.storages.clone())
            }
            Some(JobKind::Backup(_)) => {
                return Err(Error::config(format!(
                    "{origin}: [jobs.{name}] backup_job = '{target}' has no retention policy"
                ))
                .with_hint(format!(
                    "add e.g. retention = {{ keep_daily = 30, max_age = \"30d\" }} to [jobs.{target}]"
                )));
            }
            _ => {
                let backups: Vec<&str> = config
                    .jobs
                    .values()
                    .filter(|j| matches!(j.kind, JobKind::Backup(_)))
                    .map(|j| j.name.as_str())
                    .collect();
                return Err(Error::config(format!(
                    "{origin}: [jobs.{name}] backup_job = '{target}' is not a backup job"
                ))
                .with_hint(format!("backup jobs: {}", backups.join(", "))));
            }
        };
        if let Some(Job {
            kind: JobKind::Prune(p),
            ..
        }) = config.jobs.get_mut(&name)
        {
            (p.database, p.storages) = resolved;
        }
    }
    Ok(())
}

/// Points each restore-test job at its backup job's storages and, without a
/// `target`, at its database's server.
fn resolve_restore_tests(config: &mut Config) -> Result<()> {
    let tests: Vec<(String, String, Origin)> = config
        .jobs
        .values()
        .filter_map(|j| match &j.kind {
            JobKind::RestoreTest(t) => {
                Some((j.name.clone(), t.backup_job.clone(), j.origin.clone()))
            }
            _ => None,
        })
        .collect();
    for (name, target, origin) in tests {
        let Some(JobKind::Backup(b)) = config.jobs.get(&target).map(|j| &j.kind) else {
            return Err(Error::config(format!(
                "{origin}: [jobs.{name}] backup_job = '{target}' is not a backup job"
            ))
            .with_hint(declared(
                "backup jobs",
                config
                    .jobs
                    .values()
                    .filter(|j| matches!(j.kind, JobKind::Backup(_)))
                    .map(|j| &j.name),
            )));
        };
        let Some(database) = b.database().cloned() else {
            return Err(Error::config(format!(
                "{origin}: [jobs.{name}] backup_job = '{target}' is a files job: a restore test restores a database"
            ))
            .with_hint(format!(
                "`backup verify --job {target}` reads every file of its backups back; \
                 `backup restore --job {target} --latest --target-dir DIR` restores one"
            )));
        };
        let storages = b.storages.clone();
        if let Some(Job {
            kind: JobKind::RestoreTest(t),
            ..
        }) = config.jobs.get_mut(&name)
        {
            if t.target.name.is_empty() {
                t.target = database.clone();
            }
            t.storages = storages;
            // Restoring over the database that was backed up is the one
            // mistake a restore test must never make.
            let source_db = crate::pg::url::parse(&database.url)
                .ok()
                .and_then(|(c, _)| c.get_dbname().map(str::to_owned));
            if t.target.url == database.url
                && t.scratch_database.is_some()
                && t.scratch_database == source_db
            {
                return Err(Error::config(format!(
                    "{origin}: [jobs.{name}] scratch_database = '{}' is the database job {target} backs up",
                    t.scratch_database.as_deref().unwrap_or_default()
                ))
                .with_hint("a restore test drops its scratch database: name one of its own, or leave it unset"));
            }
        }
    }
    Ok(())
}

/// Tells every database which variables the configuration takes secrets
/// from, so the client programs started for it go without them (known only
/// once every file is read), and points each job at its database so told.
fn give_databases_secret_env(config: &mut Config) {
    let mut names: Vec<String> = config
        .secrets()
        .iter()
        .filter_map(|s| s.env_var())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    let names: Arc<[String]> = names.into();
    for db in config.databases.values_mut() {
        Arc::make_mut(db).secret_env = names.clone();
    }
    let databases = config.databases.clone();
    let told = |db: &mut Arc<Database>| {
        if let Some(declared) = databases.get(&db.name) {
            *db = declared.clone();
        }
    };
    for job in config.jobs.values_mut() {
        match &mut job.kind {
            JobKind::Backup(b) => {
                if let BackupSource::Database(db) = &mut b.source {
                    told(db);
                }
            }
            JobKind::Maintenance(m) => told(&mut m.database),
            JobKind::Prune(p) => {
                if let Some(db) = &mut p.database {
                    told(db);
                }
            }
            JobKind::RestoreTest(t) => told(&mut t.target),
        }
    }
}

/// The storage that takes the run records of a file's jobs that have no
/// storage of their own: `reports = "NAME"`, else the first storage the file
/// declares, else none.
fn reports_storage(
    source: &Source,
    raw: &RawFile,
    config: &Config,
) -> Result<Option<Arc<StorageSpec>>> {
    if let Some(name) = &raw.reports {
        return config
            .storages
            .get(name.get_ref())
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                source
                    .error(
                        name,
                        format!(
                            "reports = '{}': no such storage is declared",
                            name.get_ref()
                        ),
                    )
                    .with_hint(declared("storages", config.storages.keys()))
            });
    }
    // Tables come out of the parser sorted by name: their place in the text
    // says which came first.
    Ok(raw
        .storages
        .iter()
        .min_by_key(|(_, s)| s.span().start)
        .and_then(|(name, _)| config.storages.get(name).cloned()))
}

/// Refuses keys that belong to another type of job: a `compression` on a
/// maintenance job is a mistake the operator should hear about.
fn check_keys(
    source: &Source,
    name: &str,
    kind: &str,
    job: &RawJob,
    allowed: &[&str],
) -> Result<()> {
    match job
        .typed_keys()
        .into_iter()
        .find(|(key, _)| !allowed.contains(key))
    {
        None => Ok(()),
        Some((key, at)) => Err(Error::config(format!(
            "{}: [jobs.{name}] `{key}` does not apply to a {kind} job",
            source.origin_at(at)
        ))
        .with_hint(format!(
            "a {kind} job takes {}schedule and the run settings, plus: {}",
            if kind == "files" { "" } else { "database, " },
            allowed.join(", ")
        ))),
    }
}

/// The directory a files job backs up: `path`, absolute, and no `database`.
/// Whether it exists is the run's question: a job file is checked on hosts
/// (a laptop, CI) that do not have it.
fn files_path(source: &Source, name: &str, raw: &Spanned<RawJob>) -> Result<PathBuf> {
    let job = raw.get_ref();
    if let Some(database) = &job.database {
        return Err(source
            .error(
                database,
                format!("[jobs.{name}] `database` does not apply to a files job"),
            )
            .with_hint("a files job backs up the directory `path`; back up a database with type = \"backup\""));
    }
    let path = job.path.as_ref().ok_or_else(|| {
        source
            .error(raw, format!("[jobs.{name}] a files job needs `path`"))
            .with_hint("name the directory to back up: path = \"/srv/app/uploads\"")
    })?;
    let dir = path.get_ref();
    // `..` would hide a path inside the job's own storage from the check.
    if dir
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(source
            .error(
                path,
                format!("[jobs.{name}] path = '{}' has a `..` in it", dir.display()),
            )
            .with_hint("write the directory's own path"));
    }
    if !dir.is_absolute() {
        return Err(source
            .error(
                path,
                format!("[jobs.{name}] path = '{}' is not absolute", dir.display()),
            )
            .with_hint("a daemon's working directory is not the job file's: write the full path"));
    }
    Ok(dir.clone())
}

/// The database a job names, which must be declared.
fn job_database(
    source: &Source,
    name: &str,
    raw: &Spanned<RawJob>,
    config: &Config,
) -> Result<Arc<Database>> {
    let job = raw.get_ref();
    let kind = job.kind.get_ref();
    let database_name = job
        .database
        .as_ref()
        .ok_or_else(|| source.error(raw, format!("[jobs.{name}] a {kind} job needs `database`")))?;
    config
        .databases
        .get(database_name.get_ref())
        .cloned()
        .ok_or_else(|| {
            source
                .error(
                    database_name,
                    format!(
                        "[jobs.{name}] database = '{}': no such database is declared",
                        database_name.get_ref()
                    ),
                )
                .with_hint(declared("databases", config.databases.keys()))
        })
}

fn validate_job(
    source: &Source,
    name: &str,
    raw: &Spanned<RawJob>,
    timezone: TimeZone,
    config: &Config,
    reports: &Option<Arc<StorageSpec>>,
) -> Result<Job> {
    let job = raw.get_ref();
    let timezone = match &job.timezone {
        Some(zone) => zone_of(source, zone)?,
        None => timezone,
    };
    let section = format!("jobs.{name}");
    let schedule = match &job.schedule {
        Some(expr) => Some(
            Schedule::parse(expr.get_ref(), timezone.clone()).map_err(|e| {
                source
                    .error(expr, format!("[{section}] schedule: {e}"))
                    .with_hint(
                        "5 fields: minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\"; \
                         6 with leading seconds; SAT#1 is the first Saturday, L the last day",
                    )
            })?,
        ),
        None => None,
    };
    let mut policy = validate_policy(source, &section, job)?;
    let kind = match job.kind.get_ref().as_str() {
        "backup" => {
            check_keys(source, name, "backup", job, BACKUP_KEYS)?;
            let database = job_database(source, name, raw, config)?;
            JobKind::Backup(validate_backup_job(
                source,
                name,
                raw,
                config,
                BackupSource::Database(database),
            )?)
        }
        "files" => {
            // A backup job's keys, and `path` instead of `database`.
            let keys: Vec<&str> = std::iter::once("path")
                .chain(BACKUP_KEYS.iter().copied())
                .collect();
            check_keys(source, name, "files", job, &keys)?;
            let directory = files_path(source, name, raw)?;
            let spec = validate_backup_job(
                source,
                name,
                raw,
                config,
                BackupSource::Directory(directory.clone()),
            )?;
            // A tar of a tree that holds its own backups grows every day.
            for storage in &spec.storages {
                if let crate::model::StorageKind::Local { path } = &storage.kind
                    && (path.starts_with(&directory) || directory.starts_with(path))
                {
                    return Err(source
                        .error(
                            raw,
                            format!(
                                "[jobs.{name}] path {} and storage {}'s path {} are one inside the other",
                                directory.display(),
                                storage.name,
                                path.display()
                            ),
                        )
                        .with_hint("keep the backups outside the directory they back up, and the directory outside the backups"));
                }
            }
            JobKind::Backup(spec)
        }
        "prune" => {
            check_keys(source, name, "prune", job, &["backup_job"])?;
            let target = job.backup_job.as_ref().ok_or_else(|| {
                source
                    .error(raw, format!("[jobs.{name}] a prune job needs `backup_job`"))
                    .with_hint(
                        "name the backup job whose retention it applies: backup_job = \"nightly\"",
                    )
            })?;
            // Resolved once every job is read: the backup job may come later.
            JobKind::Prune(PruneJob {
                backup_job: target.get_ref().clone(),
                database: None,
                storages: Vec::new(),
            })
        }
        "restore-test" => {
            check_keys(source, name, "restore-test", job, restore_test::KEYS)?;
            JobKind::RestoreTest(restore_test::validate(source, name, raw, config)?)
        }
        "maintenance" => {
            check_keys(source, name, "maintenance", job, maintenance::KEYS)?;
            JobKind::Maintenance(maintenance::validate(
                source,
                name,
                raw,
                job_database(source, name, raw, config)?,
                reports.clone(),
            )?)
        }
        other => {
            return Err(source
                .error(
                    &job.kind,
                    format!("[jobs.{name}] type '{other}' is not supported"),
                )
                .with_hint(
                    "supported job types: backup, files, maintenance, prune, restore-test",
                ));
        }
    };
    // Heavy maintenance holds dumps of its database off while it runs, and
    // REINDEX CONCURRENTLY waits for old transactions without a lock
    // timeout: something must end it.
    if let JobKind::Maintenance(m) = &kind
        && m.is_heavy()
        && policy.timeout.is_none()
    {
        policy.timeout = Some(HEAVY_MAINTENANCE_TIMEOUT);
    }
    Ok(Job {
        name: name.to_owned(),
        timezone,
        origin: source.origin(raw),
        kind,
        schedule,
        policy,
    })
}

/// The `timeout` of a `vacuum-full` or `reindex` job that sets none.
pub const HEAVY_MAINTENANCE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// The value of `raw` among `choices` (the first is the default, as the hint says).
fn one_of<T: Copy>(
    source: &Source,
    section: &str,
    key: &str,
    raw: &Spanned<String>,
    choices: &[(&str, T)],
) -> Result<T> {
    match choices.iter().find(|(name, _)| name == raw.get_ref()) {
        Some((_, value)) => Ok(*value),
        None => {
            let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
            Err(source
                .error(
                    raw,
                    format!("[{section}] {key} = '{}' is not known", raw.get_ref()),
                )
                .with_hint(format!(
                    "use {} (the first is the default)",
                    names.join(" or ")
                )))
        }
    }
}

fn validate_policy(source: &Source, section: &str, job: &RawJob) -> Result<RunPolicy> {
    let mut policy = RunPolicy::default();
    if let Some(overlap) = &job.overlap {
        policy.overlap = one_of(
            source,
            section,
            "overlap",
            overlap,
            &[("skip", Overlap::Skip), ("queue", Overlap::Queue)],
        )?;
    }
    if let Some(catch_up) = &job.catch_up {
        policy.catch_up = one_of(
            source,
            section,
            "catch_up",
            catch_up,
            &[("none", CatchUp::None), ("latest", CatchUp::Latest)],
        )?;
    }
    if let Some(timeout) = &job.timeout {
        let d = duration_of(source, section, "timeout", timeout)?;
        if d.is_zero() {
            return Err(source.error(timeout, format!("[{section}] timeout must be more than 0")));
        }
        policy.timeout = Some(d);
    }
    if let Some(retries) = &job.retries {
        policy.retries = match *retries.get_ref() {
            n @ 0..=20 => n as u32,
            n => {
                return Err(source.error(
                    retries,
                    format!("[{section}] retries = {n} is outside 0..=20"),
                ));
            }
        };
    }
    if let Some(delay) = &job.retry_delay {
        policy.retry_delay = duration_of(source, section, "retry_delay", delay)?;
    }
    Ok(policy)
}

fn validate_backup_job(
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

/// The longest job name: PostgreSQL's longest identifier (63 bytes), so a
/// name derived from a job's (a scratch database, a role) can hold it whole;
/// it is also a DNS label's limit, and far within a storage key's segment
/// (255 bytes on local disks, 1024 for a whole S3 or Azure key).
const MAX_JOB_NAME: usize = crate::pg::url::MAX_IDENTIFIER;

fn is_job_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "reports"
}

/// The secret named by `<key>_env` or `<key>_file` (at most one of them),
/// read when a command needs it.
fn secret_ref(
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

fn passphrase_not_empty(value: &str) -> std::result::Result<(), Problem> {
    if value.is_empty() {
        return Err(Problem::new("the passphrase is empty")
            .with_hint("an empty passphrase protects nothing: set one, or use recipients"));
    }
    Ok(())
}

fn http_url(value: &str) -> std::result::Result<(), Problem> {
    if !(value.starts_with("https://") || value.starts_with("http://")) {
        return Err(
            Problem::new("the url does not start with https:// or http://")
                .with_hint("set the whole webhook url, scheme included"),
        );
    }
    Ok(())
}

fn not_empty(value: &str) -> std::result::Result<(), Problem> {
    if value.is_empty() {
        return Err(Problem::new("the value is empty"));
    }
    Ok(())
}

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

    const GOOD: &str = r#"
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

    fn test_env(name: &str) -> Option<String> {
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
    fn load_text(text: &str, env: EnvLookup) -> Result<Config> {
        let source = Source {
            path: PathBuf::from("jobs/app.toml"),
            text: text.to_owned(),
        };
        let raw = parse(&source)?;
        validate(vec![(&source, raw)], env)
    }

    /// Loads `text`, then reads every secret it names, as `config check
    /// --strict` does: the first that cannot be read is the error.
    fn check(text: &str) -> Result<Config> {
        let config = load_text(text, &test_env)?;
        for secret in config.secrets() {
            secret.resolve_with(&test_env).map_err(|u| u.to_error())?;
        }
        Ok(config)
    }

    fn error_of(text: &str) -> String {
        match check(text) {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e}\nhint: {}", e.hint().unwrap_or("")),
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
    fn unknown_key_names_key_file_and_line() {
        let text = GOOD.replace(
            "compression = \"gzip\"",
            "compression = \"gzip\"\ncolour = \"blue\"",
        );
        let err = error_of(&text);
        assert!(err.contains("jobs/app.toml:17"), "{err}");
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn reference_to_an_undeclared_database_names_the_line() {
        let err = error_of(&GOOD.replace("database = \"app\"", "database = \"ap\""));
        assert!(
            err.starts_with("jobs/app.toml:14: [jobs.nightly] database = 'ap'"),
            "{err}"
        );
        assert!(err.contains("declared databases: app"), "{err}");
    }

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
    fn restore_test_jobs_resolve_their_backup_job_and_checks() {
        use crate::model::TestedBackup;
        let text = format!(
            "{GOOD}\n[databases.scratch]\nurl = \"postgresql://test@127.0.0.1:5433/postgres\"\n\
             \n[jobs.a-test]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\n\
             checks = [{{ sql = \"SELECT count(*) FROM users\", min = 1 }}, \
             {{ name = \"three projects\", sql = \"SELECT count(*) FROM projects\", equals = 3 }}]\n\
             \n[jobs.b-test]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\nat = \"7d\"\n\
             target = \"scratch\"\nscratch_database = \"camp_backend_db_restore_test\"\n\
             keep_on_failure = true\n"
        );
        let config = check(&text).unwrap();
        let job = config.job("a-test").unwrap();
        let JobKind::RestoreTest(t) = &job.kind else {
            panic!("not a restore test")
        };
        assert_eq!(job.records_dir(), "nightly");
        assert_eq!(job.record_storages()[0].name, "disk");
        assert_eq!(t.target.name, "app", "the backup's own server by default");
        assert_eq!(t.at, TestedBackup::Latest);
        assert_eq!(t.checks[0].name, "SELECT count(*) FROM users");
        assert_eq!(t.checks[0].expected(), ">= 1");
        assert_eq!(t.checks[1].name, "three projects");
        assert!(t.checks[1].accepts(3.0) && !t.checks[1].accepts(4.0));
        let JobKind::RestoreTest(b) = &config.job("b-test").unwrap().kind else {
            panic!("not a restore test")
        };
        assert_eq!(b.target.name, "scratch");
        assert_eq!(
            b.at,
            TestedBackup::OlderThan(Duration::from_secs(7 * 86400))
        );
        assert!(b.keep_on_failure);

        for (extra, expected) in [
            ("", "a restore-test job needs `backup_job`"),
            (
                "backup_job = \"nope\"",
                "backup_job = 'nope' is not a backup job",
            ),
            (
                "backup_job = \"nightly\"\nat = \"soon\"",
                "at = 'soon' is not a duration",
            ),
            (
                "backup_job = \"nightly\"\ntarget = \"nope\"",
                "target = 'nope': no such database",
            ),
            (
                "backup_job = \"nightly\"\nscratch_database = \"app\"",
                "scratch_database = 'app' is the database job nightly backs up",
            ),
            (
                "backup_job = \"nightly\"\nscratch_database = \"x\"\ntasks = [\"vacuum\"]",
                "`tasks` does not apply to a restore-test job",
            ),
            (
                "backup_job = \"nightly\"\nchecks = [{ sql = \"SELECT 1\" }]",
                "says nothing to compare with",
            ),
            (
                "backup_job = \"nightly\"\nchecks = [{ sql = \"SELECT 1\", equals = 1, min = 0 }]",
                "not both",
            ),
            (
                "backup_job = \"nightly\"\nchecks = [{ sql = \"SELECT 1\", equal = 1 }]",
                "unknown key `equal`",
            ),
        ] {
            let e = error_of(&format!(
                "{GOOD}\n[jobs.t]\ntype = \"restore-test\"\n{extra}\n"
            ));
            assert!(e.contains(expected), "{extra}: {e}");
        }
        // A check on a backup job is a mistake, named as one.
        let e = error_of(&GOOD.replace(
            "compression = \"gzip\"",
            "checks = [{ sql = \"SELECT 1\", equals = 1 }]",
        ));
        assert!(e.contains("`checks` does not apply to a backup job"), "{e}");
    }

    #[test]
    fn locations_expand_variables_and_an_unset_one_names_its_line() {
        let text = GOOD
            .replace(
                "@127.0.0.1:5432",
                "@${APP_DB_HOST:-db}:${APP_DB_PORT:-5432}",
            )
            .replace("/var/backups/app", "${BACKUP_ROOT:-/var/backups}/app");
        let config = check(&text).unwrap();
        assert_eq!(
            config.databases["app"].url,
            "postgresql://app@10.0.0.5:5432/app"
        );
        match &config.storages["disk"].kind {
            crate::model::StorageKind::Local { path } => {
                assert_eq!(path, Path::new("/var/backups/app"))
            }
            other => panic!("{other:?}"),
        }
        let e = error_of(&GOOD.replace("/var/backups/app", "${BACKUP_ROOT}/app"));
        assert!(
            e.starts_with("jobs/app.toml:10: [storages.disk] path: ${BACKUP_ROOT} is not set"),
            "{e}"
        );
        assert!(e.contains("${NAME:-value}"), "{e}");
        let e = error_of(&GOOD.replace("postgresql://app@127.0.0.1:5432/app", "${APP_DB_URL:-}"));
        assert!(e.contains("[databases.app] url expanded to nothing"), "{e}");
        // Only locations: a `$` elsewhere stays as written.
        let e = error_of(&GOOD.replace("compression = \"gzip\"", "compression = \"${X}\""));
        assert!(e.contains("compression '${X}' is not supported"), "{e}");
    }

    #[test]
    fn files_jobs_take_an_absolute_path_and_are_refused_where_a_database_is_needed() {
        const FILES: &str = "\n[jobs.uploads]\ntype = \"files\"\npath = \"/srv/app/uploads\"\n\
                             storages = [\"disk\"]\nretention = { max_age = \"30d\" }\n";
        let text = format!(
            "{GOOD}{FILES}\n[jobs.uploads-prune]\ntype = \"prune\"\nbackup_job = \"uploads\"\n"
        );
        let config = check(&text).unwrap();
        let job = config.job("uploads").unwrap();
        assert_eq!(job.kind.name(), "files");
        assert!(job.database().is_none());
        let (_, spec) = config.backup_job("uploads").unwrap();
        assert!(
            matches!(&spec.source, BackupSource::Directory(p) if p == Path::new("/srv/app/uploads"))
        );
        // Its prune job locks locally, as the files job does.
        assert!(config.job("uploads-prune").unwrap().database().is_none());
        let e = config.database_backup_job("uploads", "drill").unwrap_err();
        assert!(e.message().contains("job uploads is a files job"), "{e}");
        assert!(e.hint().unwrap_or("").contains("--target-dir"), "{e}");
        for (from, to, expected) in [
            (
                "path = \"/srv/app/uploads\"",
                "",
                "a files job needs `path`",
            ),
            (
                "path = \"/srv/app/uploads\"",
                "path = \"uploads\"",
                "path = 'uploads' is not absolute",
            ),
            (
                "type = \"files\"",
                "type = \"files\"\ndatabase = \"app\"",
                "`database` does not apply to a files job",
            ),
            (
                "path = \"/srv/app/uploads\"",
                "path = \"/var/backups/app/../../srv\"",
                "has a `..` in it",
            ),
            (
                "type = \"files\"",
                "type = \"files\"\ntasks = [\"vacuum\"]",
                "`tasks` does not apply to a files job",
            ),
        ] {
            let e = error_of(&format!("{GOOD}{}", FILES.replace(from, to)));
            assert!(e.contains(expected), "{to}: {e}");
            assert!(e.starts_with("jobs/app.toml:"), "{e}");
        }
        let e = error_of(&format!(
            "{GOOD}{FILES}\n[jobs.t]\ntype = \"restore-test\"\nbackup_job = \"uploads\"\n"
        ));
        assert!(e.contains("backup_job = 'uploads' is a files job"), "{e}");
        let e = error_of(&format!(
            "{GOOD}{}",
            FILES.replace("/srv/app/uploads", "/var/backups")
        ));
        assert!(e.contains("are one inside the other"), "{e}");
    }

    #[test]
    fn prune_jobs_point_at_a_backup_job_with_a_policy() {
        let with_policy = GOOD.replace("compression = \"gzip\"", "retention = { keep_last = 7 }");
        // The prune job's name sorts before the backup job's: resolved after all are read.
        let text =
            format!("{with_policy}\n[jobs.a-prune]\ntype = \"prune\"\nbackup_job = \"nightly\"\n");
        let config = check(&text).unwrap();
        let job = config.job("a-prune").unwrap();
        assert_eq!(job.database().unwrap().name, "app");
        assert_eq!(job.record_storages()[0].name, "disk");
        for (extra, base, expected) in [
            ("", with_policy.as_str(), "a prune job needs `backup_job`"),
            (
                "backup_job = \"nope\"",
                with_policy.as_str(),
                "backup_job = 'nope' is not a backup job",
            ),
            (
                "backup_job = \"nightly\"",
                GOOD,
                "backup_job = 'nightly' has no retention policy",
            ),
            (
                "backup_job = \"nightly\"\ntasks = [\"vacuum\"]",
                with_policy.as_str(),
                "`tasks` does not apply to a prune job",
            ),
        ] {
            let e = error_of(&format!("{base}\n[jobs.tidy]\ntype = \"prune\"\n{extra}\n"));
            assert!(e.contains(expected), "{extra}: {e}");
            assert!(e.starts_with("jobs/app.toml:"), "{e}");
        }
    }

    #[test]
    fn maintenance_jobs_take_their_own_keys_and_defaults() {
        let text = format!(
            "{GOOD}\n[storages.archive]\ntype = \"local\"\npath = \"/a\"\n\n\
             [jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
             tasks = [\"vacuum-analyze\", \"reindex\"]\ntables = [\"public.*\"]\n\
             exclude = [\"audit_log\"]\nmin_dead_ratio = 0.2\nmin_table_size = \"10MiB\"\n\
             lock_timeout = \"2s\"\nwindow = \"22:00-05:00\"\n"
        );
        let config = check(&text).unwrap();
        let job = config.job("tidy").unwrap();
        let JobKind::Maintenance(m) = &job.kind else {
            panic!("not a maintenance job")
        };
        assert_eq!(
            m.tasks,
            [
                crate::model::Task::VacuumAnalyze,
                crate::model::Task::Reindex
            ]
        );
        assert!(m.is_heavy(), "reindex waits for dumps");
        assert_eq!(m.targets.tables, ["public.*"]);
        assert_eq!(m.targets.min_dead_ratio, 0.2);
        assert_eq!(m.targets.min_dead_tuples, 1000);
        assert_eq!(m.targets.min_table_size, 10 << 20);
        assert_eq!(m.lock_timeout, Duration::from_secs(2));
        assert_eq!(m.lock_retries, 2);
        assert_eq!(m.window.unwrap().to_string(), "22:00-05:00");
        assert_eq!(
            job.policy.timeout,
            Some(HEAVY_MAINTENANCE_TIMEOUT),
            "heavy jobs end"
        );
        // The file's first storage in the text, not in name order.
        assert_eq!(job.record_storages()[0].name, "disk");
        assert_eq!(
            config.job("nightly").unwrap().database().unwrap().name,
            "app"
        );
    }

    #[test]
    fn maintenance_mistakes_name_the_key_and_line() {
        let job = |extra: &str| {
            format!("{GOOD}\n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n{extra}\n")
        };
        for (extra, expected) in [
            ("", "a maintenance job needs `tasks`"),
            ("tasks = []", "tasks is empty"),
            (
                "tasks = [\"vacuum\", \"defrag\"]",
                "task 'defrag' is not known",
            ),
            ("tasks = [\"vacuum\", \"vacuum\"]", "lists 'vacuum' twice"),
            (
                "tasks = [\"vacuum\"]\ncompression = \"gzip\"",
                "`compression` does not apply to a maintenance job",
            ),
            (
                "tasks = [\"vacuum\"]\nmin_dead_ratio = 20",
                "min_dead_ratio = 20 is outside 0..=1",
            ),
            (
                "tasks = [\"vacuum\"]\nwindow = \"2am-5am\"",
                "is not a time window",
            ),
            (
                "tasks = [\"vacuum\"]\nlock_timeout = \"0s\"",
                "lock_timeout must be at least 1ms",
            ),
            (
                "tasks = [\"vacuum\"]\ntables = [\"a.b.c\"]",
                "'a.b.c' is not a table pattern",
            ),
        ] {
            let e = error_of(&job(extra));
            assert!(e.contains(expected), "{extra}: {e}");
            assert!(e.starts_with("jobs/app.toml:"), "{e}");
        }
        let e = error_of(&GOOD.replace("compression = \"gzip\"", "tasks = [\"vacuum\"]"));
        assert!(e.contains("`tasks` does not apply to a backup job"), "{e}");
        let e = error_of(&format!("reports = \"nowhere\"\n{GOOD}"));
        assert!(e.contains("reports = 'nowhere': no such storage"), "{e}");
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

    #[test]
    fn a_url_that_names_no_database_is_refused() {
        for url in [
            "",
            "postgresql://app@127.0.0.1:5432",
            "host=127.0.0.1 user=app",
        ] {
            let err = error_of(&GOOD.replace("postgresql://app@127.0.0.1:5432/app", url));
            assert!(err.contains("names no database"), "{url}: {err}");
            assert!(err.contains("jobs/app.toml:5"), "{err}");
        }
        let err = error_of(&GOOD.replace(
            "postgresql://app@127.0.0.1:5432/app",
            "postgresql://app:s3cret@h",
        ));
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn password_in_url_is_refused_without_echoing_it() {
        let err = error_of(&GOOD.replace("app@127", "app:topsecret@127"));
        assert!(err.contains("url contains a password"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
    }

    #[test]
    fn schedules_and_run_policies_resolve() {
        let config = check(&GOOD.replace(
            "compression = \"gzip\"",
            "schedule = \"0 3 * * SAT#1\"\ntimezone = \"Europe/Berlin\"\ntimeout = \"1h30m\"\n\
             retries = 3\nretry_delay = \"10s\"\noverlap = \"queue\"\ncatch_up = \"latest\"\n\n\
             [daemon]\nlisten = \"0.0.0.0:9187\"\ngrace = \"2m\"",
        ))
        .unwrap();
        let job = config.job("nightly").unwrap();
        assert_eq!(job.timezone.iana_name(), Some("Europe/Berlin"));
        assert_eq!(job.schedule.as_ref().unwrap().expression(), "0 3 * * SAT#1");
        assert_eq!(
            job.policy,
            RunPolicy {
                overlap: Overlap::Queue,
                timeout: Some(Duration::from_secs(5400)),
                retries: 3,
                retry_delay: Duration::from_secs(10),
                catch_up: CatchUp::Latest,
            }
        );
        assert_eq!(config.daemon.listen, Some("0.0.0.0:9187".parse().unwrap()));
        assert_eq!(config.daemon.grace, Some(Duration::from_secs(120)));
    }

    #[test]
    fn schedule_and_policy_mistakes_name_the_line() {
        for (extra, expect) in [
            (
                "schedule = \"0 3 * *\"",
                "app.toml:16: [jobs.nightly] schedule: '0 3 * *' has 4 fields",
            ),
            (
                "schedule = \"0 3 * * FUNDAY\"",
                "is not a valid cron expression",
            ),
            (
                "overlap = \"parallel\"",
                "overlap = 'parallel' is not known",
            ),
            ("catch_up = \"all\"", "catch_up = 'all' is not known"),
            ("timeout = \"soon\"", "timeout = 'soon' is not a duration"),
            ("timeout = \"0s\"", "timeout must be more than 0"),
            ("retries = 99", "retries = 99 is outside 0..=20"),
            ("timezone = \"Mars/Base\"", "Mars/Base"),
        ] {
            let err = error_of(&GOOD.replace("compression = \"gzip\"", extra));
            assert!(err.contains(expect), "{extra}: {err}");
        }
        let err = error_of(&format!("{GOOD}\n[daemon]\nlisten = \"localhost\"\n"));
        assert!(
            err.contains("listen = 'localhost' is not an address"),
            "{err}"
        );
        let err = error_of(&format!("{GOOD}\n[notifications.x]\ntype = \"email\"\n"));
        assert!(err.contains("type 'email' is not supported"), "{err}");
        let err = error_of(&format!("{GOOD}\n[notifications.x]\ntype = \"webhook\"\n"));
        assert!(err.contains("needs url_env or url_file"), "{err}");
        let err = error_of(&format!(
            "{GOOD}\n[notifications.x]\ntype = \"webhook\"\nurl_env = \"HOOK\"\n"
        ));
        assert!(
            err.contains("environment variable HOOK is not set"),
            "{err}"
        );
        let err = error_of(&format!(
            "{GOOD}\n[notifications.x]\ntype = \"slack\"\nurl_file = \"/dev/null\"\n"
        ));
        assert!(err.contains("does not start with https://"), "{err}");
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
    fn compression_defaults_to_zstd_level_3() {
        let config = check(&GOOD.replace("compression = \"gzip\"", "")).unwrap();
        let (_, backup) = config.backup_job("nightly").unwrap();
        assert_eq!(backup.compression, Compression::Zstd(3));
    }

    const REMOTE: &str = r#"
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

    fn with_remote(extra: &str) -> String {
        GOOD.replace(
            "[jobs.nightly]",
            &format!("{REMOTE}\n{extra}\n[jobs.nightly]"),
        )
        .replace(
            "storages = [\"disk\"]",
            "storages = [\"disk\", \"s3\", \"blob\"]",
        )
    }

    #[test]
    fn s3_and_azure_storages_resolve_with_defaults_and_secrets() {
        use crate::model::{AzureAuth, Sse, StorageKind};
        let config = check(&with_remote("")).unwrap();
        let (_, backup) = config.backup_job("nightly").unwrap();
        let names: Vec<&str> = backup.storages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["disk", "s3", "blob"]);
        let StorageKind::S3(s3) = &backup.storages[1].kind else {
            panic!("s3")
        };
        assert_eq!(s3.prefix.as_deref(), Some("prod/app"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.part_size, 64 << 20);
        assert_eq!(s3.parts_in_flight, 2);
        assert_eq!(
            s3.sse,
            Some(Sse::Kms {
                key_id: Some("alias/backups".into())
            })
        );
        let keys = s3.keys.as_ref().unwrap();
        assert_eq!(
            keys.secret_access_key
                .resolve_with(&test_env)
                .unwrap()
                .expose(),
            "storage-s3cret"
        );
        assert_eq!(backup.storages[1].retry.attempts, 4);
        assert_eq!(backup.storages[1].retry.max_time.as_secs(), 120);
        assert_eq!(
            backup.storages[1].retry.io_timeout.as_secs(),
            60,
            "the default"
        );
        let StorageKind::Azure(az) = &backup.storages[2].kind else {
            panic!("azure")
        };
        assert_eq!(az.block_size, 4 << 20);
        assert!(matches!(az.auth, AzureAuth::AccountKey(_)));
        assert!(!format!("{config:?}").contains("storage-s3cret"));
    }

    #[test]
    fn remote_storage_mistakes_name_the_key() {
        for (from, to, expect) in [
            ("bucket = \"backups\"\n", "", "needs `bucket`"),
            (
                "part_size = \"64MiB\"",
                "part_size = \"1MiB\"",
                "part_size must be between 5.0 MiB",
            ),
            (
                "part_size = \"64MiB\"",
                "part_size = \"lots\"",
                "part_size is not a size",
            ),
            (
                "sse = \"aws:kms\"",
                "sse = \"AES256\"",
                "kms_key_id needs sse = \"aws:kms\"",
            ),
            ("sse = \"aws:kms\"", "sse = \"rot13\"", "sse 'rot13'"),
            (
                "retry_max_time = \"2m\"",
                "retry_max_time = \"soon\"",
                "not a duration",
            ),
            (
                "endpoint = \"http://127.0.0.1:9000/\"",
                "endpoint = \"127.0.0.1:9000\"",
                "not an http(s) URL",
            ),
            ("secret_access_key_env = \"S3_SECRET\"\n", "", "need both"),
            (
                "access_key_env = \"AZ_KEY\"",
                "access_key_env = \"AZ_KEY\"\nsas_token_env = \"AZ_SAS\"",
                "more than one",
            ),
            (
                "container = \"database-backups\"",
                "container = \"database-backups\"\nbucket = \"x\"",
                "`bucket` does not apply to type = \"azure\"",
            ),
            (
                "path_style = true",
                "path_style = true\npath = \"/x\"",
                "`path` does not apply to type = \"s3\"",
            ),
            (
                "access_key_id_env = \"S3_ID\"",
                "access_key_id_env = \"NOT_SET\"",
                "NOT_SET is not set",
            ),
            (
                "retry_max_time = \"2m\"",
                "retry_max_time = \"2m\"\nio_timeout = \"30s\"\nrequest_timeout = \"1m\"",
                "request_timeout and io_timeout are the same setting",
            ),
            (
                "retry_max_time = \"2m\"",
                "retry_max_time = \"2m\"\nio_timeout = \"0s\"",
                "io_timeout = '0s' is not a duration",
            ),
        ] {
            let text = with_remote("");
            assert!(text.contains(from), "{from}");
            let err = error_of(&text.replace(from, to));
            assert!(err.contains(expect), "{from} -> {to}: {err}");
            assert!(!err.contains("storage-s3cret"), "{err}");
        }
    }

    #[test]
    fn io_timeout_is_set_per_storage_and_request_timeout_is_its_old_name() {
        let text = with_remote("")
            .replace(
                "retry_max_time = \"2m\"",
                "retry_max_time = \"2m\"\nio_timeout = \"90s\"",
            )
            .replace(
                "block_size = \"4 MiB\"",
                "block_size = \"4 MiB\"\nrequest_timeout = \"2m\"",
            );
        let config = check(&text).unwrap();
        let (_, backup) = config.backup_job("nightly").unwrap();
        let timeouts: Vec<u64> = backup
            .storages
            .iter()
            .map(|s| s.retry.io_timeout.as_secs())
            .collect();
        assert_eq!(timeouts, [60, 90, 120]);
        let local = GOOD.replacen(
            "type = \"local\"",
            "type = \"local\"\nio_timeout = \"5m\"",
            1,
        );
        assert!(local.contains("io_timeout"));
        let config = check(&local).unwrap();
        let (_, backup) = config.backup_job("nightly").unwrap();
        assert_eq!(backup.storages[0].retry.io_timeout.as_secs(), 300);
    }

    /// The line of `text` that holds `needle`.
    fn line_of(text: &str, needle: &str) -> usize {
        text[..text.find(needle).unwrap()].matches('\n').count() + 1
    }

    #[test]
    fn bucket_container_and_endpoint_the_service_would_refuse_are_config_errors() {
        let bad = [
            (
                "bucket = \"backups\"",
                "bucket = \"\"",
                "bucket '' is not valid: it must be 3 to 63",
            ),
            (
                "bucket = \"backups\"",
                "bucket = \"..\"",
                "bucket '..' is not valid",
            ),
            ("bucket = \"backups\"", "bucket = \"a..b\"", "two dots"),
            (
                "bucket = \"backups\"",
                "bucket = \"Backups\"",
                "only lowercase",
            ),
            (
                "bucket = \"backups\"",
                "bucket = \"my_backups\"",
                "only lowercase",
            ),
            (
                "bucket = \"backups\"",
                "bucket = \"-backups\"",
                "start and end",
            ),
            (
                "bucket = \"backups\"",
                "bucket = \"192.168.5.4\"",
                "IP address",
            ),
            (
                "container = \"database-backups\"",
                "container = \"\"",
                "container '' is not valid",
            ),
            (
                "container = \"database-backups\"",
                "container = \"db.backups\"",
                "only lowercase",
            ),
            (
                "container = \"database-backups\"",
                "container = \"db--backups\"",
                "two hyphens",
            ),
            (
                "container = \"database-backups\"",
                "container = \"db-\"",
                "start and end",
            ),
            (
                "endpoint = \"http://127.0.0.1:9000/\"",
                "endpoint = \"http://[::1\"",
                "endpoint 'http://[::1' is not a valid URL: invalid IPv6 address",
            ),
            (
                "endpoint = \"http://127.0.0.1:9000/\"",
                "endpoint = \"http://:9000\"",
                "endpoint 'http://:9000' is not a valid URL",
            ),
        ];
        for (from, to, expect) in bad {
            let text = with_remote("").replace(from, to);
            let line = line_of(&text, to);
            let err = error_of(&text);
            let section = if to.starts_with("container") {
                "blob"
            } else {
                "s3"
            };
            let head = format!("jobs/app.toml:{line}: [storages.{section}] ");
            assert!(err.starts_with(&head), "{to}: {err}");
            assert!(err.contains(expect), "{to}: {err}");
            assert!(err.contains("\nhint: "), "{to}: {err}");
        }
        let long = format!("bucket = \"{}\"", "b".repeat(64));
        assert!(
            error_of(&with_remote("").replace("bucket = \"backups\"", &long)).contains("3 to 63")
        );
        for (from, to) in [
            ("bucket = \"backups\"", "bucket = \"my.backups-2026\""),
            (
                "bucket = \"backups\"",
                format!("bucket = \"{}\"", "b".repeat(63)).as_str(),
            ),
            (
                "container = \"database-backups\"",
                "container = \"db-backups-2\"",
            ),
            (
                "endpoint = \"http://127.0.0.1:9000/\"",
                "endpoint = \"http://[::1]:9000\"",
            ),
            (
                "endpoint = \"http://127.0.0.1:9000/\"",
                "endpoint = \"https://minio.internal\"",
            ),
        ] {
            let text = with_remote("").replace(from, to);
            assert!(check(&text).is_ok(), "{to}: {:?}", check(&text).err());
        }
    }

    #[test]
    fn a_job_name_longer_than_a_postgresql_identifier_is_refused() {
        let long = "n".repeat(300);
        let text = GOOD.replace("[jobs.nightly]", &format!("[jobs.{long}]"));
        let err = error_of(&text);
        let line = line_of(&text, "[jobs.");
        assert!(
            err.starts_with(&format!("jobs/app.toml:{line}: [jobs.{}...]: a job name may be at most 63 characters, and this one has 300", "n".repeat(20))),
            "{err}"
        );
        let fits = "n".repeat(63);
        assert!(check(&GOOD.replace("[jobs.nightly]", &format!("[jobs.{fits}]"))).is_ok());
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
