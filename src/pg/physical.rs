//! The cluster as a base backup sees it, and what `pg_basebackup` says of
//! the backup it took.
//!
//! - [`check_cluster`], before anything is written: the role may
//!   replicate, the WAL is archived (`wal_level`, `archive_mode`), the
//!   server is a primary without tablespaces of its own; and the facts the
//!   manifest records (`wal_segment_size`, `system_identifier`).
//! - While `pg_basebackup` streams: which phase its server side is in
//!   ([`backup_phase`]), to bound its wait for the WAL archive, and how to
//!   end that wait ([`terminate_backend`]).
//! - What it wrote: [`TarScan`] reads the tar's headers as the bytes pass
//!   (no copy, no second read) and keeps the end of its `backup_manifest`,
//!   whose `WAL-Ranges` ([`points_from_manifest`]) say where the backup lies
//!   in the WAL, as its `-v` stderr does ([`points_from_stderr`]).

use std::io::Read;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;

use super::connect::{Connection, ServerVersion, query_error};
use crate::error::{Error, Result};
use crate::model::Database;
use crate::wal::Lsn;

/// The checksums `pg_basebackup` is asked to put in its `backup_manifest`
/// (its default, said out loud so the manifest can record it).
pub const MANIFEST_CHECKSUMS: &str = "CRC32C";
/// The first server whose base backups carry a `backup_manifest`.
pub const MIN_SERVER_MAJOR: u32 = 13;
/// The name of the manifest `pg_basebackup` puts in the tar it writes to stdout.
pub const BACKUP_MANIFEST: &str = "backup_manifest";

/// What a base backup of the cluster needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The cluster's `wal_segment_size`, in bytes.
    pub wal_segment_size: u64,
    /// Set by initdb, the same on every standby: which cluster this is.
    pub system_identifier: String,
}

/// Whether WAL written at this `wal_level` serves archive recovery and base
/// backups. The one rule a base backup and `wal check` both judge by.
pub fn wal_level_archives(value: &str) -> bool {
    matches!(value, "replica" | "logical")
}

/// Whether a server with this `archive_mode` archives its WAL.
pub fn archive_mode_archives(value: &str) -> bool {
    matches!(value, "on" | "always")
}

/// Refuses a cluster a base backup cannot be taken of, or that could not
/// be restored from it; says which setting and what to change. `job` and
/// `db` name the job and its `[databases.*]` entry in messages.
pub async fn check_cluster(
    conn: &Connection,
    server: &ServerVersion,
    db: &Database,
    job: &str,
) -> Result<ClusterFacts> {
    if server.major < MIN_SERVER_MAJOR {
        return Err(Error::refused(format!(
            "job {job}: the server is PostgreSQL {}, and physical backups need {MIN_SERVER_MAJOR} \
             or newer (its base backups carry the backup_manifest they are verified against)",
            server.text
        ))
        .with_hint("back its databases up with type = \"backup\" jobs until it is upgraded"));
    }
    let row = conn
        .client
        .query_one(
            "SELECT current_user::text, r.rolsuper OR r.rolreplication, \
                    current_setting('wal_level'), current_setting('archive_mode'), \
                    pg_is_in_recovery(), s.setting::bigint, coalesce(s.unit, ''), \
                    ARRAY(SELECT spcname::text FROM pg_tablespace \
                          WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1) \
             FROM pg_roles r, pg_settings s \
             WHERE r.rolname = current_user AND s.name = 'wal_segment_size'",
            &[],
        )
        .await
        .map_err(|e| query_error(&format!("database {}: reading its settings", db.name), e))?;
    let role: String = row.get(0);
    let may_replicate: bool = row.get(1);
    let wal_level: String = row.get(2);
    let archive_mode: String = row.get(3);
    let in_recovery: bool = row.get(4);
    let segment_setting: i64 = row.get(5);
    let segment_unit: String = row.get(6);
    let tablespaces: Vec<String> = row.get(7);
    let proves = format!("`backup wal check --job {job}` proves the setup once it is changed");
    if in_recovery {
        return Err(Error::refused(format!(
            "job {job}: the server of [databases.{}] is a standby (in recovery); base backups \
             of a standby are not supported yet",
            db.name
        ))
        .with_hint("point the url of [databases.*] at the primary"));
    }
    if !may_replicate {
        return Err(Error::database(format!(
            "job {job}: role {role} may not take base backups: it has neither REPLICATION nor \
             SUPERUSER"
        ))
        .with_hint(format!(
            "run ALTER ROLE {} REPLICATION as a superuser, and allow the role `replication` \
             connections in pg_hba.conf",
            super::quote_ident(&role)
        )));
    }
    if !wal_level_archives(&wal_level) {
        return Err(Error::database(format!(
            "job {job}: the server has wal_level = {wal_level}, and a base backup needs replica \
             (or logical)"
        ))
        .with_hint(format!(
            "set wal_level = replica in postgresql.conf and restart the server; {proves}"
        )));
    }
    if !archive_mode_archives(&archive_mode) {
        return Err(Error::database(format!(
            "job {job}: the server has archive_mode = {archive_mode}, so the WAL a base backup \
             needs would never reach the archive"
        ))
        .with_hint(format!(
            "set archive_mode = on and archive_command = 'backup --config <job file> wal push \
             --job {job} %p' in postgresql.conf, then restart the server; {proves}"
        )));
    }
    if !tablespaces.is_empty() {
        return Err(Error::refused(format!(
            "job {job}: the cluster has tablespaces beside pg_default and pg_global ({}); base \
             backups of clusters with tablespaces are not supported yet",
            tablespaces.join(", ")
        ))
        .with_hint(
            "move their tables and indexes into pg_default (ALTER ... SET TABLESPACE pg_default) \
             and drop them, or back the databases up with type = \"backup\" jobs",
        ));
    }
    let wal_segment_size = segment_bytes(segment_setting, &segment_unit).ok_or_else(|| {
        Error::internal(format!(
            "database {}: wal_segment_size is '{segment_setting}' in unit '{segment_unit}', \
             not a size this version reads",
            db.name
        ))
    })?;
    let system_identifier = super::system_identifier(conn).await.ok_or_else(|| {
        Error::database(format!(
            "job {job}: role {role} may not read the cluster's system_identifier \
             (pg_control_system()), which ties a base backup to its WAL"
        ))
        .with_hint(format!(
            "GRANT EXECUTE ON FUNCTION pg_control_system() TO {}",
            super::quote_ident(&role)
        ))
    })?;
    Ok(ClusterFacts {
        wal_segment_size,
        system_identifier,
    })
}

/// `wal_segment_size` in bytes from `pg_settings`' setting and unit (`B`
/// since PostgreSQL 11); `None` for what is not a power of two from 1 MiB
/// to 1 GiB, as initdb allows.
fn segment_bytes(setting: i64, unit: &str) -> Option<u64> {
    let scale: u64 = match unit {
        "B" | "" => 1,
        "kB" => 1 << 10,
        "8kB" => 8 << 10,
        "MB" => 1 << 20,
        _ => return None,
    };
    let bytes = u64::try_from(setting).ok()?.checked_mul(scale)?;
    (bytes.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&bytes)).then_some(bytes)
}

/// The server's clock, now. A base backup's start and stop times are the
/// server's: recovery targets are compared with its commit timestamps.
pub async fn server_time(conn: &Connection) -> Result<Timestamp> {
    let row = conn
        .client
        .query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .map_err(|e| query_error("reading the server's clock", e))?;
    let at: String = row.get(0);
    at.parse()
        .map_err(|e| Error::internal(format!("server sent an unreadable time '{at}': {e}")))
}

/// How the phase `pg_stat_progress_basebackup` shows while the server waits
/// for the last segment a base backup needs to be archived begins (`waiting
/// for wal archiving to finish`).
const WAITING_FOR_ARCHIVE: &str = "waiting for wal archiving";

/// Whether a base backup in `phase` waits for the archive.
pub fn waits_for_archive(phase: &str) -> bool {
    phase.starts_with(WAITING_FOR_ARCHIVE)
}

/// The server process of the base backup whose connection has
/// `application_name`, and the phase it is in (`streaming database files`,
/// `waiting for wal archiving to finish`, ...); `None` before it started or
/// once it ended.
pub async fn backup_phase(
    conn: &Connection,
    application_name: &str,
) -> Result<Option<(i32, String)>> {
    let rows = conn
        .client
        .query(
            "SELECT p.pid, p.phase FROM pg_stat_progress_basebackup p \
             JOIN pg_stat_activity a ON a.pid = p.pid WHERE a.application_name = $1",
            &[&application_name],
        )
        .await
        .map_err(|e| query_error("reading the progress of the base backup", e))?;
    Ok(rows.first().map(|r| (r.get(0), r.get(1))))
}

/// The label of a base backup of `job`: in the server's `backup_label`
/// and `.backup` file, where an operator sees which run took it, and how a
/// run finds what an earlier one left ([`end_abandoned`]).
pub fn backup_label(job: &str, id: &str) -> String {
    format!("backup {job} {id}")
}

/// The `application_name` prefix of the sessions base backups run in.
pub const APPLICATION_NAME: &str = "backup base";

/// Ends the server side of base backups of `job` that still wait for the
/// archive: a run stopped while its base backup waited (its `timeout`,
/// SIGTERM) leaves it waiting, holding a WAL sender, until the archive takes
/// the segment. Called while the job's lock is held, when no run of `job`
/// takes a base backup. Returns the processes ended.
pub async fn end_abandoned(conn: &Connection, job: &str) -> Result<Vec<i32>> {
    // As pg_basebackup sends it: `BASE_BACKUP ( LABEL 'backup job id', ...`.
    let label = format!("LABEL '{}", backup_label(job, "").replace('\'', "''"));
    let rows = conn
        .client
        .query(
            "SELECT a.pid, pg_terminate_backend(a.pid) FROM pg_stat_activity a \
             JOIN pg_stat_progress_basebackup p ON p.pid = a.pid \
             WHERE starts_with(a.application_name, $1) AND position($2 in a.query) > 0 \
               AND starts_with(p.phase, $3)",
            &[&APPLICATION_NAME, &label, &WAITING_FOR_ARCHIVE],
        )
        .await
        .map_err(|e| query_error("ending base backups stopped earlier", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Ends the server process `pid`, if it still has `application_name`: a
/// base backup waiting for the archive waits on after `pg_basebackup` is
/// gone, and holds a WAL sender while it does.
pub async fn terminate_backend(conn: &Connection, pid: i32, application_name: &str) -> Result<()> {
    conn.client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE pid = $1 AND application_name = $2",
            &[&pid, &application_name],
        )
        .await
        .map_err(|e| query_error(&format!("ending the base backup's server process {pid}"), e))?;
    Ok(())
}

/// Where a base backup lies in the WAL: it began at `start` and is
/// consistent once replay reaches `stop`, both on `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPoints {
    pub timeline: u32,
    pub start: Lsn,
    pub stop: Lsn,
}

/// The start and end points `pg_basebackup -v` prints:
///
/// ```text
/// pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1
/// pg_basebackup: write-ahead log end point: 0/2000100
/// ```
///
/// `None` when either is missing (a translated message, a cut stderr).
pub fn points_from_stderr(stderr: &str) -> Option<WalPoints> {
    let after = |marker: &str| {
        stderr
            .lines()
            .find_map(|line| line.split_once(marker).map(|(_, rest)| rest.trim()))
    };
    let start = after("write-ahead log start point: ")?;
    let (start, timeline) = start.split_once(" on timeline ")?;
    let stop = after("write-ahead log end point: ")?;
    Some(WalPoints {
        timeline: timeline.trim().parse().ok()?,
        start: start.parse().ok()?,
        stop: stop.split_whitespace().next()?.parse().ok()?,
    })
}

/// The `WAL-Ranges` of a `backup_manifest`, from its end (`tail`): the
/// manifest's own word, whatever language `pg_basebackup` speaks.
pub fn points_from_manifest(tail: &str) -> Result<WalPoints> {
    #[derive(serde::Deserialize)]
    struct Range {
        #[serde(rename = "Timeline")]
        timeline: u32,
        #[serde(rename = "Start-LSN")]
        start: String,
        #[serde(rename = "End-LSN")]
        end: String,
    }
    let bad = |why: &str| Error::integrity(format!("the backup_manifest of the base backup {why}"));
    let at = tail
        .rfind("\"WAL-Ranges\"")
        .ok_or_else(|| bad("has no WAL-Ranges"))?;
    let open = tail[at..].find('[').map(|i| at + i);
    let close = open.and_then(|o| tail[o..].find(']').map(|i| o + i));
    let (Some(open), Some(close)) = (open, close) else {
        return Err(bad("has an unreadable WAL-Ranges"));
    };
    let ranges: Vec<Range> = serde_json::from_str(&tail[open..=close])
        .map_err(|e| bad(&format!("has an unreadable WAL-Ranges: {e}")))?;
    let [range] = ranges.as_slice() else {
        return Err(bad(&format!(
            "spans {} timelines; a primary's base backup spans one",
            ranges.len()
        )));
    };
    let lsn = |text: &str| {
        text.parse::<Lsn>()
            .map_err(|_| bad(&format!("has '{text}' for a WAL location")))
    };
    Ok(WalPoints {
        timeline: range.timeline,
        start: lsn(&range.start)?,
        stop: lsn(&range.end)?,
    })
}

/// How much of the end of the `backup_manifest` is kept: its `WAL-Ranges`
/// and checksum are its last lines, whatever the number of files before.
const MANIFEST_TAIL: usize = 64 << 10;
/// Up to this size the whole `backup_manifest` is kept, to be stored beside
/// the tar for the next incremental backup (some 300,000 files; a larger
/// cluster's next backup is a full one, said).
pub const MANIFEST_KEEP: usize = 64 << 20;
const BLOCK: usize = 512;

/// What the tar `pg_basebackup` writes holds, read from its headers as the
/// bytes go by. The bytes are not changed nor kept, but for the end of the
/// `backup_manifest`.
#[derive(Debug)]
pub struct TarScan {
    header: Vec<u8>,
    /// Bytes of the current entry's data still to come, then of its padding.
    data_left: u64,
    padding_left: u64,
    in_manifest: bool,
    manifest_tail: Vec<u8>,
    /// The manifest grew past [`MANIFEST_KEEP`]: only its tail is kept.
    manifest_cut: bool,
    /// Offset in the stream, and of the header being read, for messages.
    offset: u64,
    header_at: u64,
    pub entries: u64,
    pub has_pg_version: bool,
    pub has_manifest: bool,
    /// Why the stream stopped reading as a tar; nothing after is looked at.
    pub broken: Option<String>,
}

impl Default for TarScan {
    fn default() -> Self {
        TarScan {
            header: Vec::with_capacity(BLOCK),
            data_left: 0,
            padding_left: 0,
            in_manifest: false,
            manifest_tail: Vec::new(),
            manifest_cut: false,
            offset: 0,
            header_at: 0,
            entries: 0,
            has_pg_version: false,
            has_manifest: false,
            broken: None,
        }
    }
}

impl TarScan {
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.broken.is_none() {
            let taken = if self.data_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                if self.in_manifest {
                    self.keep_manifest(&bytes[..n]);
                }
                self.data_left -= n as u64;
                n
            } else if self.padding_left > 0 {
                let n = bytes
                    .len()
                    .min(usize::try_from(self.padding_left).unwrap_or(usize::MAX));
                self.padding_left -= n as u64;
                n
            } else {
                if self.header.is_empty() {
                    self.header_at = self.offset;
                }
                let n = bytes.len().min(BLOCK - self.header.len());
                self.header.extend_from_slice(&bytes[..n]);
                if self.header.len() == BLOCK {
                    self.read_header();
                    self.header.clear();
                }
                n
            };
            self.offset += taken as u64;
            bytes = &bytes[taken..];
        }
    }

    fn read_header(&mut self) {
        self.in_manifest = false;
        // The end of the archive: two zero blocks, maybe more padding.
        if self.header.iter().all(|b| *b == 0) {
            return;
        }
        let header = tar::Header::from_byte_slice(&self.header);
        let size = match header.entry_size() {
            Ok(size) => size,
            Err(e) => {
                self.broken = Some(format!("no tar header at byte {}: {e}", self.header_at));
                return;
            }
        };
        self.entries += 1;
        self.data_left = size;
        self.padding_left = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let path = header.path_bytes();
        let name = path.strip_prefix(b"./").unwrap_or(&path);
        self.has_pg_version |= name == b"PG_VERSION";
        if name == BACKUP_MANIFEST.as_bytes() {
            self.has_manifest = true;
            self.in_manifest = true;
            self.manifest_tail.clear();
            self.manifest_cut = false;
        }
    }

    fn keep_manifest(&mut self, bytes: &[u8]) {
        self.manifest_tail.extend_from_slice(bytes);
        self.manifest_cut |= self.manifest_tail.len() > MANIFEST_KEEP;
        // Cut in large steps: the bytes move once per MANIFEST_TAIL read.
        if self.manifest_cut && self.manifest_tail.len() > 2 * MANIFEST_TAIL {
            let cut = self.manifest_tail.len() - MANIFEST_TAIL;
            self.manifest_tail.drain(..cut);
        }
    }

    /// The last bytes of the `backup_manifest`, as text.
    pub fn manifest_tail(&self) -> Option<String> {
        self.has_manifest.then(|| {
            let from = self.manifest_tail.len().saturating_sub(MANIFEST_TAIL);
            String::from_utf8_lossy(&self.manifest_tail[from..]).into_owned()
        })
    }

    /// The whole `backup_manifest`, unless it was larger than
    /// [`MANIFEST_KEEP`].
    pub fn manifest(&self) -> Option<&[u8]> {
        (self.has_manifest && !self.manifest_cut).then_some(&self.manifest_tail[..])
    }
}

/// A reader that shows every byte it passes on to a [`TarScan`].
pub struct Scanned<R> {
    inner: R,
    scan: Arc<Mutex<TarScan>>,
}

impl<R> Scanned<R> {
    pub fn new(inner: R) -> (Self, Arc<Mutex<TarScan>>) {
        let scan = Arc::new(Mutex::new(TarScan::default()));
        (
            Scanned {
                inner,
                scan: scan.clone(),
            },
            scan,
        )
    }
}

impl<R: Read> Read for Scanned<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.scan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .feed(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_basebackup_stderr_gives_the_wal_points() {
        let stderr = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                      pg_basebackup: checkpoint completed\n\
                      pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                      NOTICE:  all required WAL segments have been archived\n\
                      pg_basebackup: write-ahead log end point: 1A/B0000100\n\
                      pg_basebackup: base backup completed\n";
        assert_eq!(
            points_from_stderr(stderr),
            Some(WalPoints {
                timeline: 1,
                start: Lsn(0x0200_0028),
                stop: Lsn(0x1A_B000_0100),
            })
        );
        // PostgreSQL 18 pads the low half.
        let padded = "write-ahead log start point: 0/02000028 on timeline 3\n\
                      write-ahead log end point: 0/02000100\n";
        assert_eq!(points_from_stderr(padded).map(|p| p.timeline), Some(3));
        for cut in [
            "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n",
            "pg_basebackup: write-ahead log end point: 0/2000100\n",
            "pg_basebackup: write-ahead log start point: 0/2000028\n\
             pg_basebackup: write-ahead log end point: 0/2000100\n",
            "pg_basebackup: write-ahead log start point: zz on timeline 1\n\
             pg_basebackup: write-ahead log end point: 0/2000100\n",
            "",
        ] {
            assert_eq!(points_from_stderr(cut), None, "{cut}");
        }
    }

    #[test]
    fn the_backup_manifest_gives_the_wal_points() {
        let tail = r#"{ "Path": "global/pg_control", "Size": 8192, "Checksum-Algorithm": "CRC32C", "Checksum": "1c2ab4ee" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000138" }
],
"Manifest-Checksum": "0d9cc0e1c12e4e1b5bd0e0e7b6a1d5b0f8b7d2b6a6e2e6c1c5a0a8e9d2f6c7b1"}
"#;
        assert_eq!(
            points_from_manifest(tail).unwrap(),
            WalPoints {
                timeline: 1,
                start: Lsn(0x0200_0028),
                stop: Lsn(0x0200_0138),
            }
        );
        for (bad, says) in [
            ("{\"Files\": []}", "no WAL-Ranges"),
            ("\"WAL-Ranges\": [", "unreadable"),
            ("\"WAL-Ranges\": []", "spans 0 timelines"),
            (
                "\"WAL-Ranges\": [{ \"Timeline\": 1, \"Start-LSN\": \"x\", \"End-LSN\": \"0/1\" }]",
                "'x'",
            ),
        ] {
            let e = points_from_manifest(bad).unwrap_err();
            assert!(e.message().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn segment_sizes_read_in_every_unit() {
        assert_eq!(segment_bytes(16 << 20, "B"), Some(16 << 20));
        assert_eq!(segment_bytes(2048, "8kB"), Some(16 << 20));
        assert_eq!(segment_bytes(64, "MB"), Some(64 << 20));
        assert_eq!(segment_bytes(3 << 20, "B"), None);
        assert_eq!(segment_bytes(16, "GB"), None);
        assert_eq!(segment_bytes(-1, "B"), None);
    }

    fn tar_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_cksum();
            builder.append_data(&mut header, name, &data[..]).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_tar_scan_finds_the_manifest_whatever_the_reads() {
        let big: Vec<u8> = (0..3 * MANIFEST_TAIL)
            .map(|i| b'a' + (i % 26) as u8)
            .collect();
        let mut manifest = big.clone();
        manifest.extend_from_slice(b"\"WAL-Ranges\": [ ] END");
        let tar = tar_of(&[
            ("PG_VERSION", b"15\n".to_vec()),
            ("base/1/1259", vec![7; 9000]),
            ("backup_manifest", manifest.clone()),
        ]);
        for step in [1, 511, 512, 513, 4096, tar.len()] {
            let (mut reader, scan) = Scanned::new(&tar[..]);
            let mut out = Vec::new();
            let mut buf = vec![0; step];
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, tar, "the bytes pass unchanged");
            let scan = scan.lock().unwrap();
            assert_eq!(scan.broken, None);
            assert_eq!(scan.entries, 3);
            assert!(scan.has_pg_version && scan.has_manifest);
            let tail = scan.manifest_tail().unwrap();
            assert!(tail.ends_with("\"WAL-Ranges\": [ ] END"), "step {step}");
            assert!(tail.len() <= 2 * MANIFEST_TAIL + step);
        }
        let mut scan = TarScan::default();
        scan.feed(&tar_of(&[("PG_VERSION", b"15\n".to_vec())]));
        assert!(!scan.has_manifest && scan.manifest_tail().is_none());
        let mut scan = TarScan::default();
        scan.feed(&[b'x'; 1024]);
        assert!(scan.broken.is_some());
    }
}
