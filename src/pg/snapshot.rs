//! What a dump reads in one snapshot: the exported snapshot `pg_dump` shares,
//! and, in that same snapshot, the user tables (counted with `count(*)` only
//! when the archive itself cannot be) and the extensions a manifest records.

use jiff::Timestamp;

use super::connect::{Connection, query_error};
use super::quote_ident;
use crate::error::{Error, Result};

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
    // The session waits, idle in its transaction, while pg_dump reads: a
    // timeout set for the role or database must not end it half way.
    conn.client
        .batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; \
             SET LOCAL idle_in_transaction_session_timeout = 0",
        )
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
SELECT n.nspname, c.relname, c.relkind = 'p', c.oid, c.relpersistence = 'u' \
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

/// Exact row counts of `tables` ([`dumped_tables`]), in the connection's
/// current snapshot: the fallback when the archive cannot be counted.
pub async fn row_counts(conn: &Connection, tables: &[DumpedTable]) -> Result<Vec<TableRows>> {
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        out.push(TableRows {
            schema: t.schema.clone(),
            name: t.name.clone(),
            rows: count_rows(conn, &t.schema, &t.name, true).await?,
        });
    }
    Ok(out)
}

/// A table whose rows a dump holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedTable {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub unlogged: bool,
}

/// The tables a dump holds the rows of: user tables that are not
/// partitioned parents, with what a backup matches them in its archive by.
pub async fn dumped_tables(conn: &Connection) -> Result<Vec<DumpedTable>> {
    let rows = conn
        .client
        .query(USER_TABLES, &[])
        .await
        .map_err(|e| query_error(&format!("listing the tables of {}", conn.dbname), e))?;
    Ok(rows
        .iter()
        .filter(|r| !r.get::<_, bool>(2))
        .map(|r| DumpedTable {
            schema: r.get(0),
            name: r.get(1),
            oid: r.get(3),
            unlogged: r.get(4),
        })
        .collect())
}

/// [`dumped_tables`] by name.
pub async fn user_tables(conn: &Connection) -> Result<Vec<(String, String)>> {
    Ok(dumped_tables(conn)
        .await?
        .into_iter()
        .map(|t| (t.schema, t.name))
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
