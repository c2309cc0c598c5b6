//! The databases a restore works under, beside its target
//! (`<target>__restoring_<id>`, `<target>__replaced_<id>`), the comments
//! that mark them, and finding those an interrupted restore left.

use crate::error::Result;
use crate::pg;

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
pub(super) fn restoring_marker(target: &str) -> String {
    format!(
        "backup: the copy being restored into database {}; dropped if the restore fails, or by \
         the next restore into it",
        pg::quote_ident(target)
    )
}

/// The comment on a database a restore replaced, until it is dropped.
pub(super) fn replaced_marker(target: &str) -> String {
    format!(
        "backup: replaced by a restore into database {}; dropped by that restore or the next",
        pg::quote_ident(target)
    )
}

/// The comment on a proven copy that could not be put in the target's place.
pub(super) fn proven_marker(target: &str, id: &str) -> String {
    format!(
        "backup: a proven restore of backup {id} into database {} that could not be swapped \
         in; kept for the operator",
        pg::quote_ident(target)
    )
}

/// The comment on a copy that failed and was kept by `--keep-failed`.
pub(super) fn kept_marker(target: &str, id: &str) -> String {
    format!(
        "backup: a restore of backup {id} into database {} that failed, kept by --keep-failed",
        pg::quote_ident(target)
    )
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
    pub(super) fn contains(&self, name: &str) -> bool {
        self.restoring
            .iter()
            .chain(&self.replaced)
            .any(|n| n == name)
    }
}

pub(super) async fn leftovers(
    db: &crate::model::Database,
    admin: &pg::Connection,
    target: &str,
) -> Result<Leftovers> {
    let named = |what: &'static str| move |name: &String| is_beside(name, target, what);
    let mut restoring: Vec<String> = pg::databases_with_comment(admin, &restoring_marker(target))
        .await?
        .into_iter()
        .filter(named("restoring"))
        .collect();
    // A restore killed between its CREATE DATABASE and the COMMENT that marks
    // the copy leaves it unmarked. Its name and its emptiness still say what
    // it is, and dropping an empty database loses nothing.
    for name in pg::databases_with_comment_null(admin)
        .await?
        .into_iter()
        .filter(named("restoring"))
    {
        // One this role cannot look into is not taken for ours.
        let Ok(conn) = pg::connect(db, Some(&name)).await else {
            continue;
        };
        if let Ok(None) = pg::describe_contents(&conn).await {
            restoring.push(name);
        }
    }
    Ok(Leftovers {
        restoring,
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
