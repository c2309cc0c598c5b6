//! Retention of a physical job end to end: base backups go as the policy
//! says, and with them exactly the archived WAL no kept base backup needs.
//!
//! The WAL is real: an archiving cluster pushes it through `wal push`. The
//! base backups are laid out as a physical job lays them out (a manifest
//! written last beside a `base.tar.zst`), each at a real `pg_backup_start`
//! / `pg_backup_stop` of the cluster, so the archive also holds the
//! `.backup` label PostgreSQL archives for each. Which WAL each rule keeps
//! is unit-tested in src/jobs/prune/wal.rs.

use std::collections::BTreeSet;

use crate::common::archiving::{Archiving, JOB, Options};
use backup::catalog::Manifest;
use backup::model::BackupId;
use serde_json::{Value, json};

/// One base backup as written into the `disk` storage.
struct Base {
    id: BackupId,
    wal_start: String,
}

/// Where a base backup of the cluster begins and ends in the WAL, as
/// `pg_basebackup` would see it: `(start lsn, wal_start, stop lsn, wal_stop)`.
fn mark_base_backup(a: &Archiving) -> (String, String, String, String) {
    let out = a.cluster.psql_output(
        "postgres",
        &[
            "-c",
            "SELECT lsn, pg_walfile_name(lsn) FROM pg_backup_start('wal retention test', true) AS lsn",
            "-c",
            "SELECT lsn, pg_walfile_name(lsn) FROM pg_backup_stop(true)",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = text.lines().flat_map(|l| l.split('|')).collect();
    let [start, wal_start, stop, wal_stop] = fields[..] else {
        panic!("pg_backup_start/stop said {text:?}");
    };
    (start.into(), wal_start.into(), stop.into(), wal_stop.into())
}

fn digest(key: &str, role: &str, raw: &[u8], stored: &[u8]) -> Value {
    json!({
        "key": key, "role": role,
        "raw_size": raw.len(), "raw_sha256": crate::common::sha256_hex(raw),
        "stored_size": stored.len(), "stored_sha256": crate::common::sha256_hex(stored),
    })
}

/// A base backup of the cluster now, dated `hours_ago`, written the way a
/// physical job writes one: its base object, then its manifest.
fn base_backup(a: &Archiving, hours_ago: i64) -> Base {
    let (start_lsn, wal_start, stop_lsn, wal_stop) = mark_base_backup(a);
    let at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(hours_ago);
    let id = BackupId::from_start(at, 0);
    let raw = format!("a base backup of the cluster at {start_lsn}").into_bytes();
    let stored = zstd::encode_all(&raw[..], 3).unwrap();
    let dir = a.backups.join(JOB).join(id.as_str());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("base.tar.zst"), &stored).unwrap();
    let manifest = json!({
        "format": 1, "id": id, "job": JOB, "database": "app", "dbname": "postgres",
        "server_version": a.psql("SHOW server_version"), "pg_dump_version": "",
        "snapshot_at": at, "started_at": at, "finished_at": at,
        "compression": "zstd", "encryption": null,
        "objects": [digest("base.tar.zst", "base", &raw, &stored)],
        "tables": [],
        "system_identifier": a.psql("SELECT system_identifier FROM pg_control_system()"),
        "physical": {
            "timeline": 1, "start_lsn": start_lsn, "stop_lsn": stop_lsn,
            "start_time": at, "stop_time": at,
            "wal_segment_size": a.psql("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
                .parse::<u64>().unwrap(),
            "wal_start": wal_start, "wal_stop": wal_stop,
            "manifest_checksums": "CRC32C",
        },
    });
    let parsed: Manifest = serde_json::from_value(manifest.clone()).unwrap();
    assert_eq!(parsed.problem(JOB, &id), None, "{manifest:#}");
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    crate::common::chown_tree_to_postgres(&a.backups);
    Base { id, wal_start }
}

/// The 24-digit segment an archived object (`<dir>/<file>-<sha>.<ext>`) belongs to.
fn segment_of(object: &str) -> Option<&str> {
    let (dir, file) = object.split_once('/')?;
    (dir != "history").then(|| &file[..24])
}

fn prune_json(a: &Archiving, args: &[&str]) -> Value {
    let mut all = vec!["--json", "prune", "--job", JOB];
    all.extend_from_slice(args);
    let run = a.backup(&all);
    assert!(run.ok(), "{}", run.all());
    let out: Value = serde_json::from_str(&run.stdout).unwrap();
    out[0]["storages"][0].clone()
}

fn backup_dirs(a: &Archiving) -> BTreeSet<String> {
    std::fs::read_dir(a.backups.join(JOB))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| BackupId::parse(name).is_ok())
        .collect()
}

#[test]
fn prune_deletes_the_oldest_base_backup_and_exactly_the_wal_only_it_needed() {
    let a = Archiving::with(Options {
        extra_job: "retention = { keep_last = 2 }",
        ..Options::default()
    });
    a.switch_and_wait();
    a.switch_and_wait();
    // A timeline's history file, as a promoted standby would archive it.
    let history = a.work.join("00000002.history");
    std::fs::write(&history, "1\t0/5000000\tno recovery target specified\n").unwrap();
    let run = a.backup(&["wal", "push", "--job", JOB, history.to_str().unwrap()]);
    assert!(run.ok(), "{}", run.all());

    // Without a complete base backup, every segment may be the next one's.
    let plan = prune_json(&a, &["--dry-run"]);
    assert!(
        plan["wal"]["held"]
            .as_str()
            .unwrap_or("")
            .contains("no complete base backup"),
        "{plan:#}"
    );
    assert_eq!(plan["wal"]["delete"]["objects"], 0, "{plan:#}");

    let mut bases = Vec::new();
    for hours_ago in [3, 2, 1] {
        bases.push(base_backup(&a, hours_ago));
        a.switch_and_wait();
        a.switch_and_wait();
    }
    let (oldest, second) = (&bases[0], &bases[1]);
    assert!(oldest.wal_start < second.wal_start);
    let archived = a.archived();
    let (doomed, kept): (Vec<&String>, Vec<&String>) = archived
        .iter()
        .partition(|o| segment_of(o).is_some_and(|s| s < second.wal_start.as_str()));
    // The oldest backup's label, and WAL from before and after its start, go.
    assert!(
        doomed
            .iter()
            .any(|o| o.contains(&format!("/{}.", oldest.wal_start)) && o.contains(".backup-")),
        "{archived:#?}"
    );
    assert!(
        doomed
            .iter()
            .any(|o| segment_of(o) == Some(&oldest.wal_start))
    );
    assert!(
        kept.iter()
            .any(|o| o.starts_with("history/00000002.history-"))
    );
    let first_doomed = doomed.iter().filter_map(|o| segment_of(o)).min().unwrap();
    let last_doomed = doomed.iter().filter_map(|o| segment_of(o)).max().unwrap();
    let last_kept = kept.iter().filter_map(|o| segment_of(o)).max().unwrap();

    // The plan, printed.
    let run = a.backup(&["prune", "--job", JOB, "--dry-run"]);
    assert!(run.ok(), "{}", run.all());
    for line in [
        format!("  delete {} ", oldest.id),
        format!("  keep   {} ", second.id),
        format!("  wal: keep {} .. {last_kept} (", second.wal_start),
        format!("; delete {first_doomed} .. {last_doomed} ("),
        format!(
            "  wal: kept from {} on, where the oldest kept backup {} starts",
            second.wal_start, second.id
        ),
    ] {
        assert!(run.stdout.contains(&line), "{line:?} in\n{}", run.all());
    }
    assert!(run.stdout.contains("1 history file(s)"), "{}", run.all());
    // And as JSON.
    let plan = prune_json(&a, &["--dry-run"]);
    assert_eq!(
        plan["wal"]["keep_from"],
        json!(second.wal_start),
        "{plan:#}"
    );
    assert_eq!(plan["wal"]["delete"]["objects"], doomed.len(), "{plan:#}");
    assert_eq!(plan["wal"]["keep"]["objects"], kept.len(), "{plan:#}");
    assert_eq!(
        plan["wal"]["delete"]["ranges"][0]["first"],
        json!(first_doomed)
    );
    assert_eq!(plan["wal"]["history_files"], 1);
    assert_eq!(a.archived(), archived, "a dry run deletes nothing");

    // Carried out.
    let done = prune_json(&a, &[]);
    assert_eq!(done["deleted"], json!([oldest.id]), "{done:#}");
    assert_eq!(done["wal"]["deleted"], doomed.len(), "{done:#}");
    let expected: BTreeSet<String> = bases[1..].iter().map(|b| b.id.to_string()).collect();
    assert_eq!(backup_dirs(&a), expected);
    let left = a.archived();
    assert_eq!(left, kept.into_iter().cloned().collect::<Vec<_>>());

    // Nothing is left to delete.
    let again = prune_json(&a, &[]);
    assert_eq!(again["deleted"], json!([]), "{again:#}");
    assert_eq!(again["wal"]["delete"]["objects"], 0, "{again:#}");
    assert_eq!(again["wal"]["deleted"], 0, "{again:#}");
    assert_eq!(a.archived(), left);

    // A prune job carries out the same prune: with a fourth backup, the
    // second goes, and the WAL below the third's start with it.
    a.append_to_config("[jobs.base-prune]\ntype = \"prune\"\nbackup_job = \"base\"\n");
    bases.push(base_backup(&a, 0));
    a.switch_and_wait();
    let third = &bases[2];
    let run = a.backup(&["run", "base-prune"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains(&format!("  DELETED {} ", bases[1].id)),
        "{}",
        run.all()
    );
    assert!(
        run.stdout
            .contains(&format!("  wal: keep {} .. ", third.wal_start))
            && run.stdout.contains("; deleted "),
        "{}",
        run.all()
    );
    let left = a.archived();
    assert!(
        left.iter()
            .all(|o| segment_of(o).is_none_or(|s| s >= third.wal_start.as_str())),
        "{left:#?}"
    );
    assert!(left.iter().any(|o| segment_of(o) == Some(&third.wal_start)));
    assert!(left.iter().any(|o| o.starts_with("history/")));
}
