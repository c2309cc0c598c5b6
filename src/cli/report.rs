//! `backup report --html FILE [--job J]`: the status page the daemon serves
//! at `/`, written as one self-contained HTML file (to mail, attach to a
//! ticket, or publish as a static page from cron).

use std::path::PathBuf;

use crate::engine::Engine;
use crate::error::Result;
use crate::status;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the status page to FILE: one HTML file, no script, nothing
    /// fetched from elsewhere.
    #[arg(long, value_name = "FILE")]
    html: PathBuf,
    /// Only this job.
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let jobs: Vec<&crate::model::Job> = match &args.job {
        Some(name) => vec![engine.config.job(name)?],
        None => engine.config.jobs.values().collect(),
    };
    let page = status::page(engine, &jobs, engine.clock().now()).await;
    super::write_whole(&args.html, &status::html::render(&page), "--html")?;
    if json {
        super::print_json(&serde_json::json!({
            "html": args.html.display().to_string(),
            "jobs": page.jobs.len(),
        }))
    } else {
        eprintln!("status page written to {}", args.html.display());
        Ok(())
    }
}
