//! The transactions an archived stretch of WAL ends, read with the
//! server's own `pg_waldump`: when the archive's last transaction
//! committed (the end of the recovery window, to the second), and which
//! transaction recovery to a moment stops before.
//!
//! Recovery to a time stops at the first commit or abort record after it;
//! one that never meets such a record ends with FATAL ("recovery ended
//! before configured recovery target was reached") after replaying the
//! whole archive. Finding that record before anything is written is what
//! lets a restore refuse a moment the archive cannot reach.

use std::path::Path;

use jiff::Timestamp;
use serde::Serialize;

use crate::archive::crypt::Crypt;
use crate::error::{Error, Kind, Result};
use crate::storage::Storage;
use crate::wal::{Archived, object};

/// The end of one transaction, as a WAL record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TxEnd {
    pub xid: u32,
    pub at: Timestamp,
    /// An abort rather than a commit: recovery stops before those too.
    pub abort: bool,
}

/// What `pg_waldump` says of a few consecutive segments.
pub struct Scanned {
    pub ends: Vec<TxEnd>,
}

/// Reads `segments` (consecutive archived segments of one timeline, in
/// order) from `storage` into a temporary directory and lists the
/// transactions they end. A commit record that runs into a segment not
/// given is not seen: callers pass a segment with its successor.
pub async fn transactions(
    storage: &dyn Storage,
    segments: &[&Archived],
    crypt: &Crypt,
    waldump: &Path,
) -> Result<Scanned> {
    let dir = tempfile::Builder::new()
        .prefix("backup-waldump-")
        .tempdir()
        .map_err(|e| {
            Error::io(
                Kind::Internal,
                "creating a temporary directory for pg_waldump",
                e,
            )
            .with_hint("set TMPDIR to a writable directory with room for two WAL segments")
        })?;
    let mut names = Vec::new();
    for archived in segments {
        let name = archived.file.name();
        let path = dir.path().join(&name);
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::io(Kind::Internal, format!("writing {}", path.display()), e))?;
        object::read(storage, archived, crypt, std::io::BufWriter::new(file)).await?;
        names.push(name);
    }
    let (Some(first), Some(last)) = (names.first(), names.last()) else {
        return Ok(Scanned { ends: Vec::new() });
    };
    let out = tokio::process::Command::new(waldump)
        .arg("--rmgr=Transaction")
        .arg("--path")
        .arg(dir.path())
        .arg(first)
        .arg(last)
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            Error::io(Kind::Tool, format!("running {}", waldump.display()), e)
                .with_hint("install the PostgreSQL server package of the backup's major version")
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It always ends in an error: the WAL stops at the last segment given.
    // Only other errors mean it could not read what it was given.
    if let Some(line) = stderr.lines().find(|l| is_real_error(l)) {
        return Err(Error::tool(format!(
            "pg_waldump could not read {first}..{last}: {}",
            line.trim()
        ))
        .with_hint("the segments are checked against their digests; a pg_waldump of another major version cannot read them"));
    }
    Ok(Scanned {
        ends: stdout.lines().filter_map(parse_line).collect(),
    })
}

/// Whether a line of `pg_waldump`'s stderr is more than the end of the
/// WAL it was given.
fn is_real_error(line: &str) -> bool {
    let line = line.trim();
    if line.is_empty() || !line.contains("error") && !line.contains("fatal") {
        return false;
    }
    const ENDS: [&str; 5] = [
        "could not find file",
        "invalid record length",
        "could not read file",
        "invalid magic number 0000",
        "record with incorrect prev-link",
    ];
    !ENDS.iter().any(|end| line.contains(end))
}

/// `rmgr: Transaction len (rec/tot): 34/34, tx: 736, lsn: 0/0301A2C8,
/// prev 0/0301A290, desc: COMMIT 2026-12-06 05:01:02.123456 UTC`
fn parse_line(line: &str) -> Option<TxEnd> {
    let xid = line
        .split_once("tx:")?
        .1
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()?;
    let desc = line.split_once("desc: ")?.1;
    let mut words = desc.split_whitespace();
    let abort = match words.next()? {
        "COMMIT" => false,
        "ABORT" => true,
        _ => return None,
    };
    let (date, time) = (words.next()?, words.next()?);
    let zone = words.next()?.trim_end_matches(';');
    if zone != "UTC" {
        return None;
    }
    let civil: jiff::civil::DateTime = format!("{date}T{time}").parse().ok()?;
    let at = civil.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp();
    Some(TxEnd { xid, at, abort })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commits_and_aborts() {
        let commit = "rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/0301A2C8, prev 0/0301A290, desc: COMMIT 2026-12-06 05:01:02.123456 UTC";
        assert_eq!(
            parse_line(commit),
            Some(TxEnd {
                xid: 736,
                at: "2026-12-06T05:01:02.123456Z".parse().unwrap(),
                abort: false
            })
        );
        let with_more = "rmgr: Transaction len (rec/tot):    130/   130, tx:        740, lsn: 0/03020000, prev 0/0301FF00, desc: COMMIT 2026-12-06 05:01:03.5 UTC; inval msgs: catcache 7";
        assert_eq!(parse_line(with_more).map(|t| t.xid), Some(740));
        let abort = "rmgr: Transaction len (rec/tot):     34/    34, tx:        741, lsn: 0/03020100, prev 0/03020000, desc: ABORT 2026-12-06 05:01:04.000001 UTC";
        assert_eq!(parse_line(abort).map(|t| t.abort), Some(true));
        let other = "rmgr: Transaction len (rec/tot):     50/    50, tx:          0, lsn: 0/03020200, prev 0/03020100, desc: RUNNING_XACTS nextXid 742";
        assert_eq!(parse_line(other), None);
    }

    #[test]
    fn the_end_of_the_given_wal_is_no_error() {
        assert!(!is_real_error(
            "pg_waldump: error: error in WAL record at 0/40000A0: invalid record length at 0/40000D8: wanted 24, got 0"
        ));
        assert!(!is_real_error(
            "pg_waldump: fatal: could not find file \"000000010000000000000005\": No such file or directory"
        ));
        assert!(is_real_error(
            "pg_waldump: error: WAL file \"x\" has invalid magic number 0xD110"
        ));
    }
}
