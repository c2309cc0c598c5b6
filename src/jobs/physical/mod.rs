//! A physical job's base backup: `pg_basebackup -Ft -D - -X none` of the
//! whole cluster, streamed through the archive pipeline into every storage,
//! then the manifest, last, once the WAL it needs is archived.
//!
//! The whole story, in order:
//! 1. connect; refuse a cluster that cannot give a restorable base backup
//!    (role, `wal_level`, `archive_mode`, a standby, tablespaces) and a
//!    `pg_basebackup` older than the server; end what a stopped run left
//!    waiting on the server; check the cluster is the one the job's
//!    previous backups are of;
//! 2. stream `pg_basebackup` into `<job>/<id>/base.tar.<ext>` in every
//!    storage, its wait for the archive bounded by `wal_wait`
//!    ([`stream`]);
//! 3. wait, bounded by `wal_wait` again, until every segment the backup
//!    needs is archived in each storage that took the tar ([`wal`]);
//! 4. write `manifest.json`. Only now does the backup exist.

mod stream;
mod wal;

use std::sync::Arc;

use super::backup::{self, BackupOutcome};
use crate::catalog::{self, Manifest, ManifestObject, Physical, Role};
use crate::error::{Error, Result};
use crate::model::{BackupJob, Clock, Database, Job};
use crate::pg::{self, physical::ClusterFacts};
use crate::report::Progress;
use crate::storage::{Key, Storage};

pub async fn run(
    job: &Job,
    spec: &BackupJob,
    storages: &[Arc<dyn Storage>],
    clock: &dyn Clock,
    progress: Arc<dyn Progress>,
    accept_new_source: bool,
) -> Result<BackupOutcome> {
    let started_at = clock.now();
    let Some((db, wal_settings)) = spec.cluster() else {
        return Err(Error::internal(format!(
            "job {} is not a physical job",
            job.name
        )));
    };
    // A key that cannot be read fails the run before anything is copied.
    let crypt = backup::seal(spec)?;
    let conn = pg::connect(db, None).await?;
    let server = pg::server_version(&conn).await?;
    let cluster = pg::physical::check_cluster(&conn, &server, db, &job.name).await?;
    let pg_basebackup = pg::tool_path(db, "pg_basebackup", server.major);
    let tool_version = pg::require_tool_at_least(&pg_basebackup, &server)?;
    let dbname = pg::current_database(&conn).await?;
    let ended = pg::physical::end_abandoned(&conn, &job.name).await?;
    if !ended.is_empty() {
        tracing::warn!(
            "job {}: ended the server side of a base backup a stopped run left waiting for the \
             archive (process {ended:?})",
            job.name
        );
    }
    let mut warnings = Vec::new();
    same_cluster(
        job,
        db,
        storages,
        &cluster,
        accept_new_source,
        &mut warnings,
    )
    .await?;

    // A storage that cannot be listed or written is reported as failed, and
    // the backup goes on to the others.
    let mut failed = Vec::new();
    let id = backup::unused_id(storages, &job.name, started_at, &mut failed).await?;
    let storages = backup::without_failed(storages, &failed);
    let prefix = catalog::backup_prefix(&job.name, &id)?;
    tracing::info!(
        "job {}: taking a base backup of the cluster of {} (PostgreSQL {}, system {}) as {id}",
        job.name,
        db.name,
        server.text,
        cluster.system_identifier
    );
    let base_name = catalog::object_name(Role::Base, spec.compression, spec.encryption.is_some());
    let base_key = prefix.join(&base_name)?;
    let destinations = backup::open_writers(&storages, &base_key).await?;
    let start_time = pg::physical::server_time(&conn).await?;
    let taken = stream::take(
        stream::Take {
            job: &job.name,
            db,
            pg_basebackup: &pg_basebackup,
            label: pg::physical::backup_label(&job.name, id.as_str()),
            compression: spec.compression,
            crypt,
            destinations,
            object: base_key.to_string(),
            wal_wait: wal_settings.wait,
        },
        &conn,
        clock,
        progress,
    )
    .await?;
    // A server clock stepped back meanwhile must not make a backup that
    // stops before it starts.
    let stop_time = pg::physical::server_time(&conn).await?.max(start_time);
    let delivered = backup::keep_delivered(&storages, taken.deliveries, &mut failed);
    let points = taken.points;
    let physical = Physical::new(
        points.timeline,
        (points.start, points.stop),
        (start_time, stop_time),
        cluster.wal_segment_size,
        pg::physical::MANIFEST_CHECKSUMS,
    );
    tracing::info!(
        "job {}: base backup {id} is WAL {} to {} on timeline {} ({} to {}); waiting for it \
         in the archive",
        job.name,
        points.start,
        points.stop,
        points.timeline,
        physical.wal_start,
        physical.wal_stop
    );
    let (healthy, lacking) = wal::await_segments(
        &job.name,
        &delivered,
        &physical.segments(),
        cluster.wal_segment_size,
        wal_settings.wait,
        clock,
    )
    .await;
    // A base tar without its WAL restores nothing: it goes, and the
    // storage counts as failed.
    for (name, _) in &lacking {
        discard(&delivered, name, &base_key).await;
    }
    let mut lacking = lacking.into_iter();
    if healthy.is_empty()
        && let Some((_, e)) = lacking.next()
    {
        return Err(e);
    }
    failed.extend(lacking);

    let manifest = Manifest {
        format: catalog::FORMAT,
        id,
        job: job.name.clone(),
        database: db.name.clone(),
        dbname,
        server_version: server.text,
        pg_dump_version: tool_version,
        // Consistent from the end of the backup on.
        snapshot_at: stop_time,
        started_at,
        finished_at: clock.now(),
        compression: spec.compression.name().to_owned(),
        encryption: spec
            .encryption
            .as_ref()
            .map(|_| crate::archive::crypt::AGE.to_owned()),
        objects: vec![ManifestObject {
            key: base_name,
            role: Role::Base,
            digest: taken.digest,
        }],
        tables: Vec::new(),
        extensions: Vec::new(),
        warnings,
        directory: None,
        tree: None,
        system_identifier: Some(cluster.system_identifier),
        database_properties: None,
        row_counts: None,
        physical: Some(physical),
    };
    backup::conclude(&healthy, &prefix, manifest, failed).await
}

/// Refuses a cluster other than the one the job's previous backups are of
/// (a new server behind the same url, a restored copy), unless told to
/// accept it.
async fn same_cluster(
    job: &Job,
    db: &Database,
    storages: &[Arc<dyn Storage>],
    cluster: &ClusterFacts,
    accept_new_source: bool,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let Some(previous) = backup::previous_source(storages, &job.name).await else {
        return Ok(());
    };
    let Some(then) = previous.system_identifier.as_deref() else {
        return Ok(());
    };
    if then == cluster.system_identifier {
        return Ok(());
    }
    let difference = format!(
        "this is cluster {}, and its previous backup {} is of cluster {then}",
        cluster.system_identifier, previous.id
    );
    if !accept_new_source {
        return Err(Error::refused(format!(
            "job {}: {difference}; nothing was backed up, so the job's history stays one cluster",
            job.name
        ))
        .with_hint(format!(
            "check the url of [databases.{}] and the PG* environment; if the cluster was replaced \
             on purpose (a new server, a restore), run `backup run {} --accept-new-source` once",
            db.name, job.name
        )));
    }
    let warning = format!("the source changed, accepted with --accept-new-source: {difference}");
    tracing::warn!("job {}: {warning}", job.name);
    warnings.push(warning);
    Ok(())
}

/// Deletes the base tar from the storage called `name`; what cannot be
/// deleted is left to prune, which removes incomplete backups.
async fn discard(storages: &[Arc<dyn Storage>], name: &str, key: &Key) {
    if let Some(storage) = storages.iter().find(|s| s.name() == name)
        && let Err(e) = storage.delete(key).await
    {
        tracing::warn!("storage {name}: cannot delete {key}: {e}");
    }
}
