//! A physical job's base backup: `pg_basebackup -Ft -D - -X none` of the
//! whole cluster, streamed through the archive pipeline into every storage,
//! then the manifest, last, once the WAL it needs is archived.

use std::sync::Arc;

use super::backup::BackupOutcome;
use crate::error::{Error, Result};
use crate::model::{BackupJob, Clock, Job};
use crate::report::Progress;
use crate::storage::Storage;

pub async fn run(
    job: &Job,
    spec: &BackupJob,
    storages: &[Arc<dyn Storage>],
    clock: &dyn Clock,
    progress: Arc<dyn Progress>,
    accept_new_source: bool,
) -> Result<BackupOutcome> {
    let _ = (spec, storages, clock, progress, accept_new_source);
    Err(Error::internal(format!(
        "job {}: physical backups are not built yet",
        job.name
    )))
}
