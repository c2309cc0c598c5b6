//! A throwaway PostgreSQL cluster for `backup drill`: `initdb` in a temp dir,
//! a free port on 127.0.0.1, its socket in the temp dir, a random password,
//! stopped and removed when dropped — also when the drill fails or is
//! interrupted.
//!
//! PostgreSQL refuses to run as root; run as root, the server runs as the
//! `postgres` user, which must be able to reach `$TMPDIR`.

use std::ffi::OsStr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::Database;
use crate::secret::SecretRef;

/// The superuser of the cluster: not `postgres`, which the restored
/// globals may create and alter.
pub const SUPERUSER: &str = "backup_drill";

/// Server programs of one installed PostgreSQL.
#[derive(Debug, Clone)]
pub struct ServerInstall {
    pub bindir: PathBuf,
    pub major: u32,
    /// `initdb --version`.
    pub version: String,
    /// The secret variables the client programs run against a cluster of
    /// it are started without: those of the database whose backup it takes.
    pub secret_env: Arc<[String]>,
    /// Where that database's client programs are looked for: its
    /// `pg_bin_dir`, then its `pg_bin_dirs`.
    pub searched: Vec<PathBuf>,
}

impl ServerInstall {
    /// The directories the client programs run against a cluster of this
    /// install are searched in ([`super::tool_path`]): its own first, then
    /// the database's. A server-only install (`initdb`, `pg_ctl`,
    /// `postgres`) then takes them from another.
    pub fn client_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.bindir.clone())
            .chain(self.searched.iter().cloned())
            .collect()
    }
}

/// The server install to restore a backup of `database`, from a `major`
/// server, into: its `pg_bin_dir` when that has `initdb`, else the nearest
/// major at least as new among its `pg_bin_dirs` and the packaged layouts
/// ([`super::holding`]), else the `initdb` on `PATH`.
pub fn find_server(database: &Database, major: u32) -> Result<ServerInstall> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = &database.pg_bin_dir {
        candidates.push(dir.to_owned());
    }
    let mut versioned: Vec<(u32, PathBuf)> = super::holding(database, "initdb")
        .into_iter()
        .filter(|(m, _)| *m >= major)
        .collect();
    // Stable: of one major, a listed directory before a packaged one.
    versioned.sort_by_key(|(m, _)| *m);
    candidates.extend(versioned.into_iter().map(|(_, p)| p));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    let mut too_old = Vec::new();
    for dir in candidates {
        let initdb = dir.join("initdb");
        if !initdb.is_file() || !dir.join("pg_ctl").is_file() {
            continue;
        }
        let Ok((found, version)) = super::tool_version(&initdb) else {
            continue;
        };
        if found < major {
            too_old.push(format!("{} ({version})", dir.display()));
            continue;
        }
        return Ok(ServerInstall {
            bindir: dir,
            major: found,
            // `initdb (PostgreSQL) 15.4 (Debian ...)` names the server's version.
            version: version.replacen("initdb (PostgreSQL)", "PostgreSQL", 1),
            secret_env: database.secret_env.clone(),
            searched: database
                .pg_bin_dir
                .iter()
                .chain(&database.pg_bin_dirs)
                .cloned()
                .collect(),
        });
    }
    Err(Error::tool(format!(
        "no PostgreSQL server {major} or newer is installed to restore into{}",
        if too_old.is_empty() {
            String::new()
        } else {
            format!(" (too old: {})", too_old.join(", "))
        }
    ))
    .with_hint(format!(
        "install postgresql-{major} (its initdb and pg_ctl), list its bin directory in \
         pg_bin_dirs, or restore into a server you provide with --target-url"
    )))
}

/// A running throwaway cluster. Dropping it stops the server and removes
/// every file it had.
pub struct Throwaway {
    dir: Option<tempfile::TempDir>,
    install: ServerInstall,
    port: u16,
    run_as: Option<(u32, u32)>,
    database: Database,
    running: bool,
}

impl Throwaway {
    /// `initdb` and `pg_ctl start`. Blocking: call from a blocking thread.
    pub fn start(install: &ServerInstall) -> Result<Throwaway> {
        let run_as = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("backup-drill-")
            .tempdir()
            .map_err(|e| {
                Error::io(
                    crate::error::Kind::Internal,
                    "creating the drill's temp dir",
                    e,
                )
                .with_hint("set TMPDIR to a writable directory")
            })?;
        let password: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect();
        let pwfile = dir.path().join("pw");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&pwfile)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, format!("{password}\n").as_bytes())
            });
        written.map_err(|e| {
            Error::io(
                crate::error::Kind::Internal,
                "writing the drill's password file",
                e,
            )
        })?;
        if let Some((uid, gid)) = run_as {
            for path in [dir.path(), &pwfile] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                    Error::io(
                        crate::error::Kind::Internal,
                        format!("chown {}", path.display()),
                        e,
                    )
                })?;
            }
        }
        let mut cluster = Throwaway {
            database: Database {
                name: "throwaway cluster".to_owned(),
                url: String::new(),
                password: Some(SecretRef::given(password)),
                password_from: None,
                pg_bin_dir: None,
                pg_bin_dirs: install.client_dirs(),
                secret_env: install.secret_env.clone(),
            },
            dir: Some(dir),
            install: install.clone(),
            port: 0,
            run_as,
            running: false,
        };
        let data = cluster.data_dir();
        let out = cluster.server_program(
            "initdb",
            [
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-U"),
                OsStr::new(SUPERUSER),
                OsStr::new("--no-sync"),
                OsStr::new("-E"),
                OsStr::new("UTF8"),
                OsStr::new("--locale=C"),
                OsStr::new("--auth-local=trust"),
                OsStr::new("--auth-host=scram-sha-256"),
                OsStr::new(&format!("--pwfile={}", pwfile.display())),
            ],
        )?;
        let _ = std::fs::remove_file(&pwfile);
        if !out.status.success() {
            return Err(Error::tool(format!(
                "initdb of the throwaway cluster failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
            .with_hint(if run_as.is_some() {
                "run as root, the server runs as user postgres: it must be able to reach $TMPDIR"
            } else {
                "check that $TMPDIR is writable and has room"
            }));
        }
        let log = cluster.path().join("server.log");
        let mut last_error = String::new();
        // A port can be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                cluster.path().display()
            );
            let out = cluster.server_program(
                "pg_ctl",
                [
                    OsStr::new("-D"),
                    data.as_os_str(),
                    OsStr::new("-o"),
                    OsStr::new(&options),
                    OsStr::new("-l"),
                    log.as_os_str(),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new("120"),
                    OsStr::new("start"),
                ],
            )?;
            if out.status.success() {
                cluster.running = true;
                cluster.port = port;
                cluster.database.url =
                    // Loopback to a server made a moment ago: no PGSSLMODE applies.
                    format!("postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres?sslmode=disable");
                return Ok(cluster);
            }
            last_error = std::fs::read_to_string(&log).unwrap_or_default();
            if let Err(e) = cluster.stop("immediate") {
                tracing::warn!("{e}");
            }
        }
        Err(Error::tool(format!(
            "the throwaway cluster did not start: {}",
            last_error.trim()
        )))
    }

    /// The superuser's connection; its password is the cluster's own.
    pub fn database(&self) -> &Database {
        &self.database
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn install(&self) -> &ServerInstall {
        &self.install
    }

    pub fn path(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new(""), |d| d.path())
    }

    fn data_dir(&self) -> PathBuf {
        self.path().join("data")
    }

    /// Stops the server and removes its files. Blocking.
    pub fn tear_down(mut self) -> Result<()> {
        let stopped = self.stop("fast");
        let removed = match self.dir.take() {
            Some(dir) => {
                let path = dir.path().to_owned();
                dir.close().map_err(|e| {
                    Error::io(
                        crate::error::Kind::Internal,
                        format!("removing {}", path.display()),
                        e,
                    )
                })
            }
            None => Ok(()),
        };
        stopped.and(removed)
    }

    fn stop(&mut self, mode: &str) -> Result<()> {
        // The pid file says whether a server may run, whatever pg_ctl said
        // before: a start that timed out can leave one coming up.
        if !self.data_dir().join("postmaster.pid").exists() {
            self.running = false;
            return Ok(());
        }
        let data = self.data_dir();
        let out = self.server_program(
            "pg_ctl",
            [
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-m"),
                OsStr::new(mode),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("stop"),
            ],
        )?;
        self.running = !out.status.success();
        if self.running {
            return Err(Error::tool(format!(
                "the throwaway cluster did not stop: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Runs a server program of the install, as the server's user.
    fn server_program<'a>(
        &self,
        program: &str,
        args: impl IntoIterator<Item = &'a OsStr>,
    ) -> Result<Output> {
        let path = self.install.bindir.join(program);
        let mut command = Command::new(&path);
        command
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.run_as {
            command.gid(gid).uid(uid);
        }
        // The server, its backends and whatever the restored data runs in
        // them (as a superuser) see none of our keys and passwords.
        super::minimal_env(&mut command);
        command
            .output()
            .map_err(|e| Error::tool(format!("cannot run {}: {e}", path.display())))
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        // An interrupted or failed drill: no waiting for sessions.
        if let Err(e) = self.stop("immediate") {
            tracing::warn!("{e}");
        }
    }
}

/// The user the server runs as, when we are root: PostgreSQL refuses root.
pub(crate) fn server_user() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    // getpwnam_r: the runtime's other threads may look users up meanwhile.
    // An error reading the user database counts as no such user, as a null
    // getpwnam did.
    let Ok(Some(user)) = nix::unistd::User::from_name("postgres") else {
        return Err(Error::tool(
            "PostgreSQL refuses to run as root, and there is no `postgres` user to run the throwaway cluster as",
        )
        .with_hint("run the drill as another user, create a `postgres` user, or pass --target-url"));
    };
    Ok(Some((user.uid.as_raw(), user.gid.as_raw())))
}

pub(crate) fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io(crate::error::Kind::Internal, "finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io(crate::error::Kind::Internal, "finding a free port", e))
}
