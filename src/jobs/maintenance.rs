//! Maintenance jobs: VACUUM, ANALYZE, FREEZE, VACUUM FULL and REINDEX where
//! the server's statistics say they help, without queueing the application
//! behind a lock.
//!
//! Plan first, then execute, like prune and restore: [`plan`] is a pure
//! function of the database's [`Inventory`] and the job, so what is chosen and
//! why is tested without a server, and `backup run --dry-run` prints exactly
//! what a run would do.
//!
//! Being careful under load comes from four rules. Every statement runs with
//! `lock_timeout`; VACUUM and ANALYZE use `SKIP_LOCKED`, so they never wait in
//! a lock queue at all; a table whose lock stays busy through the retries is
//! skipped and named; no new table starts after the job's `window` closes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Clock, Job, MaintenanceJob, Targets, Task};
use crate::pg::stats::{self, IndexStats, Inventory, TableStats};
use crate::pg::{self, CancelOnDrop, Connection, Notices, quote_ident};
use crate::report::bytes_human;

/// What one step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Vacuum,
    Analyze,
    VacuumAnalyze,
    Freeze,
    VacuumFull,
    Reindex,
    /// Drops the invalid copy a failed REINDEX CONCURRENTLY left behind.
    DropLeftover,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Vacuum => "vacuum",
            Action::Analyze => "analyze",
            Action::VacuumAnalyze => "vacuum-analyze",
            Action::Freeze => "freeze",
            Action::VacuumFull => "vacuum-full",
            Action::Reindex => "reindex",
            Action::DropLeftover => "drop-leftover",
        }
    }

    fn of(task: Task) -> Action {
        match task {
            Task::Vacuum => Action::Vacuum,
            Task::Analyze => Action::Analyze,
            Task::VacuumAnalyze => Action::VacuumAnalyze,
            Task::Freeze => Action::Freeze,
            Task::VacuumFull => Action::VacuumFull,
            Task::Reindex => Action::Reindex,
        }
    }
}

/// One statement the plan runs.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub action: Action,
    pub schema: String,
    pub table: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    #[serde(skip)]
    pub table_oid: u32,
    /// Why the planner chose it, with the numbers.
    pub reason: String,
    /// Transaction-ID wraparound is near: this goes first.
    pub urgent: bool,
}

impl Step {
    /// `schema.table`, or `schema.index` for index steps.
    pub fn target(&self) -> String {
        match &self.index {
            Some(index) => format!("{}.{index} on {}", self.schema, self.table),
            None => format!("{}.{}", self.schema, self.table),
        }
    }

    fn sql(&self, concurrently: bool) -> String {
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

/// A table the plan leaves alone, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LeftAlone {
    pub table: String,
    pub reason: String,
}

/// What a run will do, in order, and what it will not.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub database: String,
    pub steps: Vec<Step>,
    pub left_alone: Vec<LeftAlone>,
    /// Wraparound risks, invalid indexes, estimated sizes: said before the steps.
    pub warnings: Vec<String>,
    pub database_xid_age: i64,
    pub freeze_max_age: i64,
    pub exact_index_bloat: bool,
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

/// Whether a glob with `*` and `?` matches all of `text`.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// `table` matches in any schema; `schema.table` in that schema.
fn matches(pattern: &str, schema: &str, table: &str) -> bool {
    match pattern.split_once('.') {
        Some((s, t)) => glob(s, schema) && glob(t, table),
        None => glob(pattern, table),
    }
}

fn in_scope(targets: &Targets, t: &TableStats) -> std::result::Result<(), String> {
    if !targets.tables.is_empty()
        && !targets
            .tables
            .iter()
            .any(|p| matches(p, &t.schema, &t.name))
    {
        return Err("not named by `tables`".to_owned());
    }
    if let Some(p) = targets
        .exclude
        .iter()
        .find(|p| matches(p, &t.schema, &t.name))
    {
        return Err(format!("excluded by '{p}'"));
    }
    Ok(())
}

/// Why a table's dead tuples call for a VACUUM, if they do.
fn dead_reason(targets: &Targets, t: &TableStats) -> Option<String> {
    (t.dead_tuples >= targets.min_dead_tuples.max(1) && t.dead_ratio() >= targets.min_dead_ratio)
        .then(|| {
            format!(
                "{} dead tuples, {} of the table (thresholds {} and {})",
                t.dead_tuples,
                percent(t.dead_ratio()),
                targets.min_dead_tuples,
                percent(targets.min_dead_ratio)
            )
        })
}

/// Why a table's statistics are stale, if they are.
fn analyze_reason(targets: &Targets, t: &TableStats) -> Option<String> {
    if t.never_analyzed() {
        return Some("never analyzed".to_owned());
    }
    let changed = t.modified_since_analyze;
    let share = if t.live_tuples > 0 {
        changed as f64 / t.live_tuples as f64
    } else if changed > 0 {
        1.0
    } else {
        0.0
    };
    (changed >= targets.min_dead_tuples.max(1) && share >= targets.min_dead_ratio).then(|| {
        format!(
            "{changed} rows changed since the last analyze, {} of the table",
            percent(share)
        )
    })
}

/// Chooses the work: what each task does to which table or index, and why.
/// Tables at risk of transaction-ID wraparound go first, then the others by
/// dead tuples, most first.
pub fn plan(inv: &Inventory, job: &MaintenanceJob) -> Plan {
    let targets = &job.targets;
    let mut warnings = Vec::new();
    let mut left_alone = Vec::new();
    let mut steps = Vec::new();
    let urgent_age = inv.freeze_max_age;
    if inv.sizes_estimated {
        warnings.push(
            "a table was locked while sizes were read: sizes are from the statistics, as of \
             each table's last VACUUM or ANALYZE"
                .to_owned(),
        );
    }
    if inv.database_xid_age >= urgent_age {
        warnings.push(format!(
            "database {}: transaction-ID age {} is past autovacuum_freeze_max_age {}: \
             wraparound risk, VACUUM the oldest tables",
            inv.database, inv.database_xid_age, urgent_age
        ));
    }

    let mut tables: Vec<&TableStats> = Vec::new();
    for t in &inv.tables {
        match in_scope(targets, t) {
            // The server would skip it with a mere warning: say why here.
            Ok(()) if !t.can_vacuum => {
                if t.xid_age >= urgent_age {
                    warnings.push(format!(
                        "table {}: transaction-ID age {} is past autovacuum_freeze_max_age {}: \
                         wraparound risk, and the job's role may not vacuum it (owner: {})",
                        t.qualified(),
                        t.xid_age,
                        urgent_age,
                        t.owner
                    ));
                }
                left_alone.push(LeftAlone {
                    table: t.qualified(),
                    reason: format!(
                        "the job's role may not maintain it: run the job as its owner ({}), \
                         the database's owner, or a role with MAINTAIN (PostgreSQL 17)",
                        t.owner
                    ),
                });
            }
            Ok(()) => tables.push(t),
            Err(reason) => left_alone.push(LeftAlone {
                table: t.qualified(),
                reason,
            }),
        }
    }
    let urgent = |t: &TableStats| t.xid_age >= urgent_age;
    // Only the wraparound order matters among urgent tables; dead tuples
    // order the rest.
    tables.sort_by(|a, b| match (urgent(a), urgent(b)) {
        (true, true) => b.xid_age.cmp(&a.xid_age),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => b
            .dead_tuples
            .cmp(&a.dead_tuples)
            .then(b.total_bytes.cmp(&a.total_bytes)),
    });

    let indexes_of: BTreeMap<u32, Vec<&IndexStats>> =
        inv.indexes.iter().fold(BTreeMap::new(), |mut m, i| {
            m.entry(i.table_oid).or_default().push(i);
            m
        });
    let reindexing = job.tasks.contains(&Task::Reindex);
    let scoped: BTreeMap<u32, &TableStats> = tables.iter().map(|t| (t.oid, *t)).collect();

    // Leftovers of a failed REINDEX CONCURRENTLY right after the wraparound
    // work: they slow every write and get in the way of the rebuild.
    let mut leftovers = Vec::new();
    for index in inv.indexes.iter().filter(|i| !i.valid) {
        let Some(table) = scoped.get(&index.table_oid) else {
            continue;
        };
        if !index.is_reindex_leftover() {
            warnings.push(format!(
                "index {} is invalid (a failed CREATE INDEX CONCURRENTLY?): it costs every \
                 write and serves no query; drop it or REINDEX it",
                index.qualified()
            ));
        } else if !reindexing {
            warnings.push(format!(
                "index {} is the leftover of a failed REINDEX CONCURRENTLY; a job with the \
                 reindex task drops it",
                index.qualified()
            ));
        } else if index.table_being_indexed {
            warnings.push(format!(
                "index {} looks like a leftover, but an index is being built on its table \
                 right now: left alone",
                index.qualified()
            ));
        } else if !table.owns {
            warnings.push(format!(
                "index {} is the leftover of a failed REINDEX CONCURRENTLY; only the owner \
                 of {} ({}) may drop it",
                index.qualified(),
                table.qualified(),
                table.owner
            ));
        } else {
            leftovers.push(Step {
                action: Action::DropLeftover,
                schema: index.schema.clone(),
                table: index.table.clone(),
                index: Some(index.name.clone()),
                table_oid: index.table_oid,
                reason: "invalid leftover of a failed REINDEX CONCURRENTLY".to_owned(),
                urgent: false,
            });
        }
    }

    for t in tables {
        let is_urgent = urgent(t);
        if is_urgent {
            warnings.push(format!(
                "table {}: transaction-ID age {} is past autovacuum_freeze_max_age {}: \
                 wraparound risk{}",
                t.qualified(),
                t.xid_age,
                urgent_age,
                if job
                    .tasks
                    .iter()
                    .any(|t| *t != Task::Analyze && *t != Task::Reindex)
                {
                    ", so it goes first"
                } else {
                    "; this job has no vacuum task to help it"
                }
            ));
        }
        // A size estimated as 0 (never vacuumed nor analyzed) is unknown, not small.
        let small = !(t.size_estimated && t.total_bytes == 0)
            && t.total_bytes < i64::try_from(targets.min_table_size).unwrap_or(i64::MAX);
        let mut why_not = Vec::new();
        let before = steps.len();
        for &task in &job.tasks {
            let step = |reason: String, index: Option<&IndexStats>| Step {
                action: Action::of(task),
                schema: t.schema.clone(),
                table: t.name.clone(),
                index: index.map(|i| i.name.clone()),
                table_oid: t.oid,
                reason,
                urgent: is_urgent,
            };
            if task == Task::Reindex {
                if !t.can_reindex {
                    why_not.push(format!("reindex: only its owner ({}) may", t.owner));
                    continue;
                }
                for index in indexes_of.get(&t.oid).into_iter().flatten() {
                    if !index.valid {
                        continue;
                    }
                    if index.exclusion && job.reindex_concurrently {
                        why_not.push(format!(
                            "index {}: an exclusion constraint's, which REINDEX CONCURRENTLY \
                             cannot rebuild",
                            index.name
                        ));
                        continue;
                    }
                    let reason = if targets.all {
                        Some("all = true".to_owned())
                    } else if small {
                        None
                    } else {
                        index
                            .bloat
                            .filter(|b| *b >= targets.min_index_bloat)
                            .map(|b| {
                                format!(
                                    "{} of its {} is empty ({}; threshold {})",
                                    percent(b),
                                    bytes_human(index.bytes.max(0) as u64),
                                    if index.bloat_exact {
                                        "measured with pgstattuple"
                                    } else {
                                        "estimated from statistics"
                                    },
                                    percent(targets.min_index_bloat)
                                )
                            })
                    };
                    match reason {
                        Some(r) => steps.push(step(r, Some(index))),
                        None => why_not.push(format!(
                            "index {}: {}",
                            index.name,
                            match index.bloat {
                                Some(b) => format!("{} bloat", percent(b)),
                                None => "bloat unknown".to_owned(),
                            }
                        )),
                    }
                }
                continue;
            }
            let wraparound = is_urgent && task != Task::Analyze;
            let reason = if targets.all {
                Some("all = true".to_owned())
            } else if wraparound {
                Some(format!(
                    "transaction-ID age {} (wraparound risk)",
                    t.xid_age
                ))
            } else if small {
                None
            } else {
                match task {
                    Task::Vacuum => dead_reason(targets, t),
                    Task::Analyze => analyze_reason(targets, t),
                    Task::VacuumAnalyze => {
                        dead_reason(targets, t).or_else(|| analyze_reason(targets, t))
                    }
                    Task::Freeze => (t.xid_age >= inv.freeze_table_age).then(|| {
                        format!(
                            "transaction-ID age {} is past vacuum_freeze_table_age {}",
                            t.xid_age, inv.freeze_table_age
                        )
                    }),
                    Task::VacuumFull => dead_reason(targets, t).or_else(|| {
                        t.bloat.filter(|b| *b >= targets.min_table_bloat).map(|b| {
                            format!(
                                "{} of its {} is empty (estimated; threshold {})",
                                percent(b),
                                bytes_human(t.table_bytes.max(0) as u64),
                                percent(targets.min_table_bloat)
                            )
                        })
                    }),
                    Task::Reindex => None,
                }
            };
            match reason {
                Some(r) => steps.push(step(r, None)),
                None => why_not.push(task.name().to_owned()),
            }
        }
        if steps.len() == before {
            left_alone.push(LeftAlone {
                table: t.qualified(),
                reason: if small {
                    format!(
                        "smaller than min_table_size ({} < {})",
                        bytes_human(t.total_bytes.max(0) as u64),
                        bytes_human(targets.min_table_size)
                    )
                } else {
                    format!(
                        "below the thresholds: {} dead tuples ({}), {} changed since analyze; {}",
                        t.dead_tuples,
                        percent(t.dead_ratio()),
                        t.modified_since_analyze,
                        why_not.join(", ")
                    )
                },
            });
        }
    }
    let after_urgent = steps.iter().position(|s| !s.urgent).unwrap_or(steps.len());
    steps.splice(after_urgent..after_urgent, leftovers);
    Plan {
        database: inv.database.clone(),
        steps,
        left_alone,
        warnings,
        database_xid_age: inv.database_xid_age,
        freeze_max_age: inv.freeze_max_age,
        exact_index_bloat: inv.exact_index_bloat,
    }
}

/// A table's or index's state before or after its step.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measure {
    pub total_bytes: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_tuples: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_tuples: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_vacuum: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_autovacuum: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_analyze: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_autoanalyze: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bloat: Option<f64>,
    /// The size is from the statistics: the table's lock was busy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub estimated: bool,
}

impl From<&TableStats> for Measure {
    fn from(t: &TableStats) -> Self {
        Measure {
            total_bytes: Some(t.total_bytes),
            dead_tuples: Some(t.dead_tuples),
            live_tuples: Some(t.live_tuples),
            last_vacuum: t.last_vacuum,
            last_autovacuum: t.last_autovacuum,
            last_analyze: t.last_analyze,
            last_autoanalyze: t.last_autoanalyze,
            bloat: t.bloat,
            estimated: t.size_estimated,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Done,
    /// Not done, and not an error: a busy lock, the window closed.
    Skipped,
    Failed,
}

/// How one step went.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    #[serde(flatten)]
    pub step: Step,
    pub status: StepStatus,
    /// The statement, as run.
    pub sql: String,
    /// Why it was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What the server warned while it ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub seconds: f64,
    pub before: Measure,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Measure>,
}

/// What a maintenance run did.
#[derive(Debug, Clone, Serialize)]
pub struct MaintenanceOutcome {
    pub database: String,
    /// The server was a standby: nothing was done.
    pub standby: bool,
    pub warnings: Vec<String>,
    pub steps: Vec<StepResult>,
    pub left_alone: Vec<LeftAlone>,
    /// The window closed before every step could start.
    pub window_closed: bool,
}

impl MaintenanceOutcome {
    pub fn count(&self, status: StepStatus) -> usize {
        self.steps.iter().filter(|s| s.status == status).count()
    }

    /// Why the run failed, when a step did.
    pub fn failure(&self) -> Option<String> {
        let failed: Vec<String> = self
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Failed)
            .map(|s| {
                format!(
                    "{} {}: {}",
                    s.step.action.name(),
                    s.step.target(),
                    s.note.as_deref().unwrap_or("failed")
                )
            })
            .collect();
        // The record has them all; a message stays readable.
        const NAMED: usize = 5;
        (!failed.is_empty()).then(|| {
            let more = failed.len().saturating_sub(NAMED);
            format!(
                "{} of {} maintenance step(s) failed: {}{}",
                failed.len(),
                self.steps.len(),
                failed[..failed.len().min(NAMED)].join("; "),
                if more > 0 {
                    format!("; and {more} more (see the run record)")
                } else {
                    String::new()
                }
            )
        })
    }
}

/// The steps of a run as they end, kept outside the run so that a run
/// stopped by its timeout or a signal still leaves the record of what it did.
#[derive(Debug, Default)]
pub struct Journal {
    inner: std::sync::Mutex<JournalInner>,
}

#[derive(Debug, Default)]
struct JournalInner {
    finished: Vec<StepResult>,
    running: Option<(Step, String)>,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, JournalInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start(&self, step: &Step, sql: &str) {
        self.lock().running = Some((step.clone(), sql.to_owned()));
    }

    fn finish(&self, result: &StepResult) {
        let mut inner = self.lock();
        inner.running = None;
        inner.finished.push(result.clone());
    }

    /// What a run that did not return did: its finished steps and the one
    /// it was stopped in. `None` when it stopped before its first step.
    pub fn details(&self) -> Option<serde_json::Value> {
        let inner = self.lock();
        if inner.finished.is_empty() && inner.running.is_none() {
            return None;
        }
        Some(serde_json::json!({
            "steps": inner.finished,
            "stopped_during": inner.running.as_ref().map(|(step, sql)| serde_json::json!({
                "action": step.action,
                "target": step.target(),
                "sql": sql,
                "note": "cancelled: the statement was cancelled on the server",
            })),
        }))
    }
}

/// What `--dry-run` shows: the plan, or why there is none.
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub database: String,
    pub standby: bool,
    pub plan: Option<Plan>,
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
                    crate::time::show_duration(jiff::SignedDuration::from_secs_f64(
                        seconds.unwrap_or(0.0).max(0.0)
                    ))
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

/// The one-line summary of a run, for logs and `backup run`.
pub fn summary(o: &MaintenanceOutcome) -> String {
    if o.standby {
        return format!("database {} is a standby: nothing done", o.database);
    }
    format!(
        "{} step(s) done, {} skipped, {} failed; {} table(s) left alone",
        o.count(StepStatus::Done),
        o.count(StepStatus::Skipped),
        o.count(StepStatus::Failed),
        o.left_alone.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, live: i64, dead: i64, bytes: i64) -> TableStats {
        static NEXT_OID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(16_384);
        TableStats {
            oid: NEXT_OID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            schema: "public".into(),
            name: name.into(),
            total_bytes: bytes,
            table_bytes: bytes,
            index_bytes: 0,
            live_tuples: live,
            dead_tuples: dead,
            modified_since_analyze: 0,
            last_vacuum: None,
            last_autovacuum: None,
            last_analyze: Some(Timestamp::UNIX_EPOCH),
            last_autoanalyze: None,
            xid_age: 1000,
            bloat: None,
            size_estimated: false,
            owner: "app".into(),
            can_vacuum: true,
            can_reindex: true,
            owns: true,
        }
    }

    fn inventory(tables: Vec<TableStats>, indexes: Vec<IndexStats>) -> Inventory {
        Inventory {
            database: "app".into(),
            tables,
            indexes,
            freeze_max_age: 200_000_000,
            freeze_table_age: 150_000_000,
            database_xid_age: 1000,
            sizes_estimated: false,
            has_pgstattuple: false,
            exact_index_bloat: false,
        }
    }

    fn job(tasks: &[Task]) -> MaintenanceJob {
        MaintenanceJob {
            database: std::sync::Arc::new(crate::model::Database {
                name: "app".into(),
                url: "postgresql:///app".into(),
                password: None,
                password_from: None,
                pg_bin_dir: None,
                secret_env: Default::default(),
            }),
            tasks: tasks.to_vec(),
            targets: Targets::default(),
            lock_timeout: Duration::from_secs(5),
            lock_retries: 2,
            window: None,
            reindex_concurrently: true,
            reports: None,
        }
    }

    fn index(name: &str, on: &TableStats, bloat: Option<f64>, valid: bool) -> IndexStats {
        IndexStats {
            oid: 7,
            table_oid: on.oid,
            schema: on.schema.clone(),
            name: name.into(),
            table: on.name.clone(),
            bytes: 50 << 20,
            valid,
            method: "btree".into(),
            scans: 0,
            bloat,
            bloat_exact: false,
            table_being_indexed: false,
            exclusion: false,
        }
    }

    const MB: i64 = 1 << 20;

    #[test]
    fn dead_tuples_past_both_thresholds_are_vacuumed_and_clean_tables_left_alone() {
        let inv = inventory(
            vec![
                table("bloated", 10_000, 90_000, 20 * MB),
                table("clean", 100_000, 10, 20 * MB),
                table("few", 100, 900, 20 * MB),
                table("tiny", 10, 5_000, 8192),
            ],
            vec![],
        );
        let p = plan(&inv, &job(&[Task::Vacuum]));
        let chosen: Vec<&str> = p.steps.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(chosen, ["bloated"]);
        assert!(
            p.steps[0].reason.contains("90000 dead tuples, 90%"),
            "{}",
            p.steps[0].reason
        );
        let why = |name: &str| {
            p.left_alone
                .iter()
                .find(|l| l.table == format!("public.{name}"))
                .map(|l| l.reason.clone())
                .unwrap()
        };
        assert!(
            why("clean").starts_with("below the thresholds"),
            "{}",
            why("clean")
        );
        assert!(
            why("few").starts_with("below the thresholds"),
            "{}",
            why("few")
        );
        assert!(
            why("tiny").starts_with("smaller than min_table_size"),
            "{}",
            why("tiny")
        );
    }

    #[test]
    fn wraparound_risk_goes_first_and_is_urgent_whatever_the_size() {
        let mut old = table("old", 1000, 0, 8192);
        old.xid_age = 250_000_000;
        let mut older = table("older", 1000, 0, 8192);
        older.xid_age = 300_000_000;
        let inv = inventory(
            vec![table("bloated", 100, 900_000, 20 * MB), old, older],
            vec![],
        );
        let p = plan(&inv, &job(&[Task::Vacuum, Task::Analyze]));
        let order: Vec<(&str, Action, bool)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.action, s.urgent))
            .collect();
        assert_eq!(
            order,
            [
                ("older", Action::Vacuum, true),
                ("old", Action::Vacuum, true),
                ("bloated", Action::Vacuum, false),
            ]
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("public.older") && w.contains("wraparound"))
        );
    }

    #[test]
    fn patterns_scope_the_tables_and_all_skips_the_thresholds() {
        let mut spec = job(&[Task::VacuumAnalyze]);
        spec.targets.tables = vec!["public.a*".into(), "logs".into()];
        spec.targets.exclude = vec!["*_archive".into()];
        spec.targets.all = true;
        let inv = inventory(
            vec![
                table("accounts", 1, 0, 1),
                table("accounts_archive", 1, 0, 1),
                table("logs", 1, 0, 1),
                table("users", 1, 0, 1),
            ],
            vec![],
        );
        let p = plan(&inv, &spec);
        let chosen: Vec<&str> = p.steps.iter().map(|s| s.table.as_str()).collect();
        assert_eq!(chosen, ["accounts", "logs"]);
        assert!(p.steps.iter().all(|s| s.reason == "all = true"));
        let reasons: Vec<(&str, &str)> = p
            .left_alone
            .iter()
            .map(|l| (l.table.as_str(), l.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("public.accounts_archive", "excluded by '*_archive'")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("public.users", "not named by `tables`")),
            "{reasons:?}"
        );
    }

    #[test]
    fn analyze_follows_changed_rows_and_never_analyzed_tables() {
        let mut changed = table("changed", 10_000, 0, 20 * MB);
        changed.modified_since_analyze = 5_000;
        let mut never = table("never", 10, 0, 20 * MB);
        never.last_analyze = None;
        let inv = inventory(
            vec![changed, never, table("quiet", 10_000, 0, 20 * MB)],
            vec![],
        );
        let p = plan(&inv, &job(&[Task::Analyze]));
        let chosen: Vec<(&str, &str)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            chosen,
            [
                (
                    "changed",
                    "5000 rows changed since the last analyze, 50% of the table"
                ),
                ("never", "never analyzed")
            ]
        );
    }

    #[test]
    fn bloated_indexes_are_rebuilt_and_leftovers_dropped_first() {
        let t = table("orders", 100_000, 0, 200 * MB);
        let inv = inventory(
            vec![t.clone()],
            vec![
                index("orders_pkey", &t, Some(0.05), true),
                index("orders_customer_idx", &t, Some(0.6), true),
                index("orders_customer_idx_ccnew", &t, None, false),
                index("orders_broken_idx", &t, None, false),
            ],
        );
        let p = plan(&inv, &job(&[Task::Reindex]));
        let order: Vec<(Action, &str)> = p
            .steps
            .iter()
            .map(|s| (s.action, s.index.as_deref().unwrap()))
            .collect();
        assert_eq!(
            order,
            [
                (Action::DropLeftover, "orders_customer_idx_ccnew"),
                (Action::Reindex, "orders_customer_idx"),
            ]
        );
        assert!(
            p.steps[1]
                .reason
                .starts_with("60% of its 50.0 MiB is empty"),
            "{}",
            p.steps[1].reason
        );
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("orders_broken_idx") && w.contains("invalid"))
        );
        assert_eq!(
            p.steps[1].sql(true),
            "REINDEX INDEX CONCURRENTLY \"public\".\"orders_customer_idx\""
        );
    }

    #[test]
    fn vacuum_full_follows_dead_tuples_or_estimated_empty_space() {
        let mut empty = table("emptied", 1000, 0, 100 * MB);
        empty.bloat = Some(0.8);
        let inv = inventory(vec![empty, table("packed", 1000, 0, 100 * MB)], vec![]);
        let p = plan(&inv, &job(&[Task::VacuumFull]));
        assert_eq!(p.steps.len(), 1);
        assert_eq!(p.steps[0].table, "emptied");
        assert_eq!(
            p.steps[0].sql(true),
            "VACUUM (FULL, SKIP_LOCKED) \"public\".\"emptied\""
        );
    }

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
    fn tables_the_role_may_not_maintain_are_left_alone_with_their_owner() {
        let mut theirs = table("theirs", 100, 900_000, 20 * MB);
        theirs.can_vacuum = false;
        theirs.can_reindex = false;
        theirs.owner = "billing".into();
        let mut db_owned = table("db_owned", 100, 900_000, 20 * MB);
        db_owned.can_reindex = false;
        let inv = inventory(
            vec![theirs.clone(), db_owned.clone()],
            vec![index("db_owned_idx", &db_owned, Some(0.9), true)],
        );
        let p = plan(&inv, &job(&[Task::Vacuum, Task::Reindex]));
        let order: Vec<(&str, Action)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.action))
            .collect();
        assert_eq!(order, [("db_owned", Action::Vacuum)]);
        let reason = &p
            .left_alone
            .iter()
            .find(|l| l.table == "public.theirs")
            .unwrap()
            .reason;
        assert!(
            reason.contains("may not maintain it") && reason.contains("(billing)"),
            "{reason}"
        );
    }

    #[test]
    fn leftovers_come_after_wraparound_work_and_exclusion_indexes_are_not_rebuilt_concurrently() {
        let mut old = table("old", 1000, 0, 20 * MB);
        old.xid_age = 300_000_000;
        let t = table("bookings", 1000, 0, 20 * MB);
        let mut excl = index("bookings_during_excl", &t, Some(0.9), true);
        excl.exclusion = true;
        let inv = inventory(
            vec![old, t.clone()],
            vec![excl, index("bookings_idx_ccnew", &t, None, false)],
        );
        let p = plan(&inv, &job(&[Task::Vacuum, Task::Reindex]));
        let order: Vec<(&str, Action)> = p
            .steps
            .iter()
            .map(|s| (s.table.as_str(), s.action))
            .collect();
        assert_eq!(
            order,
            [("old", Action::Vacuum), ("bookings", Action::DropLeftover)]
        );
        let mut plain = job(&[Task::Reindex]);
        plain.reindex_concurrently = false;
        assert!(
            plan(&inv, &plain)
                .steps
                .iter()
                .any(|s| s.index.as_deref() == Some("bookings_during_excl"))
        );
    }

    #[test]
    fn a_size_estimated_as_zero_is_unknown_not_small() {
        let mut fresh = table("fresh", 0, 50_000, 0);
        fresh.size_estimated = true;
        let inv = inventory(vec![fresh], vec![]);
        assert_eq!(plan(&inv, &job(&[Task::Vacuum])).steps.len(), 1);
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

    #[test]
    fn globs_match_whole_names() {
        assert!(glob("a*", "accounts"));
        assert!(glob("*_archive", "x_archive"));
        assert!(glob("a?c", "abc"));
        assert!(!glob("a?c", "abbc"));
        assert!(!glob("acc", "accounts"));
        assert!(glob("*", ""));
        assert!(matches("public.*", "public", "x"));
        assert!(!matches("public.*", "app", "x"));
        assert!(matches("x", "app", "x"));
    }
}
