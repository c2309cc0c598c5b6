//! The backup's roles on a server that lacks them: its `globals.sql`
//! without tablespaces, and without touching the roles the server has
//! already. A drill's target gets them always; a restore with `--globals`
//! (a new server, an upgrade to a newer major).
//!
//! The file is cut into whole statements by a lexer that knows SQL's
//! quotes and comments (a role's setting may hold a newline, and what
//! follows it in the literal must never run as a statement), each is
//! judged by the roles it names, and those kept run one by one over a
//! connection of their own: never through `psql`, so no meta-command
//! (`\\!` runs a shell) a crafted setting could smuggle in ever runs.

use std::sync::Arc;

use crate::archive::crypt::Crypt;
use crate::catalog::{self, Manifest, ManifestObject, Role};
use crate::error::{Error, Result};
use crate::model::Database;
use crate::pg;
use crate::report::bytes_human;
use crate::storage::Storage;

/// Backup `backup` of job `job`, whose objects `crypt` opens, and the
/// database the globals run in: an existing one, as roles belong to the
/// cluster (the one the caller's admin connection is in).
pub struct Globals<'a> {
    pub job: &'a str,
    pub backup: &'a Manifest,
    pub crypt: &'a Crypt,
    pub dbname: &'a str,
}

/// Runs the backup's globals, creating the roles the target lacks. Roles
/// that exist there are left exactly as they are: no statement about one
/// runs (its `ALTER`, a membership granted to it, its comment), so a live
/// role's password, rights and memberships never change. Tablespaces are
/// not created (the restore puts every table in the default one). Returns
/// what is worth a warning: the roles left alone, statements left out, and
/// statements that failed.
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
    let plan = plan_globals(&sql, &existing);
    let mut warnings = Vec::new();
    if !plan.kept_roles.is_empty() {
        warnings.push(format!(
            "roles that exist on the target were left as they are: {}",
            plan.kept_roles.join(", ")
        ));
    }
    if !plan.left_out.is_empty() {
        warnings.push(format!(
            "statements of the globals left out: {}",
            plan.left_out.join(" | ")
        ));
    }
    let conn = pg::connect(db, Some(from.dbname)).await?;
    // What the dump's literals are written for, whatever the server's default.
    conn.client
        .batch_execute("SET standard_conforming_strings = on")
        .await
        .map_err(|e| pg::query_error("preparing to create the backup's roles", e))?;
    let mut failed = Vec::new();
    for statement in &plan.run {
        if let Err(e) = conn.client.batch_execute(statement).await {
            failed.push(pg::query_error(&head_of(statement), e).message().to_owned());
        }
    }
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

/// What of a `globals.sql` runs on a target with roles `existing`.
#[derive(Debug, Default, PartialEq)]
pub struct GlobalsPlan {
    /// Whole statements, in their order.
    pub run: Vec<String>,
    /// Existing roles the globals name, left as they are.
    pub kept_roles: Vec<String>,
    /// The heads of statements left out that are neither about an existing
    /// role nor a tablespace nor a session setting: a `REVOKE`, anything
    /// unexpected.
    pub left_out: Vec<String>,
}

/// Judges each statement of `pg_dumpall --globals-only` output `sql`: one
/// about roles runs when every role it is about is new (`CREATE`/`ALTER
/// ROLE`, `COMMENT` and `SECURITY LABEL ON ROLE`: that role; `GRANT`: its
/// grantees, `PUBLIC` counting as existing); tablespaces, session settings
/// and psql's meta-commands never run, nor does anything else.
pub fn plan_globals(sql: &str, existing: &[String]) -> GlobalsPlan {
    let mut plan = GlobalsPlan::default();
    for statement in split_statements(sql) {
        let words = tokens(statement);
        let word = |i: usize| match words.get(i) {
            Some(Token::Word(w)) => w.as_str(),
            _ => "",
        };
        let about: Option<Vec<String>> = match (word(0), word(1)) {
            ("set", _) | ("select", _) | ("reset", _) => None,
            (_, "tablespace") | ("comment", _) | ("security", _) | ("grant", _)
                if words.windows(2).any(|w| {
                    matches!(w, [Token::Word(on), Token::Word(t)] if on == "on" && t == "tablespace")
                }) || word(1) == "tablespace" =>
            {
                None
            }
            ("create", "role") | ("alter", "role") | ("alter", "user") => {
                name_at(&words, 2).map(|n| vec![n])
            }
            ("comment", "on") if word(2) == "role" => name_at(&words, 3).map(|n| vec![n]),
            ("security", "label") => words
                .windows(3)
                .position(|w| {
                    matches!(w, [Token::Word(on), Token::Word(r), _] if on == "on" && r == "role")
                })
                .and_then(|i| name_at(&words, i + 2))
                .map(|n| vec![n]),
            ("grant", _) => Some(grantees(&words)),
            _ => Some(Vec::new()),
        };
        match about {
            // Tablespaces and settings: not for the target.
            None => {}
            Some(roles) if roles.is_empty() => plan.left_out.push(head_of(statement)),
            Some(roles) => {
                let old: Vec<&String> = roles
                    .iter()
                    .filter(|r| *r == "public" || existing.contains(r))
                    .collect();
                if old.is_empty() {
                    plan.run.push(statement.trim().to_owned());
                } else {
                    for role in old {
                        if role != "public" && !plan.kept_roles.contains(role) {
                            plan.kept_roles.push(role.clone());
                        }
                    }
                }
            }
        }
    }
    plan
}

/// The first words of `statement`, for a message: never a literal's value
/// (a role's password hash is one).
fn head_of(statement: &str) -> String {
    let words: Vec<String> = tokens(statement)
        .into_iter()
        .take_while(|t| !matches!(t, Token::Literal))
        .take(4)
        .map(|t| match t {
            Token::Word(w) => w,
            Token::Quoted(q) => format!("\"{q}\""),
            Token::Punct(c) => c.to_string(),
            Token::Literal => String::new(),
        })
        .collect();
    words.join(" ")
}

/// The role named at `i`: an identifier (folded to lower case, as the
/// server does) or a quoted one.
fn name_at(words: &[Token], i: usize) -> Option<String> {
    match words.get(i)? {
        Token::Word(w) => Some(w.clone()),
        Token::Quoted(q) => Some(q.clone()),
        _ => None,
    }
}

/// The grantees of a `GRANT`: the names after its `TO`, up to `WITH`,
/// `GRANTED` or the end.
fn grantees(words: &[Token]) -> Vec<String> {
    let Some(to) = words
        .iter()
        .position(|t| matches!(t, Token::Word(w) if w == "to"))
    else {
        return Vec::new();
    };
    words[to + 1..]
        .iter()
        .take_while(|t| !matches!(t, Token::Word(w) if w == "with" || w == "granted"))
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.clone()),
            Token::Quoted(q) => Some(q.clone()),
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// An unquoted word, folded to lower case.
    Word(String),
    /// A quoted identifier, its doubled quotes undone.
    Quoted(String),
    /// A string literal or a number: what it holds is never read.
    Literal,
    Punct(char),
}

/// `sql` cut into whole statements at the semicolons outside quotes,
/// dollar quotes and comments, without psql's meta-commands (a line that
/// starts with a backslash where a statement would begin) and without
/// statements that are only blanks and comments.
fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    // Only blanks and comments since `start`.
    let mut empty = true;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if empty => {
                i = line_end(bytes, i);
                start = i;
                continue;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = line_end(bytes, i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(bytes, i);
                continue;
            }
            c if c.is_ascii_whitespace() => {}
            b';' => {
                if !empty {
                    out.push(&sql[start..=i]);
                }
                start = i + 1;
                empty = true;
            }
            _ => {
                empty = false;
                i = skip_quoted(bytes, i);
                continue;
            }
        }
        i += 1;
    }
    if !empty {
        out.push(&sql[start..]);
    }
    out
}

/// The tokens of one statement, comments left out.
fn tokens(statement: &str) -> Vec<Token> {
    let bytes = statement.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'-' && bytes.get(i + 1) == Some(&b'-') {
            i = line_end(bytes, i);
        } else if c == b'/' && bytes.get(i + 1) == Some(&b'*') {
            i = block_comment_end(bytes, i);
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' {
            let end = skip_quoted(bytes, i);
            let inner = &statement[i + 1..end.saturating_sub(1).max(i + 1)];
            out.push(Token::Quoted(inner.replace("\"\"", "\"")));
            i = end;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let end = skip_quoted(bytes, i);
            if statement[i..end].contains('\'') {
                // E'...', U&'...', B'...': a literal with a prefix.
                out.push(Token::Literal);
            } else {
                out.push(Token::Word(statement[i..end].to_lowercase()));
            }
            i = end;
        } else if c == b'\'' || c == b'$' || c.is_ascii_digit() {
            out.push(Token::Literal);
            i = skip_quoted(bytes, i);
        } else {
            out.push(Token::Punct(c as char));
            i += 1;
        }
    }
    out
}

/// Past the token that starts at `i`: a quoted identifier, a string
/// literal (`'...'`, `E'...'` with backslash escapes), a dollar-quoted
/// string, or a run of word characters; one byte for anything else.
fn skip_quoted(bytes: &[u8], i: usize) -> usize {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    match bytes[i] {
        b'"' => quoted_end(bytes, i, b'"', false),
        b'\'' => quoted_end(bytes, i, b'\'', false),
        b'$' => {
            // $tag$ ... $tag$, or a lone $ (a parameter, $1).
            let tag_end = bytes[i + 1..]
                .iter()
                .position(|c| !word(*c))
                .map(|p| i + 1 + p);
            match tag_end {
                Some(t) if bytes[t] == b'$' => {
                    let tag = &bytes[i..=t];
                    bytes[t + 1..]
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(bytes.len(), |p| t + 1 + p + tag.len())
                }
                _ => i + 1,
            }
        }
        c if word(c) => {
            let mut end = i;
            while end < bytes.len() && word(bytes[end]) {
                end += 1;
            }
            // E'...' takes backslash escapes; other prefixes do not.
            if bytes.get(end) == Some(&b'\'') {
                let escapes = end == i + 1 && matches!(c, b'e' | b'E');
                return quoted_end(bytes, end, b'\'', escapes);
            }
            if bytes.get(end) == Some(&b'&') && bytes.get(end + 1) == Some(&b'\'') {
                return quoted_end(bytes, end + 1, b'\'', false);
            }
            end
        }
        _ => i + 1,
    }
}

/// Past the quote `q` that closes the one at `i`; a doubled quote is one
/// quote, and with `escapes` a backslash escapes the next byte.
fn quoted_end(bytes: &[u8], i: usize, q: u8, escapes: bool) -> usize {
    let mut j = i + 1;
    while j < bytes.len() {
        if escapes && bytes[j] == b'\\' {
            j += 2;
            continue;
        }
        if bytes[j] == q {
            if bytes.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    bytes.len()
}

fn line_end(bytes: &[u8], i: usize) -> usize {
    bytes[i..]
        .iter()
        .position(|c| *c == b'\n')
        .map_or(bytes.len(), |p| i + p + 1)
}

/// Past a `/* */` comment, which nests.
fn block_comment_end(bytes: &[u8], i: usize) -> usize {
    let mut depth = 0;
    let mut j = i;
    while j + 1 < bytes.len() {
        match (bytes[j], bytes[j + 1]) {
            (b'/', b'*') => {
                depth += 1;
                j += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                j += 2;
                if depth == 0 {
                    return j;
                }
            }
            _ => j += 1,
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn globals_never_touch_existing_roles_or_make_tablespaces() {
        let sql = "--\n-- Roles\n--\n\nSET default_transaction_read_only = off;\n\
                   CREATE ROLE app;\n\
                   ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';\n\
                   CREATE ROLE \"Ops \"\"Team\"\"\";\n\
                   ALTER ROLE \"Ops \"\"Team\"\"\" WITH NOLOGIN;\n\
                   CREATE ROLE postgres;\n\
                   ALTER ROLE postgres WITH SUPERUSER;\n\
                   GRANT app TO \"Ops \"\"Team\"\"\" GRANTED BY postgres;\n\
                   GRANT \"Ops \"\"Team\"\"\" TO app;\n\
                   COMMENT ON ROLE postgres IS 'the boss';\n\
                   CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';\n\
                   GRANT CREATE ON TABLESPACE fast TO app;\n\
                   GRANT SET ON PARAMETER work_mem TO PUBLIC;\n\
                   REVOKE ALL ON PARAMETER work_mem FROM PUBLIC;\n";
        let plan = plan_globals(sql, &existing(&["postgres", "Ops \"Team\""]));
        assert_eq!(plan.kept_roles, ["Ops \"Team\"", "postgres"]);
        assert_eq!(
            plan.run,
            [
                "CREATE ROLE app;".to_owned(),
                "ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$x';".to_owned(),
                "GRANT \"Ops \"\"Team\"\"\" TO app;".to_owned(),
            ]
        );
        assert_eq!(plan.left_out, ["revoke all on parameter"]);
    }

    #[test]
    fn a_setting_with_a_newline_never_runs_as_a_statement() {
        // What an ordinary role can give itself, as pg_dumpall writes it.
        let sql = "ALTER ROLE app SET search_path TO 'x\nALTER USER app SUPERUSER;\n\\! touch /tmp/owned\n--';\n\
                   ALTER ROLE newbie SET search_path TO E'it\\'s\nDROP ROLE app;';\n";
        let plan = plan_globals(sql, &existing(&["app"]));
        assert_eq!(plan.kept_roles, ["app"]);
        assert_eq!(plan.run.len(), 1, "{plan:#?}");
        assert!(plan.run[0].starts_with("ALTER ROLE newbie"), "{plan:#?}");
        assert!(plan.run[0].ends_with("DROP ROLE app;';"), "{plan:#?}");
        assert!(plan.left_out.is_empty(), "{plan:#?}");
    }

    #[test]
    fn meta_commands_and_comments_are_never_statements() {
        let sql = "\\restrict abc123\n\
                   -- a comment; with a semicolon\n\
                   /* a /* nested */ comment; */\n\
                   \\! rm -rf /\n\
                   CREATE ROLE \"a;b\";\n\
                   ALTER ROLE \"a;b\" SET x.y TO $tag$ ; \\! no $tag$;\n\
                   \\unrestrict abc123\n";
        let plan = plan_globals(sql, &[]);
        assert_eq!(plan.run.len(), 2, "{plan:#?}");
        assert_eq!(plan.run[0], "CREATE ROLE \"a;b\";", "{plan:#?}");
        assert!(plan.run[1].ends_with("$tag$ ; \\! no $tag$;"), "{plan:#?}");
        for statement in &plan.run {
            assert!(
                !statement.contains("rm -rf") && !statement.contains("restrict"),
                "{statement}"
            );
        }
    }

    #[test]
    fn messages_name_a_statement_without_its_values() {
        assert_eq!(
            head_of("ALTER ROLE app WITH PASSWORD 'SCRAM-SHA-256$secret';"),
            "alter role app with"
        );
        assert_eq!(
            head_of("ALTER ROLE app PASSWORD 'secret';"),
            "alter role app password"
        );
        assert!(!head_of("CREATE ROLE x PASSWORD 'secret'").contains("secret"));
    }
}
