//! The names of WAL files, as PostgreSQL writes them, and of the objects that
//! hold them in the archive (DESIGN.md, "Physical backups and the WAL archive"):
//!
//! ```text
//! <job>/wal/<TLI+LOG 16 hex>/<segment>-<raw sha256>.<ext>   a segment, .partial or .backup file
//! <job>/wal/history/<TLI>.history-<raw sha256>.<ext>        a timeline history file
//! ```
//!
//! `<ext>` is the compression's (`zst`, `gz`, or nothing) then `age` when
//! encrypted: a reader decodes by the name, whatever the job says today.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::Compression;
use crate::storage::Key;

/// The directory under a job that holds its WAL archive.
pub const WAL_DIR: &str = "wal";
/// Under [`WAL_DIR`]: the timeline history files.
pub const HISTORY_DIR: &str = "history";
/// Under [`WAL_DIR`]: one `<file>.json` marker per segment `wal push`
/// dropped rather than fill the server's disk (`wal_queue_max`).
pub const DROPPED_DIR: &str = "dropped";
/// PostgreSQL's default `wal_segment_size`.
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A write-ahead log location, `X/Y` as PostgreSQL prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The segment this location is in.
    pub fn segment(self, timeline: u32, segment_size: u64) -> Segment {
        Segment {
            timeline,
            number: self.0 / segment_size.max(1),
        }
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = Error;
    fn from_str(s: &str) -> Result<Lsn> {
        let bad = || Error::internal(format!("'{s}' is not a WAL location (like 0/3000028)"));
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn(hi << 32 | lo))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Lsn, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One WAL segment: a timeline and the segment's number counted from the
/// start of the log (`LSN / wal_segment_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

impl Segment {
    /// Segments per 4 GiB "log" file number: the third part of a name counts to this.
    pub fn per_log(segment_size: u64) -> u64 {
        0x1_0000_0000 / segment_size.max(1)
    }

    /// `TTTTTTTTLLLLLLLLSSSSSSSS`, as in `pg_wal/`.
    pub fn name(self, segment_size: u64) -> String {
        let per_log = Segment::per_log(segment_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_log,
            self.number % per_log
        )
    }

    /// Parses a 24-hex-digit segment name.
    pub fn parse(name: &str, segment_size: u64) -> Option<Segment> {
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..], 16).ok()?;
        let per_log = Segment::per_log(segment_size);
        if seg >= per_log {
            return None;
        }
        Some(Segment {
            timeline,
            number: log * per_log + seg,
        })
    }

    pub fn next(self) -> Segment {
        Segment {
            timeline: self.timeline,
            number: self.number + 1,
        }
    }

    /// The first location in this segment.
    pub fn start(self, segment_size: u64) -> Lsn {
        Lsn(self.number * segment_size)
    }
}

/// A file PostgreSQL hands to `archive_command` or asks of `restore_command`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    /// `000000010000000000000003`: kept as its name, as the segment size
    /// that gives it a number is not known to every caller.
    Segment(String),
    /// `000000010000000000000003.partial`, left by a promoted standby.
    Partial(String),
    /// `000000010000000000000003.00000028.backup`: a base backup's label.
    Backup(String),
    /// `00000002.history`: how a timeline branched off its parent.
    History(u32),
}

fn is_upper_hex(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

impl WalFile {
    /// Parses the file name PostgreSQL uses (`%f`); `None` for anything else.
    pub fn parse(name: &str) -> Option<WalFile> {
        let segment = |s: &str| s.len() == 24 && is_upper_hex(s);
        if segment(name) {
            return Some(WalFile::Segment(name.to_owned()));
        }
        if let Some(s) = name.strip_suffix(".partial")
            && segment(s)
        {
            return Some(WalFile::Partial(s.to_owned()));
        }
        if let Some(rest) = name.strip_suffix(".backup")
            && let Some((s, offset)) = rest.split_once('.')
            && segment(s)
            && offset.len() == 8
            && is_upper_hex(offset)
        {
            return Some(WalFile::Backup(name.to_owned()));
        }
        if let Some(tli) = name.strip_suffix(".history")
            && tli.len() == 8
            && is_upper_hex(tli)
        {
            return u32::from_str_radix(tli, 16).ok().map(WalFile::History);
        }
        None
    }

    /// The name PostgreSQL gives it.
    pub fn name(&self) -> String {
        match self {
            WalFile::Segment(s) => s.clone(),
            WalFile::Partial(s) => format!("{s}.partial"),
            WalFile::Backup(name) => name.clone(),
            WalFile::History(tli) => format!("{tli:08X}.history"),
        }
    }

    /// The 24-digit segment name this file belongs to; `None` for history.
    pub fn segment_name(&self) -> Option<&str> {
        match self {
            WalFile::Segment(s) | WalFile::Partial(s) => Some(s),
            WalFile::Backup(name) => Some(&name[..24]),
            WalFile::History(_) => None,
        }
    }

    /// The directory under `<job>/wal/` that holds it.
    fn directory(&self) -> String {
        match self.segment_name() {
            Some(s) => s[..16].to_owned(),
            None => HISTORY_DIR.to_owned(),
        }
    }

    /// `<job>/wal/<dir>`: the prefix to list to find this file.
    pub fn prefix(&self, job: &str) -> Result<Key> {
        wal_prefix(job)?.join(&self.directory())
    }

    /// Where this file is stored with raw digest `sha256`.
    pub fn key(
        &self,
        job: &str,
        sha256: &str,
        compression: Compression,
        encrypted: bool,
    ) -> Result<Key> {
        let mut name = format!("{}-{sha256}", self.name());
        if let Some(ext) = compression.extension() {
            name = format!("{name}.{ext}");
        }
        if encrypted {
            name = format!("{name}.{}", crate::archive::crypt::EXTENSION);
        }
        self.prefix(job)?.join(&name)
    }
}

impl fmt::Display for WalFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// `<job>/wal`.
pub fn wal_prefix(job: &str) -> Result<Key> {
    Key::new(job)?.join(WAL_DIR)
}

/// An object found in a job's WAL archive, read back from its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub file: WalFile,
    /// SHA-256 of the raw bytes, from the name.
    pub sha256: String,
    /// How it was stored: the compression (level unknown, and unneeded to
    /// read it) and whether it is sealed with age.
    pub compression: Compression,
    pub encrypted: bool,
    pub key: Key,
    pub stored_size: u64,
}

impl Archived {
    /// Reads an object's key back; `None` for what is not one of ours
    /// (a temporary file of a local disk, another tool's file).
    pub fn parse(key: &Key, stored_size: u64) -> Option<Archived> {
        let mut name = key.file_name();
        let encrypted = match name.strip_suffix(&format!(".{}", crate::archive::crypt::EXTENSION)) {
            Some(rest) => {
                name = rest;
                true
            }
            None => false,
        };
        let compression = if let Some(rest) = name.strip_suffix(".zst") {
            name = rest;
            Compression::Zstd(Compression::DEFAULT_ZSTD_LEVEL)
        } else if let Some(rest) = name.strip_suffix(".gz") {
            name = rest;
            Compression::Gzip(Compression::DEFAULT_GZIP_LEVEL)
        } else {
            Compression::None
        };
        let (file, sha256) = name.rsplit_once('-')?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        Some(Archived {
            file: WalFile::parse(file)?,
            sha256: sha256.to_owned(),
            compression,
            encrypted,
            key: key.clone(),
            stored_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_reads_and_prints_as_postgresql_does() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn(0));
        for bad in ["", "0", "/1", "1/", "x/1", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_names_follow_the_segment_size() {
        let size = DEFAULT_SEGMENT_SIZE;
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        let seg = lsn.segment(1, size);
        assert_eq!(seg.name(size), "0000000100000016000000B3");
        assert_eq!(Segment::parse("0000000100000016000000B3", size), Some(seg));
        assert_eq!(
            Segment::parse("0000000100000016000000FF", size)
                .unwrap()
                .next()
                .name(size),
            "000000010000001700000000"
        );
        // 1 GiB segments: four to a log.
        let big = 1 << 30;
        assert_eq!(Segment::parse("000000010000000000000004", big), None);
        assert_eq!(
            Segment::parse("000000010000000000000003", big)
                .unwrap()
                .next()
                .name(big),
            "000000010000000100000000"
        );
    }

    #[test]
    fn wal_files_are_told_apart_by_name() {
        let seg = "000000010000000000000003";
        assert_eq!(WalFile::parse(seg), Some(WalFile::Segment(seg.into())));
        assert_eq!(
            WalFile::parse(&format!("{seg}.partial")),
            Some(WalFile::Partial(seg.into()))
        );
        let label = format!("{seg}.00000028.backup");
        assert_eq!(WalFile::parse(&label), Some(WalFile::Backup(label.clone())));
        assert_eq!(
            WalFile::parse("0000000A.history"),
            Some(WalFile::History(10))
        );
        for bad in [
            "00000001000000000000000",
            "00000001000000000000000g",
            "000000010000000000000003.tmp",
            "0000000a.history",
            "../etc/passwd",
            "archive_status",
        ] {
            assert_eq!(WalFile::parse(bad), None, "{bad}");
        }
        for f in [
            WalFile::Segment(seg.into()),
            WalFile::Partial(seg.into()),
            WalFile::Backup(label),
            WalFile::History(2),
        ] {
            assert_eq!(WalFile::parse(&f.name()), Some(f));
        }
    }

    #[test]
    fn keys_carry_the_digest_and_read_back() {
        let sha = "ab".repeat(32);
        let seg = WalFile::Segment("000000010000000200000003".into());
        let key = seg.key("app", &sha, Compression::Zstd(3), true).unwrap();
        assert_eq!(
            key.as_str(),
            format!("app/wal/0000000100000002/000000010000000200000003-{sha}.zst.age")
        );
        let back = Archived::parse(&key, 10).unwrap();
        assert_eq!(back.file, seg);
        assert_eq!(back.sha256, sha);
        assert!(back.encrypted);
        assert_eq!(back.compression.name(), "zstd");
        let history = WalFile::History(2)
            .key("app", &sha, Compression::None, false)
            .unwrap();
        assert_eq!(
            history.as_str(),
            format!("app/wal/history/00000002.history-{sha}")
        );
        assert_eq!(
            Archived::parse(&history, 1).unwrap().file,
            WalFile::History(2)
        );
        let tmp = Key::new(format!("app/wal/history/00000002.history-{sha}.tmp-1")).unwrap();
        assert_eq!(Archived::parse(&tmp, 1), None);
    }
}
