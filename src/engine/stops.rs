//! What a stop (SIGINT, SIGTERM) leaves behind, for every kind of work: the
//! one table the run records, `backup run` and the other commands read, so an
//! operator is told the same thing however the stop reached the work.

use std::path::Path;

use crate::model::JobKind;

/// A piece of work that a signal may stop.
#[derive(Debug, Clone, Copy)]
pub enum Stop<'a> {
    /// A run of a job (a backup, maintenance, prune or restore-test job).
    Job(&'a JobKind),
    /// A `backup run` that did not stop within its time: which job it was
    /// running is not known any more.
    AnyJob,
    Restore {
        target_db: &'a str,
        in_place: bool,
    },
    RestoreDir {
        target: &'a Path,
        force: bool,
        in_place: bool,
    },
    Drill {
        /// Into a server named by `--target-url`, not a throwaway cluster.
        on_server: bool,
    },
    Prune,
    /// `pin` or `unpin`, which change the backup in each storage in turn.
    Pin,
    /// Work that changes nothing, or only its own record: list, verify, pin...
    Nothing,
}

/// What the stop left, and what to do about it.
pub fn left_behind(stop: Stop<'_>) -> (String, String) {
    let (what, hint): (String, String) = match stop {
        Stop::Job(kind) => return job(kind),
        Stop::AnyJob => (
            "the job in progress was stopped before it finished; its unfinished uploads were \
             aborted"
                .into(),
            "run the job again".into(),
        ),
        Stop::Restore {
            target_db,
            in_place: true,
        } => (
            format!("the restore was stopped; if it had begun, database {target_db} is incomplete"),
            format!("drop database {target_db}, or restore again"),
        ),
        Stop::Restore { target_db, .. } => (
            format!(
                "the restore was stopped: database {target_db} is as it was, unless the stop \
                 came after the proven copy was swapped in; the copy being restored beside it \
                 is dropped"
            ),
            "restore again".into(),
        ),
        Stop::RestoreDir {
            target,
            force: true,
            in_place: false,
        } => (
            format!(
                "the restore was stopped: directory {} is as it was, unless the stop came after \
                 the restored copy was swapped in; a partial copy beside it is removed by the \
                 next restore into it",
                target.display()
            ),
            "restore again".into(),
        ),
        Stop::RestoreDir { target, .. } => (
            format!(
                "the restore was stopped; if it had begun, directory {} holds part of the backup",
                target.display()
            ),
            format!(
                "restore again with --force into {}, or into a new directory",
                target.display()
            ),
        ),
        Stop::Drill { on_server: true } => (
            "the drill was stopped; the database it was restoring on the --target-url server is \
             incomplete"
                .into(),
            "drop that database, then run the drill again".into(),
        ),
        Stop::Drill { on_server: false } => (
            "the drill was stopped; its throwaway cluster was stopped and its files removed".into(),
            "run the drill again".into(),
        ),
        Stop::Prune => (
            "prune was stopped: each backup it had begun deleting lost its manifest first, so \
             none is listed half-deleted"
                .into(),
            "run `backup prune` again to finish".into(),
        ),
        Stop::Pin => (
            "the pin (or unpin) was stopped: the backup may be pinned in some of its storages \
             and not in others"
                .into(),
            "run the command again: it finishes what was begun".into(),
        ),
        Stop::Nothing => ("nothing was changed".into(), "run the command again".into()),
    };
    (what, hint)
}

/// What a run of a job of `kind` leaves.
fn job(kind: &JobKind) -> (String, String) {
    let what = match kind {
        JobKind::Backup(_) => {
            "the backup in progress has no manifest, so it is never listed or restored"
        }
        JobKind::Maintenance(_) => "the statement running was cancelled; the next run plans again",
        JobKind::Prune(_) => {
            "a backup being deleted lost its manifest first, so none is listed half-deleted; \
             the next run finishes"
        }
        JobKind::RestoreTest(_) => {
            "pg_restore was stopped and the scratch database is being dropped; the next run \
             drops it if it is left"
        }
    };
    (what.into(), "run the job again".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stop_names_what_it_left_and_what_to_do() {
        let dir = Path::new("/srv/uploads");
        for stop in [
            Stop::AnyJob,
            Stop::Restore {
                target_db: "app",
                in_place: true,
            },
            Stop::Restore {
                target_db: "app",
                in_place: false,
            },
            Stop::RestoreDir {
                target: dir,
                force: true,
                in_place: false,
            },
            Stop::RestoreDir {
                target: dir,
                force: false,
                in_place: false,
            },
            Stop::Drill { on_server: true },
            Stop::Drill { on_server: false },
            Stop::Prune,
            Stop::Pin,
            Stop::Nothing,
        ] {
            let (what, hint) = left_behind(stop);
            assert!(!what.is_empty() && !hint.is_empty(), "{stop:?}");
        }
        let (what, hint) = left_behind(Stop::Restore {
            target_db: "app",
            in_place: true,
        });
        assert!(what.contains("database app is incomplete"), "{what}");
        assert_eq!(hint, "drop database app, or restore again");
    }
}
