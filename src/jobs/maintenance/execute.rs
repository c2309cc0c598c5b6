//! Carrying out a plan against the server: connecting with `lock_timeout`
//! set, running each statement without queueing the application behind a
//! lock, trying again while a lock is busy, checking what the server did, and
//! cleaning up after a REINDEX CONCURRENTLY that failed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::journal::Journal;
use super::plan::plan;
use super::targets::in_scope;
use super::{Action, MaintenanceOutcome, Measure, Preview, Step, StepResult, StepStatus};
use crate::error::{Error, Result};
use crate::model::{Clock, Job, MaintenanceJob, Targets, Task};
use crate::pg::stats::{self, IndexStats, Inventory, TableStats};
use crate::pg::{self, CancelOnDrop, Connection, Notices, quote_ident};

/// What each step's statement is and how it takes its locks.
impl Step {
    /// The statement, names quoted.
    pub(super) fn sql(&self, concurrently: bool) -> String {
        let table = format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table));
        let index = || {
            format!(
                "{}.{}",
                quote_ident(&self.schema),
                quote_ident(self.index.as_deref().unwrap_or_default())
            )
        };
        match self.action {
            Action::Vacuum => format!("VACUUM (SKIP_LOCKED) {table}"),
            Action::VacuumAnalyze => format!("VACUUM (ANALYZE, SKIP_LOCKED) {table}"),
            Action::Freeze => format!("VACUUM (FREEZE, SKIP_LOCKED) {table}"),
            Action::VacuumFull => format!("VACUUM (FULL, SKIP_LOCKED) {table}"),
            Action::Analyze => format!("ANALYZE (SKIP_LOCKED) {table}"),
            Action::Reindex if concurrently => format!("REINDEX INDEX CONCURRENTLY {}", index()),
            Action::Reindex => format!("REINDEX INDEX {}", index()),
            Action::DropLeftover => format!("DROP INDEX CONCURRENTLY IF EXISTS {}", index()),
        }
    }

    /// CONCURRENTLY statements wait, after taking their lock, for every
    /// transaction older than themselves; a `lock_timeout` would fail them
    /// late, after the work. They run only when no session holds a
    /// conflicting lock, and then without a lock timeout: they take only
    /// SHARE UPDATE EXCLUSIVE, which reads and writes never wait for.
    fn waits_for_transactions(&self, concurrently: bool) -> bool {
        match self.action {
            Action::Reindex => concurrently,
            Action::DropLeftover => true,
            _ => false,
        }
    }

    /// The lock modes that keep this step's statement from starting.
    fn conflicting_modes(&self, concurrently: bool) -> &'static [&'static str] {
        const WITH_SHARE_UPDATE_EXCLUSIVE: &[&str] = &[
            "ShareUpdateExclusiveLock",
            "ShareLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        ];
        const WITH_ACCESS_EXCLUSIVE: &[&str] = &[
            "AccessShareLock",
            "RowShareLock",
            "RowExclusiveLock",
            "ShareUpdateExclusiveLock",
            "ShareLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        ];
        match self.action {
            Action::VacuumFull => WITH_ACCESS_EXCLUSIVE,
            // A plain REINDEX blocks writes (SHARE on the table) and takes the
            // index alone; writers are what it waits for.
            Action::Reindex if !concurrently => &[
                "RowExclusiveLock",
                "ShareUpdateExclusiveLock",
                "ShareRowExclusiveLock",
                "ExclusiveLock",
                "AccessExclusiveLock",
            ],
            _ => WITH_SHARE_UPDATE_EXCLUSIVE,
        }
    }
}

/// Connects for maintenance: notices kept, locks waited for at most
/// `lock_timeout`, and `None` for the inventory on a standby. `measure`
/// lets pgstattuple read the indexes whose bloat is in doubt.
async fn open(
    spec: &MaintenanceJob,
    measure: bool,
) -> Result<(Connection, Notices, u32, Option<Inventory>)> {
    let (conn, notices) = pg::connect_with_notices(&spec.database).await?;
    let version = pg::server_version(&conn).await?;
    if version.major < 12 {
        return Err(Error::database(format!(
            "database {}: maintenance needs PostgreSQL 12 or newer (SKIP_LOCKED, REINDEX \
             CONCURRENTLY); the server is {}",
            spec.database.name, version.text
        ))
        .with_hint("upgrade the server; PostgreSQL 11 has had no fixes since November 2023"));
    }
    if stats::in_recovery(&conn).await? {
        return Ok((conn, notices, version.major, None));
    }
    stats::set_lock_timeout(&conn, Some(spec.lock_timeout)).await?;
    // A role's statement_timeout is for the application's queries; a VACUUM
    // FULL of a big table outlasts it. The job's `timeout` bounds the run
    // instead (pg_dump turns it off the same way).
    conn.client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(|e| pg::query_error("setting statement_timeout", e))?;
    let mut inventory = stats::inventory(&conn).await?;
    if measure
        && spec.tasks.contains(&Task::Reindex)
        && inventory.has_pgstattuple
        && !spec.targets.all
    {
        measure_candidates(&conn, &mut inventory, &spec.targets).await;
    }
    Ok((conn, notices, version.major, Some(inventory)))
}

/// How far from `min_index_bloat` an estimate must be to decide alone.
const SURE_ENOUGH: f64 = 0.2;

/// Measures, with pgstattuple, the B-trees whose rebuild is in doubt: those
/// of tables in scope and not too small whose estimate is unknown or near the
/// threshold. `pgstatindex` reads the whole index under a lock that a waiting
/// ALTER would queue the application behind, so clear cases are not read.
async fn measure_candidates(conn: &Connection, inv: &mut Inventory, targets: &Targets) {
    let min = i64::try_from(targets.min_table_size).unwrap_or(i64::MAX);
    let candidates: std::collections::BTreeSet<u32> = inv
        .tables
        .iter()
        .filter(|t| in_scope(targets, t).is_ok() && t.total_bytes >= min && t.can_reindex)
        .map(|t| t.oid)
        .collect();
    let in_doubt = |i: &IndexStats| {
        i.bloat
            .is_none_or(|b| (b - targets.min_index_bloat).abs() < SURE_ENOUGH)
    };
    for index in inv.indexes.iter_mut().filter(|i| {
        i.method == "btree" && i.valid && candidates.contains(&i.table_oid) && in_doubt(i)
    }) {
        let guard = CancelOnDrop::new(conn);
        let measured = stats::measure_index(conn, index).await;
        guard.disarm();
        if let Err(e) = measured {
            // Said once: every other index would fail the same way.
            let hint = e.hint().map_or(String::new(), |h| format!(" ({h})"));
            tracing::warn!("index bloat is estimated, not measured: {e}{hint}");
            return;
        }
    }
    inv.exact_index_bloat = true;
}

/// The plan a run would carry out now. Changes nothing.
pub async fn preview(spec: &MaintenanceJob) -> Result<Preview> {
    let (conn, _, _, inventory) = open(spec, true).await?;
    Ok(Preview {
        database: conn.dbname.clone(),
        standby: inventory.is_none(),
        plan: inventory.map(|inv| plan(&inv, spec)),
    })
}

/// Plans and carries out one maintenance run.
pub async fn run(
    job: &Job,
    spec: &MaintenanceJob,
    clock: &dyn Clock,
    journal: &Journal,
) -> Result<MaintenanceOutcome> {
    let window_open = || {
        spec.window
            .is_none_or(|w| w.contains(clock.now(), &job.timezone))
    };
    // Outside the window nothing starts: not even reading every index.
    let (conn, mut notices, major, inventory) = open(spec, window_open()).await?;
    let Some(inventory) = inventory else {
        tracing::info!(
            "database {} is a standby (in recovery): maintenance runs on the primary; nothing done",
            conn.dbname
        );
        return Ok(MaintenanceOutcome {
            database: conn.dbname.clone(),
            standby: true,
            warnings: vec!["the server is a standby: nothing done".to_owned()],
            steps: Vec::new(),
            left_alone: Vec::new(),
            window_closed: false,
        });
    };
    let plan = plan(&inventory, spec);
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        "maintenance of {}: {} step(s) planned, {} table(s) left alone",
        plan.database,
        plan.steps.len(),
        plan.left_alone.len()
    );
    let tables: BTreeMap<u32, &TableStats> = inventory.tables.iter().map(|t| (t.oid, t)).collect();
    let mut results = Vec::with_capacity(plan.steps.len());
    let mut window_closed = false;
    for step in plan.steps {
        let before = match &step.index {
            Some(name) => inventory
                .indexes
                .iter()
                .find(|i| i.table_oid == step.table_oid && &i.name == name)
                .map(|i| Measure {
                    total_bytes: Some(i.bytes),
                    bloat: i.bloat,
                    estimated: inventory.sizes_estimated,
                    ..Measure::default()
                })
                .unwrap_or_default(),
            None => tables
                .get(&step.table_oid)
                .map(|t| Measure::from(*t))
                .unwrap_or_default(),
        };
        let sql = step.sql(spec.reindex_concurrently);
        if window_closed || !window_open() {
            window_closed = true;
            results.push(StepResult {
                sql,
                step,
                status: StepStatus::Skipped,
                note: Some(format!(
                    "not started: outside the window {}",
                    spec.window.map_or(String::new(), |w| w.to_string())
                )),
                warnings: Vec::new(),
                seconds: 0.0,
                before,
                after: None,
            });
            continue;
        }
        let started = Instant::now();
        journal.start(&step, &sql);
        let mut ended = execute(&conn, &mut notices, spec, &step, &window_open).await;
        let seconds = started.elapsed().as_secs_f64();
        let after = if ended.status == StepStatus::Done {
            measure_after(&conn, &step).await
        } else {
            None
        };
        // Before 15 the statistics reach other sessions up to half a second
        // late: a VACUUM just done could look undone.
        if ended.status == StepStatus::Done
            && major >= 15
            && let Some(why) = not_done(step.action, &before, after.as_ref(), &ended.warnings)
        {
            ended.status = StepStatus::Failed;
            ended.note = Some(why);
        }
        match ended.status {
            StepStatus::Done => tracing::info!(
                "{} {}: done in {seconds:.1}s",
                step.action.name(),
                step.target()
            ),
            _ => tracing::warn!(
                "{} {}: {}",
                step.action.name(),
                step.target(),
                ended.note.as_deref().unwrap_or("")
            ),
        }
        let result = StepResult {
            sql,
            step,
            status: ended.status,
            note: ended.note,
            warnings: ended.warnings,
            seconds,
            before,
            after,
        };
        journal.finish(&result);
        results.push(result);
    }
    let mut warnings = plan.warnings;
    if window_closed && let Some(window) = spec.window {
        let not_started = results
            .iter()
            .filter(|r| {
                r.note
                    .as_deref()
                    .is_some_and(|n| n.starts_with("not started"))
            })
            .count();
        let warning = format!(
            "the window {window} closed with {not_started} step(s) not started; \
             they are planned again next run"
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    Ok(MaintenanceOutcome {
        database: plan.database,
        standby: false,
        warnings,
        steps: results,
        left_alone: plan.left_alone,
        window_closed,
    })
}

/// Why a VACUUM or ANALYZE that returned did not happen: the server skips,
/// with only a warning (in the server's language), a table the role may not
/// maintain. Its statistics say whether it ran whatever the language.
fn not_done(
    action: Action,
    before: &Measure,
    after: Option<&Measure>,
    warnings: &[String],
) -> Option<String> {
    let after = after?;
    let (was, is) = match action {
        Action::Vacuum | Action::VacuumAnalyze | Action::Freeze => {
            (before.last_vacuum, after.last_vacuum)
        }
        Action::Analyze => (before.last_analyze, after.last_analyze),
        Action::VacuumFull | Action::Reindex | Action::DropLeftover => return None,
    };
    if is.is_some() && is > was {
        return None;
    }
    Some(format!(
        "the server returned without doing it: {}",
        if warnings.is_empty() {
            "no reason given".to_owned()
        } else {
            warnings.join("; ")
        }
    ))
}

async fn measure_after(conn: &Connection, step: &Step) -> Option<Measure> {
    let measured = match &step.index {
        Some(name) => stats::index_bytes(conn, &step.schema, name)
            .await
            .map(|bytes| {
                Some(Measure {
                    total_bytes: bytes,
                    ..Measure::default()
                })
            }),
        None => stats::table(conn, step.table_oid)
            .await
            .map(|t| t.as_ref().map(Measure::from)),
    };
    measured.unwrap_or_else(|e| {
        tracing::debug!("measuring {} after its step: {e}", step.target());
        None
    })
}

/// Runs one statement and drains what the server warned meanwhile. `unbounded`
/// lifts `lock_timeout` for it, and puts it back.
async fn statement(
    conn: &Connection,
    notices: &mut Notices,
    sql: &str,
    unbounded: Option<Duration>,
) -> (
    std::result::Result<(), tokio_postgres::Error>,
    Vec<tokio_postgres::error::DbError>,
) {
    while notices.try_recv().is_ok() {}
    if unbounded.is_some()
        && let Err(e) = stats::set_lock_timeout(conn, None).await
    {
        tracing::debug!("{e}");
    }
    // A run cancelled or timed out mid-statement must not leave it running.
    let guard = CancelOnDrop::new(conn);
    let result = conn.client.batch_execute(sql).await;
    guard.disarm();
    if let Some(limit) = unbounded
        && let Err(e) = stats::set_lock_timeout(conn, Some(limit)).await
    {
        tracing::debug!("{e}");
    }
    let mut said = Vec::new();
    while let Ok(n) = notices.try_recv() {
        said.push(n);
    }
    (result, said)
}

/// How one step ended, and what the server warned on the way.
struct Ended {
    status: StepStatus,
    note: Option<String>,
    warnings: Vec<String>,
}

/// How one try of a statement went.
enum Try {
    Done,
    Busy,
    Gone,
    Failed(String),
}

/// Sessions holding a lock on the step's table that keeps it from starting,
/// as `pid 4242 (psql, user app, idle in transaction for 3m 2s, AccessExclusiveLock)`.
async fn lock_holders(conn: &Connection, step: &Step, concurrently: bool) -> Vec<String> {
    let modes: Vec<&str> = step.conflicting_modes(concurrently).to_vec();
    let rows = conn
        .client
        .query(
            "SELECT l.pid, coalesce(nullif(a.application_name, ''), a.backend_type, \
                    'prepared transaction ' || p.gid, '?')::text, \
                    coalesce(a.usename::text, '?'), coalesce(a.state, '?')::text, \
                    extract(epoch FROM now() - coalesce(a.xact_start, a.backend_start))::float8, \
                    l.mode::text \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
             LEFT JOIN pg_prepared_xacts p ON l.pid IS NULL \
                  AND p.transaction::text = split_part(l.virtualtransaction, '/', 2) \
             WHERE l.locktype = 'relation' AND l.relation = $1 AND l.granted \
               AND l.pid IS DISTINCT FROM pg_backend_pid() AND l.mode = ANY($2) \
             ORDER BY 1",
            &[&step.table_oid, &modes],
        )
        .await;
    match rows {
        Ok(rows) => rows
            .iter()
            .map(|r| {
                // No process holds a prepared transaction's locks.
                let pid: Option<i32> = r.get(0);
                let app: String = r.get(1);
                let user: String = r.get(2);
                let state: String = r.get(3);
                let seconds: Option<f64> = r.get(4);
                let mode: String = r.get(5);
                format!(
                    "pid {} ({app}, user {user}, {state} for {}, {mode})",
                    pid.map_or("-".to_owned(), |p| p.to_string()),
                    crate::time::show_seconds(seconds.unwrap_or(0.0).max(0.0))
                )
            })
            .collect(),
        Err(e) => {
            tracing::debug!("reading pg_locks: {e}");
            Vec::new()
        }
    }
}

/// Carries out one step: tries again while its lock is busy (and the window
/// open), then gives up on it. Never fails the run: how it ended is returned.
async fn execute(
    conn: &Connection,
    notices: &mut Notices,
    spec: &MaintenanceJob,
    step: &Step,
    window_open: &(dyn Fn() -> bool + Sync),
) -> Ended {
    let concurrently = spec.reindex_concurrently;
    let sql = step.sql(concurrently);
    let unbounded = step.waits_for_transactions(concurrently);
    let tries = spec.lock_retries + 1;
    let mut warnings = Vec::new();
    let ended = |status, note: Option<String>, warnings| Ended {
        status,
        note,
        warnings,
    };
    for attempt in 1..=tries {
        let outcome = if unbounded && !lock_holders(conn, step, concurrently).await.is_empty() {
            Try::Busy
        } else {
            let (result, said) =
                statement(conn, notices, &sql, unbounded.then_some(spec.lock_timeout)).await;
            let busy_warning = said
                .iter()
                .any(|n| n.code() == &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
            warnings.extend(
                said.iter()
                    .filter(|n| {
                        n.parsed_severity() == Some(tokio_postgres::error::Severity::Warning)
                            && n.code() != &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
                    })
                    .map(|n| n.message().to_owned()),
            );
            match result {
                Ok(()) if busy_warning => Try::Busy,
                Ok(()) => Try::Done,
                Err(e) if stats::is_lock_timeout(&e) => Try::Busy,
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    Try::Gone
                }
                Err(e) => Try::Failed(pg::query_error(&sql, e).message().to_owned()),
            }
        };
        if step.action == Action::Reindex && matches!(outcome, Try::Failed(_)) {
            clean_leftovers(conn, notices, step).await;
        }
        match outcome {
            Try::Done if step.action == Action::Reindex => {
                let (status, note) = check_valid(conn, step).await;
                if status != StepStatus::Done {
                    clean_leftovers(conn, notices, step).await;
                }
                return ended(status, note, warnings);
            }
            Try::Done => return ended(StepStatus::Done, None, warnings),
            Try::Failed(message) => return ended(StepStatus::Failed, Some(message), warnings),
            Try::Gone => {
                return ended(
                    StepStatus::Skipped,
                    Some("skipped: dropped since the plan was made".to_owned()),
                    warnings,
                );
            }
            Try::Busy if attempt < tries => {
                if !window_open() {
                    return ended(
                        StepStatus::Skipped,
                        Some("skipped: its lock was busy and the window closed".to_owned()),
                        warnings,
                    );
                }
                tracing::info!(
                    "{} {}: lock busy (try {attempt} of {tries}); trying again",
                    step.action.name(),
                    step.target()
                );
                // Statements that waited lock_timeout already have waited;
                // the others gave up at once, so wait as long here.
                let waited = step.action == Action::Reindex && !concurrently;
                tokio::time::sleep(if waited {
                    Duration::from_secs(1)
                } else {
                    spec.lock_timeout
                })
                .await;
            }
            Try::Busy => {}
        }
    }
    let holders = lock_holders(conn, step, concurrently).await;
    ended(
        StepStatus::Skipped,
        Some(format!(
            "skipped: another session held a conflicting lock through {tries} tries \
             (lock_timeout {}){}; the next run tries again",
            crate::time::show_std_duration(spec.lock_timeout),
            if holders.is_empty() {
                String::new()
            } else {
                format!(": {}", holders.join("; "))
            }
        )),
        warnings,
    )
}

/// After REINDEX CONCURRENTLY: the index is valid, and no copy is left.
async fn check_valid(conn: &Connection, step: &Step) -> (StepStatus, Option<String>) {
    let name = format!(
        "{}.{}",
        quote_ident(&step.schema),
        quote_ident(step.index.as_deref().unwrap_or_default())
    );
    let valid = conn
        .client
        .query_opt(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)",
            &[&name],
        )
        .await;
    match valid {
        Ok(Some(row)) if row.get::<_, bool>(0) => (StepStatus::Done, None),
        Ok(Some(_)) => (
            StepStatus::Failed,
            Some(format!(
                "{name} is invalid after REINDEX; drop and re-create it"
            )),
        ),
        Ok(None) => (
            StepStatus::Failed,
            Some(format!("{name} is gone after REINDEX")),
        ),
        Err(e) => (
            StepStatus::Failed,
            Some(
                pg::query_error("checking the rebuilt index", e)
                    .message()
                    .to_owned(),
            ),
        ),
    }
}

/// Drops the invalid `_ccnew`/`_ccold` copies a failed REINDEX CONCURRENTLY
/// of this step's index left on its table.
async fn clean_leftovers(conn: &Connection, notices: &mut Notices, step: &Step) {
    let Some(index) = &step.index else { return };
    // Not while another session builds an index on the table: its copy is
    // invalid until it is done.
    let rows = conn
        .client
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = $1 AND NOT i.indisvalid \
               AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p \
                               WHERE p.relid = i.indrelid)",
            &[&step.table_oid],
        )
        .await;
    let Ok(rows) = rows else { return };
    // Names are cut, in bytes, to fit 63 with the suffix.
    let mut cut = index.len().min(50);
    while !index.is_char_boundary(cut) {
        cut -= 1;
    }
    let stem = &index[..cut];
    for row in rows {
        let name: String = row.get(0);
        if !name.starts_with(stem) || !stats::is_leftover_name(&name) {
            continue;
        }
        let drop = Step {
            action: Action::DropLeftover,
            index: Some(name.clone()),
            ..step.clone()
        };
        let sql = drop.sql(true);
        match statement(conn, notices, &sql, None).await.0 {
            Ok(()) => tracing::info!("dropped {}.{name}, left by the failed REINDEX", step.schema),
            Err(e) => tracing::warn!(
                "could not drop {}.{name}, left by the failed REINDEX: {e}; the next run tries again",
                step.schema
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::jobs::maintenance::fixtures::table;

    #[test]
    fn statements_quote_names_and_skip_locked_tables() {
        let mut t = table("Order Lines", 1, 1, 1);
        t.schema = "Sales".into();
        let step = Step {
            action: Action::VacuumAnalyze,
            schema: t.schema.clone(),
            table: t.name.clone(),
            index: None,
            table_oid: 1,
            reason: String::new(),
            urgent: false,
        };
        assert_eq!(
            step.sql(true),
            "VACUUM (ANALYZE, SKIP_LOCKED) \"Sales\".\"Order Lines\""
        );
    }

    #[test]
    fn a_vacuum_whose_statistics_did_not_move_was_not_done() {
        let t0 = Timestamp::UNIX_EPOCH;
        let t1 = Timestamp::from_second(60).unwrap();
        let before = Measure {
            last_vacuum: Some(t0),
            ..Measure::default()
        };
        let moved = Measure {
            last_vacuum: Some(t1),
            ..Measure::default()
        };
        assert_eq!(not_done(Action::Vacuum, &before, Some(&moved), &[]), None);
        let why = not_done(
            Action::Vacuum,
            &before,
            Some(&before),
            &["permission denied to vacuum \"t\", skipping it".into()],
        );
        assert!(why.unwrap().contains("permission denied"));
        assert!(
            not_done(Action::Analyze, &Measure::default(), Some(&moved), &[]).is_some(),
            "analyze looks at last_analyze"
        );
        assert_eq!(
            not_done(Action::VacuumFull, &before, Some(&before), &[]),
            None
        );
        assert_eq!(
            not_done(Action::Vacuum, &before, None, &[]),
            None,
            "unmeasured: not judged"
        );
    }
}
