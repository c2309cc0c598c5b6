//! The host-local lock of a job without a database (a files job): a lock
//! file of this host, held by an open-file-description lock. A job with a
//! database holds an advisory lock on its server instead ([`super::RunLock`]).

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::FcntlArg;

use crate::error::{Error, Kind, Result};

/// A files job's run lock: an exclusive open-file-description lock on
/// `<lock dir>/<job>.lock`, held until the run drops it (or its process
/// dies). Open-file-description locks can be looked at without being
/// taken, so a prune asking whether the job runs never makes a starting
/// run think another holds it.
pub struct LocalLock {
    _file: std::fs::File,
}

impl LocalLock {
    /// Takes the lock of `job`, or `None` when another process holds it.
    pub fn try_take(job: &str) -> Result<Option<LocalLock>> {
        let path = lock_dir()?.join(format!("{job}.lock"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| lock_error(&path, e))?;
        let lock = whole_file_lock();
        match nix::fcntl::fcntl(&file, FcntlArg::F_OFD_SETLK(&lock)) {
            Ok(_) => Ok(Some(LocalLock { _file: file })),
            Err(Errno::EAGAIN | Errno::EACCES) => Ok(None),
            Err(e) => Err(lock_error(&path, e.into())),
        }
    }

    /// Whether a run of `job` holds its lock now, without taking it.
    pub fn is_held(job: &str) -> Result<bool> {
        let path = lock_dir()?.join(format!("{job}.lock"));
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(lock_error(&path, e)),
        };
        // F_OFD_GETLK only fills in the lock asked about: who holds one, if
        // anyone.
        let mut lock = whole_file_lock();
        nix::fcntl::fcntl(&file, FcntlArg::F_OFD_GETLK(&mut lock))
            .map_err(|e| lock_error(&path, e.into()))?;
        Ok(lock.l_type != nix::libc::F_UNLCK as nix::libc::c_short)
    }
}

/// An exclusive lock on the whole of a file, for `fcntl`'s F_OFD_* commands.
fn whole_file_lock() -> nix::libc::flock {
    nix::libc::flock {
        l_type: nix::libc::F_WRLCK as nix::libc::c_short,
        l_whence: nix::libc::SEEK_SET as nix::libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

fn lock_error(path: &Path, e: std::io::Error) -> Error {
    Error::io(
        Kind::Internal,
        format!("the run lock {}", path.display()),
        e,
    )
    .with_hint(
        "files jobs keep their run locks in $BACKUP_LOCK_DIR, else /run/backup (the systemd \
         unit's RuntimeDirectory), else /run/lock/backup-UID, else $TMPDIR/backup-UID",
    )
}

/// Where files jobs' lock files are, the same for a daemon with a private
/// /tmp and the operator's shell: `$BACKUP_LOCK_DIR`; else `/run/backup`
/// when this user owns it (the systemd unit's RuntimeDirectory); else
/// `/run/lock/backup-<uid>` where /run/lock is writable (Debian's 1777);
/// else `$TMPDIR/backup-<uid>`. Made 0700, and refused when it is a link,
/// someone else's or open to others, since whoever can write it can hold a
/// job's lock forever.
fn lock_dir() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = nix::unistd::geteuid().as_raw();
    let run_lock_writable =
        nix::unistd::access("/run/lock", nix::unistd::AccessFlags::W_OK).is_ok();
    let dir = match std::env::var_os("BACKUP_LOCK_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ if std::fs::symlink_metadata("/run/backup")
            .is_ok_and(|m| m.is_dir() && m.uid() == uid) =>
        {
            PathBuf::from("/run/backup")
        }
        _ if run_lock_writable => PathBuf::from(format!("/run/lock/backup-{uid}")),
        _ => std::env::temp_dir().join(format!("backup-{uid}")),
    };
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(lock_error(&dir, e)),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| lock_error(&dir, e))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "the lock directory {} is not a directory of this user that only it may use",
                dir.display()
            ),
        )
        .with_hint(format!(
            "remove it, or make it yours with mode 0700: chmod 700 {}",
            dir.display()
        )));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_jobs_lock_is_taken_once_and_seen_without_being_taken() {
        let job = format!("unit-lock-{}", std::process::id());
        assert!(!LocalLock::is_held(&job).unwrap());
        let held = LocalLock::try_take(&job).unwrap().expect("free");
        assert!(LocalLock::is_held(&job).unwrap());
        // Another open of the file (another run) cannot take it.
        assert!(LocalLock::try_take(&job).unwrap().is_none());
        // Looking did not take it: it is still held by `held` alone.
        assert!(LocalLock::is_held(&job).unwrap());
        drop(held);
        assert!(!LocalLock::is_held(&job).unwrap());
        let again = LocalLock::try_take(&job).unwrap();
        assert!(again.is_some());
    }
}
