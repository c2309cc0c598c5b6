//! A physical base backup checked against its own `backup_manifest`, as
//! `pg_verifybackup` does, while the tar streams past: `backup verify`
//! reads the stored object once, and this is one more sink on that read.
//!
//! `pg_basebackup -Ft -D -` writes one tar whose LAST member is
//! `backup_manifest`: a JSON list of every file with its size and checksum
//! (CRC32C unless `--manifest-checksums` said otherwise), the WAL the backup
//! needs, and a SHA-256 of the manifest itself. The files come before the
//! list, so each file's size and checksum are computed as it streams (with
//! the algorithm the caller expects, which the job's manifest records), kept,
//! and compared with the list once it arrives. What is checked:
//!
//! - the manifest's own checksum (the SHA-256 of its text up to the line
//!   that holds it);
//! - every listed file is in the tar, with its size and checksum;
//! - no file is in the tar that the list lacks, except what
//!   `pg_verifybackup` ignores too: `backup_manifest`, `pg_wal/`,
//!   `postgresql.auto.conf`, `recovery.signal`, `standby.signal` (which
//!   `pg_basebackup -R` writes or changes after the list was made);
//! - in a version 2 manifest, that `global/pg_control` is of the cluster the
//!   manifest names.
//!
//! Memory: one file's checksum state at a time, plus a (path, size,
//! checksum) record per file and the manifest's text. Both grow with the
//! number of files in the cluster (some 200 bytes each), never with the size
//! of the data.

use std::collections::HashMap;
use std::io::{Read, Write};

use serde::Deserialize;
use sha2::Digest;

use crate::error::{Error, Kind, Result};
use crate::wal::Lsn;

/// The name of the manifest inside the tar.
pub const BACKUP_MANIFEST: &str = "backup_manifest";

/// A manifest larger than this is not one a cluster we back up would have
/// (some five million files).
const MANIFEST_LIMIT: u64 = 1 << 30;

/// Paths `pg_verifybackup` leaves out of its comparison, with what is
/// under them.
const IGNORED: [&str; 5] = [
    BACKUP_MANIFEST,
    "pg_wal",
    "postgresql.auto.conf",
    "recovery.signal",
    "standby.signal",
];

/// The control file, whose first eight bytes are the cluster's
/// `system_identifier`.
const CONTROL_FILE: &str = "global/pg_control";

/// How a `backup_manifest` checksums its files (`Checksum-Algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Algorithm {
    None,
    Crc32c,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    /// Reads a name as PostgreSQL writes it (`CRC32C`), in any case.
    pub fn parse(name: &str) -> Option<Algorithm> {
        Some(match name.to_ascii_uppercase().as_str() {
            "NONE" => Algorithm::None,
            "CRC32C" => Algorithm::Crc32c,
            "SHA224" => Algorithm::Sha224,
            "SHA256" => Algorithm::Sha256,
            "SHA384" => Algorithm::Sha384,
            "SHA512" => Algorithm::Sha512,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::None => "NONE",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Sha224 => "SHA224",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha384 => "SHA384",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One file's checksum, as it streams.
enum Hasher {
    None,
    Crc32c(crc_fast::Digest),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::None => Hasher::None,
            Algorithm::Crc32c => {
                Hasher::Crc32c(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi))
            }
            Algorithm::Sha224 => Hasher::Sha224(sha2::Sha224::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::None => {}
            Hasher::Crc32c(d) => d.update(bytes),
            Hasher::Sha224(d) => d.update(bytes),
            Hasher::Sha256(d) => d.update(bytes),
            Hasher::Sha384(d) => d.update(bytes),
            Hasher::Sha512(d) => d.update(bytes),
        }
    }

    /// The checksum's bytes in the order the manifest prints them. For
    /// CRC32C that is the order of the server's memory (PostgreSQL copies
    /// the `uint32` as it lies): little-endian on the machines it runs on.
    fn finish(self) -> Box<[u8]> {
        match self {
            Hasher::None => Box::new([]),
            Hasher::Crc32c(d) => Box::new(crc32c_bytes(d.finalize())),
            Hasher::Sha224(d) => d.finalize().to_vec().into(),
            Hasher::Sha256(d) => d.finalize().to_vec().into(),
            Hasher::Sha384(d) => d.finalize().to_vec().into(),
            Hasher::Sha512(d) => d.finalize().to_vec().into(),
        }
    }
}

fn crc32c_bytes(crc: u64) -> [u8; 4] {
    // The digest keeps its state in a u64; a CRC-32 uses the low half.
    u32::try_from(crc & 0xFFFF_FFFF)
        .unwrap_or_default()
        .to_le_bytes()
}

/// A range of WAL the backup needs, from the manifest's `WAL-Ranges`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalRange {
    pub timeline: u32,
    pub start: Lsn,
    pub end: Lsn,
}

/// What a base backup that matches its manifest holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Files checked against the manifest: its whole list.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How the manifest checksums them.
    pub algorithm: Algorithm,
    pub manifest_version: u32,
    /// From a version 2 manifest (PostgreSQL 17 on).
    pub system_identifier: Option<u64>,
    pub wal_ranges: Vec<WalRange>,
}

/// A file as it streamed past.
struct Seen {
    path: Vec<u8>,
    size: u64,
    checksum: Box<[u8]>,
}

/// What the tar held: its files, in order, and the manifest's text.
#[derive(Default)]
struct Streamed {
    files: Vec<Seen>,
    manifest: Option<Vec<u8>>,
    /// The first bytes of `global/pg_control`.
    control: Option<[u8; 8]>,
}

/// Checks the tar `input` (`pg_basebackup -Ft -D -` output) against its
/// `backup_manifest`, computing `algorithm` for every file. Blocking.
///
/// An [`Kind::Integrity`] error names the first file that does not match
/// (tar order, then the manifest's for missing files), expected against
/// actual, and how many others do not.
pub fn check(input: impl Read, algorithm: Algorithm) -> Result<Summary> {
    let streamed = stream(input, algorithm)?;
    compare(streamed, algorithm)
}

/// Reads the tar to its end: every file's size and checksum, and the
/// manifest.
fn stream(input: impl Read, algorithm: Algorithm) -> Result<Streamed> {
    let mut archive = tar::Archive::new(input);
    let mut out = Streamed::default();
    let broken = |after: usize, e: std::io::Error| {
        Error::integrity(format!("the tar does not read after {after} file(s): {e}"))
    };
    let entries = archive.entries().map_err(|e| broken(0, e))?;
    let mut buf = vec![0u8; crate::archive::CHUNK];
    for entry in entries {
        let mut entry = entry.map_err(|e| broken(out.files.len(), e))?;
        let kind = entry.header().entry_type();
        // Only files are listed: `pg_tblspc/` links and directories are
        // not, and extension headers were read into the next entry.
        if kind.is_dir()
            || kind.is_symlink()
            || kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            continue;
        }
        let path = canonical(&entry.path_bytes());
        if path == BACKUP_MANIFEST.as_bytes() {
            if entry.size() > MANIFEST_LIMIT {
                return Err(Error::integrity(format!(
                    "its {BACKUP_MANIFEST} is {} bytes, more than any cluster's",
                    entry.size()
                )));
            }
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| broken(out.files.len(), e))?;
            out.manifest = Some(text);
            continue;
        }
        if ignored(&path) {
            // Its bytes are skipped by the next `entries` step.
            continue;
        }
        let mut hasher = Hasher::new(algorithm);
        let mut size = 0u64;
        let is_control = path == CONTROL_FILE.as_bytes();
        let mut head = Vec::new();
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(broken(out.files.len(), e)),
            };
            hasher.update(&buf[..n]);
            if is_control && head.len() < 8 {
                head.extend_from_slice(&buf[..n.min(8 - head.len())]);
            }
            size += n as u64;
        }
        if is_control {
            out.control = head.try_into().ok();
        }
        out.files.push(Seen {
            path,
            size,
            checksum: hasher.finish(),
        });
    }
    // The end-of-archive blocks and whatever padding follows them: read,
    // so the writer feeding us never sees a closed pipe.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink()).map_err(|e| {
        Error::io(
            Kind::Integrity,
            "reading the end of the base backup's tar",
            e,
        )
    })?;
    Ok(out)
}

/// A member's path as the manifest spells it: `./`, `.` and empty
/// components dropped, `..` applied (PostgreSQL's `canonicalize_path`).
fn canonical(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if parts.last().is_some_and(|p| *p != b"..") => {
                parts.pop();
            }
            _ => parts.push(part),
        }
    }
    parts.join(&b'/')
}

/// Whether `pg_verifybackup` leaves `path` out (it or a directory above it
/// is on its list).
fn ignored(path: &[u8]) -> bool {
    IGNORED.iter().any(|i| {
        let i = i.as_bytes();
        path.starts_with(i) && (path.len() == i.len() || path[i.len()] == b'/')
    })
}

/// `backup_manifest` as PostgreSQL writes it (`src/backend/backup/backup_manifest.c`).
#[derive(Deserialize)]
struct BackupManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u32,
    #[serde(rename = "System-Identifier")]
    system_identifier: Option<u64>,
    #[serde(rename = "Files")]
    files: Vec<ManifestFile>,
    #[serde(rename = "WAL-Ranges", default)]
    wal_ranges: Vec<ManifestWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: String,
}

#[derive(Deserialize)]
struct ManifestFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    /// Hex of a path that is not UTF-8.
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
struct ManifestWalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

fn bad_manifest(why: impl std::fmt::Display) -> Error {
    Error::integrity(format!("its {BACKUP_MANIFEST} does not read: {why}"))
}

/// The manifest's own checksum: SHA-256 of everything up to and including
/// the newline before its last line, which holds the checksum.
fn check_manifest_checksum(text: &[u8], expected: &str) -> Result<()> {
    let newlines: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    let [.., penultimate, last] = newlines[..] else {
        return Err(bad_manifest("it has fewer than 2 lines"));
    };
    if last != text.len() - 1 {
        return Err(bad_manifest("its last line does not end in a newline"));
    }
    let actual = crate::archive::hex(&sha2::Sha256::digest(&text[..=penultimate]));
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(Error::integrity(format!(
            "its {BACKUP_MANIFEST} is damaged: its text has SHA-256 {actual}, its \
             Manifest-Checksum says {expected}"
        )));
    }
    Ok(())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One file that does not match, in the operator's words.
struct Mismatch {
    path: String,
    what: String,
}

/// Compares what streamed with the manifest.
fn compare(streamed: Streamed, algorithm: Algorithm) -> Result<Summary> {
    let text = streamed.manifest.ok_or_else(|| {
        Error::integrity(format!(
            "the tar holds no {BACKUP_MANIFEST}: it is not the output of pg_basebackup \
             (version 13 or later, with its manifest)"
        ))
    })?;
    let manifest: BackupManifest = serde_json::from_slice(&text).map_err(bad_manifest)?;
    if !(1..=2).contains(&manifest.version) {
        return Err(bad_manifest(format!(
            "it is version {}, this version reads 1 and 2",
            manifest.version
        )));
    }
    check_manifest_checksum(&text, &manifest.checksum)?;
    drop(text);

    let mut listed: HashMap<Vec<u8>, usize> = HashMap::with_capacity(manifest.files.len());
    let mut paths = Vec::with_capacity(manifest.files.len());
    for (i, file) in manifest.files.iter().enumerate() {
        let path = match (&file.path, &file.encoded_path) {
            (Some(p), None) => p.as_bytes().to_vec(),
            (None, Some(hex)) => decode_hex(hex)
                .ok_or_else(|| bad_manifest(format!("Encoded-Path '{hex}' is not hex")))?,
            _ => {
                return Err(bad_manifest(
                    "a file has no Path, or both Path and Encoded-Path",
                ));
            }
        };
        if listed.insert(path.clone(), i).is_some() {
            return Err(bad_manifest(format!(
                "it lists {} twice",
                String::from_utf8_lossy(&path)
            )));
        }
        paths.push(path);
    }

    let mut mismatches = Vec::new();
    let mut found = vec![false; manifest.files.len()];
    let mut bytes = 0u64;
    for seen in &streamed.files {
        let name = String::from_utf8_lossy(&seen.path).into_owned();
        let mut bad = |what: String| {
            mismatches.push(Mismatch {
                path: name.clone(),
                what,
            })
        };
        let Some(&i) = listed.get(&seen.path) else {
            bad(format!("is in the tar but not in its {BACKUP_MANIFEST}"));
            continue;
        };
        if std::mem::replace(&mut found[i], true) {
            bad("is in the tar twice".to_owned());
            continue;
        }
        let entry = &manifest.files[i];
        bytes += seen.size;
        if seen.size != entry.size {
            bad(format!(
                "is {} bytes, its {BACKUP_MANIFEST} says {}",
                seen.size, entry.size
            ));
            continue;
        }
        if let Some(what) = checksum_mismatch(entry, seen, algorithm) {
            bad(what);
        }
    }
    for (i, path) in paths.iter().enumerate() {
        if !found[i] && !ignored(path) {
            mismatches.push(Mismatch {
                path: String::from_utf8_lossy(path).into_owned(),
                what: format!("is in its {BACKUP_MANIFEST} but not in the tar"),
            });
        }
    }
    if let (Some(expected), Some(head)) = (manifest.system_identifier, streamed.control)
        && expected != u64::from_le_bytes(head)
        && expected != u64::from_be_bytes(head)
    {
        mismatches.push(Mismatch {
            path: CONTROL_FILE.to_owned(),
            what: format!(
                "is of cluster {}, its {BACKUP_MANIFEST} is of cluster {expected}",
                u64::from_le_bytes(head)
            ),
        });
    }
    if let Some(first) = mismatches.first() {
        let others = match mismatches.len() - 1 {
            0 => String::new(),
            1 => "; 1 other file does not match either".to_owned(),
            n => format!("; {n} other files do not match either"),
        };
        return Err(Error::integrity(format!(
            "{} {}{others}",
            first.path, first.what
        )));
    }

    let wal_ranges = manifest
        .wal_ranges
        .iter()
        .map(|r| {
            Ok(WalRange {
                timeline: r.timeline,
                start: r
                    .start
                    .parse()
                    .map_err(|_| bad_manifest(format!("its WAL range starts at '{}'", r.start)))?,
                end: r
                    .end
                    .parse()
                    .map_err(|_| bad_manifest(format!("its WAL range ends at '{}'", r.end)))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let algorithm_listed = manifest
        .files
        .iter()
        .find_map(|f| f.algorithm.as_deref().and_then(Algorithm::parse))
        .unwrap_or(Algorithm::None);
    Ok(Summary {
        files: found.iter().filter(|f| **f).count() as u64,
        bytes,
        algorithm: algorithm_listed,
        manifest_version: manifest.version,
        system_identifier: manifest.system_identifier,
        wal_ranges,
    })
}

/// Why `seen`'s checksum is not the one `entry` lists; `None` when it is
/// (or the manifest lists none).
fn checksum_mismatch(entry: &ManifestFile, seen: &Seen, computed: Algorithm) -> Option<String> {
    let listed = match entry.algorithm.as_deref() {
        None => Algorithm::None,
        Some(name) => match Algorithm::parse(name) {
            Some(a) => a,
            None => {
                return Some(format!(
                    "has a checksum of unknown algorithm '{name}' in its {BACKUP_MANIFEST}"
                ));
            }
        },
    };
    let expected_text = entry.checksum.as_deref().unwrap_or("");
    if listed == Algorithm::None || expected_text.is_empty() {
        return None;
    }
    if listed != computed {
        return Some(format!(
            "is checksummed with {listed} in its {BACKUP_MANIFEST}, and was read with \
             {computed}, which the backup's manifest.json names"
        ));
    }
    let Some(expected) = decode_hex(expected_text) else {
        return Some(format!(
            "has checksum '{expected_text}' in its {BACKUP_MANIFEST}, which is not hex"
        ));
    };
    let actual = &seen.checksum;
    // A CRC32C from a big-endian server reads the other way round.
    let reversed: Vec<u8> = actual.iter().rev().copied().collect();
    let matches = *expected == **actual || (listed == Algorithm::Crc32c && expected == reversed);
    (!matches).then(|| {
        format!(
            "has {listed} {}, its {BACKUP_MANIFEST} says {}",
            crate::archive::hex(actual),
            expected_text.to_ascii_lowercase()
        )
    })
}

/// [`check`] as a sink: the raw bytes of the tar are written to it as they
/// are read back, and [`Checker::finish`] says what they held. The tar is
/// read on a thread of its own, through a pipe.
pub struct Checker {
    writer: Option<std::io::PipeWriter>,
    reader: std::thread::JoinHandle<Result<Summary>>,
}

impl Checker {
    pub fn start(algorithm: Algorithm) -> Result<Checker> {
        let (reader, writer) =
            std::io::pipe().map_err(|e| Error::io(Kind::Internal, "making a pipe", e))?;
        let reader = std::thread::Builder::new()
            .name("verify-base".into())
            .spawn(move || check(reader, algorithm))
            .map_err(|e| Error::internal(format!("cannot start a thread: {e}")))?;
        Ok(Checker {
            writer: Some(writer),
            reader,
        })
    }

    /// Ends the stream and waits for the verdict.
    pub fn finish(mut self) -> Result<Summary> {
        drop(self.writer.take());
        self.reader
            .join()
            .map_err(|_| Error::internal("checking the base backup's files failed"))?
    }
}

impl Write for Checker {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // A reader that stopped (a broken tar) says why in finish(); the
        // rest of the stream is still hashed by the caller.
        if let Some(writer) = &mut self.writer
            && writer.write_all(buf).is_err()
        {
            self.writer = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A base backup built by hand, for the unit tests here and of `verify`.
#[cfg(test)]
pub(crate) mod samples {
    use super::*;

    /// A manifest of `files` as PostgreSQL writes it, its checksum included.
    pub fn manifest(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut text = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n");
        let lines: Vec<String> = files
            .iter()
            .map(|(path, bytes)| {
                format!(
                    "{{ \"Path\": \"{path}\", \"Size\": {}, \"Last-Modified\": \"2026-01-01 00:00:00 GMT\", \
                     \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
                    bytes.len(),
                    crate::archive::hex(&crc32c_bytes(u64::from(crc_fast::crc32_iscsi(bytes))))
                )
            })
            .collect();
        text.push_str(&lines.join(",\n"));
        text.push_str(
            "\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }\n],\n",
        );
        let sum = crate::archive::sha256_hex(text.as_bytes());
        text.push_str(&format!("\"Manifest-Checksum\": \"{sum}\"}}\n"));
        text.into_bytes()
    }

    /// A tar of `files` (with a directory and the pg_wal PostgreSQL sends)
    /// and `manifest` last, as `pg_basebackup -Ft -D -` writes it.
    pub fn tar(files: &[(&str, &[u8])], manifest: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut append = |path: &str, bytes: &[u8], kind: tar::EntryType| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, bytes).unwrap();
        };
        append("base/", b"", tar::EntryType::Directory);
        append("./pg_wal/archive_status/", b"", tar::EntryType::Directory);
        for (path, bytes) in files {
            append(path, bytes, tar::EntryType::Regular);
        }
        append(BACKUP_MANIFEST, manifest, tar::EntryType::Regular);
        b.into_inner().unwrap()
    }

    pub const FILES: &[(&str, &[u8])] = &[
        ("backup_label", b"START WAL LOCATION: 0/2000028\n"),
        ("PG_VERSION", b"15\n"),
        ("base/1/1259", &[7u8; 8192]),
        ("tablespace_map", b""),
    ];
}

#[cfg(test)]
mod tests {
    use super::samples::{FILES, manifest, tar};
    use super::*;

    fn check_bytes(bytes: &[u8]) -> Result<Summary> {
        check(bytes, Algorithm::Crc32c)
    }

    #[test]
    fn crc32c_prints_as_postgresql_prints_it() {
        // From a real backup_manifest: "15\n" (PG_VERSION) and an empty file.
        assert_eq!(
            crate::archive::hex(&crc32c_bytes(u64::from(crc_fast::crc32_iscsi(b"15\n")))),
            "8a744722"
        );
        let mut h = Hasher::new(Algorithm::Crc32c);
        h.update(b"1");
        h.update(b"5\n");
        assert_eq!(crate::archive::hex(&h.finish()), "8a744722");
        assert_eq!(
            crate::archive::hex(&Hasher::new(Algorithm::Crc32c).finish()),
            "00000000"
        );
    }

    #[test]
    fn a_backup_that_matches_its_manifest_passes() {
        let summary = check_bytes(&tar(FILES, &manifest(FILES))).unwrap();
        assert_eq!(summary.files, 4);
        assert_eq!(summary.bytes, 30 + 3 + 8192);
        assert_eq!(summary.algorithm, Algorithm::Crc32c);
        assert_eq!(
            summary.wal_ranges,
            vec![WalRange {
                timeline: 1,
                start: "0/2000028".parse().unwrap(),
                end: "0/2000100".parse().unwrap(),
            }]
        );
        // Through the sink, written in odd pieces.
        let bytes = tar(FILES, &manifest(FILES));
        let mut checker = Checker::start(Algorithm::Crc32c).unwrap();
        for piece in bytes.chunks(1000) {
            checker.write_all(piece).unwrap();
        }
        assert_eq!(checker.finish().unwrap(), summary);
    }

    #[test]
    fn a_changed_byte_names_the_file_and_both_checksums() {
        let mut changed = [7u8; 8192];
        changed[4000] = 8;
        let mut files = FILES.to_vec();
        files[2] = ("base/1/1259", &changed);
        let err = check_bytes(&tar(&files, &manifest(FILES))).unwrap_err();
        assert_eq!(err.kind(), Kind::Integrity);
        let expected = crate::archive::hex(&crc32c_bytes(u64::from(crc_fast::crc32_iscsi(
            &[7u8; 8192],
        ))));
        let actual = crate::archive::hex(&crc32c_bytes(u64::from(crc_fast::crc32_iscsi(&changed))));
        assert_eq!(
            err.message(),
            format!("base/1/1259 has CRC32C {actual}, its backup_manifest says {expected}")
        );
    }

    #[test]
    fn a_missing_file_an_extra_file_and_a_wrong_size_are_named() {
        let err = check_bytes(&tar(&FILES[..3], &manifest(FILES))).unwrap_err();
        assert_eq!(
            err.message(),
            "tablespace_map is in its backup_manifest but not in the tar"
        );
        let mut files = FILES.to_vec();
        files.insert(1, ("base/1/99999", b"x"));
        let err = check_bytes(&tar(&files, &manifest(FILES))).unwrap_err();
        assert_eq!(
            err.message(),
            "base/1/99999 is in the tar but not in its backup_manifest"
        );
        let mut files = FILES.to_vec();
        files[1] = ("PG_VERSION", b"15\n\n");
        files[0] = ("backup_label", b"changed");
        let err = check_bytes(&tar(&files, &manifest(FILES))).unwrap_err();
        assert!(
            err.message()
                .starts_with("backup_label is 7 bytes, its backup_manifest says 30; 1 other file"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn what_pg_verifybackup_ignores_is_ignored() {
        let mut files = FILES.to_vec();
        files.push(("pg_wal/000000010000000000000002", b"wal"));
        files.push(("postgresql.auto.conf", b"primary_conninfo = 'x'\n"));
        files.push(("standby.signal", b""));
        // Listed, and changed by pg_basebackup -R: not compared either.
        let mut listed = FILES.to_vec();
        listed.push(("postgresql.auto.conf", b"# empty\n"));
        let summary = check_bytes(&tar(&files, &manifest(&listed))).unwrap();
        assert_eq!(summary.files, 4);
        // Paths are compared as PostgreSQL canonicalizes them.
        let mut files = FILES.to_vec();
        files[2] = ("./base/1/1259", &[7u8; 8192]);
        assert_eq!(
            check_bytes(&tar(&files, &manifest(FILES))).unwrap().files,
            4
        );
    }

    #[test]
    fn a_damaged_manifest_is_refused_before_any_file_is_judged() {
        let good = manifest(FILES);
        // One file's size changed, the checksum line left as it was.
        let text = String::from_utf8(good.clone()).unwrap();
        let forged = text.replacen("\"Size\": 3,", "\"Size\": 4,", 1);
        assert_ne!(forged, text);
        let err = check_bytes(&tar(FILES, forged.as_bytes())).unwrap_err();
        assert_eq!(err.kind(), Kind::Integrity);
        assert!(
            err.message()
                .starts_with("its backup_manifest is damaged: its text has SHA-256"),
            "{}",
            err.message()
        );
        // No newline at the end.
        let err = check_bytes(&tar(FILES, &good[..good.len() - 1])).unwrap_err();
        assert!(
            err.message().contains("does not end in a newline"),
            "{}",
            err.message()
        );
        // No manifest at all.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_path("PG_VERSION").unwrap();
        h.set_cksum();
        b.append(&h, &b"15\n"[..]).unwrap();
        let err = check_bytes(&b.into_inner().unwrap()).unwrap_err();
        assert!(
            err.message().contains("holds no backup_manifest"),
            "{}",
            err.message()
        );
        // Not a tar.
        let err = check_bytes(&[1u8; 2048]).unwrap_err();
        assert_eq!(err.kind(), Kind::Integrity);
        assert!(
            err.message().contains("the tar does not read"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn other_algorithms_and_none_are_read() {
        let bytes: &[u8] = b"15\n";
        let sha = crate::archive::sha256_hex(bytes);
        let mut text = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 2,\n\"System-Identifier\": 7,\n\"Files\": [\n\
             {{ \"Path\": \"PG_VERSION\", \"Size\": 3, \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{sha}\" }},\n\
             {{ \"Encoded-Path\": \"{}\", \"Size\": 1 }}\n],\n\"WAL-Ranges\": [],\n",
            crate::archive::hex(b"base/1/\xff")
        );
        text.push_str(&format!(
            "\"Manifest-Checksum\": \"{}\"}}\n",
            crate::archive::sha256_hex(text.as_bytes())
        ));
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [
            (&b"PG_VERSION"[..], bytes),
            (&b"base/1/\xff"[..], &b"x"[..]),
            (BACKUP_MANIFEST.as_bytes(), text.as_bytes()),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let tarred = b.into_inner().unwrap();
        let summary = check(&tarred[..], Algorithm::Sha256).unwrap();
        assert_eq!(summary.files, 2);
        assert_eq!(summary.algorithm, Algorithm::Sha256);
        assert_eq!(summary.system_identifier, Some(7));
        // Read with another algorithm than the manifest's: said, not passed.
        let err = check(&tarred[..], Algorithm::Crc32c).unwrap_err();
        assert!(
            err.message().contains("checksummed with SHA256"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn paths_canonicalize_as_postgresql_does() {
        assert_eq!(canonical(b"./base/1//1259"), b"base/1/1259");
        assert_eq!(canonical(b"base/./x/../1259"), b"base/1259");
        assert_eq!(canonical(b"pg_wal/"), b"pg_wal");
        assert!(ignored(b"pg_wal/archive_status/x.ready"));
        assert!(ignored(b"pg_wal"));
        assert!(!ignored(b"pg_wal2"));
        assert!(!ignored(b"base/pg_wal"));
    }
}
