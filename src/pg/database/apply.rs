//! Giving a database the properties a backup recorded: created like the
//! source (encoding, locale, owner), then its settings, privileges,
//! connection limit and comment. What this server cannot take is a warning,
//! not a failed restore.

use super::properties::DatabaseProperties;
use super::set_comment;
use crate::error::Result;
use crate::pg::connect::{Connection, query_error, server_version};
use crate::pg::{quote_ident, quote_literal};

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
        let server = server_version(admin).await?;
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
                let hint = super::create_failed_hint(&e);
                return Err(query_error(&format!("creating database {name}"), e).with_hint(hint));
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
