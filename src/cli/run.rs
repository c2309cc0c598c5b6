//! `backup run JOB...`: run jobs once, now.

use serde_json::json;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::report::bytes_human;
use crate::time;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The jobs to run, in order.
    #[arg(required = true, value_name = "JOB")]
    jobs: Vec<String>,
}

pub async fn run(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    // Check every name before running anything: a typo must not leave half the
    // list done.
    for name in &args.jobs {
        engine.config.job(name)?;
    }
    let mut first_error: Option<Error> = None;
    let mut results = Vec::new();
    for name in &args.jobs {
        let job = engine.config.job(name)?;
        match engine.run_backup(name, cancel).await {
            Ok(outcome) => {
                let m = &outcome.manifest;
                if json {
                    results.push(json!({
                        "job": name, "ok": outcome.failed.is_empty(), "backup": m.id,
                        "snapshot_at": m.snapshot_at, "raw_size": m.raw_size(),
                        "stored_size": m.stored_size(), "stored_in": outcome.stored_in,
                        "failed": outcome.failed.iter().map(|(s, e)| json!({"storage": s, "error": e.to_string()})).collect::<Vec<_>>(),
                    }));
                } else {
                    println!(
                        "job {name}: backup {} complete in {} (data as of {}; {} raw, {} stored, {} tables, {})",
                        m.id,
                        outcome.stored_in.join(", "),
                        time::show(m.snapshot_at, &job.timezone),
                        bytes_human(m.raw_size()),
                        bytes_human(m.stored_size()),
                        m.tables.len(),
                        time::show_duration(m.duration()),
                    );
                    for warning in &m.warnings {
                        println!("  warning: {warning}");
                    }
                }
                for (storage, e) in outcome.failed {
                    let e = e.context(format!(
                        "job {name}: storage {storage} does not have backup {}",
                        m.id
                    ));
                    crate::report::print_error(&e);
                    first_error.get_or_insert(e);
                }
            }
            // Said once, with what it left behind, by the caller.
            Err(e) if e.kind() == crate::error::Kind::Interrupted => return Err(e.reported()),
            Err(e) => {
                if json {
                    results.push(json!({"job": name, "ok": false, "error": e.to_string()}));
                }
                let e = e.context(format!("job {name}"));
                crate::report::print_error(&e);
                first_error.get_or_insert(e);
            }
        }
    }
    if json {
        super::print_json(&results)?;
    }
    match first_error {
        // Already printed; the exit code is what is left to say.
        Some(e) => Err(e.reported()),
        None => Ok(()),
    }
}
