//! (being written by helper LAY: a stand-in with the agreed interface)
#![allow(dead_code, unused_variables)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::RecoverySettings;
use crate::archive::crypt::Crypt;
use crate::catalog::Manifest;
use crate::error::{Error, Result};
use crate::report::Progress;
use crate::storage::Storage;

#[derive(Debug, Clone)]
pub struct TargetDir {
    pub existing: usize,
    pub staging: Option<PathBuf>,
    pub leftovers: Vec<PathBuf>,
}

pub fn check_target(target: &Path, force: bool, backup_id: &str) -> Result<TargetDir> {
    Err(Error::internal("not yet"))
}

pub struct LayDown<'a> {
    pub backup: &'a Manifest,
    pub crypt: &'a Crypt,
    pub target: &'a Path,
    pub dir: &'a TargetDir,
    pub settings: &'a RecoverySettings,
    pub owner: Option<(u32, u32)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Laid {
    pub files: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

pub async fn lay_down(
    what: LayDown<'_>,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
) -> Result<Laid> {
    Err(Error::internal("not yet"))
}
