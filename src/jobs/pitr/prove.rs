//! (being written by helper RECOVER: a stand-in with the agreed interface)
#![allow(dead_code, unused_variables)]

use serde::Serialize;

use super::Target;
use super::recover::RecoveryEnd;
use crate::error::{Error, Result};
use crate::jobs::proof::CheckResult;
use crate::model::{Check, Database};
use crate::pg::cluster::ServerInstall;

#[derive(Debug, Clone, Default, Serialize)]
pub struct PitrProof {
    pub checks: Vec<CheckResult>,
    pub databases: Vec<DatabaseRead>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRead {
    pub name: String,
    pub bytes: u64,
    pub seconds: f64,
    pub amcheck: Option<String>,
}

impl PitrProof {
    pub fn failure(&self) -> Option<String> {
        None
    }
}

pub async fn prove(
    server: &Database,
    install: &ServerInstall,
    target: &Target,
    end: &RecoveryEnd,
    checks: &[Check],
    checks_db: &str,
) -> Result<PitrProof> {
    Err(Error::internal("not yet"))
}
