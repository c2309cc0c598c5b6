//! The template cluster: `initdb` runs once per test run, and every test's
//! cluster is a copy of its data directory with an identity of its own.
//!
//! On the 2-CPU machine the suite was measured on, initdb took 1.1-1.7 s a
//! cluster and a copy 0.5-0.75 s, most of it creating the copy's thousand
//! files; one initdb replaced 132 a run.
//!
//! The template is never started, so it holds no `postmaster.pid`,
//! `postmaster.opts` or socket, and initdb leaves `port` and
//! `unix_socket_directories` commented out: each copy gets its port and
//! socket directory from the `pg_ctl` command line that starts it. It lives
//! in a temp dir named after this process, removed when the process exits,
//! or by a later run when this one was killed first; a template is never
//! reused by another run, so none made by an older server can be picked up.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The template's directory (its data directory is `data` in it), and the
/// server programs that made it.
struct Template {
    dir: PathBuf,
    bindir: PathBuf,
}

static TEMPLATE: OnceLock<Template> = OnceLock::new();

/// Makes `data` a copy of the template, made with `bindir`'s initdb the first
/// time it is asked for, with a system identifier of its own.
pub fn copy_to(data: &Path, bindir: &Path, run_as: &Option<String>) {
    let template = TEMPLATE.get_or_init(|| make(bindir, run_as));
    assert_eq!(
        template.bindir, bindir,
        "the template was made by another server's initdb"
    );
    copy_tree(&template.dir.join("data"), data);
    new_system_identifier(data, bindir, run_as);
}

/// The template's directory: made by this run, removed with it, and
/// reachable by the server's user. `None` before the first cluster.
pub fn run_dir() -> Option<PathBuf> {
    TEMPLATE.get().map(|t| t.dir.clone())
}

fn make(bindir: &Path, run_as: &Option<String>) -> Template {
    remove_stale();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{}-", std::process::id()))
        .tempdir()
        .expect("temp dir")
        .keep();
    // Removed at exit: a static is never dropped.
    // SAFETY: atexit only registers the function, run once at exit.
    assert_eq!(unsafe { libc::atexit(remove_at_exit) }, 0, "atexit");
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
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&password_file).expect("remove the password file");
    Template {
        dir,
        bindir: bindir.to_owned(),
    }
}

extern "C" fn remove_at_exit() {
    if let Some(template) = TEMPLATE.get() {
        let _ = std::fs::remove_dir_all(&template.dir);
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
/// read, and runs as its owner. WAL segments are left out:
/// `new_system_identifier` writes the copy's own.
fn copy_tree(from: &Path, to: &Path) {
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
    let in_wal = from.file_name().is_some_and(|n| n == "pg_wal");
    for entry in std::fs::read_dir(from)
        .expect("read the template")
        .flatten()
    {
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&source).expect("template entry");
        if meta.is_dir() {
            copy_tree(&source, &target);
        } else if meta.is_file() {
            if in_wal {
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
/// `global/pg_control`, then `pg_resetwal` writes WAL that carries it.
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
    bytes[..8].copy_from_slice(&id.to_ne_bytes());
    let crc = crc32c(&bytes[..at]);
    bytes[at..at + 4].copy_from_slice(&crc.to_ne_bytes());
    std::fs::write(&control, &bytes).expect("write pg_control");
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
