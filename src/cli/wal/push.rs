//! `backup wal push --job J PATH`: PostgreSQL's `archive_command`.

use std::path::PathBuf;

use crate::engine::Engine;
use crate::error::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The physical job whose archive takes the file.
    #[arg(long, value_name = "JOB")]
    job: String,
    /// The file, as PostgreSQL passes it (%p: pg_wal/000000010000000000000001).
    path: PathBuf,
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let (job, spec, _, _) = engine.config.physical_job(&args.job, "wal push")?;
    let crypt = crate::archive::crypt::sealing(spec.encryption.as_ref())?;
    // Opened only now: a push that has nothing to do never opens them.
    let storages = engine.open_all(&spec.storages).await?;
    let pushed =
        crate::wal::push::push(&job.name, &storages, spec.compression, crypt, &args.path).await?;
    if json {
        super::super::print_json(&serde_json::json!({
            "job": job.name,
            "file": pushed.file.name(),
            "sha256": pushed.sha256,
            "size": pushed.size,
            "stored": pushed.stored,
            "already": pushed.already,
        }))?;
    }
    if pushed.stored.is_empty() {
        tracing::info!("job {}: {} was archived already", job.name, pushed.file);
    } else {
        tracing::info!(
            "job {}: archived {} ({} bytes) to {}",
            job.name,
            pushed.file,
            pushed.size,
            pushed.stored.join(", ")
        );
    }
    Ok(())
}
