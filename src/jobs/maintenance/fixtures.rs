//! A database's inventory and a maintenance job built by hand, for the unit
//! tests of planning and of the statements.

use std::time::Duration;

use jiff::Timestamp;

use crate::model::{MaintenanceJob, Targets, Task};
use crate::pg::stats::{IndexStats, Inventory, TableStats};

pub(super) fn table(name: &str, live: i64, dead: i64, bytes: i64) -> TableStats {
    static NEXT_OID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(16_384);
    TableStats {
        oid: NEXT_OID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        schema: "public".into(),
        name: name.into(),
        total_bytes: bytes,
        table_bytes: bytes,
        index_bytes: 0,
        live_tuples: live,
        dead_tuples: dead,
        modified_since_analyze: 0,
        last_vacuum: None,
        last_autovacuum: None,
        last_analyze: Some(Timestamp::UNIX_EPOCH),
        last_autoanalyze: None,
        xid_age: 1000,
        bloat: None,
        size_estimated: false,
        owner: "app".into(),
        can_vacuum: true,
        can_reindex: true,
        owns: true,
    }
}

pub(super) fn inventory(tables: Vec<TableStats>, indexes: Vec<IndexStats>) -> Inventory {
    Inventory {
        database: "app".into(),
        tables,
        indexes,
        freeze_max_age: 200_000_000,
        freeze_table_age: 150_000_000,
        database_xid_age: 1000,
        sizes_estimated: false,
        has_pgstattuple: false,
        exact_index_bloat: false,
    }
}

pub(super) fn job(tasks: &[Task]) -> MaintenanceJob {
    MaintenanceJob {
        database: std::sync::Arc::new(crate::model::Database {
            name: "app".into(),
            url: "postgresql:///app".into(),
            password: None,
            password_from: None,
            pg_bin_dir: None,
            pg_bin_dirs: Vec::new(),
            secret_env: Default::default(),
        }),
        tasks: tasks.to_vec(),
        targets: Targets::default(),
        lock_timeout: Duration::from_secs(5),
        lock_retries: 2,
        window: None,
        reindex_concurrently: true,
        reports: None,
    }
}

pub(super) fn index(name: &str, on: &TableStats, bloat: Option<f64>, valid: bool) -> IndexStats {
    IndexStats {
        oid: 7,
        table_oid: on.oid,
        schema: on.schema.clone(),
        name: name.into(),
        table: on.name.clone(),
        bytes: 50 << 20,
        valid,
        method: "btree".into(),
        scans: 0,
        bloat,
        bloat_exact: false,
        table_being_indexed: false,
        exclusion: false,
    }
}

pub(super) const MB: i64 = 1 << 20;
