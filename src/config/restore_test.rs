//! `type = "restore-test"` jobs: which backup, restored where, checked how.

use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::raw::RawJob;
use super::sources::Source;
use super::{declared, duration_of};
use crate::error::Result;
use crate::model::{Check, Config, Database, RestoreTestJob, TestedBackup};
use crate::pg::url::MAX_IDENTIFIER;

/// The keys a restore-test job takes beyond the common ones.
pub(super) const KEYS: &[&str] = &[
    "backup_job",
    "at",
    "target",
    "scratch_database",
    "checks",
    "keep_on_failure",
    "jobs",
];

/// One `checks = [{ ... }]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    name: Option<String>,
    sql: Spanned<String>,
    equals: Option<Number>,
    min: Option<Number>,
    max: Option<Number>,
}

/// TOML keeps integers and floats apart; a check compares either.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn value(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

pub(super) fn validate(
    source: &Source,
    name: &str,
    raw: &Spanned<RawJob>,
    config: &Config,
) -> Result<RestoreTestJob> {
    let job = raw.get_ref();
    let section = format!("jobs.{name}");
    let backup_job = job.backup_job.as_ref().ok_or_else(|| {
        source
            .error(
                raw,
                format!("[{section}] a restore-test job needs `backup_job`"),
            )
            .with_hint("name the backup job whose backups it restores: backup_job = \"nightly\"")
    })?;
    let at = match &job.at {
        None => TestedBackup::Latest,
        Some(at) if at.get_ref() == "latest" => TestedBackup::Latest,
        Some(at) => TestedBackup::OlderThan(
            duration_of(source, &section, "at", at)
                .map_err(|e| e.with_hint("write \"latest\" (the default) or an age such as \"7d\": the newest backup at least that old"))?,
        ),
    };
    let target = match &job.target {
        None => None,
        Some(t) => Some(config.databases.get(t.get_ref()).cloned().ok_or_else(|| {
            source
                .error(
                    t,
                    format!(
                        "[{section}] target = '{}': no such database is declared",
                        t.get_ref()
                    ),
                )
                .with_hint(declared("databases", config.databases.keys()))
        })?),
    };
    let scratch_database = match &job.scratch_database {
        None => None,
        Some(s) => {
            let text = s.get_ref();
            if text.is_empty() || text.len() > MAX_IDENTIFIER {
                return Err(source
                    .error(
                        s,
                        format!(
                            "[{section}] scratch_database = '{text}' must be 1 to {MAX_IDENTIFIER} bytes long"
                        ),
                    )
                    .with_hint("PostgreSQL cuts longer names, which could name another database"));
            }
            Some(text.clone())
        }
    };
    let jobs =
        match &job.jobs {
            None => 1,
            Some(j) if (1..=64).contains(j.get_ref()) => *j.get_ref() as u32,
            Some(j) => {
                return Err(source
                .error(j, format!("[{section}] jobs = {} is not 1 to 64", j.get_ref()))
                .with_hint(
                    "the parallel pg_restore jobs of the test; set it as the real restore would \
                     run (`restore --jobs N`), so the test measures that time",
                ));
            }
        };
    let mut checks = Vec::new();
    for c in job.checks.as_deref().unwrap_or_default() {
        let sql = c.sql.get_ref().trim();
        if sql.is_empty() {
            return Err(source
                .error(&c.sql, format!("[{section}] a check has an empty `sql`"))
                .with_hint(
                    "write a query that returns one number, e.g. SELECT count(*) FROM users",
                ));
        }
        if c.equals.is_some() && (c.min.is_some() || c.max.is_some()) {
            return Err(source
                .error(
                    &c.sql,
                    format!("[{section}] a check takes `equals`, or `min` and/or `max`, not both"),
                )
                .with_hint("e.g. { sql = \"SELECT count(*) FROM users\", min = 1 }"));
        }
        if c.equals.is_none() && c.min.is_none() && c.max.is_none() {
            return Err(source
                .error(
                    &c.sql,
                    format!("[{section}] the check '{sql}' says nothing to compare with"),
                )
                .with_hint("add equals = N, min = N or max = N"));
        }
        checks.push(Check {
            name: c.name.clone().unwrap_or_else(|| sql.to_owned()),
            sql: sql.to_owned(),
            equals: c.equals.map(Number::value),
            min: c.min.map(Number::value),
            max: c.max.map(Number::value),
        });
    }
    Ok(RestoreTestJob {
        backup_job: backup_job.get_ref().clone(),
        at,
        // Until resolved: the backup job's database, once every job is read.
        target: target.unwrap_or_else(|| Arc::new(Database::unresolved())),
        scratch_database,
        checks,
        keep_on_failure: job.keep_on_failure.as_ref().is_some_and(|k| *k.get_ref()),
        jobs,
        storages: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::{GOOD, check, error_of};
    use crate::model::JobKind;

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
}
