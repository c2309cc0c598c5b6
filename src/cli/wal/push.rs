//! `backup wal push`.

use crate::engine::Engine;
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The physical job.
    #[arg(long, value_name = "JOB")]
    job: String,
}

pub async fn run(engine: &Engine, args: Args, json: bool) -> Result<()> {
    let _ = (engine, json);
    Err(Error::internal(format!(
        "job {}: wal push is not built yet",
        args.job
    )))
}
