//! `${NAME}` and `${NAME:-default}` in the values that say where things are:
//! a database's `url`, a storage's `path`, `prefix`, `endpoint`, `bucket`,
//! `region`, `account` and `container`, a files job's `path`. One job file
//! then serves production, staging and a laptop, the way compose files and
//! Kubernetes manifests are written. Secrets keep their own `*_env` keys, and
//! nothing else is expanded, so a `$` in a schedule or a check's SQL stays a `$`.
//!
//! Expansion happens after the file is parsed, on the parsed value, keeping
//! its place in the file: errors still name the line, and a value from the
//! environment cannot add TOML keys. `$${` is a literal `${`. A storage key
//! whose value expands to nothing counts as absent.

use std::path::PathBuf;

use toml::Spanned;

use super::EnvLookup;
use super::raw::RawFile;
use super::sources::Source;
use crate::error::Result;

/// Expands every location value of `raw` in place.
pub(super) fn locations(source: &Source, raw: &mut RawFile, env: EnvLookup) -> Result<()> {
    for (name, db) in raw.databases.iter_mut() {
        let section = format!("databases.{name}");
        let db = db.get_mut();
        let has_variable = db.url.get_ref().contains("${");
        expand_string(source, &section, "url", &mut db.url, env)?;
        // libpq reads "" as "every default": some database, not this one.
        if has_variable && db.url.get_ref().trim().is_empty() {
            return Err(source
                .error(&db.url, format!("[{section}] url expanded to nothing"))
                .with_hint("set the variable it names, or give a default that is a whole url"));
        }
    }
    for (name, storage) in raw.storages.iter_mut() {
        let section = format!("storages.{name}");
        let s = storage.get_mut();
        expand_path(source, &section, "path", &mut s.path, env)?;
        for (key, value) in [
            ("prefix", &mut s.prefix),
            ("endpoint", &mut s.endpoint),
            ("bucket", &mut s.bucket),
            ("region", &mut s.region),
            ("account", &mut s.account),
            ("container", &mut s.container),
        ] {
            let mut emptied = false;
            if let Some(text) = value.as_mut() {
                let has_variable = text.get_ref().contains("${");
                expand_string(source, &section, key, text, env)?;
                emptied = has_variable && text.get_ref().is_empty();
            }
            // `endpoint = "${S3_ENDPOINT:-}"`: set in one place, AWS's own
            // endpoint in another. An empty value is as if the key were absent.
            if emptied {
                *value = None;
            }
        }
    }
    for (name, job) in raw.jobs.iter_mut() {
        let section = format!("jobs.{name}");
        expand_path(source, &section, "path", &mut job.get_mut().path, env)?;
    }
    Ok(())
}

fn expand_string(
    source: &Source,
    section: &str,
    key: &str,
    value: &mut Spanned<String>,
    env: EnvLookup,
) -> Result<()> {
    let expanded = expand(value.get_ref(), env).map_err(|e| {
        source
            .error(value, format!("[{section}] {key}: {e}"))
            .with_hint(
                "export it before `backup` starts, or give a default: ${NAME:-value}; \
                 $${ is a literal ${",
            )
    })?;
    *value = Spanned::new(value.span(), expanded);
    Ok(())
}

fn expand_path(
    source: &Source,
    section: &str,
    key: &str,
    value: &mut Option<Spanned<PathBuf>>,
    env: EnvLookup,
) -> Result<()> {
    let Some(path) = value else {
        return Ok(());
    };
    // A path that is not UTF-8 has nothing to expand.
    let Some(text) = path.get_ref().to_str() else {
        return Ok(());
    };
    let mut text = Spanned::new(path.span(), text.to_owned());
    expand_string(source, section, key, &mut text, env)?;
    *path = Spanned::new(text.span(), PathBuf::from(text.into_inner()));
    Ok(())
}

/// `text` with each `${NAME}` replaced by the variable's value and each
/// `${NAME:-default}` by the value, or `default` when it is unset or empty
/// (as the shell does); the error says what is wrong, without the value.
fn expand(text: &str, env: EnvLookup) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or_else(|| format!("'${{{body}' has no closing '}}'"))?;
        let (inner, tail) = (&body[..end], &body[end + 1..]);
        let (name, default) = match inner.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (inner, None),
        };
        if default.is_some_and(|d| d.contains('$')) {
            return Err(format!(
                "'${{{inner}...' has a $ in its default: a default is plain text"
            ));
        }
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!(
                "'${{{inner}}}' is not ${{NAME}} or ${{NAME:-default}}"
            ));
        }
        match (env(name).filter(|v| !v.is_empty()), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => return Err(format!("${{{name}}} is not set and has no default")),
        }
        rest = tail;
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::testing::{GOOD, check, error_of};

    fn env(name: &str) -> Option<String> {
        match name {
            "DB_HOST" => Some("10.0.0.5".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn names_defaults_and_literals() {
        let x = |t: &str| expand(t, &env);
        assert_eq!(
            x("postgresql://app@${DB_HOST}:5432/app").unwrap(),
            "postgresql://app@10.0.0.5:5432/app"
        );
        assert_eq!(x("${DB_HOST:-db}").unwrap(), "10.0.0.5");
        assert_eq!(
            x("${NOPE:-db.internal}:${EMPTY:-5432}").unwrap(),
            "db.internal:5432"
        );
        assert_eq!(x("${NOPE:-}").unwrap(), "");
        assert_eq!(
            x("cost $5, $HOME, $${DB_HOST}").unwrap(),
            "cost $5, $HOME, ${DB_HOST}"
        );
        assert_eq!(x("plain").unwrap(), "plain");
        assert!(x("${NOPE}").unwrap_err().contains("${NOPE} is not set"));
        assert!(x("${DB_HOST").unwrap_err().contains("no closing"));
        assert!(x("${1X}").unwrap_err().contains("is not ${NAME}"));
        assert!(x("${A B}").unwrap_err().contains("is not ${NAME}"));
        // The first } would end it: ${P:-${HOST}} must not become "${HOST".
        assert!(
            x("${P:-${HOST}}")
                .unwrap_err()
                .contains("a default is plain text")
        );
    }

    #[test]
    fn locations_expand_variables_and_an_unset_one_names_its_line() {
        let text = GOOD
            .replace(
                "@127.0.0.1:5432",
                "@${APP_DB_HOST:-db}:${APP_DB_PORT:-5432}",
            )
            .replace("/var/backups/app", "${BACKUP_ROOT:-/var/backups}/app");
        let config = check(&text).unwrap();
        assert_eq!(
            config.databases["app"].url,
            "postgresql://app@10.0.0.5:5432/app"
        );
        match &config.storages["disk"].kind {
            crate::model::StorageKind::Local { path } => {
                assert_eq!(path, Path::new("/var/backups/app"))
            }
            other => panic!("{other:?}"),
        }
        let e = error_of(&GOOD.replace("/var/backups/app", "${BACKUP_ROOT}/app"));
        assert!(
            e.starts_with("jobs/app.toml:10: [storages.disk] path: ${BACKUP_ROOT} is not set"),
            "{e}"
        );
        assert!(e.contains("${NAME:-value}"), "{e}");
        let e = error_of(&GOOD.replace("postgresql://app@127.0.0.1:5432/app", "${APP_DB_URL:-}"));
        assert!(e.contains("[databases.app] url expanded to nothing"), "{e}");
        // Only locations: a `$` elsewhere stays as written.
        let e = error_of(&GOOD.replace("compression = \"gzip\"", "compression = \"${X}\""));
        assert!(e.contains("compression '${X}' is not supported"), "{e}");
    }
}
