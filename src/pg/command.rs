//! Argument vectors for the PostgreSQL client programs, built by pure functions.
//!
//! No shell is involved and no secret is ever an argument: the password reaches
//! a child only through `PGPASSWORD` in its own environment ([`ChildEnv`]).

use std::ffi::OsString;
use std::path::Path;

/// Options of a restore that reach `pg_restore`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RestoreFlags {
    /// Parallel jobs; above 1 `pg_restore` needs a seekable file.
    pub jobs: u32,
    pub no_owner: bool,
    pub no_acl: bool,
    /// Put every table in the default tablespace (a drill's fresh cluster
    /// has none of the source's).
    pub no_tablespaces: bool,
}

/// `pg_dump` writing a custom-format archive of one exported snapshot to stdout.
/// Compression is ours (`-Z0`): the pipeline compresses once, in parallel.
pub fn pg_dump_args(url: &str, snapshot: &str) -> Vec<OsString> {
    vec![
        "--format=custom".into(),
        "--compress=0".into(),
        format!("--snapshot={snapshot}").into(),
        // Never prompt: a wrong password must fail, not hang on a terminal.
        "--no-password".into(),
        format!("--dbname={url}").into(),
    ]
}

/// `pg_dumpall` writing roles and tablespaces as SQL to stdout.
/// `without_role_passwords` is the fallback for roles that may not read `pg_authid`.
pub fn pg_dumpall_globals_args(url: &str, without_role_passwords: bool) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--globals-only".into(), "--no-password".into()];
    if without_role_passwords {
        args.push("--no-role-passwords".into());
    }
    args.push(format!("--dbname={url}").into());
    args
}

/// `pg_restore` into the database `url` names, reading `input` or, if `None`, stdin.
pub fn pg_restore_args(url: &str, flags: RestoreFlags, input: Option<&Path>) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("--dbname={url}").into(),
        "--no-password".into(),
        // Without it pg_restore carries on past errors and the target ends up
        // half-restored with only a count of "errors ignored" to show for it.
        "--exit-on-error".into(),
    ];
    if flags.jobs > 1 {
        args.push(format!("--jobs={}", flags.jobs).into());
    }
    if flags.no_owner {
        args.push("--no-owner".into());
    }
    if flags.no_acl {
        args.push("--no-acl".into());
    }
    if flags.no_tablespaces {
        args.push("--no-tablespaces".into());
    }
    if let Some(input) = input {
        args.push(input.as_os_str().to_owned());
    }
    args
}

/// A libpq connection string naming another database on the same server.
///
/// URIs get their path replaced; `key=value` strings get `dbname` appended,
/// which libpq lets override an earlier one.
pub fn with_dbname(url: &str, dbname: &str) -> String {
    let is_uri = url.starts_with("postgresql://") || url.starts_with("postgres://");
    if !is_uri {
        let quoted = dbname.replace('\\', "\\\\").replace('\'', "\\'");
        return format!("{url} dbname='{quoted}'");
    }
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let (head, query) = match url[scheme_end..].find('?') {
        Some(i) => url.split_at(scheme_end + i),
        None => (url, ""),
    };
    let authority_end = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    format!(
        "{}/{}{query}",
        &head[..authority_end],
        percent_encode(dbname)
    )
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The major version in `pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
pub fn parse_tool_version(output: &str) -> Option<u32> {
    let rest = output.split(")").nth(1)?.trim_start();
    let number: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    number.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter().map(|a| a.into_string().unwrap()).collect()
    }

    #[test]
    fn pg_dump_takes_the_snapshot_and_never_prompts() {
        let args = strings(pg_dump_args(
            "postgresql://app@db:5432/app",
            "00000003-0000001B-1",
        ));
        assert_eq!(
            args,
            [
                "--format=custom",
                "--compress=0",
                "--snapshot=00000003-0000001B-1",
                "--no-password",
                "--dbname=postgresql://app@db:5432/app"
            ]
        );
    }

    #[test]
    fn pg_dumpall_fallback_drops_role_passwords() {
        let args = strings(pg_dumpall_globals_args("postgresql://db/app", false));
        assert_eq!(
            args,
            [
                "--globals-only",
                "--no-password",
                "--dbname=postgresql://db/app"
            ]
        );
        let args = strings(pg_dumpall_globals_args("postgresql://db/app", true));
        assert!(args.contains(&"--no-role-passwords".to_owned()));
    }

    #[test]
    fn pg_restore_flags_map_one_to_one() {
        let plain = strings(pg_restore_args(
            "postgresql://db/t",
            RestoreFlags {
                jobs: 1,
                ..Default::default()
            },
            None,
        ));
        assert_eq!(
            plain,
            [
                "--dbname=postgresql://db/t",
                "--no-password",
                "--exit-on-error"
            ]
        );
        let all = strings(pg_restore_args(
            "postgresql://db/t",
            RestoreFlags {
                no_tablespaces: false,
                jobs: 4,
                no_owner: true,
                no_acl: true,
            },
            Some(Path::new("/tmp/spool.dump")),
        ));
        assert_eq!(
            &all[3..],
            // No --clean: the restore re-creates the database instead, because
            // pg_restore --clean cannot drop partitions' inherited constraints.
            ["--jobs=4", "--no-owner", "--no-acl", "/tmp/spool.dump"]
        );
    }

    #[test]
    fn with_dbname_replaces_only_the_database() {
        for (url, expected) in [
            (
                "postgresql://app@127.0.0.1:5432/app",
                "postgresql://app@127.0.0.1:5432/restored",
            ),
            (
                "postgresql://app@h/app?sslmode=require",
                "postgresql://app@h/restored?sslmode=require",
            ),
            ("postgresql://h", "postgresql://h/restored"),
            (
                "postgres://h:1/?host=/tmp",
                "postgres://h:1/restored?host=/tmp",
            ),
            (
                "host=/tmp port=5 dbname=app",
                "host=/tmp port=5 dbname=app dbname='restored'",
            ),
        ] {
            assert_eq!(with_dbname(url, "restored"), expected, "{url}");
        }
        assert_eq!(
            with_dbname("postgresql://h/a", "my db/x"),
            "postgresql://h/my%20db%2Fx"
        );
    }

    #[test]
    fn tool_versions_parse() {
        assert_eq!(
            parse_tool_version("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_tool_version("pg_restore (PostgreSQL) 17.2"), Some(17));
        assert_eq!(parse_tool_version("pg_dump (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_tool_version("garbage"), None);
    }
}
