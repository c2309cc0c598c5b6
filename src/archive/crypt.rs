//! The encryption stage: age (X25519) between compression and the stored
//! digest. The stored SHA-256 covers the ciphertext, the raw SHA-256 the
//! plaintext; the manifest names the encryption, never a key.
//!
//! The keys, and where they come from, are `crate::keys`'s; how a backup's
//! keys are checked before a restore begins is `crate::catalog::opener`'s.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::sync::Arc;

use crate::error::{Error, Kind, Result};
use crate::keys::{IDENTITY_ENV, Identities, Recipients, SCRYPT_MAX_WORK_FACTOR};

/// What the manifest's `encryption` says of an encrypted backup.
pub const AGE: &str = "age";
/// The suffix of an encrypted object's name.
pub const EXTENSION: &str = "age";
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

/// The encryption stage of a job's objects. A passphrase is read here,
/// when a backup needs it, not when the job file is loaded.
pub fn sealing(encryption: Option<&crate::model::EncryptionSpec>) -> Result<Crypt> {
    let Some(e) = encryption else {
        return Ok(Crypt::None);
    };
    match (&e.recipients, &e.passphrase) {
        (Some(recipients), _) => Ok(Crypt::Seal(recipients.clone())),
        (None, Some(passphrase)) => Ok(Crypt::Seal(Arc::new(Recipients::passphrase(
            passphrase.resolve()?,
        )))),
        (None, None) => Err(Error::internal(
            "an encryption with neither recipients nor a passphrase",
        )),
    }
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
        let encryptor = recipients.encryptor()?;
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
    let scrypt = identities.scrypt();
    let passphrase_only = decryptor.is_scrypt();
    let keys = identities.x25519().iter().map(|i| i as &dyn age::Identity);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_with_the_identity_only() {
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let recipients = Recipients::parse([key.to_public().to_string().as_str()]).unwrap();
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
        let passphrase = crate::secret::Secret::new("correct horse battery staple");
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
}
