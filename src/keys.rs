//! age keys: whom backups are sealed to, and what opens them.
//!
//! Recipients (public keys) encrypt, on the hosts that take backups;
//! identities (secret keys) decrypt, only where restores, verifies and drills
//! run. An identity comes from `BACKUP_AGE_IDENTITY` (the key itself, or the
//! path of a file holding it) or the job's `identity_file`; a file others may
//! read is refused, as libpq refuses such a `.pgpass`.
//!
//! Or a passphrase (age's scrypt recipient), for those coming from
//! pgBackRest's `cipher-pass`: one secret that both encrypts and decrypts,
//! so it must be on every host that takes backups, and a stolen job host
//! can read them all. age allows a passphrase only as the sole recipient.
//!
//! Parsed here, below the model that holds them; the encryption stage that
//! uses them is `crate::archive::crypt`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::secret::{Secret, SecretRef, read_private};

/// The environment variable an identity may come from.
pub const IDENTITY_ENV: &str = "BACKUP_AGE_IDENTITY";

/// scrypt's cost in passphrase mode, as log2(N): 256 MiB and about half a
/// second per object here. age would calibrate it to a second of the host's
/// time, which on a fast host means 512 MiB or more per object: too much to
/// take on the database's machine at 3 a.m.
const SCRYPT_WORK_FACTOR: u8 = 18;
/// The most a backup's scrypt may cost to open: more is not ours, and could
/// be a header crafted to exhaust the restoring host.
pub const SCRYPT_MAX_WORK_FACTOR: u8 = 20;

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
    pub fn passphrase(passphrase: &Secret) -> Self {
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

    /// age's encryptor to these recipients.
    pub(crate) fn encryptor(&self) -> Result<age::Encryptor> {
        match &self.0 {
            Sealing::Keys(keys) => {
                age::Encryptor::with_recipients(keys.iter().map(|r| r as &dyn age::Recipient))
                    .map_err(|e| Error::internal(format!("age: {e}")))
            }
            Sealing::Passphrase(passphrase) => {
                let mut recipient = age::scrypt::Recipient::new(passphrase.clone());
                recipient.set_work_factor(SCRYPT_WORK_FACTOR);
                age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                    .map_err(|e| Error::internal(format!("age: {e}")))
            }
        }
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
    pub fn load(
        passphrase: Option<&SecretRef>,
        identity_file: Option<&Path>,
    ) -> Result<Option<Self>> {
        // Read only now, when a backup is opened: a job's passphrase need
        // not be on a host that lists or prunes.
        let passphrase = passphrase
            .map(|p| {
                p.resolve()
                    .map(|p| age::secrecy::SecretString::from(p.expose().to_owned()))
            })
            .transpose()?;
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

    /// The X25519 keys, for age's decryptor.
    pub(crate) fn x25519(&self) -> &[age::x25519::Identity] {
        &self.keys
    }

    /// The passphrase as age's scrypt identity, refusing a work factor above
    /// [`SCRYPT_MAX_WORK_FACTOR`].
    pub(crate) fn scrypt(&self) -> Option<age::scrypt::Identity> {
        self.passphrase.clone().map(|p| {
            let mut identity = age::scrypt::Identity::new(p);
            identity.set_max_work_factor(SCRYPT_MAX_WORK_FACTOR);
            identity
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
