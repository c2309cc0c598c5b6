//! A backup's data object streamed out of storage, verified and
//! decompressed on the way, into `pg_restore`: straight into its stdin for
//! one job, through a temporary file for parallel ones, and with its SQL
//! through `psql` for a server older than every `pg_restore` that can read
//! the archive.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
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

/// The client programs a restore runs: `pg_restore`, and `psql` when the
/// SQL must pass through it ([`restore_through_psql`]).
#[derive(Debug, Clone)]
pub struct RestoreClient {
    pub pg_restore: PathBuf,
    pub through_psql: Option<PathBuf>,
}

/// The first major whose `pg_restore` opens each session with `SET
/// transaction_timeout = 0`, a setting servers before it lack.
const SETS_TRANSACTION_TIMEOUT: u32 = 17;

/// The client to restore `backup` on the server `admin` is connected to:
/// a `pg_restore` no older than the server, nor than the `pg_dump` that
/// wrote `backup`. A server older than the one `backup` was taken from is
/// refused: what a newer server dumps (its catalogs' features, its syntax)
/// an older one cannot be trusted to load. A `pg_restore` of 17 or later
/// restoring into a server before 17 goes through `psql`, without the one
/// setting that server refuses. Runs before a restore writes anything.
pub async fn pg_restore_for(
    admin: &pg::Connection,
    db: &Database,
    backup: &Manifest,
) -> Result<RestoreClient> {
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
    let archive_major = pg::command::parse_tool_version(&backup.pg_dump_version).unwrap_or(0);
    let pg_restore = pg::tool_path(db, "pg_restore", server.major.max(archive_major));
    let version = pg::require_tool_at_least(&pg_restore, &server)?;
    let restore_major = pg::command::parse_tool_version(&version).unwrap_or(0);
    if restore_major < archive_major {
        return Err(Error::tool(format!(
            "{} is version {restore_major}, older than the pg_dump {archive_major} that wrote backup {}",
            pg_restore.display(),
            backup.id
        ))
        .with_hint(format!(
            "install postgresql-client-{archive_major}, or list its bin directory in pg_bin_dirs \
             (or point pg_bin_dir at it)"
        )));
    }
    let through_psql = (restore_major >= SETS_TRANSACTION_TIMEOUT
        && server.major < SETS_TRANSACTION_TIMEOUT)
        .then(|| pg_restore.with_file_name("psql"));
    if through_psql.is_some() && !writes_restrict(&version) {
        return Err(Error::tool(format!(
            "{} ({version}) restores into PostgreSQL {} only through psql, and without the \
             \\restrict line of 17.6 and later psql would run any meta-command a crafted dump \
             carries; nothing was written",
            pg_restore.display(),
            server.major
        ))
        .with_hint(format!(
            "update the PostgreSQL client to 17.6 or later, or install postgresql-client-{} \
             and list its bin directory in pg_bin_dirs",
            server.major.max(archive_major)
        )));
    }
    if let Some(psql) = &through_psql {
        pg::tool_version(psql).map_err(|e| {
            e.context(format!(
                "{} restores into PostgreSQL {} only through the psql beside it",
                pg_restore.display(),
                server.major
            ))
        })?;
    }
    Ok(RestoreClient {
        pg_restore,
        through_psql,
    })
}

/// Whether a `pg_restore` of `version` (`pg_restore (PostgreSQL) 17.6`)
/// opens its SQL with `\\restrict`, which makes psql refuse meta-commands
/// in it: 17.6 and later (and 18).
fn writes_restrict(version: &str) -> bool {
    let numbers = version.split(')').nth(1).unwrap_or_default().trim_start();
    let mut parts = numbers.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    (major, minor) >= (17, 6)
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
    client: &RestoreClient,
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
    let pg_restore = &client.pg_restore;
    let result = if let Some(psql) = &client.through_psql {
        if what.flags.jobs > 1 {
            tracing::warn!(
                "restoring with one job, not {}: {} restores into this server only through psql",
                what.flags.jobs,
                pg_restore.display()
            );
        }
        let programs = (pg_restore.as_path(), psql.as_path());
        restore_through_psql(stream, what.flags, &url, db, programs, progress.clone()).await
    } else if what.flags.jobs > 1 {
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

/// `pg_restore` writing SQL, `psql` running it, for a server older than
/// the `pg_restore` that can read the archive: every `pg_restore` from 17
/// on opens its session with `SET transaction_timeout = 0`, which a server
/// before 17 refuses (an archive of `pg_dump` 17 or later reads only with a
/// `pg_restore` as new). That line of the header is left out
/// ([`without_transaction_timeout`]); psql stops at the first error, as
/// pg_restore's `--exit-on-error` does. One job: only a `pg_restore`
/// connected to the server runs several.
async fn restore_through_psql(
    stream: Stream,
    flags: RestoreFlags,
    url: &str,
    db: &Database,
    (pg_restore, psql): (&Path, &Path),
    progress: Arc<dyn Progress>,
) -> Result<()> {
    let args = pg::command::pg_restore_sql_args(flags);
    let mut restore = pg::spawn(pg_restore, args, db, Stdio::piped(), Stdio::piped())?;
    let args = pg::command::psql_script_args(url);
    let mut run = pg::spawn(psql, args, db, Stdio::piped(), Stdio::null())?;
    let (Some(mut archive_in), Some(sql_out), Some(sql_in)) = (
        restore.child.stdin.take(),
        restore.child.stdout.take(),
        run.child.stdin.take(),
    ) else {
        return Err(Error::internal("pg_restore or psql has no pipes"));
    };
    let _stop_restore = restore.stop_on_drop();
    let _stop_psql = run.stop_on_drop();
    tokio::task::spawn_blocking(move || {
        let piping = std::thread::spawn(move || {
            let mut sql_in = std::io::BufWriter::with_capacity(1 << 20, sql_in);
            without_transaction_timeout(
                std::io::BufReader::with_capacity(1 << 20, sql_out),
                &mut sql_in,
            )
            .and_then(|()| sql_in.flush())
        });
        let streamed = stream.unpack_into(&mut archive_in, progress.as_ref());
        drop(archive_in);
        let restored = restore.wait();
        let piped = piping
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the SQL pipe's thread panicked")));
        let ran = run.wait();
        match (streamed, ran, restored, piped) {
            // A corrupt archive explains the programs' failures.
            (Err(e), ..) if e.kind() != Kind::Tool => Err(e),
            // psql names the statement the server refused; pg_restore
            // then only saw its pipe close.
            (_, Err(e), ..) => Err(e),
            (_, _, Err(e), _) => Err(e),
            (Err(e), ..) => Err(e),
            (_, _, _, Err(e)) => Err(Error::io(Kind::Tool, "piping pg_restore's SQL to psql", e)),
            (Ok(()), Ok(()), Ok(()), Ok(())) => Ok(()),
        }
    })
    .await
    .map_err(|e| Error::internal(format!("restore task failed: {e}")))?
}

/// Copies `pg_restore`'s SQL from `input` to `output` without the line
/// `SET transaction_timeout = 0;` of its header: the settings it opens with,
/// before the first statement that is not a setting, a comment or psql's
/// `\restrict`. Only there: the same text later is data.
fn without_transaction_timeout(
    mut input: impl BufRead,
    output: &mut impl Write,
) -> std::io::Result<()> {
    let mut line = Vec::new();
    let mut in_header = true;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if in_header {
            let text = line.trim_ascii();
            if text == b"SET transaction_timeout = 0;" {
                continue;
            }
            let header = text.is_empty()
                || text.starts_with(b"--")
                || text.starts_with(b"SET ")
                || text.starts_with(b"SELECT pg_catalog.set_config(")
                || text.starts_with(b"\\restrict ");
            in_header = header;
        }
        output.write_all(&line)?;
        if !in_header {
            // The rest goes through as it is, in large pieces.
            std::io::copy(&mut input, output)?;
            return Ok(());
        }
    }
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

#[cfg(test)]
mod tests {
    use super::without_transaction_timeout;

    fn filtered(sql: &str) -> String {
        let mut out = Vec::new();
        without_transaction_timeout(sql.as_bytes(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn restrict_is_written_from_17_6() {
        use super::writes_restrict;
        assert!(writes_restrict("pg_restore (PostgreSQL) 18.1"));
        assert!(writes_restrict(
            "pg_restore (PostgreSQL) 17.6 (Debian 17.6-1.pgdg120+1)"
        ));
        assert!(writes_restrict("pg_restore (PostgreSQL) 17.10"));
        assert!(!writes_restrict("pg_restore (PostgreSQL) 17.5"));
        assert!(!writes_restrict("pg_restore (PostgreSQL) 17.0"));
        assert!(!writes_restrict("garbage"));
    }

    #[test]
    fn only_the_headers_transaction_timeout_is_left_out() {
        let header = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n\
            SET statement_timeout = 0;\nSET lock_timeout = 0;\n\
            SET idle_in_transaction_session_timeout = 0;\nSET transaction_timeout = 0;\n\
            SET client_encoding = 'UTF8';\n\
            SELECT pg_catalog.set_config('search_path', '', false);\n\n";
        let body = "CREATE TABLE public.t (x text);\n\
            COPY public.t (x) FROM stdin;\nSET transaction_timeout = 0;\n\\.\n";
        let out = filtered(&format!("{header}{body}"));
        assert_eq!(
            out,
            format!(
                "{}{body}",
                header.replace("SET transaction_timeout = 0;\n", "")
            )
        );
        assert!(out.contains("SET lock_timeout = 0;"), "{out}");
        // Data that reads like the setting, after the header, stays.
        assert_eq!(
            out.matches("SET transaction_timeout = 0;").count(),
            1,
            "{out}"
        );
        assert_eq!(filtered(""), "");
        assert_eq!(filtered("no newline at the end"), "no newline at the end");
    }
}
