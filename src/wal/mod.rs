//! The WAL archive of a physical job: the names of archived files
//! ([`names`]), reading what a job's archive holds ([`object`]) and where
//! its chain breaks ([`chain`]).
//!
//! PostgreSQL hands every finished segment to `archive_command` (`backup wal
//! push`) and asks for them back through `restore_command` (`backup wal
//! fetch`). Each archived object carries the SHA-256 of its raw bytes in its
//! name, so neither needs a manifest: a second push of the same bytes is a
//! no-op, different bytes under a name already taken are refused, and a
//! fetch checks what it returns against the name.
//!
//! [`push`] and [`fetch`] are those two commands; [`spool`] is what one
//! call leaves for the next (segments pushed or fetched ahead) and the
//! record of failed pushes.

pub mod chain;
pub mod fetch;
pub mod names;
pub mod object;
pub mod push;
pub mod spool;

pub use chain::{Chain, Gap, History};
pub use names::{Archived, Lsn, Segment, WalFile, wal_prefix};
