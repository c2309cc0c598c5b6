//! `[databases.NAME]`: a libpq connection string that names its database
//! and holds no password, its TLS files checked, and where its password is.

use std::sync::Arc;

use toml::Spanned;

use super::raw::RawDatabase;
use super::secrets::secret_ref;
use super::sources::Source;
use crate::error::Result;
use crate::model::Database;
use crate::secret::SecretRef;

pub(super) fn validate_database(
    source: &Source,
    name: &str,
    raw: &Spanned<RawDatabase>,
) -> Result<Database> {
    let db = raw.get_ref();
    let url = db.url.get_ref();
    let (parsed, tls) = crate::pg::url::parse(url).map_err(|e| {
        source
            .error(
                &db.url,
                format!("[databases.{name}] url is not a valid connection string: {e}"),
            )
            .with_hint("write a libpq URI such as postgresql://user@host:5432/dbname")
    })?;
    // Without a database name libpq (and we) would take PGDATABASE or the
    // user's name: the job would back up whatever the environment says, and
    // its prune would judge the real backups by that.
    if parsed.get_dbname().is_none_or(str::is_empty) {
        return Err(source
            .error(
                &db.url,
                // Never the url itself: it may still hold a password here.
                format!(
                    "[databases.{name}] url {}names no database",
                    if url.trim().is_empty() {
                        "is empty: it "
                    } else {
                        ""
                    }
                ),
            )
            .with_hint(
                "write the database's name in the url, such as postgresql://user@host:5432/dbname: \
                 a job never falls back to PGDATABASE or the user's name",
            ));
    }
    // A CA file that is not there, a client key others may read: said by
    // `config check`, not at the first backup.
    let mut resolved = parsed.clone();
    crate::pg::url::apply_libpq_defaults(&mut resolved);
    if let Err(e) = tls.connector(&resolved) {
        let hint = e.hint().map(str::to_owned);
        let err = source.error(&db.url, format!("[databases.{name}] {}", e.message()));
        return Err(match hint {
            Some(hint) => err.with_hint(hint),
            None => err,
        });
    }
    if parsed.get_password().is_some() {
        return Err(source
            .error(
                &db.url,
                format!("[databases.{name}] url contains a password"),
            )
            .with_hint(
                "move it to password_env or password_file: a password in a url ends up in \
                 process listings and logs",
            ));
    }
    let password = secret_ref(
        source,
        &format!("databases.{name}"),
        "password",
        &db.password_env,
        &db.password_file,
    )?;
    let pg_bin_dirs = bin_dirs(source, name, db)?;
    Ok(Database {
        name: name.to_owned(),
        url: url.clone(),
        password_from: password.as_ref().map(SecretRef::describe),
        password,
        pg_bin_dir: db.pg_bin_dir.as_ref().map(|p| p.get_ref().clone()),
        pg_bin_dirs,
        // Known once every file is read: `give_databases_secret_env`.
        secret_env: Arc::default(),
    })
}

/// `pg_bin_dirs`: absolute directories, and not beside `pg_bin_dir`, which
/// names the one directory to take the programs from and so searches none.
fn bin_dirs(source: &Source, name: &str, db: &RawDatabase) -> Result<Vec<std::path::PathBuf>> {
    let Some(dirs) = &db.pg_bin_dirs else {
        return Ok(Vec::new());
    };
    if db.pg_bin_dir.is_some() {
        return Err(source
            .error(
                dirs,
                format!("[databases.{name}] sets both pg_bin_dir and pg_bin_dirs"),
            )
            .with_hint(
                "keep one: pg_bin_dir is the one directory the client programs are taken from, \
                 pg_bin_dirs a list searched for the nearest major that fits the server",
            ));
    }
    dirs.get_ref()
        .iter()
        .map(|dir| {
            if dir.get_ref().is_absolute() {
                Ok(dir.get_ref().clone())
            } else {
                Err(source
                    .error(
                        dir,
                        format!(
                            "[databases.{name}] pg_bin_dirs: {} is not an absolute path",
                            dir.get_ref().display()
                        ),
                    )
                    .with_hint(
                        "write it from /: the daemon does not run in the job file's directory",
                    ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::config::testing::{GOOD, error_of};

    #[test]
    fn a_url_that_names_no_database_is_refused() {
        for url in [
            "",
            "postgresql://app@127.0.0.1:5432",
            "host=127.0.0.1 user=app",
        ] {
            let err = error_of(&GOOD.replace("postgresql://app@127.0.0.1:5432/app", url));
            assert!(err.contains("names no database"), "{url}: {err}");
            assert!(err.contains("jobs/app.toml:5"), "{err}");
        }
        let err = error_of(&GOOD.replace(
            "postgresql://app@127.0.0.1:5432/app",
            "postgresql://app:s3cret@h",
        ));
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn pg_bin_dirs_are_absolute_and_not_beside_pg_bin_dir() {
        let dirs = r#"password_env = "APP_DB_PASSWORD"
pg_bin_dirs = ["/opt/pg18/bin", "/usr/local/pgsql/bin"]"#;
        let text = GOOD.replace(r#"password_env = "APP_DB_PASSWORD""#, dirs);
        let config = crate::config::testing::check(&text).unwrap();
        assert_eq!(
            config.databases["app"].pg_bin_dirs,
            [
                std::path::PathBuf::from("/opt/pg18/bin"),
                "/usr/local/pgsql/bin".into()
            ]
        );
        let err = error_of(&text.replace("/usr/local/pgsql/bin", "pgsql/bin"));
        assert!(err.contains("pgsql/bin is not an absolute path"), "{err}");
        assert!(err.contains("jobs/app.toml:7"), "{err}");
        let err =
            error_of(&text.replace("pg_bin_dirs", "pg_bin_dir = \"/opt/pg17/bin\"\npg_bin_dirs"));
        assert!(
            err.contains("sets both pg_bin_dir and pg_bin_dirs"),
            "{err}"
        );
        assert!(err.contains("hint: keep one"), "{err}");
    }

    #[test]
    fn password_in_url_is_refused_without_echoing_it() {
        let err = error_of(&GOOD.replace("app@127", "app:topsecret@127"));
        assert!(err.contains("url contains a password"), "{err}");
        assert!(!err.contains("topsecret"), "{err}");
    }
}
