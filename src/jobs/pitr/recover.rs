//! (being written by helper RECOVER: a stand-in with the agreed interface)
#![allow(dead_code, unused_variables)]

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg::cluster::ServerInstall;

pub struct RecoveryServer {
    database: Database,
    log: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct StopPoint {
    pub xid: u64,
    pub at: Timestamp,
    pub what: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoveryEnd {
    pub stopped_before: Option<StopPoint>,
    pub last_replayed: Option<Timestamp>,
    pub timeline: u32,
    pub paused: bool,
    pub seconds: f64,
    pub segments_restored: u64,
    pub replayed_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HandedOver {
    pub stop_command: String,
    pub log: PathBuf,
    pub port: u16,
}

impl RecoveryServer {
    pub fn start(
        install: &ServerInstall,
        data: &Path,
        port: Option<u16>,
        hint_user: Option<&str>,
    ) -> Result<RecoveryServer> {
        Err(Error::internal("not yet"))
    }
    pub async fn wait(&self, cancel: &CancellationToken) -> Result<RecoveryEnd> {
        Err(Error::internal("not yet"))
    }
    pub fn database(&self) -> &Database {
        &self.database
    }
    pub fn port(&self) -> u16 {
        0
    }
    pub fn log(&self) -> &Path {
        &self.log
    }
    pub fn stop(self) -> Result<()> {
        Ok(())
    }
    pub fn hand_over(self) -> Result<HandedOver> {
        Err(Error::internal("not yet"))
    }
}
