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
//! 2. with `incremental = true`, decide whether this backup is full or
//!    incremental and against which ([`incremental`]);
//! 3. stream `pg_basebackup` into `<job>/<id>/base.tar.<ext>` in every
//!    storage, its wait for the archive bounded by `wal_wait`
//!    ([`stream`]); a copy of the tar's `backup_manifest` beside it, which
//!    the next incremental backup is taken against;
//! 4. wait, bounded by `wal_wait` again, until every segment the backup
//!    needs is archived in each storage that took the tar ([`wal`]);
//! 5. write `manifest.json`. Only now does the backup exist.

pub mod incremental;
mod stream;
mod wal;

use std::sync::Arc;

use super::backup::{self, BackupOutcome};
use crate::archive;
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
    full: bool,
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
    let mut against = match wal_settings.incremental {
        Some(full_every) => {
            incremental::decide(
                job,
                spec,
                full_every,
                full,
                &conn,
                &server,
                &cluster,
                &storages,
                &mut warnings,
            )
            .await?
        }
        None => None,
    };
    let base_name = catalog::object_name(Role::Base, spec.compression, spec.encryption.is_some());
    let base_key = prefix.join(&base_name)?;
    let mut start_time = pg::physical::server_time(&conn).await?;
    let parent_file = against.as_ref().map(|a| a.file.to_path_buf());
    let take = |incremental: bool, destinations| stream::Take {
        job: &job.name,
        db,
        pg_basebackup: &pg_basebackup,
        label: pg::physical::backup_label(&job.name, id.as_str()),
        compression: spec.compression,
        crypt: crypt.clone(),
        destinations,
        object: base_key.to_string(),
        wal_wait: wal_settings.wait,
        incremental: parent_file.as_deref().filter(|_| incremental),
    };
    let destinations = backup::open_writers(&storages, &base_key).await?;
    let taken = stream::take(take(true, destinations), &conn, clock, progress.clone()).await;
    let taken = match (taken, &against) {
        (Err(e), Some(a)) if incremental::server_refused(&e) => {
            // Nothing was stored: the server refused before the first file.
            let warning = format!(
                "the server could not take an incremental backup against {} ({}): this base \
                 backup is a full one",
                a.parent.id,
                e.message()
            );
            tracing::warn!("job {}: {warning}", job.name);
            warnings.push(warning);
            against = None;
            start_time = pg::physical::server_time(&conn).await?;
            let destinations = backup::open_writers(&storages, &base_key).await?;
            stream::take(take(false, destinations), &conn, clock, progress).await?
        }
        (Err(e), Some(a)) => {
            let hint = format!(
                "`backup run {} --full` takes a full backup, starting a new chain, if the chain \
                 from {} is the trouble",
                job.name, a.parent.id
            );
            let hint = match e.hint() {
                Some(h) => format!("{h}; {hint}"),
                None => hint,
            };
            return Err(e.with_hint(hint));
        }
        (taken, _) => taken?,
    };
    // A server clock stepped back meanwhile must not make a backup that
    // stops before it starts.
    let stop_time = pg::physical::server_time(&conn).await?.max(start_time);
    let delivered = backup::keep_delivered(&storages, taken.deliveries, &mut failed);
    let points = taken.points;
    let mut physical = Physical::new(
        points.timeline,
        (points.start, points.stop),
        (start_time, stop_time),
        cluster.wal_segment_size,
        pg::physical::MANIFEST_CHECKSUMS,
    );
    physical.incremental_of = against.map(|a| a.link);
    let mut objects = vec![ManifestObject {
        key: base_name,
        role: Role::Base,
        digest: taken.digest,
    }];
    // The next incremental backup is taken against this copy.
    let delivered = match &taken.manifest {
        Some(text) => {
            let name = catalog::object_name(
                Role::BackupManifest,
                spec.compression,
                spec.encryption.is_some(),
            );
            let key = prefix.join(&name)?;
            let destinations = backup::open_writers(&delivered, &key).await?;
            let (digest, deliveries) = archive::store(
                std::io::Cursor::new(text.clone()),
                spec.compression,
                crypt.clone(),
                destinations,
                &key.to_string(),
                Arc::new(|_| {}),
                async { Ok(()) },
            )
            .await?;
            objects.push(ManifestObject {
                key: name,
                role: Role::BackupManifest,
                digest,
            });
            let kept = backup::keep_delivered(&delivered, deliveries, &mut failed);
            // A tar without its copy of the manifest is not kept either.
            for lost in delivered
                .iter()
                .filter(|s| !kept.iter().any(|k| k.name() == s.name()))
            {
                discard(&delivered, lost.name(), &base_key).await;
            }
            kept
        }
        None => {
            if wal_settings.incremental.is_some() {
                let warning = format!(
                    "its backup_manifest is over {} MiB and is not kept beside the tar: the \
                     next base backup is a full one",
                    pg::physical::MANIFEST_KEEP >> 20
                );
                tracing::warn!("job {}: {warning}", job.name);
                warnings.push(warning);
            }
            delivered
        }
    };
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
        for object in &objects {
            discard(&delivered, name, &prefix.join(&object.key)?).await;
        }
    }
    let mut lacking = lacking.into_iter();
    if healthy.is_empty()
        && let Some((_, e)) = lacking.next()
    {
        return Err(e);
    }
    failed.extend(lacking);

    let manifest = Manifest {
        format: if physical.incremental_of.is_some() {
            catalog::FORMAT_INCREMENTAL
        } else {
            catalog::FORMAT
        },
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
        objects,
        tables: Vec::new(),
        extensions: Vec::new(),
        warnings,
        directory: None,
        tree: None,
        system_identifier: Some(cluster.system_identifier),
        database_properties: None,
        row_counts: None,
        rows_from: None,
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
