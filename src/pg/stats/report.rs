//! What `backup db report` shows beyond the inventory: every database's
//! transaction-ID age, the sessions, the statements going on for long, and
//! the tables ranked by size, dead tuples and age.

use serde::Serialize;

use super::{IndexStats, TableStats, inventory, set_lock_timeout};
use crate::error::Result;
use crate::pg::connect::{Connection, query_error};

/// Transaction-ID age of one database.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseAge {
    pub database: String,
    pub xid_age: i64,
    /// `xid_age` as a share of `autovacuum_freeze_max_age`.
    pub of_freeze_max_age: f64,
}

/// Sessions of one database in one state.
#[derive(Debug, Clone, Serialize)]
pub struct Sessions {
    pub database: String,
    pub state: String,
    pub count: i64,
}

/// A statement or transaction going on for long.
#[derive(Debug, Clone, Serialize)]
pub struct LongQuery {
    pub pid: i32,
    pub user: String,
    pub database: String,
    pub state: String,
    pub running_seconds: f64,
    pub transaction_seconds: Option<f64>,
    pub query: String,
}

pub async fn database_ages(conn: &Connection) -> Result<Vec<DatabaseAge>> {
    let rows = conn
        .client
        .query(
            // template0 and other databases nobody connects to age too.
            "SELECT datname::text, age(datfrozenxid)::int8, \
                    age(datfrozenxid)::float8 / current_setting('autovacuum_freeze_max_age')::float8 \
             FROM pg_database ORDER BY 2 DESC, 1",
            &[],
        )
        .await
        .map_err(|e| query_error("reading transaction-ID ages", e))?;
    Ok(rows
        .iter()
        .map(|r| DatabaseAge {
            database: r.get(0),
            xid_age: r.get(1),
            of_freeze_max_age: r.get(2),
        })
        .collect())
}

pub async fn sessions(conn: &Connection) -> Result<Vec<Sessions>> {
    let rows = conn
        .client
        .query(
            "SELECT coalesce(datname, '')::text, coalesce(state, '')::text, count(*) \
             FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| query_error("reading pg_stat_activity", e))?;
    Ok(rows
        .iter()
        .map(|r| Sessions {
            database: r.get(0),
            state: r.get(1),
            count: r.get(2),
        })
        .collect())
}

/// Statements running, or transactions open, for longer than `longer_than`.
pub async fn long_queries(
    conn: &Connection,
    longer_than: std::time::Duration,
) -> Result<Vec<LongQuery>> {
    let seconds = longer_than.as_secs_f64();
    let rows = conn
        .client
        .query(
            "SELECT pid, coalesce(usename, '')::text, coalesce(datname, '')::text, \
                    coalesce(state, '')::text, \
                    extract(epoch FROM now() - query_start)::float8, \
                    extract(epoch FROM now() - xact_start)::float8, \
                    left(query, 300) \
             FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
               AND state IS DISTINCT FROM 'idle' \
               AND (query_start < now() - make_interval(secs => $1) \
                    OR xact_start < now() - make_interval(secs => $1)) \
             ORDER BY least(query_start, xact_start)",
            &[&seconds],
        )
        .await
        .map_err(|e| query_error("reading pg_stat_activity", e))?;
    Ok(rows
        .iter()
        .map(|r| LongQuery {
            pid: r.get(0),
            user: r.get(1),
            database: r.get(2),
            state: r.get(3),
            running_seconds: r.get::<_, Option<f64>>(4).unwrap_or(0.0),
            transaction_seconds: r.get(5),
            query: r.get(6),
        })
        .collect())
}

/// What `backup db report` shows of a database, each list in the order
/// shown.
#[derive(Debug, Clone)]
pub struct DatabaseReport {
    /// A table's lock was held: sizes are from the statistics.
    pub sizes_estimated: bool,
    pub freeze_max_age: i64,
    /// Largest first.
    pub largest_tables: Vec<TableStats>,
    /// Largest first.
    pub indexes: Vec<IndexStats>,
    /// Most dead tuples first, the larger first among equals.
    pub dead_tuples: Vec<TableStats>,
    /// Oldest `relfrozenxid` first.
    pub oldest_tables: Vec<TableStats>,
    /// Every database of the server, oldest first.
    pub database_ages: Vec<DatabaseAge>,
    pub sessions: Vec<Sessions>,
    /// Statements or transactions going on for longer than asked.
    pub long_queries: Vec<LongQuery>,
}

/// Reads what `backup db report` shows. Statements wait `lock_wait` at most
/// for a table's lock before its size is estimated instead; statements or
/// transactions going on for longer than `long` are listed.
pub async fn database_report(
    conn: &Connection,
    lock_wait: std::time::Duration,
    long: std::time::Duration,
) -> Result<DatabaseReport> {
    set_lock_timeout(conn, Some(lock_wait)).await?;
    let inventory = inventory(conn).await?;
    let database_ages = database_ages(conn).await?;
    let sessions = sessions(conn).await?;
    let long_queries = long_queries(conn, long).await?;
    let (largest_tables, dead_tuples, oldest_tables) = rank_tables(&inventory.tables);
    let mut indexes = inventory.indexes;
    indexes.sort_by_key(|i| std::cmp::Reverse(i.bytes));
    Ok(DatabaseReport {
        sizes_estimated: inventory.sizes_estimated,
        freeze_max_age: inventory.freeze_max_age,
        largest_tables,
        indexes,
        dead_tuples,
        oldest_tables,
        database_ages,
        sessions,
        long_queries,
    })
}

/// The tables largest first, most dead tuples first, and oldest first.
fn rank_tables(tables: &[TableStats]) -> (Vec<TableStats>, Vec<TableStats>, Vec<TableStats>) {
    let mut by_size = tables.to_vec();
    by_size.sort_by_key(|t| std::cmp::Reverse(t.total_bytes));
    let mut by_dead = tables.to_vec();
    by_dead.sort_by(|a, b| {
        b.dead_tuples
            .cmp(&a.dead_tuples)
            .then(b.total_bytes.cmp(&a.total_bytes))
    });
    let mut oldest = tables.to_vec();
    oldest.sort_by_key(|t| std::cmp::Reverse(t.xid_age));
    (by_size, by_dead, oldest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_ranks_tables_by_size_by_dead_tuples_and_by_age() {
        let table = |name: &str, total_bytes: i64, dead_tuples: i64, xid_age: i64| TableStats {
            oid: 1,
            schema: "public".into(),
            name: name.into(),
            total_bytes,
            table_bytes: total_bytes,
            index_bytes: 0,
            size_estimated: false,
            live_tuples: 10,
            dead_tuples,
            modified_since_analyze: 0,
            last_vacuum: None,
            last_autovacuum: None,
            last_analyze: None,
            last_autoanalyze: None,
            xid_age,
            bloat: None,
            owner: "app".into(),
            can_vacuum: true,
            can_reindex: true,
            owns: true,
        };
        let tables = [
            table("small", 10, 5, 300),
            table("big", 1000, 5, 100),
            table("dirty", 100, 50, 200),
        ];
        let names = |ts: &[TableStats]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let (by_size, by_dead, oldest) = rank_tables(&tables);
        assert_eq!(names(&by_size), ["big", "dirty", "small"]);
        // Equal dead tuples: the larger table first.
        assert_eq!(names(&by_dead), ["dirty", "big", "small"]);
        assert_eq!(names(&oldest), ["small", "dirty", "big"]);
    }
}
