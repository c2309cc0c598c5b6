//! A server started on a restored data directory to replay the job's WAL
//! archive into it, and the wait for that recovery to end.
//!
//! While it recovers the server is private: its socket is in a temp
//! directory of its own (mode 0700, owned by the server's user), it listens
//! on no TCP address, and its `pg_hba.conf` (in that directory, not the data
//! directory's) lets in only that socket's users, with `trust`. Run as root,
//! the server runs as `postgres`. Its environment is ours: the
//! `restore_command` it runs (`backup wal fetch`) needs the storages'
//! credentials.
//!
//! `postgres` is spawned directly rather than through `pg_ctl`:
//! `pg_ctl start -w` waits for consistency, which may be the whole replay,
//! and without `-w` its postmaster is known only by a pid file that may not
//! be written yet. As our child, the postmaster's death is seen at once with
//! its exit status, and its pid is not reused before we reap it. Its
//! arguments are a vector, not a shell string, and it gets a process group
//! of its own, so an operator's Ctrl-C (SIGINT to the terminal's group is a
//! fast shutdown to a postmaster) reaches us, not it.
//!
//! The command line overrides what the directory's configuration says where
//! reading the log depends on it: messages in English (`lc_messages = C`),
//! the log on stderr into our file (`logging_collector = off`), at the
//! default level, its lines in UTC (`log_timezone`) and naming the process
//! that wrote them. The times in the recovery's messages are ISO with a
//! numeric offset whatever `timezone` is, so the sessions' time zone stays
//! the cluster's own (the operator's checks may depend on it). `hot_standby` is
//! on only for a recovery that pauses at its target, to watch it there; `ssl = off` since no
//! TCP address is listened on.
//!
//! Who we connect as: `trust` lets in any role that exists, but the name of
//! the bootstrap superuser (oid 10) is not known before a session can read
//! `pg_roles`. The roles tried, in order, are the one the caller suggests
//! (the role the job's database url names), `postgres`, the owner of the
//! data directory's files (initdb names the superuser after the user that
//! ran it), and the user we run as; the first that exists reads the
//! superuser's name, and the session used from then on is the superuser's.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use nix::sys::signal::Signal;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Kind, Result};
use crate::model::Database;
use crate::pg::cluster::{ServerInstall, free_port, server_user};
use crate::pg::{self, Connection};
use crate::wal::names::{Lsn, WalFile};

/// Where the recovery's log is kept in the data directory once the private
/// directory goes: when the server died, and when it is handed over (the
/// handed-over server's own output is appended to it).
pub const KEPT_LOG: &str = "backup-recovery.log";

/// How often the wait asks the server how far it is.
const POLL: Duration = Duration::from_millis(500);
/// How long a fast shutdown may take (it writes a checkpoint) before the
/// server is stopped at once.
const FAST_SHUTDOWN: Duration = Duration::from_secs(300);
/// How long an immediate shutdown may take before the postmaster is killed.
const IMMEDIATE_SHUTDOWN: Duration = Duration::from_secs(30);
/// `pg_ctl start -w -t` of a handed-over server: a promoted one starts in
/// seconds, a paused one replays again from its last restartpoint.
const HAND_OVER_START: &str = "600";
/// The databases the first session is opened on: `postgres` may have been
/// dropped, `template1` rarely is.
const FIRST_DATABASES: [&str; 2] = ["postgres", "template1"];

/// A server started on a restored data directory to recover it. Dropped
/// without [`RecoveryServer::stop`] or [`RecoveryServer::hand_over`] (a
/// failed or interrupted restore), it is stopped at once (immediate
/// shutdown) and its private directory removed; the data directory stays.
pub struct RecoveryServer {
    install: ServerInstall,
    data: PathBuf,
    /// The socket, the hba file and the log.
    dir: Option<tempfile::TempDir>,
    log: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    /// `None` once stopped and reaped.
    postmaster: Mutex<Option<Child>>,
    /// The roles tried for the first session, in order.
    roles: Vec<String>,
    /// The session's database until the superuser is known.
    guess: Database,
    superuser: OnceLock<Database>,
    started: Instant,
}

/// A server left running on its own configuration by [`RecoveryServer::hand_over`].
#[derive(Debug, Clone, Serialize)]
pub struct HandedOver {
    /// The shell command that stops it.
    pub stop_command: String,
    pub log: PathBuf,
    pub port: u16,
}

/// How recovery ended.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryEnd {
    /// "recovery stopping before commit of transaction 1234, time 2024-…"
    /// from the log: the first transaction recovery did not apply.
    pub stopped_before: Option<StopPoint>,
    /// `pg_last_xact_replay_timestamp()` (static after recovery).
    pub last_replayed: Option<Timestamp>,
    /// The server's timeline now: the new one once promoted.
    pub timeline: u32,
    /// Paused at the target (`recovery_target_action = 'pause'`), not promoted.
    pub paused: bool,
    /// From [`RecoveryServer::start`] to the end of recovery.
    pub seconds: f64,
    /// WAL segments restored from the archive ("restored log file" lines).
    pub segments_restored: u64,
    /// From where redo started to the last record replayed.
    pub replayed_bytes: Option<u64>,
}

/// The transaction recovery stopped before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StopPoint {
    /// The full transaction id (with its epoch), as `xid8` takes it.
    pub xid: u64,
    /// When it committed (or aborted) on the backed-up server.
    pub at: Timestamp,
    /// `commit` or `abort`.
    pub what: String,
}

impl RecoveryServer {
    /// Starts the server on `data` (a restored directory with its recovery
    /// settings written), on `port` or a free one, and returns without
    /// waiting. `role_hint` is a role the cluster is likely to have (the
    /// job's own): see the module's documentation. Blocking.
    pub fn start(
        install: &ServerInstall,
        data: &Path,
        port: Option<u16>,
        role_hint: Option<&str>,
    ) -> Result<RecoveryServer> {
        let run_as = server_user()?;
        if !data.join("PG_VERSION").is_file() {
            return Err(Error::not_found(format!(
                "{} is not a PostgreSQL data directory (no PG_VERSION in it)",
                data.display()
            )));
        }
        let data = std::path::absolute(data)
            .map_err(|e| Error::io(Kind::Internal, format!("reading {}", data.display()), e))?;
        let dir = tempfile::Builder::new()
            .prefix("backup-recover-")
            .tempdir()
            .map_err(|e| {
                Error::io(Kind::Internal, "creating the recovery's temp dir", e)
                    .with_hint("set TMPDIR to a writable directory")
            })?;
        let hba = dir.path().join("pg_hba.conf");
        let log = dir.path().join("server.log");
        write_private(
            &hba,
            b"# The recovery's own socket directory (mode 0700) is the only way in.\n\
              local all all trust\n",
        )?;
        let log_file = open_private(&log)?;
        if let Some((uid, gid)) = run_as {
            for path in [dir.path(), &hba, &log] {
                chown(path, uid, gid)?;
            }
        }
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let postgres = install.bindir.join("postgres");
        let stderr = log_file
            .try_clone()
            .map_err(|e| Error::io(Kind::Internal, format!("opening {}", log.display()), e))?;
        let mut command = Command::new(&postgres);
        command
            .args(server_args(&data, port, dir.path(), &hba, pauses(&data)))
            // Reachable by the server's user, whatever our own directory is.
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .process_group(0);
        if let Some((uid, gid)) = run_as {
            command.gid(gid).uid(uid);
        }
        let child = command.spawn().map_err(|e| {
            Error::tool(format!("cannot start {}: {e}", postgres.display())).with_hint(
                if run_as.is_some() {
                    "run as root, the server runs as user postgres: it must be able to reach \
                     $TMPDIR and run the server's programs"
                } else {
                    "install the PostgreSQL server of the backup's major version, or set pg_bin_dir"
                },
            )
        })?;
        let owner = std::fs::metadata(&data)
            .ok()
            .and_then(|m| nix::unistd::User::from_uid(m.uid().into()).ok().flatten())
            .map(|u| u.name);
        let me = (!nix::unistd::geteuid().is_root())
            .then(|| {
                nix::unistd::User::from_uid(nix::unistd::geteuid())
                    .ok()
                    .flatten()
            })
            .flatten()
            .map(|u| u.name);
        let roles = role_candidates(role_hint, owner, me);
        let guess = socket_database(install, &roles[0], FIRST_DATABASES[0], dir.path(), port);
        Ok(RecoveryServer {
            install: install.clone(),
            data,
            dir: Some(dir),
            log,
            port,
            run_as,
            postmaster: Mutex::new(Some(child)),
            roles,
            guess,
            superuser: OnceLock::new(),
            started: Instant::now(),
        })
    }

    /// Waits until recovery has ended (promoted: `pg_is_in_recovery()` is
    /// false) or paused at the target. No time limit: replaying a long
    /// archive takes what it takes. The server exiting is an error quoting
    /// its log's FATAL and PANIC lines and naming the last WAL file it
    /// restored; `cancel` stops the wait (the server keeps running).
    pub async fn wait(&self, cancel: &CancellationToken) -> Result<RecoveryEnd> {
        let mut session: Option<Connection> = None;
        loop {
            if let Some(status) = self.exit_status()? {
                return Err(self.died(status));
            }
            if session.is_none() {
                session = self.connect().await?;
            }
            if let Some(conn) = &session {
                match self.state(conn).await {
                    Ok(State::Recovering) => {}
                    Ok(State::Ended { paused }) => {
                        return match self.ended(conn, paused).await {
                            Err(e) => match self.exit_status()? {
                                Some(status) => Err(self.died(status)),
                                None => Err(e),
                            },
                            ended => ended,
                        };
                    }
                    // A session ended by a recovery conflict, or the server
                    // going: the next round sees which.
                    Err(e) => {
                        tracing::debug!("recovery of {}: {}", self.data.display(), e.message());
                        session = None;
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = cancel.cancelled() => {
                    return Err(Error::interrupted(format!(
                        "the wait for the recovery of {} was stopped",
                        self.data.display()
                    )));
                }
            }
        }
    }

    /// The bootstrap superuser's connection over the private socket, once
    /// [`RecoveryServer::wait`] has found it; before, the first role tried.
    pub fn database(&self) -> &Database {
        self.superuser.get().unwrap_or(&self.guess)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops the server (fast shutdown) and removes its private directory
    /// and log. Blocking.
    pub fn stop(mut self) -> Result<()> {
        let stopped = self.shut_down(Signal::SIGINT, FAST_SHUTDOWN);
        let removed = self.remove_dir();
        stopped.and(removed)
    }

    /// Stops the server, then starts it again on the directory's own
    /// configuration (its hba file, listen addresses, port) with `pg_ctl
    /// start -w`, left running. The recovery's log is kept as
    /// [`KEPT_LOG`] in the data directory, and the server's output is
    /// appended to it. Blocking.
    pub fn hand_over(mut self) -> Result<HandedOver> {
        self.shut_down(Signal::SIGINT, FAST_SHUTDOWN)?;
        let log = self.data.join(KEPT_LOG);
        self.keep_log(&log)?;
        let from = std::fs::metadata(&log).map_or(0, |m| m.len());
        let pg_ctl = self.install.bindir.join("pg_ctl");
        let mut command = Command::new(&pg_ctl);
        command
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", HAND_OVER_START, "start"])
            .current_dir(self.private_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.run_as {
            command.gid(gid).uid(uid);
        }
        let out = command
            .output()
            .map_err(|e| Error::tool(format!("cannot run {}: {e}", pg_ctl.display())))?;
        let stop_command = stop_command(&pg_ctl, &self.data, self.run_as.is_some());
        if !out.status.success() {
            let text = std::fs::read(&log).unwrap_or_default();
            let since = String::from_utf8_lossy(text.get(from as usize..).unwrap_or_default());
            let mut said = RecoveryLog::parse(&since).problems;
            said.push(String::from_utf8_lossy(&out.stderr).trim().to_owned());
            said.retain(|s| !s.is_empty());
            return Err(Error::tool(format!(
                "the recovered server on {} did not start on its own configuration: {}",
                self.data.display(),
                said.join("; ")
            ))
            .with_hint(format!(
                "its log is {}; if it is still starting, `{stop_command}` stops it",
                log.display()
            )));
        }
        let port = postmaster_port(&self.data).ok_or_else(|| {
            Error::internal(format!(
                "the recovered server on {} started but its postmaster.pid names no port",
                self.data.display()
            ))
        })?;
        self.remove_dir()?;
        Ok(HandedOver {
            stop_command,
            log,
            port,
        })
    }

    fn private_dir(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/"), |d| d.path())
    }

    /// The postmaster's exit status, once it has exited.
    fn exit_status(&self) -> Result<Option<ExitStatus>> {
        let mut postmaster = self.postmaster.lock().unwrap_or_else(|p| p.into_inner());
        match postmaster.as_mut() {
            Some(child) => child.try_wait().map_err(|e| {
                Error::internal(format!(
                    "watching the recovery server on {}: {e}",
                    self.data.display()
                ))
            }),
            None => Err(Error::internal(format!(
                "the recovery server on {} was stopped",
                self.data.display()
            ))),
        }
    }

    /// Opens a session, learning the superuser the first time; `None` while
    /// the server does not take sessions yet.
    async fn connect(&self) -> Result<Option<Connection>> {
        if let Some(db) = self.superuser.get() {
            return Ok(pg::connect(db, None).await.ok());
        }
        let mut missing = Vec::new();
        for role in &self.roles {
            for dbname in FIRST_DATABASES {
                let db = self.socket_database(role, dbname);
                match pg::connect(&db, None).await {
                    Ok(conn) => return self.as_superuser(conn, db, dbname).await.map(Some),
                    Err(e) if names_missing(e.message(), "database") => continue,
                    Err(e)
                        if names_missing(e.message(), "role")
                            || e.message().contains("is not permitted to log in") =>
                    {
                        missing.push(role.as_str());
                        break;
                    }
                    // Starting up, not consistent yet: asked again later.
                    Err(e) => {
                        tracing::debug!("recovery of {}: {}", self.data.display(), e.message());
                        return Ok(None);
                    }
                }
            }
        }
        Err(Error::database(format!(
            "cannot open a session on the recovered server on {}: none of the roles {} may log in{}",
            self.data.display(),
            self.roles.join(", "),
            if missing.len() < self.roles.len() {
                " (or neither the postgres nor the template1 database exists)"
            } else {
                ""
            }
        ))
        .with_hint("name a role of the backed-up cluster in the job's database url"))
    }

    /// The session reconnected as the bootstrap superuser, which is
    /// remembered.
    async fn as_superuser(
        &self,
        conn: Connection,
        db: Database,
        dbname: &str,
    ) -> Result<Connection> {
        let name = pg::single_value(&conn, "SELECT rolname::text FROM pg_roles WHERE oid = 10")
            .await?
            .ok_or_else(|| Error::database("the recovered cluster has no role with oid 10"))?;
        let superuser = self.socket_database(&name, dbname);
        if superuser.url == db.url {
            let _ = self.superuser.set(db);
            return Ok(conn);
        }
        match pg::connect(&superuser, None).await {
            Ok(better) => {
                let _ = self.superuser.set(superuser);
                Ok(better)
            }
            Err(e) => {
                tracing::warn!(
                    "the recovered cluster's superuser {name} cannot log in ({}); going on as the role that could",
                    e.message()
                );
                let _ = self.superuser.set(db);
                Ok(conn)
            }
        }
    }

    fn socket_database(&self, role: &str, dbname: &str) -> Database {
        socket_database(&self.install, role, dbname, self.private_dir(), self.port)
    }

    async fn state(&self, conn: &Connection) -> Result<State> {
        // CASE: the pause functions fail on a server out of recovery.
        let sql = if self.install.major >= 14 {
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
             THEN pg_get_wal_replay_pause_state() = 'paused' ELSE false END"
        } else {
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() \
             THEN pg_is_wal_replay_paused() ELSE false END"
        };
        let row = conn
            .client
            .query_one(sql, &[])
            .await
            .map_err(|e| pg::query_error("asking the recovering server how far it is", e))?;
        let (recovering, paused): (bool, bool) = (row.get(0), row.get(1));
        Ok(match (recovering, paused) {
            (false, _) => State::Ended { paused: false },
            (true, true) => State::Ended { paused: true },
            (true, false) => State::Recovering,
        })
    }

    /// What recovery reached, asked of the server and read from its log.
    async fn ended(&self, conn: &Connection, paused: bool) -> Result<RecoveryEnd> {
        let log = self.read_log();
        if paused && !log.paused_at_end {
            // Paused for another reason: settings lower than the primary's.
            return Err(Error::tool(format!(
                "recovery of {} paused before its end: {}",
                self.data.display(),
                log.pause_reasons.join("; ")
            ))
            .with_hint(format!("the server's log is {}", self.log.display())));
        }
        let row = conn
            .client
            .query_one(
                "SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', \
                        'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                        pg_last_wal_replay_lsn()::text, \
                        pg_snapshot_xmax(pg_current_snapshot())::text, \
                        (SELECT timeline_id FROM pg_control_checkpoint())",
                &[],
            )
            .await
            .map_err(|e| pg::query_error("reading where recovery ended", e))?;
        let last_replayed: Option<String> = row.get(0);
        let replay_lsn: Option<String> = row.get(1);
        let next_xid: Option<String> = row.get(2);
        let checkpoint_timeline: Option<i32> = row.get(3);
        let timeline = if paused {
            // Still in recovery: the timeline being replayed.
            log.last_restored
                .as_deref()
                .and_then(segment_timeline)
                .or(checkpoint_timeline.and_then(|t| u32::try_from(t).ok()))
        } else {
            pg::single_value(conn, "SELECT pg_walfile_name(pg_current_wal_lsn())")
                .await?
                .as_deref()
                .and_then(segment_timeline)
                .or(log.new_timeline)
        }
        .unwrap_or(1);
        let next_xid = next_xid.and_then(|x| x.parse::<u64>().ok());
        let stopped_before = log.stop.map(|(what, xid, at)| StopPoint {
            xid: next_xid.map_or(u64::from(xid), |next| full_xid(xid, next)),
            at,
            what,
        });
        let end = replay_lsn
            .and_then(|l| l.parse::<Lsn>().ok())
            .or(log.redo_done);
        Ok(RecoveryEnd {
            stopped_before,
            last_replayed: last_replayed
                .and_then(|t| t.parse().ok())
                .or(log.last_completed),
            timeline,
            paused,
            seconds: self.started.elapsed().as_secs_f64(),
            segments_restored: log.segments_restored,
            replayed_bytes: log
                .redo_start
                .zip(end)
                .map(|(start, end)| end.0.saturating_sub(start.0)),
        })
    }

    fn read_log(&self) -> RecoveryLog {
        let text = std::fs::read(&self.log).unwrap_or_default();
        RecoveryLog::parse(&String::from_utf8_lossy(&text))
    }

    /// The error of a server that exited: what its log says went wrong.
    fn died(&self, status: ExitStatus) -> Error {
        let log = self.read_log();
        let mut said = log.problems.clone();
        if said.is_empty() {
            said = log.tail.clone();
        }
        let restored = match &log.last_restored {
            Some(name) => format!("; the last WAL file restored from the archive: {name}"),
            None => "; no WAL file was restored from the archive".to_owned(),
        };
        let kept = self.data.join(KEPT_LOG);
        let log_at = match self.keep_log(&kept) {
            Ok(()) => kept,
            Err(e) => {
                tracing::warn!("{e}");
                self.log.clone()
            }
        };
        let hint = if said
            .iter()
            .any(|l| l.contains("before configured recovery target"))
        {
            format!(
                "the archive ends, or has a gap, before the target: `backup verify --wal` \
                 shows the archive's gaps; choose an earlier moment or --latest (the server's \
                 log is {})",
                log_at.display()
            )
        } else if said.iter().any(|l| l.contains("could not restore file")) {
            format!(
                "restore_command (`backup wal fetch`) failed: its own error is in the server's log, {}",
                log_at.display()
            )
        } else {
            format!("the server's log is {}", log_at.display())
        };
        Error::tool(format!(
            "recovery of {} failed: the server {}: {}{restored}",
            self.data.display(),
            describe_exit(status),
            said.join("; ")
        ))
        .with_hint(hint)
    }

    /// Appends the recovery's log to `to`, owned by the server's user.
    fn keep_log(&self, to: &Path) -> Result<()> {
        let copy = || -> std::io::Result<()> {
            let text = std::fs::read(&self.log)?;
            let mut out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(to)?;
            out.write_all(&text)?;
            out.sync_all()
        };
        copy().map_err(|e| Error::io(Kind::Internal, format!("writing {}", to.display()), e))?;
        if let Some((uid, gid)) = self.run_as {
            chown(to, uid, gid)?;
        }
        Ok(())
    }

    /// Signals the postmaster (SIGINT: fast shutdown, SIGQUIT: immediate)
    /// and reaps it; a server that outlasts `limit` is stopped harder.
    fn shut_down(&mut self, signal: Signal, limit: Duration) -> Result<()> {
        let mut postmaster = self.postmaster.lock().unwrap_or_else(|p| p.into_inner());
        let Some(child) = postmaster.as_mut() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // From the signal asked for to ever harder ones.
        let mut signals = match signal {
            Signal::SIGINT => vec![signal, Signal::SIGQUIT, Signal::SIGKILL],
            _ => vec![signal, Signal::SIGKILL],
        }
        .into_iter();
        let mut limit = limit;
        let status = loop {
            // Not reaped yet, so the pid is still the postmaster's.
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            let Some(next) = signals.next() else {
                break child.wait().map_err(|e| {
                    Error::internal(format!(
                        "waiting for the recovery server on {}: {e}",
                        self.data.display()
                    ))
                })?;
            };
            let _ = nix::sys::signal::kill(pid, next);
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            limit = IMMEDIATE_SHUTDOWN;
        };
        tracing::debug!(
            "the recovery server on {} {}",
            self.data.display(),
            describe_exit(status)
        );
        *postmaster = None;
        Ok(())
    }

    fn remove_dir(&mut self) -> Result<()> {
        match self.dir.take() {
            Some(dir) => {
                let path = dir.path().to_owned();
                dir.close().map_err(|e| {
                    Error::io(Kind::Internal, format!("removing {}", path.display()), e)
                })
            }
            None => Ok(()),
        }
    }
}

impl Drop for RecoveryServer {
    fn drop(&mut self) {
        // A failed or interrupted restore: no waiting for a checkpoint.
        if let Err(e) = self.shut_down(Signal::SIGQUIT, IMMEDIATE_SHUTDOWN) {
            tracing::warn!("{e}");
        }
    }
}

enum State {
    Recovering,
    Ended { paused: bool },
}

/// Whether the directory's recovery settings pause at the target: the last
/// `recovery_target_action` of its `postgresql.auto.conf` (the one we wrote).
fn pauses(data: &Path) -> bool {
    let text = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (key, value) = l.split_once('=')?;
            (key.trim() == "recovery_target_action")
                .then(|| value.trim().trim_matches('\'').to_owned())
        })
        .next_back()
        .is_some_and(|v| v == "pause")
}

/// The postmaster's arguments: the directory's configuration, overridden
/// where the recovery needs it (see the module's documentation).
fn server_args(
    data: &Path,
    port: u16,
    socket_dir: &Path,
    hba: &Path,
    pause: bool,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "-D".into(),
        data.into(),
        "-p".into(),
        port.to_string().into(),
    ];
    // A list of directories: quoted, so a comma or a space in the path stays.
    let sockets = format!(
        "unix_socket_directories=\"{}\"",
        socket_dir.display().to_string().replace('"', "\"\"")
    );
    let settings = [
        "listen_addresses=".to_owned(),
        sockets,
        format!("hba_file={}", hba.display()),
        "ssl=off".to_owned(),
        // On only to watch a recovery that pauses at its target. Off, the
        // server refuses sessions until it is promoted (the wait retries),
        // and starts even where max_connections and its kind are below the
        // primary's, as in a backup whose postgresql.conf stayed in /etc:
        // a hot standby refuses to start then.
        format!("hot_standby={}", if pause { "on" } else { "off" }),
        "lc_messages=C".to_owned(),
        "log_timezone=UTC".to_owned(),
        "logging_collector=off".to_owned(),
        "log_destination=stderr".to_owned(),
        "log_min_messages=warning".to_owned(),
        // %b: which process said it, so a session's FATAL is told apart.
        "log_line_prefix=%m [%p] %b ".to_owned(),
    ];
    for setting in settings {
        args.push("-c".into());
        args.push(setting.into());
    }
    args
}

/// The roles tried for the first session, in order, each once.
fn role_candidates(hint: Option<&str>, owner: Option<String>, me: Option<String>) -> Vec<String> {
    let mut roles: Vec<String> = Vec::new();
    let candidates = [
        hint.map(str::to_owned),
        Some("postgres".to_owned()),
        owner,
        me,
    ];
    for role in candidates.into_iter().flatten() {
        if !role.is_empty() && !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles
}

/// A session as `role` on `dbname` over the socket in `dir`.
fn socket_database(
    install: &ServerInstall,
    role: &str,
    dbname: &str,
    dir: &Path,
    port: u16,
) -> Database {
    Database {
        name: "recovered cluster".to_owned(),
        url: socket_url(role, dbname, dir, port),
        password: None,
        password_from: None,
        pg_bin_dir: None,
        pg_bin_dirs: install.client_dirs(),
        secret_env: Arc::clone(&install.secret_env),
    }
}

/// `postgresql://ROLE@/DB?host=DIR&port=PORT`: libpq and tokio-postgres
/// both take a host starting with `/` as a socket directory. No TLS on a
/// socket.
fn socket_url(role: &str, dbname: &str, dir: &Path, port: u16) -> String {
    format!(
        "postgresql://{}@/{}?host={}&port={port}&sslmode=disable",
        encode(role),
        encode(dbname),
        encode(&dir.display().to_string())
    )
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether a connection error says the `what` (role, database) it named
/// does not exist.
fn names_missing(message: &str, what: &str) -> bool {
    message.contains(&format!("{what} \"")) && message.contains("\" does not exist")
}

/// `pg_ctl -D DATA -m fast stop`, as the server's user when we are root.
fn stop_command(pg_ctl: &Path, data: &Path, as_server_user: bool) -> String {
    let command = format!(
        "{} -D {} -m fast stop",
        shell_quote(&pg_ctl.display().to_string()),
        shell_quote(&data.display().to_string())
    );
    if as_server_user {
        format!("runuser -u postgres -- {command}")
    } else {
        command
    }
}

fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// A new file only its owner reads, open for writing.
fn open_private(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(Kind::Internal, format!("creating {}", path.display()), e))
}

fn write_private(path: &Path, content: &[u8]) -> Result<()> {
    open_private(path)?
        .write_all(content)
        .map_err(|e| Error::io(Kind::Internal, format!("writing {}", path.display()), e))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(Kind::Internal, format!("chown {}", path.display()), e))
}

/// The port in a running server's `postmaster.pid` (its fourth line).
fn postmaster_port(data: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    text.lines().nth(3)?.trim().parse().ok()
}

fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "exited".to_owned(),
    }
}

/// The timeline in a 24-digit segment name.
fn segment_timeline(name: &str) -> Option<u32> {
    let name = name.trim();
    if name.len() < 24 {
        return None;
    }
    u32::from_str_radix(&name[..8], 16).ok()
}

/// The full transaction id whose low 32 bits are `xid`, nearest to `next`
/// (the next full id the server will assign): transaction ids compare
/// within 2^31 of each other, so an `xid` above the low part of `next` by
/// more than that is of the previous epoch, and one just above it is not
/// assigned yet.
fn full_xid(xid: u32, next: u64) -> u64 {
    let low = next as u32;
    let behind = low.wrapping_sub(xid);
    if behind < 1 << 31 {
        next.checked_sub(u64::from(behind))
            .unwrap_or(u64::from(xid))
    } else {
        next + u64::from(xid.wrapping_sub(low))
    }
}

/// What the recovery's log says, for the server's English messages with
/// times in UTC (as the command line sets them).
#[derive(Debug, Default, PartialEq)]
struct RecoveryLog {
    /// "recovery stopping before commit of transaction N, time T".
    stop: Option<(String, u32, Timestamp)>,
    /// "last completed transaction was at log time T".
    last_completed: Option<Timestamp>,
    segments_restored: u64,
    last_restored: Option<String>,
    redo_start: Option<Lsn>,
    redo_done: Option<Lsn>,
    new_timeline: Option<u32>,
    /// "pausing at the end of recovery": paused at the target.
    paused_at_end: bool,
    /// Why recovery paused otherwise: warnings and their details.
    pause_reasons: Vec<String>,
    /// FATAL and PANIC lines, and the errors `backup wal fetch` printed.
    problems: Vec<String>,
    /// The last lines, for a server that died without saying why.
    tail: Vec<String>,
}

/// What the server says, at LOG level, of a setting it cannot take.
const CONFIGURATION_ERRORS: [&str; 4] = [
    "invalid value for parameter",
    "unrecognized configuration parameter",
    "syntax error in file",
    "cannot be changed without restarting",
];

/// How many problems an error quotes: the last ones.
const PROBLEMS_QUOTED: usize = 5;

impl RecoveryLog {
    fn parse(text: &str) -> RecoveryLog {
        let mut log = RecoveryLog::default();
        let mut previous_warned = false;
        for line in text.lines() {
            let warned = previous_warned;
            previous_warned = false;
            if let Some(rest) = after(line, "recovery stopping before ") {
                log.stop = parse_stop(rest).or(log.stop.take());
            } else if let Some(rest) = after(line, "last completed transaction was at log time ") {
                log.last_completed = pg_time(rest).or(log.last_completed);
            } else if let Some(rest) = after(line, "restored log file \"") {
                if let Some((name, _)) = rest.split_once('"')
                    && matches!(WalFile::parse(name), Some(WalFile::Segment(_)))
                {
                    log.segments_restored += 1;
                    log.last_restored = Some(name.to_owned());
                }
            } else if let Some(rest) = after(line, "redo starts at ") {
                log.redo_start = first_word(rest).parse().ok();
            } else if let Some(rest) = after(line, "redo done at ") {
                log.redo_done = first_word(rest).parse().ok();
            } else if let Some(rest) = after(line, "selected new timeline ID: ") {
                log.new_timeline = first_word(rest).parse().ok();
            } else if line.contains("pausing at the end of recovery") {
                log.paused_at_end = true;
            } else if let Some(at) = ["WARNING:  ", "recovery has paused"]
                .iter()
                .find_map(|m| line.find(m))
            {
                log.pause_reasons.push(tidy(&line[at..]));
                previous_warned = true;
            } else if warned && let Some(at) = line.find("DETAIL:  ") {
                log.pause_reasons.push(tidy(&line[at..]));
                previous_warned = true;
            }
            if let Some(at) = ["FATAL:  ", "PANIC:  "].iter().find_map(|m| line.find(m)) {
                // A session's end (ours, refused while the server starts)
                // is not the server's.
                if !line[..at].ends_with("client backend ") {
                    log.problems.push(tidy(&line[at..]));
                }
            } else if CONFIGURATION_ERRORS.iter().any(|m| line.contains(m))
                && let Some(at) = line.find("LOG:  ")
            {
                // Said at LOG level before "configuration file … contains errors".
                log.problems.push(tidy(&line[at..]));
            } else if line.starts_with("error: ") {
                log.problems.push(line.trim().to_owned());
            }
        }
        let keep_last = |list: &mut Vec<String>| {
            let cut = list.len().saturating_sub(PROBLEMS_QUOTED);
            list.drain(..cut);
        };
        keep_last(&mut log.problems);
        keep_last(&mut log.pause_reasons);
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        log.tail = lines[lines.len().saturating_sub(3)..]
            .iter()
            .map(|l| l.trim().to_owned())
            .collect();
        log
    }
}

/// The text after `marker` in `line`.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}

/// `FATAL:  message` as `FATAL: message`.
fn tidy(text: &str) -> String {
    text.trim().replacen(":  ", ": ", 1)
}

/// `commit of transaction 1234, time 2024-01-20 05:30:00.123456+00`.
fn parse_stop(text: &str) -> Option<(String, u32, Timestamp)> {
    let (what, rest) = text.split_once(" of transaction ")?;
    let (xid, time) = rest.split_once(", time ")?;
    Some((
        what.trim().to_owned(),
        xid.trim().parse().ok()?,
        pg_time(time)?,
    ))
}

/// A `timestamptz` as the server prints it: `2024-01-20 05:30:00.123456+00`.
fn pg_time(text: &str) -> Option<Timestamp> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2024-01-20 05:29:58.001 UTC [100] LOG:  starting PostgreSQL 15.8 on x86_64-pc-linux-gnu
2024-01-20 05:29:58.010 UTC [102] LOG:  starting point-in-time recovery to 2024-01-20 05:30:00+00
2024-01-20 05:29:58.020 UTC [102] LOG:  restored log file \"00000002.history\" from archive
2024-01-20 05:29:58.050 UTC [102] LOG:  restored log file \"000000010000000000000003\" from archive
2024-01-20 05:29:58.060 UTC [102] LOG:  redo starts at 0/3000028
2024-01-20 05:29:58.070 UTC [102] LOG:  consistent recovery state reached at 0/3000100
2024-01-20 05:29:58.080 UTC [100] LOG:  database system is ready to accept read-only connections
2024-01-20 05:29:58.120 UTC [102] LOG:  restored log file \"000000010000000000000004\" from archive
2024-01-20 05:29:58.130 UTC [102] LOG:  recovery stopping before commit of transaction 741, time 2024-01-20 05:30:01.234567+00
2024-01-20 05:29:58.131 UTC [102] LOG:  redo done at 0/4000A10 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.07 s
2024-01-20 05:29:58.132 UTC [102] LOG:  last completed transaction was at log time 2024-01-20 05:29:59.5+00
2024-01-20 05:29:58.140 UTC [102] LOG:  selected new timeline ID: 2
2024-01-20 05:29:58.150 UTC [102] LOG:  archive recovery complete
2024-01-20 05:29:58.200 UTC [100] LOG:  database system is ready to accept connections
";

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn the_log_says_where_recovery_stopped_and_what_it_replayed() {
        let log = RecoveryLog::parse(LOG);
        assert_eq!(
            log.stop,
            Some(("commit".to_owned(), 741, ts("2024-01-20T05:30:01.234567Z")))
        );
        assert_eq!(log.last_completed, Some(ts("2024-01-20T05:29:59.5Z")));
        // The history file is not a segment.
        assert_eq!(log.segments_restored, 2);
        assert_eq!(
            log.last_restored.as_deref(),
            Some("000000010000000000000004")
        );
        assert_eq!(log.redo_start, Some(Lsn(0x300_0028)));
        assert_eq!(log.redo_done, Some(Lsn(0x400_0A10)));
        assert_eq!(
            log.redo_start.zip(log.redo_done).map(|(s, e)| e.0 - s.0),
            Some(0x100_09E8)
        );
        assert_eq!(log.new_timeline, Some(2));
        assert!(!log.paused_at_end);
        assert!(log.problems.is_empty(), "{:?}", log.problems);
    }

    #[test]
    fn times_in_the_log_read_with_any_offset_and_precision() {
        assert_eq!(
            pg_time("2024-01-20 05:30:01+00"),
            Some(ts("2024-01-20T05:30:01Z"))
        );
        assert_eq!(
            pg_time("2024-01-20 14:30:01.5+09"),
            Some(ts("2024-01-20T05:30:01.5Z"))
        );
        assert_eq!(
            pg_time("2024-01-20 11:00:01.000001+05:30"),
            Some(ts("2024-01-20T05:30:01.000001Z"))
        );
        assert_eq!(pg_time("yesterday"), None);
        assert_eq!(
            parse_stop("abort of transaction 4294967295, time 2024-01-20 05:30:01+00"),
            Some(("abort".to_owned(), u32::MAX, ts("2024-01-20T05:30:01Z")))
        );
    }

    #[test]
    fn a_dead_server_is_explained_by_its_fatal_lines_and_restore_command_errors() {
        let text = "\
2024-01-20 05:29:58.050 UTC [102] LOG:  restored log file \"000000010000000000000003\" from archive
error: job base: storage disk: reading base/wal/0000000100000000/000000010000000000000004-ab.zst: permission denied
hint: check the storage's permissions
2024-01-20 05:29:58.055 UTC [110] client backend FATAL:  the database system is not yet accepting connections
2024-01-20 05:29:58.060 UTC [102] startup FATAL:  could not restore file \"000000010000000000000004\" from archive: child process exited with exit code 126
2024-01-20 05:29:58.070 UTC [100] LOG:  startup process (PID 102) exited with exit code 1
2024-01-20 05:29:58.071 UTC [100] LOG:  aborting startup due to startup process failure
2024-01-20 05:29:58.080 UTC [100] LOG:  database system is shut down
";
        let log = RecoveryLog::parse(text);
        assert_eq!(
            log.problems,
            vec![
                "error: job base: storage disk: reading base/wal/0000000100000000/000000010000000000000004-ab.zst: permission denied",
                "FATAL: could not restore file \"000000010000000000000004\" from archive: child process exited with exit code 126",
            ]
        );
        assert_eq!(
            log.last_restored.as_deref(),
            Some("000000010000000000000003")
        );
        assert_eq!(log.tail.len(), 3);
        let settings = RecoveryLog::parse(
            "2024-01-20 04:53:59.872 UTC [27762] LOG:  invalid value for parameter \"recovery_target_time\": \"2024-01-20T05:30:00Z\"\n\
             2024-01-20 04:53:59.872 UTC [27762] FATAL:  configuration file \"/d/postgresql.auto.conf\" contains errors\n",
        );
        assert_eq!(
            settings.problems,
            vec![
                "LOG: invalid value for parameter \"recovery_target_time\": \"2024-01-20T05:30:00Z\"",
                "FATAL: configuration file \"/d/postgresql.auto.conf\" contains errors",
            ]
        );
        let ended = RecoveryLog::parse(
            "2024-01-20 05:29:58 UTC [9] FATAL:  recovery ended before configured recovery target was reached\n",
        );
        assert_eq!(
            ended.problems,
            vec!["FATAL: recovery ended before configured recovery target was reached"]
        );
    }

    #[test]
    fn a_pause_short_of_the_target_is_told_from_one_at_it() {
        let early = RecoveryLog::parse(
            "\
x WARNING:  hot standby is not possible because of insufficient parameter settings
x DETAIL:  max_connections = 10 is a lower setting than on the primary server, where its value was 100.
x LOG:  recovery has paused
x DETAIL:  If recovery is unpaused, the server will shut down.
x LOG:  checkpoint starting: time
",
        );
        assert!(!early.paused_at_end);
        assert_eq!(early.pause_reasons.len(), 4, "{:?}", early.pause_reasons);
        assert!(early.pause_reasons[1].starts_with("DETAIL: max_connections = 10"));
        let at_target = RecoveryLog::parse(
            "x LOG:  recovery stopping before commit of transaction 9, time 2024-01-20 05:30:01+00\n\
             x LOG:  pausing at the end of recovery\n\
             x HINT:  Execute pg_wal_replay_resume() to promote.\n",
        );
        assert!(at_target.paused_at_end);
        assert!(at_target.stop.is_some());
    }

    #[test]
    fn an_xid_gets_the_epoch_of_the_nearest_full_id() {
        let next = (5u64 << 32) | 100;
        assert_eq!(full_xid(90, next), (5 << 32) | 90);
        assert_eq!(full_xid(100, next), next);
        // Above the low part: the previous epoch, before the wraparound.
        assert_eq!(full_xid(0xFFFF_FF00, next), (4 << 32) | 0xFFFF_FF00);
        // Just above: not assigned yet (a transaction whose only record was
        // the commit recovery stopped before).
        assert_eq!(full_xid(150, next), (5 << 32) | 150);
        // Epoch 0 stays epoch 0.
        assert_eq!(full_xid(741, 800), 741);
        assert_eq!(full_xid(801, 800), 801);
    }

    #[test]
    fn the_session_url_names_the_socket_directory_and_parses_as_one() {
        let url = socket_url(
            "app owner",
            "postgres",
            Path::new("/tmp/backup-recover-x y"),
            54321,
        );
        assert_eq!(
            url,
            "postgresql://app%20owner@/postgres?host=%2Ftmp%2Fbackup-recover-x%20y&port=54321&sslmode=disable"
        );
        let (config, _) = pg::url::parse(&url).unwrap();
        assert_eq!(
            config.get_hosts(),
            &[tokio_postgres::config::Host::Unix(PathBuf::from(
                "/tmp/backup-recover-x y"
            ))]
        );
        assert_eq!(config.get_ports(), &[54321]);
        assert_eq!(config.get_user(), Some("app owner"));
        assert_eq!(config.get_dbname(), Some("postgres"));
    }

    #[test]
    fn roles_are_tried_hint_first_each_once() {
        assert_eq!(
            role_candidates(Some("app"), Some("postgres".into()), Some("alice".into())),
            vec!["app", "postgres", "alice"]
        );
        assert_eq!(
            role_candidates(None, Some("pg".into()), None),
            vec!["postgres", "pg"]
        );
        assert!(names_missing(
            "database recovered cluster (postgres): cannot connect: role \"app\" does not exist",
            "role"
        ));
        assert!(!names_missing(
            "database recovered cluster (postgres): cannot connect: role \"app\" does not exist",
            "database"
        ));
    }

    #[test]
    fn only_a_recovery_that_pauses_is_a_hot_standby() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!pauses(dir.path()));
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "recovery_target_action = 'pause'\n# ours, later\nrecovery_target_action = 'promote'\n",
        )
        .unwrap();
        assert!(!pauses(dir.path()));
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "recovery_target_action='promote'\nrecovery_target_action = 'pause'\n",
        )
        .unwrap();
        assert!(pauses(dir.path()));
        let args = server_args(dir.path(), 1, dir.path(), dir.path(), false);
        assert!(args.iter().any(|a| a == "hot_standby=off"));
    }

    #[test]
    fn the_server_is_told_what_makes_its_log_readable_and_its_socket_private() {
        let args = server_args(
            Path::new("/srv/data"),
            5999,
            Path::new("/tmp/r"),
            Path::new("/tmp/r/pg_hba.conf"),
            true,
        );
        let args: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[..4], ["-D", "/srv/data", "-p", "5999"]);
        for setting in [
            "listen_addresses=",
            "unix_socket_directories=\"/tmp/r\"",
            "hba_file=/tmp/r/pg_hba.conf",
            "lc_messages=C",
            "log_timezone=UTC",
            "logging_collector=off",
            "hot_standby=on",
        ] {
            let at = args.iter().position(|a| a == setting);
            assert!(
                at.is_some_and(|i| args[i - 1] == "-c"),
                "{setting} in {args:?}"
            );
        }
    }

    #[test]
    fn a_recovery_server_can_be_waited_on_from_any_task() {
        fn shared<T: Send + Sync>() {}
        shared::<RecoveryServer>();
        shared::<RecoveryEnd>();
    }

    #[test]
    fn the_stop_command_is_quoted_for_a_shell() {
        assert_eq!(
            stop_command(
                Path::new("/usr/lib/postgresql/15/bin/pg_ctl"),
                Path::new("/srv/it's here"),
                true
            ),
            "runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D '/srv/it'\\''s here' -m fast stop"
        );
        assert_eq!(segment_timeline("00000002000000000000000A"), Some(2));
    }
}
