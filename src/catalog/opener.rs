//! The keys to an encrypted backup, checked against its data object's
//! header before anything is created or restored.

use std::sync::Arc;

use super::{Manifest, Role, backup_prefix};
use crate::archive::crypt::{self, AGE, Crypt};
use crate::error::{Error, Kind, Result};
use crate::keys::{IDENTITY_ENV, Identities};
use crate::model::EncryptionSpec;
use crate::storage::Storage;

/// How to open the objects of `manifest`: nothing for a backup in clear;
/// for an encrypted one, identities that are checked here against its data
/// object's header, so a missing or wrong key fails before anything is
/// created or restored.
pub async fn opener(
    storage: &dyn Storage,
    manifest: &Manifest,
    encryption: Option<&EncryptionSpec>,
) -> Result<Crypt> {
    match manifest.encryption.as_deref() {
        None => return Ok(Crypt::None),
        Some(AGE) => {}
        Some(other) => {
            return Err(Error::integrity(format!(
                "backup {} names an encryption this version does not know: '{other}'",
                manifest.id
            )));
        }
    }
    let identities = Identities::load(
        encryption.and_then(|e| e.passphrase.as_ref()),
        encryption.and_then(|e| e.identity_file.as_deref()),
    )?
    .ok_or_else(|| {
        Error::new(
            Kind::Refused,
            format!(
                "backup {} of job {} is encrypted with age, and no identity to decrypt it is given; nothing was changed",
                manifest.id, manifest.job
            ),
        )
        .with_hint(format!(
            "set {IDENTITY_ENV} to the secret key (or the path of its file), or identity_file in the job's `encryption` \
             (passphrase_env or passphrase_file if it was made with a passphrase)"
        ))
    })?;
    let identities = Arc::new(identities);
    // The object a restore reads: a dump's data, a files job's tar, or a
    // physical job's base backup.
    let object = manifest
        .object(Role::Data)
        .or_else(|| manifest.object(Role::Files))
        .or_else(|| manifest.object(Role::Base))
        .ok_or_else(|| Error::integrity(format!("backup {}: no data object", manifest.id)))?;
    let key = backup_prefix(&manifest.job, &manifest.id)?.join(&object.key)?;
    let reader = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let check = identities.clone();
    let label = format!(
        "backup {} ({key} in storage {})",
        manifest.id,
        storage.name()
    );
    tokio::task::spawn_blocking(move || crypt::open(reader, &check).map(drop))
        .await
        .map_err(|e| Error::internal(format!("decryption check failed: {e}")))?
        .map_err(|e| {
            let hint = e.hint().map(str::to_owned);
            let e = Error::new(
                e.kind(),
                format!("{label}: {}; nothing was changed", e.message()),
            );
            match hint {
                Some(h) => e.with_hint(h),
                None => e,
            }
        })?;
    Ok(Crypt::Open(identities))
}
