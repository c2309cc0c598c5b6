//! The encryption stage: age (X25519) between compression and the stored
//! digest. The stored SHA-256 covers the ciphertext, the raw SHA-256 the
//! plaintext; the manifest names the encryption, never a key.
//!
//! Keys: recipients (public) encrypt, on the hosts that take backups;
//! identities (secret) decrypt, only where restores, verifies and drills run.
//! An identity comes from `BACKUP_AGE_IDENTITY` (the key itself, or the path
//! of a file holding it) or the job's `identity_file`; a file others may read
//! is refused, as libpq refuses such a `.pgpass`.

use std::cell::RefCell;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Kind, Result};

/// What the manifest's `encryption` says of an encrypted backup.
pub const AGE: &str = "age";
/// The suffix of an encrypted object's name.
pub const EXTENSION: &str = "age";
/// The environment variable an identity may come from.
pub const IDENTITY_ENV: &str = "BACKUP_AGE_IDENTITY";

/// Public keys objects are encrypted to.
#[derive(Clone)]
pub struct Recipients(Vec<age::x25519::Recipient>);

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipients({})", self.0.len())
    }
}

impl Recipients {
    /// Parses `age1...` keys; the error names the one that is not.
    pub fn parse<'a>(keys: impl IntoIterator<Item = &'a str>) -> std::result::Result<Self, String> {
        let mut out = Vec::new();
        for key in keys {
            let key = key.trim();
            out.push(
                age::x25519::Recipient::from_str(key)
                    .map_err(|_| format!("'{key}' is not an age X25519 recipient (age1...)"))?,
            );
        }
        if out.is_empty() {
            return Err("no recipient".to_owned());
        }
        Ok(Recipients(out))
    }

    /// The recipients in a file: one `age1...` a line; `#` comments and blank lines skipped.
    pub fn parse_file(text: &str) -> std::result::Result<Self, String> {
        Recipients::parse(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#')),
        )
    }
}

/// Secret keys that open objects. Never printed.
#[derive(Clone)]
pub struct Identities(Vec<age::x25519::Identity>);

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities(<{} redacted>)", self.0.len())
    }
}

impl Identities {
    /// The `AGE-SECRET-KEY-1...` lines of `text`; other lines are comments.
    fn parse(text: &str, from: &str) -> Result<Self> {
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with("AGE-SECRET-KEY-") {
                // The parser's error could quote the line: say only where it is.
                out.push(age::x25519::Identity::from_str(line).map_err(|_| {
                    Error::config(format!("{from} holds an age identity that does not parse"))
                })?);
            }
        }
        if out.is_empty() {
            return Err(Error::config(format!(
                "{from} holds no age identity (AGE-SECRET-KEY-1...)"
            ))
            .with_hint(
                "make one with `age-keygen -o key.txt`; its public key goes into `recipients`",
            ));
        }
        Ok(Identities(out))
    }

    /// From `BACKUP_AGE_IDENTITY`, else `identity_file`; `None` when neither is set.
    pub fn load(identity_file: Option<&Path>) -> Result<Option<Self>> {
        if let Ok(value) = std::env::var(IDENTITY_ENV)
            && !value.trim().is_empty()
        {
            if value.trim_start().starts_with("AGE-SECRET-KEY-") {
                return Identities::parse(&value, IDENTITY_ENV).map(Some);
            }
            return Identities::from_file(Path::new(value.trim())).map(Some);
        }
        identity_file.map(Identities::from_file).transpose()
    }

    #[cfg(test)]
    pub fn load_from_text_for_tests(key: &age::x25519::Identity) -> Self {
        Identities(vec![key.clone()])
    }

    fn from_file(path: &Path) -> Result<Self> {
        refuse_shared_secret(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                Kind::Config,
                format!("reading the age identity {}", path.display()),
                e,
            )
        })?;
        Identities::parse(&text, &path.display().to_string())
    }
}

/// Refuses a file holding a secret that others than its owner may read.
pub fn refuse_shared_secret(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(Kind::Config, format!("reading {}", path.display()), e))?;
    let mode = meta.permissions().mode();
    // Devices and pipes (a secret handed over on a file descriptor) have
    // the modes of their kind, not of a file someone wrote.
    if meta.is_file() && mode & 0o077 != 0 {
        return Err(Error::config(format!(
            "{} holds a secret and others may read it (mode {:o})",
            path.display(),
            mode & 0o777
        ))
        .with_hint(format!("chmod 600 {}", path.display())));
    }
    Ok(())
}

/// The encryption stage of one object.
#[derive(Clone, Debug, Default)]
pub enum Crypt {
    #[default]
    None,
    /// Encrypt to these recipients (writing).
    Seal(Arc<Recipients>),
    /// Decrypt with these identities (reading).
    Open(Arc<Identities>),
}

/// A buffer the age writer writes into and the pipeline drains.
#[derive(Clone, Default)]
struct Shared(Rc<RefCell<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A push encryptor, like the compression encoders: bytes in, ciphertext out
/// as it comes, in bounded memory (age seals 64 KiB chunks).
pub struct Sealer {
    writer: age::stream::StreamWriter<Shared>,
    out: Shared,
}

impl Sealer {
    pub fn new(recipients: &Recipients) -> Result<Sealer> {
        let encryptor =
            age::Encryptor::with_recipients(recipients.0.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| Error::internal(format!("age: {e}")))?;
        let out = Shared::default();
        let writer = encryptor
            .wrap_output(out.clone())
            .map_err(|e| Error::internal(format!("age: {e}")))?;
        Ok(Sealer { writer, out })
    }

    /// Encrypts `bytes` and returns the ciphertext produced so far.
    pub fn seal(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.writer
            .write_all(bytes)
            .map_err(|e| Error::internal(format!("age: {e}")))?;
        Ok(std::mem::take(&mut *self.out.0.borrow_mut()))
    }

    /// Ends the stream: the last chunk and its tag.
    pub fn finish(self) -> Result<Vec<u8>> {
        self.writer
            .finish()
            .map_err(|e| Error::internal(format!("age: {e}")))?;
        Ok(std::mem::take(&mut *self.out.0.borrow_mut()))
    }
}

/// Opens an encrypted stream. Fails at once, on the header, when none of
/// `identities` is a recipient: before a byte of data is read.
pub fn open<R: Read>(source: R, identities: &Identities) -> Result<age::stream::StreamReader<R>> {
    let decryptor = age::Decryptor::new(source)
        .map_err(|e| Error::integrity(format!("not an age-encrypted object: {e}")))?;
    decryptor
        .decrypt(identities.0.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => Error::new(
                Kind::Refused,
                "none of the age identities given can decrypt it",
            )
            .with_hint(format!(
                "set {IDENTITY_ENV} or identity_file to the key whose public key was in `recipients` when it was made"
            )),
            other => Error::integrity(format!("cannot decrypt it: {other}")),
        })
}

/// How to open the objects of `manifest`: nothing for a backup in clear;
/// for an encrypted one, identities that are checked here against its data
/// object's header, so a missing or wrong key fails before anything is
/// created or restored.
pub async fn opener(
    storage: &dyn crate::storage::Storage,
    manifest: &crate::catalog::Manifest,
    identity_file: Option<&Path>,
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
    let identities = Identities::load(identity_file)?.ok_or_else(|| {
        Error::new(
            Kind::Refused,
            format!(
                "backup {} of job {} is encrypted with age, and no identity to decrypt it is given; nothing was changed",
                manifest.id, manifest.job
            ),
        )
        .with_hint(format!(
            "set {IDENTITY_ENV} to the secret key (or the path of its file), or identity_file in the job's `encryption`"
        ))
    })?;
    let identities = Arc::new(identities);
    let object = manifest
        .object(crate::catalog::Role::Data)
        .ok_or_else(|| Error::integrity(format!("backup {}: no data object", manifest.id)))?;
    let key = crate::catalog::backup_prefix(&manifest.job, &manifest.id)?.join(&object.key)?;
    let reader = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let check = identities.clone();
    let label = format!(
        "backup {} ({key} in storage {})",
        manifest.id,
        storage.name()
    );
    tokio::task::spawn_blocking(move || open(reader, &check).map(drop))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_with_the_identity_only() {
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients = Recipients(vec![key.to_public()]);
        let mut sealer = Sealer::new(&recipients).unwrap();
        let plain = b"a marker that must not be stored in clear ".repeat(10_000);
        let mut sealed = Vec::new();
        for part in plain.chunks(70_000) {
            sealed.extend(sealer.seal(part).unwrap());
        }
        sealed.extend(sealer.finish().unwrap());
        assert!(!sealed.windows(8).any(|w| w == b"a marker"));
        let mut out = Vec::new();
        open(&sealed[..], &Identities(vec![key]))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
        let Err(wrong) = open(&sealed[..], &Identities(vec![other])) else {
            panic!("opened with the wrong key")
        };
        assert_eq!(wrong.kind(), Kind::Refused);
        assert!(format!("{:?}", Identities(vec![])).contains("redacted"));
    }

    #[test]
    fn recipients_and_identities_are_checked_without_echoing_secrets() {
        assert!(
            Recipients::parse(["age1nope"])
                .unwrap_err()
                .contains("age1nope")
        );
        let key = age::x25519::Identity::generate();
        let public = key.to_public().to_string();
        assert!(Recipients::parse_file(&format!("# ops\n{public}\n\n")).is_ok());
        let secret = "AGE-SECRET-KEY-1NOTAKEY";
        let e = Identities::parse(secret, "the env").unwrap_err();
        assert!(!e.to_string().contains(secret), "{e}");
    }
}
