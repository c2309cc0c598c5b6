//! A cluster that archives its WAL through `backup wal push` into a physical
//! job, as an operator sets it up: `archive_mode = on` and an
//! `archive_command` that runs the built binary as the server's user.

use std::path::PathBuf;
use std::process::{Command, Stdio};

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
        let cluster = Cluster::start_prepared("", |dir| {
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
                "timezone = \"Asia/Tokyo\"\n\n[databases.app]\nurl = \"{}\"\npassword_file = \"{}\"\n\n\
                 [storages.disk]\ntype = \"local\"\npath = \"{}\"\n\n{}\n\n\
                 [jobs.{JOB}]\ntype = \"physical\"\ndatabase = \"app\"\nstorages = [{}]\nspool_path = \"{}\"\n{}\n",
                cluster.url("postgres"),
                cluster.password_file.display(),
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
