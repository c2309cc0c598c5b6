//! Argument vectors for the PostgreSQL client programs, built by pure functions.
//!
//! No shell is involved and no secret is ever an argument: the password reaches
//! a child only through `PGPASSWORD` in its own environment ([`super::client::spawn`]).

use std::ffi::OsString;
use std::path::Path;

/// `pg_basebackup` writing the whole cluster as one tar to stdout, its
/// `backup_manifest` inside, with no WAL: the job waits for the archive to
/// hold it instead. `-v` prints the WAL start and end points; the label
/// names the run in the server's `backup_label` and `.backup` file.
pub fn pg_basebackup_args(url: &str, label: &str) -> Vec<OsString> {
    vec![
        "--pgdata=-".into(),
        "--format=tar".into(),
        "--wal-method=none".into(),
        // The backup starts now, not at the next scheduled checkpoint.
        "--checkpoint=fast".into(),
        format!(
            "--manifest-checksums={}",
            super::physical::MANIFEST_CHECKSUMS
        )
        .into(),
        "--verbose".into(),
        format!("--label={label}").into(),
        "--no-password".into(),
        format!("--dbname={url}").into(),
    ]
}

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

/// `pg_restore` into the database `url` names, reading `input` or, if `None`,
/// stdin; only the entries `list` (a `--use-list` file) selects, if given.
pub fn pg_restore_args(
    url: &str,
    flags: RestoreFlags,
    input: Option<&Path>,
    list: Option<&Path>,
) -> Vec<OsString> {
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
    args.extend(left_out(flags));
    if let Some(list) = list {
        let mut arg = OsString::from("--use-list=");
        arg.push(list);
        args.push(arg);
    }
    if let Some(input) = input {
        args.push(input.as_os_str().to_owned());
    }
    args
}

/// `pg_restore` writing the archive on its stdin as SQL to its stdout, for
/// `psql` to run ([`psql_script_args`]): one job, `flags` otherwise as
/// [`pg_restore_args`] takes them.
pub fn pg_restore_sql_args(flags: RestoreFlags) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["--file=-".into(), "--exit-on-error".into()];
    args.extend(left_out(flags));
    args
}

/// What `flags` tell `pg_restore` to leave out: ownership, privileges,
/// tablespaces.
fn left_out(flags: RestoreFlags) -> impl Iterator<Item = OsString> {
    [
        (flags.no_owner, "--no-owner"),
        (flags.no_acl, "--no-acl"),
        (flags.no_tablespaces, "--no-tablespaces"),
    ]
    .into_iter()
    .filter(|(on, _)| *on)
    .map(|(_, flag)| flag.into())
}

/// `psql` running the SQL on its stdin in the database of `url`, stopping
/// at the first error as `pg_restore --exit-on-error` does.
pub fn psql_script_args(url: &str) -> Vec<OsString> {
    vec![
        "-X".into(),
        "-q".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "--no-password".into(),
        format!("--dbname={url}").into(),
        "--file=-".into(),
    ]
}

/// `pg_restore --list FILE`: the archive's table of contents, one entry a line.
pub fn pg_restore_list_args(input: &Path) -> Vec<OsString> {
    vec!["--list".into(), input.as_os_str().to_owned()]
}

/// One `pg_restore` run of a parallel restore: the entries its `list`
/// selects (a `--use-list` file), with `jobs` workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePass {
    /// What the pass restores, for messages.
    pub what: &'static str,
    pub jobs: u32,
    pub list: String,
}

/// The passes a parallel restore of the archive whose table of contents is
/// `toc` (`pg_restore --list`) is made of, so that it cannot fail at random.
///
/// Partition indexes attached to their partitioned parent in parallel
/// sessions each commit without seeing the others, so none marks the parent
/// index valid; a foreign key referencing the partitioned table then fails
/// ("there is no unique constraint matching given keys"). An archive with such
/// attachments is restored in three passes:
///
/// 1. everything before the first attachment or foreign key, with `jobs`
///    workers, except privileges, materialized view refreshes and event
///    triggers, which pg_restore always keeps for last;
/// 2. the attachments, one at a time;
/// 3. everything else: the foreign keys, triggers, policies and whatever
///    pg_dump sorts after the attachments, then the privileges, refreshes and
///    event triggers (which must not fire on the restore's own DDL), with `jobs`.
///
/// pg_dump orders its table of contents so that nothing depends on what
/// comes after it, so each pass finds what it needs made by the ones before.
/// An archive without attachments is one pass, as `pg_restore -j` does it.
pub fn restore_passes(toc: &str, jobs: u32) -> Vec<RestorePass> {
    #[derive(Clone, Copy, PartialEq)]
    enum Pass {
        First,
        Attach,
        Last,
    }
    fn kind(line: &str) -> Option<&str> {
        // `1234; 2606 16432 FK CONSTRAINT public orders orders_fkey postgres`
        let (id, rest) = line.split_once("; ")?;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut fields = rest.splitn(3, ' ');
        let (_catalog, _oid) = (fields.next()?, fields.next()?);
        fields.next()
    }
    const ATTACH: &str = "INDEX ATTACH ";
    const LAST: [&str; 4] = [
        "ACL ",
        "DEFAULT ACL ",
        "MATERIALIZED VIEW DATA ",
        "EVENT TRIGGER ",
    ];
    if !toc.lines().filter_map(kind).any(|d| d.starts_with(ATTACH)) {
        return vec![RestorePass {
            what: "the schema and data",
            jobs,
            list: toc.to_owned(),
        }];
    }
    let mut past_split = false;
    let passes: Vec<(&str, Option<Pass>)> = toc
        .lines()
        .map(|line| {
            let pass = kind(line).map(|desc| {
                past_split |= desc.starts_with(ATTACH) || desc.starts_with("FK CONSTRAINT ");
                if desc.starts_with(ATTACH) {
                    Pass::Attach
                } else if past_split || LAST.iter().any(|k| desc.starts_with(k)) {
                    Pass::Last
                } else {
                    Pass::First
                }
            });
            (line, pass)
        })
        .collect();
    let select = |wanted: Pass| -> Option<String> {
        let mut any = false;
        let mut list = String::with_capacity(toc.len() + passes.len());
        for (line, pass) in &passes {
            match pass {
                Some(p) if *p == wanted => {
                    any = true;
                    list.push_str(line);
                }
                // Left out: commented, as pg_restore's list files do.
                Some(_) => {
                    list.push(';');
                    list.push_str(line);
                }
                None => list.push_str(line),
            }
            list.push('\n');
        }
        any.then_some(list)
    };
    [
        (Pass::First, "the schema and data", jobs),
        (Pass::Attach, "the partitions' index attachments", 1),
        (
            Pass::Last,
            "the foreign keys and what follows the attachments",
            jobs,
        ),
    ]
    .into_iter()
    .filter_map(|(pass, what, jobs)| select(pass).map(|list| RestorePass { what, jobs, list }))
    .collect()
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

/// A libpq connection string that also sets `application_name`, by which
/// the session is found in `pg_stat_activity`; it overrides one the url
/// sets, as libpq takes the last value of a key.
pub fn with_application_name(url: &str, name: &str) -> String {
    let is_uri = url.starts_with("postgresql://") || url.starts_with("postgres://");
    if !is_uri {
        let quoted = name.replace('\\', "\\\\").replace('\'', "\\'");
        return format!("{url} application_name='{quoted}'");
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}application_name={}", percent_encode(name))
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
            Some(Path::new("/tmp/pass1.list")),
        ));
        assert_eq!(
            &all[3..],
            // No --clean: the restore re-creates the database instead, because
            // pg_restore --clean cannot drop partitions' inherited constraints.
            [
                "--jobs=4",
                "--no-owner",
                "--no-acl",
                "--use-list=/tmp/pass1.list",
                "/tmp/spool.dump"
            ]
        );
    }

    /// The entries a pass selects, by dump id.
    fn selected(p: &RestorePass) -> Vec<&str> {
        p.list
            .lines()
            .filter(|l| !l.starts_with(';'))
            .filter_map(|l| l.split(';').next())
            .collect()
    }

    #[test]
    fn a_parallel_restore_attaches_indexes_alone_and_keeps_what_pg_restore_keeps_for_last() {
        let toc = "\
;
; Archive created at 2026-12-05 19:30:00 UTC
;
6; 2615 23585 SCHEMA - fkpart4 postgres
215; 1259 23586 TABLE fkpart4 droppk postgres
3500; 0 0 ACL fkpart4 TABLE droppk postgres
3386; 0 23591 TABLE DATA fkpart4 droppk1 postgres
3227; 2606 23590 CONSTRAINT fkpart4 droppk droppk_pkey postgres
3238; 0 0 INDEX ATTACH fkpart4 droppk1_pkey postgres
3240; 0 0 INDEX ATTACH fkpart4 droppk2_pkey postgres
3300; 2620 23700 TRIGGER fkpart4 droppk t postgres
3243; 2606 23619 FK CONSTRAINT fkpart4 dropfk dropfk_a_fkey postgres
3551; 0 0 COMMENT fkpart4 CONSTRAINT dropfk_a_fkey ON dropfk postgres
3600; 3466 23800 EVENT TRIGGER - audit postgres
";
        let passes = restore_passes(toc, 4);
        assert_eq!(passes.len(), 3);
        assert_eq!(
            (passes[0].jobs, selected(&passes[0])),
            (4, vec!["6", "215", "3386", "3227"])
        );
        assert_eq!(
            (passes[1].jobs, selected(&passes[1])),
            (1, vec!["3238", "3240"])
        );
        assert_eq!(
            (passes[2].jobs, selected(&passes[2])),
            (4, vec!["3500", "3300", "3243", "3551", "3600"])
        );
        // Every line of the listing is in every pass, the others commented out.
        for p in &passes {
            assert_eq!(p.list.lines().count(), toc.lines().count());
        }
    }

    #[test]
    fn event_triggers_never_see_the_attachments_even_without_foreign_keys() {
        let toc = "\
215; 1259 23586 TABLE public pk postgres
3227; 2606 23590 CONSTRAINT public pk pk_pkey postgres
3238; 0 0 INDEX ATTACH public pk1_pkey postgres
3310; 0 23900 MATERIALIZED VIEW DATA public mv postgres
3600; 3466 23800 EVENT TRIGGER - audit postgres
3601; 0 0 COMMENT - EVENT TRIGGER audit postgres
";
        let passes = restore_passes(toc, 2);
        assert_eq!(selected(&passes[0]), ["215", "3227"]);
        assert_eq!(selected(&passes[1]), ["3238"]);
        assert_eq!(selected(&passes[2]), ["3310", "3600", "3601"]);
    }

    #[test]
    fn without_attachments_a_parallel_restore_is_one_pass() {
        let toc = "215; 1259 23586 TABLE public t postgres\n\
                   3386; 0 23591 TABLE DATA public t postgres\n\
                   3243; 2606 23619 FK CONSTRAINT public t t_fkey postgres\n";
        let passes = restore_passes(toc, 2);
        assert_eq!(passes.len(), 1);
        assert_eq!((passes[0].jobs, passes[0].list.as_str()), (2, toc));
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
    fn pg_basebackup_streams_one_tar_without_wal_and_never_prompts() {
        let args = strings(pg_basebackup_args(
            "postgresql://rep@db:5432/postgres",
            "backup base 20240120T030000Z",
        ));
        assert_eq!(
            args,
            [
                "--pgdata=-",
                "--format=tar",
                "--wal-method=none",
                "--checkpoint=fast",
                "--manifest-checksums=CRC32C",
                "--verbose",
                "--label=backup base 20240120T030000Z",
                "--no-password",
                "--dbname=postgresql://rep@db:5432/postgres"
            ]
        );
    }

    #[test]
    fn with_application_name_adds_to_what_the_url_says() {
        for (url, expected) in [
            (
                "postgresql://h/app",
                "postgresql://h/app?application_name=backup%20x",
            ),
            (
                "postgresql://h/app?sslmode=require",
                "postgresql://h/app?sslmode=require&application_name=backup%20x",
            ),
            (
                "host=/tmp dbname=app",
                "host=/tmp dbname=app application_name='backup x'",
            ),
        ] {
            assert_eq!(with_application_name(url, "backup x"), expected, "{url}");
        }
        assert_eq!(
            with_application_name("host=h", "it's"),
            "host=h application_name='it\\'s'"
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
