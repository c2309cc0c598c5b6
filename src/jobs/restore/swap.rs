//! Putting a proven copy in the target's place: only if the target is still
//! as the plan found it, and once no session is on it, both renamed in one
//! transaction.

use super::RestorePlan;
use super::beside;
use super::leftovers::replaced_marker;
use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg;
use crate::pg::database::{self as pgdb, DatabaseProperties};

/// Refuses to go on when the target gained content since the plan said it
/// was empty (a restore runs for hours): replacing it is what `--clean` says.
pub(super) async fn still_as_planned(plan: &RestorePlan, db: &Database) -> Result<()> {
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

/// Puts the proven copy `staging` in the target's place: once no session is
/// on the target, both are renamed in one transaction.
pub(super) async fn replace(
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
