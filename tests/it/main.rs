//! The end-to-end tests, one module per subject, built as one binary: linking
//! the crate and its SDKs once instead of once per file, and sharing one
//! template cluster (see `common::Cluster::start`) across every test of a run.
//!
//! `cargo test --test it` runs them all; `cargo test --test it daemon::` runs
//! one module's.

mod common;

mod archive_rows;
mod backup_restore;
mod backup_source;
mod daemon;
mod encryption;
mod incremental;
mod layers;
mod local_storage;
mod maintenance;
mod majors;
mod matrix;
mod notifiers;
mod parallel_restore;
mod physical;
mod pitr;
mod pitr_recover;
mod prune;
mod regression;
mod remote_storage;
mod restore_swap;
mod restore_test;
mod scenarios;
mod secrets;
mod stalled_storage;
mod status_page;
mod storage_conformance;
mod tls;
mod upgrade;
mod wal_check;
mod wal_push;
mod wal_retention;
mod wal_verify;
