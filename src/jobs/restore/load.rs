//! A backup's data object streamed out of storage, verified and
//! decompressed on the way, into `pg_restore`: straight into its stdin for
//! one job, through a temporary file for parallel ones.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use crate::archive;
use crate::archive::crypt::Crypt;
use crate::catalog::{self, Manifest, Role};
use crate::error::Kind;
use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg::{self, command::RestoreFlags};
use crate::report::Progress;
use crate::storage::Storage;

/// The `pg_restore` to use on the server `admin` is connected to: no older
/// than the server, nor than the `pg_dump` that wrote `backup`. A server
/// older than the one `backup` was taken from is refused: what a newer
/// server dumps (its catalogs' features, its syntax) an older one cannot be
/// trusted to load. Runs before a restore writes anything.
pub async fn pg_restore_for(
    admin: &pg::Connection,
    db: &Database,
    backup: &Manifest,
) -> Result<std::path::PathBuf> {
    let server = pg::server_version(admin).await?;
    let source = backup.server_major();
    if server.major < source {
        return Err(Error::refused(format!(
            "backup {} was taken from PostgreSQL {}; the target server runs {}, an older \
             major: a dump restores into the same major or a newer one, and nothing was written",
            backup.id, backup.server_version, server.text
        ))
        .with_hint(format!(
            "restore into a server of PostgreSQL {source} or newer (--target-url, or the \
             database's url)"
        )));
    }
    let pg_restore = pg::tool_path(db, "pg_restore");
    let version = pg::require_tool_at_least(&pg_restore, &server)?;
    let archive_major = pg::command::parse_tool_version(&backup.pg_dump_version).unwrap_or(0);
    let restore_major = pg::command::parse_tool_version(&version).unwrap_or(0);
    if restore_major < archive_major {
        return Err(Error::tool(format!(
            "{} is version {restore_major}, older than the pg_dump {archive_major} that wrote backup {}",
            pg_restore.display(),
            backup.id
        ))
        .with_hint(format!("install postgresql-client-{archive_major} or set pg_bin_dir")));
    }
    Ok(pg_restore)
}

/// What [`load`] restores, and into which database.
pub struct Load<'a> {
    pub job: &'a str,
    pub backup: &'a Manifest,
    pub crypt: &'a Crypt,
    pub flags: RestoreFlags,
    pub into: &'a str,
}

/// Streams the backup's data object into `pg_restore` on database `into`,
/// verifying both digests on the way.
pub async fn load(
    what: Load<'_>,
    db: &Database,
    storage: &Arc<dyn Storage>,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let backup = what.backup;
    let object = backup.object(Role::Data).ok_or_else(|| {
        Error::integrity(format!(
            "backup {}: the manifest lists no data object",
            backup.id
        ))
    })?;
    let key = catalog::backup_prefix(what.job, &backup.id)?.join(&object.key)?;
    let stream = Stream {
        source: tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?),
        compression: backup.compression()?,
        crypt: what.crypt.clone(),
        digest: object.digest.clone(),
        label: format!("{key} in storage {}", storage.name()),
    };
    let url = pg::command::with_dbname(&db.url, what.into);
    progress.begin(
        &format!("restore {}", backup.id),
        Some(object.digest.stored_size),
    );
    let result = if what.flags.jobs > 1 {
        restore_spooled(stream, what.flags, &url, db, pg_restore, progress.clone()).await
    } else {
        restore_streamed(stream, what.flags, &url, db, pg_restore, progress.clone()).await
    };
    progress.end();
    result
}

/// A stored object on its way out of storage.
struct Stream {
    source: tokio_util::io::SyncIoBridge<crate::storage::ObjectReader>,
    compression: crate::model::Compression,
    crypt: Crypt,
    digest: archive::ObjectDigest,
    label: String,
}

impl Stream {
    /// Verifies and decompresses into `sink`. Blocking.
    fn unpack_into(self, sink: &mut dyn Write, progress: &dyn Progress) -> Result<()> {
        let on_bytes = |n| progress.advance(n);
        archive::unpack(
            self.source,
            self.compression,
            &self.crypt,
            &self.digest,
            sink,
            &self.label,
            &on_bytes,
        )
    }
}

/// Straight into `pg_restore`'s stdin: no temporary file, one job.
async fn restore_streamed(
    stream: Stream,
    flags: RestoreFlags,
    url: &str,
    db: &Database,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let args = pg::command::pg_restore_args(url, flags, None, None);
    let mut child = pg::spawn(pg_restore, args, db, Stdio::piped(), Stdio::null())?;
    let mut stdin = child
        .child
        .stdin
        .take()
        .ok_or_else(|| Error::internal("pg_restore has no stdin"))?;
    // A cancelled restore (timeout, SIGTERM) stops pg_restore with it.
    let _stop = child.stop_on_drop();
    tokio::task::spawn_blocking(move || {
        let streamed = stream.unpack_into(&mut stdin, progress.as_ref());
        drop(stdin);
        let restored = child.wait();
        match (streamed, restored) {
            // A corrupt archive explains pg_restore's failure, not the reverse.
            (Err(e), _) if e.kind() != Kind::Tool => Err(e),
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        }
    })
    .await
    .map_err(|e| Error::internal(format!("restore task failed: {e}")))?
}

/// Through a temporary file, because a parallel `pg_restore` must seek. The
/// archive is verified whole before `pg_restore` sees a byte of it, then
/// restored in the passes [`pg::command::restore_passes`] says, so that a
/// parallel restore never fails at random.
async fn restore_spooled(
    stream: Stream,
    flags: RestoreFlags,
    url: &str,
    db: &Database,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
) -> Result<()> {
    // One directory for the spool and the passes' lists, removed with it.
    let spool = tokio::task::spawn_blocking(move || -> Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix("backup-restore-")
            .tempdir()
            .map_err(|e| {
                Error::io(Kind::Internal, "creating a spool directory", e)
                    .with_hint("set TMPDIR to a directory with room for the uncompressed archive")
            })?;
        let mut file = std::fs::File::create(dir.path().join(SPOOL))
            .map_err(|e| Error::io(Kind::Internal, "creating the spool file", e))?;
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        stream.unpack_into(&mut sink, progress.as_ref())?;
        sink.flush()
            .map_err(|e| Error::io(Kind::Internal, "writing the spool file", e))?;
        Ok(dir)
    })
    .await
    .map_err(|e| Error::internal(format!("spooling task failed: {e}")))??;
    let archive = spool.path().join(SPOOL);
    let toc = run_client(
        pg_restore,
        pg::command::pg_restore_list_args(&archive),
        db,
        Stdio::piped(),
    )
    .await?;
    for (i, pass) in pg::command::restore_passes(&toc, flags.jobs)
        .into_iter()
        .enumerate()
    {
        let list = spool.path().join(format!("pass-{}.list", i + 1));
        std::fs::write(&list, &pass.list)
            .map_err(|e| Error::io(Kind::Internal, "writing a restore list", e))?;
        tracing::debug!(
            "pg_restore pass {}: {}, {} job(s)",
            i + 1,
            pass.what,
            pass.jobs
        );
        let flags = RestoreFlags {
            jobs: pass.jobs,
            ..flags
        };
        let args = pg::command::pg_restore_args(url, flags, Some(&archive), Some(&list));
        run_client(pg_restore, args, db, Stdio::null())
            .await
            .map_err(|e| e.context(format!("restoring {}", pass.what)))?;
    }
    // Removed only now that pg_restore is done with it.
    drop(spool);
    Ok(())
}

/// The spool file's name in its directory.
const SPOOL: &str = "archive.dump";

/// Runs a client program to its end; with `stdout` piped, returns what it
/// printed. Stopped if the restore is cancelled meanwhile.
async fn run_client(
    program: &Path,
    args: Vec<std::ffi::OsString>,
    db: &Database,
    stdout: Stdio,
) -> Result<String> {
    let mut child = pg::spawn(program, args, db, Stdio::null(), stdout)?;
    let out = child.child.stdout.take();
    let _stop = child.stop_on_drop();
    tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        let read = out.map(|mut out| std::io::Read::read_to_string(&mut out, &mut text));
        child.wait()?;
        if let Some(Err(e)) = read {
            return Err(Error::io(Kind::Tool, "reading pg_restore's output", e));
        }
        Ok(text)
    })
    .await
    .map_err(|e| Error::internal(format!("waiting for pg_restore: {e}")))?
}
