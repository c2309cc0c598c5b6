//! The encryption stage: age (X25519) between compression and the stored
//! digest. The stored SHA-256 covers the ciphertext, the raw SHA-256 the
//! plaintext; the manifest names the encryption, never a key.
//!
//! Keys: recipients (public) encrypt, on the hosts that take backups;
//! identities (secret) decrypt, only where restores, verifies and drills run.
//! An identity comes from `BACKUP_AGE_IDENTITY` (the key itself, or the path
//! of a file holding it) or the job's `identity_file`; a file others may read
//! is refused, as libpq refuses such a `.pgpass`.
//!
//! Or a passphrase (age's scrypt recipient), for those coming from
//! pgBackRest's `cipher-pass`: one secret that both encrypts and decrypts,
//! so it must be on every host that takes backups, and a stolen job host
//! can read them all. age allows a passphrase only as the sole recipient.

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

/// scrypt's cost in passphrase mode, as log2(N): 256 MiB and about half a
/// second per object here. age would calibrate it to a second of the host's
/// time, which on a fast host means 512 MiB or more per object: too much to
/// take on the database's machine at 3 a.m.
const SCRYPT_WORK_FACTOR: u8 = 18;
/// The most a backup's scrypt may cost to open: more is not ours, and could
/// be a header crafted to exhaust the restoring host.
const SCRYPT_MAX_WORK_FACTOR: u8 = 20;

/// Whom objects are encrypted to: public keys, or one passphrase.
#[derive(Clone)]
pub struct Recipients(Sealing);

#[derive(Clone)]
enum Sealing {
    Keys(Vec<age::x25519::Recipient>),
    Passphrase(age::secrecy::SecretString),
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Sealing::Keys(keys) => write!(f, "Recipients({})", keys.len()),
            Sealing::Passphrase(_) => f.write_str("Recipients(passphrase)"),
        }
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
        Ok(Recipients(Sealing::Keys(out)))
    }

    /// Encryption with a passphrase (scrypt).
    pub fn passphrase(passphrase: &crate::model::Secret) -> Self {
        Recipients(Sealing::Passphrase(passphrase.expose().to_owned().into()))
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

/// Secret keys that open objects, and the job's passphrase. Never printed.
#[derive(Clone)]
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    passphrase: Option<age::secrecy::SecretString>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Identities(<{} redacted>{})",
            self.keys.len(),
            if self.passphrase.is_some() {
                ", <passphrase>"
            } else {
                ""
            }
        )
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
        Ok(Identities {
            keys: out,
            passphrase: None,
        })
    }

    /// From `BACKUP_AGE_IDENTITY`, else the job's `identity_file`, with the
    /// job's passphrase if it has one; `None` when there is nothing.
    pub fn load(encryption: Option<&crate::model::EncryptionSpec>) -> Result<Option<Self>> {
        // Read only now, when a backup is opened: a job's passphrase need
        // not be on a host that lists or prunes.
        let passphrase = encryption
            .and_then(|e| e.passphrase.as_ref())
            .map(|p| {
                p.resolve()
                    .map(|p| age::secrecy::SecretString::from(p.expose().to_owned()))
            })
            .transpose()?;
        let identity_file = encryption.and_then(|e| e.identity_file.as_deref());
        // Whatever is wrong with the variable, its value is never repeated:
        // it may be a key with a typo.
        let found = match std::env::var(IDENTITY_ENV) {
            Ok(value) if value.to_ascii_uppercase().contains("AGE-SECRET-KEY-") => {
                Some(Identities::parse(&value, IDENTITY_ENV)?)
            }
            Ok(value) if !value.trim().is_empty() => {
                let path = Path::new(value.trim());
                // A pipe (`<(vault read ...)`) is as good as a file.
                if !path.exists() {
                    return Err(Error::config(format!(
                        "{IDENTITY_ENV} holds no age identity (AGE-SECRET-KEY-1...) and names no file"
                    ))
                    .with_hint(format!(
                        "set {IDENTITY_ENV} to the secret key itself, or to the path of the file holding it"
                    )));
                }
                Some(Identities::from_file(path)?)
            }
            _ => identity_file.map(Identities::from_file).transpose()?,
        };
        Ok(match (found, passphrase) {
            (Some(ids), passphrase) => Some(Identities { passphrase, ..ids }),
            (None, Some(passphrase)) => Some(Identities {
                keys: Vec::new(),
                passphrase: Some(passphrase),
            }),
            (None, None) => None,
        })
    }

    #[cfg(test)]
    pub fn load_from_text_for_tests(key: &age::x25519::Identity) -> Self {
        Identities {
            keys: vec![key.clone()],
            passphrase: None,
        }
    }

    #[cfg(test)]
    pub fn passphrase_for_tests(passphrase: &str) -> Self {
        Identities {
            keys: Vec::new(),
            passphrase: Some(passphrase.to_owned().into()),
        }
    }

    fn from_file(path: &Path) -> Result<Self> {
        let text = read_private(path).map_err(|e| e.context("the age identity"))?;
        Identities::parse(&text, &path.display().to_string())
    }
}

// Identity files are read as every secret file is: refused when shared.
pub use crate::secret::{read_private, refuse_shared_secret};

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
        let encryptor = match &recipients.0 {
            Sealing::Keys(keys) => {
                age::Encryptor::with_recipients(keys.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| Error::internal(format!("age: {e}")))?
            }
            Sealing::Passphrase(passphrase) => {
                let mut recipient = age::scrypt::Recipient::new(passphrase.clone());
                recipient.set_work_factor(SCRYPT_WORK_FACTOR);
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| Error::internal(format!("age: {e}")))?
            }
        };
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
    let scrypt = identities.passphrase.clone().map(|p| {
        let mut identity = age::scrypt::Identity::new(p);
        identity.set_max_work_factor(SCRYPT_MAX_WORK_FACTOR);
        identity
    });
    let passphrase_only = decryptor.is_scrypt();
    let keys = identities.keys.iter().map(|i| i as &dyn age::Identity);
    let scrypt_identity = scrypt.iter().map(|i| i as &dyn age::Identity);
    decryptor
        .decrypt(keys.chain(scrypt_identity))
        .map_err(|e| match e {
            // What a wrong passphrase looks like: the file key does not open.
            age::DecryptError::DecryptionFailed if passphrase_only && scrypt.is_some() => {
                Error::new(Kind::Refused, "the job's passphrase does not decrypt it").with_hint(
                    "set passphrase_env or passphrase_file in the job's `encryption` to the \
                     passphrase it had when the backup was made",
                )
            }
            age::DecryptError::NoMatchingKeys if passphrase_only => Error::new(
                Kind::Refused,
                "it is encrypted with a passphrase, and the job has none",
            )
            .with_hint("set passphrase_env or passphrase_file in the job's `encryption`"),
            age::DecryptError::NoMatchingKeys => Error::new(
                Kind::Refused,
                "none of the age identities given can decrypt it",
            )
            .with_hint(format!(
                "set {IDENTITY_ENV} or identity_file to the key whose public key was in `recipients` when it was made"
            )),
            age::DecryptError::ExcessiveWork { required, .. } => Error::integrity(format!(
                "its passphrase's scrypt work factor is {required}, more than the {SCRYPT_MAX_WORK_FACTOR} \
                 this version opens; it was not made by backup"
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
    encryption: Option<&crate::model::EncryptionSpec>,
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
    let identities = Identities::load(encryption)?.ok_or_else(|| {
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
    // The object a restore reads: a dump's data, or a files job's tar.
    let object = manifest
        .object(crate::catalog::Role::Data)
        .or_else(|| manifest.object(crate::catalog::Role::Files))
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
        let recipients = Recipients(Sealing::Keys(vec![key.to_public()]));
        let mut sealer = Sealer::new(&recipients).unwrap();
        let plain = b"a marker that must not be stored in clear ".repeat(10_000);
        let mut sealed = Vec::new();
        for part in plain.chunks(70_000) {
            sealed.extend(sealer.seal(part).unwrap());
        }
        sealed.extend(sealer.finish().unwrap());
        assert!(!sealed.windows(8).any(|w| w == b"a marker"));
        let mut out = Vec::new();
        open(&sealed[..], &Identities::load_from_text_for_tests(&key))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
        let Err(wrong) = open(&sealed[..], &Identities::load_from_text_for_tests(&other)) else {
            panic!("opened with the wrong key")
        };
        assert_eq!(wrong.kind(), Kind::Refused);
        let shown = format!("{:?}", Identities::load_from_text_for_tests(&key));
        assert!(
            shown.contains("redacted") && !shown.contains("AGE-SECRET"),
            "{shown}"
        );
    }

    fn seal_all(recipients: &Recipients, plain: &[u8]) -> Vec<u8> {
        let mut sealer = Sealer::new(recipients).unwrap();
        let mut sealed = sealer.seal(plain).unwrap();
        sealed.extend(sealer.finish().unwrap());
        sealed
    }

    #[test]
    fn a_passphrase_seals_and_opens_and_a_wrong_one_is_named() {
        let passphrase = crate::model::Secret::new("correct horse battery staple");
        let recipients = Recipients::passphrase(&passphrase);
        assert!(!format!("{recipients:?}").contains("horse"));
        let plain = b"rows of a table ".repeat(5_000);
        let sealed = seal_all(&recipients, &plain);
        assert!(!sealed.windows(7).any(|w| w == b"rows of"));
        let mut out = Vec::new();
        open(
            &sealed[..],
            &Identities::passphrase_for_tests("correct horse battery staple"),
        )
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
        assert_eq!(out, plain);
        let Err(wrong) = open(
            &sealed[..],
            &Identities::passphrase_for_tests("Tr0ub4dor&3"),
        ) else {
            panic!("opened with the wrong passphrase")
        };
        assert_eq!(wrong.kind(), Kind::Refused);
        assert!(
            wrong.message().contains("passphrase does not decrypt"),
            "{wrong}"
        );
        let key = age::x25519::Identity::generate();
        let Err(none) = open(&sealed[..], &Identities::load_from_text_for_tests(&key)) else {
            panic!("opened without the passphrase")
        };
        assert!(none.message().contains("the job has none"), "{none}");
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
