//! `backup wal check`: whether a server is set up to archive its WAL into a
//! physical job, and the proof that it does, as `pgbackrest check` gives it.
//!
//! Every setting archiving and base backups depend on is judged at once, so
//! an operator fixes them all in one restart rather than one per run. When
//! the archiving settings are right, the chain is proven end to end: a
//! commit record is written, `pg_switch_wal()` closes its segment, and the
//! check waits until that segment is in every storage of the job. This has
//! side effects (a segment switch), so monitoring (`backup check`) never
//! runs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg::{self, Connection};
use crate::storage::Storage;
use crate::wal::WalFile;
use crate::wal::object::list_dir;

/// The default of `--timeout`: how long the switched segment may take to
/// reach every storage.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How `archive_command` should read, for the fixes.
fn suggested_command(job: &str) -> String {
    format!("archive_command = 'backup --config /etc/backup/backup.toml wal push --job {job} %p'")
}

/// What one setting (or the role, or the archiver) was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Problem,
    /// Could not be judged (the role may not read it); the proof decides.
    Unknown,
}

/// One judged setting.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The setting's name, `role` or `pg_stat_archiver`.
    pub setting: String,
    /// What the server has, as it says it.
    pub value: Option<String>,
    pub verdict: Verdict,
    /// Why it is right, or what is wrong with it.
    pub says: String,
    /// How to put it right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn ok(setting: &str, value: Option<&str>, says: impl Into<String>) -> Finding {
        Finding {
            setting: setting.to_owned(),
            value: value.map(str::to_owned),
            verdict: Verdict::Ok,
            says: says.into(),
            fix: None,
        }
    }

    fn problem(
        setting: &str,
        value: Option<&str>,
        says: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            setting: setting.to_owned(),
            value: value.map(str::to_owned),
            verdict: Verdict::Problem,
            says: says.into(),
            fix: Some(fix.into()),
        }
    }

    fn unknown(
        setting: &str,
        value: Option<&str>,
        says: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            verdict: Verdict::Unknown,
            ..Finding::problem(setting, value, says, fix)
        }
    }

    /// Whether archiving into the job depends on it (a base backup's needs,
    /// `max_wal_senders` and the role, do not stop a proof of the chain).
    fn archiving(&self) -> bool {
        matches!(
            self.setting.as_str(),
            "wal_level" | "archive_mode" | "archive_library" | "archive_command"
        )
    }
}

/// A setting as `pg_settings` shows it to the role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Setting {
    pub value: String,
    /// postgresql.conf holds another value that the next restart applies.
    pub pending_restart: bool,
}

/// What `pg_stat_archiver` says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Archiver {
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<Timestamp>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<Timestamp>,
}

impl Archiver {
    /// Whether the newest attempt failed: a failure after the last success.
    pub fn failing(&self) -> bool {
        match (self.last_failed_time, self.last_archived_time) {
            (Some(failed), Some(archived)) => failed > archived,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    fn show(&self, zone: &jiff::tz::TimeZone) -> String {
        let at = |t: Option<Timestamp>| {
            t.map_or(String::new(), |t| {
                format!(" at {}", crate::time::show(t, zone))
            })
        };
        let archived = match &self.last_archived_wal {
            Some(wal) => format!("last archived {wal}{}", at(self.last_archived_time)),
            None => "nothing archived since the server started".to_owned(),
        };
        match &self.last_failed_wal {
            Some(wal) => format!(
                "{archived}; last failed on {wal}{} ({} failures)",
                at(self.last_failed_time),
                self.failed_count
            ),
            None => format!("{archived}; no failure"),
        }
    }
}

/// What the server says of itself, read in one go.
#[derive(Debug, Clone, Default)]
pub struct Server {
    /// `wal_level`, `archive_mode`, `archive_command`, `archive_library`
    /// (PostgreSQL 15 on), `max_wal_senders`: those the role may see.
    pub settings: std::collections::BTreeMap<String, Setting>,
    /// `archive_command` as the configuration files have it, where the
    /// server shows `(disabled)` (archive_mode off); `None` when unknown.
    pub archive_command_in_files: Option<String>,
    pub role: String,
    /// `rolreplication` or `rolsuper`.
    pub may_replicate: bool,
    pub superuser: bool,
    pub in_recovery: bool,
    pub archiver: Archiver,
}

const SETTINGS: &str =
    "'wal_level', 'archive_mode', 'archive_command', 'archive_library', 'max_wal_senders'";

fn epoch(seconds: Option<f64>) -> Option<Timestamp> {
    seconds.and_then(|s| Timestamp::from_millisecond((s * 1000.0).round() as i64).ok())
}

async fn read_archiver(conn: &Connection) -> Result<Archiver> {
    let sql = "SELECT archived_count, last_archived_wal, \
               extract(epoch FROM last_archived_time)::float8, failed_count, last_failed_wal, \
               extract(epoch FROM last_failed_time)::float8 FROM pg_stat_archiver";
    let row = conn
        .client
        .query_one(sql, &[])
        .await
        .map_err(|e| pg::query_error("reading pg_stat_archiver", e))?;
    Ok(Archiver {
        archived_count: row.get(0),
        last_archived_wal: row.get(1),
        last_archived_time: epoch(row.get(2)),
        failed_count: row.get(3),
        last_failed_wal: row.get(4),
        last_failed_time: epoch(row.get(5)),
    })
}

/// Reads what [`judge`] needs.
pub async fn read_server(conn: &Connection) -> Result<Server> {
    let mut server = Server::default();
    let rows = conn
        .client
        .query(
            &format!(
                "SELECT name, setting, pending_restart FROM pg_settings WHERE name IN ({SETTINGS})"
            ),
            &[],
        )
        .await
        .map_err(|e| pg::query_error("reading the server's settings", e))?;
    for row in rows {
        server.settings.insert(
            row.get(0),
            Setting {
                value: row.get::<_, Option<String>>(1).unwrap_or_default(),
                pending_restart: row.get::<_, Option<bool>>(2).unwrap_or(false),
            },
        );
    }
    let row = conn
        .client
        .query_one(
            "SELECT current_user::text, coalesce(r.rolreplication, false), \
             coalesce(r.rolsuper, false), pg_is_in_recovery() \
             FROM (SELECT 1) one LEFT JOIN pg_roles r ON r.rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| pg::query_error("reading the role's attributes", e))?;
    server.role = row.get(0);
    server.superuser = row.get(2);
    server.may_replicate = row.get::<_, bool>(1) || server.superuser;
    server.in_recovery = row.get(3);
    // With archive_mode off the server shows archive_command as
    // `(disabled)`: the files say what it will be once archiving is on.
    // Reading them needs a superuser or pg_read_all_settings; without,
    // it stays unknown.
    if server
        .settings
        .get("archive_command")
        .is_some_and(|s| s.value == "(disabled)")
    {
        server.archive_command_in_files = conn
            .client
            .query(
                "SELECT setting FROM pg_file_settings WHERE name = 'archive_command' \
                 AND error IS NULL ORDER BY seqno DESC LIMIT 1",
                &[],
            )
            .await
            .ok()
            .map(|rows| {
                rows.first()
                    .and_then(|r| r.get::<_, Option<String>>(0))
                    .unwrap_or_default()
            });
    }
    server.archiver = read_archiver(conn).await?;
    Ok(server)
}

/// The job `archive_command` pushes to: `Ok(Some(job))`, `Ok(None)` when it
/// runs `wal push` without `--job`, `Err(why)` when it is not `wal push`.
fn pushes_to(command: &str) -> std::result::Result<Option<String>, &'static str> {
    let words: Vec<&str> = command
        .split_whitespace()
        .map(|w| w.trim_matches(|c| c == '\'' || c == '"'))
        .collect();
    if !words.windows(2).any(|w| w == ["wal", "push"]) {
        return Err("it does not run `backup wal push`");
    }
    for (i, word) in words.iter().enumerate() {
        if let Some(job) = word.strip_prefix("--job=") {
            return Ok(Some(job.to_owned()));
        }
        if *word == "--job" {
            return Ok(words.get(i + 1).map(|j| (*j).to_owned()));
        }
    }
    Ok(None)
}

/// Judges every setting `job`'s archive depends on; a pure function of what
/// the server said.
pub fn judge(job: &str, server: &Server, zone: &jiff::tz::TimeZone) -> Vec<Finding> {
    let mut out = Vec::new();
    let setting = |name: &str| server.settings.get(name);
    // A value postgresql.conf already changes at the next restart.
    let restart_note = |s: &Setting| {
        if s.pending_restart {
            " (postgresql.conf has another value, which the next restart applies)"
        } else {
            ""
        }
    };
    match setting("wal_level") {
        Some(s) if pg::physical::wal_level_archives(&s.value) => out.push(Finding::ok(
            "wal_level",
            Some(&s.value),
            format!(
                "WAL carries what recovery from an archive needs{}",
                restart_note(s)
            ),
        )),
        Some(s) => out.push(Finding::problem(
            "wal_level",
            Some(&s.value),
            format!(
                "wal_level = {}: WAL lacks what archive recovery and base backups need{}",
                s.value,
                restart_note(s)
            ),
            "set wal_level = replica in postgresql.conf and restart the server",
        )),
        None => out.push(Finding::unknown(
            "wal_level",
            None,
            format!("role {} may not read wal_level", server.role),
            format!("GRANT pg_read_all_settings TO {}", server.role),
        )),
    }
    let mode = setting("archive_mode");
    match mode {
        Some(s) if pg::physical::archive_mode_archives(&s.value) => out.push(Finding::ok(
            "archive_mode",
            Some(&s.value),
            format!("the server archives its WAL{}", restart_note(s)),
        )),
        Some(s) => out.push(Finding::problem(
            "archive_mode",
            Some(&s.value),
            format!(
                "archive_mode = {}: the server archives no WAL{}",
                s.value,
                restart_note(s)
            ),
            "set archive_mode = on in postgresql.conf and restart the server (a reload is not enough)",
        )),
        None => out.push(Finding::unknown(
            "archive_mode",
            None,
            format!("role {} may not read archive_mode", server.role),
            format!("GRANT pg_read_all_settings TO {}", server.role),
        )),
    }
    // PostgreSQL 15 on: a library, when set, is used instead of the command.
    if let Some(s) = setting("archive_library") {
        if s.value.is_empty() {
            out.push(Finding::ok(
                "archive_library",
                Some(""),
                "archive_command is used",
            ));
        } else {
            out.push(Finding::problem(
                "archive_library",
                Some(&s.value),
                format!(
                    "archive_library = '{}': the server archives through it and ignores archive_command",
                    s.value
                ),
                "set archive_library = '' in postgresql.conf and reload (SELECT pg_reload_conf())",
            ));
        }
    }
    let fix_command = format!(
        "set {} in postgresql.conf and reload",
        suggested_command(job)
    );
    let command = match setting("archive_command") {
        Some(s) if s.value == "(disabled)" => match &server.archive_command_in_files {
            Some(c) => Some(c.clone()),
            None => {
                out.push(Finding::unknown(
                    "archive_command",
                    Some(&s.value),
                    "the server does not show archive_command while archive_mode is off, \
                     and this role may not read the configuration files",
                    "run wal check again once archive_mode is on",
                ));
                None
            }
        },
        Some(s) => Some(s.value.clone()),
        None => {
            out.push(Finding::unknown(
                "archive_command",
                None,
                format!("role {} may not read archive_command", server.role),
                format!(
                    "GRANT pg_read_all_settings TO {}, or run wal check as a superuser",
                    server.role
                ),
            ));
            None
        }
    };
    if let Some(command) = command {
        let value = Some(command.as_str());
        if command.trim().is_empty() {
            out.push(Finding::problem(
                "archive_command",
                value,
                "archive_command is empty: nothing is archived",
                fix_command.clone(),
            ));
        } else {
            match pushes_to(&command) {
                Err(why) => out.push(Finding::problem(
                    "archive_command",
                    value,
                    format!("archive_command = '{command}': {why} into job {job}"),
                    fix_command.clone(),
                )),
                Ok(None) => out.push(Finding::problem(
                    "archive_command",
                    value,
                    format!("archive_command = '{command}' names no job (--job)"),
                    fix_command.clone(),
                )),
                Ok(Some(other)) if other != job => out.push(Finding::problem(
                    "archive_command",
                    value,
                    format!(
                        "archive_command = '{command}' pushes to job {other}, not to job {job}: \
                         this job's archive gets nothing"
                    ),
                    format!(
                        "change --job {other} to --job {job} in archive_command and reload, \
                         or check job {other} instead"
                    ),
                )),
                Ok(Some(_)) if !command.contains("%p") => out.push(Finding::problem(
                    "archive_command",
                    value,
                    "archive_command does not pass the file's path (%p)",
                    fix_command.clone(),
                )),
                Ok(Some(_)) => out.push(Finding::ok(
                    "archive_command",
                    value,
                    format!("runs `wal push` into job {job}"),
                )),
            }
        }
    }
    match setting("max_wal_senders") {
        Some(s) if s.value.parse::<u32>().is_ok_and(|n| n > 0) => out.push(Finding::ok(
            "max_wal_senders",
            Some(&s.value),
            "pg_basebackup can connect",
        )),
        Some(s) => out.push(Finding::problem(
            "max_wal_senders",
            Some(&s.value),
            format!(
                "max_wal_senders = {}: base backups (pg_basebackup) cannot connect",
                s.value
            ),
            "set max_wal_senders = 10 in postgresql.conf and restart the server",
        )),
        None => {}
    }
    if server.may_replicate {
        out.push(Finding::ok(
            "role",
            Some(&server.role),
            if server.superuser {
                "a superuser, may take base backups"
            } else {
                "has REPLICATION, may take base backups"
            },
        ));
    } else {
        out.push(Finding::problem(
            "role",
            Some(&server.role),
            format!(
                "role {} has neither REPLICATION nor SUPERUSER: it may not take base backups",
                server.role
            ),
            format!(
                "ALTER ROLE {} REPLICATION (and allow it a replication connection in pg_hba.conf)",
                pg::quote_ident(&server.role)
            ),
        ));
    }
    out.push(judge_archiver(&server.archiver, zone));
    out
}

/// `pg_stat_archiver`: a failure after the last success means archiving
/// fails now.
fn judge_archiver(a: &Archiver, zone: &jiff::tz::TimeZone) -> Finding {
    if a.failing() {
        Finding::problem(
            "pg_stat_archiver",
            a.last_failed_wal.as_deref(),
            format!("archive_command fails: {}", a.show(zone)),
            "see the server log for archive_command's own message",
        )
    } else {
        Finding::ok(
            "pg_stat_archiver",
            a.last_archived_wal.as_deref(),
            a.show(zone),
        )
    }
}

/// One storage that got the switched segment.
#[derive(Debug, Clone, Serialize)]
pub struct Arrival {
    pub storage: String,
    /// After the switch.
    pub seconds: f64,
}

/// The proof of the chain: a segment switched out and where it arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Proof {
    pub segment: String,
    pub arrived: Vec<Arrival>,
    /// Storages it did not reach within the timeout, with the last error
    /// met listing them, if any.
    pub missing: Vec<Missing>,
    pub timeout_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    pub storage: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Proof {
    /// How long the slowest storage took.
    pub fn seconds(&self) -> f64 {
        self.arrived.iter().map(|a| a.seconds).fold(0.0, f64::max)
    }
}

/// What `wal check` found.
#[derive(Debug, Serialize)]
pub struct WalCheck {
    pub job: String,
    pub ok: bool,
    pub findings: Vec<Finding>,
    /// `None` when the settings kept it from being tried.
    pub proof: Option<Proof>,
    /// Why there is no proof, or why it could not be made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_proven: Option<String>,
    /// The switch itself failed (a role that may not switch, a standby).
    #[serde(skip)]
    switch_error: Option<Error>,
}

impl WalCheck {
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.verdict == Verdict::Problem)
    }

    /// The error the check ends in, of the kind that fits: Config for a
    /// setting, Database when the switch failed, Storage when a storage
    /// did not get the segment. `None` when all is well.
    pub fn failure(&self) -> Option<Error> {
        let job = &self.job;
        let problems: Vec<&Finding> = self.problems().collect();
        if problems.iter().any(|f| f.setting != "pg_stat_archiver") {
            let said: Vec<&str> = problems.iter().map(|f| f.says.as_str()).collect();
            let fixes: Vec<&str> = problems.iter().filter_map(|f| f.fix.as_deref()).collect();
            return Some(
                Error::config(format!(
                    "job {job}: the server is not set up to archive WAL into this job: {}",
                    said.join("; ")
                ))
                .with_hint(fixes.join("; ")),
            );
        }
        if let Some(e) = &self.switch_error {
            return Some(e.again());
        }
        let archiver = problems.first().map(|f| f.says.clone());
        if let Some(proof) = &self.proof
            && !proof.missing.is_empty()
        {
            let missing: Vec<String> = proof
                .missing
                .iter()
                .map(|m| match &m.error {
                    Some(e) => format!("storage {} ({e})", m.storage),
                    None => format!("storage {}", m.storage),
                })
                .collect();
            let held: Vec<&str> = proof.arrived.iter().map(|a| a.storage.as_str()).collect();
            let mut message = format!(
                "job {job}: segment {} did not reach {} within {}s",
                proof.segment,
                missing.join(", "),
                proof.timeout_seconds
            );
            if !held.is_empty() {
                message.push_str(&format!(" ({} has it)", held.join(", ")));
            }
            let hint = match archiver {
                Some(a) => format!("{a}; see the server log"),
                None => "see the server log for archive_command's messages; check that \
                         archive_command's --config names the job file this check read"
                    .to_owned(),
            };
            return Some(Error::storage(message).with_hint(hint));
        }
        archiver.map(|a| {
            Error::storage(format!("job {job}: {a}"))
                .with_hint("see the server log for archive_command's own message")
        })
    }
}

/// Checks the server behind `db` and, when its archiving settings are
/// right, proves the chain into `storages`. An error only when the server
/// cannot be reached or read; what is wrong with it is in the result.
pub async fn check(
    job: &str,
    zone: &jiff::tz::TimeZone,
    db: &Database,
    storages: &[Arc<dyn Storage>],
    timeout: Duration,
) -> Result<WalCheck> {
    let conn = pg::connect(db, None)
        .await
        .map_err(|e| e.context(format!("job {job}")))?;
    let server = read_server(&conn).await?;
    let mut findings = judge(job, &server, zone);
    let mut result = WalCheck {
        job: job.to_owned(),
        ok: false,
        findings: Vec::new(),
        proof: None,
        not_proven: None,
        switch_error: None,
    };
    let blocking: Vec<&str> = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Problem && f.archiving())
        .map(|f| f.setting.as_str())
        .collect();
    if !blocking.is_empty() {
        result.not_proven = Some(format!(
            "not tried: {} must be set right first",
            blocking.join(", ")
        ));
    } else if server.in_recovery {
        result.not_proven = Some(
            "not tried: the server is a standby, where WAL cannot be switched; \
             run wal check against the primary"
                .to_owned(),
        );
    } else {
        match prove(&conn, job, storages, timeout).await {
            Ok(proof) => {
                result.proof = Some(proof);
                // What the archiver says now, after the segment went through
                // it (or did not), is what counts.
                let archiver = read_archiver(&conn).await?;
                if let Some(f) = findings
                    .iter_mut()
                    .find(|f| f.setting == "pg_stat_archiver")
                {
                    *f = judge_archiver(&archiver, zone);
                }
            }
            Err(e) => {
                result.not_proven = Some(e.to_string());
                result.switch_error = Some(e.context(format!("job {job}")));
            }
        }
    }
    result.findings = findings;
    result.ok = result.failure().is_none();
    Ok(result)
}

/// Writes a commit record, switches the segment out, and waits until it is
/// in every storage.
async fn prove(
    conn: &Connection,
    job: &str,
    storages: &[Arc<dyn Storage>],
    timeout: Duration,
) -> Result<Proof> {
    // Its own transaction: its commit record makes the segment non-empty,
    // else a switch on an idle server does nothing.
    pg::single_value(conn, "SELECT txid_current()").await?;
    let segment = pg::single_value(conn, "SELECT pg_walfile_name(pg_switch_wal())")
        .await
        .map_err(|e| {
            let hint = format!(
                "{}; or GRANT EXECUTE ON FUNCTION pg_switch_wal() TO the job's role",
                e.hint().unwrap_or("run wal check as a superuser")
            );
            e.with_hint(hint)
        })?
        .ok_or_else(|| Error::database("pg_switch_wal() returned nothing"))?;
    let file = WalFile::parse(&segment)
        .filter(|f| matches!(f, WalFile::Segment(_)))
        .ok_or_else(|| {
            Error::database(format!(
                "pg_walfile_name() returned '{segment}', not a segment"
            ))
        })?;
    let prefix = file.prefix(job)?;
    let started = Instant::now();
    let mut arrived: Vec<Option<f64>> = vec![None; storages.len()];
    let mut errors: Vec<Option<String>> = vec![None; storages.len()];
    let mut pause = Duration::from_millis(100);
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let looks = storages.iter().enumerate().map(|(i, s)| {
            let prefix = &prefix;
            let file = &file;
            let waiting = arrived[i].is_none();
            async move {
                if !waiting {
                    return None;
                }
                let bound = left.max(Duration::from_secs(1));
                Some(
                    match tokio::time::timeout(bound, list_dir(s.as_ref(), prefix)).await {
                        Ok(Ok(listing)) => Ok(listing.iter().any(|a| a.file == *file)),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("listing took over {}s", bound.as_secs())),
                    },
                )
            }
        });
        let seen = futures::future::join_all(looks).await;
        let at = started.elapsed().as_secs_f64();
        for (i, look) in seen.into_iter().enumerate() {
            match look {
                Some(Ok(true)) => {
                    arrived[i] = Some(at);
                    errors[i] = None;
                }
                Some(Ok(false)) => errors[i] = None,
                Some(Err(e)) => errors[i] = Some(e),
                None => {}
            }
        }
        if arrived.iter().all(Option::is_some) || started.elapsed() >= timeout {
            break;
        }
        tokio::time::sleep(pause.min(timeout.saturating_sub(started.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    let mut proof = Proof {
        segment,
        arrived: Vec::new(),
        missing: Vec::new(),
        timeout_seconds: timeout.as_secs_f64(),
    };
    for ((storage, at), error) in storages.iter().zip(arrived).zip(errors) {
        match at {
            Some(seconds) => proof.arrived.push(Arrival {
                storage: storage.name().to_owned(),
                seconds,
            }),
            None => proof.missing.push(Missing {
                storage: storage.name().to_owned(),
                error,
            }),
        }
    }
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge_utc(job: &str, server: &Server) -> Vec<Finding> {
        judge(job, server, &jiff::tz::TimeZone::UTC)
    }

    fn server(settings: &[(&str, &str)]) -> Server {
        Server {
            settings: settings
                .iter()
                .map(|(k, v)| {
                    (
                        (*k).to_owned(),
                        Setting {
                            value: (*v).to_owned(),
                            pending_restart: false,
                        },
                    )
                })
                .collect(),
            role: "backup".into(),
            may_replicate: true,
            ..Server::default()
        }
    }

    const GOOD: &[(&str, &str)] = &[
        ("wal_level", "replica"),
        ("archive_mode", "on"),
        ("archive_library", ""),
        (
            "archive_command",
            "/usr/bin/backup --config /etc/backup/app.toml wal push --job base %p",
        ),
        ("max_wal_senders", "10"),
    ];

    fn problems(findings: &[Finding]) -> Vec<&str> {
        findings
            .iter()
            .filter(|f| f.verdict == Verdict::Problem)
            .map(|f| f.setting.as_str())
            .collect()
    }

    fn with(changes: &[(&str, &str)]) -> Server {
        let mut s = server(GOOD);
        for (k, v) in changes {
            s.settings.insert(
                (*k).to_owned(),
                Setting {
                    value: (*v).to_owned(),
                    pending_restart: false,
                },
            );
        }
        s
    }

    #[test]
    fn a_good_setup_has_no_problem() {
        let found = judge_utc("base", &server(GOOD));
        assert!(problems(&found).is_empty(), "{found:?}");
        assert!(found.iter().all(|f| f.verdict == Verdict::Ok), "{found:?}");
        let s = with(&[(
            "archive_command",
            "env X=1 backup wal push --job=base \"%p\"",
        )]);
        assert!(problems(&judge_utc("base", &s)).is_empty());
    }

    #[test]
    fn every_problem_is_named_at_once_with_its_fix() {
        let mut s = with(&[
            ("wal_level", "minimal"),
            ("archive_mode", "off"),
            ("archive_library", "basic_archive"),
            ("max_wal_senders", "0"),
        ]);
        s.may_replicate = false;
        let found = judge_utc("base", &s);
        assert_eq!(
            problems(&found),
            [
                "wal_level",
                "archive_mode",
                "archive_library",
                "max_wal_senders",
                "role"
            ]
        );
        for f in found.iter().filter(|f| f.verdict == Verdict::Problem) {
            assert!(f.says.contains(&f.setting), "{f:?}");
            assert!(f.fix.is_some(), "{f:?}");
        }
        let mode = found.iter().find(|f| f.setting == "archive_mode").unwrap();
        assert!(mode.fix.as_deref().unwrap().contains("restart"), "{mode:?}");
    }

    #[test]
    fn archive_command_must_push_to_this_job() {
        let says = |command: &str| {
            let found = judge_utc("base", &with(&[("archive_command", command)]));
            let f = found
                .into_iter()
                .find(|f| f.setting == "archive_command")
                .unwrap();
            (f.verdict, f.says)
        };
        let (v, said) = says("backup wal push --job other %p");
        assert_eq!(v, Verdict::Problem);
        assert!(said.contains("job other, not to job base"), "{said}");
        let (v, said) = says("backup wal push --job=other %p");
        assert_eq!(v, Verdict::Problem);
        assert!(said.contains("job other"), "{said}");
        let (v, said) = says("cp %p /mnt/archive/%f");
        assert_eq!(v, Verdict::Problem);
        assert!(said.contains("does not run `backup wal push`"), "{said}");
        let (v, said) = says("backup wal push %p");
        assert_eq!(v, Verdict::Problem);
        assert!(said.contains("names no job"), "{said}");
        let (v, said) = says("backup wal push --job base");
        assert_eq!(v, Verdict::Problem);
        assert!(said.contains("%p"), "{said}");
        let (v, said) = says("");
        assert_eq!(v, Verdict::Problem);
        assert!(said.contains("empty"), "{said}");
    }

    #[test]
    fn archive_command_hidden_while_archiving_is_off_is_read_from_the_files() {
        let mut s = with(&[("archive_mode", "off"), ("archive_command", "(disabled)")]);
        let found = judge_utc("base", &s);
        let f = found
            .iter()
            .find(|f| f.setting == "archive_command")
            .unwrap();
        assert_eq!(f.verdict, Verdict::Unknown, "{f:?}");
        s.archive_command_in_files = Some("backup wal push --job other %p".into());
        assert_eq!(
            problems(&judge_utc("base", &s)),
            ["archive_mode", "archive_command"]
        );
    }

    #[test]
    fn a_setting_the_role_may_not_read_is_unknown_not_a_problem() {
        let mut s = server(GOOD);
        s.settings.remove("archive_command");
        let found = judge_utc("base", &s);
        assert!(problems(&found).is_empty());
        let f = found
            .iter()
            .find(|f| f.setting == "archive_command")
            .unwrap();
        assert_eq!(f.verdict, Verdict::Unknown);
        assert!(f.fix.as_deref().unwrap().contains("pg_read_all_settings"));
    }

    #[test]
    fn a_failure_after_the_last_success_is_a_problem_with_the_failed_segment() {
        let t = |s: &str| Some(s.parse::<Timestamp>().unwrap());
        let mut s = server(GOOD);
        s.archiver = Archiver {
            archived_count: 3,
            last_archived_wal: Some("000000010000000000000003".into()),
            last_archived_time: t("2026-12-06T01:00:00Z"),
            failed_count: 2,
            last_failed_wal: Some("000000010000000000000004".into()),
            last_failed_time: t("2026-12-06T01:05:00Z"),
        };
        let found = judge_utc("base", &s);
        let f = found
            .iter()
            .find(|f| f.setting == "pg_stat_archiver")
            .unwrap();
        assert_eq!(f.verdict, Verdict::Problem);
        assert!(f.says.contains("000000010000000000000004"), "{f:?}");
        assert!(f.says.contains("2026-12-06 01:05:00"), "{f:?}");
        assert!(f.fix.as_deref().unwrap().contains("server log"));
        // A success since: archiving works again.
        s.archiver.last_archived_time = t("2026-12-06T01:06:00Z");
        assert!(problems(&judge_utc("base", &s)).is_empty());
    }

    #[test]
    fn the_failure_kind_fits_what_went_wrong() {
        use crate::error::Kind;
        let mut check = WalCheck {
            job: "base".into(),
            ok: false,
            findings: judge_utc("base", &with(&[("archive_mode", "off")])),
            proof: None,
            not_proven: None,
            switch_error: None,
        };
        let e = check.failure().unwrap();
        assert_eq!(e.kind(), Kind::Config);
        assert!(
            e.message().contains("archive_mode = off"),
            "{}",
            e.message()
        );
        assert!(e.hint().unwrap().contains("archive_mode = on"));
        check.findings = judge_utc("base", &server(GOOD));
        assert!(check.failure().is_none());
        check.proof = Some(Proof {
            segment: "000000010000000000000004".into(),
            arrived: vec![Arrival {
                storage: "disk".into(),
                seconds: 0.5,
            }],
            missing: vec![Missing {
                storage: "s3".into(),
                error: None,
            }],
            timeout_seconds: 60.0,
        });
        let e = check.failure().unwrap();
        assert_eq!(e.kind(), Kind::Storage);
        assert!(
            e.message()
                .contains("did not reach storage s3 within 60s (disk has it)"),
            "{}",
            e.message()
        );
    }
}
