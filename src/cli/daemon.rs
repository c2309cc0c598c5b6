//! `backup daemon`: the scheduler, health and metrics (see [`crate::daemon`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::engine::Engine;
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address for /health/* and /metrics [default: [daemon] listen, else 127.0.0.1:9187].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// How long running jobs may finish after SIGTERM before they are cancelled
    /// [default: [daemon] grace, else 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_grace)]
    grace: Option<std::time::Duration>,
}

fn parse_grace(text: &str) -> std::result::Result<std::time::Duration, String> {
    crate::time::parse_duration(text)
        .ok_or_else(|| format!("'{text}' is not a duration such as 30s, 5m or 1h"))
}

pub async fn run(engine: Engine, args: Args, config_path: Option<PathBuf>) -> Result<()> {
    let options = crate::daemon::Options {
        config_path,
        listen: args.listen,
        grace: args.grace,
    };
    let clock = engine.clock().clone();
    if engine.config.jobs.is_empty() {
        return Err(Error::config("the configuration declares no jobs"));
    }
    crate::daemon::run(options, engine.config, clock).await
}
