//! The shared test harness: a throwaway PostgreSQL cluster per test, and the
//! `backup` binary run the way an operator runs it.
//!
//! A cluster is a copy of one template made by `initdb` once per run
//! (`template.rs`), in a temp dir, on a free port on 127.0.0.1, with its
//! socket in the temp dir; it is stopped and removed on drop. Nothing depends
//! on a server someone left running. As root (CI), the server runs as the
//! `postgres` user, since PostgreSQL refuses to run as root.
//!
//! A cluster is of Debian's PostgreSQL unless a test asks for another major
//! ([`Cluster::start_major`]); `scripts/test` installs 13 to 18
//! (`scripts/lib/majors.sh`).

pub mod archiving;
pub mod proxy;
pub mod servers;
mod template;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const PASSWORD: &str = "harness-pw-5d1c0b";

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bindir: PathBuf,
    pub password_file: PathBuf,
    run_as: Option<String>,
    /// See [`Cluster::client_bindir`].
    client_bindir: PathBuf,
}

/// Every PostgreSQL major the tests can start a cluster of
/// ([`Cluster::start_major`]).
pub const MAJORS: [u32; 6] = [13, 14, 15, 16, 17, 18];

/// The newest server installed under /usr/lib/postgresql, or `PG_BINDIR`.
pub fn server_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server not installed: run scripts/test, which installs it")
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("no initdb under /usr/lib/postgresql/*/bin: run scripts/test")
        .1
}

/// The server programs of PostgreSQL `major`: those `scripts/test` installs
/// and lists in `BACKUP_TEST_PG_BINDIRS` (`13=DIR 14=DIR ...`), or for 15,
/// Debian's when that is what [`server_bindir`] finds. A test of a major that
/// is missing fails: it must not pass by testing nothing.
pub fn server_bindir_of(major: u32) -> PathBuf {
    let listed = std::env::var("BACKUP_TEST_PG_BINDIRS")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|entry| entry.split_once('='))
        .find(|(m, _)| m.parse() == Ok(major))
        .map(|(_, dir)| PathBuf::from(dir));
    let found = listed.or_else(|| {
        (major == 15)
            .then(server_bindir)
            .filter(|dir| major_of(dir) == Some(15))
    });
    match found {
        Some(dir) if dir.join("postgres").is_file() => dir,
        _ => panic!("PostgreSQL {major} is not installed: run scripts/test, which installs it"),
    }
}

/// `pg_bin_dirs = [...]` listing every major's programs, for a
/// `[databases.*]` section: the tool then finds the client and the
/// servers an operator with every version installed would have.
pub fn every_pg_bin_dir() -> String {
    let dirs: Vec<String> = MAJORS
        .iter()
        .map(|m| format!("{:?}", server_bindir_of(*m).display().to_string()))
        .collect();
    format!("pg_bin_dirs = [{}]", dirs.join(", "))
}

/// The major of the server in `bindir`, as `postgres --version` says it
/// ("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)").
fn major_of(bindir: &Path) -> Option<u32> {
    let out = Command::new(bindir.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// A `pg_dump` of a test's own in `dir`: `script` (with its `#!` line),
/// beside links to the real `pg_dumpall` and `pg_restore` of `bindir`, for a
/// job whose `pg_bin_dir` is `dir`.
pub fn fake_pg_dump(dir: &Path, bindir: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("pg_dump");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    for tool in ["pg_dumpall", "pg_restore"] {
        std::os::unix::fs::symlink(bindir.join(tool), dir.join(tool)).unwrap();
    }
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

impl Cluster {
    /// A cluster of its own, copied from the run's template, started.
    pub fn start() -> Cluster {
        Cluster::start_with("")
    }

    /// [`Cluster::start`] with `settings` (postgresql.conf lines) in force
    /// from the first start: those that need a restart, `archive_mode`.
    /// `prepare` runs on the test's directory (owned by the server's user)
    /// before the server starts: a job file for `archive_command`.
    pub fn start_with(settings: &str) -> Cluster {
        Cluster::start_prepared(settings, |_| {})
    }

    pub fn start_prepared(settings: &str, prepare: impl FnOnce(&Path)) -> Cluster {
        Cluster::start_prepared_with_bindir(server_bindir(), settings, prepare)
    }

    /// [`Cluster::start_with`] on PostgreSQL `major` (one of [`MAJORS`]).
    pub fn start_major(major: u32, settings: &str) -> Cluster {
        Cluster::start_prepared_with_bindir(server_bindir_of(major), settings, |_| {})
    }

    /// [`Cluster::start_prepared`] with the server programs in `bindir`
    /// (one of [`server_bindir_of`]'s).
    pub fn start_prepared_with_bindir(
        bindir: PathBuf,
        settings: &str,
        prepare: impl FnOnce(&Path),
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("backup-test-pg-")
            .tempdir()
            .expect("temp dir");
        let run_as = (unsafe { libc::geteuid() } == 0).then(|| "postgres".to_owned());
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
        // backup refuses a secret others may read.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        if run_as.is_some() {
            chown_to_postgres(dir.path());
            chown_to_postgres(&password_file);
        }
        template::copy_to(&dir.path().join("data"), &bindir, &run_as);
        if !settings.is_empty() {
            let conf = dir.path().join("data").join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str(&format!("\n{settings}\n"));
            std::fs::write(&conf, text).unwrap();
        }
        prepare(dir.path());
        if run_as.is_some() {
            chown_tree_to_postgres(dir.path());
        }
        Cluster::launch(dir, password_file, run_as, bindir)
    }

    /// The directory of the cluster's files: `data/`, the log, the socket,
    /// and what a test put there. Owned by the server's user.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs a server program (`pg_basebackup`, `pgbench`, `pg_waldump`) as
    /// the server's user: the server's own, else the one of
    /// [`Cluster::client_bindir`].
    pub fn server_program(&self, program: &str, args: &[&str]) -> Output {
        let bindir = if self.bindir.join(program).is_file() {
            &self.bindir
        } else {
            &self.client_bindir
        };
        server_output(&self.run_as, bindir, program, args)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's programs: `initdb`, `pg_ctl`, `postgres`, and for
    /// Debian's 15 and PyPI's 18 every other one; npm's builds of 13, 14,
    /// 16 and 17 have only those three. Client programs are in
    /// [`Cluster::client_bindir`].
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Where client programs that talk to this server are (`psql`,
    /// `pg_dump`, `pg_restore`, `pgbench`, `pg_basebackup`,
    /// `pg_verifybackup`): the server's own [`Cluster::bindir`] when it has
    /// them, else 18's, which talk to every older server. Programs that read
    /// a data directory or WAL (`pg_waldump`, `pg_resetwal`,
    /// `pg_controldata`) must be the server's own major, which 18's are not.
    pub fn client_bindir(&self) -> &Path {
        &self.client_bindir
    }

    /// A hot standby of this cluster, streaming from it: read-only, in recovery.
    pub fn standby(&self) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("backup-test-pg-standby-")
            .tempdir()
            .expect("temp dir");
        let password_file = dir.path().join("password");
        std::fs::copy(&self.password_file, &password_file).unwrap();
        if self.run_as.is_some() {
            chown_to_postgres(dir.path());
            chown_to_postgres(&password_file);
        }
        let data = dir.path().join("data");
        let port = self.port.to_string();
        let out = server_output(
            &self.run_as,
            &self.client_bindir,
            "pg_basebackup",
            &[
                "-h",
                self.dir.path().to_str().unwrap(),
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                data.to_str().unwrap(),
                "-R",
                "--no-sync",
                // A spread checkpoint would take minutes.
                "--checkpoint=fast",
            ],
        );
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster::launch(dir, password_file, self.run_as.clone(), self.bindir.clone())
    }

    /// Starts the server whose data directory is `dir/data`, on a free port.
    fn launch(
        dir: tempfile::TempDir,
        password_file: PathBuf,
        run_as: Option<String>,
        bindir: PathBuf,
    ) -> Cluster {
        let data = dir.path().join("data");
        let client_bindir = if bindir.join("psql").is_file() {
            bindir.clone()
        } else {
            server_bindir_of(18)
        };
        let server = |program: &str, args: &[&str]| server_output(&run_as, &bindir, program, args);
        let log = dir.path().join("server.log");
        let mut last_error = String::new();
        // A port can be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
                dir.path().display()
            );
            let out = server(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-o",
                    &options,
                    "-l",
                    log.to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            );
            if out.status.success() {
                return Cluster {
                    dir,
                    port,
                    bindir,
                    password_file,
                    run_as,
                    client_bindir,
                };
            }
            last_error = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("could not start PostgreSQL: {last_error}");
    }

    /// A libpq URI for `db` as the superuser over TCP (password required).
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Turns TLS on with this certificate and key (PEM files), and refuses
    /// every TCP session that does not use it.
    pub fn require_tls(&self, cert: &Path, key: &Path) {
        self.enable_tls(cert, key, true);
    }

    /// Turns TLS on with this certificate and key; with `only`, TCP
    /// sessions without it are refused.
    pub fn enable_tls(&self, cert: &Path, key: &Path, only: bool) {
        let kind = if only { "hostssl" } else { "host" };
        let hba = format!(
            "{kind} all all 127.0.0.1/32 scram-sha-256\n{kind} all all ::1/128 scram-sha-256\n"
        );
        self.enable_tls_with(cert, key, &hba, None);
    }

    /// Turns TLS on with this certificate and key, TCP sessions taken as the
    /// `pg_hba.conf` lines `hba` say (local ones always trusted), and client
    /// certificates checked against `client_ca`.
    pub fn enable_tls_with(&self, cert: &Path, key: &Path, hba: &str, client_ca: Option<&Path>) {
        use std::os::unix::fs::PermissionsExt;
        let data = self.dir.path().join("data");
        let mut files = vec![(cert, "server.crt"), (key, "server.key")];
        if let Some(ca) = client_ca {
            files.push((ca, "root.crt"));
        }
        for (from, name) in files {
            let to = data.join(name);
            std::fs::copy(from, &to).unwrap();
            // The server refuses a key others may read.
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            if self.run_as.is_some() {
                chown_to_postgres(&to);
            }
        }
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("local all all trust\n{hba}"),
        )
        .unwrap();
        // Over the socket: the new pg_hba.conf may refuse psql's TCP session.
        let local = |sql: &str| {
            let out = Command::new(self.client_bindir.join("psql"))
                .args(["-X", "-A", "-t", "-h"])
                .arg(self.dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ])
                .output()
                .expect("run psql");
            assert!(
                out.status.success(),
                "{sql}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        local("ALTER SYSTEM SET ssl = on");
        if client_ca.is_some() {
            local("ALTER SYSTEM SET ssl_ca_file = 'root.crt'");
        }
        local("SELECT pg_reload_conf()");
        // The postmaster reloads on its own time; new sessions show when.
        for _ in 0..100 {
            if local("SHOW ssl") == "on" {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "TLS did not come on: {}",
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    /// Runs SQL with psql; panics on any error; returns unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_output(db, &["-c", sql]);
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `pgbench ARGS` on `db` as the superuser (from the client programs:
    /// 18's for a server-only build); panics when it fails.
    pub fn pgbench(&self, db: &str, args: &[&str]) {
        let out = Command::new(self.client_bindir.join("pgbench"))
            .args(args)
            .arg(self.url(db))
            .env("PGPASSWORD", PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run pgbench");
        assert!(
            out.status.success(),
            "pgbench {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn psql_output(&self, db: &str, args: &[&str]) -> Output {
        self.psql_command(db)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run psql")
    }

    /// psql on `db` as the superuser: quiet, unaligned, stopping at the first error.
    fn psql_command(&self, db: &str) -> Command {
        let mut command = Command::new(self.client_bindir.join("psql"));
        command
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(db),
            ])
            .env("PGPASSWORD", PASSWORD);
        command
    }

    /// Holds `LOCK TABLE table IN ACCESS EXCLUSIVE MODE` in an open
    /// transaction until the holder is released or dropped: `pg_dump` waits
    /// on it, which makes a backup as slow as a test needs.
    pub fn hold_lock(&self, db: &str, table: &str) -> LockHolder {
        self.hold(
            db,
            &format!("BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE;"),
        )
    }

    /// Runs `sql` in a psql session kept open until the holder goes.
    fn hold(&self, db: &str, sql: &str) -> LockHolder {
        use std::io::{BufRead, Write};
        let mut child = self
            .psql_command(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start psql");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{sql}\n\\echo locked").unwrap();
        stdin.flush().unwrap();
        // Query results (an advisory lock's void) may come first.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "psql did not take the lock");
            if line.trim() == "locked" {
                break;
            }
        }
        LockHolder {
            child,
            stdin: Some(stdin),
        }
    }

    /// Holds a session-level advisory lock on `key` until released.
    pub fn hold_advisory_lock(&self, db: &str, key: i64) -> LockHolder {
        self.hold(db, &format!("BEGIN; SELECT pg_advisory_lock({key});"))
    }

    /// Holds a REPEATABLE READ snapshot open: what REINDEX CONCURRENTLY and
    /// VACUUM wait for, or work around.
    pub fn hold_snapshot(&self, db: &str) -> LockHolder {
        self.hold(
            db,
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;",
        )
    }

    /// Holds a shared session-level advisory lock on `key`, as a dump does
    /// on its database's key.
    pub fn hold_advisory_lock_shared(&self, db: &str, key: i64) -> LockHolder {
        self.hold(
            db,
            &format!("BEGIN; SELECT pg_advisory_lock_shared({key});"),
        )
    }

    /// Every database of the cluster, by name.
    pub fn databases(&self) -> Vec<String> {
        self.psql("postgres", "SELECT datname FROM pg_database ORDER BY 1")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn create_db(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
    }

    /// Creates `db` and loads `fixtures/sample.sql` into it.
    pub fn load_fixtures(&self, db: &str) {
        self.create_db(db);
        self.load_fixture(db, "sample.sql");
    }

    /// Loads `fixtures/NAME` into the existing database `db`.
    pub fn load_fixture(&self, db: &str, name: &str) {
        let file = fixtures_dir().join(name);
        let out = self.psql_output(db, &["-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "loading {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every user table's row count and a digest of all its rows, by `schema.table`.
    pub fn table_digests(&self, db: &str) -> BTreeMap<String, String> {
        let tables = self.psql(db, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1");
        tables
            .lines()
            .map(|t| {
                let digest = self.psql(db, &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, E'\\n' ORDER BY x::text)), '') FROM {t} x"));
                (t.to_owned(), digest)
            })
            .collect()
    }

    /// The schema as pg_dump prints it, for comparing two databases' definitions.
    pub fn schema_dump(&self, db: &str) -> String {
        let out = Command::new(self.client_bindir.join("pg_dump"))
            .args(["--schema-only", "--no-password", "-d", &self.url(db)])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run pg_dump");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // pg_dump 15.14+ brackets its output with a random \restrict key.
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = server_output(
            &self.run_as,
            &self.bindir,
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or(""),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// Runs a server program, as `run_as` when given (the server refuses root).
fn server_output(run_as: &Option<String>, bindir: &Path, program: &str, args: &[&str]) -> Output {
    let path = bindir.join(program);
    let mut cmd = match run_as {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", user, "--"]).arg(&path);
            c
        }
        None => Command::new(&path),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// `chown -R`: what a test prepared for the server's user.
pub fn chown_tree_to_postgres(path: &Path) {
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres", path.to_str().unwrap()])
        .output()
        .expect("chown");
    assert!(
        out.status.success(),
        "chown -R {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn chown_to_postgres(path: &Path) {
    let out = Command::new("chown")
        .args(["postgres:postgres", path.to_str().unwrap()])
        .output()
        .expect("chown");
    assert!(
        out.status.success(),
        "chown {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An open transaction holding a table lock; see [`Cluster::hold_lock`].
pub struct LockHolder {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl LockHolder {
    pub fn release(mut self) {
        self.end();
    }

    fn end(&mut self) {
        use std::io::Write;
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "COMMIT;");
            drop(stdin);
            let _ = self.child.wait();
        }
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        self.end();
    }
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A job file and a backup directory for one test.
pub struct Setup {
    pub cluster: Cluster,
    pub work: tempfile::TempDir,
    pub config: PathBuf,
    pub backups: PathBuf,
}

impl Setup {
    /// A cluster with the fixture loaded into `app` and a job `nightly` backing
    /// it up to a local directory. `extra_db` and `extra_job` add TOML lines to
    /// the `[databases.app]` and `[jobs.nightly]` tables.
    pub fn new(extra_db: &str, extra_job: &str) -> Setup {
        let cluster = Cluster::start();
        cluster.load_fixtures("app");
        Setup::with_cluster(cluster, extra_db, extra_job)
    }

    pub fn with_cluster(cluster: Cluster, extra_db: &str, extra_job: &str) -> Setup {
        Setup::with_storages(cluster, extra_db, "", &["disk"], extra_job)
    }

    /// Like [`Setup::with_cluster`], with more `[storages.*]` sections (TOML)
    /// beside `disk`, and the job writing to `storages`.
    pub fn with_storages(
        cluster: Cluster,
        extra_db: &str,
        extra_storages: &str,
        storages: &[&str],
        extra_job: &str,
    ) -> Setup {
        let work = tempfile::Builder::new()
            .prefix("backup-test-")
            .tempdir()
            .unwrap();
        let backups = work.path().join("backups");
        let config = work.path().join("backup.toml");
        let names: Vec<String> = storages.iter().map(|s| format!("\"{s}\"")).collect();
        std::fs::write(&config, format!(
            "timezone = \"Asia/Tokyo\"\n\n[databases.app]\nurl = \"{}\"\npassword_file = \"{}\"\n{extra_db}\n\n[storages.disk]\ntype = \"local\"\npath = \"{}\"\n\n{extra_storages}\n\n[jobs.nightly]\ntype = \"backup\"\ndatabase = \"app\"\nstorages = [{}]\n{extra_job}\n",
            cluster.url("app"), cluster.password_file.display(), backups.display(), names.join(", ")
        )).unwrap();
        Setup {
            cluster,
            work,
            config,
            backups,
        }
    }

    /// The newest record of `kind` (`restore`, `drill`, ...) under the
    /// reports of job `nightly`.
    pub fn newest_record(&self, kind: &str) -> serde_json::Value {
        let dir = self.backups.join("nightly").join("reports");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(&format!("-{kind}.json")))
            .collect();
        names.sort();
        let name = names
            .last()
            .unwrap_or_else(|| panic!("no {kind} record in {dir:?}"));
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).unwrap()).unwrap()
    }

    /// Adds TOML (more sections, or keys of the last one) to the job file.
    pub fn append_to_config(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!("\n{toml}\n"));
        std::fs::write(&self.config, text).unwrap();
    }

    /// Points the job file's database at `url`.
    pub fn use_url(&self, url: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let current = text
            .lines()
            .find(|l| l.starts_with("url = "))
            .unwrap()
            .to_owned();
        std::fs::write(
            &self.config,
            text.replace(&current, &format!("url = \"{url}\"")),
        )
        .unwrap();
    }

    /// Runs `backup --config <job file> ARGS`, never on a terminal, with a
    /// temp dir of this test's own (see [`Setup::temp_files`]).
    pub fn backup(&self, args: &[&str]) -> Run {
        self.backup_with(args, &[])
    }

    /// [`Setup::backup`] with more environment variables (storage keys).
    pub fn backup_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from(self.command(args, env).output().expect("run backup"))
    }

    /// [`Setup::backup_with`] without waiting: see [`spawn_backup_with`].
    pub fn spawn_backup_with(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        self.command(args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start backup")
    }

    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let tmp = self.work.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut all = vec![("TMPDIR", tmp.to_str().unwrap())];
        all.extend_from_slice(env);
        backup_command(&self.config, args, &all)
    }

    /// What the runs of this test left in their temp dir.
    pub fn temp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.work.path().join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The manifests of complete backups, as `backup list --json` prints them.
    pub fn list(&self) -> Vec<serde_json::Value> {
        self.list_with(&[])
    }

    /// [`Setup::list`] with more environment variables (a job's secrets).
    pub fn list_with(&self, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
        let run = self.backup_with(&["--json", "list", "--job", "nightly"], env);
        assert!(run.ok(), "{}", run.all());
        serde_json::from_str(&run.stdout).expect("list --json prints JSON")
    }

    pub fn manifest(&self, id: &str) -> serde_json::Value {
        let text =
            std::fs::read_to_string(self.backups.join("nightly").join(id).join("manifest.json"))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The roles and tablespaces a backup stored, decompressed.
    pub fn globals(&self, id: &str) -> String {
        let path = self
            .backups
            .join("nightly")
            .join(id)
            .join("globals.sql.zst");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        String::from_utf8(zstd::decode_all(&bytes[..]).unwrap()).unwrap()
    }

    /// Every file under the backup directory, relative to it.
    pub fn stored_files(&self) -> Vec<String> {
        files_under(&self.backups)
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
    pub fn all(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

pub fn run_backup(config: &Path, args: &[&str]) -> Run {
    run_backup_with(config, args, &[])
}

pub fn run_backup_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = backup_command(config, args, env)
        .output()
        .expect("run backup");
    Run::from(out)
}

/// [`run_backup_with`] from the working directory `cwd`.
pub fn run_backup_in(cwd: &Path, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = backup_command(config, args, env)
        .current_dir(cwd)
        .output()
        .expect("run backup");
    Run::from(out)
}

fn backup_command(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backup"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("BACKUP_CONFIG")
        .env_remove("PGPASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    command
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Starts `backup daemon` on a free port of 127.0.0.1 and returns it with that
/// port once it answers `/health/live` and `/metrics`. `command` makes the command given the
/// `--listen` address; the daemon's stderr goes to `log`. A port another test
/// takes between choosing and binding it is a reason to try another, never to
/// fail the test.
pub fn start_daemon(log: &Path, command: impl Fn(&str) -> Command) -> (std::process::Child, u16) {
    start_daemon_with(log, &[], command)
}

/// [`start_daemon`] whose readiness polls send `headers` (a daemon that
/// asks for a token answers `/metrics` only with it).
pub fn start_daemon_with(
    log: &Path,
    headers: &[(&str, &str)],
    command: impl Fn(&str) -> Command,
) -> (std::process::Child, u16) {
    let limit = std::time::Duration::from_secs(30);
    for _ in 0..5 {
        let port = free_port();
        let mut child = command(&format!("127.0.0.1:{port}"))
            .stderr(std::fs::File::create(log).expect("daemon log"))
            .spawn()
            .expect("start the daemon");
        let started = std::time::Instant::now();
        loop {
            // Exited first: an answer on the port would then be someone else's.
            if let Some(status) = child.try_wait().expect("daemon status") {
                let said = std::fs::read_to_string(log).unwrap_or_default();
                if said.contains("cannot listen on") {
                    break;
                }
                panic!("the daemon exited ({status}) before listening:\n{said}");
            }
            // Once it has read its run records, its metrics are what tests check.
            let answers =
                |path| http_get_with(port, path, headers).is_some_and(|a| a.status == 200);
            if answers("/health/live") && answers("/metrics") {
                return (child, port);
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon did not listen within {limit:?}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    panic!("five free ports were taken before the daemon could bind them");
}

/// `GET path` on 127.0.0.1:port: the status and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_with(port, path, &[]).map(|r| (r.status, r.body))
}

/// An HTTP answer: its status, its headers (names in lowercase) and its body.
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` on 127.0.0.1:port with more request `headers`.
pub fn http_get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<HttpAnswer> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .ok()?;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(HttpAnswer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Polls `done` every 100 ms, failing the test if it is still false after `limit`.
pub fn wait_for(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Debian's promtool, which `scripts/test` installs (`ensure_promtool`).
pub fn promtool() -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .chain([std::path::PathBuf::from("/usr/bin/promtool")])
        .find(|p| p.is_file());
    on_path.expect(
        "promtool is not installed: run scripts/test, which installs it (Debian package prometheus)",
    )
}

/// Runs promtool with `args`, `input` on its stdin: exit code and all it said.
pub fn run_promtool(args: &[&str], input: &str) -> (i32, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(promtool())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

/// SHA-256 as lowercase hex, as object names and manifests carry it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every file under `root`, relative to it, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}
