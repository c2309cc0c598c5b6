//! Talking to PostgreSQL: connections, versions, snapshots, row counts, and the
//! client programs (`pg_dump`, `pg_dumpall`, `pg_restore`) run as children.

pub mod cluster;
pub mod command;
pub mod database;
pub mod stats;
pub mod tls;
pub mod url;

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use tokio_postgres::Client;

use crate::error::{Error, Kind, Result};
use crate::model::Database;

pub use database::{
    DatabaseProperties, create_database, database_comment, database_exists, databases_with_comment,
    describe_contents, drop_database, other_sessions,
};

/// A table and its exact row count in the backup's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableRows {
    pub schema: String,
    pub name: String,
    pub rows: i64,
}

/// An extension installed in a database, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extension {
    pub name: String,
    pub version: String,
}

/// The server a job's database lives on.
#[derive(Debug, Clone)]
pub struct ServerVersion {
    pub major: u32,
    /// As the server reports it: `15.18 (Debian 15.18-0+deb12u1)`.
    pub text: String,
}

/// An open connection. Dropping it closes the connection: the driver task
/// sends Terminate and ends once the client is gone.
pub struct Connection {
    pub client: Client,
    pub dbname: String,
    /// How a cancel request reaches the server: the same way the session did.
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

/// Cancels the query running on a connection if dropped before `disarm`: a run
/// cancelled while counting rows must not leave the count running on the server.
pub struct CancelOnDrop {
    token: Option<tokio_postgres::CancelToken>,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl CancelOnDrop {
    pub fn new(conn: &Connection) -> Self {
        CancelOnDrop {
            token: Some(conn.client.cancel_token()),
            tls: conn.tls.clone(),
        }
    }

    pub fn disarm(mut self) {
        self.token = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.token.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let tls = self.tls.clone();
            handle.spawn(async move {
                if let Err(e) = token.cancel_query(tls).await {
                    tracing::debug!("cancelling a query: {e}");
                }
            });
        }
    }
}

/// Connects to `dbname` (or the database the url names) of a declared database.
pub async fn connect(db: &Database, dbname: Option<&str>) -> Result<Connection> {
    open(db, dbname, None).await
}

/// Warnings and notices the server sent on a connection, in order.
pub type Notices = tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::error::DbError>;

/// [`connect`], keeping the server's notices: `VACUUM (SKIP_LOCKED)` says
/// only by a warning that it skipped a table.
pub async fn connect_with_notices(db: &Database) -> Result<(Connection, Notices)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    Ok((open(db, None, Some(tx)).await?, rx))
}

async fn open(
    db: &Database,
    dbname: Option<&str>,
    notices: Option<tokio::sync::mpsc::UnboundedSender<tokio_postgres::error::DbError>>,
) -> Result<Connection> {
    let (mut config, tls) = url::parse(&db.url)
        .map_err(|e| Error::config(format!("database {}: invalid url: {e}", db.name)))?;
    url::apply_libpq_defaults(&mut config);
    let mode = tls.driver_mode(&config)?;
    config.ssl_mode(mode);
    let connector = tls
        .connector(&config)
        .map_err(|e| e.context(format!("database {}", db.name)))?;
    if let Some(dbname) = dbname {
        config.dbname(dbname);
    }
    if let Some(password) = &db.password {
        config.password(password.resolve()?.expose());
    } else if let Ok(password) = std::env::var("PGPASSWORD") {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("backup");
    let target = config.get_dbname().unwrap_or("").to_owned();
    let connected = match config.connect(connector.clone()).await {
        // libpq's prefer and allow: a handshake that fails is tried again
        // without TLS (a certificate rustls refuses, an old root.crt).
        Err(e)
            if mode == tokio_postgres::config::SslMode::Prefer
                && tls::tls_failure(&e).is_some() =>
        {
            tracing::debug!("database {}: TLS failed ({e}); connecting without", db.name);
            config.ssl_mode(tokio_postgres::config::SslMode::Disable);
            config.connect(connector.clone()).await
        }
        other => other,
    };
    let (client, mut connection) = connected.map_err(|e| connect_error(db, &target, &tls, e))?;
    tokio::spawn(async move {
        // The driver hands notices out as it reads them, before the reply of
        // the statement that raised them: once a statement has returned, its
        // notices are in the channel.
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notice(notice))) => {
                    if let Some(tx) = &notices {
                        let _ = tx.send(notice);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break tracing::debug!("connection closed: {e}"),
                None => break,
            }
        }
    });
    Ok(Connection {
        client,
        dbname: target,
        tls: connector,
    })
}

fn connect_error(
    db: &Database,
    dbname: &str,
    tls: &url::TlsSettings,
    e: tokio_postgres::Error,
) -> Error {
    let (message, hint) = match e.as_db_error() {
        // pg_hba.conf has no line for this session: no password helps.
        Some(d) if d.code().code() == "28000" && d.message().contains("pg_hba.conf") => (
            d.message().to_owned(),
            if d.message().contains("no encryption") {
                "the server accepts this session only over TLS: set sslmode=require (or \
                 verify-full with sslrootcert) in the url"
                    .to_owned()
            } else {
                "the server's pg_hba.conf has no line for this host, user and database (and \
                 encryption); ask its administrator to add one"
                    .to_owned()
            },
        ),
        Some(d) if d.code().code() == "28P01" || d.code().code() == "28000" => (
            d.message().to_owned(),
            if db.password_from.is_some() {
                format!(
                    "check the password in {} and the role in [databases.{}] url",
                    db.password_from.as_deref().unwrap_or(""),
                    db.name
                )
            } else {
                format!(
                    "set password_env or password_file in [databases.{}]",
                    db.name
                )
            },
        ),
        Some(d) if d.code().code() == "3D000" => (
            d.message().to_owned(),
            "check the database name in the url".to_owned(),
        ),
        Some(d) => (
            d.message().to_owned(),
            "see the server log for details".to_owned(),
        ),
        None => match tls::tls_failure(&e) {
            Some(why) => (format!("TLS: {why}"), tls.failure_hint(&why)),
            None => (
                source_chain(&e),
                "is the server running and reachable at the url's host and port?".to_owned(),
            ),
        },
    };
    // A server that cannot be reached, or is starting up or shutting down,
    // may answer a retry; a refused login or a missing database will not.
    let temporary = match e.as_db_error() {
        Some(d) => matches!(d.code().code(), "57P01" | "57P02" | "57P03" | "53300"),
        None => tls::tls_failure(&e).is_none(),
    };
    let err = Error::database(format!(
        "database {} ({dbname}): cannot connect: {message}",
        db.name
    ))
    .with_hint(hint);
    if temporary { err.temporary() } else { err }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A query error with the database named.
pub fn query_error(what: &str, e: tokio_postgres::Error) -> Error {
    match e.as_db_error() {
        // The server's DETAIL says which key, which file; its HINT what to do.
        Some(d) => {
            let mut message = format!("{what}: {}", d.message());
            if let Some(detail) = d.detail() {
                message.push_str(&format!(" ({detail})"));
            }
            let err = Error::database(message);
            match d.hint() {
                Some(hint) => err.with_hint(hint),
                None => err,
            }
        }
        None => Error::database(format!("{what}: {}", source_chain(&e))).temporary(),
    }
}

pub async fn server_version(conn: &Connection) -> Result<ServerVersion> {
    let row = conn
        .client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
        .map_err(|e| query_error("reading the server version", e))?;
    let num: i32 = row.get(0);
    Ok(ServerVersion {
        major: (num / 10000) as u32,
        text: row.get(1),
    })
}

/// The server's `system_identifier` (set by initdb, kept by its standbys),
/// as text; `None` where the role may not read it.
pub async fn system_identifier(conn: &Connection) -> Option<String> {
    match conn
        .client
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await
    {
        Ok(row) => row.get(0),
        Err(e) => {
            tracing::debug!("system_identifier not read: {e}");
            None
        }
    }
}

/// The name of the database a connection is on, as the server says.
pub async fn current_database(conn: &Connection) -> Result<String> {
    let row = conn
        .client
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| query_error("reading the current database", e))?;
    Ok(row.get(0))
}

/// An exported snapshot held open by a `REPEATABLE READ` transaction.
pub struct Snapshot {
    pub id: String,
    /// Read just after the snapshot was taken, in the statement that took it:
    /// every commit the snapshot holds happened before this moment.
    pub at: Timestamp,
}

/// Opens the transaction whose snapshot `pg_dump` will share. The transaction
/// must stay open until `pg_dump` has imported it; [`end_snapshot`] closes it.
pub async fn export_snapshot(conn: &Connection) -> Result<Snapshot> {
    conn.client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| query_error("starting the snapshot transaction", e))?;
    let row = conn
        .client
        .query_one(
            // clock_timestamp(), not now(): now() is the transaction's start, a
            // round trip before this statement took the snapshot, so a commit
            // in between would be in a backup dated before it.
            "SELECT pg_export_snapshot(), \
             to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map_err(|e| query_error("exporting a snapshot", e))?;
    let at: String = row.get(1);
    let at = at
        .parse()
        .map_err(|e| Error::internal(format!("server sent an unreadable time '{at}': {e}")))?;
    Ok(Snapshot { id: row.get(0), at })
}

pub async fn end_snapshot(conn: &Connection) -> Result<()> {
    conn.client
        .batch_execute("COMMIT")
        .await
        .map_err(|e| query_error("ending the snapshot", e))
}

/// The user tables `pg_dump` dumps the data of: ordinary and partitioned tables
/// outside the system schemas, not owned by an extension.
const USER_TABLES: &str = "\
SELECT n.nspname, c.relname, c.relkind = 'p' \
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
WHERE c.relkind IN ('r', 'p') \
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                  AND d.objid = c.oid AND d.deptype = 'e') \
ORDER BY 1, 2";

/// How [`row_counts`] counts, as a manifest's `row_counts` says: each table's
/// own rows.
pub const ROWS_ONLY: &str = "only";

/// Exact row counts of every user table, in the connection's current snapshot.
/// A partitioned parent is skipped: its partitions are counted themselves.
pub async fn row_counts(conn: &Connection) -> Result<Vec<TableRows>> {
    let tables = conn
        .client
        .query(USER_TABLES, &[])
        .await
        .map_err(|e| query_error(&format!("listing the tables of {}", conn.dbname), e))?;
    let mut out = Vec::with_capacity(tables.len());
    for row in tables {
        let (schema, name, partitioned): (String, String, bool) =
            (row.get(0), row.get(1), row.get(2));
        if partitioned {
            continue;
        }
        let rows = count_rows(conn, &schema, &name, true).await?;
        out.push(TableRows { schema, name, rows });
    }
    Ok(out)
}

/// The tables [`row_counts`] counts: user tables that are not partitioned parents.
pub async fn user_tables(conn: &Connection) -> Result<Vec<(String, String)>> {
    let rows = conn
        .client
        .query(USER_TABLES, &[])
        .await
        .map_err(|e| query_error(&format!("listing the tables of {}", conn.dbname), e))?;
    Ok(rows
        .iter()
        .filter(|r| !r.get::<_, bool>(2))
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Every extension installed in the connection's database, `plpgsql` included.
pub async fn extensions(conn: &Connection) -> Result<Vec<Extension>> {
    let rows = conn
        .client
        .query(
            "SELECT extname::text, extversion FROM pg_extension ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error(&format!("listing the extensions of {}", conn.dbname), e))?;
    Ok(rows
        .iter()
        .map(|r| Extension {
            name: r.get(0),
            version: r.get(1),
        })
        .collect())
}

/// The first column of the first row `sql` returns, as text; `None` for no
/// row or NULL. The simple protocol takes any statement and gives text.
pub async fn single_value(conn: &Connection, sql: &str) -> Result<Option<String>> {
    let messages = conn
        .client
        .simple_query(sql)
        .await
        .map_err(|e| query_error(&format!("running `{sql}`"), e))?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten())
}

/// The rows of a table, `only` its own (an inheritance parent's, as pg_dump
/// dumps them, its children counted as tables of their own), or with its
/// children's as manifests written before [`ROWS_ONLY`] counted them.
pub async fn count_rows(conn: &Connection, schema: &str, name: &str, only: bool) -> Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM {}{}.{}",
        if only { "ONLY " } else { "" },
        quote_ident(schema),
        quote_ident(name)
    );
    let row = conn.client.query_one(&sql, &[]).await.map_err(|e| {
        query_error(
            &format!("counting rows of {schema}.{name} in {}", conn.dbname),
            e,
        )
    })?;
    Ok(row.get(0))
}

/// A string literal that means `value` whatever `standard_conforming_strings`
/// says: with a backslash in it, an `E''` literal with the backslashes doubled,
/// as libpq's `PQescapeLiteral` writes it.
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

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

/// A running client program, with the tail of its stderr kept for messages.
/// What libpq says when the server went away or is not taking sessions yet.
const LOST_SERVER: &[&str] = &[
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "could not receive data from server",
    "the database system is starting up",
    "the database system is shutting down",
    "Connection refused",
    "SSL SYSCALL error: EOF detected",
];

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
