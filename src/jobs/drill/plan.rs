//! The plan of a drill: which backup job and checks a named job means,
//! which backup, from where, into what; and the plan as `--dry-run` prints
//! it.

use std::fmt;
use std::sync::Arc;

use super::{DrillPlan, DrillTarget};
use crate::catalog;
use crate::error::{Error, Result};
use crate::model::Check;
use crate::report::bytes_human;
use crate::storage::Storage;
use crate::time;

impl fmt::Display for DrillPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        writeln!(f, "drill plan for job {}:", self.job)?;
        writeln!(
            f,
            "  backup:    {} (data as of {}; database {}, PostgreSQL {}, {} stored)",
            b.id,
            time::show(b.snapshot_at, &self.timezone),
            b.dbname,
            b.server_version,
            bytes_human(b.stored_size())
        )?;
        writeln!(
            f,
            "  from:      storage {} ({})",
            self.storage, self.storage_location
        )?;
        writeln!(f, "  into:      {}", self.target_description())?;
        writeln!(
            f,
            "  restore:   {}database {}, created there{}",
            if self.has_globals() {
                "the roles the target lacks (from the backup's globals), then "
            } else {
                "no globals in this backup: objects without owners or privileges; "
            },
            self.dbname,
            if self.jobs > 1 {
                format!(", with {} parallel jobs", self.jobs)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  checks:    table count {}, exact rows of each table, {} extension(s), {} check(s){}",
            b.tables.len(),
            b.extensions.len(),
            self.checks.len(),
            if self.checks_from.is_empty() {
                String::new()
            } else {
                format!(" of {}", self.checks_from.join(", "))
            }
        )?;
        for c in &self.checks {
            writeln!(f, "             {}: {}", c.name, c.expected())?;
        }
        write!(
            f,
            "  then:      {}",
            match &self.target {
                DrillTarget::Throwaway(_) => "stop the cluster and remove its files",
                DrillTarget::Server(_) => "drop the database (roles it created stay)",
            }
        )
    }
}

/// What a drill of a named job rehearses: the backup job it restores, the
/// checks it proves the copy with, and which restore-test jobs they are from.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    pub backup_job: String,
    pub checks: Vec<Check>,
    pub checks_from: Vec<String>,
    pub selector: catalog::Selector,
    pub target_url: Option<String>,
    pub jobs: u32,
}

impl DrillRequest {
    /// A drill of job `name`: a backup job (with the checks of its
    /// restore-test jobs) or a restore-test job (with its own).
    pub fn new(
        config: &crate::model::Config,
        name: &str,
        selector: catalog::Selector,
        target_url: Option<String>,
        jobs: Option<u32>,
    ) -> Result<Self> {
        use crate::model::JobKind;
        let job = config.job(name)?;
        let (backup_job, checks, checks_from, default_jobs) = match &job.kind {
            JobKind::RestoreTest(t) => (
                t.backup_job.clone(),
                t.checks.clone(),
                vec![name.to_owned()],
                t.jobs,
            ),
            JobKind::Backup(_) => {
                let mut checks: Vec<Check> = Vec::new();
                let mut from = Vec::new();
                for j in config.jobs.values() {
                    if let JobKind::RestoreTest(t) = &j.kind
                        && t.backup_job == name
                    {
                        from.push(j.name.clone());
                        for c in &t.checks {
                            if !checks
                                .iter()
                                .any(|have| have.sql == c.sql && have.expected() == c.expected())
                            {
                                checks.push(c.clone());
                            }
                        }
                    }
                }
                (name.to_owned(), checks, from, 1)
            }
            other => {
                return Err(Error::usage(format!(
                    "job {name} is a {} job: a drill restores a backup job",
                    other.name()
                ))
                .with_hint("name a backup job, or a restore-test job to use its checks"));
            }
        };
        config.database_backup_job(&backup_job, "drill")?;
        Ok(DrillRequest {
            backup_job,
            checks,
            checks_from,
            selector,
            target_url,
            jobs: jobs.unwrap_or(default_jobs),
        })
    }
}

/// The plan of a drill: which backup, from which of `storages` (the backup
/// job's), into what.
pub async fn plan(
    config: &crate::model::Config,
    request: &DrillRequest,
    storages: &[Arc<dyn Storage>],
) -> Result<DrillPlan> {
    let (bjob, spec, database) = config.database_backup_job(&request.backup_job, "drill")?;
    let (backup, storage) =
        crate::jobs::restore::choose(bjob, storages, None, &request.selector).await?;
    let reader = crate::jobs::restore::named(storages, &storage)?;
    let crypt = crate::catalog::opener(reader.as_ref(), &backup, spec.keys()).await?;
    let storage_location = spec
        .storages
        .iter()
        .find(|s| s.name == storage)
        .map(|s| s.kind.to_string())
        .unwrap_or_default();
    let dbname = backup.dbname.clone();
    let target = match &request.target_url {
        Some(url) => target_server(url, database, &dbname).await?,
        None => DrillTarget::Throwaway(crate::pg::cluster::find_server(
            database,
            backup.server_major(),
        )?),
    };
    Ok(DrillPlan {
        job: request.backup_job.clone(),
        timezone: bjob.timezone.clone(),
        backup,
        storage,
        storage_location,
        target,
        dbname,
        checks: request.checks.clone(),
        checks_from: request.checks_from.clone(),
        jobs: request.jobs,
        crypt,
    })
}

/// The server of `--target-url`, when it can take the drill's database.
async fn target_server(
    url: &str,
    database: &crate::model::Database,
    dbname: &str,
) -> Result<DrillTarget> {
    let (parsed, _) = crate::pg::url::parse(url).map_err(|e| {
        Error::usage(format!(
            "--target-url is not a valid connection string: {e}"
        ))
        .with_hint("write a libpq URI such as postgresql://postgres@dr-host:5432/postgres")
    })?;
    if parsed.get_password().is_some() {
        return Err(Error::usage("--target-url contains a password")
            .with_hint("pass it in PGPASSWORD: a password in argv shows in process listings"));
    }
    let db = crate::model::Database {
        name: "--target-url".to_owned(),
        url: url.to_owned(),
        password: None,
        password_from: None,
        pg_bin_dir: database.pg_bin_dir.clone(),
        pg_bin_dirs: database.pg_bin_dirs.clone(),
        secret_env: database.secret_env.clone(),
    };
    let admin = crate::pg::connect(&db, Some("postgres")).await?;
    if crate::pg::database_exists(&admin, dbname).await? {
        return Err(Error::refused(format!(
            "database {dbname} exists on the server of --target-url; a drill never \
             overwrites a database, and nothing was changed"
        ))
        .with_hint(
            "drill into a server without it, or without --target-url into a throwaway cluster",
        ));
    }
    Ok(DrillTarget::Server(db))
}
