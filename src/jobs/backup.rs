//! A backup: `pg_dump` of one exported snapshot, streamed through the archive
//! pipeline into every storage of the job, then the manifest, last.
//!
//! The whole story, in order:
//! 1. connect, check `pg_dump` is not older than the server;
//! 2. export a `REPEATABLE READ` snapshot and note when it began (`snapshot_at`);
//! 3. stream `pg_dump --snapshot` into the storages, counting every table's
//!    rows in the archive as it passes (one read of each table, and the very
//!    rows `pg_restore` will load);
//! 4. store roles and tablespaces (`pg_dumpall --globals-only`);
//! 5. write `manifest.json`. Only now does the backup exist.

use std::process::Stdio;
use std::sync::Arc;

use crate::archive::{self, Delivery, Destination};
use crate::catalog::{self, Manifest, ManifestObject, Role};
use crate::error::{Error, Result};
use crate::model::{BackupId, BackupJob, Clock, Job};
use crate::pg::{self, command};
use crate::report::Progress;
use crate::storage::{Key, Storage};

/// What a backup run produced.
#[derive(Debug)]
pub struct BackupOutcome {
    pub manifest: Manifest,
    /// Storages that hold the complete backup.
    pub stored_in: Vec<String>,
    /// Storages that failed, with why. Non-empty means the run failed in part.
    pub failed: Vec<(String, Error)>,
}

pub async fn run(
    job: &Job,
    spec: &BackupJob,
    storages: &[Arc<dyn Storage>],
    clock: &dyn Clock,
    progress: Arc<dyn Progress>,
    accept_new_source: bool,
) -> Result<BackupOutcome> {
    let started_at = clock.now();
    let Some(db) = spec.database() else {
        return Err(Error::internal(format!("job {} has no database", job.name)));
    };
    // A passphrase that cannot be read fails the run before anything is dumped.
    let crypt = seal(spec)?;
    let conn = pg::connect(db, None).await?;
    let server = pg::server_version(&conn).await?;
    let pg_dump = pg::tool_path(db, "pg_dump", server.major);
    let pg_dump_version = pg::require_tool_at_least(&pg_dump, &server)?;
    // The url names the database; a pooler or a service file could still
    // land the session elsewhere, and then pg_dump would dump that.
    let dbname = pg::current_database(&conn).await?;
    if dbname != conn.dbname {
        return Err(Error::database(format!(
            "database {}: the url names database {}, but the server put the session in {dbname}",
            db.name, conn.dbname
        ))
        .with_hint(
            "connect to the database directly (not through a pooler alias), or fix the url",
        ));
    }
    let source = Source {
        dbname: dbname.clone(),
        system_identifier: pg::system_identifier(&conn).await,
    };
    let mut warnings = Vec::new();
    let previous = previous_source(storages, &job.name).await;
    if source.system_identifier.is_none()
        && let Some(p) = previous.as_ref().filter(|p| p.system_identifier.is_some())
    {
        let warning = format!(
            "the server's system_identifier could not be read (see the debug log), so this \
             backup was not checked to be of the same cluster as backup {}",
            p.id
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    if let Some(previous) = &previous
        && let Some(difference) = source.differs_from(previous)
    {
        if !accept_new_source {
            return Err(Error::refused(format!(
                "job {}: {difference}; nothing was backed up, so the job's history stays one database",
                job.name
            ))
            .with_hint(format!(
                "check the url of [databases.{}] and the PG* environment; if the database moved on \
                 purpose (a new server, a restore), run `backup run {} --accept-new-source` once",
                db.name, job.name
            )));
        }
        let warning =
            format!("the source changed, accepted with --accept-new-source: {difference}");
        tracing::warn!("job {}: {warning}", job.name);
        warnings.push(warning);
    }
    let properties = pg::database::properties(&conn, &dbname).await?;

    // A storage that cannot be listed or written is reported as failed, and
    // the backup goes on to the others.
    let mut failed = Vec::new();
    let id = unused_id(storages, &job.name, started_at, &mut failed).await?;
    let storages = without_failed(storages, &failed);
    let storages = storages.as_slice();
    let prefix = catalog::backup_prefix(&job.name, &id)?;
    tracing::info!(
        "job {}: backing up database {} ({}, PostgreSQL {}) as {id}",
        job.name,
        db.name,
        conn.dbname,
        server.text
    );

    let snapshot = pg::export_snapshot(&conn).await?;
    // In the snapshot pg_dump will dump: the tables it will see.
    let listed = pg::dumped_tables(&conn).await?;
    let data_name = catalog::object_name(Role::Data, spec.compression, spec.encryption.is_some());
    let mut child = pg::spawn(
        &pg_dump,
        command::pg_dump_args(&db.url, &snapshot.id),
        db,
        Stdio::null(),
        Stdio::piped(),
    )?;
    let stdout = child
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::internal("pg_dump has no stdout"))?;
    // A cancelled run (timeout, SIGTERM) drops this future: the dump must
    // stop with it.
    let _stop_dump = child.stop_on_drop();
    // Waited for from now on, whatever happens next, so it is always reaped.
    let waiting = tokio::task::spawn_blocking(move || child.wait());
    let destinations = open_writers(storages, &prefix.join(&data_name)?).await?;
    let label = format!("{}/{data_name}", prefix);
    progress.begin(&format!("dump {}", conn.dbname), None);
    let on_bytes = {
        let progress = progress.clone();
        Arc::new(move |n| progress.advance(n))
    };
    let dumped = async {
        waiting
            .await
            .map_err(|e| Error::internal(format!("waiting for pg_dump: {e}")))?
    };
    let stored = archive::store_dump(
        stdout,
        spec.compression,
        crypt,
        destinations,
        &label,
        on_bytes,
        dumped,
    )
    .await;
    progress.end();
    let (data_digest, deliveries, counted) = stored?;
    let (tables, rows_from) = match counted.finish() {
        Ok(counted) => {
            let (tables, missing) = tables_in_archive(&listed, &counted);
            if !missing.is_empty() {
                let warning = without_data(&conn, &missing).await?;
                tracing::warn!("job {}: {warning}", job.name);
                warnings.push(warning);
            }
            (tables, Some(catalog::ROWS_FROM_ARCHIVE.to_owned()))
        }
        Err(why) => {
            // A pg_dump newer than this reader: the counts come from the
            // snapshot instead, at the cost of a second read of each table.
            let warning = format!(
                "the rows were counted with count(*) in the dump's snapshot, because the \
                 archive could not be read for them: {why}"
            );
            tracing::warn!("job {}: {warning}", job.name);
            warnings.push(warning);
            let cancel_counts = pg::CancelOnDrop::new(&conn);
            let tables = pg::row_counts(&conn, &listed).await?;
            cancel_counts.disarm();
            (tables, None)
        }
    };
    let extensions = pg::extensions(&conn).await?;
    pg::end_snapshot(&conn).await?;

    let mut healthy = keep_delivered(storages, deliveries, &mut failed);
    let mut objects = vec![ManifestObject {
        key: data_name,
        role: Role::Data,
        digest: data_digest,
    }];
    if !healthy.is_empty()
        && let Some((object, deliveries)) =
            dump_globals(&job.name, spec, &server, &healthy, &prefix, &mut warnings).await?
    {
        healthy = keep_delivered(&healthy, deliveries, &mut failed);
        objects.push(object);
    }

    let manifest = Manifest {
        format: catalog::FORMAT,
        id,
        job: job.name.clone(),
        database: db.name.clone(),
        dbname: conn.dbname.clone(),
        server_version: server.text,
        pg_dump_version,
        snapshot_at: snapshot.at,
        started_at,
        finished_at: clock.now(),
        compression: spec.compression.name().to_owned(),
        encryption: spec
            .encryption
            .as_ref()
            .map(|_| archive::crypt::AGE.to_owned()),
        objects,
        tables,
        extensions,
        warnings,
        directory: None,
        tree: None,
        system_identifier: source.system_identifier,
        database_properties: Some(properties),
        row_counts: Some(pg::ROWS_ONLY.to_owned()),
        rows_from,
        physical: None,
    };
    conclude(&healthy, &prefix, manifest, failed).await
}

/// The manifest's tables: every user table pg_dump saw, with the rows the
/// archive holds for it (matched by oid: the archive's names are in the
/// database's encoding), and the tables it holds no data for, at 0 rows.
fn tables_in_archive<'a>(
    listed: &'a [pg::DumpedTable],
    counted: &archive::dump::Counted,
) -> (Vec<pg::TableRows>, Vec<&'a pg::DumpedTable>) {
    let counted = counted.lookup();
    let mut missing = Vec::new();
    let tables = listed
        .iter()
        .map(|t| pg::TableRows {
            schema: t.schema.clone(),
            name: t.name.clone(),
            rows: match counted.rows_of_oid(t.oid) {
                Some(rows) => i64::try_from(rows).unwrap_or(i64::MAX),
                None => {
                    missing.push(t);
                    0
                }
            },
        })
        .collect();
    (tables, missing)
}

/// The warning for tables the archive holds no data for, when that is
/// what pg_dump does (a standby's unlogged tables, which it cannot read);
/// otherwise an error: the archive would restore them empty.
async fn without_data(conn: &pg::Connection, missing: &[&pg::DumpedTable]) -> Result<String> {
    let named: Vec<String> = missing
        .iter()
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    if missing.iter().all(|t| t.unlogged) && pg::stats::in_recovery(conn).await? {
        return Ok(format!(
            "pg_dump writes no rows for unlogged tables on a standby: {} table(s) restore \
             empty: {}",
            named.len(),
            named.join(", ")
        ));
    }
    Err(Error::tool(format!(
        "pg_dump wrote no data for {} table(s) of the database: {}; the archive would \
         restore them empty, so it is not kept as a backup",
        named.len(),
        named.join(", ")
    ))
    .with_hint("run the backup again; if it fails the same way, report it with the tables named"))
}

/// Which database a backup is of: its name and its cluster's identifier.
struct Source {
    dbname: String,
    system_identifier: Option<String>,
}

impl Source {
    /// How this source differs from the one `previous` was taken of.
    fn differs_from(&self, previous: &Manifest) -> Option<String> {
        let other_cluster = matches!(
            (&self.system_identifier, &previous.system_identifier),
            (Some(now), Some(then)) if now != then
        );
        if previous.dbname == self.dbname && !other_cluster {
            return None;
        }
        let describe = |dbname: &str, system: &Option<String>| match system {
            Some(id) => format!("database {dbname} of cluster {id}"),
            None => format!("database {dbname}"),
        };
        Some(format!(
            "this is {}, and its previous backup {} is of {}",
            describe(&self.dbname, &self.system_identifier),
            previous.id,
            describe(&previous.dbname, &previous.system_identifier)
        ))
    }
}

/// The newest complete database backup of `job` in any of `storages`.
pub(super) async fn previous_source(storages: &[Arc<dyn Storage>], job: &str) -> Option<Manifest> {
    let mut newest: Option<Manifest> = None;
    for storage in storages {
        match catalog::newest(storage.as_ref(), job).await {
            Ok(Some(m)) if newest.as_ref().is_none_or(|n| m.id > n.id) => newest = Some(m),
            Ok(_) => {}
            // Said where the storage is written to, if it stays unreadable.
            Err(e) => tracing::debug!("storage {}: {e}", storage.name()),
        }
    }
    newest
}

/// The storages not in `failed`.
pub(super) fn without_failed(
    storages: &[Arc<dyn Storage>],
    failed: &[(String, Error)],
) -> Vec<Arc<dyn Storage>> {
    storages
        .iter()
        .filter(|s| !failed.iter().any(|(name, _)| name == s.name()))
        .cloned()
        .collect()
}

/// Publishes the manifest where every object arrived: the backup exists
/// once one storage holds it whole, and fails when none does.
pub(super) async fn conclude(
    healthy: &[Arc<dyn Storage>],
    prefix: &Key,
    manifest: Manifest,
    mut failed: Vec<(String, Error)>,
) -> Result<BackupOutcome> {
    let stored_in = publish(healthy, prefix, &manifest, &mut failed).await?;
    if stored_in.is_empty() {
        let (storage, e) = failed.into_iter().next().unwrap_or_else(|| {
            (
                String::new(),
                Error::internal("no storage took the backup and none failed"),
            )
        });
        return Err(e.context(format!("backup failed in storage {storage}")));
    }
    Ok(BackupOutcome {
        manifest,
        stored_in,
        failed,
    })
}

/// Writes the manifest, the last step: from here on the backup exists.
async fn publish(
    storages: &[Arc<dyn Storage>],
    prefix: &Key,
    manifest: &Manifest,
    failed: &mut Vec<(String, Error)>,
) -> Result<Vec<String>> {
    let body = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::internal(format!("cannot encode the manifest: {e}")))?;
    let key = prefix.join(catalog::MANIFEST)?;
    let mut stored_in = Vec::new();
    for storage in storages {
        match crate::storage::write_small(storage.as_ref(), &key, &body).await {
            Ok(()) => stored_in.push(storage.name().to_owned()),
            Err(e) => failed.push((storage.name().to_owned(), e)),
        }
    }
    Ok(stored_in)
}

/// The first id not used yet in any of the job's storages: two runs in the
/// same second get `-1`, `-2`, ...
pub(super) async fn unused_id(
    storages: &[Arc<dyn Storage>],
    job: &str,
    at: jiff::Timestamp,
    failed: &mut Vec<(String, Error)>,
) -> Result<BackupId> {
    for suffix in 0..1000 {
        let id = BackupId::from_start(at, suffix);
        let prefix = catalog::backup_prefix(job, &id)?;
        let mut used = false;
        for storage in storages {
            if failed.iter().any(|(name, _)| name == storage.name()) {
                continue;
            }
            match storage.list(&prefix).await {
                Ok(objects) => used |= !objects.is_empty(),
                Err(e) => failed.push((storage.name().to_owned(), e)),
            }
        }
        if failed.len() == storages.len() {
            let (_, e) = failed.remove(0);
            return Err(e);
        }
        if !used {
            return Ok(id);
        }
    }
    Err(Error::internal(format!(
        "1000 backups of job {job} started in the same second"
    )))
}

pub(super) async fn open_writers(
    storages: &[Arc<dyn Storage>],
    key: &Key,
) -> Result<Vec<Destination>> {
    let mut out = Vec::with_capacity(storages.len());
    for storage in storages {
        let writer = storage.writer(key).await?;
        out.push(Destination {
            storage: storage.name().to_owned(),
            writer,
        });
    }
    Ok(out)
}

/// The storages whose delivery worked; the others go to `failed`.
pub(super) fn keep_delivered(
    storages: &[Arc<dyn Storage>],
    deliveries: Vec<Delivery>,
    failed: &mut Vec<(String, Error)>,
) -> Vec<Arc<dyn Storage>> {
    let mut healthy = Vec::new();
    for delivery in deliveries {
        match delivery.result {
            Ok(()) => {
                if let Some(s) = storages.iter().find(|s| s.name() == delivery.storage) {
                    healthy.push(s.clone());
                }
            }
            Err(e) => {
                tracing::error!("storage {}: {e}", delivery.storage);
                failed.push((delivery.storage, e));
            }
        }
    }
    healthy
}

/// Roles and tablespaces. A role that may not read them (no superuser, a
/// managed service) is normal: fall back to leaving out role passwords, then
/// to leaving globals out, and say so in the manifest's warnings.
async fn dump_globals(
    job: &str,
    spec: &BackupJob,
    server: &pg::ServerVersion,
    storages: &[Arc<dyn Storage>],
    prefix: &Key,
    warnings: &mut Vec<String>,
) -> Result<Option<(ManifestObject, Vec<Delivery>)>> {
    let Some(db) = spec.database() else {
        return Ok(None);
    };
    let pg_dumpall = pg::tool_path(db, "pg_dumpall", server.major);
    let name = catalog::object_name(Role::Globals, spec.compression, spec.encryption.is_some());
    let key = prefix.join(&name)?;
    let mut first_error = None;
    for without_passwords in [false, true] {
        let args = command::pg_dumpall_globals_args(&db.url, without_passwords);
        let attempt = async {
            let mut child = pg::spawn(&pg_dumpall, args, db, Stdio::null(), Stdio::piped())?;
            let stdout = child
                .child
                .stdout
                .take()
                .ok_or_else(|| Error::internal("pg_dumpall has no stdout"))?;
            let _stop = child.stop_on_drop();
            let waiting = tokio::task::spawn_blocking(move || child.wait());
            let destinations = open_writers(storages, &key).await?;
            let done = async {
                waiting
                    .await
                    .map_err(|e| Error::internal(format!("waiting for pg_dumpall: {e}")))?
            };
            archive::store(
                stdout,
                spec.compression,
                seal(spec)?,
                destinations,
                &format!("{prefix}/{name}"),
                Arc::new(|_| {}),
                done,
            )
            .await
        };
        match attempt.await {
            Ok((digest, deliveries)) => {
                if let Some(e) = first_error {
                    let warning = format!("role passwords are not in this backup: {e}");
                    tracing::warn!("job {job}: {warning}");
                    warnings.push(warning);
                }
                let object = ManifestObject {
                    key: name,
                    role: Role::Globals,
                    digest,
                };
                return Ok(Some((object, deliveries)));
            }
            Err(e) if e.kind() == crate::error::Kind::Tool => {
                if !pg::is_permission_error(&e) || without_passwords {
                    let warning = format!("roles and tablespaces are not in this backup: {e}");
                    tracing::warn!("job {job}: {warning}");
                    warnings.push(warning);
                    return Ok(None);
                }
                first_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The encryption stage of the job's objects.
pub(super) fn seal(spec: &BackupJob) -> Result<archive::crypt::Crypt> {
    archive::crypt::sealing(spec.encryption.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_table_gets_the_archives_rows_by_oid_and_one_without_any_is_named() {
        let table = |oid: u32, name: &str, rows: u64| archive::dump::Table {
            oid: Some(oid),
            schema: b"public".to_vec(),
            // The archive's names are in the database's encoding.
            name: format!("{name} in latin1").into_bytes(),
            rows,
        };
        let counted = archive::dump::Counted {
            encoding: Some("LATIN1".into()),
            tables: vec![
                table(16385, "a", 3),
                table(16386, "b", 0),
                table(17000, "config", 9),
            ],
        };
        let listed: Vec<pg::DumpedTable> = [(16385, "a"), (16386, "b"), (16390, "scratch")]
            .iter()
            .map(|(oid, name)| pg::DumpedTable {
                oid: *oid,
                schema: "public".into(),
                name: (*name).into(),
                unlogged: *name == "scratch",
            })
            .collect();
        let (tables, missing) = tables_in_archive(&listed, &counted);
        let rows: Vec<(&str, i64)> = tables.iter().map(|t| (t.name.as_str(), t.rows)).collect();
        // An extension's table pg_dump wrote rows for is not the database's own.
        assert_eq!(rows, [("a", 3), ("b", 0), ("scratch", 0)]);
        assert_eq!(missing, [&listed[2]]);
    }
}
