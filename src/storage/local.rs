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

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use tokio::io::AsyncWriteExt;

use super::health::FailureKind;
use super::retry::{Moved, show};
use super::{Key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use crate::error::{Error, Kind, Result};
use crate::model::Retry;
use crate::nofollow;

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
fn split(key: &Key) -> (Vec<&str>, &str) {
    let mut segments: Vec<&str> = key.as_str().split('/').collect();
    let name = segments.pop().unwrap_or_default();
    (segments, name)
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

    /// Whether the file system has just hung on us: what follows (removing
    /// the temporary file, the run record) gets a short wait, and nothing
    /// waits on it in a place that cannot time out.
    fn is_down(&self) -> bool {
        self.health.down_for().is_some()
    }

    /// `limit`, or less while the file system has just hung.
    fn limit(&self, limit: std::time::Duration) -> std::time::Duration {
        if self.is_down() {
            limit.min(super::retry::DOWN_IO_TIMEOUT)
        } else {
            limit
        }
    }

    /// Removes a writer's temporary file; on a file system that has just
    /// hung, from a thread of its own that nobody waits for (the unlink may
    /// never return; prune removes what it leaves).
    fn remove_temp(&self, dir: &Arc<File>, temp: &str) -> std::io::Result<()> {
        if !self.is_down() {
            return nofollow::remove_file_at(dir, OsStr::new(temp));
        }
        let (dir, temp) = (dir.clone(), temp.to_owned());
        let spawned = std::thread::Builder::new()
            .name("unlink".into())
            .spawn(move || nofollow::remove_file_at(&dir, OsStr::new(&temp)));
        spawned.map(|_| ())
    }

    /// The error of an operation on `what` that moved nothing for `waited`.
    fn hung(&self, what: impl std::fmt::Display, waited: std::time::Duration) -> Error {
        let message = format!(
            "storage {}: {what}: the file system did not answer for {}",
            self.name,
            show(waited)
        );
        self.health.failed(FailureKind::Timeout, &message);
        Error::storage(message).with_hint(
            "a hung network mount (NFS, SMB) or a failing disk: check the mount and the \
             kernel log (dmesg); io_timeout in the storage's settings sets how long to wait",
        )
    }

    /// Waits up to `limit` for `work`; fails as [`LocalStorage::hung`] after.
    async fn bounded<T>(
        &self,
        what: impl FnOnce() -> String,
        limit: std::time::Duration,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T> {
        let limit = self.limit(limit);
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| self.hung(what(), limit))
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.root.join(key.as_str())
    }

    fn err(&self, what: impl std::fmt::Display, e: std::io::Error) -> Error {
        Error::io(Kind::Storage, format!("storage {}: {what}", self.name), e)
    }

    /// A link below the root: a storage error (exit 5), not an integrity
    /// one. Nothing recorded was found to differ; the storage's layout is
    /// one backup will not use, and the fix is the operator's.
    fn link_error(&self, relative: &str) -> Error {
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

    /// Runs file system work off the async threads, for as long as it moves:
    /// `work` ticks the [`Moved`] it is given as it goes (a listing, once per
    /// entry), and fails as [`LocalStorage::hung`] on `what` once nothing
    /// moved for `io_timeout`.
    async fn blocking<T: Send + 'static>(
        &self,
        what: String,
        work: impl FnOnce(&LocalStorage, &Moved) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        let limit = self.limit(self.io_timeout);
        let moved = Moved::new();
        let watched = moved.clone();
        let task = tokio::task::spawn_blocking(move || work(&this, &moved));
        tokio::select! {
            joined = task => {
                let result = joined.map_err(|e| {
                    Error::internal(format!(
                        "storage {}: a file system task failed: {e}",
                        self.name
                    ))
                })?;
                self.health.answered();
                result
            }
            () = watched.stalled(limit) => Err(self.hung(what, limit)),
        }
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
    fn open_chain(&self, dirs: &[&str], create: bool) -> Result<Option<Vec<File>>> {
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

    /// The directory `dirs` below the root, made where missing, and a new
    /// temporary file in it (0600) for `name`.
    fn create_temp(&self, dirs: &[&str], name: &str) -> Result<(File, String, File)> {
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

    fn open_blocking(&self, key: &Key) -> Result<File> {
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

    fn delete_blocking(&self, key: &Key) -> Result<()> {
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

    /// Calls `visit` with every regular file under `prefix/` (its directory,
    /// its name, its key and metadata), depth first, holding one descriptor
    /// per level. Links are left out with a warning, never followed. `visit`
    /// says whether it removed the file; a directory below `prefix` that
    /// removals emptied goes too.
    fn walk(
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

    fn list_blocking(&self, prefix: &Key, moved: &Moved) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        self.walk(prefix, moved, &mut |_, name, key, meta| {
            if !name.to_string_lossy().starts_with(TEMP_PREFIX) {
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                });
            }
            Ok(false)
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn clean_unfinished_blocking(
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

/// A file being read, failing once a read has waited `io_timeout` for the
/// file system.
struct Watched {
    inner: tokio::io::BufReader<tokio::fs::File>,
    /// When the read now waiting gives up.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The file system hung: every later read says so at once.
    hung: Option<String>,
    storage: LocalStorage,
    path: PathBuf,
}

impl tokio::io::AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if let Some(message) = &this.hung {
            return Poll::Ready(Err(std::io::Error::other(Error::storage(message.clone()))));
        }
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, out) {
            Poll::Ready(result) => {
                this.deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let timeout = this.storage.limit(this.storage.io_timeout);
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.deadline = None;
                        let error = this
                            .storage
                            .hung(format!("reading {}", this.path.display()), timeout);
                        this.hung = Some(error.message().to_owned());
                        Poll::Ready(Err(std::io::Error::other(error)))
                    }
                    Poll::Pending => Poll::Pending,
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

struct LocalWriter {
    storage: LocalStorage,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    /// The directory the object goes in, held open: the rename and the
    /// clean-ups happen there, whatever its path has become.
    dir: Arc<File>,
    temp: String,
    name: String,
    key: Key,
    size: u64,
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
            super::super::write_small(&storage, &real, b"data")
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

    #[test]
    fn clean_unfinished_removes_old_temporary_files_and_the_directories_they_leave_empty() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("disk", dir.path());
            let key = |k: &str| Key::new(k).unwrap();
            super::super::write_small(&storage, &key("job/kept/data"), b"x")
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
            super::super::write_small(&storage, &key("job/killed/data"), b"y")
                .await
                .unwrap();
        });
    }

    /// A file system call that never returns (a hard NFS mount whose server
    /// is gone) cannot be made here; one that sleeps past io_timeout is
    /// the same to the code that waits for it.
    #[test]
    fn an_operation_that_hangs_fails_after_io_timeout_and_one_that_moves_does_not() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("hung-disk", dir.path())
                .with_io_timeout(std::time::Duration::from_millis(200));
            let started = std::time::Instant::now();
            let err = storage
                .blocking("writing /mnt/x".to_owned(), |_, _| {
                    std::thread::sleep(std::time::Duration::from_secs(2));
                    Ok(())
                })
                .await
                .unwrap_err();
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
            assert_eq!(err.kind(), Kind::Storage);
            assert!(
                err.message().contains(
                    "storage hung-disk: writing /mnt/x: the file system did not answer for 200ms"
                ),
                "{err}"
            );
            assert!(err.hint().unwrap().contains("io_timeout"));
            let (_, counts, _) = super::super::health::snapshot()
                .into_iter()
                .find(|(name, ..)| name == "hung-disk")
                .unwrap();
            assert_eq!(counts[0], (FailureKind::Timeout, 1));

            // A long listing that moves all the while is not cut.
            let listed = storage
                .blocking("listing".to_owned(), |_, moved| {
                    for _ in 0..50 {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        moved.tick();
                    }
                    Ok(10)
                })
                .await
                .unwrap();
            assert_eq!(listed, 10);
        });
    }

    /// Once the file system has hung, a writer's clean-up never waits on it
    /// where nothing can time out: the unlink goes to a thread of its own.
    #[test]
    fn an_abort_on_a_file_system_that_hung_does_not_wait_for_it() {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = LocalStorage::new("hung-abort", dir.path());
            let mut writer = storage
                .writer(&Key::new("j/b/data").unwrap())
                .await
                .unwrap();
            writer.write(b"half a backup").await.unwrap();
            super::super::health::of("hung-abort")
                .failed(FailureKind::Timeout, "writing j/b/data: no answer");
            writer.abort().await.unwrap();
            let temp_left = || {
                std::fs::read_dir(dir.path().join("j/b"))
                    .unwrap()
                    .flatten()
                    .count()
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while temp_left() > 0 {
                assert!(std::time::Instant::now() < deadline, "the unlink never ran");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
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
