//! What the server knows about its tables, indexes and sessions: the facts
//! maintenance picks its work by, and `backup db report` shows.
//!
//! Everything here reads catalogs and statistics, never table data, with one
//! exception: `pgstatindex` (when the pgstattuple extension is installed)
//! reads an index to measure its bloat exactly.
//!
//! The estimate of bloat from the statistics is `bloat.rs`'s; what
//! `backup db report` adds (every database's age, sessions, long queries,
//! the rankings) is `report.rs`'s.

mod bloat;
mod report;

pub use bloat::{btree_bloat, heap_bloat};
pub use report::{
    DatabaseAge, DatabaseReport, LongQuery, Sessions, database_ages, database_report, long_queries,
    sessions,
};

use jiff::Timestamp;
use serde::Serialize;

use super::{Connection, query_error};
use crate::error::Result;

/// One table (or materialized view), with its statistics.
#[derive(Debug, Clone, Serialize)]
pub struct TableStats {
    #[serde(skip)]
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// The table, its TOAST and its indexes.
    pub total_bytes: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
    /// The sizes come from `relpages` (as of the last VACUUM or ANALYZE),
    /// because another session held the table's lock.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub size_estimated: bool,
    pub live_tuples: i64,
    pub dead_tuples: i64,
    pub modified_since_analyze: i64,
    pub last_vacuum: Option<Timestamp>,
    pub last_autovacuum: Option<Timestamp>,
    pub last_analyze: Option<Timestamp>,
    pub last_autoanalyze: Option<Timestamp>,
    /// The older of the table's and its TOAST table's `age(relfrozenxid)`.
    pub xid_age: i64,
    /// The share of the table that is empty space, estimated from
    /// `pg_stats`; `None` until the table has been analyzed.
    pub bloat: Option<f64>,
    pub owner: String,
    /// Whether our role may VACUUM and ANALYZE it (owns it or the database, or
    /// has MAINTAIN), and REINDEX it (owns it, or has MAINTAIN).
    #[serde(skip)]
    pub can_vacuum: bool,
    #[serde(skip)]
    pub can_reindex: bool,
    /// Whether our role owns it: what dropping one of its indexes takes.
    #[serde(skip)]
    pub owns: bool,
}

impl TableStats {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// Dead tuples as a share of all tuples.
    pub fn dead_ratio(&self) -> f64 {
        let all = self.live_tuples + self.dead_tuples;
        if all <= 0 {
            0.0
        } else {
            self.dead_tuples as f64 / all as f64
        }
    }

    pub fn never_analyzed(&self) -> bool {
        self.last_analyze.is_none() && self.last_autoanalyze.is_none()
    }
}

/// One index, with its size and bloat.
#[derive(Debug, Clone, Serialize)]
pub struct IndexStats {
    #[serde(skip)]
    pub oid: u32,
    #[serde(skip)]
    pub table_oid: u32,
    pub schema: String,
    pub name: String,
    pub table: String,
    pub bytes: i64,
    pub valid: bool,
    pub method: String,
    pub scans: i64,
    /// The share of the index that is empty space; `None` when it cannot be
    /// told (not a B-tree, partial, or its table never analyzed).
    pub bloat: Option<f64>,
    /// Whether `bloat` was measured with pgstattuple rather than estimated.
    pub bloat_exact: bool,
    /// Whether another session is building an index on its table right now.
    #[serde(skip)]
    pub table_being_indexed: bool,
    /// It backs an exclusion constraint: REINDEX CONCURRENTLY cannot rebuild it.
    pub exclusion: bool,
}

impl IndexStats {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// An invalid index named like the new or old copy REINDEX CONCURRENTLY
    /// makes: what a failed or cancelled one leaves behind.
    pub fn is_reindex_leftover(&self) -> bool {
        !self.valid && is_leftover_name(&self.name)
    }
}

/// Whether `name` ends like the copies REINDEX CONCURRENTLY makes:
/// `_ccnew`, `_ccold`, with a number when the name was taken.
pub fn is_leftover_name(name: &str) -> bool {
    ["_ccnew", "_ccold"].iter().any(|suffix| {
        name.rfind(suffix).is_some_and(|at| {
            name[at + suffix.len()..]
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
    })
}

/// What the maintenance planner sees of a database.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub database: String,
    pub tables: Vec<TableStats>,
    pub indexes: Vec<IndexStats>,
    pub freeze_max_age: i64,
    pub freeze_table_age: i64,
    /// `age(datfrozenxid)` of this database.
    pub database_xid_age: i64,
    /// Sizes came from `relpages` because a table's lock was held: they are
    /// as of the table's last VACUUM or ANALYZE.
    pub sizes_estimated: bool,
    /// Whether the pgstattuple extension is installed in the database.
    pub has_pgstattuple: bool,
    /// Whether pgstattuple measured the bloat of the indexes that matter.
    pub exact_index_bloat: bool,
}

fn micros(t: Option<i64>) -> Option<Timestamp> {
    t.and_then(|us| Timestamp::from_microsecond(us).ok())
}

/// A timestamp column as microseconds since the epoch, for the driver.
macro_rules! epoch_us {
    ($col:literal) => {
        concat!("(extract(epoch FROM ", $col, ") * 1000000)::int8")
    };
}

const SYSTEM_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'";

/// Sizes measured (`pg_*_size` takes a lock on each table) or estimated from
/// `relpages` (no lock; as of the last VACUUM or ANALYZE).
fn table_query(exact_sizes: bool) -> String {
    let (total, table, index) = if exact_sizes {
        (
            // NULL for a table dropped since the catalog was read.
            "coalesce(pg_total_relation_size(c.oid), 0)",
            "coalesce(pg_relation_size(c.oid), 0)",
            "coalesce(pg_indexes_size(c.oid), 0)",
        )
    } else {
        (
            "(c.relpages::int8 + coalesce(t.relpages, 0) + coalesce(ix.pages, 0)) * bs.size",
            "c.relpages::int8 * bs.size",
            "coalesce(ix.pages, 0) * bs.size",
        )
    };
    let maintain = MAINTAIN;
    format!(
        "WITH bs AS (SELECT current_setting('block_size')::int8 AS size) \
         SELECT c.oid, n.nspname::text, c.relname::text, {total}, {table}, {index}, \
           coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0), coalesce(s.n_mod_since_analyze, 0), \
           {}, {}, {}, {}, \
           greatest(age(c.relfrozenxid), age(t.relfrozenxid))::int8, \
           c.reltuples::float8, c.relpages::int8, bs.size, \
           coalesce((SELECT (regexp_match(o, '^fillfactor=(\\d+)$'))[1]::int \
                     FROM unnest(c.reloptions) o WHERE o LIKE 'fillfactor=%'), 100), \
           st.width, st.columns, \
           (SELECT count(*) FROM pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
           pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE') OR {maintain}, \
           pg_has_role(c.relowner, 'USAGE') OR {maintain}, \
           pg_get_userbyid(c.relowner)::text, pg_has_role(c.relowner, 'USAGE') \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         CROSS JOIN bs \
         CROSS JOIN (SELECT datdba FROM pg_database WHERE datname = current_database()) d \
         LEFT JOIN pg_class t ON t.oid = c.reltoastrelid \
         LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid \
         LEFT JOIN LATERAL (SELECT sum(ic.relpages)::int8 AS pages FROM pg_index x \
                            JOIN pg_class ic ON ic.oid = x.indexrelid WHERE x.indrelid = c.oid) ix ON true \
         LEFT JOIN LATERAL (SELECT sum(p.avg_width)::int8 AS width, count(*) AS columns FROM pg_stats p \
                            WHERE p.schemaname = n.nspname AND p.tablename = c.relname \
                              AND NOT p.inherited) st ON true \
         WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' AND {SYSTEM_SCHEMAS} \
         ORDER BY 2, 3",
        epoch_us!("s.last_vacuum"),
        epoch_us!("s.last_autovacuum"),
        epoch_us!("s.last_analyze"),
        epoch_us!("s.last_autoanalyze"),
    )
}

/// The MAINTAIN privilege (PostgreSQL 17) lets a role that owns neither the
/// table nor the database VACUUM and REINDEX it; older servers do not know
/// the word, hence the guard.
const MAINTAIN: &str = "CASE WHEN current_setting('server_version_num')::int >= 170000 \
     THEN coalesce(has_table_privilege(c.oid, 'MAINTAIN'), false) ELSE false END";

/// Index sizes measured or, as for tables, estimated from `relpages`.
fn index_query(exact_sizes: bool) -> String {
    let bytes = if exact_sizes {
        "coalesce(pg_relation_size(ci.oid), 0)"
    } else {
        "ci.relpages::int8 * bs.size"
    };
    format!(
        "WITH bs AS (SELECT current_setting('block_size')::int8 AS size) \
         SELECT ci.oid, i.indrelid, n.nspname::text, ci.relname::text, ct.relname::text, \
           {bytes}, i.indisvalid, am.amname::text, coalesce(si.idx_scan, 0), \
           i.indpred IS NOT NULL, ct.reltuples::float8, bs.size, \
           coalesce((SELECT (regexp_match(o, '^fillfactor=(\\d+)$'))[1]::int \
                     FROM unnest(ci.reloptions) o WHERE o LIKE 'fillfactor=%'), 90), \
           (SELECT sum(st.avg_width)::int8 FROM unnest(i.indkey::int2[]) k(attnum) \
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
              JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = ct.relname \
                              AND st.attname = a.attname AND NOT st.inherited), \
           (SELECT count(*) FROM unnest(i.indkey::int2[]) k(attnum) \
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
              JOIN pg_stats st ON st.schemaname = n.nspname AND st.tablename = ct.relname \
                              AND st.attname = a.attname AND NOT st.inherited), \
           i.indnatts::int8, \
           EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.relid = i.indrelid), \
           i.indisexclusion, ci.relpages::int8 \
         FROM pg_index i \
         JOIN pg_class ci ON ci.oid = i.indexrelid \
         JOIN pg_class ct ON ct.oid = i.indrelid \
         JOIN pg_namespace n ON n.oid = ci.relnamespace \
         JOIN pg_am am ON am.oid = ci.relam \
         CROSS JOIN bs \
         LEFT JOIN pg_stat_all_indexes si ON si.indexrelid = i.indexrelid \
         WHERE ci.relkind = 'i' AND ct.relkind IN ('r', 'm') AND ct.relpersistence <> 't' \
           AND {SYSTEM_SCHEMAS} \
         ORDER BY 3, 4"
    )
}

fn table_from_row(r: &tokio_postgres::Row) -> TableStats {
    let width: Option<i64> = r.get(18);
    let analyzed: i64 = r.get(19);
    let columns: i64 = r.get(20);
    let rows: f64 = r.get(14);
    let block = r.get::<_, i64>(16) as f64;
    // Pages and rows as of the same VACUUM or ANALYZE: a table grown since
    // must not look bloated.
    let pages = r.get::<_, i64>(15) as f64;
    let bloat = match width {
        // Only with every column analyzed: a missing width would read as bloat.
        Some(w) if columns > 0 && analyzed == columns && rows >= 0.0 => {
            heap_bloat(rows, w as f64, f64::from(r.get::<_, i32>(17)), block, pages)
        }
        _ => None,
    };
    TableStats {
        oid: r.get(0),
        schema: r.get(1),
        name: r.get(2),
        total_bytes: r.get(3),
        table_bytes: r.get(4),
        index_bytes: r.get(5),
        size_estimated: false,
        live_tuples: r.get(6),
        dead_tuples: r.get(7),
        modified_since_analyze: r.get(8),
        last_vacuum: micros(r.get(9)),
        last_autovacuum: micros(r.get(10)),
        last_analyze: micros(r.get(11)),
        last_autoanalyze: micros(r.get(12)),
        xid_age: r.get::<_, Option<i64>>(13).unwrap_or(0),
        bloat,
        owner: r.get(23),
        can_vacuum: r.get(21),
        can_reindex: r.get(22),
        owns: r.get(24),
    }
}

fn index_from_row(r: &tokio_postgres::Row) -> IndexStats {
    let method: String = r.get(7);
    let partial: bool = r.get(9);
    let rows: f64 = r.get(10);
    let block = r.get::<_, i64>(11) as f64;
    let width: Option<i64> = r.get(13);
    let analyzed: i64 = r.get(14);
    let columns: i64 = r.get(15);
    let pages = r.get::<_, i64>(18) as f64;
    // Expressions have no column statistics to go by, nor do partial
    // indexes a row count.
    let bloat = match width {
        Some(w) if method == "btree" && !partial && analyzed == columns && rows >= 0.0 => {
            btree_bloat(rows, w as f64, f64::from(r.get::<_, i32>(12)), block, pages)
        }
        _ => None,
    };
    IndexStats {
        oid: r.get(0),
        table_oid: r.get(1),
        schema: r.get(2),
        name: r.get(3),
        table: r.get(4),
        bytes: r.get(5),
        valid: r.get(6),
        method,
        scans: r.get(8),
        bloat,
        bloat_exact: false,
        table_being_indexed: r.get(16),
        exclusion: r.get(17),
    }
}

/// Reads every user table and index of the connection's database. Waits at
/// most the connection's `lock_timeout` on a locked table, then takes sizes
/// from the statistics. Index bloat is estimated; [`measure_index`] measures it.
pub async fn inventory(conn: &Connection) -> Result<Inventory> {
    let what = |w: &str| format!("reading {w} of database {}", conn.dbname);
    let version = super::server_version(conn).await?;
    if version.major < 12 {
        return Err(crate::error::Error::database(format!(
            "database {}: reading its statistics needs PostgreSQL 12 or newer; the server is {}",
            conn.dbname, version.text
        ))
        .with_hint("upgrade the server; PostgreSQL 11 has had no fixes since November 2023"));
    }
    let mut sizes_estimated = false;
    let mut tables = None;
    let mut indexes = None;
    for exact in [true, false] {
        let both = async {
            let t = conn.client.query(&table_query(exact), &[]).await?;
            let i = conn.client.query(&index_query(exact), &[]).await?;
            Ok::<_, tokio_postgres::Error>((t, i))
        };
        match both.await {
            Ok((t, i)) => {
                tables = Some(t);
                indexes = Some(i);
                break;
            }
            // A relation locked by another session: its size is not worth the wait.
            Err(e) if exact && is_lock_timeout(&e) => {
                tracing::info!(
                    "a table of {} is locked; sizes are taken from the statistics instead",
                    conn.dbname
                );
                sizes_estimated = true;
            }
            Err(e) => return Err(query_error(&what("table and index statistics"), e)),
        }
    }
    let mut tables: Vec<TableStats> = tables.iter().flatten().map(table_from_row).collect();
    for t in &mut tables {
        t.size_estimated = sizes_estimated;
    }
    let indexes: Vec<IndexStats> = indexes.iter().flatten().map(index_from_row).collect();
    let settings = conn
        .client
        .query_one(
            "SELECT current_setting('autovacuum_freeze_max_age')::int8, \
                    current_setting('vacuum_freeze_table_age')::int8, \
                    age(datfrozenxid)::int8, \
                    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pgstattuple') \
             FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| query_error(&what("settings"), e))?;
    Ok(Inventory {
        database: conn.dbname.clone(),
        tables,
        indexes,
        freeze_max_age: settings.get(0),
        freeze_table_age: settings.get(1),
        database_xid_age: settings.get(2),
        sizes_estimated,
        has_pgstattuple: settings.get(3),
        exact_index_bloat: false,
    })
}

/// Measures a B-tree's bloat with `pgstatindex` (pgstattuple): how far its
/// leaf pages are below the fill the index was built with. It reads the
/// whole index, so callers measure only what they might rebuild. Keeps the
/// estimate when it cannot measure; an error only when the role may not.
pub async fn measure_index(conn: &Connection, index: &mut IndexStats) -> Result<()> {
    let row = conn
        .client
        .query_one(
            "SELECT avg_leaf_density, leaf_pages, \
               coalesce((SELECT (regexp_match(o, '^fillfactor=(\\d+)$'))[1]::int \
                         FROM unnest(c.reloptions) o WHERE o LIKE 'fillfactor=%'), 90) \
             FROM pgstatindex($1::oid::regclass), pg_class c WHERE c.oid = $1::oid",
            &[&index.oid],
        )
        .await;
    match row {
        Ok(row) => {
            let density: f64 = row.get(0);
            let leaves: i64 = row.get(1);
            let fill: i32 = row.get(2);
            if density.is_finite() && leaves > 0 {
                index.bloat = Some((1.0 - density / f64::from(fill)).clamp(0.0, 1.0));
                index.bloat_exact = true;
            }
            Ok(())
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
            Err(query_error("pgstatindex", e).with_hint(
                "pgstatindex needs a superuser or a role granted pg_stat_scan_tables: \
                 GRANT pg_stat_scan_tables TO <the job's role>",
            ))
        }
        Err(e) => {
            tracing::debug!("pgstatindex on {}: {e}", index.qualified());
            Ok(())
        }
    }
}

/// The statistics of one table, re-read after work on it. Waits at most the
/// connection's `lock_timeout`.
pub async fn table(conn: &Connection, oid: u32) -> Result<Option<TableStats>> {
    let sql = table_query(true).replace("ORDER BY 2, 3", "AND c.oid = $1 ORDER BY 2, 3");
    let rows = conn
        .client
        .query(&sql, &[&oid])
        .await
        .map_err(|e| query_error("re-reading a table's statistics", e))?;
    Ok(rows.first().map(table_from_row))
}

/// The size of one index now, or `None` if it is gone.
pub async fn index_bytes(conn: &Connection, schema: &str, name: &str) -> Result<Option<i64>> {
    let qualified = format!(
        "{}.{}",
        super::quote_ident(schema),
        super::quote_ident(name)
    );
    let row = conn
        .client
        .query_one("SELECT pg_relation_size(to_regclass($1))", &[&qualified])
        .await
        .map_err(|e| query_error("measuring an index", e))?;
    Ok(row.get(0))
}

/// Whether a statement failed because a lock was not granted in time.
pub fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

/// Whether the server is a standby, where VACUUM and REINDEX cannot run.
pub async fn in_recovery(conn: &Connection) -> Result<bool> {
    let row = conn
        .client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| {
            query_error(
                &format!("asking whether the server of {} is a standby", conn.dbname),
                e,
            )
        })?;
    Ok(row.get(0))
}

/// Sets how long each statement of `conn` waits for a lock; `None`: as long
/// as it takes.
pub async fn set_lock_timeout(conn: &Connection, limit: Option<std::time::Duration>) -> Result<()> {
    let ms = limit.map_or(0, |l| l.as_millis().max(1));
    conn.client
        .batch_execute(&format!("SET lock_timeout = '{ms}ms'"))
        .await
        .map_err(|e| query_error(&format!("setting lock_timeout on {}", conn.dbname), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_reindex_concurrently_are_told_apart() {
        let index = |name: &str, valid: bool| IndexStats {
            oid: 1,
            table_oid: 2,
            schema: "public".into(),
            name: name.into(),
            table: "t".into(),
            bytes: 0,
            valid,
            method: "btree".into(),
            scans: 0,
            bloat: None,
            bloat_exact: false,
            table_being_indexed: false,
            exclusion: false,
        };
        assert!(index("t_pkey_ccnew", false).is_reindex_leftover());
        assert!(index("t_pkey_ccnew1", false).is_reindex_leftover());
        assert!(index("t_pkey_ccold", false).is_reindex_leftover());
        assert!(!index("t_pkey_ccnew", true).is_reindex_leftover());
        assert!(!index("t_pkey", false).is_reindex_leftover());
        assert!(!index("t_ccnewer", false).is_reindex_leftover());
    }
}
