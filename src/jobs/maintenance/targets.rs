//! Which tables a job's `tables` and `exclude` patterns name: globs with `*`
//! and `?`, on the table's name alone or on `schema.table`.

use crate::model::Targets;
use crate::pg::stats::TableStats;

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

/// Whether the patterns put a table in the job's scope; if not, why.
pub(super) fn in_scope(targets: &Targets, t: &TableStats) -> std::result::Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
