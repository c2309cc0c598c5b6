//! A directory as one stream: a tar of the tree, written while it is walked,
//! for `files` jobs (camp-backend's `uploads`). It goes through the same
//! pipeline as a dump (compression, checksums, encryption) and comes back as
//! the tree it was: modes and modification times kept, symlinks stored as
//! links and never followed, nothing written outside the target directory.
//!
//! What is not a file, a directory or a symlink (sockets, FIFOs, devices) is
//! left out and named: reading a FIFO would hang the backup.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::error::{Error, Kind, Result};
use crate::nofollow::{self, open_at, open_file_at, read_link_at};

/// What [`pack`] put into the stream, and what it left out.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Packed {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// The files' bytes.
    pub bytes: u64,
    /// Entries left out, as paths relative to the tree, with why.
    pub skipped: Vec<String>,
    /// Files that changed while they were read, with how: their copy in the
    /// backup may be neither the old nor the new version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed: Vec<String>,
}

/// Writes a tar of everything under `dir` into `out`, in name order, with
/// paths relative to `dir`.
///
/// Below `dir` itself (which may be a link, as configured), every entry is
/// reached from its parent's open descriptor (`openat`, `O_NOFOLLOW`) and
/// checked to be the inode it was listed as: a directory swapped for a link
/// while the tree is read is never followed out of it.
pub fn pack(dir: &Path, out: impl Write) -> Result<Packed> {
    let root = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_DIRECTORY.bits())
        .open(dir)
    {
        Ok(root) => root,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(
                Error::config(format!("{} is not a directory", dir.display()))
                    .with_hint("a files job's `path` names the directory to back up"),
            );
        }
        Err(e) => return Err(io_error(dir, "reading", e)),
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut packed = Packed::default();
    walk(&mut builder, &root, dir, Path::new(""), &mut packed)?;
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|e| Error::io(Kind::Storage, "ending the archive of the tree", e))?;
    Ok(packed)
}

/// Appends what the open directory `dir` (`root`/`relative`) holds.
fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    dir: &fs::File,
    root: &Path,
    relative: &Path,
    packed: &mut Packed,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut names =
        nofollow::names(dir).map_err(|e| io_error(&root.join(relative), "listing", e))?;
    names.sort();
    for name in names {
        let inside = relative.join(&name);
        let path = root.join(&inside);
        // A live tree (uploads) changes while it is read: what is gone or
        // replaced by the time it is reached is named and left out.
        let left_out = |packed: &mut Packed, why: &str| {
            packed.skipped.push(format!(
                "{}: {why} while the tree was read",
                inside.display()
            ));
        };
        // The entry itself, a link included, not what a link points to.
        let meta = match open_at(dir, &name, OFlag::O_PATH | OFlag::O_NOFOLLOW)
            .and_then(|entry| entry.metadata())
        {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                left_out(packed, "removed");
                continue;
            }
            Err(e) => return Err(io_error(&path, "reading", e)),
        };
        let kind = meta.file_type();
        let appended = if kind.is_dir() {
            let sub = match open_at(dir, &name, OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW) {
                Ok(sub) => sub,
                Err(e) if is_gone_or_replaced(&e) => {
                    left_out(packed, "removed or replaced");
                    continue;
                }
                Err(e) => return Err(io_error(&path, "opening", e)),
            };
            let now = sub.metadata().map_err(|e| io_error(&path, "reading", e))?;
            if now.dev() != meta.dev() || now.ino() != meta.ino() {
                left_out(packed, "replaced");
                continue;
            }
            packed.directories += 1;
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, &inside, std::io::empty())
                .map_err(|e| io_error(&path, "archiving", e))?;
            walk(builder, &sub, root, &inside, packed)?;
            Ok(())
        } else if kind.is_file() {
            let file = match open_file_at(dir, &name) {
                Ok(file) => file,
                Err(e) if is_gone_or_replaced(&e) => {
                    left_out(packed, "removed or replaced");
                    continue;
                }
                Err(e) => return Err(io_error(&path, "opening", e)),
            };
            let now = file.metadata().map_err(|e| io_error(&path, "reading", e))?;
            if !now.is_file() || now.dev() != meta.dev() || now.ino() != meta.ino() {
                left_out(packed, "replaced");
                continue;
            }
            packed.files += 1;
            packed.bytes += meta.len();
            let len = meta.len();
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_size(len);
            let mut got = 0;
            let appended = builder.append_data(&mut header, &inside, exactly(&file, len, &mut got));
            if appended.is_ok() {
                note_change(&file, &meta, got, &inside, packed);
            }
            appended
        } else if kind.is_symlink() {
            let target = match read_link_at(dir, &name) {
                Ok(target) => target,
                Err(e) if is_gone_or_replaced(&e) => {
                    left_out(packed, "removed or replaced");
                    continue;
                }
                Err(e) => return Err(io_error(&path, "reading", e)),
            };
            packed.symlinks += 1;
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_size(0);
            builder.append_link(&mut header, &inside, &target)
        } else {
            packed.skipped.push(format!(
                "{}: not a file, directory or symlink",
                inside.display()
            ));
            Ok(())
        };
        appended.map_err(|e| io_error(&path, "archiving", e))?;
    }
    Ok(())
}

/// Gone (ENOENT), or something else there now: a link (ELOOP under
/// O_NOFOLLOW), a file where a directory was (ENOTDIR), a directory where a
/// link was (EINVAL from readlinkat).
fn is_gone_or_replaced(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    ) || matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::ELOOP | Errno::EINVAL)
    )
}

/// Exactly `len` bytes of `file`, whatever it does meanwhile: bytes past
/// `len` are left out and a shortfall is zeros, since anything else would
/// shift every entry after it. `got` counts the bytes the file gave.
fn exactly<'a>(file: impl Read + 'a, len: u64, got: &'a mut u64) -> impl Read + 'a {
    struct Counted<'a, R> {
        inner: R,
        got: &'a mut u64,
    }
    impl<R: Read> Read for Counted<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            *self.got += n as u64;
            Ok(n)
        }
    }
    Counted {
        inner: file.take(len),
        got,
    }
    .chain(std::io::repeat(0))
    .take(len)
}

/// Names a file that shrank, grew or was written while it was read, as GNU
/// tar's "file changed as we read it" does.
fn note_change(
    file: &fs::File,
    before: &fs::Metadata,
    got: u64,
    inside: &Path,
    packed: &mut Packed,
) {
    use std::os::unix::fs::MetadataExt;
    let len = before.len();
    if got < len {
        packed.changed.push(format!(
            "{}: shrank while read; its last {} bytes are zeros in this backup",
            inside.display(),
            len - got
        ));
        return;
    }
    if let Ok(after) = file.metadata()
        && (after.len() != len
            || after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.ctime() != before.ctime()
            || after.ctime_nsec() != before.ctime_nsec())
    {
        packed.changed.push(format!(
            "{}: written while read; this backup may hold a mix of old and new bytes",
            inside.display()
        ));
    }
}

/// [`pack`] on a thread of its own, into a pipe: the read end is the source
/// for [`super::store`], the handle says how the walk ended.
pub fn spawn_pack(
    dir: PathBuf,
) -> Result<(std::io::PipeReader, std::thread::JoinHandle<Result<Packed>>)> {
    let (reader, writer) =
        std::io::pipe().map_err(|e| Error::io(Kind::Internal, "making a pipe for the tree", e))?;
    let handle = std::thread::Builder::new()
        .name("tree-pack".into())
        .spawn(move || pack(&dir, writer))
        .map_err(|e| Error::internal(format!("cannot start the tree's thread: {e}")))?;
    Ok((reader, handle))
}

/// What [`unpack`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
}

/// Writes the tree a [`pack`] stream holds into `target`, which must be an
/// empty directory (or missing) unless `force`: then the backup's files
/// replace those of the same name, as `tar -x` does, and other files stay.
/// A link already in the target is replaced, never written through. Paths
/// that would land outside `target` (`..`, absolute, through a symlink) are
/// refused. setuid, setgid and sticky bits are dropped: a restore run as
/// root must not hand out setuid files.
///
/// A directory gets its mode and time once the entries under it are in, so
/// a read-only directory can still be filled. [`pack`] writes a directory
/// before what it holds, so only the directories above the current entry
/// are pending: memory grows with the tree's depth, not its size.
pub fn unpack(input: impl Read, target: &Path, force: bool) -> Result<Unpacked> {
    match fs::read_dir(target) {
        Ok(mut entries) => {
            if !force && entries.next().is_some() {
                return Err(Error::refused(format!(
                    "{} is not empty; nothing was written",
                    target.display()
                ))
                .with_hint("restore into an empty or new directory, or pass --force to add the files to it"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(target).map_err(|e| io_error(target, "creating", e))?;
        }
        Err(e) => return Err(io_error(target, "reading", e)),
    }
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(force);
    archive.set_unpack_xattrs(false);
    let mut unpacked = Unpacked::default();
    let mut pending: Vec<PendingDir> = Vec::new();
    let syncer = Syncer::start();
    let entries = archive
        .entries()
        .map_err(|e| Error::integrity(format!("the archive of the tree does not read: {e}")))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| Error::integrity(format!("the archive of the tree does not read: {e}")))?;
        let path = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        if path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::integrity(format!(
                "the archive holds {}, which would land outside {}",
                path.display(),
                target.display()
            )));
        }
        // The tree's root is the target itself: its mode is the operator's.
        if path
            .components()
            .all(|c| matches!(c, std::path::Component::CurDir))
        {
            continue;
        }
        entry.set_mask(0o7000);
        while pending.last().is_some_and(|d| !path.starts_with(&d.path)) {
            if let Some(done) = pending.pop() {
                done.finish(target)?;
            }
        }
        let is_dir = entry.header().entry_type().is_dir();
        let is_file = entry.header().entry_type().is_file();
        if is_dir {
            pending.push(PendingDir {
                path: path.clone(),
                mode: entry.header().mode().unwrap_or(0o755) & 0o777,
                mtime: entry.header().mtime().unwrap_or(0),
            });
        }
        // A file's missing parents are made (inside the target only) as it
        // is written.
        let written = entry.unpack_in(target).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::AlreadyExists {
                Kind::Refused
            } else {
                Kind::Storage
            };
            Error::new(
                kind,
                format!(
                    "{}: cannot restore {}: {e}",
                    target.display(),
                    path.display()
                ),
            )
            .with_hint(format!(
                "check the free space and the permissions of {}, and that nothing there has \
                 the type the backup has at that path",
                target.display()
            ))
        })?;
        // Made with the owner's rwx for now, so it can be filled: finish()
        // sets its own mode.
        if is_dir && written {
            use std::os::unix::fs::PermissionsExt;
            let full = target.join(&path);
            if let Some(dir) = open_dir(&full)? {
                let mode = pending.last().map_or(0o700, |d| d.mode) | 0o700;
                dir.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| io_error(&full, "restoring", e))?;
            }
        }
        if !written {
            return Err(Error::integrity(format!(
                "the archive holds {}, which would land outside {}",
                path.display(),
                target.display()
            )));
        }
        if is_file && entry.header().size().unwrap_or(0) >= SYNCED_WHILE_UNPACKING {
            syncer.sync(target.join(&path));
        }
        unpacked.entries += 1;
    }
    while let Some(done) = pending.pop() {
        done.finish(target)?;
    }
    // Read to the end: the stream's digests are checked by whoever feeds
    // it, once every byte has gone through.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| Error::io(Kind::Storage, "reading the end of the tree's archive", e))?;
    Ok(unpacked)
}

/// Files at least this large are written to disk while the stream goes on.
const SYNCED_WHILE_UNPACKING: u64 = 1 << 20;

/// Syncs the large restored files on a thread of its own while the rest of
/// the stream is unpacked: the disk works while the stream is decoded, and
/// whoever syncs the whole tree later (PostgreSQL syncs a data directory it
/// starts on after a base backup) finds the bulk of it written. Small files
/// are left to that sync: one at a time, they would cost a journal commit
/// each. A failure here changes nothing; that later sync reports it.
struct Syncer {
    files: Option<std::sync::mpsc::Sender<PathBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn start() -> Syncer {
        let (files, to_sync) = std::sync::mpsc::channel::<PathBuf>();
        let thread = std::thread::Builder::new()
            .name("tree-sync".into())
            .spawn(move || {
                for path in to_sync {
                    if let Ok(file) = fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(nix::libc::O_NOFOLLOW)
                        .open(&path)
                    {
                        let _ = file.sync_data();
                    }
                }
            })
            .ok();
        Syncer {
            files: thread.is_some().then_some(files),
            thread,
        }
    }

    fn sync(&self, path: PathBuf) {
        if let Some(files) = &self.files {
            let _ = files.send(path);
        }
    }
}

impl Drop for Syncer {
    /// Waits for the files sent: they are on disk when the unpack returns.
    fn drop(&mut self) {
        drop(self.files.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A restored directory whose own mode and time wait for its entries.
struct PendingDir {
    path: PathBuf,
    mode: u32,
    mtime: u64,
}

impl PendingDir {
    /// Sets the time, then the mode (which may take the owner's write bit
    /// away), on the directory itself: never through a link put in its place.
    fn finish(self, target: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let full = target.join(&self.path);
        let Some(dir) = open_dir(&full)? else {
            return Ok(());
        };
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.mtime);
        dir.set_times(fs::FileTimes::new().set_modified(time).set_accessed(time))
            .map_err(|e| io_error(&full, "setting the time of", e))?;
        dir.set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(|e| io_error(&full, "setting the mode of", e))
    }
}

/// The directory at `path` itself, opened without following a link; `None`
/// when something else (a link, a file) is there now.
fn open_dir(path: &Path) -> Result<Option<fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
        .open(path)
    {
        Ok(dir) => Ok(Some(dir)),
        Err(e)
            if e.raw_os_error() == Some(Errno::ELOOP as i32)
                || e.kind() == std::io::ErrorKind::NotADirectory
                || e.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(io_error(path, "opening", e)),
    }
}

/// Reads a [`pack`] stream to its end and counts its entries: what verify
/// does with a files backup, writing nothing.
pub fn list(input: impl Read) -> Result<u64> {
    let mut archive = tar::Archive::new(input);
    let mut count = 0;
    let broken =
        |count: u64, e: std::io::Error| Error::integrity(format!("after {count} entries: {e}"));
    let entries = archive.entries().map_err(|e| broken(0, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| broken(count, e))?;
        std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| broken(count, e))?;
        count += 1;
    }
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| Error::io(Kind::Storage, "reading the end of the tree's archive", e))?;
    Ok(count)
}

fn io_error(path: &Path, doing: &str, e: std::io::Error) -> Error {
    Error::io(Kind::Storage, format!("{doing} {}", path.display()), e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn set_mtime(path: &Path, secs: i64) {
        let times = fs::FileTimes::new()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64));
        fs::File::options()
            .write(true)
            .open(path)
            .or_else(|_| fs::File::open(path))
            .unwrap()
            .set_times(times)
            .unwrap();
    }

    /// A tree with nested directories, modes, times, a link inside the tree,
    /// a link pointing out of it, and a FIFO.
    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("2024/06")).unwrap();
        fs::write(d.join("2024/06/photo.jpg"), vec![0xAB; 300_000]).unwrap();
        fs::write(d.join("readme.txt"), "uploads\n").unwrap();
        fs::write(d.join("secret.bin"), b"only the owner").unwrap();
        set_mode(&d.join("secret.bin"), 0o600);
        set_mode(&d.join("readme.txt"), 0o644);
        set_mtime(&d.join("2024/06/photo.jpg"), 1_700_000_000);
        std::os::unix::fs::symlink("2024/06/photo.jpg", d.join("latest.jpg")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("outside")).unwrap();
        nix::unistd::mkfifo(
            &d.join("queue.fifo"),
            nix::sys::stat::Mode::from_bits_retain(0o600),
        )
        .unwrap();
        set_mtime(&d.join("2024/06"), 1_600_000_000);
        set_mode(&d.join("2024"), 0o750);
        dir
    }

    #[test]
    fn the_walk_reads_through_descriptors_not_paths() {
        let base = tempfile::tempdir().unwrap();
        let tree = base.path().join("tree");
        fs::create_dir_all(tree.join("a")).unwrap();
        fs::write(tree.join("a/x"), "inside").unwrap();
        let root = fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_DIRECTORY.bits())
            .open(&tree)
            .unwrap();
        // The tree's path now leads elsewhere, as a swapped link would.
        let outside = base.path().join("outside");
        fs::create_dir_all(outside.join("a")).unwrap();
        fs::write(outside.join("a/secret"), "outside").unwrap();
        fs::rename(&tree, base.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, &tree).unwrap();
        let mut builder = tar::Builder::new(Vec::new());
        let mut packed = Packed::default();
        walk(&mut builder, &root, &tree, Path::new(""), &mut packed).unwrap();
        let stream = builder.into_inner().unwrap();
        let mut archive = tar::Archive::new(&stream[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a", "a/x"]);
    }

    #[test]
    fn a_file_that_changes_while_read_keeps_the_stream_whole_and_is_named() {
        let read = |data: &[u8], len: u64| {
            let mut got = 0;
            let mut out = Vec::new();
            exactly(data, len, &mut got).read_to_end(&mut out).unwrap();
            (out, got)
        };
        assert_eq!(read(b"abc", 5), (b"abc\0\0".to_vec(), 3));
        assert_eq!(read(b"abcdef", 4), (b"abcd".to_vec(), 4));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload.bin");
        fs::write(&path, b"12345678").unwrap();
        let before = fs::symlink_metadata(&path).unwrap();
        let file = fs::File::open(&path).unwrap();
        let mut packed = Packed::default();
        note_change(&file, &before, 8, Path::new("upload.bin"), &mut packed);
        assert!(packed.changed.is_empty(), "{:?}", packed.changed);
        note_change(&file, &before, 5, Path::new("upload.bin"), &mut packed);
        assert_eq!(
            packed.changed,
            ["upload.bin: shrank while read; its last 3 bytes are zeros in this backup"]
        );
        packed.changed.clear();
        fs::write(&path, b"123456789").unwrap();
        note_change(&file, &before, 8, Path::new("upload.bin"), &mut packed);
        assert!(
            packed.changed[0].contains("written while read"),
            "{:?}",
            packed.changed
        );
    }

    #[test]
    fn a_read_only_directory_is_filled_then_gets_its_mode_and_time() {
        let tree = tempfile::tempdir().unwrap();
        let ro = tree.path().join("archive");
        fs::create_dir(&ro).unwrap();
        fs::write(ro.join("2023.csv"), "old").unwrap();
        set_mtime(&ro, 1_500_000_000);
        set_mode(&ro, 0o555);
        let mut stream = Vec::new();
        pack(tree.path(), &mut stream).unwrap();
        set_mode(&ro, 0o755);
        let out = tempfile::tempdir().unwrap();
        unpack(&stream[..], out.path(), false).unwrap();
        let back = out.path().join("archive");
        assert_eq!(fs::read_to_string(back.join("2023.csv")).unwrap(), "old");
        let meta = fs::metadata(&back).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o555);
        assert_eq!(meta.mtime(), 1_500_000_000);
        set_mode(&back, 0o755);
    }

    #[test]
    fn a_tree_comes_back_with_modes_times_and_links_as_links() {
        let tree = sample_tree();
        let mut stream = Vec::new();
        let packed = pack(tree.path(), &mut stream).unwrap();
        assert_eq!(
            (packed.files, packed.directories, packed.symlinks),
            (3, 2, 2)
        );
        assert_eq!(packed.bytes, 300_000 + 8 + 14);
        assert_eq!(
            packed.skipped,
            ["queue.fifo: not a file, directory or symlink"]
        );

        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("restored");
        unpack(&stream[..], &target, false).unwrap();
        let back = |p: &str| fs::symlink_metadata(target.join(p)).unwrap();
        assert_eq!(
            fs::read(target.join("2024/06/photo.jpg")).unwrap(),
            vec![0xAB; 300_000]
        );
        assert_eq!(back("secret.bin").mode() & 0o777, 0o600);
        assert_eq!(back("readme.txt").mode() & 0o777, 0o644);
        assert_eq!(back("2024").mode() & 0o777, 0o750);
        assert_eq!(back("2024/06/photo.jpg").mtime(), 1_700_000_000);
        assert_eq!(back("2024/06").mtime(), 1_600_000_000);
        assert!(back("latest.jpg").file_type().is_symlink());
        assert_eq!(
            fs::read_link(target.join("latest.jpg")).unwrap(),
            Path::new("2024/06/photo.jpg")
        );
        // Stored as a link, not as the file it points to.
        assert!(back("outside").file_type().is_symlink());
        assert_eq!(
            fs::read_link(target.join("outside")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!target.join("queue.fifo").exists());
    }

    #[test]
    fn a_target_that_is_not_empty_is_refused_unless_forced() {
        let tree = sample_tree();
        let mut stream = Vec::new();
        pack(tree.path(), &mut stream).unwrap();
        let target = tempfile::tempdir().unwrap();
        fs::write(target.path().join("keep.txt"), "mine").unwrap();
        let err = unpack(&stream[..], target.path(), false).unwrap_err();
        assert_eq!(err.kind(), Kind::Refused);
        assert!(err.message().contains("is not empty"), "{err}");
        assert_eq!(
            fs::read_dir(target.path()).unwrap().count(),
            1,
            "nothing written"
        );
        unpack(&stream[..], target.path(), true).unwrap();
        assert_eq!(
            fs::read_to_string(target.path().join("keep.txt")).unwrap(),
            "mine"
        );
        assert!(target.path().join("readme.txt").exists());
    }

    /// A tar with one entry of `path` (written raw, as a hostile archive would).
    fn tar_with(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_mode(if kind.is_dir() { 0o755 } else { 0o4755 });
            header.set_size(if kind.is_file() { 4 } else { 0 });
            // Raw bytes: the builder would refuse `..` itself.
            header.as_gnu_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
            if !link.is_empty() {
                header.set_link_name(link).unwrap();
            }
            header.set_cksum();
            let data: &[u8] = if kind.is_file() { b"evil" } else { b"" };
            builder.append(&header, data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn nothing_is_written_outside_the_target() {
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("t");
        let outside = out.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let outside_link = outside.to_str().unwrap().to_owned();
        for hostile in [
            // A link out of the tree, then a directory made through it.
            tar_with(&[
                ("away", tar::EntryType::Symlink, &outside_link),
                ("away/made/", tar::EntryType::Directory, ""),
                ("away/made/f.txt", tar::EntryType::Regular, ""),
            ]),
            tar_with(&[("../escaped.txt", tar::EntryType::Regular, "")]),
            tar_with(&[("/tmp/escaped-abs.txt", tar::EntryType::Regular, "")]),
            // A link out of the tree, then a file written through it.
            tar_with(&[
                ("up", tar::EntryType::Symlink, ".."),
                ("up/escaped-link.txt", tar::EntryType::Regular, ""),
            ]),
        ] {
            let _ = fs::remove_dir_all(&target);
            let err = unpack(&hostile[..], &target, false).unwrap_err();
            assert!(
                err.message().contains("outside") || err.message().contains("cannot restore"),
                "{err}"
            );
        }
        assert!(!out.path().join("escaped.txt").exists());
        assert!(!out.path().join("escaped-link.txt").exists());
        assert!(!Path::new("/tmp/escaped-abs.txt").exists());
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "made outside");

        // --force over a target that already holds a link out of it.
        let _ = fs::remove_dir_all(&target);
        fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("away")).unwrap();
        let through = tar_with(&[
            ("away/", tar::EntryType::Directory, ""),
            ("away/f.txt", tar::EntryType::Regular, ""),
        ]);
        assert!(unpack(&through[..], &target, true).is_err());
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            0,
            "written through a link"
        );
    }

    #[test]
    fn setuid_bits_are_dropped_and_a_forced_restore_replaces_what_is_there() {
        let out = tempfile::tempdir().unwrap();
        let archive = tar_with(&[("tool", tar::EntryType::Regular, "")]);
        unpack(&archive[..], out.path(), false).unwrap();
        let mode = fs::metadata(out.path().join("tool")).unwrap().mode();
        assert_eq!(mode & 0o7777, 0o755, "{mode:o}");
        fs::write(out.path().join("tool"), "mine").unwrap();
        assert!(unpack(&archive[..], out.path(), false).is_err());
        assert_eq!(fs::read_to_string(out.path().join("tool")).unwrap(), "mine");
        // A link where the backup has a file is replaced, not followed.
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), "theirs").unwrap();
        fs::remove_file(out.path().join("tool")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("victim"), out.path().join("tool")).unwrap();
        unpack(&archive[..], out.path(), true).unwrap();
        assert_eq!(fs::read_to_string(out.path().join("tool")).unwrap(), "evil");
        assert!(
            !fs::symlink_metadata(out.path().join("tool"))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(
            fs::read_to_string(outside.path().join("victim")).unwrap(),
            "theirs"
        );
    }

    #[test]
    fn a_path_that_is_not_a_directory_is_named() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = pack(file.path(), Vec::new()).unwrap_err();
        assert!(err.message().contains("is not a directory"), "{err}");
    }
}
