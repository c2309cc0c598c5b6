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

/// Which program to run for `tool` when the server is `server_major`: the
/// database's `pg_bin_dir`, else Debian's versioned directory of that major
/// (or the nearest newer one), else whatever `PATH` finds.
pub fn tool_path(db: &Database, tool: &str, server_major: u32) -> PathBuf {
    if let Some(dir) = &db.pg_bin_dir {
        return dir.join(tool);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let path = e.path().join("bin").join(tool);
            (major >= server_major && path.is_file()).then_some((major, path))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .map_or_else(|| PathBuf::from(tool), |(_, p)| p)
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
            "install postgresql-client-{} or point pg_bin_dir at its bin directory",
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
