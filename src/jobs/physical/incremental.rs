//! Whether a physical job's base backup is full or incremental, and what an
//! incremental one is taken against.
//!
//! With `incremental = true`, PostgreSQL 17 and newer take a base backup
//! that holds only the blocks changed since a previous one
//! (`pg_basebackup --incremental=<its backup_manifest>`), read from the WAL
//! summaries the server keeps while `summarize_wal = on`. The previous
//! backup is the job's newest, when every storage the job writes holds it:
//! an incremental restores only with every backup before it back to a full
//! one, from the same storage. Its `backup_manifest` is the copy stored
//! beside its tar, so the tar is never read back.
//!
//! A full backup is taken instead, and the reason said in the manifest's
//! warnings, whenever an incremental one cannot be: a server before 17, no
//! WAL summaries, no previous backup in some storage, a previous backup
//! without a stored `backup_manifest` or whose key is not on this host. The
//! chain's length (`full_every`) and `backup run --full` start a new chain
//! without a warning: they are the schedule.

use std::io::Write;
use std::sync::Arc;

use crate::archive;
use crate::catalog::{self, Manifest, Parent, Role};
use crate::error::{Error, Result};
use crate::model::{BackupJob, Job};
use crate::pg::physical::{ClusterFacts, MANIFEST_KEEP};
use crate::pg::{Connection, ServerVersion};
use crate::storage::Storage;

/// The first major whose base backups can be incremental.
pub const MIN_MAJOR: u32 = 17;

/// An incremental backup to take: against `parent`, whose `backup_manifest`
/// is in `file` (removed when this is dropped).
pub(super) struct Against {
    pub parent: Manifest,
    pub link: Parent,
    pub file: tempfile::TempPath,
}

/// What the job asks and the server allows: `Ok(None)` is a full backup,
/// its reason (if it is not the schedule) pushed to `warnings`.
#[allow(clippy::too_many_arguments)] // the job, the server, and what it said
pub(super) async fn decide(
    job: &Job,
    spec: &BackupJob,
    full_every: u32,
    full: bool,
    conn: &Connection,
    server: &ServerVersion,
    cluster: &ClusterFacts,
    storages: &[Arc<dyn Storage>],
    warnings: &mut Vec<String>,
) -> Result<Option<Against>> {
    let mut full_because = |why: String| {
        let warning = format!("{why}: this base backup is a full one");
        tracing::warn!("job {}: {warning}", job.name);
        warnings.push(warning);
        Ok(None)
    };
    if full {
        tracing::info!("job {}: a full base backup, as asked (--full)", job.name);
        return Ok(None);
    }
    if server.major < MIN_MAJOR {
        return full_because(format!(
            "the server is PostgreSQL {}, and incremental base backups need {MIN_MAJOR} or newer",
            server.text
        ));
    }
    let summarize: String = conn
        .client
        .query_one("SELECT current_setting('summarize_wal')", &[])
        .await
        .map_err(|e| crate::pg::query_error("reading summarize_wal", e))?
        .get(0);
    if summarize != "on" {
        return full_because(
            "the server keeps no WAL summaries (summarize_wal = off), which an incremental base \
             backup is read from; set summarize_wal = on (a reload is enough)"
                .to_owned(),
        );
    }
    // The previous backup, the same in every storage, its own chain whole.
    let mut newest: Vec<(String, Option<Manifest>)> = Vec::new();
    let mut broken = None;
    for storage in storages {
        let listing = match catalog::list(storage.as_ref(), &job.name).await {
            Ok(listing) => listing,
            Err(e) => {
                return full_because(format!(
                    "storage {} could not be listed ({}), and an incremental backup needs its \
                     previous backup there",
                    storage.name(),
                    e.message()
                ));
            }
        };
        let bases: Vec<&Manifest> = listing
            .backups
            .iter()
            .filter(|m| m.physical.is_some())
            .collect();
        let found = listing.backups.iter().max_by_key(|m| m.id.clone()).cloned();
        if let Some(m) = &found
            && m.physical.is_some()
            && let Err(why) = crate::jobs::pitr::plan::chain_of(m, &bases)
        {
            broken.get_or_insert(format!(
                "in storage {}, backup {}: {why}",
                storage.name(),
                m.id
            ));
        }
        newest.push((storage.name().to_owned(), found));
    }
    let Some((_, Some(parent))) = newest.first().cloned() else {
        tracing::info!(
            "job {}: no previous base backup: this one is full and starts a chain",
            job.name
        );
        return Ok(None);
    };
    if let Some((name, other)) = newest
        .iter()
        .find(|(_, m)| m.as_ref().map(|m| &m.id) != Some(&parent.id))
    {
        return full_because(format!(
            "storage {name} holds {} as the job's newest backup, and storage {} holds {}; an \
             incremental backup restores only where its previous backup is",
            other
                .as_ref()
                .map_or("nothing".to_owned(), |m| format!("{}", m.id)),
            newest[0].0,
            parent.id
        ));
    }
    if let Some(why) = broken {
        return full_because(format!("the previous backup cannot be restored ({why})"));
    }
    if parent.encryption.is_some() != spec.encryption.is_some() {
        return full_because(format!(
            "the previous backup {} is {}, and the job now {}: a chain restores with one key",
            parent.id,
            if parent.encryption.is_some() {
                "encrypted"
            } else {
                "not encrypted"
            },
            if spec.encryption.is_some() {
                "encrypts"
            } else {
                "does not"
            }
        ));
    }
    let Some(physical) = parent.physical.as_ref() else {
        return full_because(format!(
            "the job's newest backup {} is not a base backup",
            parent.id
        ));
    };
    if parent.system_identifier.as_deref() != Some(cluster.system_identifier.as_str()) {
        return full_because(format!(
            "the previous backup {} is of another cluster",
            parent.id
        ));
    }
    let chain_length = physical
        .incremental_of
        .as_ref()
        .map_or(1, |p| p.chain_length)
        + 1;
    if chain_length > full_every {
        tracing::info!(
            "job {}: the chain from the last full backup has {} backups (full_every = \
             {full_every}): this one is full and starts a new chain",
            job.name,
            chain_length - 1
        );
        return Ok(None);
    }
    let Some(object) = parent.object(Role::BackupManifest).cloned() else {
        return full_because(format!(
            "the previous backup {} has no copy of its backup_manifest beside its tar (taken by \
             an older version of backup, or its manifest was over {} MiB)",
            parent.id,
            MANIFEST_KEEP >> 20
        ));
    };
    let storage = &storages[0];
    let crypt = match catalog::opener(storage.as_ref(), &parent, spec.keys()).await {
        Ok(crypt) => crypt,
        Err(e) => {
            return full_because(format!(
                "the previous backup {}'s backup_manifest cannot be opened here ({}); an \
                 encrypted job's incremental backups need its identity where the job runs",
                parent.id,
                e.message()
            ));
        }
    };
    let key = catalog::backup_prefix(&job.name, &parent.id)?.join(&object.key)?;
    let compression = parent.compression()?;
    let reader = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let label = format!("{key} in storage {}", storage.name());
    let file = tokio::task::spawn_blocking(move || -> Result<tempfile::TempPath> {
        let mut file = tempfile::Builder::new()
            .prefix("backup-manifest-")
            .tempfile()
            .map_err(|e| {
                Error::io(
                    crate::error::Kind::Tool,
                    "creating a temporary file for the previous backup_manifest",
                    e,
                )
                .with_hint("set TMPDIR to a writable directory")
            })?;
        let mut limited = Limited {
            inner: file.as_file_mut(),
            left: MANIFEST_KEEP as u64 + 1,
        };
        archive::unpack(
            reader,
            compression,
            &crypt,
            &object.digest,
            &mut limited,
            &label,
            &|_| {},
        )?;
        file.as_file().sync_all().ok();
        Ok(file.into_temp_path())
    })
    .await
    .map_err(|e| Error::internal(format!("reading the previous backup_manifest: {e}")))??;
    let link = Parent {
        backup: parent.id.clone(),
        start_lsn: physical.start_lsn,
        timeline: physical.timeline,
        chain_length,
    };
    tracing::info!(
        "job {}: an incremental base backup against {} (link {chain_length} of at most \
         {full_every} from the full backup)",
        job.name,
        parent.id
    );
    Ok(Some(Against { parent, link, file }))
}

/// Whether `pg_basebackup --incremental` was refused as it began: the server
/// would not take the manifest, or not start an incremental backup from it
/// (no summaries for the whole range, a timeline not in its history, another
/// system). Nothing was stored then, and a full backup may go on; were the
/// refusal about something else, the full backup meets it again and fails.
pub(super) fn server_refused(e: &Error) -> bool {
    let text = e.message();
    text.contains("pg_basebackup")
        && [
            "could not initiate base backup",
            "could not upload manifest",
            "\"UPLOAD_MANIFEST\"",
        ]
        .iter()
        .any(|m| text.contains(m))
}

/// A sink that refuses more than `left` bytes: a stored manifest is ours and
/// bounded, but the bound does not rest on that.
struct Limited<'a> {
    inner: &'a mut std::fs::File,
    left: u64,
}

impl Write for Limited<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "the backup_manifest is larger than {} MiB",
                MANIFEST_KEEP >> 20
            )));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_as_the_backup_begins_turns_it_into_a_full_one() {
        let refused = |text: &str| server_refused(&Error::tool(text.to_owned()));
        assert!(refused(
            "pg_basebackup exited with status 1: pg_basebackup: error: could not initiate base \
             backup: ERROR:  WAL summaries are required on timeline 1 from 0/2000028 to \
             0/4000028, but no summaries for that timeline and LSN range exist"
        ));
        assert!(refused(
            "pg_basebackup exited with status 1: pg_basebackup: error: could not upload \
             manifest: ERROR:  timeline 2 found in manifest, but not in this server's history"
        ));
        // A job, an object or a WAL wait that says "incremental" is not the server's refusal.
        assert!(!refused(
            "job incremental-wal: the WAL this backup needs was not archived within 10m"
        ));
        assert!(!refused(
            "pg_basebackup exited with status 1: pg_basebackup: error: could not read COPY data: \
             server closed the connection unexpectedly"
        ));
    }
}
