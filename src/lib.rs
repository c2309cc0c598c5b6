//! `backup`: logical PostgreSQL backups that stream, verify and restore.
//!
//! The modules follow the data flow in DESIGN.md. Dependencies point one way:
//! each module imports only those listed before it.
//!
//! 1. `error`, `time`, `nofollow`: the ground everything stands on;
//! 2. `secret`: secrets a job file names, and reading them;
//! 3. `keys`: age recipients and identities;
//! 4. `schedule`, `model`: the validated configuration;
//! 5. `retention`: which backups are kept, a pure function of the model;
//! 6. `storage`, then `archive`: where objects go, and how they are packed;
//!    then `wal`: the names and the chain of a WAL archive;
//! 7. `pg`: PostgreSQL (`pg::url`, libpq's connection strings, below the rest);
//! 8. `report`: run records, and what they say of a job's history;
//! 9. `catalog`: the backups in storage: manifests, listings, pins, and
//!    opening encrypted backups;
//! 10. `lock`: one run of a job at a time (advisory locks, lock files);
//! 11. `notify`: announcements of runs;
//! 12. `config`: job files, read into the model;
//! 13. `jobs`, then `engine`, then `status` (what `status`, `check` and the
//!     status page say of each job), then `daemon` and `cli`.

#![forbid(unsafe_code)]

pub mod archive;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod lock;
pub mod model;
pub mod nofollow;
pub mod notify;
pub mod pg;
pub mod report;
pub mod retention;
pub mod schedule;
pub mod secret;
pub mod status;
pub mod storage;
pub mod time;
pub mod wal;
