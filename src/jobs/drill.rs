//! `backup drill`: the disaster-recovery rehearsal a team runs from a fresh
//! host with only the job file and storage access.
//!
//! Plan first (which backup, from where, into what, checked how), then: a
//! throwaway cluster (or the server of `--target-url`), the backup's globals,
//! the database, the same proof as a restore test, and a teardown that runs
//! whatever happened before it. What it measured goes into a Markdown report
//! an auditor can read: RTO (start to verified data) and RPO (now minus the
//! backup's snapshot), each step's time, every check with its numbers.

use std::fmt;
use std::fmt::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::catalog::{self, Manifest, Role};
use crate::error::{Error, Result};
use crate::jobs::proof::{self, Proof};
use crate::jobs::restore;
use crate::model::{Check, Database, show_number};
use crate::pg::cluster::{ServerInstall, Throwaway};
use crate::pg::{self, command::RestoreFlags};
use crate::report::{Progress, bytes_human};
use crate::storage::Storage;
use crate::time;

/// Where a drill restores.
#[derive(Debug, Clone)]
pub enum DrillTarget {
    /// A cluster of its own, made and removed by the drill.
    Throwaway(ServerInstall),
    /// A server the operator provides (`--target-url`).
    Server(Database),
}

#[derive(Debug, Clone)]
pub struct DrillPlan {
    pub job: String,
    pub timezone: TimeZone,
    pub backup: Manifest,
    pub storage: String,
    /// `local /var/backups`, `s3://bucket at ...`.
    pub storage_location: String,
    pub target: DrillTarget,
    /// The database created on the target: the backup's own name.
    pub dbname: String,
    pub checks: Vec<Check>,
    /// The restore-test jobs whose checks these are.
    pub checks_from: Vec<String>,
    /// Parallel `pg_restore` jobs.
    pub jobs: u32,
    /// How the backup's objects open.
    pub crypt: crate::archive::crypt::Crypt,
}

impl DrillPlan {
    fn has_globals(&self) -> bool {
        self.backup.object(Role::Globals).is_some()
    }

    pub fn target_description(&self) -> String {
        match &self.target {
            DrillTarget::Throwaway(install) => format!(
                "a throwaway cluster ({}, {}) on 127.0.0.1, removed afterwards",
                install.version,
                install.bindir.display()
            ),
            DrillTarget::Server(db) => format!("the server of {}", db.url),
        }
    }
}

impl fmt::Display for DrillPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        writeln!(f, "drill plan for job {}:", self.job)?;
        writeln!(
            f,
            "  backup:    {} (data as of {}; database {}, PostgreSQL {}, {} stored)",
            b.id,
            time::show(b.snapshot_at, &self.timezone),
            b.dbname,
            b.server_version,
            bytes_human(b.stored_size())
        )?;
        writeln!(
            f,
            "  from:      storage {} ({})",
            self.storage, self.storage_location
        )?;
        writeln!(f, "  into:      {}", self.target_description())?;
        writeln!(
            f,
            "  restore:   {}database {}, created there{}",
            if self.has_globals() {
                "the roles the target lacks (from the backup's globals), then "
            } else {
                "no globals in this backup: objects without owners or privileges; "
            },
            self.dbname,
            if self.jobs > 1 {
                format!(", with {} parallel jobs", self.jobs)
            } else {
                String::new()
            }
        )?;
        writeln!(
            f,
            "  checks:    table count {}, exact rows of each table, {} extension(s), {} check(s){}",
            b.tables.len(),
            b.extensions.len(),
            self.checks.len(),
            if self.checks_from.is_empty() {
                String::new()
            } else {
                format!(" of {}", self.checks_from.join(", "))
            }
        )?;
        for c in &self.checks {
            writeln!(f, "             {}: {}", c.name, c.expected())?;
        }
        write!(
            f,
            "  then:      {}",
            match &self.target {
                DrillTarget::Throwaway(_) => "stop the cluster and remove its files",
                DrillTarget::Server(_) => "drop the database (roles it created stay)",
            }
        )
    }
}

/// A step of the drill and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct StepTiming {
    pub step: String,
    pub seconds: f64,
    /// `ok`, or what went wrong.
    pub result: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillOutcome {
    pub backup_job: String,
    pub backup_id: String,
    pub snapshot_at: Timestamp,
    pub storage: String,
    pub target: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    /// From the start of the drill to verified data.
    pub rto_seconds: Option<f64>,
    /// From the backup's snapshot to the start of the drill: the data a
    /// disaster now would lose.
    pub rpo_seconds: f64,
    pub steps: Vec<StepTiming>,
    #[serde(flatten)]
    pub proof: Proof,
    /// The step that failed and why; `None` when the drill got to its checks.
    pub error: Option<String>,
    #[serde(skip)]
    pub error_kind: Option<crate::error::Kind>,
    pub warnings: Vec<String>,
}

impl DrillOutcome {
    pub fn failure(&self) -> Option<String> {
        self.error
            .clone()
            .or_else(|| self.proof.failure())
            .map(|why| {
                format!(
                    "the drill of backup {} (job {}) failed: {why}",
                    self.backup_id, self.backup_job
                )
            })
    }

    pub fn details(&self) -> serde_json::Value {
        Proof::record_of(self)
    }
}

/// Times one step and notes its result.
async fn step<T>(
    steps: &mut Vec<StepTiming>,
    name: impl Into<String>,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let name = name.into();
    tracing::info!("drill: {name}");
    let started = Instant::now();
    let result = work.await;
    steps.push(StepTiming {
        step: name.clone(),
        seconds: started.elapsed().as_secs_f64(),
        result: match &result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("FAILED: {e}"),
        },
    });
    result.map_err(|e| e.context(name))
}

/// Carries out a plan. Always returns what happened: a failed step ends the
/// drill early, and the teardown runs whatever happened, also when `cancel`
/// stops the drill (SIGINT, SIGTERM) in the middle of a step.
pub async fn execute(
    plan: &DrillPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    now: Timestamp,
    cancel: &CancellationToken,
) -> DrillOutcome {
    let started = Instant::now();
    let mut outcome = DrillOutcome {
        backup_job: plan.job.clone(),
        backup_id: plan.backup.id.to_string(),
        snapshot_at: plan.backup.snapshot_at,
        storage: plan.storage.clone(),
        target: plan.target_description(),
        started_at: now,
        finished_at: now,
        rto_seconds: None,
        rpo_seconds: now.duration_since(plan.backup.snapshot_at).as_secs_f64(),
        steps: Vec::new(),
        proof: Proof::default(),
        error: None,
        error_kind: None,
        warnings: Vec::new(),
    };
    // The cluster lands here as soon as it exists, from the blocking task
    // that starts it: a drill stopped meanwhile still finds it to tear down.
    let cluster: Arc<Mutex<Option<Throwaway>>> = Arc::default();
    let mut starting = match &plan.target {
        DrillTarget::Throwaway(install) => {
            let (install, slot) = (install.clone(), cluster.clone());
            Some(tokio::task::spawn_blocking(move || {
                let started = Throwaway::start(&install)?;
                let db = started.database().clone();
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
                Ok(db)
            }))
        }
        DrillTarget::Server(_) => None,
    };
    // Whether this drill created the database on a --target-url server: only
    // then is it dropped.
    let mut created = false;
    let mut admin = None;
    let body = run_steps(
        plan,
        storage,
        progress,
        &mut starting,
        &mut outcome,
        &mut created,
        &mut admin,
        started,
    );
    let result = tokio::select! {
        result = body => result,
        () = cancel.cancelled() => Err(Error::interrupted("the drill was stopped by a signal")),
    };
    if let Err(e) = result {
        outcome.error = Some(e.to_string());
        outcome.error_kind = Some(e.kind());
    }
    // A start still under way finishes first, so its cluster is torn down too.
    if let Some(task) = starting.take() {
        let _ = task.await;
    }
    let taken = cluster.lock().unwrap_or_else(|p| p.into_inner()).take();
    let torn = match (taken, &plan.target) {
        (Some(c), _) => {
            step(
                &mut outcome.steps,
                "stop the throwaway cluster and remove its files",
                async {
                    tokio::task::spawn_blocking(move || c.tear_down())
                        .await
                        .map_err(|e| Error::internal(format!("teardown task failed: {e}")))?
                },
            )
            .await
        }
        (None, DrillTarget::Server(db)) if created => {
            step(
                &mut outcome.steps,
                format!("drop database {}", plan.dbname),
                async {
                    let admin = match admin {
                        Some(a) => a,
                        None => pg::connect(db, Some("postgres")).await?,
                    };
                    pg::drop_database(&admin, &plan.dbname).await
                },
            )
            .await
        }
        _ => Ok(()),
    };
    if let Err(e) = torn {
        outcome.warnings.push(format!("teardown: {e}"));
    }
    outcome.finished_at = now
        .checked_add(jiff::SignedDuration::try_from(started.elapsed()).unwrap_or_default())
        .unwrap_or(now);
    outcome
}

type Starting = Option<tokio::task::JoinHandle<Result<Database>>>;

/// The drill up to verified data.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    plan: &DrillPlan,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
    starting: &mut Starting,
    outcome: &mut DrillOutcome,
    created: &mut bool,
    admin_out: &mut Option<pg::Connection>,
    started: Instant,
) -> Result<()> {
    let steps = &mut outcome.steps;
    let db = match (&plan.target, starting.as_mut()) {
        (DrillTarget::Throwaway(install), Some(task)) => {
            let db = step(
                steps,
                format!("create a throwaway cluster ({})", install.version),
                async {
                    task.await
                        .map_err(|e| Error::internal(format!("cluster task failed: {e}")))?
                },
            )
            .await?;
            *starting = None;
            db
        }
        (DrillTarget::Server(db), _) => db.clone(),
        (DrillTarget::Throwaway(_), None) => {
            return Err(Error::internal("the cluster was not started"));
        }
    };
    let admin = pg::connect(&db, Some("postgres")).await?;
    if plan.has_globals() {
        let applied = step(
            steps,
            "restore globals (roles)",
            apply_globals(plan, &db, &admin, storage),
        )
        .await?;
        outcome.warnings.extend(applied);
    }
    let pg_restore = restore::pg_restore_for(&admin, &db, &plan.backup).await?;
    // A throwaway cluster has an empty `postgres` already: a backup of it
    // goes there.
    let exists = matches!(plan.target, DrillTarget::Throwaway(_))
        && pg::database_exists(&admin, &plan.dbname).await?;
    if !exists {
        step(
            steps,
            format!("create database {}", plan.dbname),
            pg::create_database(&admin, &plan.dbname),
        )
        .await?;
        *created = true;
    }
    *admin_out = Some(admin);
    let what = restore::Load {
        job: &plan.job,
        backup: &plan.backup,
        crypt: &plan.crypt,
        flags: RestoreFlags {
            jobs: plan.jobs,
            no_tablespaces: true,
            no_owner: !plan.has_globals(),
            no_acl: !plan.has_globals(),
        },
        into: &plan.dbname,
    };
    step(
        steps,
        format!(
            "restore database {} ({} stored, {} raw)",
            plan.dbname,
            bytes_human(plan.backup.stored_size()),
            bytes_human(plan.backup.raw_size())
        ),
        restore::load(what, &db, storage, &pg_restore, progress),
    )
    .await?;
    if let Some(props) = &plan.backup.database_properties {
        let props =
            pg::database::merge(Some(props), None, !plan.has_globals(), !plan.has_globals());
        if let (Some(props), Some(admin)) = (props, admin_out.as_ref()) {
            let applied = step(
                steps,
                "apply the database's settings, grants and comment",
                async {
                    Ok::<_, Error>(pg::database::apply_all(admin, &plan.dbname, &props).await)
                },
            )
            .await?;
            outcome.warnings.extend(applied);
        }
    }
    let conn = pg::connect(&db, Some(&plan.dbname)).await?;
    outcome.proof = step(
        steps,
        "check the restored data",
        proof::prove(&conn, &plan.backup, &plan.checks),
    )
    .await?;
    outcome.rto_seconds = Some(started.elapsed().as_secs_f64());
    Ok(())
}

/// The backup's `globals.sql` through `psql`, creating the roles the target
/// lacks. Roles that exist there are left as they are (their `CREATE` and
/// `ALTER` lines are skipped: a drill never changes a live role's password or
/// rights), and tablespaces are not created (the restore puts every table in
/// the default one). Returns what is worth a warning.
async fn apply_globals(
    plan: &DrillPlan,
    db: &Database,
    admin: &pg::Connection,
    storage: &Arc<dyn Storage>,
) -> Result<Vec<String>> {
    let object = plan
        .backup
        .object(Role::Globals)
        .ok_or_else(|| Error::internal("no globals in the backup"))?;
    let key = catalog::backup_prefix(&plan.job, &plan.backup.id)?.join(&object.key)?;
    let source = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let compression = plan.backup.compression()?;
    let digest = object.digest.clone();
    let label = format!("{key} in storage {}", storage.name());
    if digest.raw_size > GLOBALS_LIMIT {
        return Err(Error::integrity(format!(
            "{label} is {} raw: not the roles and tablespaces of one cluster",
            bytes_human(digest.raw_size)
        )));
    }
    let crypt = plan.crypt.clone();
    let sql = tokio::task::spawn_blocking(move || {
        let mut raw = Vec::new();
        crate::archive::unpack(
            source,
            compression,
            &crypt,
            &digest,
            &mut raw,
            &label,
            &|_| {},
        )?;
        Ok::<_, Error>(String::from_utf8_lossy(&raw).into_owned())
    })
    .await
    .map_err(|e| Error::internal(format!("globals task failed: {e}")))??;
    let existing: Vec<String> = admin
        .client
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await
        .map_err(|e| pg::query_error("listing the target's roles", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (script, kept_roles) = filter_globals(&sql, &existing);
    let mut warnings = Vec::new();
    if !kept_roles.is_empty() {
        warnings.push(format!(
            "roles that exist on the target were left as they are: {}",
            kept_roles.join(", ")
        ));
    }
    let major = pg::command::parse_tool_version(&plan.backup.pg_dump_version).unwrap_or(0);
    let psql = pg::tool_path(db, "psql", major);
    let args = vec![
        "-X".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=0".into(),
        "--no-password".into(),
        format!("--dbname={}", db.url).into(),
        "-f".into(),
        "-".into(),
    ];
    let mut child = pg::spawn(&psql, args, db, Stdio::piped(), Stdio::null())?;
    let mut stdin = child
        .child
        .stdin
        .take()
        .ok_or_else(|| Error::internal("psql has no stdin"))?;
    let _stop = child.stop_on_drop();
    let stderr = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let written = stdin.write_all(script.as_bytes());
        drop(stdin);
        let stderr = child.wait_keeping_stderr()?;
        written
            .map_err(|e| Error::io(crate::error::Kind::Tool, "writing the globals to psql", e))?;
        Ok::<_, Error>(stderr)
    })
    .await
    .map_err(|e| Error::internal(format!("globals task failed: {e}")))??;
    let failed: Vec<String> = stderr
        .lines()
        .filter(|l| l.contains("ERROR:"))
        .map(|l| l.trim().to_owned())
        .collect();
    if !failed.is_empty() {
        warnings.push(format!(
            "{} statement(s) of the globals failed: {}",
            failed.len(),
            failed.join(" | ")
        ));
    }
    Ok(warnings)
}

/// The roles and tablespaces of one cluster: anything bigger is not ours.
const GLOBALS_LIMIT: u64 = 64 << 20;

/// `pg_dumpall --globals-only` output without the statements a drill must not
/// run: tablespaces, and `CREATE ROLE`/`ALTER ROLE` of roles in `existing`.
/// Returns the script and the roles left alone.
pub fn filter_globals(sql: &str, existing: &[String]) -> (String, Vec<String>) {
    let mut out = String::with_capacity(sql.len());
    let mut kept = Vec::new();
    for line in sql.lines() {
        let upper = line.trim_start().to_ascii_uppercase();
        if upper.starts_with("CREATE TABLESPACE")
            || upper.starts_with("ALTER TABLESPACE")
            || upper.starts_with("COMMENT ON TABLESPACE")
            || (upper.starts_with("GRANT") && upper.contains(" ON TABLESPACE "))
        {
            continue;
        }
        let role = ["CREATE ROLE ", "ALTER ROLE "]
            .iter()
            .find(|p| upper.starts_with(**p))
            .and_then(|p| role_name(&line.trim_start()[p.len()..]));
        if let Some(role) = role
            && existing.contains(&role)
        {
            if !kept.contains(&role) {
                kept.push(role);
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, kept)
}

/// The role name at the start of `rest`: an identifier, or a quoted one.
fn role_name(rest: &str) -> Option<String> {
    if let Some(quoted) = rest.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let name: String = rest
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ';')
            .collect();
        (!name.is_empty()).then(|| name.to_lowercase())
    }
}

/// The report an auditor reads.
pub fn markdown(plan: &DrillPlan, o: &DrillOutcome, host: &str) -> String {
    let zone = &plan.timezone;
    let mut md = String::new();
    let verdict = match o.failure() {
        None => "**PASSED**".to_owned(),
        Some(why) => format!("**FAILED**: {}", why.replace('|', "\\|")),
    };
    let _ = writeln!(md, "# Disaster-recovery drill: job {}\n", plan.job);
    let _ = writeln!(md, "| | |\n|---|---|");
    let rows = [
        ("Result", verdict),
        ("Started", time::show(o.started_at, zone)),
        ("Host", host.to_owned()),
        (
            "Backup",
            format!(
                "{} of job {}: database {} on PostgreSQL {}, {} tables, {} stored",
                plan.backup.id,
                plan.job,
                plan.backup.dbname,
                plan.backup.server_version,
                plan.backup.tables.len(),
                bytes_human(plan.backup.stored_size())
            ),
        ),
        ("Data as of", time::show(plan.backup.snapshot_at, zone)),
        (
            "Read from",
            format!("storage {} ({})", plan.storage, plan.storage_location),
        ),
        ("Restored into", plan.target_description()),
        (
            "RTO",
            o.rto_seconds.map_or_else(
                || "not reached: the drill failed before the data was verified".to_owned(),
                |s| format!("{} (start of the drill to verified data)", seconds(s)),
            ),
        ),
        (
            "RPO",
            format!(
                "{} (start of the drill minus the backup's snapshot)",
                seconds(o.rpo_seconds)
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {} |", v.replace('\n', " "));
    }
    let _ = writeln!(md, "\n## Steps\n\n| Step | Time | Result |\n|---|---:|---|");
    for s in &o.steps {
        let _ = writeln!(
            md,
            "| {} | {:.1} s | {} |",
            s.step,
            s.seconds,
            s.result.replace('|', "\\|").replace('\n', " ")
        );
    }
    let _ = writeln!(md, "\n## Checks\n");
    if o.proof.checks.is_empty() {
        let _ = writeln!(md, "No check ran: the drill failed before them.");
    } else {
        let passed = o.proof.checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(
            md,
            "{passed} of {} passed.\n\n| Check | Expected | Found | Result |\n|---|---|---|---|",
            o.proof.checks.len()
        );
        for c in &o.proof.checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.check.replace('|', "\\|"),
                c.expected.replace('|', "\\|"),
                c.actual.replace('|', "\\|"),
                if c.passed { "passed" } else { "**FAILED**" }
            );
        }
    }
    if !o.proof.tables.is_empty() {
        let _ = writeln!(
            md,
            "\n## Row counts\n\n| Table | In the backup | Restored |\n|---|---:|---:|"
        );
        for t in o.proof.tables.iter().take(proof::TABLES_RECORDED) {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t.table.replace('|', "\\|"),
                t.expected,
                t.actual
                    .map_or_else(|| "missing".to_owned(), |n| n.to_string())
            );
        }
    }
    if !o.warnings.is_empty() {
        let _ = writeln!(md, "\n## Warnings\n");
        for w in &o.warnings {
            let _ = writeln!(md, "- {w}");
        }
    }
    md
}

/// `754.2 s (12 min 34 s)`: exact for the record, readable for people.
fn seconds(s: f64) -> String {
    let exact = format!("{} s", show_number((s * 10.0).round() / 10.0));
    if s < 60.0 {
        return exact;
    }
    let d = jiff::SignedDuration::from_secs_f64(s);
    format!("{exact} ({})", time::show_duration(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globals_never_touch_existing_roles_or_make_tablespaces() {
        let sql = "SET default_transaction_read_only = off;\n\
                   CREATE ROLE app;\n\
                   ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';\n\
                   CREATE ROLE \"Ops \"\"Team\"\"\";\n\
                   ALTER ROLE \"Ops \"\"Team\"\"\" WITH NOLOGIN;\n\
                   CREATE ROLE postgres;\n\
                   ALTER ROLE postgres WITH SUPERUSER;\n\
                   GRANT app TO \"Ops \"\"Team\"\"\";\n\
                   CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';\n\
                   GRANT CREATE ON TABLESPACE fast TO app;\n";
        let existing = vec!["postgres".to_owned(), "Ops \"Team\"".to_owned()];
        let (script, kept) = filter_globals(sql, &existing);
        assert_eq!(kept, ["Ops \"Team\"", "postgres"]);
        assert!(script.contains("CREATE ROLE app;"));
        assert!(script.contains("ALTER ROLE app WITH"));
        assert!(script.contains("GRANT app TO"));
        for gone in ["ROLE postgres", "WITH NOLOGIN", "TABLESPACE"] {
            assert!(!script.contains(gone), "{gone} in {script}");
        }
    }
}

/// What a drill of a named job rehearses: the backup job it restores, the
/// checks it proves the copy with, and which restore-test jobs they are from.
#[derive(Debug, Clone)]
pub struct DrillRequest {
    pub backup_job: String,
    pub checks: Vec<Check>,
    pub checks_from: Vec<String>,
    pub selector: catalog::Selector,
    pub target_url: Option<String>,
    pub jobs: u32,
}

impl DrillRequest {
    /// A drill of job `name`: a backup job (with the checks of its
    /// restore-test jobs) or a restore-test job (with its own).
    pub fn new(
        config: &crate::model::Config,
        name: &str,
        selector: catalog::Selector,
        target_url: Option<String>,
        jobs: Option<u32>,
    ) -> Result<Self> {
        use crate::model::JobKind;
        let job = config.job(name)?;
        let (backup_job, checks, checks_from, default_jobs) = match &job.kind {
            JobKind::RestoreTest(t) => (
                t.backup_job.clone(),
                t.checks.clone(),
                vec![name.to_owned()],
                t.jobs,
            ),
            JobKind::Backup(_) => {
                let mut checks: Vec<Check> = Vec::new();
                let mut from = Vec::new();
                for j in config.jobs.values() {
                    if let JobKind::RestoreTest(t) = &j.kind
                        && t.backup_job == name
                    {
                        from.push(j.name.clone());
                        for c in &t.checks {
                            if !checks
                                .iter()
                                .any(|have| have.sql == c.sql && have.expected() == c.expected())
                            {
                                checks.push(c.clone());
                            }
                        }
                    }
                }
                (name.to_owned(), checks, from, 1)
            }
            other => {
                return Err(Error::usage(format!(
                    "job {name} is a {} job: a drill restores a backup job",
                    other.name()
                ))
                .with_hint("name a backup job, or a restore-test job to use its checks"));
            }
        };
        config.database_backup_job(&backup_job, "drill")?;
        Ok(DrillRequest {
            backup_job,
            checks,
            checks_from,
            selector,
            target_url,
            jobs: jobs.unwrap_or(default_jobs),
        })
    }
}

/// The plan of a drill: which backup, from which of `storages` (the backup
/// job's), into what.
pub async fn plan(
    config: &crate::model::Config,
    request: &DrillRequest,
    storages: &[Arc<dyn Storage>],
) -> Result<DrillPlan> {
    let (bjob, spec, database) = config.database_backup_job(&request.backup_job, "drill")?;
    let (backup, storage) =
        crate::jobs::restore::choose(bjob, storages, None, &request.selector).await?;
    let reader = crate::jobs::restore::named(storages, &storage)?;
    let crypt = crate::catalog::opener(reader.as_ref(), &backup, spec.keys()).await?;
    let storage_location = spec
        .storages
        .iter()
        .find(|s| s.name == storage)
        .map(|s| s.kind.to_string())
        .unwrap_or_default();
    let dbname = backup.dbname.clone();
    let target = match &request.target_url {
        Some(url) => target_server(url, database, &dbname).await?,
        None => {
            let major = backup
                .server_version
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            DrillTarget::Throwaway(crate::pg::cluster::find_server(database, major)?)
        }
    };
    Ok(DrillPlan {
        job: request.backup_job.clone(),
        timezone: bjob.timezone.clone(),
        backup,
        storage,
        storage_location,
        target,
        dbname,
        checks: request.checks.clone(),
        checks_from: request.checks_from.clone(),
        jobs: request.jobs,
        crypt,
    })
}

/// The server of `--target-url`, when it can take the drill's database.
async fn target_server(
    url: &str,
    database: &crate::model::Database,
    dbname: &str,
) -> Result<DrillTarget> {
    let (parsed, _) = crate::pg::url::parse(url).map_err(|e| {
        Error::usage(format!(
            "--target-url is not a valid connection string: {e}"
        ))
        .with_hint("write a libpq URI such as postgresql://postgres@dr-host:5432/postgres")
    })?;
    if parsed.get_password().is_some() {
        return Err(Error::usage("--target-url contains a password")
            .with_hint("pass it in PGPASSWORD: a password in argv shows in process listings"));
    }
    let db = crate::model::Database {
        name: "--target-url".to_owned(),
        url: url.to_owned(),
        password: None,
        password_from: None,
        pg_bin_dir: database.pg_bin_dir.clone(),
        secret_env: database.secret_env.clone(),
    };
    let admin = crate::pg::connect(&db, Some("postgres")).await?;
    if crate::pg::database_exists(&admin, dbname).await? {
        return Err(Error::refused(format!(
            "database {dbname} exists on the server of --target-url; a drill never \
             overwrites a database, and nothing was changed"
        ))
        .with_hint(
            "drill into a server without it, or without --target-url into a throwaway cluster",
        ));
    }
    Ok(DrillTarget::Server(db))
}
