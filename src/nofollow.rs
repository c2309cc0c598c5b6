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
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

fn c_name(name: &OsStr) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `openat(dir, name, flags)`, close-on-exec.
pub fn open_at(dir: &File, name: &OsStr, flags: libc::c_int) -> io::Result<File> {
    create_at(dir, name, flags, 0)
}

/// `openat(dir, name, flags, mode)`, close-on-exec: `mode` is for `O_CREAT`.
pub fn create_at(
    dir: &File,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<File> {
    let name = c_name(name)?;
    // SAFETY: a valid directory descriptor and C string; the descriptor
    // returned is owned by the File made of it and nothing else.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is not owned elsewhere.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The entry `name` of `dir` itself, a link included, not what a link
/// points to.
pub fn metadata_at(dir: &File, name: &OsStr) -> io::Result<std::fs::Metadata> {
    open_at(dir, name, libc::O_PATH | libc::O_NOFOLLOW).and_then(|entry| entry.metadata())
}

/// Opens the directory `name` of `dir`; a link there fails (`ENOTDIR`).
pub fn open_dir_at(dir: &File, name: &OsStr) -> io::Result<File> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
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
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
    ) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return open_at(dir, name, libc::O_RDONLY | libc::O_NOFOLLOW);
        }
        other => other?,
    };
    // SAFETY: a valid descriptor; F_GETFL and F_SETFL take and give flags.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok(file)
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: &File, name: &OsStr, mode: libc::mode_t) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: a valid directory descriptor and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
}

/// `unlinkat(dir, name, 0)`: removes a file, or a link itself.
pub fn remove_file_at(dir: &File, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: a valid directory descriptor and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`: removes an empty directory.
pub fn remove_dir_at(dir: &File, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: a valid directory descriptor and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
}

/// `renameat(dir, from, dir, to)`: within one directory. A link at `to` is
/// replaced, never written through.
pub fn rename_at(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    // SAFETY: a valid directory descriptor and C strings.
    check(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
}

/// `readlinkat(dir, name)`: what the link says, unfollowed.
pub fn read_link_at(dir: &File, name: &OsStr) -> io::Result<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let name = c_name(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: a valid descriptor, C string and buffer of buf.len() bytes.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
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
        assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR), "{err}");
        let err = open_file_at(&root, OsStr::new("file")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
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
