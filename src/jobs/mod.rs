//! One file per kind of job. Each takes what it needs (the validated job, open
//! storages, a clock, a progress handle) and returns what happened; the engine
//! decides when they run and records the outcome.

pub mod backup;
pub mod drill;
pub mod files;
pub mod maintenance;
pub mod physical;
pub mod pitr;
pub mod proof;
pub mod prune;
pub mod restore;
pub mod restore_test;
pub mod verify;
pub mod wal_check;
pub mod wal_status;
pub mod wal_verify;
