//! A directory on a local (or mounted) file system.
//!
//! Writes go to a hidden temporary name beside the target, are fsynced, renamed
//! into place and the directory fsynced: after `finish` returns, the object
//! survives a crash; before it, nothing is visible under the key.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{Capabilities, Key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use crate::error::{Error, Kind, Result};

/// Prefix of in-progress files; `list` never reports them.
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug, Clone)]
pub struct LocalStorage {
    name: String,
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(name: &str, root: &Path) -> Self {
        LocalStorage {
            name: name.to_owned(),
            root: root.to_owned(),
        }
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

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    async fn writer(&self, key: &Key) -> Result<Box<dyn ObjectWriter>> {
        let target = self.path(key);
        let dir = target
            .parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| self.err(dir.display(), e))?;
        let temp = dir.join(format!(
            "{TEMP_PREFIX}{}-{}",
            key.file_name(),
            std::process::id() as u64 * 1_000_000 + u64::from(rand_suffix())
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .await
            .map_err(|e| self.err(temp.display(), e))?;
        Ok(Box::new(LocalWriter {
            storage: self.clone(),
            file: Some(tokio::io::BufWriter::with_capacity(1 << 20, file)),
            temp,
            target,
            dir,
            size: 0,
        }))
    }

    async fn reader(&self, key: &Key) -> Result<ObjectReader> {
        let path = self.path(key);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(Box::pin(tokio::io::BufReader::with_capacity(1 << 20, file))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found(format!(
                "storage {}: object {key} does not exist ({})",
                self.name,
                path.display()
            ))),
            Err(e) => Err(self.err(path.display(), e)),
        }
    }

    async fn list(&self, prefix: &Key) -> Result<Vec<ObjectInfo>> {
        let this = self.clone();
        let prefix = prefix.clone();
        tokio::task::spawn_blocking(move || this.list_blocking(&prefix))
            .await
            .map_err(|e| Error::internal(format!("listing task failed: {e}")))?
    }

    async fn delete(&self, key: &Key) -> Result<()> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(path.display(), e)),
        }
        // Leave no empty backup directories behind, up to (not including) the root.
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == self.root || !d.starts_with(&self.root) || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    }
}

impl LocalStorage {
    fn list_blocking(&self, prefix: &Key) -> Result<Vec<ObjectInfo>> {
        let base = self.path(prefix);
        let mut out = Vec::new();
        let mut pending = vec![base];
        while let Some(dir) = pending.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(dir.display(), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.err(dir.display(), e))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let meta = entry
                    .metadata()
                    .map_err(|e| self.err(entry.path().display(), e))?;
                if meta.is_dir() {
                    pending.push(entry.path());
                } else if meta.is_file() {
                    let relative = entry.path();
                    let relative = relative.strip_prefix(&self.root).unwrap_or(&relative);
                    if let Some(text) = relative.to_str()
                        && let Ok(key) = Key::new(text)
                    {
                        out.push(ObjectInfo {
                            key,
                            size: meta.len(),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// A per-process counter is enough: the pid already separates processes.
fn rand_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

struct LocalWriter {
    storage: LocalStorage,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    temp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    size: u64,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::internal("write after finish"))?;
        file.write_all(chunk)
            .await
            .map_err(|e| self.storage.err(self.temp.display(), e))?;
        self.size += chunk.len() as u64;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::internal("finish twice"))?;
        let result = async {
            file.flush()
                .await
                .map_err(|e| self.storage.err(self.temp.display(), e))?;
            let file = file.into_inner();
            file.sync_all()
                .await
                .map_err(|e| self.storage.err(self.temp.display(), e))?;
            drop(file);
            tokio::fs::rename(&self.temp, &self.target)
                .await
                .map_err(|e| self.storage.err(self.target.display(), e))?;
            sync_dir(&self.dir)
                .await
                .map_err(|e| self.storage.err(self.dir.display(), e))
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        result.map(|()| self.size)
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.file.take();
        match tokio::fs::remove_file(&self.temp).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.storage.err(self.temp.display(), e)),
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Dropped without finish or abort: a failed or cancelled write.
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

async fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

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
            let listed = storage.list(&prefix).await.unwrap();
            assert_eq!(
                listed,
                vec![ObjectInfo {
                    key: key.clone(),
                    size: 11
                }]
            );
            let body = super::super::read_small(&storage, &key, 100).await.unwrap();
            assert_eq!(body, b"hello world");

            storage.delete(&key).await.unwrap();
            storage.delete(&key).await.unwrap();
            assert!(!dir.path().join("job").exists());
        });
    }

    #[test]
    fn missing_object_is_not_found() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("disk", dir.path());
            let err = storage
                .reader(&Key::new("a/b").unwrap())
                .await
                .err()
                .unwrap();
            assert_eq!(err.kind(), Kind::NotFound);
            assert!(err.message().contains("a/b"));
        });
    }
}
