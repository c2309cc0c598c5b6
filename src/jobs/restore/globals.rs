//! The backup's roles on a server that lacks them: its `globals.sql`
//! without tablespaces, and without the roles the server has already. A
//! drill's target gets them always; a restore with `--globals` (a new
//! server, an upgrade to a newer major).

use std::process::Stdio;
use std::sync::Arc;

use crate::archive::crypt::Crypt;
use crate::catalog::{self, Manifest, ManifestObject, Role};
use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg;
use crate::report::bytes_human;
use crate::storage::Storage;

/// Backup `backup` of job `job`, whose objects `crypt` opens, and the
/// database `psql` runs its globals in: an existing one, as roles belong to
/// the cluster (the one the caller's admin connection is in).
pub struct Globals<'a> {
    pub job: &'a str,
    pub backup: &'a Manifest,
    pub crypt: &'a Crypt,
    pub dbname: &'a str,
}

/// The backup's `globals.sql` through `psql`, creating the roles the target
/// lacks. Roles that exist there are left as they are (their `CREATE` and
/// `ALTER` lines are skipped: a live role's password or rights are never
/// changed), and tablespaces are not created (the restore puts every table
/// in the default one). Returns what is worth a warning.
pub async fn apply_globals(
    from: Globals<'_>,
    db: &Database,
    admin: &pg::Connection,
    storage: &Arc<dyn Storage>,
) -> Result<Vec<String>> {
    let backup = from.backup;
    let object = globals_of(backup)?;
    let key = catalog::backup_prefix(from.job, &backup.id)?.join(&object.key)?;
    let source = tokio_util::io::SyncIoBridge::new(storage.reader(&key).await?);
    let compression = backup.compression()?;
    let digest = object.digest.clone();
    let label = format!("{key} in storage {}", storage.name());
    if digest.raw_size > GLOBALS_LIMIT {
        return Err(Error::integrity(format!(
            "{label} is {} raw: not the roles and tablespaces of one cluster",
            bytes_human(digest.raw_size)
        )));
    }
    let crypt = from.crypt.clone();
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
    let server = pg::server_version(admin).await?;
    let psql = pg::tool_path(db, "psql", server.major);
    let args = vec![
        "-X".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=0".into(),
        "--no-password".into(),
        format!(
            "--dbname={}",
            pg::command::with_dbname(&db.url, from.dbname)
        )
        .into(),
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

/// The globals object of `backup`; a backup without one (its job's role
/// could not read them) is refused.
pub fn globals_of(backup: &Manifest) -> Result<&ManifestObject> {
    backup.object(Role::Globals).ok_or_else(|| {
        Error::refused(format!("backup {} holds no globals (roles)", backup.id)).with_hint(
            "its job's role could not read them when it ran (see the manifest's warnings): \
             create the roles by hand, or restore with --no-owner --no-acl",
        )
    })
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
