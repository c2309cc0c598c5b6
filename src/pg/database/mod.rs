//! Databases as whole things: whether one is empty, whether it exists, and
//! the create, rename, swap and drop steps a restore is made of, with the
//! comments that mark a database as being restored or scratch.
//!
//! What a database is besides its contents (owner, encoding, locale,
//! settings, grants, comment) is read, checked and merged in `properties.rs`;
//! `apply.rs` gives a database those.

mod apply;
mod properties;

pub use apply::{apply, apply_all, create_like, recreate_database};
pub use properties::{DatabaseGrant, DatabaseProperties, DatabaseSetting, merge, properties};

use super::{Connection, query_error, quote_ident, quote_literal};
use crate::error::{Error, Result};

/// The database an administrative connection uses while working on `target`:
/// a database cannot be renamed or dropped by a session connected to it.
pub fn admin_database(target: &str) -> &'static str {
    if target == "postgres" {
        "template1"
    } else {
        "postgres"
    }
}

/// What an existing database holds, or `None` when it is empty enough to
/// restore into: nothing a user made, only what `CREATE DATABASE` gives
/// (the `public` schema as initdb made it, `plpgsql`). Objects of extensions count as their
/// extension.
pub async fn describe_contents(conn: &Connection) -> Result<Option<String>> {
    // Every object a user can make has an oid from FirstNormalObjectId
    // (16384) on; what initdb made is below it. Temporary schemas are made
    // on demand by sessions and hold nothing of the database's own.
    let row = conn
        .client
        .query_one(
            "WITH ext AS (SELECT classid, objid FROM pg_depend WHERE deptype = 'e'), \
                  nsp AS (SELECT oid FROM pg_namespace \
                           WHERE nspname NOT IN ('pg_catalog', 'information_schema') \
                             AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%') \
             SELECT \
              (SELECT count(*) FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM nsp) \
                 AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
                 AND (c.tableoid, c.oid) NOT IN (SELECT * FROM ext)), \
              (SELECT count(*) FROM pg_namespace n WHERE n.oid IN (SELECT oid FROM nsp) \
                 AND n.oid >= 16384 AND n.nspname <> 'public' \
                 AND (n.tableoid, n.oid) NOT IN (SELECT * FROM ext)), \
              (SELECT count(*) FROM pg_type t WHERE t.oid >= 16384 \
                 AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class r \
                                                WHERE r.oid = t.typrelid AND r.relkind = 'c')) \
                 AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.typarray = t.oid) \
                 AND (t.tableoid, t.oid) NOT IN (SELECT * FROM ext)), \
              (SELECT count(*) FROM pg_proc p WHERE p.oid >= 16384 \
                 AND (p.tableoid, p.oid) NOT IN (SELECT * FROM ext)), \
              (SELECT count(*) FROM pg_extension x WHERE x.oid >= 16384), \
              (SELECT count(*) FROM pg_largeobject_metadata), \
              (SELECT count(*) FROM ( \
                 SELECT tableoid, oid FROM pg_operator WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_opclass WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_opfamily WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_am WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_collation WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_conversion WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_cast WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_language WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_ts_config WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_ts_dict WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_ts_parser WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_ts_template WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_foreign_data_wrapper WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_foreign_server WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_publication WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_event_trigger WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_statistic_ext WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_transform WHERE oid >= 16384 \
                 UNION ALL SELECT tableoid, oid FROM pg_default_acl WHERE oid >= 16384 \
               ) o WHERE (o.tableoid, o.oid) NOT IN (SELECT * FROM ext)), \
              (SELECT count(*) FROM pg_subscription \
                WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())), \
              (SELECT count(*) FROM (SELECT 1) one WHERE NOT EXISTS ( \
                 SELECT 1 FROM pg_namespace n, \
                   (SELECT CASE WHEN current_setting('server_version_num')::int >= 150000 \
                                THEN (SELECT oid FROM pg_roles WHERE rolname = 'pg_database_owner') \
                                ELSE 10::oid END AS owner) d \
                 WHERE n.nspname = 'public' AND n.nspowner = d.owner \
                   AND n.nspacl::text IS NOT DISTINCT FROM format( \
                     CASE WHEN current_setting('server_version_num')::int >= 150000 \
                          THEN '{%1$s=UC/%1$s,=U/%1$s}' ELSE '{%1$s=UC/%1$s,=UC/%1$s}' END, \
                     pg_get_userbyid(d.owner)) \
                   AND obj_description(n.oid, 'pg_namespace') IS NOT DISTINCT FROM 'standard public schema'))",
            &[],
        )
        .await
        .map_err(|e| query_error(&format!("inspecting database {}", conn.dbname), e))?;
    let counts: [(i64, &str, &str); 9] = [
        (
            row.get(0),
            "table, view or sequence",
            "tables, views or sequences",
        ),
        (row.get(1), "schema", "schemas"),
        (row.get(2), "type", "types"),
        (row.get(3), "function", "functions"),
        (row.get(4), "extension", "extensions"),
        (row.get(5), "large object", "large objects"),
        (row.get(6), "other object", "other objects"),
        (row.get(7), "subscription", "subscriptions"),
        // Its owner, privileges or comment changed, or it was dropped.
        (
            row.get(8),
            "changed public schema",
            "changed public schemas",
        ),
    ];
    Ok(contents_text(&counts))
}

/// "3 tables, views or sequences, 1 schema": the kinds found, `None` for none.
fn contents_text(counts: &[(i64, &str, &str)]) -> Option<String> {
    let parts: Vec<String> = counts
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

pub async fn database_exists(conn: &Connection, name: &str) -> Result<bool> {
    let row = conn
        .client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| query_error(&format!("looking up database {name}"), e))?;
    Ok(row.is_some())
}

/// Creates an empty database with the server's defaults.
pub async fn create_database(conn: &Connection, name: &str) -> Result<()> {
    conn.client
        // template0: whatever an operator added to template1 must not end up
        // in a restore, nor fail it.
        .batch_execute(&format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(name)
        ))
        .await
        .map_err(|e| {
            let hint = create_failed_hint(&e);
            query_error(&format!("creating database {name}"), e).with_hint(hint)
        })
}

/// What to do when `CREATE DATABASE` failed with `e`.
pub(crate) fn create_failed_hint(e: &tokio_postgres::Error) -> &'static str {
    if e.code() == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION) {
        "the server is read-only (a standby, or default_transaction_read_only = on): \
         restore into the primary or another writable server"
    } else {
        "the role in the url needs CREATEDB (or create the database first)"
    }
}

/// Sets (or, with `None`, removes) the comment on database `name`.
pub async fn set_comment(admin: &Connection, name: &str, comment: Option<&str>) -> Result<()> {
    admin
        .client
        .batch_execute(&comment_statement(name, comment))
        .await
        .map_err(|e| query_error(&format!("commenting database {name}"), e))
}

fn comment_statement(name: &str, comment: Option<&str>) -> String {
    format!(
        "COMMENT ON DATABASE {} IS {}",
        quote_ident(name),
        comment.map_or("NULL".to_owned(), quote_literal)
    )
}

/// Other sessions connected to `name`, as `user (application)`.
///
/// A backend whose client just closed (our own look at the target, say) lingers
/// for a moment, so sessions must persist for a second to count.
pub async fn other_sessions(admin: &Connection, name: &str) -> Result<Vec<String>> {
    let mut sessions = Vec::new();
    for _ in 0..10 {
        let rows = admin
            .client
            .query(
                "SELECT coalesce(usename, '?') || coalesce(' (' || nullif(application_name, '') || ')', '') \
                 FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&name],
            )
            .await
            .map_err(|e| query_error(&format!("listing sessions of database {name}"), e))?;
        sessions = rows.iter().map(|r| r.get(0)).collect();
        if sessions.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(sessions)
}

/// Puts `staging` in the place of `target` in one transaction: `target`
/// (when it exists) is renamed to `old` and given the comment that says what
/// it now is, `staging` renamed to `target` and given `comment`. Either all of
/// it happens or none; no moment passes without a database called `target`.
pub async fn swap_in(
    admin: &Connection,
    staging: &str,
    target: &str,
    old: Option<(&str, &str)>,
    comment: Option<&str>,
) -> Result<()> {
    let mut sql = String::from("BEGIN;");
    if let Some((old, old_comment)) = old {
        sql.push_str(&format!(
            " ALTER DATABASE {} RENAME TO {}; {};",
            quote_ident(target),
            quote_ident(old),
            comment_statement(old, Some(old_comment))
        ));
    }
    sql.push_str(&format!(
        " ALTER DATABASE {} RENAME TO {}; {}; COMMIT;",
        quote_ident(staging),
        quote_ident(target),
        comment_statement(target, comment)
    ));
    if let Err(e) = admin.client.batch_execute(&sql).await {
        // The failed transaction must not stay open on the connection.
        let _ = admin.client.batch_execute("ROLLBACK").await;
        return Err(query_error(
            &format!("putting the restored copy {staging} in the place of {target}"),
            e,
        ));
    }
    Ok(())
}

/// Drops database `name`, ending any session still connected to it (from
/// PostgreSQL 13; older servers need it idle).
pub async fn drop_database(admin: &Connection, name: &str) -> Result<()> {
    let server = super::server_version(admin).await?;
    let force = if server.major >= 13 {
        " WITH (FORCE)"
    } else {
        ""
    };
    admin
        .client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {}{force}",
            quote_ident(name)
        ))
        .await
        .map_err(|e| query_error(&format!("dropping database {name}"), e))
}

/// The databases whose comment is exactly `comment`.
pub async fn databases_with_comment(admin: &Connection, comment: &str) -> Result<Vec<String>> {
    let rows = admin
        .client
        .query(
            "SELECT datname::text FROM pg_database \
             WHERE shobj_description(oid, 'pg_database') = $1 ORDER BY 1",
            &[&comment],
        )
        .await
        .map_err(|e| query_error("looking for scratch databases", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Databases without a comment that take connections, by name.
pub async fn databases_with_comment_null(admin: &Connection) -> Result<Vec<String>> {
    let rows = admin
        .client
        .query(
            "SELECT datname::text FROM pg_database \
             WHERE shobj_description(oid, 'pg_database') IS NULL AND datallowconn ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| query_error("looking for scratch databases", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The comment on database `name`, when it exists: `Some(None)` for none.
pub async fn database_comment(admin: &Connection, name: &str) -> Result<Option<Option<String>>> {
    let row = admin
        .client
        .query_opt(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(|e| query_error(&format!("looking up database {name}"), e))?;
    Ok(row.map(|r| r.get(0)))
}

/// Refuses a database name PostgreSQL would refuse or cut: empty, longer
/// than 63 bytes, or holding a NUL.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > super::url::MAX_IDENTIFIER || name.contains('\0') {
        return Err(Error::usage(format!(
            "'{}' is not a database name PostgreSQL takes: {}",
            name.chars().take(80).collect::<String>(),
            if name.is_empty() {
                "it is empty".to_owned()
            } else if name.contains('\0') {
                "it holds a NUL byte".to_owned()
            } else {
                format!(
                    "it is {} bytes long, and names are at most {}",
                    name.len(),
                    super::url::MAX_IDENTIFIER
                )
            }
        ))
        .with_hint("name a database of at most 63 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_name_each_kind_found() {
        assert_eq!(contents_text(&[(0, "a", "as"), (0, "b", "bs")]), None);
        assert_eq!(
            contents_text(&[
                (1, "schema", "schemas"),
                (0, "x", "xs"),
                (3, "type", "types")
            ])
            .as_deref(),
            Some("1 schema, 3 types")
        );
    }

    #[test]
    fn database_names_postgres_would_refuse_are_usage_errors() {
        for bad in ["", &"x".repeat(64), "a\0b"] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::Kind::Usage, "{bad:?}");
        }
        check_name(&"x".repeat(63)).unwrap();
        assert_eq!(admin_database("postgres"), "template1");
        assert_eq!(admin_database("app"), "postgres");
    }
}
