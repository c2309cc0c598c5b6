//! Taking the base tar: `pg_basebackup` streamed through the pipeline into
//! every storage, with its wait for the WAL archive bounded.
//!
//! With `-X none` the server ends a base backup only once the last segment
//! it needs is archived, and waits for that inside `pg_basebackup`, for
//! ever if `archive_command` keeps failing. The wait is bounded by the
//! job's `wal_wait`, counted from when the server says it is waiting
//! (`pg_stat_progress_basebackup` shows the phase; its session is found by
//! an `application_name` of its own): copying the files takes as long as
//! the cluster is large, which no bound fits. Past it, the server's side is
//! ended and `pg_basebackup` stopped. A run cancelled on the way (its
//! `timeout`, SIGTERM) stops both too.
//!
//! What `pg_basebackup` wrote is checked before any storage shows it: it
//! exited well, its tar reads and holds a `backup_manifest`, and that
//! manifest's WAL range agrees with what `-v` printed.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::archive::{self, Delivery, Destination, ObjectDigest};
use crate::error::{Error, Result};
use crate::model::{Clock, Compression, Database};
use crate::pg::physical::{self as pgp, Scanned, TarScan, WalPoints};
use crate::pg::{self, Connection, StopOnDrop, command};
use crate::report::Progress;

/// How often the server is asked what the base backup is doing.
const POLL: Duration = Duration::from_secs(1);

/// What one `pg_basebackup` run gave.
pub(super) struct Taken {
    pub digest: ObjectDigest,
    pub deliveries: Vec<Delivery>,
    pub points: WalPoints,
    /// The tar's `backup_manifest`, whole: `None` when larger than
    /// [`pgp::MANIFEST_KEEP`].
    pub manifest: Option<Vec<u8>>,
}

/// One base backup to take.
pub(super) struct Take<'a> {
    pub job: &'a str,
    pub db: &'a Arc<Database>,
    pub pg_basebackup: &'a Path,
    /// In the server's `backup_label`: which run took it.
    pub label: String,
    pub compression: Compression,
    pub crypt: archive::crypt::Crypt,
    pub destinations: Vec<Destination>,
    /// The object, for messages.
    pub object: String,
    pub wal_wait: Duration,
    /// An incremental backup: the previous backup's `backup_manifest`, in a
    /// file `pg_basebackup --incremental` reads.
    pub incremental: Option<&'a Path>,
}

pub(super) async fn take(
    t: Take<'_>,
    conn: &Connection,
    clock: &dyn Clock,
    progress: Arc<dyn Progress>,
) -> Result<Taken> {
    // Unique on the server, and short: it is cut at 63 bytes.
    let application_name = format!("{} {:016x}", pgp::APPLICATION_NAME, fastrand::u64(..));
    let url = command::with_application_name(&t.db.url, &application_name);
    let mut args = command::pg_basebackup_args(&url, &t.label);
    if let Some(parent) = t.incremental {
        let mut arg = std::ffi::OsString::from("--incremental=");
        arg.push(parent);
        args.push(arg);
    }
    let mut child = pg::spawn(t.pg_basebackup, args, t.db, Stdio::null(), Stdio::piped())?;
    let stdout = child
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::internal("pg_basebackup has no stdout"))?;
    let stop = child.stop_on_drop();
    let (stdout, scan) = Scanned::new(stdout);
    let waiting = tokio::task::spawn_blocking(move || child.wait_keeping_stderr());
    let ended = tokio::sync::Notify::new();
    let points = Mutex::new(None);
    let manifest = Mutex::new(None);
    // Awaited by the pipeline once the tar is read, before any storage
    // shows it: whatever is wrong with it leaves nothing behind.
    let finished = async {
        let exited = waiting
            .await
            .map_err(|e| Error::internal(format!("waiting for pg_basebackup: {e}")));
        ended.notify_one();
        let stderr = exited??;
        tracing::debug!("pg_basebackup said: {stderr}");
        let scan = scan.lock().unwrap_or_else(|p| p.into_inner());
        let found = wal_points(t.job, &scan, &stderr)?;
        *points.lock().unwrap_or_else(|p| p.into_inner()) = Some(found);
        *manifest.lock().unwrap_or_else(|p| p.into_inner()) = scan.manifest().map(<[u8]>::to_vec);
        Ok(())
    };
    progress.begin("base backup of the cluster", None);
    let on_bytes = {
        let progress = progress.clone();
        Arc::new(move |n| progress.advance(n))
    };
    let bound = Bound {
        job: t.job,
        db: t.db,
        application_name: &application_name,
        wal_wait: t.wal_wait,
    };
    let stored = async {
        let stored = archive::store(
            stdout,
            t.compression,
            t.crypt,
            t.destinations,
            &t.object,
            on_bytes,
            finished,
        )
        .await;
        // Said again for a pipeline that failed before it asked.
        ended.notify_one();
        stored
    };
    let (stored, overdue) = tokio::join!(stored, bound.watch(conn, clock, stop, &ended));
    progress.end();
    let (digest, deliveries) = match (stored, overdue) {
        // Ended well just as the bound struck: the backup is whole.
        (Ok(stored), _) => stored,
        // pg_basebackup stopped by the bound fails too; the bound says why.
        (Err(_), Some(e)) | (Err(e), None) => return Err(e),
    };
    let points = points
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .ok_or_else(|| Error::internal("the base backup ended without its WAL points"))?;
    Ok(Taken {
        digest,
        deliveries,
        points,
        manifest: manifest.into_inner().unwrap_or_else(|p| p.into_inner()),
    })
}

/// Where the backup lies in the WAL, from what `pg_basebackup` wrote.
fn wal_points(job: &str, scan: &TarScan, stderr: &str) -> Result<WalPoints> {
    let unusable = |why: String| {
        Error::tool(format!("job {job}: the tar pg_basebackup wrote {why}")).with_hint(
            "pg_basebackup 13 or newer puts its backup_manifest in the tar it writes to \
             stdout: check which one runs (pg_bin_dir in [databases.*])",
        )
    };
    if let Some(why) = &scan.broken {
        return Err(unusable(format!("does not read as a tar: {why}")));
    }
    let Some(tail) = scan.manifest_tail() else {
        return Err(unusable(format!(
            "has no {} among its {} entries",
            pgp::BACKUP_MANIFEST,
            scan.entries
        )));
    };
    if !scan.has_pg_version {
        return Err(unusable(
            "has no PG_VERSION: it is not a data directory".to_owned(),
        ));
    }
    let points = pgp::points_from_manifest(&tail).map_err(|e| e.context(format!("job {job}")))?;
    match pgp::points_from_stderr(stderr) {
        Some(said) if said != points => Err(Error::integrity(format!(
            "job {job}: pg_basebackup printed the WAL range {} to {} on timeline {}, and its \
             backup_manifest says {} to {} on timeline {}",
            said.start, said.stop, said.timeline, points.start, points.stop, points.timeline
        ))),
        Some(_) => Ok(points),
        None => {
            // Translated messages (LANG) do not read; the manifest does.
            tracing::debug!("job {job}: pg_basebackup printed no WAL points this version reads");
            Ok(points)
        }
    }
}

/// The bound on the server's wait for the archive.
struct Bound<'a> {
    job: &'a str,
    db: &'a Arc<Database>,
    application_name: &'a str,
    wal_wait: Duration,
}

impl Bound<'_> {
    /// Watches the base backup until `ended`; returns why it was stopped,
    /// if it was.
    async fn watch(
        &self,
        conn: &Connection,
        clock: &dyn Clock,
        stop: StopOnDrop,
        ended: &tokio::sync::Notify,
    ) -> Option<Error> {
        let mut server_side = EndOnDrop {
            db: self.db.clone(),
            application_name: self.application_name.to_owned(),
            pid: None,
        };
        let mut waiting_since = None;
        let mut said_unreadable = false;
        loop {
            tokio::select! {
                _ = ended.notified() => {
                    server_side.pid = None;
                    return None;
                }
                _ = clock.sleep(POLL) => {}
            }
            let phase = match pgp::backup_phase(conn, self.application_name).await {
                Ok(phase) => phase,
                Err(e) => {
                    if !said_unreadable {
                        tracing::warn!(
                            "job {}: cannot tell whether the base backup waits for the WAL \
                             archive ({e}); its wait is not bounded",
                            self.job
                        );
                        said_unreadable = true;
                    }
                    continue;
                }
            };
            let Some((pid, phase)) = phase else {
                continue;
            };
            server_side.pid = Some(pid);
            if !pgp::waits_for_archive(&phase) {
                waiting_since = None;
                continue;
            }
            let now = clock.now();
            let since = *waiting_since.get_or_insert(now);
            if now.duration_since(since).unsigned_abs() < self.wal_wait {
                continue;
            }
            // The server waits on after pg_basebackup is gone, holding a
            // WAL sender: it is ended first.
            if let Err(e) = pgp::terminate_backend(conn, pid, self.application_name).await {
                tracing::warn!("job {}: {e}", self.job);
            }
            server_side.pid = None;
            drop(stop);
            return Some(not_archived(
                self.job,
                self.wal_wait,
                "the server still waited for the archive to take the last segment",
            ));
        }
    }
}

/// Ends the base backup's server process if the run is cancelled while it
/// runs: stopping `pg_basebackup` does not end a server side that waits
/// for the archive.
struct EndOnDrop {
    db: Arc<Database>,
    application_name: String,
    pid: Option<i32>,
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (db, application_name) = (self.db.clone(), std::mem::take(&mut self.application_name));
        handle.spawn(async move {
            let ended = async {
                let conn = pg::connect(&db, None).await?;
                pgp::terminate_backend(&conn, pid, &application_name).await
            };
            if let Err(e) = ended.await {
                tracing::warn!("the stopped base backup's server process {pid}: {e}");
            }
        });
    }
}

/// The WAL a backup of `job` needs did not reach the archive within `wal_wait`.
pub(super) fn not_archived(job: &str, wal_wait: Duration, detail: &str) -> Error {
    Error::database(format!(
        "job {job}: the WAL this backup needs was not archived within {} ({detail}); no backup \
         was made",
        crate::time::show_std_duration(wal_wait)
    ))
    .with_hint(hint(job))
}

fn hint(job: &str) -> String {
    format!(
        "is archive_command set to push to this job ('backup wal push --job {job} %p')? \
         `backup wal check --job {job}` tests it; wal_wait in [jobs.{job}] sets how long a \
         base backup waits"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::Lsn;

    fn tar(entries: &[(&str, &[u8])]) -> TarScan {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        let mut scan = TarScan::default();
        scan.feed(&builder.into_inner().unwrap());
        scan
    }

    const MANIFEST: &[u8] = br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "00"}
"#;
    const STDERR: &str = "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n\
                          pg_basebackup: write-ahead log end point: 0/2000100\n";

    #[test]
    fn the_wal_points_come_from_the_manifest_and_agree_with_stderr() {
        let good = tar(&[("PG_VERSION", b"15\n"), ("backup_manifest", MANIFEST)]);
        // Kept whole, for the next incremental backup.
        assert_eq!(good.manifest(), Some(MANIFEST));
        let points = wal_points("base", &good, STDERR).unwrap();
        assert_eq!(
            (points.start, points.stop),
            (Lsn(0x0200_0028), Lsn(0x0200_0100))
        );
        // Translated stderr: the manifest is enough.
        assert_eq!(
            wal_points("base", &good, "pg_basebackup: 開始").unwrap(),
            points
        );
        let other = STDERR.replace("0/2000100", "0/3000100");
        let e = wal_points("base", &good, &other).unwrap_err();
        assert!(e.message().contains("0/3000100"), "{e}");

        let e = wal_points("base", &tar(&[("PG_VERSION", b"15\n")]), STDERR).unwrap_err();
        assert!(
            e.message()
                .contains("no backup_manifest among its 1 entries"),
            "{e}"
        );
        let e = wal_points("base", &tar(&[("backup_manifest", MANIFEST)]), STDERR).unwrap_err();
        assert!(e.message().contains("PG_VERSION"), "{e}");
    }
}
