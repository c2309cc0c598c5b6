//! `backup wal push`: one WAL file from `pg_wal/` into every storage of a
//! physical job, as `archive_command` runs it.
//!
//! The raw digest is computed first, as it is part of the object's name;
//! then each storage is asked whether it holds the file already: with the
//! same digest that storage is done, with another the push is refused (two
//! clusters archiving into one job, or a restored cluster on an old
//! timeline, must not overwrite the archive). The rest get the file through
//! the pipeline, compressed once. Success means every storage has it.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::names::{Archived, WalFile};
use super::object::list_dir;
use crate::archive::{self, Destination, crypt::Crypt};
use crate::error::{Error, Kind, Result};
use crate::model::Compression;
use crate::storage::Storage;

/// What one push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub file: WalFile,
    pub sha256: String,
    pub size: u64,
    /// Storages that received it now.
    pub stored: Vec<String>,
    /// Storages that held it already, with the same bytes.
    pub already: Vec<String>,
}

/// The file name `path` ends in, as a WAL file.
pub fn wal_file(path: &Path) -> Result<WalFile> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    WalFile::parse(name).ok_or_else(|| {
        Error::usage(format!(
            "{} is not a WAL file (a segment, .partial, .backup or .history file)",
            path.display()
        ))
        .with_hint("PostgreSQL passes it as %p: archive_command = 'backup wal push --job J %p'")
    })
}

/// SHA-256 and size of the file at `path`.
pub fn digest_file(path: &Path) -> Result<(String, u64)> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| Error::io(Kind::NotFound, format!("reading {}", path.display()), e))?;
    let mut sha = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; archive::CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::io(
                    Kind::Internal,
                    format!("reading {}", path.display()),
                    e,
                ));
            }
        };
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((archive::hex(&sha.finalize()), size))
}

/// Pushes the file at `path` into every storage. `job` names the archive.
pub async fn push(
    job: &str,
    storages: &[Arc<dyn Storage>],
    compression: Compression,
    crypt: Crypt,
    path: &Path,
) -> Result<Pushed> {
    let file = wal_file(path)?;
    let owned = path.to_path_buf();
    let (sha256, size) = tokio::task::spawn_blocking(move || digest_file(&owned))
        .await
        .map_err(|e| Error::internal(format!("hashing a WAL file: {e}")))??;
    let prefix = file.prefix(job)?;
    // Every storage is asked at once: the archive waits on the slowest.
    let listings =
        futures::future::join_all(storages.iter().map(|s| list_dir(s.as_ref(), &prefix))).await;
    let mut already = Vec::new();
    let mut needed: Vec<&Arc<dyn Storage>> = Vec::new();
    let mut failures: Vec<(String, Error)> = Vec::new();
    for (storage, listing) in storages.iter().zip(listings) {
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                failures.push((storage.name().to_owned(), e));
                continue;
            }
        };
        let same_name: Vec<&Archived> = listing.iter().filter(|a| a.file == file).collect();
        if same_name.iter().any(|a| a.sha256 == sha256) {
            already.push(storage.name().to_owned());
        } else if let Some(other) = same_name.first() {
            return Err(Error::refused(format!(
                "job {job}: {file} is already archived in storage {} with other contents \
                 (sha256 {}, this file's is {sha256}); nothing was overwritten",
                storage.name(),
                other.sha256
            ))
            .with_hint(
                "only one cluster may archive into a job: check the archive_command of every \
                 server pointing at this job (a restored or cloned cluster keeps its parent's); \
                 once you know which copy is right, move the other aside by hand",
            ));
        } else {
            needed.push(storage);
        }
    }
    let mut stored = Vec::new();
    if !needed.is_empty() {
        let key = file.key(job, &sha256, compression, !matches!(crypt, Crypt::None))?;
        let mut destinations = Vec::with_capacity(needed.len());
        for storage in &needed {
            match storage.writer(&key).await {
                Ok(writer) => destinations.push(Destination {
                    storage: storage.name().to_owned(),
                    writer,
                }),
                Err(e) => failures.push((storage.name().to_owned(), e)),
            }
        }
        if !destinations.is_empty() {
            let source = std::fs::File::open(path)
                .map_err(|e| Error::io(Kind::NotFound, format!("reading {}", path.display()), e))?;
            let (digest, deliveries) = archive::store(
                source,
                compression,
                crypt,
                destinations,
                &key.to_string(),
                Arc::new(|_| {}),
                std::future::ready(Ok(())),
            )
            .await?;
            // The file changed between hashing and storing: the stored
            // object's name would lie about its bytes.
            if digest.raw_sha256 != sha256 {
                for storage in &needed {
                    let _ = storage.delete(&key).await;
                }
                return Err(Error::internal(format!(
                    "{} changed while it was being archived; nothing was kept",
                    path.display()
                ))
                .with_hint("PostgreSQL never changes a segment it hands to archive_command: is something else writing pg_wal?"));
            }
            for d in deliveries {
                match d.result {
                    Ok(()) => stored.push(d.storage),
                    Err(e) => failures.push((d.storage, e)),
                }
            }
        }
    }
    if let Some((storage, e)) = failures.into_iter().next() {
        return Err(e.context(format!(
            "job {job}: {file} could not be archived in storage {storage}"
        )));
    }
    Ok(Pushed {
        file,
        sha256,
        size,
        stored,
        already,
    })
}
