//! Secrets are read when a command needs them, not when the job file loads:
//! a host with only the storage's keys (an on-call engineer's laptop) lists,
//! checks, verifies and prunes; what needs the database says which variable
//! is missing, where, and exits 3.

use std::path::PathBuf;

use crate::common::servers::{self, block_on};
use crate::common::{self, Cluster, PASSWORD, Run};

/// The variable the job files below take the database password from.
const DB_PASSWORD_VAR: &str = "SECRETS_TEST_DB_PASSWORD";
/// Its line in the job file [`job_file`] writes.
const DB_PASSWORD_LINE: usize = 5;

struct Host {
    cluster: Cluster,
    work: tempfile::TempDir,
    config: PathBuf,
}

/// The variable the encrypted job's passphrase comes from.
const PASSPHRASE_VAR: &str = "SECRETS_TEST_PASSPHRASE";

/// A job file: the database's password from [`DB_PASSWORD_VAR`], the local
/// storage `disk` plus `extra_storages`, a job `nightly` writing to
/// `storages` (with `extra_job`), and a webhook whose url comes from a
/// variable never set.
fn job_file(extra_storages: &str, storages: &str, extra_job: &str) -> Host {
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let work = tempfile::Builder::new()
        .prefix("backup-test-secrets-")
        .tempdir()
        .unwrap();
    let backups = work.path().join("backups");
    let config = work.path().join("backup.toml");
    std::fs::write(
        &config,
        format!(
            "timezone = \"Asia/Tokyo\"\n\
             [databases.app]\n\
             url = \"{url}\"\n\
             # the password is read only when a connection needs it\n\
             password_env = \"{DB_PASSWORD_VAR}\"\n\
             \n\
             [storages.disk]\n\
             type = \"local\"\n\
             path = \"{backups}\"\n\
             \n\
             {extra_storages}\n\
             [jobs.nightly]\n\
             type = \"backup\"\n\
             database = \"app\"\n\
             storages = [{storages}]\n\
             retention = {{ keep_last = 1 }}\n\
             {extra_job}\n\
             \n\
             [notifications.ops]\n\
             type = \"webhook\"\n\
             url_env = \"SECRETS_TEST_HOOK_NEVER_SET\"\n\
             on_success = true\n",
            url = cluster.url("app"),
            backups = backups.display(),
        ),
    )
    .unwrap();
    let line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("password_env"))
        .unwrap()
        + 1;
    assert_eq!(line, DB_PASSWORD_LINE);
    Host {
        cluster,
        work,
        config,
    }
}

impl Host {
    fn backup(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let tmp = self.work.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut all = vec![("TMPDIR", tmp.to_str().unwrap())];
        all.extend_from_slice(env);
        common::run_backup_with(&self.config, args, &all)
    }

    fn backup_ok(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let run = self.backup(args, env);
        assert!(run.ok(), "backup {args:?}: {}", run.all());
        run
    }

    fn listed(&self, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
        let run = self.backup_ok(&["--json", "list", "--job", "nightly"], env);
        serde_json::from_str(&run.stdout).expect("list --json prints JSON")
    }
}

/// What a command that needs the unset password says: exit 3, the file,
/// line, key and variable, and the `export` that fixes it.
fn names_the_missing_password(run: &Run, host: &Host) {
    assert_eq!(run.code, 3, "{}", run.all());
    let at = format!("{}:{DB_PASSWORD_LINE}", host.config.display());
    for expected in [
        at.as_str(),
        "[databases.app] password_env",
        &format!("environment variable {DB_PASSWORD_VAR} is not set"),
        &format!("hint: export {DB_PASSWORD_VAR}"),
    ] {
        assert!(run.stderr.contains(expected), "{expected}: {}", run.all());
    }
    assert!(!run.all().contains(PASSWORD), "{}", run.all());
}

#[test]
fn a_host_without_the_database_password_lists_checks_verifies_and_prunes() {
    let host = job_file(
        "",
        "\"disk\"",
        &format!("encryption = {{ passphrase_env = \"{PASSPHRASE_VAR}\" }}"),
    );
    let passphrase = (PASSPHRASE_VAR, "correct horse battery staple");
    // The webhook's url is never set: its delivery fails, the run does not.
    let run = host.backup_ok(
        &["run", "nightly"],
        &[(DB_PASSWORD_VAR, PASSWORD), passphrase],
    );
    assert!(
        run.stderr.contains("notification ops")
            && run
                .stderr
                .contains("environment variable SECRETS_TEST_HOOK_NEVER_SET is not set"),
        "{}",
        run.all()
    );

    // From here on, as on a laptop with the job file and nothing else.
    let listed = host.listed(&[]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().unwrap();
    let status = host.backup_ok(&["status", "--job", "nightly"], &[]);
    assert!(status.stdout.contains("nightly"), "{}", status.all());
    let check = host.backup(&["check", "--job", "nightly"], &[]);
    assert_eq!(check.code, 0, "{}", check.all());
    let prune = host.backup_ok(&["--json", "prune", "--job", "nightly", "--dry-run"], &[]);
    assert!(
        prune.stdout.contains(id),
        "the plan says what becomes of {id}: {}",
        prune.all()
    );
    // Reading the encrypted data back needs the passphrase, and only it.
    host.backup_ok(&["verify", "--job", "nightly", "--all"], &[passphrase]);
    let verify = host.backup(&["verify", "--job", "nightly", "--all"], &[]);
    assert_eq!(verify.code, 3, "not a bad backup: {}", verify.all());
    for expected in [
        "[jobs.nightly.encryption] passphrase_env".to_owned(),
        format!("environment variable {PASSPHRASE_VAR} is not set"),
        format!("hint: export {PASSPHRASE_VAR}"),
    ] {
        assert!(
            verify.stderr.contains(&expected),
            "{expected}: {}",
            verify.all()
        );
    }

    // What needs the database says which variable is missing, and where.
    let run = host.backup(&["run", "nightly"], &[passphrase]);
    names_the_missing_password(&run, &host);
    assert_eq!(host.listed(&[]).len(), 1, "the failed run added no backup");
    let restore = host.backup(
        &[
            "restore",
            "--job",
            "nightly",
            "--id",
            id,
            "--target-db",
            "restored",
        ],
        &[passphrase],
    );
    names_the_missing_password(&restore, &host);
    assert!(!host.cluster.databases().contains(&"restored".to_owned()));
}

#[test]
fn s3_keys_are_read_when_the_storage_is_opened_and_the_password_only_when_connecting() {
    let bucket = block_on(servers::create_bucket("secrets"));
    let section = servers::s3_section("s3", &servers::s3_endpoint(), &bucket, "");
    let host = job_file(&section, "\"s3\"", "");
    let mut everything = servers::s3_env().to_vec();
    everything.push((DB_PASSWORD_VAR, PASSWORD));
    host.backup_ok(&["run", "nightly"], &everything);

    // The storage's keys and nothing else: listing works.
    let listed = host.listed(&servers::s3_env());
    assert_eq!(listed.len(), 1, "{listed:?}");
    host.backup_ok(
        &["verify", "--job", "nightly", "--latest"],
        &servers::s3_env(),
    );

    // Without the keys, listing says which key is missing, and where.
    let run = host.backup(&["list", "--job", "nightly"], &[]);
    assert_eq!(run.code, 3, "{}", run.all());
    let (var, _) = servers::s3_env()[0];
    for expected in [
        "[storages.s3] access_key_id_env".to_owned(),
        format!("environment variable {var} is not set"),
        format!("hint: export {var}"),
        host.config.display().to_string(),
    ] {
        assert!(run.stderr.contains(&expected), "{expected}: {}", run.all());
    }
}
