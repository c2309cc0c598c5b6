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
