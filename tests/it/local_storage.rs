//! Local storage as a killed process, an attacker and the default umask
//! leave it: a backup killed with SIGKILL leaves its temporary file, which
//! prune removes once old and only while no run of the job holds its lock;
//! symbolic links below the root are never read or deleted through; and
//! backups (globals.sql holds every role's password verifier) are readable by
//! their owner only.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, Setup, wait_for};
use serde_json::Value;

/// Every path under `dir` (not following links), `dir` first.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .collect()
}

fn prune_json(setup: &Setup) -> (common::Run, Value) {
    let run = setup.backup(&["--json", "prune", "--job", "nightly"]);
    let value = serde_json::from_str(&run.stdout).unwrap_or(Value::Null);
    (run, value)
}

#[test]
fn a_backup_killed_with_sigkill_leaves_a_temp_file_prune_removes_once_no_run_holds_the_lock() {
    let setup = Setup::new(
        "",
        "retention = { keep_last = 3 }\nincomplete_after = \"1h\"",
    );
    // pg_dump waits on this lock: the run is mid-dump, its data object open.
    let table = setup.cluster.hold_lock("app", "app.users");
    let mut run = setup.spawn_backup_with(&["run", "nightly"], &[]);
    wait_for(
        "the run's temporary data file",
        Duration::from_secs(30),
        || !temp_files(&setup.backups).is_empty(),
    );
    run.kill().unwrap(); // SIGKILL: no clean-up runs
    run.wait().unwrap();
    table.release();
    let left = temp_files(&setup.backups);
    assert_eq!(left.len(), 1, "{left:?}");
    let temp = &left[0];
    assert!(
        temp.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".tmp-data.dump.zst-"),
        "{temp:?}"
    );
    // Written two hours ago: older than incomplete_after.
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(temp)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // The killed run's session, and with it the job's lock, is gone.
    let key = backup::lock::lock_key("backup job nightly");
    let held = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 \
         AND ((classid::int8 << 32) | objid::int8) = {key}"
    );
    wait_for(
        "the killed run's lock to go",
        Duration::from_secs(30),
        || setup.cluster.psql("app", &held) == "0",
    );

    // A run of the job holds its lock: its temporary files may be its own.
    let running = setup.cluster.hold_advisory_lock("app", key);
    let (run, out) = prune_json(&setup);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(out[0]["storages"][0]["unfinished_cleaned"], 0, "{out:#}");
    assert!(temp.exists(), "removed while the job's lock was held");
    running.release();

    let (run, out) = prune_json(&setup);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(out[0]["storages"][0]["unfinished_cleaned"], 1, "{out:#}");
    assert!(!temp.exists(), "{temp:?} is still there");
    assert!(
        !temp.parent().unwrap().exists(),
        "the killed run's emptied directory stays"
    );
    // The prune's record says so too.
    let reports = setup.backups.join("nightly/reports");
    let mut records: Vec<PathBuf> = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-prune.json"))
        .collect();
    records.sort();
    assert_eq!(records.len(), 2, "{records:?}");
    let last: Value = serde_json::from_slice(&std::fs::read(&records[1]).unwrap()).unwrap();
    // One record for the prune, with each storage's part.
    assert_eq!(
        last["details"]["storages"][0]["unfinished_cleaned"], 1,
        "{last:#}"
    );
}

/// Adds a line to `[jobs.nightly]`, the job file's last table.
fn backup_id(setup: &Setup) -> String {
    let run = setup.backup(&["--json", "run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let listed = setup.list();
    listed[0]["id"].as_str().unwrap().to_owned()
}

/// A backup directory of the job, moved outside the root and linked back.
#[test]
fn a_backup_directory_that_is_a_link_out_of_the_root_is_never_read_or_deleted_through() {
    let setup = Setup::new("", "");
    let old = backup_id(&setup);
    let new = backup_id(&setup);
    assert_ne!(old, new);
    // Only now: a backup prunes after itself.
    setup.append_to_config("retention = { keep_last = 1 }");
    let outside = setup.work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let moved = outside.join(&old);
    let link = setup.backups.join("nightly").join(&old);
    std::fs::rename(&link, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &link).unwrap();
    let before = tree(&outside);
    assert!(before.iter().any(|p| p.ends_with("manifest.json")));

    let run = setup.backup(&["--json", "list", "--job", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let listed: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    let ids: Vec<&str> = listed.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [new.as_str()], "{}", run.all());
    let named = format!("{} is a symbolic link", link.display());
    assert!(run.stderr.contains(&named), "{}", run.all());

    for args in [
        vec![
            "restore",
            "--job",
            "nightly",
            "--id",
            &old,
            "--target-db",
            "copy",
        ],
        vec!["verify", "--job", "nightly", "--id", &old],
    ] {
        // Left out of the listing, with a warning naming the link: not there.
        let run = setup.backup(&args);
        assert_eq!(run.code, 7, "{args:?}: {}", run.all());
        assert!(run.stderr.contains(&named), "{args:?}: {}", run.all());
    }
    assert!(!setup.cluster.databases().contains(&"copy".to_owned()));
    let run = setup.backup(&["verify", "--job", "nightly", "--all"]);
    assert!(run.ok(), "{}", run.all());

    // keep_last = 1: were the link followed, the older backup would go.
    let (run, out) = prune_json(&setup);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        out[0]["storages"][0]["deleted"],
        Value::Array(vec![]),
        "{out:#}"
    );
    assert_eq!(
        tree(&outside),
        before,
        "prune changed what is outside the root"
    );
    assert!(link.is_symlink());
}

/// The job's directory itself a link to a copy of it elsewhere.
#[test]
fn a_job_directory_that_is_a_link_out_of_the_root_is_never_read_or_written_through() {
    let setup = Setup::new("", "");
    backup_id(&setup);
    backup_id(&setup);
    setup.append_to_config("retention = { keep_last = 1 }");
    let outside = setup.work.path().join("outside");
    let link = setup.backups.join("nightly");
    std::fs::rename(&link, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let before = tree(&outside);
    let named = format!("{} is a symbolic link", link.display());

    let run = setup.backup(&["--json", "list", "--job", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(run.stdout.trim(), "[]", "{}", run.all());
    assert!(run.stderr.contains(&named), "{}", run.all());
    for args in [
        vec![
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "copy",
        ],
        vec!["verify", "--job", "nightly", "--latest"],
    ] {
        let run = setup.backup(&args);
        assert_eq!(run.code, 7, "nothing to restore: {args:?}: {}", run.all());
    }
    // Nothing is deleted; and the prune's record, which would go through the
    // link too, is not stored: said, and the command fails (exit 5).
    let (run, out) = prune_json(&setup);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(
        run.stderr.contains("could not be stored") && run.stderr.contains(&named),
        "{}",
        run.all()
    );
    assert_eq!(
        out[0]["storages"][0]["deleted"],
        Value::Array(vec![]),
        "{out:#}"
    );

    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 5, "{}", run.all());
    assert!(run.stderr.contains(&named), "{}", run.all());
    assert_eq!(tree(&outside), before, "something changed outside the root");
}

#[test]
fn under_umask_022_a_backups_files_are_0600_and_its_directories_0700() {
    let setup = Setup::new("", "");
    let tmp = setup.work.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    // As `backup run` from a login shell: umask 022.
    let out = Command::new("sh")
        .args(["-c", "umask 022 && exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_backup"))
        .arg("--config")
        .arg(&setup.config)
        .args(["run", "nightly"])
        .env_remove("BACKUP_CONFIG")
        .env_remove("PGPASSWORD")
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = tree(&setup.backups);
    assert!(
        all.iter().any(|p| p.ends_with("globals.sql.zst")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|p| p.to_string_lossy().contains("/reports/")),
        "{all:?}"
    );
    for path in &all {
        let meta = std::fs::symlink_metadata(path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", path.display());
    }
}
