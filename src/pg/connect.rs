//! Opening sessions with PostgreSQL and asking them about the server: the
//! url and its TLS settings turned into a connection (libpq's fallbacks
//! included), failures turned into errors that say what to do, and the few
//! facts every job reads first (server version, system identifier, database).

use std::time::Duration;

use tokio_postgres::Client;

use super::{tls, url};
use crate::error::{Error, Result};
use crate::model::Database;

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
            CANCELS.spawn_on(
                async move {
                    if let Err(e) = token.cancel_query(tls).await {
                        tracing::debug!("cancelling a query: {e}");
                    }
                },
                &handle,
            );
        }
    }
}

/// Cancel requests on their way. A query waiting on the server (a REINDEX
/// CONCURRENTLY waiting for old snapshots) does not notice its client has
/// gone, so a command that exits must first see its cancels sent.
static CANCELS: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// Waits up to `limit` for the cancel requests sent so far; false when some
/// were still going.
pub async fn finish_cancels(limit: std::time::Duration) -> bool {
    CANCELS.close();
    let done = tokio::time::timeout(limit, CANCELS.wait()).await.is_ok();
    CANCELS.reopen();
    done
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
    // A password the server asks for and the job file does not give will not
    // appear by waiting.
    let temporary = match e.as_db_error() {
        Some(d) => server_went_away(d.code().code()),
        None => tls::tls_failure(&e).is_none() && !message.contains("password missing"),
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
            let mut err = Error::database(message);
            if server_went_away(d.code().code()) {
                err = err.temporary();
            }
            match d.hint() {
                Some(hint) => err.with_hint(hint),
                None => err,
            }
        }
        None => Error::database(format!("{what}: {}", source_chain(&e))).temporary(),
    }
}

/// SQLSTATEs that say the server, not the work, failed: it shut down,
/// crashed, is starting, dropped the session (class 08), ran out of
/// connections, or gave up the transaction for a conflict or a deadlock
/// that a second try does not meet.
fn server_went_away(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
        )
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
