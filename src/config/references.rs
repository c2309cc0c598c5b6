//! References between sections, resolved once every file is read: a job
//! may name a backup job, a database or a storage declared in another file,
//! or later in its own.

use std::sync::Arc;

use super::declared;
use super::raw::RawFile;
use super::sources::Source;
use crate::error::{Error, Result};
use crate::model::{BackupSource, Config, Database, Job, JobKind, StorageSpec};
use crate::secret::Origin;

/// Points each prune job at its backup job, which must have a retention policy.
pub(super) fn resolve_prune_jobs(config: &mut Config) -> Result<()> {
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
                (b.server().cloned(), b.storages.clone())
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
pub(super) fn resolve_restore_tests(config: &mut Config) -> Result<()> {
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
        // A physical job's test is a drill of a throwaway cluster: its
        // server is the one backed up, and no scratch database is made.
        let Some(database) = b
            .database()
            .or_else(|| b.cluster().map(|(db, _)| db))
            .cloned()
        else {
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
pub(super) fn give_databases_secret_env(config: &mut Config) {
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
                if let BackupSource::Database(db) | BackupSource::Cluster { database: db, .. } =
                    &mut b.source
                {
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
pub(super) fn reports_storage(
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

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, check, error_of};

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
}
