//! Which backup a restore means: the newest, one by id, or the newest as
//! of a time, and never a newer one than asked for.

use jiff::Timestamp;

use super::Manifest;
use crate::error::{Error, Result};
use crate::model::BackupId;

/// Which backup a restore wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Id(BackupId),
    /// The newest backup whose data is as of this instant or earlier.
    At(Timestamp),
}

/// Picks the backup `selector` names from `backups` (newest first). Never falls
/// back to a newer backup than asked for.
/// `zone` is the job's, for times in messages.
pub fn select<'a>(
    backups: &'a [Manifest],
    selector: &Selector,
    job: &str,
    zone: &jiff::tz::TimeZone,
) -> Result<&'a Manifest> {
    if backups.is_empty() {
        return Err(
            Error::not_found(format!("job {job} has no complete backups"))
                .with_hint(format!("run `backup run {job}` first, or check --storage")),
        );
    }
    let found = match selector {
        Selector::Latest => backups
            .iter()
            .max_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at)),
        Selector::Id(id) => backups.iter().find(|m| &m.id == id),
        Selector::At(at) => backups
            .iter()
            .filter(|m| m.snapshot_at <= *at)
            .max_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at)),
    };
    found.ok_or_else(|| {
        let oldest = backups
            .iter()
            .min_by(|a, b| a.snapshot_at.cmp(&b.snapshot_at));
        let oldest = oldest.map_or(String::new(), |m| {
            format!(
                "{} (data as of {})",
                m.id,
                crate::time::show(m.snapshot_at, zone)
            )
        });
        match selector {
            Selector::Id(id) => Error::not_found(format!("job {job} has no complete backup {id}"))
                .with_hint(format!(
                    "`backup list --job {job}` shows the backups there are"
                )),
            _ => Error::not_found(format!(
                "no backup of job {job} is as old as the requested time; the oldest is {oldest}"
            ))
            .with_hint("pick a later time: a restore never uses data newer than asked for"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::fixtures::manifest;

    fn backups() -> Vec<Manifest> {
        vec![
            manifest("20240121T030000Z", "2024-01-21T03:00:01Z"),
            manifest("20240120T030000Z", "2024-01-20T03:00:01Z"),
            manifest("20240119T030000Z", "2024-01-19T03:00:01Z"),
        ]
    }

    fn pick(b: &[Manifest], selector: Selector) -> Result<String> {
        select(b, &selector, "nightly", &jiff::tz::TimeZone::UTC).map(|m| m.id.to_string())
    }

    fn at(t: &str) -> Selector {
        Selector::At(t.parse().unwrap())
    }

    #[test]
    fn at_picks_the_newest_backup_not_after_the_time() {
        let b = backups();
        assert_eq!(
            pick(&b, at("2024-01-20T14:30:00Z")).unwrap(),
            "20240120T030000Z"
        );
        assert_eq!(
            pick(&b, at("2024-01-20T03:00:01Z")).unwrap(),
            "20240120T030000Z"
        );
        assert_eq!(
            pick(&b, at("2024-01-20T03:00:00Z")).unwrap(),
            "20240119T030000Z"
        );
        assert_eq!(
            pick(&b, at("2030-01-01T00:00:00Z")).unwrap(),
            "20240121T030000Z"
        );
    }

    #[test]
    fn at_before_the_first_backup_names_the_oldest() {
        let err = pick(&backups(), at("2024-01-01T00:00:00Z")).unwrap_err();
        assert_eq!(err.kind(), crate::error::Kind::NotFound);
        assert!(
            err.message()
                .contains("20240119T030000Z (data as of 2024-01-19 03:00:01 UTC)"),
            "{err}"
        );
    }

    #[test]
    fn latest_and_id() {
        let b = backups();
        assert_eq!(pick(&b, Selector::Latest).unwrap(), "20240121T030000Z");
        let id = BackupId::parse("20240119T030000Z").unwrap();
        assert_eq!(pick(&b, Selector::Id(id)).unwrap(), "20240119T030000Z");
        let missing = BackupId::parse("20240101T030000Z").unwrap();
        assert!(pick(&b, Selector::Id(missing)).is_err());
        let none = pick(&[], Selector::Latest).unwrap_err();
        assert!(none.message().contains("no complete backups"));
    }
}
