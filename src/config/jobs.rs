//! `[jobs.NAME]`: what every job has (a type, a schedule, a zone, the run
//! policy), the keys each type takes, and the database or directory it
//! works on. The rest of each type is in its own room.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use toml::Spanned;

use super::backup::validate_backup_job;
use super::raw::RawJob;
use super::sources::Source;
use super::{declared, duration_of, maintenance, restore_test, zone_of};
use crate::error::{Error, Result};
use crate::model::{
    BackupSource, CatchUp, Config, Database, Job, JobKind, Overlap, PruneJob, RunPolicy,
    StorageSpec, WalSettings,
};
use crate::schedule::Schedule;

/// The type-specific keys each job type takes.
pub(super) const BACKUP_KEYS: &[&str] = &[
    "storages",
    "compression",
    "compression_level",
    "retention",
    "incomplete_after",
    "encryption",
];

/// What a physical job takes beyond a backup job's keys.
const WAL_KEYS: &[&str] = &[
    "wal_push_ahead",
    "wal_fetch_ahead",
    "wal_queue_max",
    "wal_max_age",
    "wal_wait",
    "spool_path",
    "incremental",
    "full_every",
];

/// The WAL archive settings of a physical job, defaults filled in.
fn wal_settings(source: &Source, name: &str, job: &RawJob) -> Result<WalSettings> {
    let section = format!("jobs.{name}");
    let mut wal = WalSettings::default();
    let count = |key: &str, raw: &Option<Spanned<i64>>, default: u32| -> Result<u32> {
        match raw {
            None => Ok(default),
            Some(n) => u32::try_from(*n.get_ref())
                .ok()
                .filter(|n| *n <= 64)
                .ok_or_else(|| {
                    source
                        .error(
                            n,
                            format!("[{section}] {key} = {}: out of range", n.get_ref()),
                        )
                        .with_hint("0 (one segment at a time) to 64")
                }),
        }
    };
    wal.push_ahead = count("wal_push_ahead", &job.wal_push_ahead, wal.push_ahead)?;
    wal.fetch_ahead = count("wal_fetch_ahead", &job.wal_fetch_ahead, wal.fetch_ahead)?;
    if let Some(raw) = &job.wal_queue_max {
        let bytes = raw.get_ref().bytes().filter(|b| *b > 0).ok_or_else(|| {
            source
                .error(raw, format!("[{section}] wal_queue_max is not a size"))
                .with_hint("a size such as \"8GiB\"; leave it out to never drop WAL")
        })?;
        wal.queue_max = Some(bytes);
    }
    if let Some(raw) = &job.wal_max_age {
        wal.max_age = duration_of(source, &section, "wal_max_age", raw)?;
    }
    if let Some(raw) = &job.wal_wait {
        wal.wait = duration_of(source, &section, "wal_wait", raw)?;
    }
    if let Some(raw) = &job.spool_path {
        let path = raw.get_ref();
        if !path.is_absolute() {
            return Err(source
                .error(
                    raw,
                    format!(
                        "[{section}] spool_path = '{}' is not absolute",
                        path.display()
                    ),
                )
                .with_hint(
                    "PostgreSQL runs `wal push` in its data directory: write the full path",
                ));
        }
        wal.spool = path.clone();
    }
    let incremental = job.incremental.as_ref().is_some_and(|b| *b.get_ref());
    match (&job.full_every, incremental) {
        (None, true) => wal.incremental = Some(WalSettings::DEFAULT_FULL_EVERY),
        (None, false) => {}
        (Some(raw), false) => {
            return Err(source
                .error(
                    raw,
                    format!("[{section}] full_every applies to incremental base backups only"),
                )
                .with_hint("add incremental = true (PostgreSQL 17+), or leave full_every out"));
        }
        (Some(raw), true) => {
            let n = u32::try_from(*raw.get_ref())
                .ok()
                .filter(|n| (2..=64).contains(n))
                .ok_or_else(|| {
                    source
                        .error(
                            raw,
                            format!("[{section}] full_every = {}: out of range", raw.get_ref()),
                        )
                        .with_hint(
                            "2 (a full, then one incremental) to 64: every restore combines \
                             the whole chain, and its full backup is kept as long as any of it",
                        )
                })?;
            wal.incremental = Some(n);
        }
    }
    Ok(wal)
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

pub(super) fn validate_job(
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
        "physical" => {
            let keys: Vec<&str> = BACKUP_KEYS.iter().chain(WAL_KEYS).copied().collect();
            check_keys(source, name, "physical", job, &keys)?;
            let database = job_database(source, name, raw, config)?;
            let wal = wal_settings(source, name, job)?;
            let spec = validate_backup_job(
                source,
                name,
                raw,
                config,
                BackupSource::Cluster { database, wal },
            )?;
            if let (Some(e), Some(at)) = (
                spec.encryption.as_ref().filter(|e| e.passphrase.is_some()),
                job.encryption.as_ref(),
            ) {
                let _ = e;
                return Err(source
                    .error(
                        at,
                        format!("[jobs.{name}] a physical job cannot encrypt with a passphrase"),
                    )
                    .with_hint(
                        "age spends a second of scrypt on every passphrase-sealed object, and \
                         PostgreSQL waits for each WAL segment: use recipients = [\"age1...\"] \
                         (age-keygen) and keep the identity off the database host",
                    ));
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
                    "supported job types: backup, files, physical, maintenance, prune, restore-test",
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

/// The longest job name: PostgreSQL's longest identifier (63 bytes), so a
/// name derived from a job's (a scratch database, a role) can hold it whole;
/// it is also a DNS label's limit, and far within a storage key's segment
/// (255 bytes on local disks, 1024 for a whole S3 or Azure key).
pub(super) const MAX_JOB_NAME: usize = crate::pg::url::MAX_IDENTIFIER;

pub(super) fn is_job_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name != "reports"
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::testing::{GOOD, check, error_of, line_of, load_text, test_env};

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
    fn incremental_base_backups_take_a_chain_length_and_only_physical_jobs_take_them() {
        const BASE: &str = "\n[jobs.base]\ntype = \"physical\"\ndatabase = \"app\"\n\
                            storages = [\"disk\"]\n";
        let wal = |text: &str| {
            let config = check(&format!("{GOOD}{BASE}{text}")).unwrap();
            let (_, spec) = config.backup_job("base").unwrap();
            spec.cluster().unwrap().1.incremental
        };
        assert_eq!(wal(""), None);
        assert_eq!(wal("incremental = false\n"), None);
        assert_eq!(
            wal("incremental = true\n"),
            Some(WalSettings::DEFAULT_FULL_EVERY)
        );
        assert_eq!(wal("incremental = true\nfull_every = 2\n"), Some(2));
        for (text, expected) in [
            (
                "full_every = 5\n",
                "full_every applies to incremental base backups only",
            ),
            (
                "incremental = true\nfull_every = 1\n",
                "full_every = 1: out of range",
            ),
            (
                "incremental = true\nfull_every = 65\n",
                "full_every = 65: out of range",
            ),
            ("incremental = \"yes\"\n", "expected a boolean"),
        ] {
            let e = error_of(&format!("{GOOD}{BASE}{text}"));
            assert!(e.contains(expected), "{text}: {e}");
            assert!(e.starts_with("jobs/app.toml:"), "{e}");
        }
        let e =
            error_of(&GOOD.replace("type = \"backup\"", "type = \"backup\"\nincremental = true"));
        assert!(
            e.contains("`incremental` does not apply to a backup job"),
            "{e}"
        );
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
    fn the_daemon_token_is_a_secret_read_from_the_environment() {
        let text = format!("{GOOD}\n[daemon]\ntoken_env = \"BACKUP_PASSPHRASE\"\n");
        let config = check(&text).unwrap();
        let token = config.daemon.token.as_ref().unwrap();
        assert_eq!(token.name(), "[daemon] token_env");
        assert!(config.secrets().contains(&token));
        // Too short to protect anything: refused when read, with a hint.
        let err = error_of(&format!("{GOOD}\n[daemon]\ntoken_env = \"EMPTY\"\n"));
        assert!(err.contains("shorter than 16 characters"), "{err}");
        assert!(err.contains("openssl rand"), "{err}");
        let err = error_of(&format!("{GOOD}\n[daemon]\ntoken_file = \"/t\"\n"));
        assert!(err.contains("token_file"), "{err}");
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
        let err = error_of(&format!("{GOOD}\n[notifications.x]\ntype = \"pager\"\n"));
        assert!(err.contains("type 'pager' is not supported"), "{err}");
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
    fn notifiers_of_every_kind_read_and_their_mistakes_are_named() {
        use crate::model::{NotifierKind, SmtpSecurity};
        const MAIL: &str = "\n[notifications.mail]\ntype = \"email\"\n\
                            smtp = \"smtp://mail.example.com\"\nfrom = \"backup@example.com\"\n\
                            to = [\"ops@example.com\", \"dba@example.com\"]\n\
                            username_env = \"S3_ID\"\npassword_env = \"S3_SECRET\"\n";
        let text = format!(
            "{GOOD}{MAIL}\n[notifications.check]\ntype = \"ping\"\nurl_file = \"/dev/null\"\n\
             jobs = [\"nightly\"]\n"
        );
        let config = load_text(&text, &test_env).unwrap();
        let mail = config.notifiers.iter().find(|n| n.name == "mail").unwrap();
        assert_eq!(mail.kind, NotifierKind::Email);
        let email = mail.email.as_ref().unwrap();
        assert_eq!((email.host.as_str(), email.port), ("mail.example.com", 587));
        assert_eq!(email.security, SmtpSecurity::StartTls);
        assert_eq!(email.to.len(), 2);
        assert_eq!(mail.secrets().count(), 2);
        assert!(mail.follows("anything"));
        let ping = config.notifiers.iter().find(|n| n.name == "check").unwrap();
        assert_eq!(ping.kind, NotifierKind::Ping);
        assert!(ping.follows("nightly") && !ping.follows("other"));
        let security = |smtp: &str, more: &str| {
            let text = format!(
                "{GOOD}{}{more}",
                MAIL.replace("smtp://mail.example.com", smtp)
            );
            let config = load_text(&text, &test_env).unwrap();
            let email = config.notifiers[0].email.clone().unwrap();
            (email.security, email.port)
        };
        assert_eq!(
            security("smtps://mail.example.com", ""),
            (SmtpSecurity::Tls, 465)
        );
        assert_eq!(
            security("smtp://127.0.0.1:2525", ""),
            (SmtpSecurity::StartTlsIfOffered, 2525)
        );
        assert_eq!(
            security("smtp://[::1]:25/", ""),
            (SmtpSecurity::StartTlsIfOffered, 25)
        );
        let no_login = MAIL
            .replace("username_env = \"S3_ID\"\n", "")
            .replace("password_env = \"S3_SECRET\"\n", "")
            .replace("mail.example.com\"", "mail.example.com:25\"");
        let config = load_text(&format!("{GOOD}{no_login}insecure = true\n"), &test_env).unwrap();
        let email = config.notifiers[0].email.clone().unwrap();
        assert_eq!(
            (email.security, email.port),
            (SmtpSecurity::StartTlsIfOffered, 25)
        );
        for (from, to, expected) in [
            (
                "smtp://mail.example.com",
                "http://mail.example.com",
                "not an smtp:// or smtps://",
            ),
            (
                "smtp://mail.example.com",
                "smtp://me:pw@mail.example.com",
                "holds a user name or password",
            ),
            (
                "smtp://mail.example.com",
                "smtp://mail.example.com:0",
                "no host and port",
            ),
            ("smtp://mail.example.com", "smtp://:25", "no host and port"),
            (
                "backup@example.com",
                "backup",
                "'backup' is not an e-mail address",
            ),
            (
                "to = [\"ops@example.com\", \"dba@example.com\"]",
                "to = []",
                "needs to = [...]",
            ),
            ("password_env = \"S3_SECRET\"\n", "", "without the other"),
            (
                "type = \"email\"",
                "type = \"email\"\nurl_env = \"X\"",
                "`url_env` does not apply to a email",
            ),
        ] {
            let e = error_of(&format!("{GOOD}{}", MAIL.replace(from, to)));
            assert!(e.contains(expected), "{to}: {e}");
            assert!(e.starts_with("jobs/app.toml:"), "{e}");
        }
        let e = error_of(&format!(
            "{GOOD}{}insecure = true\n",
            MAIL.replace("mail.example.com\"", "mail.example.com:25\"")
        ));
        assert!(
            e.contains("the password could cross the network in plain text"),
            "{e}"
        );
        let e = error_of(&format!(
            "{GOOD}{}insecure = true\n",
            MAIL.replace("smtp://", "smtps://")
        ));
        assert!(e.contains("insecure applies to smtp:// only"), "{e}");
        let e = error_of(&format!(
            "{GOOD}\n[notifications.x]\ntype = \"ping\"\nurl_file = \"/dev/null\"\njobs = []\n"
        ));
        assert!(e.contains("jobs = [] follows no job"), "{e}");
        let e = error_of(&format!(
            "{GOOD}\n[notifications.x]\ntype = \"teams\"\nurl_file = \"/dev/null\"\nfrom = \"a@b.c\"\n"
        ));
        assert!(
            e.contains("`from` does not apply to a teams notification"),
            "{e}"
        );
        let e = error_of(&format!(
            "{GOOD}\n[notifications.x]\ntype = \"discord\"\nurl_file = \"/dev/null\"\njobs = [\"nigthly\"]\n"
        ));
        assert!(
            e.contains("jobs names 'nigthly', which is not a declared job"),
            "{e}"
        );
        assert!(e.contains("declared jobs:"), "{e}");
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
}
