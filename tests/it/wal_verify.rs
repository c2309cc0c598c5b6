//! Verifying what physical jobs store: a real `pg_basebackup` tar checked
//! against its `backup_manifest`, and `backup verify --wal` on the archive
//! a real cluster fills through `archive_command`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::{Command, Stdio};

use backup::error::Kind;
use backup::pg::basebackup::{self, Algorithm};

use crate::common::PASSWORD;
use crate::common::archiving::{Archiving, JOB};

/// `pg_basebackup -D - -Ft -X none` of the cluster, its stdout in `path`.
fn base_backup(a: &Archiving, path: &std::path::Path) {
    let out = std::fs::File::create(path).unwrap();
    let status = Command::new(a.cluster.client_bindir().join("pg_basebackup"))
        .args(["-d", &a.cluster.url("postgres")])
        .args(["-D", "-", "-Ft", "-X", "none", "--checkpoint=fast"])
        .env("PGPASSWORD", PASSWORD)
        .stdin(Stdio::null())
        .stdout(out)
        .status()
        .expect("run pg_basebackup");
    assert!(
        status.success(),
        "pg_basebackup failed\n{}",
        a.cluster.log()
    );
}

#[test]
fn a_real_base_backup_matches_its_manifest_and_a_changed_file_is_named() {
    let a = Archiving::start();
    a.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g");
    let tar_path = a.work.join("base.tar");
    base_backup(&a, &tar_path);

    let summary =
        basebackup::check(std::fs::File::open(&tar_path).unwrap(), Algorithm::Crc32c).unwrap();
    assert!(summary.files > 500, "{summary:?}");
    assert_eq!(summary.algorithm, Algorithm::Crc32c);
    assert_eq!(summary.wal_ranges.len(), 1, "{summary:?}");
    assert_eq!(summary.wal_ranges[0].timeline, 1);
    assert!(summary.wal_ranges[0].start <= summary.wal_ranges[0].end);

    // One byte of one relation file changed, the tar otherwise intact.
    let (path, offset) = {
        let mut archive = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
        archive
            .entries()
            .unwrap()
            .map(Result::unwrap)
            .find(|e| {
                let p = e.path().unwrap().display().to_string();
                p.starts_with("base/") && e.size() >= 8192
            })
            .map(|e| {
                (
                    e.path().unwrap().display().to_string(),
                    e.raw_file_position(),
                )
            })
            .expect("a relation file in the tar")
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&tar_path)
        .unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset + 100)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(offset + 100)).unwrap();
    file.write_all(&[byte[0] ^ 0x55]).unwrap();
    drop(file);

    let err =
        basebackup::check(std::fs::File::open(&tar_path).unwrap(), Algorithm::Crc32c).unwrap_err();
    assert_eq!(err.kind(), Kind::Integrity);
    assert!(
        err.message().starts_with(&format!("{path} has CRC32C ")),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("its backup_manifest says"),
        "{}",
        err.message()
    );
}

/// The stored objects of archived segments, oldest first, relative to the
/// job's `wal/`.
fn segment_objects(a: &Archiving) -> Vec<String> {
    let mut out: Vec<String> = a
        .archived()
        .into_iter()
        .filter(|f| {
            f.rsplit('/')
                .next()
                .is_some_and(|name| name.len() > 25 && name.as_bytes()[24] == b'-')
        })
        .collect();
    out.sort();
    out
}

fn segment_name(object: &str) -> String {
    object.rsplit('/').next().unwrap()[..24].to_owned()
}

#[test]
fn verify_wal_passes_then_names_a_deleted_segment_with_its_times_and_a_corrupt_one() {
    let a = Archiving::start();
    for _ in 0..6 {
        a.switch_and_wait();
    }
    let run = a.backup(&["verify", "--job", JOB, "--wal"]);
    assert!(run.ok(), "{}", run.all());
    assert!(
        run.stdout.contains("WAL archive in storage disk: ok"),
        "{}",
        run.all()
    );
    assert!(
        run.stdout.contains("the oldest archived segment"),
        "{}",
        run.all()
    );
    let objects = segment_objects(&a);
    assert!(objects.len() >= 6, "{objects:?}");
    let newest = segment_name(objects.last().unwrap());
    assert!(
        run.stdout.contains(&format!("newest {newest}")),
        "{}",
        run.all()
    );

    // A segment in the middle deleted: a gap, with the times either side.
    let deleted = &objects[objects.len() / 2];
    std::fs::remove_file(a.backups.join(JOB).join("wal").join(deleted)).unwrap();
    let run = a.backup(&["verify", "--job", JOB, "--wal"]);
    assert_eq!(run.code, 6, "{}", run.all());
    let missing = segment_name(deleted);
    let line = format!("GAP    missing {missing} (1 segment): recovery cannot pass from ");
    assert!(run.stdout.contains(&line), "{}", run.all());
    // Times in the job's zone, both ends.
    let gap = run.stdout.lines().find(|l| l.contains("GAP")).unwrap();
    assert_eq!(gap.matches(" JST").count(), 2, "{gap}");
    assert!(run.stderr.contains(&missing), "{}", run.all());

    // Another one's stored bytes damaged: named as corrupt.
    let damaged = &objects[1];
    let stored = a.backups.join(JOB).join("wal").join(damaged);
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let run = a.backup(&["verify", "--job", JOB, "--wal", "--json"]);
    assert_eq!(run.code, 6, "{}", run.all());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(report["ok"], false);
    let disk = &report["storages"][0];
    assert_eq!(disk["gaps"][0]["first"], missing.as_str(), "{report}");
    assert!(disk["gaps"][0]["before_at"].is_string(), "{report}");
    let corrupt = disk["corrupt"].as_array().unwrap();
    assert_eq!(corrupt.len(), 1, "{report}");
    assert!(
        corrupt[0]["key"]
            .as_str()
            .unwrap()
            .ends_with(damaged.as_str()),
        "{report}"
    );
    assert_eq!(corrupt[0]["on_path"], true, "{report}");
    let run = a.backup(&["verify", "--job", JOB, "--wal"]);
    assert_eq!(run.code, 6, "{}", run.all());
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("BAD") && l.contains(&segment_name(damaged))),
        "{}",
        run.all()
    );
}
