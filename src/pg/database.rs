//! Databases as whole things: whether one is empty, what it is besides its
//! contents (owner, encoding, locale, settings, grants, comment), and the
//! create, rename, swap and drop steps a restore is made of.
//!
//! A `pg_dump` archive restored without `--create` carries none of a
//! database's own properties (`pg_dumpall --globals-only` has none either),
//! so a backup captures them here and a restore applies them.

use serde::{Deserialize, Serialize};

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
            query_error(&format!("creating database {name}"), e)
                .with_hint("the role in the url needs CREATEDB, or create the database first")
        })
}

/// What a database is besides its contents, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `libc`, `icu` or `builtin` (PostgreSQL 15 and 17 on); absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale_provider: Option<String>,
    /// The ICU or builtin locale, for those providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// -1: no limit.
    #[serde(default = "no_limit")]
    pub connection_limit: i32,
    /// `ALTER [ROLE r IN] DATABASE ... SET name TO value`, in the server's order.
    #[serde(default)]
    pub settings: Vec<DatabaseSetting>,
    /// The database's privileges; `None`: the defaults (PUBLIC may connect
    /// and make temporary tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<DatabaseGrant>>,
}

fn no_limit() -> i32 {
    -1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSetting {
    /// Set for this role only, in this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub name: String,
    /// As the server stores it (`search_path` as `app, "$user"`).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseGrant {
    /// `None`: PUBLIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantee: Option<String>,
    /// `CREATE`, `CONNECT` or `TEMPORARY`.
    pub privilege: String,
    #[serde(default)]
    pub grantable: bool,
}

impl DatabaseProperties {
    /// What a manifest's properties say that a restore could not apply
    /// safely: the values end up in SQL, so they are checked like any input.
    pub fn problem(&self) -> Option<String> {
        if let Some(s) = self.settings.iter().find(|s| !is_setting_name(&s.name)) {
            return Some(format!("'{}' is not a setting name", s.name));
        }
        if let Some(g) = self
            .grants
            .iter()
            .flatten()
            .find(|g| !PRIVILEGES.contains(&g.privilege.as_str()))
        {
            return Some(format!("'{}' is not a database privilege", g.privilege));
        }
        if let Some(p) = &self.locale_provider
            && !["libc", "icu", "builtin"].contains(&p.as_str())
        {
            return Some(format!("'{p}' is not a locale provider"));
        }
        None
    }

    /// Settings a short line can show: `work_mem=64MB, search_path=app, public`.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("owner {}", self.owner)];
        if !self.settings.is_empty() {
            parts.push(format!("{} setting(s)", self.settings.len()));
        }
        if let Some(grants) = &self.grants {
            parts.push(format!("{} grant(s)", grants.len()));
        }
        if self.comment.is_some() {
            parts.push("a comment".to_owned());
        }
        parts.join(", ")
    }
}

const PRIVILEGES: [&str; 4] = ["CREATE", "CONNECT", "TEMPORARY", "TEMP"];

fn is_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The properties of database `name`, read from the shared catalogs (any
/// database of the server can see them).
pub async fn properties(conn: &Connection, name: &str) -> Result<DatabaseProperties> {
    let what = |e| query_error(&format!("reading the properties of database {name}"), e);
    // to_jsonb: the locale columns differ between majors (daticulocale in
    // 15 and 16, datlocale from 17), and a missing key is simply absent.
    let row = conn
        .client
        .query_one(
            "SELECT pg_get_userbyid(d.datdba)::text, pg_encoding_to_char(d.encoding)::text, \
                    d.datcollate::text, d.datctype::text, \
                    shobj_description(d.oid, 'pg_database'), d.datconnlimit, d.datacl IS NOT NULL, \
                    CASE to_jsonb(d) ->> 'datlocprovider' \
                         WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' END, \
                    coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale'), \
                    to_jsonb(d) ->> 'daticurules' \
             FROM pg_database d WHERE d.datname = $1",
            &[&name],
        )
        .await
        .map_err(what)?;
    let has_acl: bool = row.get(6);
    let grants = if has_acl {
        let rows = conn
            .client
            .query(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                        a.privilege_type, a.is_grantable \
                 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
                &[&name],
            )
            .await
            .map_err(what)?;
        Some(
            rows.iter()
                .map(|r| DatabaseGrant {
                    grantee: r.get(0),
                    privilege: r.get(1),
                    grantable: r.get(2),
                })
                .collect(),
        )
    } else {
        None
    };
    let settings = conn
        .client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole)::text END, c.setting \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, \
                  unnest(s.setconfig) WITH ORDINALITY AS c(setting, n) \
             WHERE d.datname = $1 ORDER BY s.setrole, c.n",
            &[&name],
        )
        .await
        .map_err(what)?;
    let settings = settings
        .iter()
        .filter_map(|r| {
            let setting: String = r.get(1);
            let (name, value) = setting.split_once('=')?;
            Some(DatabaseSetting {
                role: r.get(0),
                name: name.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect();
    let provider: Option<String> = row.get(7);
    let locale = match provider.as_deref() {
        Some("icu" | "builtin") => row.get(8),
        _ => None,
    };
    Ok(DatabaseProperties {
        owner: row.get(0),
        encoding: row.get(1),
        collate: row.get(2),
        ctype: row.get(3),
        comment: row.get(4),
        connection_limit: row.get(5),
        settings,
        grants,
        icu_rules: if provider.as_deref() == Some("icu") {
            row.get(9)
        } else {
            None
        },
        locale_provider: provider,
        locale,
    })
}

/// The properties a restored database ends up with: the backup's, with what
/// an existing target has of its own kept over them (its owner, encoding and
/// locale, its settings, privileges, comment and connection limit), since
/// that is how applications reach the database being replaced. `no_owner`
/// and `no_acl` leave the backup's owner and privileges out, as they leave
/// out those of the objects inside.
pub fn merge(
    backup: Option<&DatabaseProperties>,
    target: Option<&DatabaseProperties>,
    no_owner: bool,
    no_acl: bool,
) -> Option<DatabaseProperties> {
    let mut from_backup = backup.cloned();
    if let Some(b) = from_backup.as_mut() {
        if no_acl {
            b.grants = None;
        }
        if no_owner {
            b.owner = String::new();
        }
    }
    let Some(target) = target else {
        return from_backup;
    };
    let mut merged = target.clone();
    if let Some(b) = from_backup {
        for setting in b.settings {
            if !merged
                .settings
                .iter()
                .any(|s| s.role == setting.role && s.name == setting.name)
            {
                merged.settings.push(setting);
            }
        }
        if merged.grants.is_none() {
            merged.grants = b.grants;
        }
        if merged.comment.is_none() {
            merged.comment = b.comment;
        }
        if merged.connection_limit == -1 {
            merged.connection_limit = b.connection_limit;
        }
    }
    Some(merged)
}

/// Creates `name` empty, with the encoding and locale of `props` where this
/// server has them, and owned by its owner where that role exists. Returns
/// what could not be kept, as warnings: a restore into a server without the
/// source's locale still restores, and says so.
pub async fn create_like(
    admin: &Connection,
    name: &str,
    props: Option<&DatabaseProperties>,
) -> Result<Vec<String>> {
    let ident = quote_ident(name);
    let mut warnings = Vec::new();
    let plain = format!("CREATE DATABASE {ident} TEMPLATE template0");
    let mut attempts = Vec::new();
    if let Some(p) = props {
        let server = super::server_version(admin).await?;
        attempts.push(format!("{plain}{}", locale_clause(p, server.major)));
        attempts.push(format!("{plain} ENCODING {}", quote_literal(&p.encoding)));
    }
    attempts.push(plain);
    let mut failures = Vec::new();
    let mut created = false;
    for (i, statement) in attempts.iter().enumerate() {
        match admin.client.batch_execute(statement).await {
            Ok(()) => {
                created = true;
                break;
            }
            Err(e) if i + 1 < attempts.len() => failures.push(
                query_error("", e)
                    .message()
                    .trim_start_matches(": ")
                    .to_owned(),
            ),
            Err(e) => {
                return Err(
                    query_error(&format!("creating database {name}"), e).with_hint(
                        "the role in the url needs CREATEDB (or create the database first)",
                    ),
                );
            }
        }
    }
    if let (true, Some(p), false) = (created, props, failures.is_empty()) {
        warnings.push(format!(
            "database {name} was created with {} instead of the source's encoding {} and locale {} \
             ({}): {}",
            if failures.len() == 1 {
                "the server's default locale"
            } else {
                "the server's default encoding and locale"
            },
            p.encoding,
            p.locale.as_deref().unwrap_or(&p.collate),
            p.locale_provider.as_deref().unwrap_or("libc"),
            failures.join("; ")
        ));
    }
    if let Some(p) = props
        && !p.owner.is_empty()
        && let Err(why) = statement_or_warning(
            admin,
            &format!("ALTER DATABASE {ident} OWNER TO {}", quote_ident(&p.owner)),
            Some(&p.owner),
        )
        .await
    {
        warnings.push(format!(
            "database {name}: the owner {} was not applied: {why}",
            p.owner
        ));
    }
    Ok(warnings)
}

/// `ENCODING ... LC_COLLATE ... LC_CTYPE ...` and the locale provider's own
/// clauses, as far as `major` knows them.
fn locale_clause(p: &DatabaseProperties, major: u32) -> String {
    let mut clause = format!(
        " ENCODING {} LC_COLLATE {} LC_CTYPE {}",
        quote_literal(&p.encoding),
        quote_literal(&p.collate),
        quote_literal(&p.ctype)
    );
    match (p.locale_provider.as_deref(), &p.locale) {
        (Some("icu"), Some(locale)) => {
            clause.push_str(&format!(
                " LOCALE_PROVIDER icu ICU_LOCALE {}",
                quote_literal(locale)
            ));
            if let Some(rules) = &p.icu_rules {
                clause.push_str(&format!(" ICU_RULES {}", quote_literal(rules)));
            }
        }
        (Some("builtin"), Some(locale)) => {
            clause.push_str(&format!(
                " LOCALE_PROVIDER builtin BUILTIN_LOCALE {}",
                quote_literal(locale)
            ));
        }
        // A template0 made with another provider would pass it on.
        _ if major >= 15 => clause.push_str(" LOCALE_PROVIDER libc"),
        _ => {}
    }
    clause
}

/// Gives database `name` the settings, privileges and connection limit of
/// `props` (the owner is set when it is created, the comment when it takes
/// its final name). Each statement that fails is a warning, naming the
/// database as `shown_as` (the name it is about to take): a restored
/// database whose data is proven is not thrown away for a setting this
/// server does not know.
pub async fn apply(
    admin: &Connection,
    name: &str,
    shown_as: &str,
    props: &DatabaseProperties,
) -> Vec<String> {
    let ident = quote_ident(name);
    // What each statement does, as a warning says it; the statement; a role
    // it needs.
    let mut statements: Vec<(String, String, Option<&str>)> = Vec::new();
    for s in &props.settings {
        let scope = s
            .role
            .as_ref()
            .map_or(String::new(), |r| format!("ROLE {} IN ", quote_ident(r)));
        let value = setting_value(&s.name, &s.value);
        statements.push((
            match &s.role {
                Some(role) => format!("the setting {} = {value} for role {role}", s.name),
                None => format!("the setting {} = {value}", s.name),
            },
            format!(
                "ALTER {scope}DATABASE {ident} SET {} TO {value}",
                quote_ident(&s.name)
            ),
            s.role.as_deref(),
        ));
    }
    if let Some(grants) = &props.grants {
        statements.push((
            "taking PUBLIC's default privileges away".to_owned(),
            format!("REVOKE ALL ON DATABASE {ident} FROM PUBLIC"),
            None,
        ));
        for g in grants {
            let grantee = g
                .grantee
                .as_deref()
                .map_or("PUBLIC".to_owned(), quote_ident);
            let option = if g.grantable {
                " WITH GRANT OPTION"
            } else {
                ""
            };
            statements.push((
                format!("the grant of {} to {grantee}{option}", g.privilege),
                format!(
                    "GRANT {} ON DATABASE {ident} TO {grantee}{option}",
                    g.privilege
                ),
                g.grantee.as_deref(),
            ));
        }
    }
    if props.connection_limit != -1 {
        statements.push((
            format!("the connection limit of {}", props.connection_limit),
            format!(
                "ALTER DATABASE {ident} CONNECTION LIMIT {}",
                props.connection_limit
            ),
            None,
        ));
    }
    let mut warnings = Vec::new();
    for (what, statement, role) in statements {
        if let Err(why) = statement_or_warning(admin, &statement, role).await {
            warnings.push(format!(
                "database {shown_as}: {what} was not applied: {why}"
            ));
        }
    }
    warnings
}

/// Runs `statement`, unless `role` does not exist on this server; says why
/// it did not run.
async fn statement_or_warning(
    admin: &Connection,
    statement: &str,
    role: Option<&str>,
) -> std::result::Result<(), String> {
    if let Some(role) = role {
        let exists = admin
            .client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map(|r| r.is_some())
            .unwrap_or(true);
        if !exists {
            return Err(format!("role {role} does not exist on this server"));
        }
    }
    admin.client.batch_execute(statement).await.map_err(|e| {
        query_error("", e)
            .message()
            .trim_start_matches(": ")
            .to_owned()
    })
}

/// [`apply`], and the comment of `props`: for a database that already has
/// its final name.
pub async fn apply_all(admin: &Connection, name: &str, props: &DatabaseProperties) -> Vec<String> {
    let mut warnings = apply(admin, name, name, props).await;
    if props.comment.is_some()
        && let Err(e) = set_comment(admin, name, props.comment.as_deref()).await
    {
        warnings.push(format!("database {name}: the comment was not applied: {e}"));
    }
    warnings
}

/// Settings whose value is a list the server keeps with identifiers quoted
/// (`"$user", public`): each element is given as a literal of its own, as
/// pg_dump does, so nothing in a manifest is ever read as SQL.
const LIST_SETTINGS: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// The SQL value of a stored setting.
fn setting_value(name: &str, value: &str) -> String {
    if !LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        return quote_literal(value);
    }
    let elements = split_list(value);
    if elements.is_empty() {
        return "''".to_owned();
    }
    elements
        .iter()
        .map(|e| quote_literal(e))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A stored list setting's elements: comma-separated, each bare (spaces
/// around it dropped) or double-quoted (`""` a quote inside).
fn split_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut element = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        element.push('"');
                    } else {
                        break;
                    }
                } else {
                    element.push(c);
                }
            }
            while chars.peek().is_some_and(|c| *c != ',') {
                chars.next();
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                element.push(c);
                chars.next();
            }
            element = element.trim_end().to_owned();
        }
        if !element.is_empty() {
            out.push(element);
        }
        if chars.next().is_none() {
            return out;
        }
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

/// Drops `name` and creates it again, empty, like `props`: `--in-place`.
pub async fn recreate_database(
    admin: &Connection,
    name: &str,
    props: Option<&DatabaseProperties>,
) -> Result<Vec<String>> {
    admin
        .client
        .batch_execute(&format!("DROP DATABASE {}", quote_ident(name)))
        .await
        .map_err(|e| {
            query_error(&format!("dropping database {name}"), e)
                .with_hint("stop the applications connected to it and try again")
        })?;
    create_like(admin, name, props).await.map_err(|e| {
        e.context(format!("database {name} was dropped"))
            .with_hint(format!(
                "database {name} is gone: restore again into it once the cause is fixed"
            ))
    })
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

    fn props(owner: &str) -> DatabaseProperties {
        DatabaseProperties {
            owner: owner.into(),
            encoding: "UTF8".into(),
            collate: "C".into(),
            ctype: "C".into(),
            locale_provider: Some("libc".into()),
            locale: None,
            icu_rules: None,
            comment: None,
            connection_limit: -1,
            settings: vec![],
            grants: None,
        }
    }

    fn setting(role: Option<&str>, name: &str, value: &str) -> DatabaseSetting {
        DatabaseSetting {
            role: role.map(str::to_owned),
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn list_settings_become_literals_and_nothing_is_read_as_sql() {
        assert_eq!(
            setting_value("search_path", "app, \"$user\", \"we\"\"ird\", public"),
            "'app', '$user', 'we\"ird', 'public'"
        );
        assert_eq!(setting_value("work_mem", "64MB"), "'64MB'");
        assert_eq!(
            setting_value("work_mem", "1'; DROP DATABASE x; --"),
            "'1''; DROP DATABASE x; --'"
        );
        assert_eq!(
            setting_value("search_path", "x'); DROP DATABASE y; --"),
            "'x''); DROP DATABASE y; --'"
        );
        assert_eq!(setting_value("temp_tablespaces", ""), "''");
        // With standard_conforming_strings off a backslash would escape the
        // quote: an E'' literal means the same whatever the setting says.
        assert_eq!(
            setting_value("work_mem", "\\'; DROP DATABASE x; --"),
            "E'\\\\''; DROP DATABASE x; --'"
        );
    }

    #[test]
    fn a_manifest_cannot_smuggle_sql_in_names() {
        let mut p = props("app");
        p.settings = vec![setting(None, "work_mem TO 1; DROP DATABASE x; SET a", "1")];
        assert!(p.problem().is_some());
        let mut p = props("app");
        p.grants = Some(vec![DatabaseGrant {
            grantee: None,
            privilege: "ALL ON DATABASE x TO evil; --".into(),
            grantable: false,
        }]);
        assert!(p.problem().is_some());
        assert!(props("app").problem().is_none());
    }

    #[test]
    fn an_existing_target_keeps_its_own_and_gains_what_the_backup_adds() {
        let mut backup = props("app");
        backup.settings = vec![
            setting(None, "work_mem", "64MB"),
            setting(Some("app_reader"), "statement_timeout", "5s"),
        ];
        backup.comment = Some("from the backup".into());
        backup.grants = Some(vec![DatabaseGrant {
            grantee: Some("app_reader".into()),
            privilege: "CONNECT".into(),
            grantable: false,
        }]);
        let mut target = props("owner_here");
        target.settings = vec![setting(None, "work_mem", "1GB")];

        let merged = merge(Some(&backup), Some(&target), false, false).unwrap();
        assert_eq!(merged.owner, "owner_here");
        assert_eq!(
            merged.settings,
            vec![
                setting(None, "work_mem", "1GB"),
                setting(Some("app_reader"), "statement_timeout", "5s")
            ]
        );
        assert_eq!(merged.comment.as_deref(), Some("from the backup"));
        assert_eq!(merged.grants, backup.grants);

        // A new database is the backup's; --no-owner and --no-acl leave those out.
        let fresh = merge(Some(&backup), None, true, true).unwrap();
        assert_eq!(fresh.owner, "");
        assert_eq!(fresh.grants, None);
        assert_eq!(fresh.settings, backup.settings);
        assert_eq!(merge(None, None, false, false), None);
    }

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
