//! Incremental base backups (PostgreSQL 17 and newer), end to end: a chain
//! full → incremental → incremental on 18 with pgbench writes between,
//! each incremental smaller than the full, restored to a moment after the
//! last and proven, verified link by link, drilled; retention keeping the
//! full backup while its incrementals are kept, and `run --full` starting a
//! new chain; the full backup taken instead, and said, where no
//! incremental can be; a 17 chain refused, before anything is written, by a
//! host without 17's `pg_combinebackup`.

use serde_json::Value;

use crate::common::archiving::{Archiving, JOB, Options};
use crate::common::{self};
use crate::pitr::{
    KEPT, LONG, QUICK, Rollback, assert_data_dir, assert_nothing_left, assert_refused,
    assert_rolled_back, base_backup, entries, insert, note_time, restore_started, said,
};

/// A physical job with incremental base backups on a cluster of `major`
/// that keeps WAL summaries (or not).
fn incremental_job(major: u32, summaries: bool, extra_job: &str) -> Archiving {
    let job = format!("incremental = true\n{extra_job}");
    Archiving::with(Options {
        major: Some(major),
        extra_db: &common::every_pg_bin_dir(),
        settings: if summaries { "summarize_wal = on" } else { "" },
        extra_job: &job,
        ..Default::default()
    })
}

/// The backup's own manifest, as stored.
fn manifest(a: &Archiving, backup: &Value) -> Value {
    let id = backup["id"].as_str().unwrap();
    let path = a.backups.join(JOB).join(id).join("manifest.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn id(backup: &Value) -> &str {
    backup["id"].as_str().unwrap()
}

/// `backup --json prune --job base [ARGS]`: the plan's entries.
fn prune(a: &Archiving, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "prune", "--job", JOB];
    all.extend_from_slice(args);
    let run = a.run_within(QUICK, &all, &[]);
    assert!(run.ok(), "{}", run.all());
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    out[0]["storages"][0]["plan"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no plan in {out:#}"))
        .clone()
}

fn action_of<'a>(entries: &'a [Value], backup: &Value) -> (&'a str, String) {
    let entry = entries
        .iter()
        .find(|e| e["id"] == backup["id"])
        .unwrap_or_else(|| panic!("{} not in {entries:#?}", backup["id"]));
    (
        entry["action"].as_str().unwrap(),
        entry["reasons"].to_string(),
    )
}

/// `restore --latest` into a new directory is refused saying `says`, and
/// nothing is written beside it.
fn assert_latest_refused(a: &Archiving, says: &[&str]) {
    let parent = a.own_dir("restores");
    let before = entries(&parent);
    let dir = parent.join("restored");
    let run = a.run_within(
        QUICK,
        &[
            "restore",
            "--job",
            JOB,
            "--latest",
            "--target-dir",
            dir.to_str().unwrap(),
            "--yes",
        ],
        &[],
    );
    assert_refused(&run, says, &parent, &before);
}

#[test]
fn a_chain_of_incremental_base_backups_on_18_restores_to_a_moment_after_the_last() {
    let a = incremental_job(18, true, "retention = { keep_last = 1 }");
    a.cluster.pgbench("postgres", &["-i", "-q", "-s", "4"]);
    let full = base_backup(&a, &[]);
    assert!(
        manifest(&a, &full)["physical"]["incremental_of"].is_null(),
        "{full:#}"
    );
    let mut chain = vec![full.clone()];
    for link in 2..=3 {
        a.cluster
            .pgbench("postgres", &["-n", "-c", "2", "-t", "200"]);
        let backup = base_backup(&a, &[]);
        let m = manifest(&a, &backup);
        let parent = &m["physical"]["incremental_of"];
        assert_eq!(parent["backup"], chain[chain.len() - 1]["id"], "{m:#}");
        assert_eq!(parent["chain_length"], link, "{m:#}");
        assert!(
            m["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["role"] == "backup_manifest"),
            "{m:#}"
        );
        // Reported, and much smaller than the full one.
        let (size, of_full) = (
            backup["stored_size"].as_u64().unwrap(),
            full["stored_size"].as_u64().unwrap(),
        );
        assert!(size * 3 < of_full, "incremental {size} B, full {of_full} B");
        chain.push(backup);
    }

    // The rollback, after the last incremental.
    a.psql("CREATE TABLE t (id bigint PRIMARY KEY, note text NOT NULL)");
    insert(|s| a.psql(s), 1, KEPT, "before");
    let balance = a.psql("SELECT sum(abalance) FROM pgbench_accounts");
    let time = note_time(|s| a.psql(s));
    a.psql("DELETE FROM t WHERE id % 2 = 0");
    a.cluster
        .pgbench("postgres", &["-n", "-c", "1", "-t", "100"]);
    a.switch_and_wait();
    let s = Rollback {
        backup: chain[2].clone(),
        time,
    };
    let dir = a.own_dir("restores").join("rolled-back");
    let (run, server) = restore_started(&a, &s.time.jst, &dir, false, &[]);
    assert!(run.ok(), "{}", run.all());
    for link in &chain {
        assert!(
            said(&run).contains(id(link)),
            "names {}: {}",
            id(link),
            run.all()
        );
    }
    assert!(said(&run).contains("pg_combinebackup"), "{}", run.all());
    assert_data_dir(&dir);
    assert_rolled_back(&a, &server, &s);
    assert_eq!(
        server.psql("postgres", "SELECT sum(abalance) FROM pgbench_accounts"),
        balance
    );
    server.stop();
    // The chain was unpacked beside the target, and is gone.
    let beside = entries(dir.parent().unwrap());
    assert_eq!(beside, ["rolled-back"], "left beside the target");

    // Verify reads every link of the newest's chain.
    let run = a.run_within(LONG, &["--json", "verify", "--job", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    for link in &chain {
        assert!(
            run.stdout.contains(id(link)),
            "verified {}: {}",
            id(link),
            run.stdout
        );
    }
    // A drill of the job combines the chain on a throwaway server.
    let report = a.own_dir("out").join("drill.md");
    let run = a.run_within(
        LONG,
        &["drill", "--job", JOB, "--report", report.to_str().unwrap()],
        &[],
    );
    assert!(run.ok(), "drill: {}", run.all());
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("| Result | **PASSED** |"), "{text}");
    assert!(
        text.contains(&format!(
            "combined with {} + {} by pg_combinebackup",
            id(&chain[0]),
            id(&chain[1])
        )),
        "{text}"
    );
    assert_nothing_left(&a);

    // keep_last = 1 keeps the newest, and so the whole chain under it.
    let plan = prune(&a, &["--dry-run"]);
    let (action, reasons) = action_of(&plan, &full);
    assert_eq!(action, "keep", "{plan:#?}");
    assert!(
        reasons.contains(&format!(
            "incremental backup {} was taken against it",
            id(&chain[1])
        )),
        "{reasons}"
    );
    // A full backup on demand starts a new chain. The drill made the old
    // chain's newest the newest tested backup: it is kept, and with it every
    // backup it was taken against, the full one included.
    let run = a.run_within(LONG, &["run", JOB, "--full"], &[]);
    assert!(run.ok(), "{}", run.all());
    let left = crate::pitr::list(&a, &[]);
    assert!(manifest(&a, &left[0])["physical"]["incremental_of"].is_null());
    let plan = prune(&a, &[]);
    let (action, reasons) = action_of(&plan, &chain[2]);
    assert_eq!(action, "keep", "{plan:#?}");
    assert!(reasons.contains("passed a restore test"), "{reasons}");
    for (link, next) in chain.iter().zip(&chain[1..]) {
        let (action, reasons) = action_of(&plan, link);
        assert_eq!(action, "keep", "{plan:#?}");
        assert_eq!(
            reasons,
            format!("[\"incremental backup {} was taken against it\"]", id(next)),
            "{plan:#?}"
        );
    }
    assert_eq!(crate::pitr::list(&a, &[]).len(), 4);
}

/// A chain whose full backup is gone (deleted by hand, lost with its
/// storage): verify names it, a restore refuses it before anything is
/// written, and the next run does not build on it but takes a full backup.
#[test]
fn a_broken_chain_is_named_refused_and_not_built_on() {
    let a = incremental_job(18, true, "");
    let full = base_backup(&a, &[]);
    a.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS g");
    let incremental = base_backup(&a, &[]);
    assert!(!manifest(&a, &incremental)["physical"]["incremental_of"].is_null());
    std::fs::remove_file(a.backups.join(JOB).join(id(&full)).join("manifest.json")).unwrap();
    a.switch_and_wait();

    let run = a.run_within(LONG, &["verify", "--job", JOB, "--latest"], &[]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        said(&run).contains(&format!("incremental on backup {}", id(&full))),
        "{}",
        run.all()
    );
    assert_latest_refused(&a, &["can be restored", id(&full)]);

    let run = a.run_within(LONG, &["run", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(said(&run).contains("cannot be restored"), "{}", run.all());
    let newest = crate::pitr::list(&a, &[]).swap_remove(0);
    assert!(manifest(&a, &newest)["physical"]["incremental_of"].is_null());
}

/// Without WAL summaries, or before 17, an incremental job takes full
/// base backups, and says why in the backup's warnings.
fn full_and_said(major: u32, says: &str) {
    let a = incremental_job(major, false, "");
    base_backup(&a, &[]);
    a.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS g");
    let run = a.run_within(LONG, &["run", JOB], &[]);
    assert!(run.ok(), "{}", run.all());
    assert!(said(&run).contains(says), "{}", run.all());
    let second = crate::pitr::list(&a, &[]).swap_remove(0);
    let m = manifest(&a, &second);
    assert!(m["physical"]["incremental_of"].is_null(), "{m:#}");
    assert!(m["warnings"].to_string().contains(says), "{m:#}");
}

#[test]
fn without_wal_summaries_an_incremental_job_takes_a_full_backup_and_says_why() {
    full_and_said(18, "summarize_wal = off");
}

#[test]
fn before_postgresql_17_an_incremental_job_takes_full_backups_and_says_why() {
    full_and_said(15, "incremental base backups need 17 or newer");
}

/// 17's server here comes without client programs: 18's `pg_basebackup`
/// takes the chain, and no `pg_combinebackup` of 17 is there to combine it
/// (18's reads 17's control file wrong), so the plan refuses.
#[test]
fn a_chain_of_17_is_refused_by_a_host_without_17s_pg_combinebackup() {
    let a = incremental_job(17, true, "");
    base_backup(&a, &[]);
    a.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS g");
    let incremental = base_backup(&a, &[]);
    assert!(
        !manifest(&a, &incremental)["physical"]["incremental_of"].is_null(),
        "{incremental:#}"
    );
    a.switch_and_wait();
    assert_latest_refused(&a, &["no pg_combinebackup of PostgreSQL 17", "pg_bin_dirs"]);
}
