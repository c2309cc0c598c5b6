//! `backup`: logical PostgreSQL backups that stream, verify and restore.
//!
//! The modules follow the data flow in DESIGN.md; dependencies point one way:
//! `cli` → `engine` → `jobs` → {`pg`, `archive`, `catalog`, `storage`, `report`}
//! → {`model`, `config`, `error`}.

pub mod archive;
pub mod config;
pub mod error;
pub mod model;
pub mod storage;
