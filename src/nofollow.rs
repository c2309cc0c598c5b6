//! Files and directories reached from an open directory, one name at a time,
//! never through a symbolic link: `openat` and its kin with `O_NOFOLLOW`.
//!
//! A path resolved by the kernel follows every link on the way, so a link
//! planted below a directory (a files job's tree, a local storage's root)
//! leads anywhere on the host. Walking from the directory's descriptor one
//! name at a time, and refusing links, keeps every step below it: a
//! directory swapped for a link between two steps is met as a link, not
//! followed. Shared by the tree walk of files jobs (`archive::tree`) and the
//! local storage backend.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// A name with a NUL byte in it is refused as `InvalidInput` before any
/// call, as it always was, not as the EINVAL nix would make of it: callers
/// read EINVAL as "a directory where a link was".
fn c_name(name: &OsStr) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `openat(dir, name, flags)`, close-on-exec.
pub fn open_at(dir: &File, name: &OsStr, flags: OFlag) -> io::Result<File> {
    create_at(dir, name, flags, 0)
}

/// `openat(dir, name, flags, mode)`, close-on-exec: `mode` is for `O_CREAT`.
pub fn create_at(dir: &File, name: &OsStr, flags: OFlag, mode: u32) -> io::Result<File> {
    let name = c_name(name)?;
    let fd = nix::fcntl::openat(
        dir,
        name.as_c_str(),
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_retain(mode),
    )?;
    Ok(File::from(fd))
}

/// The entry `name` of `dir` itself, a link included, not what a link
/// points to.
pub fn metadata_at(dir: &File, name: &OsStr) -> io::Result<std::fs::Metadata> {
    open_at(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW).and_then(|entry| entry.metadata())
}

/// Opens the directory `name` of `dir`; a link there fails (`ENOTDIR`).
pub fn open_dir_at(dir: &File, name: &OsStr) -> io::Result<File> {
    open_at(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
    )
}

/// Opens the regular file `name` of `dir` for reading, without following a
/// link and without blocking on a FIFO put in its place. A file under a
/// write lease (Samba, NFS) answers EAGAIN to O_NONBLOCK: the listing said
/// it is a regular file, so that one is opened again and waited for. Reads
/// block as usual either way (FUSE may honour the flag on read).
pub fn open_file_at(dir: &File, name: &OsStr) -> io::Result<File> {
    let file = match open_at(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK,
    ) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return open_at(dir, name, OFlag::O_RDONLY | OFlag::O_NOFOLLOW);
        }
        other => other?,
    };
    if let Ok(flags) = nix::fcntl::fcntl(&file, FcntlArg::F_GETFL) {
        let flags = OFlag::from_bits_retain(flags) - OFlag::O_NONBLOCK;
        let _ = nix::fcntl::fcntl(&file, FcntlArg::F_SETFL(flags));
    }
    Ok(file)
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: &File, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = c_name(name)?;
    Ok(nix::sys::stat::mkdirat(
        dir,
        name.as_c_str(),
        Mode::from_bits_retain(mode),
    )?)
}

/// `unlinkat(dir, name, 0)`: removes a file, or a link itself.
pub fn remove_file_at(dir: &File, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    Ok(nix::unistd::unlinkat(
        dir,
        name.as_c_str(),
        UnlinkatFlags::NoRemoveDir,
    )?)
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`: removes an empty directory.
pub fn remove_dir_at(dir: &File, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    Ok(nix::unistd::unlinkat(
        dir,
        name.as_c_str(),
        UnlinkatFlags::RemoveDir,
    )?)
}

/// `renameat(dir, from, dir, to)`: within one directory. A link at `to` is
/// replaced, never written through.
pub fn rename_at(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    Ok(nix::fcntl::renameat(
        dir,
        from.as_c_str(),
        dir,
        to.as_c_str(),
    )?)
}

/// `readlinkat(dir, name)`: what the link says, unfollowed.
pub fn read_link_at(dir: &File, name: &OsStr) -> io::Result<PathBuf> {
    let name = c_name(name)?;
    Ok(PathBuf::from(nix::fcntl::readlinkat(dir, name.as_c_str())?))
}

/// The names in the open directory `dir` (not `.` and `..`), in no order:
/// the directory the descriptor holds, whatever its path is now.
pub fn names(dir: &File) -> io::Result<Vec<OsString>> {
    let here = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    std::fs::read_dir(here)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_met_as_links_and_never_followed() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), base.path().join("file"))
            .unwrap();
        let root = File::open(base.path()).unwrap();

        let err = open_dir_at(&root, OsStr::new("dir")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::ENOTDIR as i32),
            "{err}"
        );
        let err = open_file_at(&root, OsStr::new("file")).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(nix::errno::Errno::ELOOP as i32),
            "{err}"
        );
        for name in ["dir", "file"] {
            assert!(metadata_at(&root, OsStr::new(name)).unwrap().is_symlink());
        }
        assert_eq!(
            read_link_at(&root, OsStr::new("file")).unwrap(),
            outside.path().join("secret")
        );
        let mut listed = names(&root).unwrap();
        listed.sort();
        assert_eq!(listed, [OsString::from("dir"), OsString::from("file")]);

        // Removing a link removes the link, not what it points to.
        remove_file_at(&root, OsStr::new("file")).unwrap();
        assert!(outside.path().join("secret").exists());
    }
}
