//! Running the PostgreSQL client programs (`pg_dump`, `pg_dumpall`,
//! `pg_restore`, `initdb`...) as children: which binary fits the server, the
//! environment a child gets (its password and none of our secrets), its
//! stderr kept for the error message, and stopping it when its run is
//! cancelled. Their arguments are [`super::command`]'s.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::command;
use super::connect::ServerVersion;
use crate::error::{Error, Kind, Result};
use crate::model::Database;

/// Which program to run for `tool`, one of the client programs, for a
/// server (or an archive) of major `at_least`: the database's `pg_bin_dir`
/// when it is set, as it is; else, of those in `pg_bin_dirs`, the packaged
/// layouts ([`packaged_bindirs`]) and `PATH`, the nearest major at least
/// `at_least` (the first of equals in that order). Not simply the newest:
/// an archive of `pg_dump` 17 or later reads only with a `pg_restore` as
/// new, and those send `SET transaction_timeout`, which servers before 17
/// refuse; a server's own major keeps its backups restorable with its own
/// client. When none is new enough, the newest found, for the caller to
/// refuse naming its version; `tool` alone, for `PATH`, when none is found.
pub fn tool_path(db: &Database, tool: &str, at_least: u32) -> PathBuf {
    if let Some(dir) = &db.pg_bin_dir {
        return dir.join(tool);
    }
    let mut found: Vec<(u32, PathBuf)> = holding(db, tool)
        .into_iter()
        .map(|(major, dir)| (major, dir.join(tool)))
        .collect();
    if let Some(path) = on_path(tool)
        && let Ok((major, _)) = tool_version(&path)
    {
        found.push((major, path));
    }
    nearest(found, at_least).unwrap_or_else(|| PathBuf::from(tool))
}

/// The directories of `db`'s `pg_bin_dirs`, then of the packaged layouts,
/// that hold `program`, each with its major: a listed directory's from
/// `program --version`, a packaged one's from its path.
pub fn holding(db: &Database, program: &str) -> Vec<(u32, PathBuf)> {
    let listed = db
        .pg_bin_dirs
        .iter()
        .filter_map(|dir| Some((tool_version(&dir.join(program)).ok()?.0, dir.clone())));
    let packaged = packaged_bindirs()
        .into_iter()
        .filter(|(_, dir)| dir.join(program).is_file());
    listed.chain(packaged).collect()
}

/// Of `found`, the nearest major at least `at_least`, the first of equals;
/// else the newest.
fn nearest(found: Vec<(u32, PathBuf)>, at_least: u32) -> Option<PathBuf> {
    let fits = found
        .iter()
        .filter(|(major, _)| *major >= at_least)
        .min_by_key(|(major, _)| *major);
    let newest = || {
        found
            .iter()
            .min_by_key(|(major, _)| std::cmp::Reverse(*major))
    };
    fits.or_else(newest).map(|(_, path)| path.clone())
}

/// The versioned bin directories of the usual packages, each with its
/// major: Debian's and Ubuntu's `/usr/lib/postgresql/N/bin`, and the
/// PostgreSQL RPMs' `/usr/pgsql-N/bin`.
pub fn packaged_bindirs() -> Vec<(u32, PathBuf)> {
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))));
    let rpm = std::fs::read_dir("/usr")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e
                .file_name()
                .to_str()?
                .strip_prefix("pgsql-")?
                .parse()
                .ok()?;
            Some((major, e.path().join("bin")))
        });
    let mut dirs: Vec<(u32, PathBuf)> = debian.chain(rpm).filter(|(_, d)| d.is_dir()).collect();
    dirs.sort();
    dirs
}

/// Where `PATH` finds `tool`.
fn on_path(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
}

/// Gives a program only the environment any program needs (paths, locale,
/// time zone): none of our secrets.
pub fn minimal_env(command: &mut Command) {
    command.env_clear();
    for (name, value) in std::env::vars_os() {
        let keep = name.to_str().is_some_and(|n| {
            matches!(
                n,
                "PATH" | "LANG" | "TZ" | "TMPDIR" | "HOME" | "LD_LIBRARY_PATH"
            ) || n.starts_with("LC_")
        });
        if keep {
            command.env(name, value);
        }
    }
}

/// Runs `tool --version`; returns the major version and the line it printed.
pub fn tool_version(path: &Path) -> Result<(u32, String)> {
    let mut command = Command::new(path);
    minimal_env(&mut command);
    let output = command.arg("--version").output().map_err(|e| {
        Error::tool(format!("cannot run {}: {e}", path.display())).with_hint(
            "install the PostgreSQL client programs (Debian: postgresql-client) \
             or set pg_bin_dir in the [databases.*] section",
        )
    })?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major = command::parse_tool_version(&text).ok_or_else(|| {
        Error::tool(format!(
            "{} --version printed '{text}', not a PostgreSQL version",
            path.display()
        ))
    })?;
    Ok((major, text))
}

/// Refuses a client program older than the server: `pg_dump` cannot dump a
/// newer server, and an old `pg_restore` cannot read a newer archive.
pub fn require_tool_at_least(path: &Path, server: &ServerVersion) -> Result<String> {
    let (major, text) = tool_version(path)?;
    if major < server.major {
        return Err(Error::tool(format!(
            "{} is version {major}, older than the server ({})",
            path.display(),
            server.text
        ))
        .with_hint(format!(
            "install postgresql-client-{} (or a newer one), or list its bin directory in \
             pg_bin_dirs (or point pg_bin_dir at it)",
            server.major
        )));
    }
    Ok(text)
}

/// What libpq says when the server went away or is not taking sessions yet.
const LOST_SERVER: &[&str] = &[
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "could not receive data from server",
    "the database system is starting up",
    "the database system is shutting down",
    "Connection refused",
    "SSL SYSCALL error: EOF detected",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "due to conflict with recovery",
    "Connection timed out",
];

/// A running client program, with the tail of its stderr kept for messages.
pub struct ClientProgram {
    pub name: String,
    pub child: Child,
    stderr_tail: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    /// Set once `wait` returned: the pid may be reused from then on.
    reaped: Arc<AtomicBool>,
}

/// How much of a child's stderr is kept for the error message.
const STDERR_TAIL: usize = 8 * 1024;

/// Secrets of ours that may be in our environment and that the PostgreSQL
/// client programs never use (beside those the job files name).
const SECRETS_CHILDREN_DO_NOT_NEED: [&str; 6] = [
    crate::keys::IDENTITY_ENV,
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
];

/// Spawns `program args` with `PGPASSWORD` set only in the child's
/// environment, and none of the variables that hold secrets: ours, and
/// those `db`'s configuration names (`Database::secret_env`).
pub fn spawn(
    program: &Path,
    args: Vec<OsString>,
    db: &Database,
    stdin: Stdio,
    stdout: Stdio,
) -> Result<ClientProgram> {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped());
    // libpq needs none of these: a child need not hold them.
    for name in SECRETS_CHILDREN_DO_NOT_NEED {
        cmd.env_remove(name);
    }
    for name in db.secret_env.iter() {
        cmd.env_remove(name);
    }
    if let Some(password) = &db.password {
        cmd.env("PGPASSWORD", password.resolve()?.expose());
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::tool(format!("cannot start {}: {e}", program.display()))
            .with_hint("install the PostgreSQL client programs or set pg_bin_dir")
    })?;
    let tail = Arc::new(Mutex::new(Vec::new()));
    let stderr_thread = child.stderr.take().map(|mut stderr| {
        let tail = tail.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                t.extend_from_slice(&buf[..n]);
                if t.len() > STDERR_TAIL {
                    let cut = t.len() - STDERR_TAIL;
                    t.drain(..cut);
                }
            }
        })
    });
    Ok(ClientProgram {
        name,
        child,
        stderr_tail: tail,
        stderr_thread,
        reaped: Arc::new(AtomicBool::new(false)),
    })
}

/// Stops a client program when dropped before it was waited for: the run it
/// belongs to was cancelled (timeout, SIGTERM). SIGTERM first, on which
/// `pg_dump` and `pg_restore` cancel their queries on the server; SIGKILL if it
/// is still there a few seconds later.
pub struct StopOnDrop {
    name: String,
    pid: u32,
    reaped: Arc<AtomicBool>,
}

impl StopOnDrop {
    const KILL_AFTER: Duration = Duration::from_secs(5);
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.reaped.load(Ordering::SeqCst) {
            return;
        }
        tracing::info!("stopping {} (pid {})", self.name, self.pid);
        // The child is not reaped yet, so the pid is still its own.
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let reaped = self.reaped.clone();
        std::thread::spawn(move || {
            std::thread::sleep(StopOnDrop::KILL_AFTER);
            if !reaped.load(Ordering::SeqCst) {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
    }
}

impl ClientProgram {
    /// A guard that stops this program if the guard is dropped before `wait`
    /// returned.
    pub fn stop_on_drop(&self) -> StopOnDrop {
        StopOnDrop {
            name: self.name.clone(),
            pid: self.child.id(),
            reaped: self.reaped.clone(),
        }
    }

    /// Waits for the child and turns a failure into an error quoting its stderr.
    pub fn wait(self) -> Result<()> {
        let name = self.name.clone();
        let stderr = self.wait_keeping_stderr()?;
        if !stderr.is_empty() {
            tracing::warn!("{name} said: {stderr}");
        }
        Ok(())
    }

    /// Like [`ClientProgram::wait`], handing what the program said on stderr
    /// (its tail) to the caller instead of the log.
    pub fn wait_keeping_stderr(mut self) -> Result<String> {
        let status = self.child.wait();
        self.reaped.store(true, Ordering::SeqCst);
        let status = status.map_err(|e| Error::tool(format!("waiting for {}: {e}", self.name)))?;
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let stderr = self.stderr();
        if status.success() {
            return Ok(stderr);
        }
        let err = Error::tool(format!(
            "{} {}{}",
            self.name,
            describe_status(status),
            quoted(&stderr)
        ));
        // The server went away under the program (a restart, a failover, a
        // terminated session): a retry may find it back.
        if LOST_SERVER.iter().any(|said| stderr.contains(said)) {
            return Err(err.temporary());
        }
        Err(err)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    pub fn stderr(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&tail).trim().to_owned()
    }
}

fn quoted(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("failed with exit code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "failed".to_owned(),
    }
}

/// Whether a failed child's message says it lacked a privilege.
pub fn is_permission_error(err: &Error) -> bool {
    err.kind() == Kind::Tool && err.message().contains("permission denied")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory holding a `pg_dump` that says it is `version`.
    fn fake_bindir(root: &Path, name: &str, version: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let tool = dir.join("pg_dump");
        std::fs::write(
            &tool,
            format!("#!/bin/sh\necho 'pg_dump (PostgreSQL) {version}'\n"),
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn database(pg_bin_dir: Option<PathBuf>, pg_bin_dirs: Vec<PathBuf>) -> Database {
        Database {
            pg_bin_dir,
            pg_bin_dirs,
            ..Database::unresolved()
        }
    }

    #[test]
    fn the_nearest_client_program_at_least_as_new_is_taken_and_pg_bin_dir_as_it_is() {
        let root = tempfile::tempdir().unwrap();
        // Majors no package has, so that the machine's own do not count.
        let old = fake_bindir(root.path(), "old", "90.1");
        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let near = fake_bindir(root.path(), "near", "97.2");
        let twin = fake_bindir(root.path(), "twin", "97.9");
        let newest = fake_bindir(root.path(), "newest", "99.1");
        let listed = vec![old.clone(), empty, newest.clone(), near.clone(), twin];
        let db = database(None, listed);
        assert_eq!(tool_path(&db, "pg_dump", 95), near.join("pg_dump"));
        assert_eq!(tool_path(&db, "pg_dump", 98), newest.join("pg_dump"));
        // None new enough: the newest, for the caller to refuse.
        assert_eq!(tool_path(&db, "pg_dump", 100), newest.join("pg_dump"));
        // pg_bin_dir is the operator's choice, even when older.
        let db = database(Some(old.clone()), vec![]);
        assert_eq!(tool_path(&db, "pg_dump", 95), old.join("pg_dump"));
    }

    #[test]
    fn packaged_layouts_give_their_majors() {
        for (major, dir) in packaged_bindirs() {
            assert!(dir.is_dir(), "{}", dir.display());
            let name = dir
                .parent()
                .and_then(Path::file_name)
                .unwrap()
                .to_string_lossy();
            assert!(name.ends_with(&major.to_string()), "{}", dir.display());
        }
    }
}
