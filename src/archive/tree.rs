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
use std::path::{Path, PathBuf};

use crate::error::{Error, Kind, Result};

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
}

/// Writes a tar of everything under `dir` into `out`, in name order, with
/// paths relative to `dir`.
pub fn pack(dir: &Path, out: impl Write) -> Result<Packed> {
    let meta = fs::metadata(dir).map_err(|e| io_error(dir, "reading", e))?;
    if !meta.is_dir() {
        return Err(
            Error::config(format!("{} is not a directory", dir.display()))
                .with_hint("a files job's `path` names the directory to back up"),
        );
    }
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut packed = Packed::default();
    walk(&mut builder, dir, Path::new(""), &mut packed)?;
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|e| Error::io(Kind::Storage, "ending the archive of the tree", e))?;
    Ok(packed)
}

fn walk<W: Write>(
    builder: &mut tar::Builder<W>,
    root: &Path,
    relative: &Path,
    packed: &mut Packed,
) -> Result<()> {
    let dir = root.join(relative);
    let mut entries: Vec<(std::ffi::OsString, PathBuf)> = fs::read_dir(&dir)
        .map_err(|e| io_error(&dir, "listing", e))?
        .map(|entry| entry.map(|e| (e.file_name(), e.path())))
        .collect::<std::io::Result<_>>()
        .map_err(|e| io_error(&dir, "listing", e))?;
    entries.sort();
    for (name, path) in entries {
        let inside = relative.join(&name);
        // Not followed: a link is stored as what it says.
        let meta = fs::symlink_metadata(&path).map_err(|e| io_error(&path, "reading", e))?;
        let kind = meta.file_type();
        let appended = if kind.is_dir() {
            packed.directories += 1;
            builder
                .append_dir(&inside, &path)
                .map_err(|e| io_error(&path, "archiving", e))?;
            walk(builder, root, &inside, packed)?;
            Ok(())
        } else if kind.is_file() {
            let file = match fs::File::open(&path) {
                Ok(file) => file,
                // Gone between listing and opening: a live directory.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    packed.skipped.push(format!(
                        "{}: removed while the tree was read",
                        inside.display()
                    ));
                    continue;
                }
                Err(e) => return Err(io_error(&path, "opening", e)),
            };
            packed.files += 1;
            packed.bytes += meta.len();
            // Exactly the size the header says, whatever the file does
            // meanwhile: bytes past it are left out, a shortfall is zeros.
            // Anything else would shift every entry after it.
            let len = meta.len();
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_size(len);
            let data = file.take(len).chain(std::io::repeat(0)).take(len);
            builder.append_data(&mut header, &inside, data)
        } else if kind.is_symlink() {
            packed.symlinks += 1;
            let target = fs::read_link(&path).map_err(|e| io_error(&path, "reading", e))?;
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
/// A link already in the target is replaced, never written through. Paths that would land outside `target` (`..`, absolute,
/// through a symlink) are refused. setuid, setgid and sticky bits are
/// dropped: a restore run as root must not hand out setuid files.
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
    let mut directories = Vec::new();
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
        entry.set_mask(0o7000);
        // Directories get their modes and times once their contents are in,
        // so a read-only directory can still be filled; a file's missing
        // parents are made (inside the target only) as it is written.
        if entry.header().entry_type().is_dir() {
            directories.push(entry);
            unpacked.entries += 1;
            continue;
        }
        let written = entry.unpack_in(target).map_err(|e| {
            Error::new(
                Kind::Refused,
                format!(
                    "{}: cannot restore {}: {e}",
                    target.display(),
                    path.display()
                ),
            )
        })?;
        if !written {
            return Err(Error::integrity(format!(
                "the archive holds {}, which would land outside {}",
                path.display(),
                target.display()
            )));
        }
        unpacked.entries += 1;
    }
    directories.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in directories {
        let path = dir.path().map(|p| p.into_owned()).unwrap_or_default();
        let full = target.join(&path);
        dir.unpack_in(target)
            .map_err(|e| io_error(&full, "restoring", e))?;
        // tar sets a directory's mode but not its time; the deepest come
        // first, so setting one never changes another's.
        if let Ok(mtime) = dir.header().mtime()
            && fs::symlink_metadata(&full).is_ok_and(|m| m.is_dir())
        {
            let times = fs::FileTimes::new()
                .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
            fs::File::open(&full)
                .and_then(|f| f.set_times(times))
                .map_err(|e| io_error(&full, "setting the time of", e))?;
        }
    }
    // Read to the end: the stream's digests are checked by whoever feeds
    // it, once every byte has gone through.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())
        .map_err(|e| Error::io(Kind::Storage, "reading the end of the tree's archive", e))?;
    Ok(unpacked)
}

/// Reads a [`pack`] stream to its end and counts its entries: what verify
/// does with a files backup, writing nothing.
pub fn list(input: impl Read) -> Result<u64> {
    let mut archive = tar::Archive::new(input);
    let mut count = 0;
    let entries = archive
        .entries()
        .map_err(|e| Error::integrity(format!("does not read as a tar archive: {e}")))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| Error::integrity(format!("does not read as a tar archive: {e}")))?;
        std::io::copy(&mut entry, &mut std::io::sink())
            .map_err(|e| Error::integrity(format!("does not read as a tar archive: {e}")))?;
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
        let fifo = std::ffi::CString::new(d.join("queue.fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        set_mtime(&d.join("2024/06"), 1_600_000_000);
        set_mode(&d.join("2024"), 0o750);
        dir
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
