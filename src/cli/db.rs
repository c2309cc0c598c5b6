//! `backup db report`: the runbooks' inspection queries in one command:
//! sizes, bloat, dead tuples, transaction-ID age, sessions and long queries.

use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Result};
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
    let db = engine.config.databases.get(&args.database).ok_or_else(|| {
        let known: Vec<&str> = engine.config.databases.keys().map(String::as_str).collect();
        Error::not_found(format!("no database named '{}'", args.database)).with_hint(
            if known.is_empty() {
                "the configuration declares no databases".to_owned()
            } else {
                format!("declared databases: {}", known.join(", "))
            },
        )
    })?;
    let conn = pg::connect(db, None).await?;
    stats::set_lock_timeout(&conn, Some(LOCK_WAIT)).await?;
    let inventory = stats::inventory(&conn).await?;
    let ages = stats::database_ages(&conn).await?;
    let sessions = stats::sessions(&conn).await?;
    let long = stats::long_queries(&conn, args.long).await?;
    let now = engine.clock().now();

    let mut by_size = inventory.tables.clone();
    by_size.sort_by_key(|t| std::cmp::Reverse(t.total_bytes));
    let mut by_dead = inventory.tables.clone();
    by_dead.sort_by(|a, b| {
        b.dead_tuples
            .cmp(&a.dead_tuples)
            .then(b.total_bytes.cmp(&a.total_bytes))
    });
    let mut indexes = inventory.indexes.clone();
    indexes.sort_by_key(|i| std::cmp::Reverse(i.bytes));
    let mut oldest = inventory.tables.clone();
    oldest.sort_by_key(|t| std::cmp::Reverse(t.xid_age));

    if json {
        return super::print_json(&json!({
            "database": db.name,
            "dbname": conn.dbname,
            "at": now,
            "sizes_estimated": inventory.sizes_estimated,
            "largest_tables": by_size,
            "indexes": indexes,
            "dead_tuples": by_dead,
            "database_xid_ages": ages,
            "autovacuum_freeze_max_age": inventory.freeze_max_age,
            "oldest_tables": oldest.iter().take(args.top).collect::<Vec<_>>(),
            "sessions": sessions,
            "long_queries": long,
            "long_query_seconds": args.long.as_secs_f64(),
        }));
    }

    let top = args.top;
    println!(
        "database {} ({}), {}",
        db.name,
        conn.dbname,
        crate::time::show(now, &jiff::tz::TimeZone::system())
    );
    if inventory.sizes_estimated {
        println!("  note: a table was locked; sizes are from the statistics");
    }
    println!("\nLargest tables");
    let mut rows = vec![
        ["TABLE", "TOTAL", "TABLE", "INDEXES", "LIVE ROWS"]
            .map(String::from)
            .to_vec(),
    ];
    for t in by_size.iter().take(top) {
        rows.push(vec![
            t.qualified(),
            size(t.total_bytes),
            size(t.table_bytes),
            size(t.index_bytes),
            t.live_tuples.to_string(),
        ]);
    }
    table(&rows);

    println!("\nIndexes, largest first (bloat estimated from statistics)");
    let mut rows = vec![
        ["INDEX", "TABLE", "SIZE", "BLOAT", "SCANS", "VALID"]
            .map(String::from)
            .to_vec(),
    ];
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

    println!("\nDead tuples, most first");
    let mut rows = vec![
        [
            "TABLE",
            "DEAD",
            "LIVE",
            "DEAD%",
            "LAST VACUUM",
            "LAST AUTOVACUUM",
            "LAST ANALYZE",
            "LAST AUTOANALYZE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for t in by_dead.iter().take(top) {
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

    println!(
        "\nTransaction-ID age (autovacuum_freeze_max_age {})",
        inventory.freeze_max_age
    );
    let mut rows = vec![
        ["DATABASE", "AGE", "OF FREEZE MAX AGE"]
            .map(String::from)
            .to_vec(),
    ];
    for a in &ages {
        rows.push(vec![
            a.database.clone(),
            a.xid_age.to_string(),
            format!("{:.1}%", a.of_freeze_max_age * 100.0),
        ]);
    }
    table(&rows);
    println!("  oldest tables:");
    let mut rows = vec![["TABLE", "AGE"].map(String::from).to_vec()];
    for t in oldest.iter().take(top) {
        rows.push(vec![t.qualified(), t.xid_age.to_string()]);
    }
    table(&rows);

    println!("\nConnections");
    let mut rows = vec![["DATABASE", "STATE", "COUNT"].map(String::from).to_vec()];
    for s in &sessions {
        rows.push(vec![
            s.database.clone(),
            s.state.clone(),
            s.count.to_string(),
        ]);
    }
    table(&rows);

    println!(
        "\nStatements or transactions running longer than {}",
        crate::time::show_std_duration(args.long)
    );
    if long.is_empty() {
        println!("  none");
    } else {
        let mut rows = vec![
            [
                "PID",
                "USER",
                "DATABASE",
                "STATE",
                "STATEMENT",
                "TRANSACTION",
                "QUERY",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for q in &long {
            rows.push(vec![
                q.pid.to_string(),
                q.user.clone(),
                q.database.clone(),
                q.state.clone(),
                show_duration(SignedDuration::from_secs_f64(q.running_seconds)),
                q.transaction_seconds.map_or("-".to_owned(), |s| {
                    show_duration(SignedDuration::from_secs_f64(s))
                }),
                q.query
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .chars()
                    .take(80)
                    .collect(),
            ]);
        }
        table(&rows);
    }
    Ok(())
}
