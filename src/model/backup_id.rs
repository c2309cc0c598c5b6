//! [`BackupId`]: the name of one backup in storage, made of its start time.

use std::fmt;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::error::{Error, Result};

/// The identity of one backup: its UTC start time, `20261122T030000Z`, plus a
/// `-N` suffix when two runs of a job start in the same second. Sorts as text.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
// Read from manifests and records in storage: checked like any input, since
// an id becomes part of object keys.
#[serde(try_from = "String")]
pub struct BackupId(String);

impl TryFrom<String> for BackupId {
    type Error = String;

    fn try_from(text: String) -> std::result::Result<Self, String> {
        BackupId::parse(&text).map_err(|e| e.message().to_owned())
    }
}

impl BackupId {
    pub fn from_start(started_at: Timestamp, suffix: u32) -> Self {
        let base = started_at.strftime("%Y%m%dT%H%M%SZ").to_string();
        if suffix == 0 {
            BackupId(base)
        } else {
            BackupId(format!("{base}-{suffix}"))
        }
    }

    /// Accepts what `from_start` produces, and nothing that could escape a path.
    pub fn parse(text: &str) -> Result<Self> {
        let (base, suffix) = match text.split_once('-') {
            Some((b, s)) => (b, Some(s)),
            None => (text, None),
        };
        let base_ok = base.len() == 16
            && base.as_bytes()[8] == b'T'
            && base.ends_with('Z')
            && base[..8].bytes().all(|b| b.is_ascii_digit())
            && base[9..15].bytes().all(|b| b.is_ascii_digit());
        let suffix_ok =
            suffix.is_none_or(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if base_ok && suffix_ok {
            Ok(BackupId(text.to_owned()))
        } else {
            Err(Error::usage(format!("'{text}' is not a backup id"))
                .with_hint("backup ids look like 20261122T030000Z; `backup list` shows them"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The start time the id was made of.
    pub fn started_at(&self) -> Option<Timestamp> {
        let base = self.0.get(..16)?;
        jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", base)
            .ok()?
            .to_zoned(TimeZone::UTC)
            .ok()
            .map(|z| z.timestamp())
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_round_trip() {
        let t: Timestamp = "2026-11-22T03:00:00Z".parse().unwrap();
        let a = BackupId::from_start(t, 0);
        let b = BackupId::from_start(t, 1);
        assert_eq!(a.as_str(), "20261122T030000Z");
        assert_eq!(b.as_str(), "20261122T030000Z-1");
        assert!(a < b);
        assert_eq!(BackupId::parse(b.as_str()).unwrap(), b);
        assert_eq!(b.started_at(), Some(t));
        for bad in [
            "../x",
            "20261122T030000",
            "20261122T030000Z-",
            "20261122X030000Z",
            "",
        ] {
            assert!(BackupId::parse(bad).is_err(), "{bad}");
        }
    }
}
