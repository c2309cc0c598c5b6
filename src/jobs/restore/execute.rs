//! Carrying a plan out: under the restore's lock, the copy is loaded and
//! proven beside the target, then swapped in; a copy that fails is dropped
//! or kept, and the error says what became of the target. `--in-place`
//! restores into the target itself.

use std::sync::Arc;

use super::leftovers::{kept_marker, leftovers, proven_marker, restoring_marker};
use super::swap::{replace, still_as_planned};
use super::{
    DropGuard, Globals, Leftovers, Load, Method, RestoreClient, RestoreOutcome, RestorePlan,
    apply_globals, beside, load, pg_restore_for,
};
use crate::error::{Error, Result};
use crate::jobs::proof;
use crate::model::Database;
use crate::pg;
use crate::pg::database::{self as pgdb, DatabaseProperties, admin_database};
use crate::report::Progress;
use crate::storage::Storage;

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
    let server = pg::server_version(&admin).await?.text;
    // Read again under the lock: the plan may have waited for a confirmation.
    let Leftovers {
        restoring,
        replaced,
    } = leftovers(db, &admin, target).await?;
    for leftover in restoring {
        tracing::info!("dropping {leftover}, left by an interrupted restore into {target}");
        pg::drop_database(&admin, &leftover).await?;
    }
    let props = plan.properties();
    let mut warnings = Vec::new();
    if plan.globals {
        tracing::info!(
            "creating the roles of backup {} the server lacks",
            plan.backup.id
        );
        let from = Globals {
            job: &plan.job,
            backup: &plan.backup,
            crypt: &plan.crypt,
            dbname: admin_database(target),
        };
        warnings.extend(apply_globals(from, db, &admin, storage).await?);
    }
    let Some(staging) = plan.method.staging() else {
        let mut outcome = in_place(plan, db, &admin, storage, &pg_restore, progress, props).await?;
        warnings.append(&mut outcome.warnings);
        return Ok(RestoreOutcome {
            target_server: server,
            warnings,
            ..outcome
        });
    };

    still_as_planned(plan, db).await?;
    tracing::info!("restoring backup {} into {staging}", plan.backup.id);
    // Armed before the CREATE: a stop between the server making the copy and
    // this process hearing so would otherwise leave it, unmarked, for good.
    // The copy is ours (one restore per target holds its lock), so a create
    // that failed half-way is dropped too.
    let guard = DropGuard::new(
        db,
        staging,
        "the copy the stopped restore was writing",
        "the next restore into the same database drops it",
    );
    warnings.extend(pgdb::create_like(&admin, staging, props.as_ref()).await?);
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
        target_server: server,
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
    let cause = cause_hint(&e, plan.globals)
        .or(e.hint())
        .map_or(String::new(), |h| format!("{h}; "));
    e.context(format!(
        "restore of backup {} into {target}",
        plan.backup.id
    ))
    .with_hint(format!("{cause}{target_state}; {copy}"))
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
    pg_restore: &RestoreClient,
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

/// `--in-place`: the target is dropped and re-created (when it holds
/// something), then restored into.
#[allow(clippy::too_many_arguments)]
async fn in_place(
    plan: &RestorePlan,
    db: &Database,
    admin: &pg::Connection,
    storage: &Arc<dyn Storage>,
    pg_restore: &RestoreClient,
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
        let cause = cause_hint(&e, plan.globals).map_or(String::new(), |h| format!("{h}; "));
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
        target_server: String::new(),
    })
}

/// A fix for the failures of `pg_restore` that have a usual cause;
/// `globals`: the restore ran with `--globals` already.
fn cause_hint(e: &Error, globals: bool) -> Option<&'static str> {
    let m = e.message();
    if m.contains("role \"") && m.contains("does not exist") && globals {
        Some(
            "the backup's roles could not all be created from its globals (the restore's \
             warnings say which statements failed): the url's role needs CREATEROLE, or create \
             them by hand, or pass --no-owner --no-acl",
        )
    } else if m.contains("role \"") && m.contains("does not exist") {
        Some(
            "the backup's roles are missing on this server: restore again with --globals, which \
             creates them from the backup's globals, or pass --no-owner --no-acl",
        )
    } else if m.contains("permission denied") {
        Some("the role in the url lacks a privilege the backup needs; try --no-owner --no-acl")
    } else {
        None
    }
}
