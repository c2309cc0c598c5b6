//! What a restore will do, decided before anything is touched: the backup,
//! the method (a new database, a swap, or `--in-place`), what the target
//! holds and who is on it; refused here when it must not go ahead. Its
//! `Display` is what `--dry-run` prints.

use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::leftovers::{kept_marker, leftovers};
use super::{Leftovers, RestoreRequest, beside, choose, named};
use crate::archive::crypt::Crypt;
use crate::catalog::{self, Manifest, Selector};
use crate::error::{Error, Result};
use crate::model::{BackupJob, Database, Job};
use crate::pg::database::{self as pgdb, DatabaseProperties, admin_database};
use crate::pg::{self, command::RestoreFlags};
use crate::storage::Storage;
use crate::time;

/// How the target gets the backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// No target yet: restored under `staging`, proven, then renamed.
    New { staging: String },
    /// The target exists: restored under `staging` beside it, proven, then
    /// swapped in; the old database is dropped after the swap.
    Swap {
        staging: String,
        /// What the target holds; `None` when it is empty.
        contents: Option<String>,
    },
    /// `--in-place`: a target that holds something is dropped and re-created
    /// first, and the backup restored into it.
    InPlace {
        exists: bool,
        contents: Option<String>,
    },
}

impl Method {
    pub fn name(&self) -> &'static str {
        match self {
            Method::New { .. } => "new",
            Method::Swap { .. } => "swap",
            Method::InPlace { .. } => "in-place",
        }
    }

    /// The database `pg_restore` writes into.
    pub fn staging(&self) -> Option<&str> {
        match self {
            Method::New { staging } | Method::Swap { staging, .. } => Some(staging),
            Method::InPlace { .. } => None,
        }
    }

    pub(super) fn contents(&self) -> Option<&str> {
        match self {
            Method::New { .. } => None,
            Method::Swap { contents, .. } | Method::InPlace { contents, .. } => contents.as_deref(),
        }
    }

    pub(super) fn target_exists(&self) -> bool {
        match self {
            Method::New { .. } => false,
            Method::Swap { .. } => true,
            Method::InPlace { exists, .. } => *exists,
        }
    }
}

/// Everything a restore will do, decided before anything is touched.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub job: String,
    pub timezone: TimeZone,
    pub backup: Manifest,
    pub storage: String,
    pub target_db: String,
    pub requested_at: Option<Timestamp>,
    pub method: Method,
    /// The existing target's own properties, kept over the backup's.
    pub target_properties: Option<DatabaseProperties>,
    /// Databases that interrupted restores into the target left.
    pub leftovers: Leftovers,
    /// `--clean`: the target may be replaced whatever it holds.
    pub clean: bool,
    pub keep_failed: bool,
    /// Create the backup's roles the server lacks before restoring.
    pub globals: bool,
    pub flags: RestoreFlags,
    /// How the backup's objects open (encrypted ones: checked identities).
    pub crypt: Crypt,
}

impl RestorePlan {
    /// Whether carrying the plan out replaces objects that exist now.
    pub fn overwrites(&self) -> bool {
        self.method.contents().is_some()
    }

    /// The properties the restored database ends up with.
    pub(super) fn properties(&self) -> Option<DatabaseProperties> {
        pgdb::merge(
            self.backup.database_properties.as_ref(),
            self.target_properties.as_ref(),
            self.flags.no_owner,
            self.flags.no_acl,
        )
    }
}

impl fmt::Display for RestorePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        writeln!(f, "restore plan for job {}:", self.job)?;
        writeln!(f, "  backup:    {} from storage {}", b.id, self.storage)?;
        writeln!(
            f,
            "  data as of {}",
            time::show(b.snapshot_at, &self.timezone)
        )?;
        if let Some(at) = self.requested_at {
            writeln!(
                f,
                "  requested  {} ({} after the backup's snapshot)",
                time::show(at, &self.timezone),
                time::show_duration(at.duration_since(b.snapshot_at))
            )?;
        }
        writeln!(
            f,
            "  source:    database {} on PostgreSQL {}, {} tables, {} raw",
            b.dbname,
            b.server_version,
            b.tables.len(),
            crate::report::bytes_human(b.raw_size())
        )?;
        let target = &self.target_db;
        let raw = crate::report::bytes_human(b.raw_size());
        match &self.method {
            Method::New { staging } => writeln!(
                f,
                "  target:    database {target} (will be created: restored as {staging}, proven, \
                 then renamed to {target})"
            )?,
            Method::Swap { staging, contents } => writeln!(
                f,
                "  target:    database {target} (exists{}; it is replaced only once the new copy is \
                 proven: restored as {staging} beside it, checked, then swapped in by renaming, \
                 and the old database dropped; until then the server needs room for both: a \
                 second copy of a {raw} dump, plus its indexes)",
                contents
                    .as_ref()
                    .map_or(", empty".to_owned(), |c| format!(": {c}"))
            )?,
            Method::InPlace {
                exists: true,
                contents: Some(what),
            } => writeln!(
                f,
                "  target:    database {target} (exists: {what}; --in-place: it is DROPPED FIRST \
                 and re-created empty, keeping its owner, encoding, settings and grants, then \
                 restored into; if the restore fails, the old data is gone and the database is \
                 incomplete)"
            )?,
            Method::InPlace { exists, .. } => writeln!(
                f,
                "  target:    database {target} ({}; --in-place: restored into directly)",
                if *exists {
                    "exists, empty"
                } else {
                    "will be created"
                }
            )?,
        }
        for leftover in &self.leftovers.restoring {
            writeln!(
                f,
                "  first:     drop {leftover}, left by an interrupted restore into {target}"
            )?;
        }
        for leftover in &self.leftovers.replaced {
            writeln!(
                f,
                "  at last:   drop {leftover}, a database an earlier restore replaced, once \
                 the new copy is in place"
            )?;
        }
        let mut how = vec![if self.flags.jobs > 1 {
            format!(
                "{} parallel jobs (spooled to a temporary file)",
                self.flags.jobs
            )
        } else {
            "streamed, 1 job".to_owned()
        }];
        if self.flags.no_owner {
            how.push("no owner".to_owned());
        }
        if self.flags.no_acl {
            how.push("no privileges".to_owned());
        }
        writeln!(f, "  restore:   {}", how.join(", "))?;
        match self.properties() {
            Some(p) => writeln!(
                f,
                "  database:  {} ({})",
                p.summary(),
                if self.target_properties.is_some() {
                    "the target's own, and what the backup adds"
                } else {
                    "as backed up"
                }
            )?,
            None => writeln!(
                f,
                "  database:  the backup predates database properties: owner, settings and \
                 grants are the server's defaults"
            )?,
        }
        if self.globals {
            writeln!(
                f,
                "  roles:     created from the backup's globals where the server lacks them \
                 (existing roles are left as they are)"
            )?;
        }
        write!(
            f,
            "  then:      compare the row counts of {} tables with the manifest{}",
            b.tables.len(),
            match (&self.method, self.keep_failed) {
                (Method::InPlace { .. }, _) => "",
                (_, true) => "; a copy that fails is kept (--keep-failed)",
                (_, false) => "; a copy that fails is dropped, and the target left as it was",
            }
        )
    }
}

/// Decides what a restore will do, refusing what it must not do.
pub async fn plan(
    job: &Job,
    spec: &BackupJob,
    target: &Database,
    storages: &[Arc<dyn Storage>],
    request: &RestoreRequest,
) -> Result<RestorePlan> {
    pgdb::check_name(&request.target_db)?;
    let (backup, storage) =
        choose(job, storages, request.storage.as_deref(), &request.selector).await?;
    // Before the target is even looked at: a key that cannot open the
    // backup ends the restore here.
    let crypt = catalog::opener(named(storages, &storage)?.as_ref(), &backup, spec.keys()).await?;
    if request.globals {
        super::globals_of(&backup)?;
    }
    let target_db = request.target_db.clone();
    let admin = pg::connect(target, Some(admin_database(&target_db))).await?;
    let exists = pg::database_exists(&admin, &target_db).await?;
    let (contents, target_properties) = if exists {
        let conn = pg::connect(target, Some(&target_db)).await?;
        (
            pg::describe_contents(&conn).await?,
            Some(pgdb::properties(&admin, &target_db).await?),
        )
    } else {
        (None, None)
    };
    let id = backup.id.as_str();
    let staging = beside(&target_db, "restoring", id);
    let method = match (exists, request.in_place) {
        (_, true) => Method::InPlace { exists, contents },
        (false, false) => Method::New { staging },
        (true, false) => Method::Swap { staging, contents },
    };
    // Replacing what is there, either way, is asked for by --clean alone.
    if method.contents().is_some() && !request.clean {
        return Err(Error::refused(format!(
            "database {target_db} exists and is not empty ({}); nothing was changed",
            method.contents().unwrap_or_default()
        ))
        .with_hint(
            "restore into a new --target-db, or pass --clean to replace the database once the \
             restored copy is proven",
        ));
    }
    // Replaced (swapped out, or dropped first): it must be the restore's alone.
    if matches!(
        method,
        Method::Swap { .. }
            | Method::InPlace {
                contents: Some(_),
                ..
            }
    ) {
        let sessions = pg::other_sessions(&admin, &target_db).await?;
        if !sessions.is_empty() {
            return Err(Error::refused(format!(
                "database {target_db} has {} other session(s) connected: {}; nothing was changed",
                sessions.len(),
                sessions.join(", ")
            ))
            .with_hint(
                "stop the applications that use it: the restore replaces the database, which \
                 needs it to itself",
            ));
        }
    }
    let leftovers = leftovers(target, &admin, &target_db).await?;
    // The names the restore will work under must be free, or its own leftovers.
    let mut names = Vec::new();
    if let Method::Swap { staging, .. } = &method {
        names.push(beside(&target_db, "replaced", id));
        names.push(staging.clone());
    }
    if let Method::New { staging } = &method {
        names.push(staging.clone());
    }
    for name in names {
        if pg::database_exists(&admin, &name).await? && !leftovers.contains(&name) {
            let kept = pg::database_comment(&admin, &name).await?.flatten()
                == Some(kept_marker(&target_db, id));
            return Err(Error::refused(format!(
                "database {name}, the name this restore works under, exists{}; nothing was changed",
                if kept {
                    " (a failed restore of this backup, kept by --keep-failed)"
                } else {
                    ""
                }
            ))
            .with_hint(format!(
                "drop database {name} once you no longer need it, then restore again"
            )));
        }
    }
    Ok(RestorePlan {
        job: job.name.clone(),
        timezone: job.timezone.clone(),
        backup,
        storage,
        target_db,
        requested_at: match request.selector {
            Selector::At(at) => Some(at),
            _ => None,
        },
        method,
        target_properties,
        leftovers,
        clean: request.clean,
        keep_failed: request.keep_failed,
        globals: request.globals,
        flags: request.flags,
        crypt,
    })
}
