//! Reading a job's WAL archive in one storage: what it holds, one object's
//! bytes (checked against the digest its name carries), and the timeline
//! history files the chain follows.

use std::io::Write;

use super::chain::History;
use super::names::{Archived, HISTORY_DIR, WalFile, wal_prefix};
use crate::archive::crypt::Crypt;
use crate::error::{Error, Result};
use crate::storage::{Key, Storage};

/// A history file is a few lines per timeline switch.
const HISTORY_LIMIT: u64 = 1 << 20;

/// Every archived object of `job` in `storage`, in key order. Objects that
/// are not ours (a local disk's temporary files) are left out.
pub async fn list(storage: &dyn Storage, job: &str) -> Result<Vec<Archived>> {
    Ok(list_dated(storage, job)
        .await?
        .into_iter()
        .map(|(a, _)| a)
        .collect())
}

/// [`list`], each object with the time the storage says it was written.
pub async fn list_dated(
    storage: &dyn Storage,
    job: &str,
) -> Result<Vec<(Archived, Option<jiff::Timestamp>)>> {
    Ok(storage
        .list(&wal_prefix(job)?)
        .await?
        .into_iter()
        .filter_map(|o| Archived::parse(&o.key, o.size).map(|a| (a, o.modified)))
        .collect())
}

/// The archived objects of `job` under one directory of its archive
/// (`<job>/wal/<TLI+LOG>` or `<job>/wal/history`): what a push or a fetch
/// of one file needs to look at.
pub async fn list_dir(storage: &dyn Storage, prefix: &Key) -> Result<Vec<Archived>> {
    Ok(storage
        .list(prefix)
        .await?
        .into_iter()
        .filter_map(|o| Archived::parse(&o.key, o.size))
        .collect())
}

/// Streams `archived`'s raw bytes into `sink` and checks them against the
/// digest in its name; returns their size. `crypt` opens it when it is
/// sealed (an encrypted object without identities is refused).
pub async fn read<W: Write + Send + 'static>(
    storage: &dyn Storage,
    archived: &Archived,
    crypt: &Crypt,
    mut sink: W,
) -> Result<(u64, W)> {
    let crypt = match (archived.encrypted, crypt) {
        (false, _) => Crypt::None,
        (true, Crypt::Open(_)) => crypt.clone(),
        (true, _) => {
            return Err(Error::refused(format!(
                "{} in storage {} is encrypted, and no identity to decrypt it is given",
                archived.key,
                storage.name()
            ))
            .with_hint(format!(
                "set {} to the secret key (or its file), or identity_file in the job's `encryption`",
                crate::keys::IDENTITY_ENV
            )));
        }
    };
    let reader = tokio_util::io::SyncIoBridge::new(storage.reader(&archived.key).await?);
    let label = format!("{} in storage {}", archived.key, storage.name());
    let compression = archived.compression;
    let sha = archived.sha256.clone();
    tokio::task::spawn_blocking(move || {
        let size =
            crate::archive::unpack_raw(reader, compression, &crypt, &sha, &mut sink, &label)?;
        Ok((size, sink))
    })
    .await
    .map_err(|e| Error::internal(format!("reading a WAL object: {e}")))?
}

/// Reads and parses every timeline history file among `archived`.
pub async fn histories(
    storage: &dyn Storage,
    archived: &[Archived],
    crypt: &Crypt,
) -> Result<Vec<History>> {
    let mut out: Vec<History> = Vec::new();
    for a in archived {
        let WalFile::History(timeline) = a.file else {
            continue;
        };
        // Two objects of one timeline's history (pushed with different
        // bytes by two clusters) are refused at push; one is enough here.
        if out.iter().any(|h| h.timeline == timeline) {
            continue;
        }
        if a.stored_size > HISTORY_LIMIT {
            return Err(Error::integrity(format!(
                "{} in storage {} is {} bytes, larger than any history file",
                a.key,
                storage.name(),
                a.stored_size
            )));
        }
        let (_, bytes) = read(storage, a, crypt, Vec::new()).await?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::integrity(format!(
                "{} in storage {} is not text",
                a.key,
                storage.name()
            ))
        })?;
        out.push(History::parse(timeline, &text)?);
    }
    Ok(out)
}

/// `<job>/wal/history`.
pub fn history_prefix(job: &str) -> Result<Key> {
    wal_prefix(job)?.join(HISTORY_DIR)
}
