//! Physical jobs: base backups, and the WAL archive PostgreSQL fills
//! through `backup wal push` (tests/it/common/archiving.rs sets it up).

use crate::common::archiving::{Archiving, JOB, Options};

#[test]
fn a_physical_job_reads_from_the_job_file_with_its_wal_settings() {
    let a = Archiving::with(Options {
        no_archiving: true,
        extra_job: "wal_push_ahead = 8\nwal_queue_max = \"8GiB\"\nwal_max_age = \"30m\"",
        ..Options::default()
    });
    let run = a.backup(&["config", "check"]);
    assert!(run.ok(), "{}", run.all());
    assert!(run.stdout.contains(JOB), "{}", run.all());
    assert!(a.cluster.data_dir().join("PG_VERSION").exists());
    a.append_to_config("[jobs.bad]\ntype = \"physical\"\ndatabase = \"app\"\nstorages = [\"disk\"]\nwal_push_ahead = 100\n");
    let run = a.backup(&["config", "check"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stderr.contains("wal_push_ahead = 100"), "{}", run.all());
}

#[test]
fn postgresql_archives_its_wal_through_wal_push() {
    let a = Archiving::start();
    let segment = a.switch_and_wait();
    let archived = a.archived();
    assert!(
        archived
            .iter()
            .any(|f| f.contains(&format!("/{segment}-")) && f.ends_with(".zst")),
        "{archived:?}\n{}",
        a.cluster.log()
    );
    // The stored object is the segment, compressed: zstd gives it back.
    let object = archived.iter().find(|f| f.contains(&segment)).unwrap();
    let stored = std::fs::read(a.backups.join(JOB).join("wal").join(object)).unwrap();
    let raw = zstd::decode_all(&stored[..]).unwrap();
    assert_eq!(raw.len(), 16 << 20);
    let sha = crate::common::sha256_hex(&raw);
    assert!(object.contains(&sha), "{object} names its raw digest {sha}");
}
