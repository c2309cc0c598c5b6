//! The proof of a point-in-time recovery, as run records and drill reports
//! keep it: that recovery stopped at the moment asked (the last transaction
//! replayed is at or before it, the first after it was not applied), that
//! every database reads end to end (`pg_dump`, which touches every heap and
//! TOAST page, and `pg_amcheck` where the `amcheck` extension can be
//! created), and that the job's own SQL checks pass.
//!
//! The transaction check comes first: once the server is promoted, the
//! first transaction after the target may have left its id unassigned, and
//! anything that writes (creating `amcheck`) could take that id and commit.

use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use serde::Serialize;

use super::Target;
use super::recover::RecoveryEnd;
use crate::error::{Error, Result};
use crate::jobs::proof::{self, CheckResult};
use crate::model::{Check, Database};
use crate::pg::cluster::ServerInstall;
use crate::pg::{self, Connection};

/// The proof of a PITR restore.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PitrProof {
    pub checks: Vec<CheckResult>,
    pub databases: Vec<DatabaseRead>,
    pub seconds: f64,
}

/// One database read end to end.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRead {
    pub name: String,
    /// What `pg_dump -Fc -Z0` wrote (counted, not kept).
    pub bytes: u64,
    pub seconds: f64,
    /// `ok`, `not available: …`, or what `pg_amcheck` found.
    pub amcheck: Option<String>,
}

impl PitrProof {
    /// Why the proof failed, naming each failed check; `None` when it passed.
    pub fn failure(&self) -> Option<String> {
        crate::jobs::proof::failure_of(&self.checks)
    }
}

/// How much of `pg_amcheck`'s report a failure keeps.
const AMCHECK_REPORT: usize = 2048;

/// Proves what recovery reached on the server `server` (the recovery's
/// superuser session, [`super::recover::RecoveryServer::database`]). A
/// check that fails is recorded as failed; only a server that cannot be
/// reached is an error.
pub async fn prove(
    server: &Database,
    install: &ServerInstall,
    target: &Target,
    end: &RecoveryEnd,
    checks: &[Check],
    checks_db: &str,
) -> Result<PitrProof> {
    let started = Instant::now();
    let conn = pg::connect(server, None).await?;
    let mut proof = PitrProof {
        checks: target_checks(&conn, target, end).await?,
        databases: Vec::new(),
        seconds: 0.0,
    };
    let names: Vec<String> = conn
        .client
        .query(
            "SELECT datname::text FROM pg_database \
             WHERE datallowconn AND datname <> 'template0' ORDER BY datname",
            &[],
        )
        .await
        .map_err(|e| pg::query_error("listing the recovered cluster's databases", e))?
        .iter()
        .map(|row| row.get(0))
        .collect();
    drop(conn);
    for name in names {
        let url = pg::command::with_dbname(&server.url, &name);
        let read_started = Instant::now();
        let read = read_database(install, server, &url).await;
        let seconds = read_started.elapsed().as_secs_f64();
        proof.checks.push(CheckResult {
            check: format!("database {name} read end to end (pg_dump)"),
            expected: "every row readable".to_owned(),
            actual: match &read {
                Ok(bytes) => format!(
                    "{} read in {seconds:.1} s",
                    crate::model::bytes_human(*bytes)
                ),
                Err(e) => e.message().to_owned(),
            },
            passed: read.is_ok(),
        });
        let amcheck = amcheck(server, install, &name, &url).await?;
        if let Amcheck::Ran(found) = &amcheck {
            proof.checks.push(CheckResult {
                check: format!("pg_amcheck of database {name}"),
                expected: "no corruption".to_owned(),
                actual: found.clone(),
                passed: found == "ok",
            });
        }
        proof.databases.push(DatabaseRead {
            name,
            bytes: read.unwrap_or(0),
            seconds,
            amcheck: Some(match amcheck {
                Amcheck::Ran(found) => found,
                Amcheck::NotAvailable(why) => format!("not available: {why}"),
            }),
        });
    }
    if !checks.is_empty() {
        match pg::connect(server, Some(checks_db)).await {
            Ok(conn) => {
                proof::read_only(&conn).await?;
                for check in checks {
                    proof.checks.push(proof::run_check(&conn, check).await);
                }
            }
            // The checks' database is missing: each check fails saying so.
            Err(e) => proof.checks.extend(checks.iter().map(|check| CheckResult {
                check: check.name.clone(),
                expected: check.expected(),
                actual: format!("error: {}", e.message()),
                passed: false,
            })),
        }
    }
    proof.seconds = started.elapsed().as_secs_f64();
    Ok(proof)
}

/// That recovery stopped where it was asked to.
async fn target_checks(
    conn: &Connection,
    target: &Target,
    end: &RecoveryEnd,
) -> Result<Vec<CheckResult>> {
    let replayed = match end.last_replayed {
        Some(at) => format!("last transaction replayed committed at {at}"),
        None => "no transaction replayed after the base backup".to_owned(),
    };
    let Target::Time(target) = *target else {
        let passed = end.stopped_before.is_none() && !end.paused;
        return Ok(vec![CheckResult {
            check: "recovery replayed the whole archive".to_owned(),
            expected: "recovery ended at the end of the archive".to_owned(),
            actual: match &end.stopped_before {
                None if passed => format!("it did; {replayed}"),
                None => format!("paused; {replayed}"),
                Some(stop) => format!(
                    "stopped before transaction {} ({} at {})",
                    stop.xid, stop.what, stop.at
                ),
            },
            passed,
        }]);
    };
    let mut checks = vec![CheckResult {
        check: "recovery reached the target".to_owned(),
        expected: format!("last transaction replayed at or before {target}"),
        actual: replayed,
        passed: end.last_replayed.is_none_or(|at| at <= target),
    }];
    let expected = format!("the first transaction after {target} not applied");
    checks.push(match &end.stopped_before {
        None => CheckResult {
            check: "the first transaction after the target was not applied".to_owned(),
            expected,
            actual: "recovery did not stop at a transaction: it ended at the end of the archive"
                .to_owned(),
            passed: false,
        },
        Some(stop) => {
            let (status, not_applied) = xact_status(conn, stop.xid).await?;
            CheckResult {
                check: "the first transaction after the target was not applied".to_owned(),
                expected,
                actual: format!(
                    "transaction {} ({} at {}): {status}",
                    stop.xid, stop.what, stop.at
                ),
                passed: stop.at > target && not_applied,
            }
        }
    });
    Ok(checks)
}

/// What the server says of transaction `xid` (full, with its epoch), and
/// whether that means it was not applied.
async fn xact_status(conn: &Connection, xid: u64) -> Result<(String, bool)> {
    let sql = format!("SELECT pg_xact_status('{xid}'::xid8)");
    match pg::single_value(conn, &sql).await {
        Ok(Some(status)) => {
            let not_applied = status != "committed";
            Ok((status, not_applied))
        }
        Ok(None) => Ok((
            "no status (the commit log no longer covers it)".to_owned(),
            false,
        )),
        // Its commit was the only record recovery saw of it: the id was
        // never assigned on this server.
        Err(e) if e.message().contains("is in the future") => {
            Ok(("never assigned on the recovered server".to_owned(), true))
        }
        Err(e) if e.is_temporary() => Err(e),
        Err(e) => Ok((format!("error: {}", e.message()), false)),
    }
}

/// `pg_dump -Fc -Z0` of the database `url` names, its output counted and
/// dropped: the bytes it wrote.
async fn read_database(install: &ServerInstall, server: &Database, url: &str) -> Result<u64> {
    // A server-only install has none: the client programs come from the
    // database's search list (`ServerInstall::client_dirs`).
    let program = pg::tool_path(server, "pg_dump", install.major);
    let mut dump = pg::spawn(
        &program,
        read_args(url),
        server,
        Stdio::null(),
        Stdio::piped(),
    )?;
    // Dropped with this future (a cancelled drill), pg_dump is stopped.
    let _stop = dump.stop_on_drop();
    let mut stdout = dump
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::internal("pg_dump's output was not piped"))?;
    tokio::task::spawn_blocking(move || {
        let counted = std::io::copy(&mut stdout, &mut std::io::sink());
        drop(stdout);
        let waited = dump.wait_keeping_stderr();
        let bytes = counted.map_err(|e| Error::tool(format!("reading pg_dump's output: {e}")))?;
        waited.map(|_| bytes)
    })
    .await
    .map_err(|e| Error::internal(format!("the pg_dump task failed: {e}")))?
}

/// `pg_dump` reading the whole database, uncompressed (the output is only
/// counted), never prompting.
fn read_args(url: &str) -> Vec<OsString> {
    vec![
        "--format=custom".into(),
        "--compress=0".into(),
        "--no-password".into(),
        format!("--dbname={url}").into(),
    ]
}

/// The first major `pg_amcheck` can check (`amcheck`'s `verify_heapam`).
const AMCHECK_SINCE: u32 = 14;

enum Amcheck {
    /// `ok`, or what it found.
    Ran(String),
    NotAvailable(String),
}

/// `pg_amcheck` of one database, with the `amcheck` extension created for
/// it if the database has none (and dropped again after: a restored
/// cluster is left as it was backed up).
async fn amcheck(
    server: &Database,
    install: &ServerInstall,
    name: &str,
    url: &str,
) -> Result<Amcheck> {
    // Its heap checks call `verify_heapam`, which `amcheck` has from 14 on.
    if install.major < AMCHECK_SINCE {
        return Ok(Amcheck::NotAvailable(format!(
            "pg_amcheck checks PostgreSQL {AMCHECK_SINCE} and newer; this cluster is {}",
            install.major
        )));
    }
    let program = pg::tool_path(server, "pg_amcheck", install.major);
    if !program.is_file() {
        return Ok(Amcheck::NotAvailable(format!(
            "no pg_amcheck of PostgreSQL {} or newer found beside {} (PostgreSQL 14 and newer \
             have it)",
            install.major,
            install.bindir.display()
        )));
    }
    let conn = pg::connect(server, Some(name)).await?;
    let present = pg::single_value(
        &conn,
        "SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'",
    )
    .await?
    .is_some_and(|n| n != "0");
    if !present && let Err(e) = conn.client.batch_execute("CREATE EXTENSION amcheck").await {
        let e = pg::query_error("creating the amcheck extension", e);
        if e.is_temporary() {
            return Err(e);
        }
        return Ok(Amcheck::NotAvailable(e.message().to_owned()));
    }
    let ran = run_amcheck(&program, server, url).await;
    if !present {
        conn.client
            .batch_execute("DROP EXTENSION amcheck")
            .await
            .map_err(|e| pg::query_error(&format!("dropping amcheck again in {name}"), e))?;
    }
    Ok(Amcheck::Ran(match ran {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.message().to_owned(),
    }))
}

/// Runs `pg_amcheck` on the database `url` names; its report of what it
/// found (on stdout) is the error.
async fn run_amcheck(program: &Path, server: &Database, url: &str) -> Result<()> {
    let mut check = pg::spawn(
        program,
        vec!["--no-password".into(), url.into()],
        server,
        Stdio::null(),
        Stdio::piped(),
    )?;
    let _stop = check.stop_on_drop();
    let mut stdout = check
        .child
        .stdout
        .take()
        .ok_or_else(|| Error::internal("pg_amcheck's output was not piped"))?;
    tokio::task::spawn_blocking(move || {
        let mut report = Vec::new();
        let read = stdout.read_to_end(&mut report);
        drop(stdout);
        let waited = check.wait_keeping_stderr();
        let report = String::from_utf8_lossy(&report[..report.len().min(AMCHECK_REPORT)])
            .trim()
            .to_owned();
        match (waited, read) {
            (Ok(_), Ok(_)) if report.is_empty() => Ok(()),
            (Ok(_), Ok(_)) => Err(Error::integrity(format!("pg_amcheck found: {report}"))),
            (Err(e), _) if !report.is_empty() => Err(Error::integrity(format!(
                "{}; it found: {report}",
                e.message()
            ))),
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(Error::tool(format!("reading pg_amcheck's report: {e}"))),
        }
    })
    .await
    .map_err(|e| Error::internal(format!("the pg_amcheck task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_read_whole_and_uncompressed_without_a_prompt() {
        let args: Vec<String> = read_args("postgresql://u@/app?host=%2Ftmp%2Fr&port=5")
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--format=custom",
                "--compress=0",
                "--no-password",
                "--dbname=postgresql://u@/app?host=%2Ftmp%2Fr&port=5"
            ]
        );
    }

    #[test]
    fn a_proof_fails_naming_each_failed_check() {
        let check = |name: &str, passed| CheckResult {
            check: name.to_owned(),
            expected: "1".to_owned(),
            actual: if passed { "1" } else { "0" }.to_owned(),
            passed,
        };
        let mut proof = PitrProof {
            checks: vec![check("a", true), check("b", true)],
            databases: Vec::new(),
            seconds: 0.0,
        };
        assert_eq!(proof.failure(), None);
        proof.checks.push(check("orders", false));
        assert_eq!(
            proof.failure().as_deref(),
            Some("1 of 3 checks failed: orders: expected 1, found 0")
        );
    }
}
