//! A directory on a local (or mounted) file system.
//!
//! Writes go to a hidden temporary name beside the target (`.tmp-…`), are
//! fsynced, renamed into place and the directory fsynced: after `finish`
//! returns, the object survives a crash; before it, nothing is visible under
//! the key. A process killed before either (kill -9, the OOM killer) leaves
//! its temporary file behind: [`Storage::clean_unfinished`] removes those by
//! their age, and prune calls it while no run of the job holds its lock.
//!
//! Below the root, everything is reached from the root's descriptor one name
//! at a time and never through a symbolic link ([`crate::nofollow`]): a link
//! planted in the storage (`<root>/nightly` pointing elsewhere) would let
//! restore and verify read, and prune delete, outside it. A link met by
//! `reader`, `writer` or `delete` is an error that names it; `list` and
//! `clean_unfinished` leave it out and warn. The root itself may be a link:
//! that one is the operator's choice, made in the job file.
//!
//! Backups hold secrets (`globals.sql` has every role's password verifier),
//! so files are created 0600 and directories 0700, whatever the umask.
//!
//! A hung file system (an NFS server gone, a failing disk) blocks a system
//! call for as long as it likes, and no call can be taken back. What can be
//! done is not to wait: every operation that moves nothing for `io_timeout`
//! fails the run with a storage error, and the thread stuck in the kernel is
//! left behind (the process does not wait for it at exit).
//!
//! This file holds the storage and its [`Storage`] calls; `dirs.rs` reaches
//! directories below the root without following links, `objects.rs` opens,
//! deletes and lists what is there, `writer.rs` writes an object, and
//! `bounded.rs` keeps every call within `io_timeout`.

mod bounded;
mod dirs;
mod objects;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::error::{Error, Kind, Result};
use crate::model::Retry;
use crate::storage::{Key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use bounded::Watched;
use dirs::split;
use writer::LocalWriter;

/// Prefix of in-progress files; `list` never reports them.
const TEMP_PREFIX: &str = ".tmp-";
/// How long an fsync may take whatever io_timeout says: it writes out all
/// the file's data the kernel still holds, gigabytes on a large machine,
/// and shows no progress while it does.
const SYNC_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);
/// Owner only: backups hold secrets.
const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;

#[derive(Debug, Clone)]
pub struct LocalStorage {
    name: String,
    root: PathBuf,
    io_timeout: std::time::Duration,
    health: Arc<super::health::Health>,
}

impl LocalStorage {
    pub fn new(name: &str, root: &Path) -> Self {
        LocalStorage {
            name: name.to_owned(),
            root: root.to_owned(),
            io_timeout: Retry::default().io_timeout,
            health: super::health::of(name),
        }
    }

    /// How long an operation may move nothing before it fails.
    pub fn with_io_timeout(mut self, io_timeout: std::time::Duration) -> Self {
        self.io_timeout = io_timeout;
        self
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn err(&self, what: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::io(Kind::Storage, format!("storage {}: {what}", self.name), e)
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn name(&self) -> &str {
        &self.name
    }

    async fn writer(&self, key: &Key) -> Result<Box<dyn ObjectWriter>> {
        let owned = key.clone();
        let (dir, temp, file) = self
            .blocking(
                format!("creating a file for {}", self.path(key).display()),
                move |this, _| {
                    let (dirs, name) = split(&owned);
                    this.create_temp(&dirs, name)
                },
            )
            .await?;
        let (_, name) = split(key);
        Ok(Box::new(LocalWriter {
            storage: self.clone(),
            file: Some(tokio::io::BufWriter::with_capacity(
                1 << 20,
                tokio::fs::File::from_std(file),
            )),
            dir: Arc::new(dir),
            temp,
            name: name.to_owned(),
            key: key.clone(),
            size: 0,
        }))
    }

    async fn reader(&self, key: &Key) -> Result<ObjectReader> {
        let owned = key.clone();
        let file = self
            .blocking(
                format!("opening {}", self.path(key).display()),
                move |this, _| this.open_blocking(&owned),
            )
            .await?;
        Ok(Box::pin(Watched {
            inner: tokio::io::BufReader::with_capacity(1 << 20, tokio::fs::File::from_std(file)),
            deadline: None,
            hung: None,
            storage: self.clone(),
            path: self.path(key),
        }))
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<ObjectInfo>> {
        let what = format!("listing {}", self.root.join(prefix.as_str()).display());
        let prefix = prefix.clone();
        self.blocking(what, move |this, moved| this.list_blocking(&prefix, moved))
            .await
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let what = format!("deleting {}", self.path(key).display());
        let key = key.clone();
        self.blocking(what, move |this, _| this.delete_blocking(&key))
            .await
    }

    /// The temporary files of writers that never finished nor aborted (a
    /// process killed with SIGKILL or by the OOM killer) whose last write
    /// was before `before`, and the directories they leave empty.
    async fn clean_unfinished(&self, prefix: &Key, before: jiff::Timestamp) -> Result<usize> {
        let what = format!("cleaning up {}", self.root.join(prefix.as_str()).display());
        let prefix = prefix.clone();
        self.blocking(what, move |this, moved| {
            this.clean_unfinished_blocking(&prefix, before, moved)
        })
        .await
    }
}

/// A runtime for the tests of every file here, with time and I/O.
#[cfg(test)]
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
