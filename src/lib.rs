//! `backup`: logical PostgreSQL backups that stream, verify and restore.
//!
//! The modules follow the data flow in DESIGN.md; dependencies point one way:
//! `cli` → `engine` → `jobs` → {`pg`, `archive`, `catalog`, `storage`, `report`}
//! → {`model`, `secret`, `config`, `lock`, `error`}.

#![forbid(unsafe_code)]

pub mod archive;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod jobs;
pub mod lock;
pub mod model;
pub mod nofollow;
pub mod notify;
pub mod pg;
pub mod report;
pub mod retention;
pub mod schedule;
pub mod secret;
pub mod storage;
pub mod time;
