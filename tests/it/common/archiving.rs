//! A cluster that archives its WAL through `backup wal push` into a physical
//! job, as an operator sets it up: `archive_mode = on` and an
//! `archive_command` that runs the built binary as the server's user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Cluster, Run};

/// The built binary, where the server's user can run it: a checkout under
/// a home directory (mode 0700) is out of its reach. Copied once per run
/// into the template cluster's directory, which goes with the run; call it
/// once a cluster has started.
pub fn server_readable_binary() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let dir = super::template::run_dir()
            .expect("a cluster started first")
            .join("bin");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let to = dir.join("backup");
        let partial = dir.join("backup.partial");
        std::fs::copy(env!("CARGO_BIN_EXE_backup"), &partial).unwrap();
        std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&partial, &to).unwrap();
        to
    })
    .clone()
}

/// The job every archiving test uses.
pub const JOB: &str = "base";

pub struct Archiving {
    pub cluster: Cluster,
    /// `<cluster dir>/work`: the job file, the backups, the spool.
    pub work: PathBuf,
    pub config: PathBuf,
    /// The `disk` storage.
    pub backups: PathBuf,
    pub spool: PathBuf,
}

/// How to make one.
#[derive(Default)]
pub struct Options<'a> {
    /// More `[storages.*]` sections (TOML) beside `disk`.
    pub extra_storages: &'a str,
    /// The job's storages; `["disk"]` when empty.
    pub storages: &'a [&'a str],
    /// More keys of `[jobs.base]`.
    pub extra_job: &'a str,
    /// More postgresql.conf lines.
    pub settings: &'a str,
    /// Environment of `archive_command` (storage keys), put before the command.
    pub env: &'a [(&'a str, &'a str)],
    /// `archive_command` pushes to this job instead of [`JOB`].
    pub push_job: Option<&'a str>,
    /// No `archive_mode`/`archive_command` at all.
    pub no_archiving: bool,
    /// A cluster of this PostgreSQL major ([`super::MAJORS`]); Debian's
    /// when `None`.
    pub major: Option<u32>,
    /// More keys of `[databases.app]` (`pg_bin_dirs`).
    pub extra_db: &'a str,
}

impl Archiving {
    pub fn start() -> Archiving {
        Archiving::with(Options::default())
    }

    pub fn with(o: Options<'_>) -> Archiving {
        let mut paths = None;
        let storages = if o.storages.is_empty() {
            &["disk"][..]
        } else {
            o.storages
        };
        let settings = |bin: &str| {
            let env: String = o.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
            let mut s = String::from("wal_level = replica\nmax_wal_senders = 4\n");
            if !o.no_archiving {
                // The config path is only known once the directory exists:
                // `@WORK@` is replaced then.
                s.push_str(&format!(
                    "archive_mode = on\narchive_command = '{env}{bin} --config @WORK@/backup.toml wal push --job {} %p'\n",
                    o.push_job.unwrap_or(JOB)
                ));
            }
            s.push_str(o.settings);
            s
        };
        let bindir = o
            .major
            .map_or_else(super::server_bindir, super::server_bindir_of);
        let cluster = Cluster::start_prepared_with_bindir(bindir, "", |dir| {
            let work = dir.join("work");
            std::fs::create_dir_all(&work).unwrap();
            let conf = dir.join("data").join("postgresql.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            let bin = server_readable_binary();
            text.push_str(&format!(
                "\n{}\n",
                settings(bin.to_str().unwrap()).replace("@WORK@", work.to_str().unwrap())
            ));
            std::fs::write(&conf, text).unwrap();
            paths = Some(work);
        });
        let work = paths.expect("prepared");
        let backups = work.join("backups");
        let spool = work.join("spool");
        let config = work.join("backup.toml");
        let names: Vec<String> = storages.iter().map(|s| format!("\"{s}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "timezone = \"Asia/Tokyo\"\n\n[databases.app]\nurl = \"{}\"\npassword_file = \"{}\"\n{}\n\n\
                 [storages.disk]\ntype = \"local\"\npath = \"{}\"\n\n{}\n\n\
                 [jobs.{JOB}]\ntype = \"physical\"\ndatabase = \"app\"\nstorages = [{}]\nspool_path = \"{}\"\n{}\n",
                cluster.url("postgres"),
                cluster.password_file.display(),
                o.extra_db,
                backups.display(),
                o.extra_storages,
                names.join(", "),
                spool.display(),
                o.extra_job
            ),
        )
        .unwrap();
        super::chown_tree_to_postgres(&work);
        Archiving {
            cluster,
            work,
            config,
            backups,
            spool,
        }
    }

    /// Adds TOML to the job file.
    pub fn append_to_config(&self, toml: &str) {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        text.push_str(&format!("\n{toml}\n"));
        std::fs::write(&self.config, text).unwrap();
    }

    /// `backup --config <job file> ARGS`, as the server's user: the daemon
    /// of a physical job shares the storage with `archive_command`.
    pub fn backup(&self, args: &[&str]) -> Run {
        self.backup_with(args, &[])
    }

    pub fn backup_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from(self.command(args, env).output().expect("run backup"))
    }

    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let bin = server_readable_binary();
        let mut command = if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&bin);
            c
        } else {
            Command::new(bin)
        };
        command
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.work)
            .env_remove("BACKUP_CONFIG")
            .env_remove("PGPASSWORD")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        command
    }

    /// Runs SQL as the superuser.
    pub fn psql(&self, sql: &str) -> String {
        self.cluster.psql("postgres", sql)
    }

    /// Switches to a new segment and waits until the archiver reports it
    /// archived; returns the switched-from segment's name.
    pub fn switch_and_wait(&self) -> String {
        // A switch on an idle segment is a no-op: write something first.
        self.psql(
            "CREATE TABLE IF NOT EXISTS wal_filler(x int); INSERT INTO wal_filler VALUES (1)",
        );
        let name = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        self.wait_archived(&name);
        name
    }

    /// Waits until `pg_stat_archiver` says `segment` (or a later one) is archived.
    pub fn wait_archived(&self, segment: &str) {
        super::wait_for(
            &format!("segment {segment} archived"),
            std::time::Duration::from_secs(60),
            || {
                let last =
                    self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
                last.len() >= 24 && last[..24] >= *segment
            },
        );
    }

    /// Every file under the `disk` storage, relative to it.
    pub fn stored_files(&self) -> Vec<String> {
        super::files_under(&self.backups)
    }

    /// The archived WAL objects of the job in `disk`, relative to `<job>/wal`.
    pub fn archived(&self) -> Vec<String> {
        let prefix = format!("{JOB}/wal/");
        self.stored_files()
            .into_iter()
            .filter_map(|f| f.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.cluster.data_dir().join("pg_wal")
    }
}

/// A free TCP port of 127.0.0.1, for a server a test starts elsewhere (a
/// restored one).
pub fn free_port() -> u16 {
    super::free_port()
}

/// Processes whose command line names `path`: the servers still running on
/// a directory under it.
pub fn processes_on(path: &Path) -> Vec<String> {
    let mine = path.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        // A process may end between listing and reading: that is not one left.
        let bytes = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let line = String::from_utf8_lossy(&bytes).replace('\0', " ");
        if line.contains(&mine) {
            found.push(line.trim_end().to_owned());
        }
    }
    found
}

impl Archiving {
    /// `<work>/NAME`, made if missing, owned by the server's user: where the
    /// CLI run as that user may write (its TMPDIR, restore targets).
    pub fn own_dir(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.work.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        super::chown_tree_to_postgres(&dir);
        dir
    }

    /// [`Archiving::backup_with`] with a lock directory and a TMPDIR of this
    /// test's own (`<work>/locks`, `<work>/tmp`): a physical job's run lock
    /// is a file of this host and every archiving test names its job `base`;
    /// what a drill leaves is then this test's to see. A run that outlives
    /// `limit` is stopped (SIGTERM, then SIGKILL) and fails the test.
    pub fn run_within(&self, limit: Duration, args: &[&str], env: &[(&str, &str)]) -> Run {
        use std::io::Read;
        let (locks, tmp) = (self.own_dir("locks"), self.own_dir("tmp"));
        let mut all = vec![
            ("BACKUP_LOCK_DIR", locks.to_str().unwrap()),
            ("TMPDIR", tmp.to_str().unwrap()),
        ];
        all.extend_from_slice(env);
        let mut child = self
            .command(args, &all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start backup");
        // Read as they come: a full pipe would stall the command.
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut text = Vec::new();
                let _ = pipe.read_to_end(&mut text);
                String::from_utf8_lossy(&text).into_owned()
            })
        };
        let stdout = drain(Box::new(child.stdout.take().unwrap()));
        let stderr = drain(Box::new(child.stderr.take().unwrap()));
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("backup's status") {
                break Some(status);
            }
            if started.elapsed() > limit {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let Some(status) = status else {
            // runuser passes SIGTERM on to the command: it stops itself.
            let pid = child.id() as libc::pid_t;
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let stopping = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && stopping.elapsed() < Duration::from_secs(15)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "backup {} did not end within {limit:?}:\n--- stdout\n{}\n--- stderr\n{}",
                args.join(" "),
                stdout.join().unwrap_or_default(),
                stderr.join().unwrap_or_default()
            );
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }

    /// What the runs of [`Archiving::run_within`] left in their TMPDIR.
    pub fn temp_files(&self) -> Vec<String> {
        std::fs::read_dir(self.work.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// The stored object of `segment` (a 24-character WAL file name) in `disk`.
    pub fn wal_object(&self, segment: &str) -> PathBuf {
        let prefix = format!("{}/{segment}-", &segment[..16]);
        let found: Vec<String> = self
            .archived()
            .into_iter()
            .filter(|f| f.starts_with(&prefix))
            .collect();
        assert_eq!(found.len(), 1, "{segment}: {found:?}");
        self.backups.join(JOB).join("wal").join(&found[0])
    }

    /// The archived segments of `timeline` in `disk`, in order, by name.
    pub fn archived_segments(&self, timeline: u32) -> Vec<String> {
        let mut names: Vec<String> = self
            .archived()
            .into_iter()
            .filter_map(|f| {
                let name = f.split('/').nth(1)?;
                let segment = name.get(..24)?;
                (segment.len() == 24
                    && name.as_bytes().get(24) == Some(&b'-')
                    && u32::from_str_radix(&segment[..8], 16).ok() == Some(timeline))
                .then(|| segment.to_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The server that a restore with `--start --port PORT` left running on
    /// `data`: stopped when the guard goes, whatever the test found.
    pub fn restored(&self, data: &Path, port: u16) -> Restored {
        Restored {
            data: data.to_owned(),
            port,
            bindir: self.cluster.bindir.clone(),
            client_bindir: self.cluster.client_bindir().to_owned(),
        }
    }
}

/// Overwrites `len` bytes in the middle of `file` with garbage; returns what
/// was there, for [`restore_bytes`].
pub fn corrupt_middle(file: &Path, len: usize) -> Vec<u8> {
    let original = std::fs::read(file).unwrap();
    assert!(original.len() > 2 * len, "{} is too small", file.display());
    let mut bytes = original.clone();
    let at = bytes.len() / 2;
    for (i, b) in bytes[at..at + len].iter_mut().enumerate() {
        *b = !*b ^ (i as u8);
    }
    std::fs::write(file, bytes).unwrap();
    original
}

/// Puts back what [`corrupt_middle`] changed.
pub fn restore_bytes(file: &Path, original: &[u8]) {
    std::fs::write(file, original).unwrap();
}

/// A server a restore started and left running, reached as an operator
/// does: TCP on 127.0.0.1 and the port given, with the superuser's password
/// (the restored cluster's `pg_hba.conf` is the backed-up one's).
pub struct Restored {
    pub data: PathBuf,
    pub port: u16,
    /// The server's programs (`pg_ctl`), and where its `psql` is: see
    /// [`Cluster::client_bindir`].
    bindir: PathBuf,
    client_bindir: PathBuf,
}

impl Restored {
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgresql://postgres@127.0.0.1:{}/{db}?connect_timeout=10",
            self.port
        )
    }

    /// Runs SQL on `db`; panics on any error; unaligned, tuples only.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.client_bindir.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.url(db))
            .args(["-c", sql])
            .env("PGPASSWORD", super::PASSWORD)
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql on the restored server (port {}) failed on {sql:?}: {}",
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (fast) and waits; a directory without one is fine.
    pub fn stop(&self) {
        let run_as = (unsafe { libc::geteuid() } == 0).then(|| "postgres".to_owned());
        let _ = super::server_output(
            &run_as,
            &self.bindir,
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap_or(""),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
        );
        // pg_ctl returns once postmaster.pid is gone, which the postmaster
        // removes just before it exits: on a busy machine it is still seen.
        let gone_by = Instant::now() + Duration::from_secs(10);
        while !processes_on(&self.data).is_empty() && Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        self.stop();
    }
}
