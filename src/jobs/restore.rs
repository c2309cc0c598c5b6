//! A restore: plan first (which backup, which storage, what happens to the
//! target), then carry the plan out and prove the result against the manifest.
//!
//! Storage reader → stored SHA-256 → decompress → raw SHA-256 → `pg_restore`,
//! streamed into its stdin; with `--jobs N > 1` spooled to a temporary file
//! first, because a parallel `pg_restore` must seek. Afterwards every table's
//! row count is compared with the manifest; any difference fails the restore.
//!
//! A restore never touches the target before the new copy is proven: it
//! restores into a database of its own beside the target
//! (`<target>__restoring_<id>`), proves it, and only then puts it in the
//! target's place, renaming both in one transaction. A failure leaves the
//! target as it was and drops the copy. `--in-place` is the old way (drop the
//! target, restore into it), for servers without room for two copies.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::archive;
use crate::archive::crypt::Crypt;
use crate::catalog::{self, Manifest, Role, Selector};
use crate::error::Kind;
use crate::error::{Error, Result};
use crate::jobs::proof;
use crate::model::{BackupJob, Database, Job};
use crate::pg::database::{self as pgdb, DatabaseProperties, admin_database};
use crate::pg::{self, command::RestoreFlags};
use crate::report::Progress;
use crate::storage::Storage;
use crate::time;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub selector: Selector,
    pub target_db: String,
    /// Read from this storage; by default the first of the job's storages that
    /// has the backup.
    pub storage: Option<String>,
    pub flags: RestoreFlags,
    /// `--clean`: an existing, non-empty target may be replaced.
    pub clean: bool,
    /// `--in-place`: drop the target first and restore into it.
    pub in_place: bool,
    /// `--keep-failed`: a copy that fails its proof stays for a look.
    pub keep_failed: bool,
}

/// How the target gets the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// No target yet: restored under `staging`, proven, then renamed.
    New { staging: String },
    /// The target exists: restored under `staging` beside it, proven, then
    /// swapped in; the old database is dropped after the swap.
    Swap {
        staging: String,
        /// What the target holds; `None` when it is empty.
        contents: Option<String>,
    },
    /// `--in-place`: a target that holds something is dropped and re-created
    /// first, and the backup restored into it.
    InPlace {
        exists: bool,
        contents: Option<String>,
    },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::New { .. } => "new",
            Method::Swap { .. } => "swap",
            Method::InPlace { .. } => "in-place",
        }
    }

    /// The database `pg_restore` writes into.
    pub fn staging(&self) -> Option<&str> {
        match self {
            Method::New { staging } | Method::Swap { staging, .. } => Some(staging),
            Method::InPlace { .. } => None,
        }
    }

    fn contents(&self) -> Option<&str> {
        match self {
            Method::New { .. } => None,
            Method::Swap { contents, .. } | Method::InPlace { contents, .. } => contents.as_deref(),
        }
    }

    fn target_exists(&self) -> bool {
        match self {
            Method::New { .. } => false,
            Method::Swap { .. } => true,
            Method::InPlace { exists, .. } => *exists,
        }
    }
}

/// Everything a restore will do, decided before anything is touched.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub job: String,
    pub timezone: TimeZone,
    pub backup: Manifest,
    pub storage: String,
    pub target_db: String,
    pub requested_at: Option<Timestamp>,
    pub method: Method,
    /// The existing target's own properties, kept over the backup's.
    pub target_properties: Option<DatabaseProperties>,
    /// Databases that interrupted restores into the target left.
    pub leftovers: Leftovers,
    /// `--clean`: the target may be replaced whatever it holds.
    pub clean: bool,
    pub keep_failed: bool,
    pub flags: RestoreFlags,
    /// How the backup's objects open (encrypted ones: checked identities).
    pub crypt: Crypt,
}

impl RestorePlan {
    /// Whether carrying the plan out replaces objects that exist now.
    pub fn overwrites(&self) -> bool {
        self.method.contents().is_some()
    }

    /// The properties the restored database ends up with.
    fn properties(&self) -> Option<DatabaseProperties> {
        pgdb::merge(
            self.backup.database_properties.as_ref(),
            self.target_properties.as_ref(),
            self.flags.no_owner,
            self.flags.no_acl,
        )
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        writeln!(f, "restore plan for job {}:", self.job)?;
        writeln!(f, "  backup:    {} from storage {}", b.id, self.storage)?;
        writeln!(
            f,
            "  data as of {}",
            time::show(b.snapshot_at, &self.timezone)
        )?;
        if let Some(at) = self.requested_at {
            writeln!(
                f,
                "  requested  {} ({} after the backup's snapshot)",
                time::show(at, &self.timezone),
                time::show_duration(at.duration_since(b.snapshot_at))
            )?;
        }
        writeln!(
            f,
            "  source:    database {} on PostgreSQL {}, {} tables, {} raw",
            b.dbname,
            b.server_version,
            b.tables.len(),
            crate::report::bytes_human(b.raw_size())
        )?;
        let target = &self.target_db;
        let raw = crate::report::bytes_human(b.raw_size());
        match &self.method {
            Method::New { staging } => writeln!(
                f,
                "  target:    database {target} (will be created: restored as {staging}, proven, \
                 then renamed to {target})"
            )?,
            Method::Swap { staging, contents } => writeln!(
                f,
                "  target:    database {target} (exists{}; it is replaced only once the new copy is \
                 proven: restored as {staging} beside it, checked, then swapped in by renaming, \
                 and the old database dropped; until then the server needs room for both: a \
                 second copy of a {raw} dump, plus its indexes)",
                contents
                    .as_ref()
                    .map_or(", empty".to_owned(), |c| format!(": {c}"))
            )?,
            Method::InPlace {
                exists: true,
                contents: Some(what),
            } => writeln!(
                f,
                "  target:    database {target} (exists: {what}; --in-place: it is DROPPED FIRST \
                 and re-created empty, keeping its owner, encoding, settings and grants, then \
                 restored into; if the restore fails, the old data is gone and the database is \
                 incomplete)"
            )?,
            Method::InPlace { exists, .. } => writeln!(
                f,
                "  target:    database {target} ({}; --in-place: restored into directly)",
                if *exists {
                    "exists, empty"
                } else {
                    "will be created"
                }
            )?,
        }
        for leftover in &self.leftovers.restoring {
            writeln!(
                f,
                "  first:     drop {leftover}, left by an interrupted restore into {target}"
            )?;
        }
        for leftover in &self.leftovers.replaced {
            writeln!(
                f,
                "  at last:   drop {leftover}, a database an earlier restore replaced, once \
                 the new copy is in place"
            )?;
        }
        let mut how = vec![if self.flags.jobs > 1 {
            format!(
                "{} parallel jobs (spooled to a temporary file)",
                self.flags.jobs
            )
        } else {
            "streamed, 1 job".to_owned()
        }];
        if self.flags.no_owner {
            how.push("no owner".to_owned());
        }
        if self.flags.no_acl {
            how.push("no privileges".to_owned());
        }
        writeln!(f, "  restore:   {}", how.join(", "))?;
        match self.properties() {
            Some(p) => writeln!(
                f,
                "  database:  {} ({})",
                p.summary(),
                if self.target_properties.is_some() {
                    "the target's own, and what the backup adds"
                } else {
                    "as backed up"
                }
            )?,
            None => writeln!(
                f,
                "  database:  the backup predates database properties: owner, settings and \
                 grants are the server's defaults"
            )?,
        }
        write!(
            f,
            "  then:      compare the row counts of {} tables with the manifest{}",
            b.tables.len(),
            match (&self.method, self.keep_failed) {
                (Method::InPlace { .. }, _) => "",
                (_, true) => "; a copy that fails is kept (--keep-failed)",
                (_, false) => "; a copy that fails is dropped, and the target left as it was",
            }
        )
    }
}

/// `<target>__restoring_<id>` and the like: lowercase, within 63 bytes.
pub fn beside(target: &str, what: &str, id: &str) -> String {
    let suffix = format!("__{what}_{}", id.to_lowercase().replace('-', "_"));
    let room = crate::pg::url::MAX_IDENTIFIER.saturating_sub(suffix.len());
    let mut base = target.to_owned();
    while base.len() > room {
        base.pop();
    }
    format!("{base}{suffix}")
}

/// The comment on a database a restore into `target` is writing.
fn restoring_marker(target: &str) -> String {
    format!(
        "backup: the copy being restored into database {}; dropped if the restore fails, or by \
         the next restore into it",
        pg::quote_ident(target)
    )
}

/// The comment on a database a restore replaced, until it is dropped.
fn replaced_marker(target: &str) -> String {
    format!(
        "backup: replaced by a restore into database {}; dropped by that restore or the next",
        pg::quote_ident(target)
    )
}

/// The comment on a proven copy that could not be put in the target's place.
fn proven_marker(target: &str, id: &str) -> String {
    format!(
        "backup: a proven restore of backup {id} into database {} that could not be swapped \
         in; kept for the operator",
        pg::quote_ident(target)
    )
}

/// The comment on a copy that failed and was kept by `--keep-failed`.
fn kept_marker(target: &str, id: &str) -> String {
    format!(
        "backup: a restore of backup {id} into database {} that failed, kept by --keep-failed",
        pg::quote_ident(target)
    )
}

/// Decides what a restore will do, refusing what it must not do.
pub async fn plan(
    job: &Job,
    spec: &BackupJob,
    target: &Database,
    storages: &[Arc<dyn Storage>],
    request: &RestoreRequest,
) -> Result<RestorePlan> {
    pgdb::check_name(&request.target_db)?;
    let (backup, storage) =
        choose(job, storages, request.storage.as_deref(), &request.selector).await?;
    // Before the target is even looked at: a key that cannot open the
    // backup ends the restore here.
    let crypt = catalog::opener(named(storages, &storage)?.as_ref(), &backup, spec.keys()).await?;
    let target_db = request.target_db.clone();
    let admin = pg::connect(target, Some(admin_database(&target_db))).await?;
    let exists = pg::database_exists(&admin, &target_db).await?;
    let (contents, target_properties) = if exists {
        let conn = pg::connect(target, Some(&target_db)).await?;
        (
            pg::describe_contents(&conn).await?,
            Some(pgdb::properties(&admin, &target_db).await?),
        )
    } else {
        (None, None)
    };
    let id = backup.id.as_str();
    let staging = beside(&target_db, "restoring", id);
    let method = match (exists, request.in_place) {
        (_, true) => Method::InPlace { exists, contents },
        (false, false) => Method::New { staging },
        (true, false) => Method::Swap { staging, contents },
    };
    // Replacing what is there, either way, is asked for by --clean alone.
    if method.contents().is_some() && !request.clean {
        return Err(Error::refused(format!(
            "database {target_db} exists and is not empty ({}); nothing was changed",
            method.contents().unwrap_or_default()
        ))
        .with_hint(
            "restore into a new --target-db, or pass --clean to replace the database once the \
             restored copy is proven",
        ));
    }
    // Replaced (swapped out, or dropped first): it must be the restore's alone.
    if matches!(
        method,
        Method::Swap { .. }
            | Method::InPlace {
                contents: Some(_),
                ..
            }
    ) {
        let sessions = pg::other_sessions(&admin, &target_db).await?;
        if !sessions.is_empty() {
            return Err(Error::refused(format!(
                "database {target_db} has {} other session(s) connected: {}; nothing was changed",
                sessions.len(),
                sessions.join(", ")
            ))
            .with_hint(
                "stop the applications that use it: the restore replaces the database, which \
                 needs it to itself",
            ));
        }
    }
    let leftovers = leftovers(&admin, &target_db).await?;
    // The names the restore will work under must be free, or its own leftovers.
    let mut names = Vec::new();
    if let Method::Swap { staging, .. } = &method {
        names.push(beside(&target_db, "replaced", id));
        names.push(staging.clone());
    }
    if let Method::New { staging } = &method {
        names.push(staging.clone());
    }
    for name in names {
        if pg::database_exists(&admin, &name).await? && !leftovers.contains(&name) {
            let kept = pg::database_comment(&admin, &name).await?.flatten()
                == Some(kept_marker(&target_db, id));
            return Err(Error::refused(format!(
                "database {name}, the name this restore works under, exists{}; nothing was changed",
                if kept {
                    " (a failed restore of this backup, kept by --keep-failed)"
                } else {
                    ""
                }
            ))
            .with_hint(format!(
                "drop database {name} once you no longer need it, then restore again"
            )));
        }
    }
    Ok(RestorePlan {
        job: job.name.clone(),
        timezone: job.timezone.clone(),
        backup,
        storage,
        target_db,
        requested_at: match request.selector {
            Selector::At(at) => Some(at),
            _ => None,
        },
        method,
        target_properties,
        leftovers,
        clean: request.clean,
        keep_failed: request.keep_failed,
        flags: request.flags,
        crypt,
    })
}

/// Databases restores into a target left behind, known by their comment and
/// their name both: a comment alone survives a rename by an operator who
/// meant to keep the database.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Leftovers {
    /// Copies an interrupted restore was writing: dropped first.
    pub restoring: Vec<String>,
    /// Databases a swap replaced and could not drop: dropped only once the
    /// new copy is in place, since one may be the only copy of what was there.
    pub replaced: Vec<String>,
}

impl Leftovers {
    fn contains(&self, name: &str) -> bool {
        self.restoring
            .iter()
            .chain(&self.replaced)
            .any(|n| n == name)
    }
}

async fn leftovers(admin: &pg::Connection, target: &str) -> Result<Leftovers> {
    let named = |what: &'static str| move |name: &String| is_beside(name, target, what);
    Ok(Leftovers {
        restoring: pg::databases_with_comment(admin, &restoring_marker(target))
            .await?
            .into_iter()
            .filter(named("restoring"))
            .collect(),
        replaced: pg::databases_with_comment(admin, &replaced_marker(target))
            .await?
            .into_iter()
            .filter(named("replaced"))
            .collect(),
    })
}

/// Whether `name` is a [`beside`] name of `target`, for some backup id.
fn is_beside(name: &str, target: &str, what: &str) -> bool {
    let mark = format!("__{what}_");
    let Some((base, id)) = name.rsplit_once(&mark) else {
        return false;
    };
    let id = id.to_uppercase().replacen('_', "-", 1);
    target.starts_with(base)
        && crate::model::BackupId::parse(&id).is_ok()
        && beside(target, what, &id) == name
}

/// The backup `selector` names, and the storage it is read from: the first
/// of `storages` (or the one named `only`) that answers and has it.
pub async fn choose(
    job: &Job,
    storages: &[Arc<dyn Storage>],
    only: Option<&str>,
    selector: &Selector,
) -> Result<(Manifest, String)> {
    let candidates: Vec<&Arc<dyn Storage>> = match only {
        Some(name) => {
            let found = storages.iter().find(|s| s.name() == name).ok_or_else(|| {
                Error::usage(format!(
                    "job {} does not store backups in storage '{name}'",
                    job.name
                ))
                .with_hint(format!(
                    "the job's storages: {}",
                    storages
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            vec![found]
        }
        None => storages.iter().collect(),
    };
    // The backup is chosen from the first storage that answers; the union of
    // all would pick a backup some storage lacks and hide a failing one.
    let mut last_error = None;
    let mut chosen = None;
    for storage in candidates {
        let listing = match catalog::list(storage.as_ref(), &job.name).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("storage {}: {e}", storage.name());
                last_error = Some(e);
                continue;
            }
        };
        for problem in &listing.unreadable {
            tracing::warn!("{problem}");
        }
        let selected = catalog::select(&listing.backups, selector, &job.name, &job.timezone);
        // A backup this selector could mean whose manifest does not read is
        // never passed over for another: the operator would get an older
        // backup than asked for, or none of the one named.
        if let Some(bad) = listing.unreadable.iter().find(|u| {
            could_mean(selector, &u.id) && selected.as_ref().is_ok_and(|m| u.id > m.id)
                || matches!(selector, Selector::Id(id) if *id == u.id)
        }) {
            return Err(
                Error::integrity(bad.problem.clone()).with_hint(match &selected {
                    Ok(m) => format!(
                        "restore another backup by --id (the one before it is {}); `backup verify \
                     --job {} --all` says which are whole",
                        m.id, job.name
                    ),
                    Err(_) => format!(
                        "restore another backup by --id; `backup list --job {}` shows them",
                        job.name
                    ),
                }),
            );
        }
        match selected {
            Ok(m) => {
                chosen = Some((m.clone(), storage.name().to_owned()));
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    chosen.ok_or_else(|| last_error.unwrap_or_else(|| Error::internal("no storage to read")))
}

/// Whether `selector` could pick backup `id` (read from its id, as its
/// manifest does not read).
fn could_mean(selector: &Selector, id: &crate::model::BackupId) -> bool {
    match selector {
        Selector::Latest => true,
        Selector::Id(wanted) => wanted == id,
        Selector::At(at) => id.started_at().is_some_and(|started| started <= *at),
    }
}

/// What a finished restore proved.
#[derive(Debug)]
pub struct RestoreOutcome {
    pub tables_checked: usize,
    pub rows_checked: i64,
    /// What could not be kept (a setting this server refuses, a role it
    /// lacks, the old database that could not be dropped), said, not fatal.
    pub warnings: Vec<String>,
}

/// Drops a database this process made for itself (the copy a restore
/// writes, a restore test's scratch database) when dropped before
/// [`DropGuard::disarm`]: the work was stopped (a signal, a timeout drops
/// its future). The process waits for the drop before it exits.
pub struct DropGuard {
    db: Option<Database>,
    name: String,
    /// What the database is, and who drops it if this cannot, for the log.
    what: &'static str,
    otherwise: &'static str,
}

impl DropGuard {
    pub fn new(db: &Database, name: &str, what: &'static str, otherwise: &'static str) -> Self {
        DropGuard {
            db: Some(db.clone()),
            name: name.to_owned(),
            what,
            otherwise,
        }
    }

    pub fn disarm(mut self) {
        self.db = None;
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        let Some(db) = self.db.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        let otherwise = self.otherwise;
        tracing::info!("dropping {name}, {}", self.what);
        crate::storage::spawn_cleanup(async move {
            let dropped = async {
                let admin = pg::connect(&db, Some(admin_database(&name))).await?;
                pg::drop_database(&admin, &name).await
            };
            if let Err(e) = dropped.await {
                tracing::warn!("{e}; {otherwise}");
            }
        });
    }
}

/// Carries out a plan: the target is touched only once the restored copy is
/// proven, except with `--in-place`, whose failures leave a target that must
/// not be trusted (and the error says so).
pub async fn execute(
    plan: &RestorePlan,
    db: &Database,
    storage: &Arc<dyn Storage>,
    progress: Arc<dyn Progress>,
) -> Result<RestoreOutcome> {
    let target = &plan.target_db;
    let admin = pg::connect(db, Some(admin_database(target))).await?;
    take_restore_lock(&admin, target).await?;
    let pg_restore = pg_restore_for(&admin, db, &plan.backup).await?;
    // Read again under the lock: the plan may have waited for a confirmation.
    let Leftovers {
        restoring,
        replaced,
    } = leftovers(&admin, target).await?;
    for leftover in restoring {
        tracing::info!("dropping {leftover}, left by an interrupted restore into {target}");
        pg::drop_database(&admin, &leftover).await?;
    }
    let props = plan.properties();
    let mut warnings = Vec::new();
    let Some(staging) = plan.method.staging() else {
        return in_place(plan, db, &admin, storage, &pg_restore, progress, props).await;
    };

    still_as_planned(plan, db).await?;
    tracing::info!("restoring backup {} into {staging}", plan.backup.id);
    warnings.extend(pgdb::create_like(&admin, staging, props.as_ref()).await?);
    let guard = DropGuard::new(
        db,
        staging,
        "the copy the stopped restore was writing",
        "the next restore into the same database drops it",
    );
    pgdb::set_comment(&admin, staging, Some(&restoring_marker(target))).await?;
    let loaded = load_and_prove(plan, db, staging, storage, &pg_restore, progress).await;
    let proof = match loaded {
        Ok(proof) => proof,
        Err(e) => {
            let kept = plan
                .keep_failed
                .then(|| kept_marker(target, plan.backup.id.as_str()));
            let copy = set_aside(&admin, plan, staging, kept.as_deref()).await;
            guard.disarm();
            return Err(failed(e, plan, &copy));
        }
    };
    if let Some(p) = &props {
        warnings.extend(pgdb::apply(&admin, staging, target, p).await);
    }
    // A proven copy is never thrown away: if it cannot be put in place, it
    // stays, named, for the operator to finish by hand.
    if let Err(e) = replace(plan, db, &admin, staging, props.as_ref()).await {
        let kept = proven_marker(target, plan.backup.id.as_str());
        let copy = set_aside(&admin, plan, staging, Some(&kept)).await;
        guard.disarm();
        let finish = match plan.method.target_exists() {
            true => format!(
                "to put it in place once the cause is gone: ALTER DATABASE {} RENAME TO \
                 {}; ALTER DATABASE {} RENAME TO {};",
                pg::quote_ident(target),
                pg::quote_ident(&beside(target, "replaced", plan.backup.id.as_str())),
                pg::quote_ident(staging),
                pg::quote_ident(target)
            ),
            false => format!(
                "to put it in place: ALTER DATABASE {} RENAME TO {};",
                pg::quote_ident(staging),
                pg::quote_ident(target)
            ),
        };
        return Err(failed(e, plan, &format!("{copy}; {finish}")));
    }
    guard.disarm();
    if plan.method.target_exists() {
        let old = beside(target, "replaced", plan.backup.id.as_str());
        if let Err(e) = pg::drop_database(&admin, &old).await {
            warnings.push(format!(
                "the replaced database, now called {old}, could not be dropped: {e}; the next \
                 restore into {target} drops it, or drop it by hand"
            ));
        }
    }
    // Leftovers of earlier restores that held an old database: dropped only
    // now that a new copy is in place.
    for leftover in replaced {
        if let Err(e) = pg::drop_database(&admin, &leftover).await {
            warnings.push(format!("{leftover}, left by an earlier restore: {e}"));
        }
    }
    Ok(RestoreOutcome {
        tables_checked: plan.backup.tables.len(),
        rows_checked: proof.rows,
        warnings,
    })
}

/// Drops the copy `staging`, or keeps it with the comment `keep`; says which.
async fn set_aside(
    admin: &pg::Connection,
    plan: &RestorePlan,
    staging: &str,
    keep: Option<&str>,
) -> String {
    let target = &plan.target_db;
    match keep {
        Some(comment) => match pgdb::set_comment(admin, staging, Some(comment)).await {
            Ok(()) => format!("the restored copy is kept as database {staging}"),
            Err(m) => format!(
                "the restored copy is kept as database {staging} (it could not be marked as \
                 kept: {m}; the next restore into {target} drops it)"
            ),
        },
        None => match pg::drop_database(admin, staging).await {
            Ok(()) => format!("the restored copy {staging} was dropped"),
            Err(d) => format!(
                "the restored copy {staging} could not be dropped ({d}); the next restore into \
                 {target} drops it"
            ),
        },
    }
}

/// The error of a restore that left the target as it was: the failure's own
/// advice first (restore another backup, create the roles), then what
/// became of the target and of the copy.
fn failed(e: Error, plan: &RestorePlan, copy: &str) -> Error {
    let target = &plan.target_db;
    let target_state = if plan.method.target_exists() {
        format!("database {target} was not touched")
    } else {
        format!("database {target} was not created")
    };
    let cause = cause_hint(&e)
        .or(e.hint())
        .map_or(String::new(), |h| format!("{h}; "));
    e.context(format!(
        "restore of backup {} into {target}",
        plan.backup.id
    ))
    .with_hint(format!("{cause}{target_state}; {copy}"))
}

/// Refuses to go on when the target gained content since the plan said it
/// was empty (a restore runs for hours): replacing it is what `--clean` says.
async fn still_as_planned(plan: &RestorePlan, db: &Database) -> Result<()> {
    if plan.clean || !plan.method.target_exists() || plan.method.contents().is_some() {
        return Ok(());
    }
    let conn = pg::connect(db, Some(&plan.target_db)).await?;
    match pgdb::describe_contents(&conn).await? {
        None => Ok(()),
        Some(what) => Err(Error::refused(format!(
            "database {} was empty when the restore was planned and now holds {what}; it is \
             not replaced without --clean",
            plan.target_db
        ))
        .with_hint(
            "restore into a new --target-db, or look at what was written there and restore \
             again with --clean to replace it",
        )),
    }
}

/// One restore into a database at a time: two at once would swap each
/// other's copies. A session-level advisory lock, released with `admin`.
async fn take_restore_lock(admin: &pg::Connection, target: &str) -> Result<()> {
    let key = crate::lock::lock_key(&format!("backup restore into {target}"));
    let row = admin
        .client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(|e| pg::query_error("taking the restore's lock", e))?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(Error::refused(format!(
            "another restore into database {target} is running; nothing was changed"
        ))
        .with_hint("wait for it to end, then look at the database before restoring again"))
    }
}

/// `pg_restore` into `into`, then the proof; a failed proof is an error.
async fn load_and_prove(
    plan: &RestorePlan,
    db: &Database,
    into: &str,
    storage: &Arc<dyn Storage>,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
) -> Result<proof::Proof> {
    let what = Load {
        job: &plan.job,
        backup: &plan.backup,
        crypt: &plan.crypt,
        flags: plan.flags,
        into,
    };
    load(what, db, storage, pg_restore, progress).await?;
    let conn = pg::connect(db, Some(into)).await?;
    let proof = proof::prove(&conn, &plan.backup, &[]).await?;
    match proof.failure() {
        Some(failure) => Err(Error::integrity(failure)),
        None => Ok(proof),
    }
}

/// Puts the proven copy `staging` in the target's place: once no session is
/// on the target, both are renamed in one transaction.
async fn replace(
    plan: &RestorePlan,
    db: &Database,
    admin: &pg::Connection,
    staging: &str,
    props: Option<&DatabaseProperties>,
) -> Result<()> {
    let target = &plan.target_db;
    let comment = props.and_then(|p| p.comment.as_deref());
    if !plan.method.target_exists() {
        return pgdb::swap_in(admin, staging, target, None, comment).await;
    }
    still_as_planned(plan, db).await?;
    let old = beside(target, "replaced", plan.backup.id.as_str());
    let marker = replaced_marker(target);
    // Sessions that are ending (a pool closing) get a few seconds; the
    // renames themselves fail if one comes in between.
    let mut last = None;
    for _ in 0..5 {
        let sessions = pg::other_sessions(admin, target).await?;
        if !sessions.is_empty() {
            last = Some(Error::refused(format!(
                "database {target} has {} session(s) connected again: {}; the proven copy \
                 was not swapped in",
                sessions.len(),
                sessions.join(", ")
            )));
            continue;
        }
        match pgdb::swap_in(admin, staging, target, Some((&old, &marker)), comment).await {
            Ok(()) => {
                tracing::info!(
                    "swapped the restored copy in as {target}; the old database is {old}"
                );
                return Ok(());
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    Err(last
        .unwrap_or_else(|| Error::internal("no swap attempted"))
        .with_hint("stop the applications that use it"))
}

/// `--in-place`: the target is dropped and re-created (when it holds
/// something), then restored into.
#[allow(clippy::too_many_arguments)]
async fn in_place(
    plan: &RestorePlan,
    db: &Database,
    admin: &pg::Connection,
    storage: &Arc<dyn Storage>,
    pg_restore: &Path,
    progress: Arc<dyn Progress>,
    props: Option<DatabaseProperties>,
) -> Result<RestoreOutcome> {
    let target = &plan.target_db;
    let mut warnings = Vec::new();
    match &plan.method {
        Method::InPlace {
            exists: true,
            contents: Some(_),
        } => {
            tracing::info!("dropping and re-creating database {target} (--in-place)");
            warnings.extend(pgdb::recreate_database(admin, target, props.as_ref()).await?);
        }
        Method::InPlace { exists: false, .. } => {
            warnings.extend(pgdb::create_like(admin, target, props.as_ref()).await?);
        }
        _ => {}
    }
    let untrusted = |e: Error| {
        let cause = cause_hint(&e).map_or(String::new(), |h| format!("{h}; "));
        e.context(format!(
            "restore of backup {} into {target}",
            plan.backup.id
        ))
        .with_hint(format!(
            "{cause}the content of database {target} must not be trusted: drop it, or restore \
             again (--clean restores beside it and swaps only a proven copy in)"
        ))
    };
    let proof = load_and_prove(plan, db, target, storage, pg_restore, progress)
        .await
        .map_err(untrusted)?;
    if let Some(p) = &props {
        warnings.extend(pgdb::apply_all(admin, target, p).await);
    }
    Ok(RestoreOutcome {
        tables_checked: plan.backup.tables.len(),
        rows_checked: proof.rows,
        warnings,
    })
}

/// The `pg_restore` to use on the server `admin` is connected to: no older
/// than the server, nor than the `pg_dump` that wrote `backup`.
pub async fn pg_restore_for(
    admin: &pg::Connection,
    db: &Database,
    backup: &Manifest,
) -> Result<std::path::PathBuf> {
    let server = pg::server_version(admin).await?;
    let pg_restore = pg::tool_path(db, "pg_restore", server.major);
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

/// A fix for the failures of `pg_restore` that have a usual cause.
fn cause_hint(e: &Error) -> Option<&'static str> {
    let m = e.message();
    if m.contains("role \"") && m.contains("does not exist") {
        Some(
            "the backup's roles are missing on this server: create them from the backup's \
             globals.sql, or pass --no-owner --no-acl",
        )
    } else if m.contains("permission denied") {
        Some("the role in the url lacks a privilege the backup needs; try --no-owner --no-acl")
    } else {
        None
    }
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

/// The storage a plan chose, among `storages` (opened again to carry it out).
pub fn named<'a>(storages: &'a [Arc<dyn Storage>], name: &str) -> Result<&'a Arc<dyn Storage>> {
    storages
        .iter()
        .find(|s| s.name() == name)
        .ok_or_else(|| Error::internal(format!("storage {name} vanished")))
}
