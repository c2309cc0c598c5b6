//! Which backup a restore reads, and from which of the job's storages.

use std::sync::Arc;

use crate::catalog::{self, Manifest, Selector};
use crate::error::{Error, Result};
use crate::model::Job;
use crate::storage::Storage;

/// The backup `selector` names, and the storage it is read from: the first
/// of `storages` (or the one named `only`) that answers and has it.
pub async fn choose(
    job: &Job,
    storages: &[Arc<dyn Storage>],
    only: Option<&str>,
    selector: &Selector,
) -> Result<(Manifest, String)> {
    let candidates: Vec<&Arc<dyn Storage>> = match only {
        Some(name) => {
            let found = storages.iter().find(|s| s.name() == name).ok_or_else(|| {
                Error::usage(format!(
                    "job {} does not store backups in storage '{name}'",
                    job.name
                ))
                .with_hint(format!(
                    "the job's storages: {}",
                    storages
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            vec![found]
        }
        None => storages.iter().collect(),
    };
    // The backup is chosen from the first storage that answers; the union of
    // all would pick a backup some storage lacks and hide a failing one.
    let mut last_error = None;
    let mut chosen = None;
    for storage in candidates {
        let listing = match catalog::list(storage.as_ref(), &job.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("storage {}: {e}", storage.name());
                last_error = Some(e);
                continue;
            }
        };
        for problem in &listing.unreadable {
            tracing::warn!("{problem}");
        }
        let selected = catalog::select(&listing.backups, selector, &job.name, &job.timezone);
        // A backup this selector could mean whose manifest does not read is
        // never passed over for another: the operator would get an older
        // backup than asked for, or none of the one named.
        if let Some(bad) = listing.unreadable.iter().find(|u| {
            could_mean(selector, &u.id) && selected.as_ref().is_ok_and(|m| u.id > m.id)
                || matches!(selector, Selector::Id(id) if *id == u.id)
        }) {
            return Err(
                Error::integrity(bad.problem.clone()).with_hint(match &selected {
                    Ok(m) => format!(
                        "restore another backup by --id (the one before it is {}); `backup verify \
                     --job {} --all` says which are whole",
                        m.id, job.name
                    ),
                    Err(_) => format!(
                        "restore another backup by --id; `backup list --job {}` shows them",
                        job.name
                    ),
                }),
            );
        }
        match selected {
            Ok(m) => {
                chosen = Some((m.clone(), storage.name().to_owned()));
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    chosen.ok_or_else(|| last_error.unwrap_or_else(|| Error::internal("no storage to read")))
}

/// Whether `selector` could pick backup `id` (read from its id, as its
/// manifest does not read).
fn could_mean(selector: &Selector, id: &crate::model::BackupId) -> bool {
    match selector {
        Selector::Latest => true,
        Selector::Id(wanted) => wanted == id,
        Selector::At(at) => id.started_at().is_some_and(|started| started <= *at),
    }
}

/// The storage a plan chose, among `storages` (opened again to carry it out).
pub fn named<'a>(storages: &'a [Arc<dyn Storage>], name: &str) -> Result<&'a Arc<dyn Storage>> {
    storages
        .iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| Error::internal(format!("storage {name} vanished")))
}
