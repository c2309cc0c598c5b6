//! Directories below the root, reached from the root's descriptor one name
//! at a time and never through a symbolic link, made 0700 where missing;
//! and the walk that lists and cleans them.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use super::{DIR_MODE, LocalStorage};
use crate::error::{Error, Result};
use crate::nofollow;
use crate::storage::Key;
use crate::storage::retry::Moved;

/// What a name below the root is, as a directory.
enum Step {
    Dir(File),
    Missing,
    Link,
}

/// Opens the directory `name` of `parent` without following a link; makes
/// it (0700) when missing and `create`.
fn step(parent: &File, name: &str, create: bool) -> std::io::Result<Step> {
    let name = OsStr::new(name);
    match nofollow::open_dir_at(parent, name) {
        Ok(dir) => return Ok(Step::Dir(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(Step::Missing),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return link_or(parent, name, e),
    }
    let made = match nofollow::mkdir_at(parent, name, DIR_MODE) {
        Ok(()) => true,
        // Made by another writer meanwhile: that one is opened.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    match nofollow::open_dir_at(parent, name) {
        Ok(dir) => {
            if made {
                // The umask may have taken bits off; never more than 0700.
                dir.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))?;
            }
            Ok(Step::Dir(dir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Step::Missing),
        Err(e) => link_or(parent, name, e),
    }
}

/// A link where a directory was asked for (ENOTDIR or ELOOP under
/// O_NOFOLLOW), else the error itself.
fn link_or(parent: &File, name: &OsStr, e: std::io::Error) -> std::io::Result<Step> {
    if matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ENOTDIR | Errno::ELOOP)
    ) && nofollow::metadata_at(parent, name).is_ok_and(|m| m.is_symlink())
    {
        Ok(Step::Link)
    } else {
        Err(e)
    }
}

/// A key's directories and its file name.
pub(super) fn split(key: &Key) -> (Vec<&str>, &str) {
    let mut segments: Vec<&str> = key.as_str().split('/').collect();
    let name = segments.pop().unwrap_or_default();
    (segments, name)
}

impl LocalStorage {
    /// A link below the root: a storage error (exit 5), not an integrity
    /// one. Nothing recorded was found to differ; the storage's layout is
    /// one backup will not use, and the fix is the operator's.
    pub(super) fn link_error(&self, relative: &str) -> Error {
        Error::storage(format!(
            "storage {}: {} is a symbolic link, and local storage never follows links below its root",
            self.name,
            self.root.join(relative).display()
        ))
        .with_hint(
            "a link there could make backup read, or prune delete, outside the storage; \
             point the storage's `path` at the real directory, or replace the link with \
             what it points to",
        )
    }

    fn warn_link(&self, relative: &str) {
        tracing::warn!(
            "storage {}: {} is a symbolic link: left out, never followed (local storage \
             uses only real directories and files below its root)",
            self.name,
            self.root.join(relative).display()
        );
    }

    /// The root, opened; made (0700) when missing and `create`, else `None`.
    fn open_root(&self, create: bool) -> Result<Option<File>> {
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(OFlag::O_DIRECTORY.bits())
                .open(&self.root)
        };
        match open() {
            Ok(root) => Ok(Some(root)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(DIR_MODE)
                    .create(&self.root)
                    .map_err(|e| self.err(self.root.display(), e))?;
                let root = open().map_err(|e| self.err(self.root.display(), e))?;
                root.set_permissions(std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| self.err(self.root.display(), e))?;
                Ok(Some(root))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(self.root.display(), e)),
        }
    }

    /// The directories from the root down to `dirs`, root first; `None`
    /// when one is missing (and not `create`). A link on the way is an error.
    pub(super) fn open_chain(&self, dirs: &[&str], create: bool) -> Result<Option<Vec<File>>> {
        let Some(root) = self.open_root(create)? else {
            return Ok(None);
        };
        let mut chain = vec![root];
        for (i, name) in dirs.iter().enumerate() {
            let relative = dirs[..=i].join("/");
            let Some(parent) = chain.last() else {
                return Err(Error::internal("an empty chain of directories"));
            };
            match step(parent, name, create)
                .map_err(|e| self.err(self.root.join(&relative).display(), e))?
            {
                Step::Dir(dir) => chain.push(dir),
                Step::Missing => return Ok(None),
                Step::Link => return Err(self.link_error(&relative)),
            }
        }
        Ok(Some(chain))
    }

    /// Calls `visit` with every regular file under `prefix/` (its directory,
    /// its name, its key and metadata), depth first, holding one descriptor
    /// per level. Links are left out with a warning, never followed. `visit`
    /// says whether it removed the file; a directory below `prefix` that
    /// removals emptied goes too.
    pub(super) fn walk(
        &self,
        prefix: &Key,
        moved: &Moved,
        visit: &mut dyn FnMut(&File, &OsStr, Key, &std::fs::Metadata) -> Result<bool>,
    ) -> Result<()> {
        let Some(root) = self.open_root(false)? else {
            return Ok(());
        };
        let mut dir = root;
        let mut relative = String::new();
        for name in prefix.as_str().split('/') {
            if !relative.is_empty() {
                relative.push('/');
            }
            relative.push_str(name);
            match step(&dir, name, false)
                .map_err(|e| self.err(self.root.join(&relative).display(), e))?
            {
                Step::Dir(next) => dir = next,
                Step::Missing => return Ok(()),
                Step::Link => {
                    self.warn_link(&relative);
                    return Ok(());
                }
            }
        }
        self.walk_dir(&dir, &relative, moved, visit).map(|_| ())
    }

    /// [`LocalStorage::walk`] of the open directory `dir`, at `relative`
    /// below the root; true when `visit` removed something in it.
    fn walk_dir(
        &self,
        dir: &File,
        relative: &str,
        moved: &Moved,
        visit: &mut dyn FnMut(&File, &OsStr, Key, &std::fs::Metadata) -> Result<bool>,
    ) -> Result<bool> {
        let names =
            nofollow::names(dir).map_err(|e| self.err(self.root.join(relative).display(), e))?;
        let mut removed = false;
        for name in names {
            moved.tick();
            let Some(text) = name.to_str() else { continue };
            let inside = format!("{relative}/{text}");
            let meta = match nofollow::metadata_at(dir, &name) {
                Ok(meta) => meta,
                // Gone since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(self.root.join(&inside).display(), e)),
            };
            if meta.is_symlink() {
                self.warn_link(&inside);
            } else if meta.is_dir() {
                let sub = match step(dir, text, false) {
                    Ok(Step::Dir(sub)) => sub,
                    Ok(Step::Missing) => continue,
                    // Swapped for a link since it was read.
                    Ok(Step::Link) => {
                        self.warn_link(&inside);
                        continue;
                    }
                    Err(e) => return Err(self.err(self.root.join(&inside).display(), e)),
                };
                if self.walk_dir(&sub, &inside, moved, visit)? {
                    // Fails, as it should, when something else is left in it.
                    removed |= nofollow::remove_dir_at(dir, &name).is_ok();
                }
            } else if meta.is_file()
                && let Ok(key) = Key::new(inside)
            {
                removed |= visit(dir, &name, key, &meta)?;
            }
        }
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
    fn links_below_the_root_are_never_followed() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (root, outside) = (dir.path().join("backups"), dir.path().join("outside"));
            // Outside the root, what looks like a backup and a killed writer's file.
            std::fs::create_dir_all(outside.join("id")).unwrap();
            std::fs::write(outside.join("id/manifest.json"), b"{}").unwrap();
            std::fs::write(outside.join("id/.tmp-data-1"), b"partial").unwrap();
            let storage = LocalStorage::new("disk", &root);
            let real = Key::new("job/id/data").unwrap();
            crate::storage::write_small(&storage, &real, b"data")
                .await
                .unwrap();
            // A job directory, a backup directory and an object that are links.
            std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
            std::os::unix::fs::symlink(outside.join("id"), root.join("job/linked")).unwrap();
            std::os::unix::fs::symlink(
                outside.join("id/manifest.json"),
                root.join("job/id/manifest.json"),
            )
            .unwrap();
            let key = |k: &str| Key::new(k).unwrap();

            assert!(storage.list(&key("evil")).await.unwrap().is_empty());
            let listed: Vec<String> = storage
                .list(&key("job"))
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key.as_str().to_owned())
                .collect();
            assert_eq!(listed, ["job/id/data"]);

            for (k, link) in [
                ("evil/id/manifest.json", "evil"),
                ("job/linked/manifest.json", "job/linked"),
                ("job/id/manifest.json", "job/id/manifest.json"),
            ] {
                let err = storage.reader(&key(k)).await.err().unwrap();
                assert_eq!(err.kind(), Kind::Storage, "{err}");
                let named = format!("{} is a symbolic link", root.join(link).display());
                assert!(err.message().contains(&named), "{err}");
                assert!(err.hint().unwrap().contains("`path`"), "{err:?}");
                let err = storage.delete(&key(k)).await.err().unwrap();
                assert!(err.message().contains(&named), "{err}");
            }
            let err = storage.writer(&key("evil/id/new")).await.err().unwrap();
            assert_eq!(err.kind(), Kind::Storage, "{err}");
            let future = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_hours(1))
                .unwrap();
            assert_eq!(
                storage
                    .clean_unfinished(&key("evil"), future)
                    .await
                    .unwrap(),
                0
            );
            assert_eq!(
                storage.clean_unfinished(&key("job"), future).await.unwrap(),
                0
            );

            let mut outside_now: Vec<String> = std::fs::read_dir(outside.join("id"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            outside_now.sort();
            assert_eq!(
                outside_now,
                [".tmp-data-1", "manifest.json"],
                "nothing changed outside"
            );
            assert!(
                root.join("job/id/manifest.json").is_symlink(),
                "nor the link itself"
            );

            // The root itself may be a link: the operator's choice.
            std::os::unix::fs::symlink(&root, dir.path().join("root-link")).unwrap();
            let via_link = LocalStorage::new("disk", &dir.path().join("root-link"));
            assert_eq!(via_link.list(&key("job")).await.unwrap().len(), 1);
        });
    }
}
