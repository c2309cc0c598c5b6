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

use crate::error::Result;
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

    /// Whether the statement has `SKIP_LOCKED` and says so by a warning
    /// rather than waiting for `lock_timeout`.
    fn skips_locked(self) -> bool {
        !matches!(self, Action::Reindex | Action::DropLeftover)
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

    fn sql(&self, server_major: u32, concurrently: bool) -> String {
        let table = format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table));
        let index = || {
            format!(
                "{}.{}",
                quote_ident(&self.schema),
                quote_ident(self.index.as_deref().unwrap_or_default())
            )
        };
        // SKIP_LOCKED and CONCURRENTLY came with PostgreSQL 12.
        let modern = server_major >= 12;
        let vacuum = |options: &[&str]| {
            let mut all: Vec<&str> = options.to_vec();
            if modern {
                all.push("SKIP_LOCKED");
            }
            if all.is_empty() {
                format!("VACUUM {table}")
            } else {
                format!("VACUUM ({}) {table}", all.join(", "))
            }
        };
        match self.action {
            Action::Vacuum => vacuum(&[]),
            Action::VacuumAnalyze => vacuum(&["ANALYZE"]),
            Action::Freeze => vacuum(&["FREEZE"]),
            Action::VacuumFull => vacuum(&["FULL"]),
            Action::Analyze if modern => format!("ANALYZE (SKIP_LOCKED) {table}"),
            Action::Analyze => format!("ANALYZE {table}"),
            Action::Reindex if modern && concurrently => {
                format!("REINDEX INDEX CONCURRENTLY {}", index())
            }
            Action::Reindex => format!("REINDEX INDEX {}", index()),
            Action::DropLeftover if modern => {
                format!("DROP INDEX CONCURRENTLY IF EXISTS {}", index())
            }
            Action::DropLeftover => format!("DROP INDEX IF EXISTS {}", index()),
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
    let scoped: std::collections::BTreeSet<u32> = tables.iter().map(|t| t.oid).collect();

    // Leftovers of a failed REINDEX CONCURRENTLY first: they slow every write
    // and only get in the way of the rebuild.
    for index in inv.indexes.iter().filter(|i| !i.valid) {
        if !scoped.contains(&index.table_oid) {
            continue;
        }
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
        } else {
            steps.push(Step {
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
                 wraparound risk, vacuumed first",
                t.qualified(),
                t.xid_age,
                urgent_age
            ));
        }
        let small = t.total_bytes < i64::try_from(targets.min_table_size).unwrap_or(i64::MAX);
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
                for index in indexes_of.get(&t.oid).into_iter().flatten() {
                    if !index.valid {
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
            bloat: None,
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
        (!failed.is_empty()).then(|| {
            format!(
                "{} of {} maintenance step(s) failed: {}",
                failed.len(),
                self.steps.len(),
                failed.join("; ")
            )
        })
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
/// `lock_timeout`, and `None` for the inventory on a standby.
async fn open(spec: &MaintenanceJob) -> Result<(Connection, Notices, u32, Option<Inventory>)> {
    let (conn, notices) = pg::connect_with_notices(&spec.database).await?;
    let major = pg::server_version(&conn).await?.major;
    if stats::in_recovery(&conn).await? {
        return Ok((conn, notices, major, None));
    }
    stats::set_lock_timeout(&conn, spec.lock_timeout).await?;
    // A role's statement_timeout is for the application's queries; a VACUUM
    // FULL of a big table outlasts it. The job's `timeout` bounds the run
    // instead (pg_dump turns it off the same way).
    conn.client
        .batch_execute("SET statement_timeout = 0")
        .await
        .map_err(|e| pg::query_error("setting statement_timeout", e))?;
    let mut inventory = stats::inventory(&conn).await?;
    if spec.tasks.contains(&Task::Reindex) && inventory.has_pgstattuple && !spec.targets.all {
        measure_candidates(&conn, &mut inventory, &spec.targets).await;
    }
    Ok((conn, notices, major, Some(inventory)))
}

/// Measures, with pgstattuple, the B-trees the plan could rebuild: those of
/// tables in scope and not too small. Every other index keeps its estimate.
async fn measure_candidates(conn: &Connection, inv: &mut Inventory, targets: &Targets) {
    let min = i64::try_from(targets.min_table_size).unwrap_or(i64::MAX);
    let candidates: std::collections::BTreeSet<u32> = inv
        .tables
        .iter()
        .filter(|t| in_scope(targets, t).is_ok() && t.total_bytes >= min)
        .map(|t| t.oid)
        .collect();
    for index in inv
        .indexes
        .iter_mut()
        .filter(|i| i.method == "btree" && i.valid && candidates.contains(&i.table_oid))
    {
        stats::measure_index(conn, index).await;
    }
    inv.exact_index_bloat = true;
}

/// The plan a run would carry out now. Changes nothing.
pub async fn preview(spec: &MaintenanceJob) -> Result<Preview> {
    let (conn, _, _, inventory) = open(spec).await?;
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
) -> Result<MaintenanceOutcome> {
    let (conn, mut notices, major, inventory) = open(spec).await?;
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
                    ..Measure::default()
                })
                .unwrap_or_default(),
            None => tables
                .get(&step.table_oid)
                .map(|t| Measure::from(*t))
                .unwrap_or_default(),
        };
        if let Some(window) = spec.window
            && (window_closed || !window.contains(clock.now(), &job.timezone))
        {
            window_closed = true;
            results.push(StepResult {
                sql: step.sql(major, spec.reindex_concurrently),
                step,
                status: StepStatus::Skipped,
                note: Some(format!("not started: outside the window {window}")),
                seconds: 0.0,
                before,
                after: None,
            });
            continue;
        }
        let started = Instant::now();
        let (status, note) = execute(&conn, &mut notices, spec, &step, major).await;
        let seconds = started.elapsed().as_secs_f64();
        let after = if status == StepStatus::Done {
            measure_after(&conn, &step).await
        } else {
            None
        };
        match status {
            StepStatus::Done => tracing::info!(
                "{} {}: done in {seconds:.1}s",
                step.action.name(),
                step.target()
            ),
            _ => tracing::warn!(
                "{} {}: {}",
                step.action.name(),
                step.target(),
                note.as_deref().unwrap_or("")
            ),
        }
        results.push(StepResult {
            sql: step.sql(major, spec.reindex_concurrently),
            step,
            status,
            note,
            seconds,
            before,
            after,
        });
    }
    let mut warnings = plan.warnings;
    if window_closed && let Some(window) = spec.window {
        warnings.push(format!(
            "the window {window} closed with {} step(s) not started; they are planned again next run",
            results.iter().filter(|r| r.note.as_deref().is_some_and(|n| n.starts_with("not started"))).count()
        ));
        tracing::warn!("{}", warnings.last().map_or("", String::as_str));
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

/// Runs one statement and drains what the server warned meanwhile.
async fn statement(
    conn: &Connection,
    notices: &mut Notices,
    sql: &str,
) -> (
    std::result::Result<(), tokio_postgres::Error>,
    Vec<tokio_postgres::error::DbError>,
) {
    while notices.try_recv().is_ok() {}
    // A run cancelled or timed out mid-statement must not leave it running.
    let guard = CancelOnDrop::new(conn);
    let result = conn.client.batch_execute(sql).await;
    guard.disarm();
    let mut said = Vec::new();
    while let Ok(n) = notices.try_recv() {
        said.push(n);
    }
    (result, said)
}

/// Carries out one step: tries again while its lock is busy, then gives up
/// on it. Returns how it ended and why.
async fn execute(
    conn: &Connection,
    notices: &mut Notices,
    spec: &MaintenanceJob,
    step: &Step,
    major: u32,
) -> (StepStatus, Option<String>) {
    let sql = step.sql(major, spec.reindex_concurrently);
    let tries = spec.lock_retries + 1;
    for attempt in 1..=tries {
        let (result, said) = statement(conn, notices, &sql).await;
        let busy = match &result {
            Ok(()) => said
                .iter()
                .any(|n| n.code() == &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
            Err(e) => stats::is_lock_timeout(e),
        };
        if step.action == Action::Reindex && (busy || result.is_err()) {
            clean_leftovers(conn, notices, step).await;
        }
        match result {
            Ok(()) if !busy => {
                if step.action == Action::Reindex {
                    return check_valid(conn, step).await;
                }
                return (StepStatus::Done, None);
            }
            Err(e) if !busy => {
                return (
                    StepStatus::Failed,
                    Some(pg::query_error(&sql, e).message().to_owned()),
                );
            }
            _ if attempt < tries => {
                tracing::info!(
                    "{} {}: lock busy (try {attempt} of {tries}); trying again",
                    step.action.name(),
                    step.target()
                );
                // SKIP_LOCKED gives up at once: wait as long as a lock
                // wait would have.
                let pause = if step.action.skips_locked() {
                    spec.lock_timeout
                } else {
                    Duration::from_secs(1)
                };
                tokio::time::sleep(pause).await;
            }
            _ => {}
        }
    }
    (
        StepStatus::Skipped,
        Some(format!(
            "skipped: another session held a conflicting lock through {tries} tries \
             (lock_timeout {}); the next run tries again",
            crate::time::show_std_duration(spec.lock_timeout)
        )),
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
    let rows = conn
        .client
        .query(
            "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE i.indrelid = $1 AND NOT i.indisvalid",
            &[&step.table_oid],
        )
        .await;
    let Ok(rows) = rows else { return };
    // Names are cut to 63 bytes before the suffix is added.
    let stem: String = index.chars().take(50).collect();
    for row in rows {
        let name: String = row.get(0);
        if !name.starts_with(&stem) || !stats::is_leftover_name(&name) {
            continue;
        }
        let drop = Step {
            action: Action::DropLeftover,
            index: Some(name.clone()),
            ..step.clone()
        };
        let sql = drop.sql(12, true);
        match statement(conn, notices, &sql).await.0 {
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
        TableStats {
            oid: name.bytes().map(u32::from).sum(),
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
            p.steps[1].sql(15, true),
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
            p.steps[0].sql(15, true),
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
            step.sql(15, true),
            "VACUUM (ANALYZE, SKIP_LOCKED) \"Sales\".\"Order Lines\""
        );
        assert_eq!(
            step.sql(11, true),
            "VACUUM (ANALYZE) \"Sales\".\"Order Lines\""
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
