//! A manifest built by hand, for the unit tests of reading, listing and
//! selecting backups.

use jiff::Timestamp;

use super::{FORMAT, Manifest, ManifestObject, Role};
use crate::archive::ObjectDigest;
use crate::model::BackupId;

pub(super) fn manifest(id: &str, snapshot: &str) -> Manifest {
    let at: Timestamp = snapshot.parse().unwrap();
    Manifest {
        format: FORMAT,
        id: BackupId::parse(id).unwrap(),
        job: "nightly".into(),
        database: "app".into(),
        dbname: "app".into(),
        server_version: "15.18".into(),
        pg_dump_version: "pg_dump (PostgreSQL) 15.18".into(),
        snapshot_at: at,
        started_at: at,
        finished_at: at,
        compression: "zstd".into(),
        encryption: None,
        objects: vec![ManifestObject {
            key: "data.dump.zst".into(),
            role: Role::Data,
            digest: ObjectDigest {
                raw_size: 1,
                raw_sha256: "a".repeat(64),
                stored_size: 1,
                stored_sha256: "b".repeat(64),
            },
        }],
        tables: vec![],
        extensions: vec![],
        warnings: vec![],
        directory: None,
        tree: None,
        system_identifier: None,
        database_properties: None,
        row_counts: None,
        rows_from: None,
        physical: None,
    }
}
