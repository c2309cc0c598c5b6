//! Writing an object: a hidden temporary file (0600) beside the target,
//! fsynced, renamed into place and the directory fsynced; removed again on
//! abort, on a failure, or when the writer is dropped unfinished.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use nix::fcntl::OFlag;
use tokio::io::AsyncWriteExt;

use super::{FILE_MODE, LocalStorage, SYNC_PATIENCE, TEMP_PREFIX};
use crate::error::{Error, Result};
use crate::nofollow;
use crate::storage::{Key, ObjectWriter};

impl LocalStorage {
    /// The directory `dirs` below the root, made where missing, and a new
    /// temporary file in it (0600) for `name`.
    pub(super) fn create_temp(&self, dirs: &[&str], name: &str) -> Result<(File, String, File)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Gone again as soon as made: removed meanwhile, as below.
            let Some(dir) = self
                .open_chain(dirs, true)?
                .and_then(|mut chain| chain.pop())
            else {
                if attempt < 3 {
                    continue;
                }
                return Err(Error::storage(format!(
                    "storage {}: {} was removed each time it was made",
                    self.name,
                    self.root.join(dirs.join("/")).display()
                )));
            };
            let temp = format!(
                "{TEMP_PREFIX}{name}-{}",
                u64::from(std::process::id()) * 1_000_000 + u64::from(rand_suffix())
            );
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
            match nofollow::create_at(&dir, OsStr::new(&temp), flags, FILE_MODE) {
                Ok(file) => {
                    // The umask may have taken bits off; never more than 0600.
                    file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                        .map_err(|e| {
                            self.err(self.root.join(dirs.join("/")).join(&temp).display(), e)
                        })?;
                    return Ok((dir, temp, file));
                }
                // The directory went between its opening and now (a prune
                // removing the emptied directory of a killed run): make it again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < 3 => continue,
                Err(e) => {
                    return Err(self.err(self.root.join(dirs.join("/")).join(&temp).display(), e));
                }
            }
        }
    }
}

/// A per-process counter is enough: the pid already separates processes.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(super) struct LocalWriter {
    pub(super) storage: LocalStorage,
    pub(super) file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    /// The directory the object goes in, held open: the rename and the
    /// clean-ups happen there, whatever its path has become.
    pub(super) dir: Arc<File>,
    pub(super) temp: String,
    pub(super) name: String,
    pub(super) key: Key,
    pub(super) size: u64,
}

impl LocalWriter {
    fn temp_path(&self) -> PathBuf {
        self.storage.path(&self.key).with_file_name(&self.temp)
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let LocalWriter {
            storage,
            file,
            key,
            temp,
            ..
        } = self;
        let file = file
            .as_mut()
            .ok_or_else(|| Error::internal("write after finish"))?;
        // The path is made only for a message: writes are the hot path.
        let temp_path = || storage.path(key).with_file_name(&*temp);
        storage
            .bounded(
                || format!("writing {}", temp_path().display()),
                storage.io_timeout,
                file.write_all(chunk),
            )
            .await?
            .map_err(|e| storage.err(temp_path().display(), e))?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::internal("finish twice"))?;
        let temp_path = self.temp_path();
        let storage = &self.storage;
        let result = async {
            storage
                .bounded(
                    || format!("writing {}", temp_path.display()),
                    storage.io_timeout,
                    file.flush(),
                )
                .await?
                .map_err(|e| storage.err(temp_path.display(), e))?;
            let file = file.into_inner();
            storage
                .bounded(
                    || format!("syncing {}", temp_path.display()),
                    storage.io_timeout.max(SYNC_PATIENCE),
                    file.sync_all(),
                )
                .await?
                .map_err(|e| storage.err(temp_path.display(), e))?;
            drop(file);
            let (dir, temp, name) = (self.dir.clone(), self.temp.clone(), self.name.clone());
            let target = storage.path(&self.key);
            storage
                .blocking(
                    format!("renaming {}", temp_path.display()),
                    move |storage, _| {
                        nofollow::rename_at(&dir, OsStr::new(&temp), OsStr::new(&name))
                            .map_err(|e| storage.err(target.display(), e))?;
                        dir.sync_all().map_err(|e| {
                            let parent = target.parent().unwrap_or(&storage.root);
                            storage.err(parent.display(), e)
                        })
                    },
                )
                .await
        }
        .await;
        if result.is_err() {
            let _ = self.storage.remove_temp(&self.dir, &self.temp);
        }
        result.map(|()| self.size)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file.take();
        match self.storage.remove_temp(&self.dir, &self.temp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.storage.err(self.temp_path().display(), e)),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Dropped without finish or abort: a failed or cancelled write.
        if self.file.take().is_some() {
            let _ = self.storage.remove_temp(&self.dir, &self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::storage::local::runtime;
    use crate::storage::{Key, Storage};

    #[test]
    fn nothing_is_visible_before_finish_and_abort_leaves_nothing() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("disk", dir.path());
            let key = Key::new("job/id/data.dump.zst").unwrap();
            let prefix = Key::new("job").unwrap();

            let mut w = storage.writer(&key).await.unwrap();
            w.write(b"hello").await.unwrap();
            assert!(storage.list(&prefix).await.unwrap().is_empty());
            assert!(storage.reader(&key).await.is_err());
            w.abort().await.unwrap();
            assert_eq!(
                std::fs::read_dir(dir.path().join("job/id"))
                    .unwrap()
                    .count(),
                0
            );

            let mut w = storage.writer(&key).await.unwrap();
            w.write(b"hello").await.unwrap();
            drop(w);
            assert_eq!(
                std::fs::read_dir(dir.path().join("job/id"))
                    .unwrap()
                    .count(),
                0
            );

            let mut w = storage.writer(&key).await.unwrap();
            w.write(b"hello ").await.unwrap();
            w.write(b"world").await.unwrap();
            assert_eq!(w.finish().await.unwrap(), 11);
            let listed: Vec<(Key, u64)> = storage
                .list(&prefix)
                .await
                .unwrap()
                .into_iter()
                .map(|o| (o.key, o.size))
                .collect();
            assert_eq!(listed, vec![(key.clone(), 11)]);
            let body = crate::storage::read_small(&storage, &key, 100)
                .await
                .unwrap();
            assert_eq!(body, b"hello world");

            storage.delete(&key).await.unwrap();
            storage.delete(&key).await.unwrap();
            assert!(!dir.path().join("job").exists());
        });
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn objects_are_0600_and_directories_0700() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("backups");
            let storage = LocalStorage::new("disk", &root);
            let key = Key::new("job/id/globals.sql.zst").unwrap();
            let mut w = storage.writer(&key).await.unwrap();
            w.write(b"CREATE ROLE app PASSWORD 'SCRAM-SHA-256$...'")
                .await
                .unwrap();
            let temp = std::fs::read_dir(root.join("job/id"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path();
            assert_eq!(mode(&temp), 0o600, "the temporary file too");
            w.finish().await.unwrap();
            for d in ["", "job", "job/id"] {
                assert_eq!(mode(&root.join(d)), 0o700, "{d:?}");
            }
            assert_eq!(mode(&root.join(key.as_str())), 0o600);
        });
    }
}
