//! The template clusters: `initdb` runs once per server (one bindir, one
//! major) per test run, and every test's cluster is a copy of its data
//! directory with an identity of its own.
//!
//! On the 2-CPU machine the suite was measured on, initdb took 1.1-1.7 s a
//! cluster and a copy 0.5-0.75 s, most of it creating the copy's thousand
//! files; one initdb replaced 132 a run.
//!
//! A template is never started, so it holds no `postmaster.pid`,
//! `postmaster.opts` or socket, and initdb leaves `port` and
//! `unix_socket_directories` commented out: each copy gets its port and
//! socket directory from the `pg_ctl` command line that starts it. The
//! templates live in one temp dir named after this process, removed when the
//! process exits, or by a later run when this one was killed first; a
//! template is never reused by another run, so none made by an older server
//! can be picked up.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{PASSWORD, chown_to_postgres, server_output};

/// What every cluster's initdb is run with (plus `--pwfile`): the
/// superuser `postgres` with the password [`PASSWORD`] over TCP, trusted
/// over the socket.
const INITDB_OPTIONS: &[&str] = &[
    "-U",
    "postgres",
    "--no-sync",
    "-E",
    "UTF8",
    "--locale=C",
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
];

const PREFIX: &str = "backup-test-pg-template-";

/// The run's directory, which holds every template (`<n>/data`) and is
/// reachable by the server's user.
static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Each server's template directory, by the bindir whose initdb made it. A
/// cell of its own per bindir: the first cluster of one major waits for its
/// initdb, not for another major's.
static TEMPLATES: Mutex<BTreeMap<PathBuf, Arc<OnceLock<PathBuf>>>> = Mutex::new(BTreeMap::new());

/// Makes `data` a copy of `bindir`'s template, made with its initdb the
/// first time it is asked for, with a system identifier of its own.
pub fn copy_to(data: &Path, bindir: &Path, run_as: &Option<String>) {
    let cell = TEMPLATES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(bindir.to_owned())
        .or_default()
        .clone();
    let template = cell.get_or_init(|| make(bindir, run_as));
    let keep_wal = !has_pg_resetwal(bindir);
    copy_tree(&template.join("data"), data, keep_wal);
    new_system_identifier(data, bindir, run_as);
}

/// The run's directory of templates: made by this run, removed with it, and
/// reachable by the server's user. `None` before the first cluster.
pub fn run_dir() -> Option<PathBuf> {
    RUN_DIR.get().cloned()
}

/// The run's directory, made (and the stale ones of killed runs removed)
/// the first time.
fn make_run_dir(run_as: &Option<String>) -> &'static Path {
    RUN_DIR.get_or_init(|| {
        remove_stale();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("temp dir")
            .keep();
        // Removed at exit: a static is never dropped.
        // SAFETY: atexit only registers the function, run once at exit.
        assert_eq!(unsafe { libc::atexit(remove_at_exit) }, 0, "atexit");
        if run_as.is_some() {
            chown_to_postgres(&dir);
        }
        dir
    })
}

/// A new template made by `bindir`'s initdb: a directory with `data` in it.
fn make(bindir: &Path, run_as: &Option<String>) -> PathBuf {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let dir = make_run_dir(run_as).join(COUNT.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let password_file = dir.join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
    if run_as.is_some() {
        chown_to_postgres(&dir);
        chown_to_postgres(&password_file);
    }
    let data = dir.join("data");
    let pwfile = format!("--pwfile={}", password_file.display());
    let mut args = vec!["-D", data.to_str().expect("a UTF-8 temp dir")];
    args.extend_from_slice(INITDB_OPTIONS);
    args.push(&pwfile);
    let out = server_output(run_as, bindir, "initdb", &args);
    assert!(
        out.status.success(),
        "initdb ({}) failed: {}",
        bindir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&password_file).expect("remove the password file");
    dir
}

/// Whether the server comes with `pg_resetwal`: npm's builds of 13, 14, 16
/// and 17 (scripts/lib/majors.sh) hold only initdb, pg_ctl and postgres, and
/// another major's `pg_resetwal` refuses the data directory.
fn has_pg_resetwal(bindir: &Path) -> bool {
    bindir.join("pg_resetwal").is_file()
}

extern "C" fn remove_at_exit() {
    if let Some(dir) = RUN_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes the templates of runs that were killed before they could.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 sends nothing; it only asks whether `pid` exists.
        let gone = unsafe { libc::kill(pid, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies the directory `from` to `to` (which must not exist) with each
/// entry's mode and owner: the server refuses a data directory others may
/// read, and runs as its owner. WAL segments are left out unless `keep_wal`:
/// `pg_resetwal`, where there is one, writes the copy's own.
fn copy_tree(from: &Path, to: &Path, keep_wal: bool) {
    use std::os::unix::fs::MetadataExt;
    let chown = |path: &Path, meta: &std::fs::Metadata| {
        // Only root can give a file away; otherwise it is ours already.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    };
    let meta = std::fs::metadata(from).expect("template directory");
    std::fs::create_dir(to).unwrap_or_else(|e| panic!("{}: {e}", to.display()));
    std::fs::set_permissions(to, meta.permissions()).expect("directory mode");
    chown(to, &meta);
    let skip_files = !keep_wal && from.file_name().is_some_and(|n| n == "pg_wal");
    for entry in std::fs::read_dir(from)
        .expect("read the template")
        .flatten()
    {
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&source).expect("template entry");
        if meta.is_dir() {
            copy_tree(&source, &target, keep_wal);
        } else if meta.is_file() {
            if skip_files {
                continue;
            }
            // Copies the mode too.
            std::fs::copy(&source, &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
            chown(&target, &meta);
        } else if meta.is_symlink() {
            let link = std::fs::read_link(&source).expect("read a link");
            std::os::unix::fs::symlink(&link, &target).expect("make a link");
            chown(&target, &meta);
        } else {
            panic!("{}: not a file, directory or link", source.display());
        }
    }
}

/// Gives the copy in `data` a system identifier of its own, as
/// `pg_createsubscriber` does to the standby it converts: sets it in
/// `global/pg_control`, then `pg_resetwal` writes WAL that carries it, or,
/// for a server without one, it is set in the copied WAL's segment headers.
/// Without this, every cluster of a run would be the same cluster to
/// `backup`, which tells clusters apart by it.
fn new_system_identifier(data: &Path, bindir: &Path, run_as: &Option<String>) {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let control = data.join("global/pg_control");
    let mut bytes = std::fs::read(&control).expect("read pg_control");
    // The CRC-32C of the fields before it ends ControlFileData; its offset
    // varies between server versions, so it is found, not assumed.
    let at = (8..bytes.len().min(1024) - 4)
        .step_by(4)
        .find(|&at| crc32c(&bytes[..at]).to_ne_bytes() == bytes[at..at + 4])
        .expect("pg_control: no CRC found");
    // As initdb makes one: seconds, then microseconds, then (instead of
    // its process id) a count that keeps copies made in one microsecond apart.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    let id = (now.as_secs() << 32)
        | (u64::from(now.subsec_micros()) << 12)
        | (COUNT.fetch_add(1, Ordering::Relaxed) & 0xFFF);
    let old = u64::from_ne_bytes(bytes[..8].try_into().unwrap());
    bytes[..8].copy_from_slice(&id.to_ne_bytes());
    let crc = crc32c(&bytes[..at]);
    bytes[at..at + 4].copy_from_slice(&crc.to_ne_bytes());
    std::fs::write(&control, &bytes).expect("write pg_control");
    if !has_pg_resetwal(bindir) {
        set_wal_system_identifier(data, old, id);
        return;
    }
    let out = server_output(
        run_as,
        bindir,
        "pg_resetwal",
        &["-D", data.to_str().expect("a UTF-8 temp dir")],
    );
    assert!(
        out.status.success(),
        "pg_resetwal failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Changes the system identifier `old` to `new` in the first page header of
/// each WAL segment in `data/pg_wal`: the server refuses to read a segment
/// whose header names another system ("WAL file is from different database
/// system"). The header carries no checksum; the identifier is
/// `xlp_sysid` of `XLogLongPageHeaderData`, after the 24 bytes of the
/// short header, the same on every major from 13 to 18. That `old` is found
/// there is the check that the layout is the one assumed.
fn set_wal_system_identifier(data: &Path, old: u64, new: u64) {
    const SYSID_AT: u64 = 24;
    let wal = data.join("pg_wal");
    for entry in std::fs::read_dir(&wal).expect("read pg_wal").flatten() {
        let name = entry.file_name();
        let is_segment = name.len() == 24
            && name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_hexdigit()));
        if !is_segment {
            continue;
        }
        let path = entry.path();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut header = [0u8; SYSID_AT as usize + 8];
        file.read_exact(&mut header)
            .expect("read a segment's header");
        let found = u64::from_ne_bytes(header[SYSID_AT as usize..].try_into().unwrap());
        assert_eq!(
            found,
            old,
            "{}: the system identifier is not where it was assumed",
            path.display()
        );
        file.seek(SeekFrom::Start(SYSID_AT)).expect("seek");
        file.write_all(&new.to_ne_bytes())
            .expect("write the system identifier");
    }
}

/// CRC-32C (Castagnoli), as PostgreSQL checksums its control file.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}
