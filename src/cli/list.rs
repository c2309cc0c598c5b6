//! `backup list [--job J]`: complete backups, newest first.

use serde_json::json;

use crate::engine::Engine;
use crate::error::Result;
use crate::report::bytes_human;
use crate::time;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this job's backups.
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let jobs = engine.list(args.job.as_deref()).await?;
    if json {
        let rows: Vec<_> = jobs
            .iter()
            .flat_map(|(job, backups)| {
                backups.iter().map(move |b| {
                    let m = &b.manifest;
                    json!({
                        "job": job.name, "id": m.id, "snapshot_at": m.snapshot_at,
                        "snapshot_at_local": time::show(m.snapshot_at, &job.timezone),
                        "database": m.database, "dbname": m.dbname, "directory": m.directory,
                        "raw_size": m.raw_size(), "stored_size": m.stored_size(),
                        "duration_seconds": m.duration().as_secs_f64(),
                        "compression": m.compression, "tables": m.tables.len(),
                        "storages": b.storages, "warnings": m.warnings,
                        "pinned": b.pinned.is_some(), "pin_reason": b.pinned,
                        "restore_tested_at": b.tested,
                        "restore_tested_moment": b.tested_moment,
                        // A base backup: where it lies in the WAL.
                        "physical": m.physical,
                    })
                })
            })
            .collect();
        return super::print_json(&rows);
    }
    let header = [
        "JOB",
        "ID",
        "DATA AS OF",
        "SOURCE",
        "RAW",
        "STORED",
        "DURATION",
        "STORAGES",
        "RESTORE TESTED",
        "PINNED",
    ];
    let mut rows: Vec<[String; 10]> = Vec::new();
    for (job, backups) in &jobs {
        for b in backups {
            let m = &b.manifest;
            rows.push([
                job.name.clone(),
                m.id.to_string(),
                time::show(m.snapshot_at, &job.timezone),
                source(m),
                bytes_human(m.raw_size()),
                bytes_human(m.stored_size()),
                time::show_duration(m.duration()),
                b.storages.join(","),
                match (b.tested, b.tested_moment) {
                    (None, _) => String::new(),
                    (Some(t), None) => time::show(t, &job.timezone),
                    (Some(t), Some(m)) => format!(
                        "{} (to {})",
                        time::show(t, &job.timezone),
                        time::show(m, &job.timezone)
                    ),
                },
                match &b.pinned {
                    Some(r) if r.is_empty() => "pinned".to_owned(),
                    Some(r) => format!("pinned: {r}"),
                    None => String::new(),
                },
            ]);
        }
    }
    if rows.is_empty() {
        println!("no complete backups");
        return Ok(());
    }
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    Ok(())
}

/// What a backup is of: a files backup's directory, a base backup's whole
/// cluster, a dump's database.
fn source(m: &crate::catalog::Manifest) -> String {
    match (&m.directory, &m.physical) {
        (Some(directory), _) => directory.clone(),
        (None, Some(p)) => match &p.incremental_of {
            None => format!("cluster of {}", m.database),
            Some(parent) => format!(
                "cluster of {}, incremental on {} (link {} of its chain)",
                m.database, parent.backup, parent.chain_length
            ),
        },
        (None, None) => m.database.clone(),
    }
}
