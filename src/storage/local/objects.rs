//! What the [`Storage`](crate::storage::Storage) calls do on the file
//! system, blocking: open an object, delete one (and the directories it
//! leaves empty), list a prefix, clean up after writers that never
//! finished.

use std::ffi::OsStr;
use std::fs::File;

use nix::errno::Errno;

use super::dirs::split;
use super::{LocalStorage, TEMP_PREFIX};
use crate::error::{Error, Result};
use crate::nofollow;
use crate::storage::retry::Moved;
use crate::storage::{Key, ObjectInfo};

impl LocalStorage {
    pub(super) fn open_blocking(&self, key: &Key) -> Result<File> {
        let not_found = || {
            Error::not_found(format!(
                "storage {}: object {key} does not exist ({})",
                self.name,
                self.path(key).display()
            ))
        };
        let (dirs, name) = split(key);
        let Some(dir) = self
            .open_chain(&dirs, false)?
            .and_then(|mut chain| chain.pop())
        else {
            return Err(not_found());
        };
        let file = match nofollow::open_file_at(&dir, OsStr::new(name)) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) if e.raw_os_error() == Some(Errno::ELOOP as i32) => {
                return Err(self.link_error(key.as_str()));
            }
            Err(e) => return Err(self.err(self.path(key).display(), e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| self.err(self.path(key).display(), e))?;
        if !meta.is_file() {
            return Err(Error::storage(format!(
                "storage {}: {} is not a regular file",
                self.name,
                self.path(key).display()
            )));
        }
        Ok(file)
    }

    pub(super) fn delete_blocking(&self, key: &Key) -> Result<()> {
        let (dirs, name) = split(key);
        let Some(chain) = self.open_chain(&dirs, false)? else {
            return Ok(());
        };
        let Some(dir) = chain.last() else {
            return Ok(());
        };
        let name = OsStr::new(name);
        match nofollow::metadata_at(dir, name) {
            Ok(meta) if meta.is_symlink() => return Err(self.link_error(key.as_str())),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(self.path(key).display(), e)),
        }
        match nofollow::remove_file_at(dir, name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(self.path(key).display(), e)),
        }
        // Leave no empty backup directories behind, up to (not including)
        // the root: chain[i] is the directory dirs[..i], held by chain[i - 1].
        for i in (1..chain.len()).rev() {
            if nofollow::remove_dir_at(&chain[i - 1], OsStr::new(dirs[i - 1])).is_err() {
                break;
            }
        }
        Ok(())
    }

    pub(super) fn list_blocking(&self, prefix: &Key, moved: &Moved) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        self.walk(prefix, moved, &mut |_, name, key, meta| {
            if !name.to_string_lossy().starts_with(TEMP_PREFIX) {
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .ok()
                        .and_then(|t| jiff::Timestamp::try_from(t).ok()),
                });
            }
            Ok(false)
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub(super) fn clean_unfinished_blocking(
        &self,
        prefix: &Key,
        before: jiff::Timestamp,
        moved: &Moved,
    ) -> Result<usize> {
        let before = std::time::SystemTime::from(before);
        let mut removed = 0;
        self.walk(prefix, moved, &mut |dir, name, key, meta| {
            let stale = name.to_string_lossy().starts_with(TEMP_PREFIX)
                && meta.modified().is_ok_and(|at| at < before);
            if !stale {
                return Ok(false);
            }
            match nofollow::remove_file_at(dir, name) {
                Ok(()) => {
                    tracing::info!(
                        "storage {}: removed {}, left by a writer that never finished",
                        self.name,
                        self.path(&key).display()
                    );
                    removed += 1;
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(self.err(self.path(&key).display(), e)),
            }
        })?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use crate::storage::Storage;
    use crate::storage::local::runtime;

    #[test]
    fn clean_unfinished_removes_old_temporary_files_and_the_directories_they_leave_empty() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("disk", dir.path());
            let key = |k: &str| Key::new(k).unwrap();
            crate::storage::write_small(&storage, &key("job/kept/data"), b"x")
                .await
                .unwrap();
            for k in ["job/killed/data", "job/kept/globals"] {
                let mut w = storage.writer(&key(k)).await.unwrap();
                w.write(b"partial").await.unwrap();
                std::mem::forget(w);
            }
            let now = jiff::Timestamp::now();
            let hour = jiff::SignedDuration::from_hours(1);
            let before = now.checked_sub(hour).unwrap();
            assert_eq!(
                storage.clean_unfinished(&key("job"), before).await.unwrap(),
                0
            );
            let after = now.checked_add(hour).unwrap();
            assert_eq!(
                storage.clean_unfinished(&key("job"), after).await.unwrap(),
                2
            );
            assert!(!dir.path().join("job/killed").exists(), "emptied: removed");
            let kept: Vec<_> = std::fs::read_dir(dir.path().join("job/kept"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(kept, ["data"]);
            // A writer can still start where the directory was removed.
            crate::storage::write_small(&storage, &key("job/killed/data"), b"y")
                .await
                .unwrap();
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
