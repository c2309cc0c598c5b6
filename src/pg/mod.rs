//! Talking to PostgreSQL: connections, versions, snapshots, row counts, and the
//! client programs (`pg_dump`, `pg_dumpall`, `pg_restore`) run as children.
//!
//! The rooms:
//! - [`connect`](mod@connect): opening sessions (url, TLS, password), the
//!   errors they end in, and what a session says of its server;
//! - [`snapshot`]: the exported snapshot a dump reads, and what the backup
//!   records of it (row counts, extensions);
//! - [`database`]: databases as whole things: empty or not, created, swapped,
//!   dropped, and their own properties (owner, locale, settings, grants);
//! - [`stats`]: the statistics maintenance and `backup db report` go by;
//! - [`client`]: running the client programs; [`command`]: their arguments;
//! - [`url`] and [`tls`]: connection strings and TLS, as libpq reads them;
//! - [`cluster`]: a throwaway server for drills;
//! - [`physical`]: what a base backup needs of the cluster, and what
//!   `pg_basebackup` says of the one it took.
//!
//! What callers use most is re-exported here, as `crate::pg::connect`,
//! `crate::pg::spawn` and the like.

pub mod basebackup;
pub mod client;
pub mod cluster;
pub mod command;
pub mod connect;
pub mod database;
pub mod physical;
pub mod snapshot;
pub mod stats;
pub mod tls;
pub mod url;

pub use client::{
    ClientProgram, StopOnDrop, holding, is_permission_error, minimal_env, require_tool_at_least,
    spawn, tool_path, tool_version,
};
pub use connect::{
    CancelOnDrop, Connection, Notices, ServerVersion, connect, connect_with_notices,
    current_database, query_error, server_version, single_value, system_identifier,
};
pub use database::{
    DatabaseProperties, create_database, database_comment, database_exists, databases_with_comment,
    databases_with_comment_null, describe_contents, drop_database, other_sessions,
};
pub use snapshot::{
    DumpedTable, Extension, ROWS_ONLY, Snapshot, TableRows, count_rows, dumped_tables,
    end_snapshot, export_snapshot, extensions, row_counts, user_tables,
};

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
