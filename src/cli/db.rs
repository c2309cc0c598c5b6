//! `backup db report`: the runbooks' inspection queries in one command:
//! sizes, bloat, dead tuples, transaction-ID age, sessions and long queries.
//! The queries are [`stats::database_report`]'s; this module shows them.

use jiff::Timestamp;
use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg::stats::{IndexStats, LongQuery, TableStats};
use crate::pg::{self, stats};
use crate::report::bytes_human;
use crate::time::show_duration;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sizes, bloat, dead tuples, transaction-ID age, sessions, long queries.
    Report(ReportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A database declared under [databases.NAME].
    #[arg(long, value_name = "NAME")]
    database: String,
    /// How many rows each ranking shows (--json lists every one).
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Statements or transactions running longer than this are listed.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_long)]
    long: std::time::Duration,
}

fn parse_long(text: &str) -> std::result::Result<std::time::Duration, String> {
    crate::time::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("'{text}' is not a duration such as 5m, 30s or 1h"))
}

/// How long the report waits on a locked table before it estimates its size.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn ago(now: Timestamp, t: Option<Timestamp>) -> String {
    t.map_or_else(
        || "never".to_owned(),
        |t| format!("{} ago", show_duration(now.duration_since(t))),
    )
}

/// Prints rows as columns padded to their widest cell; the first row is the header.
fn table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("  {}", cells.join("  ").trim_end());
    }
}

fn size(bytes: i64) -> String {
    bytes_human(bytes.max(0) as u64)
}

pub async fn run(engine: &Engine, command: Command, json: bool) -> Result<()> {
    let Command::Report(args) = command;
    let db = database(engine, &args.database)?;
    let conn = pg::connect(db, None).await?;
    let report = stats::database_report(&conn, LOCK_WAIT, args.long).await?;
    let now = engine.clock().now();
    if json {
        return super::print_json(&json!({
            "database": db.name,
            "dbname": conn.dbname,
            "at": now,
            "sizes_estimated": report.sizes_estimated,
            "largest_tables": report.largest_tables,
            "indexes": report.indexes,
            "dead_tuples": report.dead_tuples,
            "database_xid_ages": report.database_ages,
            "autovacuum_freeze_max_age": report.freeze_max_age,
            "oldest_tables": report.oldest_tables.iter().take(args.top).collect::<Vec<_>>(),
            "sessions": report.sessions,
            "long_queries": report.long_queries,
            "long_query_seconds": args.long.as_secs_f64(),
        }));
    }
    println!(
        "database {} ({}), {}",
        db.name,
        conn.dbname,
        crate::time::show(now, &jiff::tz::TimeZone::system())
    );
    if report.sizes_estimated {
        println!("  note: a table was locked; sizes are from the statistics");
    }
    let top = args.top;
    print_largest_tables(&report.largest_tables, top);
    print_indexes(&report.indexes, top);
    print_dead_tuples(&report.dead_tuples, top, now);
    print_xid_ages(&report, top);
    print_sessions(&report.sessions);
    print_long_queries(&report.long_queries, args.long);
    Ok(())
}

/// The database declared under `[databases.NAME]`.
fn database<'a>(engine: &'a Engine, name: &str) -> Result<&'a Database> {
    let known = &engine.config.databases;
    known.get(name).map(AsRef::as_ref).ok_or_else(|| {
        let names: Vec<&str> = known.keys().map(String::as_str).collect();
        Error::not_found(format!("no database named '{name}'")).with_hint(if names.is_empty() {
            "the configuration declares no databases".to_owned()
        } else {
            format!("declared databases: {}", names.join(", "))
        })
    })
}

/// A header row.
fn header<const N: usize>(names: [&str; N]) -> Vec<String> {
    names.map(String::from).to_vec()
}

fn print_largest_tables(tables: &[TableStats], top: usize) {
    println!("\nLargest tables");
    let mut rows = vec![header(["TABLE", "TOTAL", "TABLE", "INDEXES", "LIVE ROWS"])];
    for t in tables.iter().take(top) {
        rows.push(vec![
            t.qualified(),
            size(t.total_bytes),
            size(t.table_bytes),
            size(t.index_bytes),
            t.live_tuples.to_string(),
        ]);
    }
    table(&rows);
}

fn print_indexes(indexes: &[IndexStats], top: usize) {
    println!("\nIndexes, largest first (bloat estimated from statistics)");
    let mut rows = vec![header([
        "INDEX", "TABLE", "SIZE", "BLOAT", "SCANS", "VALID",
    ])];
    for i in indexes.iter().take(top) {
        rows.push(vec![
            i.qualified(),
            i.table.clone(),
            size(i.bytes),
            i.bloat
                .map_or("?".to_owned(), |b| format!("{:.0}%", b * 100.0)),
            i.scans.to_string(),
            if i.valid { "yes" } else { "NO" }.to_owned(),
        ]);
    }
    table(&rows);
}

fn print_dead_tuples(tables: &[TableStats], top: usize, now: Timestamp) {
    println!("\nDead tuples, most first");
    let mut rows = vec![header([
        "TABLE",
        "DEAD",
        "LIVE",
        "DEAD%",
        "LAST VACUUM",
        "LAST AUTOVACUUM",
        "LAST ANALYZE",
        "LAST AUTOANALYZE",
    ])];
    for t in tables.iter().take(top) {
        rows.push(vec![
            t.qualified(),
            t.dead_tuples.to_string(),
            t.live_tuples.to_string(),
            format!("{:.0}%", t.dead_ratio() * 100.0),
            ago(now, t.last_vacuum),
            ago(now, t.last_autovacuum),
            ago(now, t.last_analyze),
            ago(now, t.last_autoanalyze),
        ]);
    }
    table(&rows);
}

fn print_xid_ages(report: &stats::DatabaseReport, top: usize) {
    println!(
        "\nTransaction-ID age (autovacuum_freeze_max_age {})",
        report.freeze_max_age
    );
    let mut rows = vec![header(["DATABASE", "AGE", "OF FREEZE MAX AGE"])];
    for a in &report.database_ages {
        rows.push(vec![
            a.database.clone(),
            a.xid_age.to_string(),
            format!("{:.1}%", a.of_freeze_max_age * 100.0),
        ]);
    }
    table(&rows);
    println!("  oldest tables:");
    let mut rows = vec![header(["TABLE", "AGE"])];
    for t in report.oldest_tables.iter().take(top) {
        rows.push(vec![t.qualified(), t.xid_age.to_string()]);
    }
    table(&rows);
}

fn print_sessions(sessions: &[stats::Sessions]) {
    println!("\nConnections");
    let mut rows = vec![header(["DATABASE", "STATE", "COUNT"])];
    for s in sessions {
        rows.push(vec![
            s.database.clone(),
            s.state.clone(),
            s.count.to_string(),
        ]);
    }
    table(&rows);
}

fn print_long_queries(queries: &[LongQuery], longer_than: std::time::Duration) {
    println!(
        "\nStatements or transactions running longer than {}",
        crate::time::show_std_duration(longer_than)
    );
    if queries.is_empty() {
        println!("  none");
        return;
    }
    let mut rows = vec![header([
        "PID",
        "USER",
        "DATABASE",
        "STATE",
        "STATEMENT",
        "TRANSACTION",
        "QUERY",
    ])];
    for q in queries {
        rows.push(vec![
            q.pid.to_string(),
            q.user.clone(),
            q.database.clone(),
            q.state.clone(),
            crate::time::show_seconds(q.running_seconds),
            q.transaction_seconds
                .map_or("-".to_owned(), crate::time::show_seconds),
            one_line(&q.query, 80),
        ]);
    }
    table(&rows);
}

/// A query's text on one line, its spaces squeezed, cut at `chars`.
fn one_line(query: &str, chars: usize) -> String {
    query
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(chars)
        .collect()
}
