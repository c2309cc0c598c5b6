//! `backup verify --job J --wal`: the WAL archive of a physical job, read
//! back in every storage. Recovery from the oldest complete base backup must
//! be able to replay every segment from that backup's start to the newest
//! archived one, across timeline switches: this follows that path
//! ([`crate::wal::chain`]), names every run of segments missing from it with
//! the times it breaks, and reads every archived object once (a few at a
//! time) against the digest its name carries.
//!
//! Nothing is written. A gap or a corrupt object is an integrity failure; a
//! storage that could not give an object, a storage failure.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::archive::crypt::Crypt;
use crate::catalog;
use crate::error::{Error, Kind, Result};
use crate::model::EncryptionSpec;
use crate::storage::Storage;
use crate::wal::chain::chain;
use crate::wal::names::DEFAULT_SEGMENT_SIZE;
use crate::wal::{Archived, Chain, History, Segment, WalFile, object};

/// Objects read at once from one storage.
const READS_AT_ONCE: usize = 4;

/// The sizes PostgreSQL allows for `wal_segment_size`: a power of two from
/// 1 MiB to 1 GiB.
fn is_segment_size(size: u64) -> bool {
    size.is_power_of_two() && ((1 << 20)..=(1 << 30)).contains(&size)
}

/// One run of segments the path lacks, with when the archived segments
/// either side of it were written.
#[derive(Debug, Clone, Serialize)]
pub struct GapReport {
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// The archived segments either side; `before` is `None` when the path's
    /// first segment is missing.
    pub before: Option<String>,
    pub after: Option<String>,
    /// When `before` and `after` were archived, where the storage says.
    pub before_at: Option<Timestamp>,
    pub after_at: Option<Timestamp>,
}

impl GapReport {
    /// `missing A .. B (2 segments): recovery cannot pass from T1 to T2`.
    pub fn describe(&self, zone: &TimeZone) -> String {
        let when = |at: Option<Timestamp>, segment: &Option<String>| match (at, segment) {
            (Some(at), _) => crate::time::show(at, zone),
            (None, Some(s)) => format!("segment {s}"),
            (None, None) => "its start".to_owned(),
        };
        let range = if self.first == self.last {
            format!("missing {} (1 segment)", self.first)
        } else {
            format!(
                "missing {} .. {} ({} segments)",
                self.first, self.last, self.segments
            )
        };
        match &self.before {
            Some(_) => format!(
                "{range}: recovery cannot pass from {} to {}",
                when(self.before_at, &self.before),
                when(self.after_at, &self.after)
            ),
            None => format!(
                "{range}: recovery from the start of the path cannot begin; the archive \
                 resumes at {}",
                when(self.after_at, &self.after)
            ),
        }
    }
}

/// An archived object that did not read back as its name says.
#[derive(Debug, Clone, Serialize)]
pub struct BadObject {
    pub key: String,
    /// A segment recovery from the base backup replays.
    pub on_path: bool,
    pub error: String,
}

/// The WAL archive of a job in one storage.
#[derive(Debug, Clone, Serialize)]
pub struct WalCheck {
    pub storage: String,
    /// The first segment of the path: the oldest base backup's, else the
    /// oldest archived one.
    pub from: Option<String>,
    /// That base backup; `None` when the job has none in this storage.
    pub from_backup: Option<String>,
    /// Backups whose manifest does not read: not considered as a start
    /// (`backup verify --job J` names what is wrong with them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_backups: Vec<String>,
    pub segment_size: u64,
    /// Segments of the path the archive holds (corrupt ones included).
    pub segments: u64,
    /// The last segment of the path, and when it was archived.
    pub newest: Option<String>,
    pub newest_at: Option<Timestamp>,
    /// The newest segment recovery reaches from `from` without crossing a
    /// gap or a corrupt segment.
    pub reachable: Option<String>,
    pub timelines: Vec<u32>,
    /// Archived objects read, and their raw bytes.
    pub objects: u64,
    pub bytes: u64,
    pub gaps: Vec<GapReport>,
    pub corrupt: Vec<BadObject>,
    /// Objects the storage could not give: nothing is known against them.
    pub unread: Vec<BadObject>,
}

impl WalCheck {
    /// Intact: a path with something on it, no gap, nothing corrupt or unread.
    pub fn ok(&self) -> bool {
        self.newest.is_some()
            && self.gaps.is_empty()
            && self.corrupt.is_empty()
            && self.unread.is_empty()
    }

    /// What is wrong, in one line; `None` when intact.
    pub fn problem(&self, zone: &TimeZone) -> Option<String> {
        let mut parts = Vec::new();
        if self.newest.is_none() {
            parts.push(match (&self.from_backup, &self.from) {
                (Some(id), Some(from)) => format!(
                    "no segment is archived from {from} on: base backup {id} cannot be recovered"
                ),
                _ => "no WAL segment is archived".to_owned(),
            });
        }
        parts.extend(self.gaps.iter().map(|g| g.describe(zone)));
        parts.extend(
            self.corrupt
                .iter()
                .map(|b| format!("{} is corrupt: {}", b.key, b.error)),
        );
        parts.extend(
            self.unread
                .iter()
                .map(|b| format!("{} could not be read: {}", b.key, b.error)),
        );
        (!parts.is_empty()).then(|| format!("storage {}: {}", self.storage, parts.join("; ")))
    }

    /// What the failure is: integrity when something is missing or corrupt,
    /// storage when objects could only not be read.
    fn failure_kind(&self) -> Kind {
        if self.newest.is_none() || !self.gaps.is_empty() || !self.corrupt.is_empty() {
            Kind::Integrity
        } else {
            Kind::Storage
        }
    }
}

/// The error a verify that found `checks` ends with; `None` when every
/// storage's archive is intact.
pub fn failure(job: &str, checks: &[WalCheck], zone: &TimeZone) -> Option<Error> {
    let problems: Vec<String> = checks.iter().filter_map(|c| c.problem(zone)).collect();
    if problems.is_empty() {
        return None;
    }
    let message = format!(
        "job {job}: the WAL archive is not intact: {}",
        problems.join("; ")
    );
    let bad = checks.iter().filter(|c| !c.ok());
    if bad
        .clone()
        .all(|c| c.newest.is_none() && c.from_backup.is_none())
    {
        return Some(Error::not_found(message).with_hint(format!(
            "is archive_command set to push to this job? `backup wal check --job {job}` proves it"
        )));
    }
    if bad.clone().all(|c| c.failure_kind() == Kind::Storage) {
        return Some(Error::storage(message).with_hint(
            "nothing was found wrong with the archive: the storage failed while it was read; \
             check the storage and run verify again",
        ));
    }
    Some(Error::integrity(message).with_hint(format!(
        "recovery stops at a missing or corrupt segment: copy it from another storage of the \
         job if one holds it intact; else take a new base backup (`backup run {job}`) so that \
         point-in-time recovery starts after the break, and find what broke it \
         (wal_queue_max, a storage that was down, objects deleted or changed by hand)"
    )))
}

/// Verifies the WAL archive of `job` in every storage, one after the other.
pub async fn verify(
    job: &str,
    storages: &[Arc<dyn Storage>],
    keys: Option<&EncryptionSpec>,
) -> Result<Vec<WalCheck>> {
    let mut crypt = Keys::new(keys);
    let mut checks = Vec::with_capacity(storages.len());
    for storage in storages {
        tracing::info!(
            "verifying the WAL archive of job {job} in storage {}",
            storage.name()
        );
        checks.push(
            verify_storage(job, storage, &mut crypt)
                .await
                .map_err(|e| e.context(format!("job {job}: storage {}", storage.name())))?,
        );
    }
    Ok(checks)
}

/// The identities to open encrypted objects, loaded the first time one is
/// found: an archive in clear needs no key on this host.
struct Keys<'a> {
    spec: Option<&'a EncryptionSpec>,
    loaded: Option<Crypt>,
}

impl<'a> Keys<'a> {
    fn new(spec: Option<&'a EncryptionSpec>) -> Keys<'a> {
        Keys { spec, loaded: None }
    }

    fn for_objects(&mut self, archived: &[(Archived, Option<Timestamp>)]) -> Result<Crypt> {
        if !archived.iter().any(|(a, _)| a.encrypted) {
            return Ok(Crypt::None);
        }
        if let Some(crypt) = &self.loaded {
            return Ok(crypt.clone());
        }
        let identities = crate::keys::Identities::load(
            self.spec.and_then(|e| e.passphrase.as_ref()),
            self.spec.and_then(|e| e.identity_file.as_deref()),
        )?
        .ok_or_else(|| {
            Error::refused(
                "the WAL archive is encrypted with age, and no identity to decrypt it is given",
            )
            .with_hint(format!(
                "set {} to the secret key (or the path of its file), or identity_file in the \
                 job's `encryption`",
                crate::keys::IDENTITY_ENV
            ))
        })?;
        let crypt = Crypt::Open(Arc::new(identities));
        self.loaded = Some(crypt.clone());
        Ok(crypt)
    }
}

/// How reading one object went: its raw size, or why it did not read.
type ReadResult = std::result::Result<u64, Error>;

async fn read_one(storage: &dyn Storage, archived: &Archived, crypt: &Crypt) -> ReadResult {
    object::read(storage, archived, crypt, std::io::sink())
        .await
        .map(|(size, _)| size)
}

async fn verify_storage(
    job: &str,
    storage: &Arc<dyn Storage>,
    keys: &mut Keys<'_>,
) -> Result<WalCheck> {
    let archived = object::list_dated(storage.as_ref(), job).await?;
    let crypt = keys.for_objects(&archived)?;
    // The oldest complete base backup: where recovery can start.
    let listing = catalog::list(storage.as_ref(), job).await?;
    let oldest = listing
        .backups
        .iter()
        .filter(|m| m.physical.is_some())
        .min_by(|a, b| a.id.cmp(&b.id));
    let mut results: HashMap<usize, ReadResult> = HashMap::new();

    let histories = read_histories(storage.as_ref(), &archived, &crypt, &mut results).await;

    let segments: Vec<(usize, &str)> = archived
        .iter()
        .enumerate()
        .filter_map(|(i, (a, _))| match &a.file {
            WalFile::Segment(name) => Some((i, name.as_str())),
            _ => None,
        })
        .collect();
    let segment_size = match oldest
        .and_then(|m| m.physical.as_ref())
        .map(|p| p.wal_segment_size)
        .filter(|s| is_segment_size(*s))
    {
        Some(size) => size,
        None => {
            learn_segment_size(storage.as_ref(), &archived, &segments, &crypt, &mut results).await
        }
    };
    let parsed: Vec<(usize, Segment)> = segments
        .iter()
        .filter_map(|&(i, name)| Segment::parse(name, segment_size).map(|s| (i, s)))
        .collect();
    let from = match oldest.and_then(|m| m.physical.as_ref()) {
        Some(p) => Some(Segment::parse(&p.wal_start, segment_size).ok_or_else(|| {
            Error::integrity(format!(
                "the manifest of backup {} names first segment '{}', which is not one",
                oldest.map(|m| m.id.to_string()).unwrap_or_default(),
                p.wal_start
            ))
        })?),
        None => parsed
            .iter()
            .map(|(_, s)| *s)
            .min_by_key(|s| (s.number, s.timeline)),
    };

    // Every other object, a few at a time.
    let pending: Vec<usize> = (0..archived.len())
        .filter(|i| !results.contains_key(i))
        .collect();
    let read: Vec<(usize, ReadResult)> = futures::stream::iter(pending)
        .map(|i| {
            let crypt = &crypt;
            let archived = &archived;
            async move { (i, read_one(storage.as_ref(), &archived[i].0, crypt).await) }
        })
        .buffer_unordered(READS_AT_ONCE)
        .collect()
        .await;
    results.extend(read);

    let objects: Vec<Archived> = archived.iter().map(|(a, _)| a.clone()).collect();
    // Where the backup began, for the timeline it continues on.
    let start = |from: Segment| {
        oldest
            .and_then(|m| m.physical.as_ref())
            .map(|p| p.start_lsn)
            .unwrap_or(from.start(segment_size))
    };
    let path = from.map(|from| chain(&objects, &histories, from, start(from), segment_size));
    // Recovery stops at a corrupt segment as at a missing one: the path
    // again, without them, says how far it gets and which are on it.
    let corrupt: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.as_ref().is_err_and(|e| e.kind() == Kind::Integrity))
        .map(|(i, _)| *i)
        .collect();
    let without = |left_out: &[usize]| -> Vec<Archived> {
        objects
            .iter()
            .enumerate()
            .filter(|(i, _)| !left_out.contains(i))
            .map(|(_, a)| a.clone())
            .collect()
    };
    let intact = match (from, &path) {
        (Some(from), Some(_)) if !corrupt.is_empty() => Some(chain(
            &without(&corrupt),
            &histories,
            from,
            start(from),
            segment_size,
        )),
        _ => path.clone(),
    };
    // A bad copy is in recovery's way when its segment is on the path and
    // no other copy of it reads.
    let read_well: std::collections::HashSet<&WalFile> = objects
        .iter()
        .enumerate()
        .filter(|(j, _)| results.get(j).is_some_and(|r| r.is_ok()))
        .map(|(_, o)| &o.file)
        .collect();
    let on_path = |i: usize| -> bool {
        match (&objects[i].file, &path) {
            (WalFile::Segment(name), Some(full)) if !read_well.contains(&objects[i].file) => {
                Segment::parse(name, segment_size).is_some_and(|s| full.contains(s))
            }
            _ => false,
        }
    };

    let dated: HashMap<Segment, Timestamp> = {
        let mut out: HashMap<Segment, Timestamp> = HashMap::new();
        for (i, s) in &parsed {
            if let Some(at) = archived[*i].1 {
                let earliest = out.entry(*s).or_insert(at);
                *earliest = (*earliest).min(at);
            }
        }
        out
    };
    let name = |s: Segment| s.name(segment_size);
    let gaps = path
        .as_ref()
        .map(|c: &Chain| {
            c.gaps
                .iter()
                .map(|g| GapReport {
                    first: name(g.first),
                    last: name(g.last),
                    segments: g.segments(),
                    before: g.before.map(name),
                    after: g.after.map(name),
                    before_at: g.before.and_then(|s| dated.get(&s).copied()),
                    after_at: g.after.and_then(|s| dated.get(&s).copied()),
                })
                .collect()
        })
        .unwrap_or_default();

    let mut bad = Vec::new();
    let mut unread = Vec::new();
    let mut bytes = 0;
    let mut order: Vec<usize> = results.keys().copied().collect();
    order.sort_unstable();
    for i in order {
        match &results[&i] {
            Ok(size) => bytes += size,
            Err(e) => {
                let report = BadObject {
                    key: archived[i].0.key.to_string(),
                    on_path: on_path(i),
                    error: strip_label(e.message(), &archived[i].0, storage.name()),
                };
                if e.kind() == Kind::Integrity {
                    bad.push(report);
                } else {
                    unread.push(report);
                }
            }
        }
    }
    Ok(WalCheck {
        storage: storage.name().to_owned(),
        from: from.map(name),
        from_backup: oldest.map(|m| m.id.to_string()),
        unreadable_backups: listing
            .unreadable
            .iter()
            .map(|u| u.id.to_string())
            .collect(),
        segment_size,
        segments: path.as_ref().map_or(0, |c| c.present),
        newest: path.as_ref().and_then(|c| c.newest).map(name),
        newest_at: path
            .as_ref()
            .and_then(|c| c.newest)
            .and_then(|s| dated.get(&s).copied()),
        reachable: intact.as_ref().and_then(Chain::reachable).map(name),
        timelines: path.as_ref().map(followed).unwrap_or_default(),
        objects: archived.len() as u64,
        bytes,
        gaps,
        corrupt: bad,
        unread,
    })
}

/// The timelines of the path up to its newest segment: those it would
/// switch to later are not followed yet.
fn followed(c: &Chain) -> Vec<u32> {
    let Some(newest) = c.newest else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in &c.timelines {
        out.push(*t);
        if *t == newest.timeline {
            break;
        }
    }
    out
}

/// Reads and parses every history file, each once (its result kept in
/// `results`): the path follows them. A damaged one is reported with the
/// other corrupt objects, and the path is followed without it.
async fn read_histories(
    storage: &dyn Storage,
    archived: &[(Archived, Option<Timestamp>)],
    crypt: &Crypt,
    results: &mut HashMap<usize, ReadResult>,
) -> Vec<History> {
    let mut histories: Vec<History> = Vec::new();
    for (i, (a, _)) in archived.iter().enumerate() {
        let WalFile::History(timeline) = a.file else {
            continue;
        };
        let parsed = object::read(storage, a, crypt, Vec::new())
            .await
            .and_then(|(size, bytes)| {
                let text = String::from_utf8(bytes).map_err(|_| {
                    Error::integrity("it is not text, as a timeline history file is")
                })?;
                Ok((size, History::parse(timeline, &text)?))
            });
        match parsed {
            Ok((size, history)) => {
                // Two objects of one timeline's history are refused at push;
                // one is enough here.
                if !histories.iter().any(|h| h.timeline == timeline) {
                    histories.push(history);
                }
                results.insert(i, Ok(size));
            }
            Err(e) => {
                results.insert(i, Err(e));
            }
        }
    }
    histories
}

/// The segment size of an archive without a base backup to say it: the raw
/// size of its oldest segment that reads (each one tried is read once, its
/// result kept in `results`).
async fn learn_segment_size(
    storage: &dyn Storage,
    archived: &[(Archived, Option<Timestamp>)],
    segments: &[(usize, &str)],
    crypt: &Crypt,
    results: &mut HashMap<usize, ReadResult>,
) -> u64 {
    let mut by_age = segments.to_vec();
    by_age.sort_by_key(|(_, name)| segment_order(name));
    for (i, _) in by_age {
        let read = read_one(storage, &archived[i].0, crypt).await;
        let size = read.as_ref().ok().copied().filter(|s| is_segment_size(*s));
        results.insert(i, read);
        if let Some(size) = size {
            return size;
        }
    }
    DEFAULT_SEGMENT_SIZE
}

/// Oldest first: by position in the log, then timeline.
fn segment_order(name: &str) -> (&str, &str) {
    (&name[8..], &name[..8])
}

/// The error of reading `archived`, without the object's name, which the
/// report gives beside it.
fn strip_label(message: &str, archived: &Archived, storage: &str) -> String {
    let label = format!("{} in storage {storage}", archived.key);
    message
        .replacen(&format!("reading {label}: "), "", 1)
        .replacen(&format!("{label} is "), "", 1)
        .replacen(&format!("{label}: "), "", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Compression;
    use crate::storage::Key;
    use crate::storage::MemoryStorage;

    const SIZE: u64 = 1 << 20;

    fn put(storage: &MemoryStorage, file: WalFile, bytes: &[u8]) -> Key {
        let sha = crate::archive::sha256_hex(bytes);
        let key = file.key("j", &sha, Compression::None, false).unwrap();
        storage.put(&key, bytes.to_vec());
        key
    }

    fn segment(n: u64) -> WalFile {
        WalFile::Segment(
            Segment {
                timeline: 1,
                number: n,
            }
            .name(SIZE),
        )
    }

    #[tokio::test]
    async fn gaps_and_corrupt_objects_are_named_and_the_rest_read() {
        let memory = MemoryStorage::new("mem");
        let mut keys = HashMap::new();
        for n in [2, 3, 6, 7, 8] {
            keys.insert(n, put(&memory, segment(n), &vec![n as u8; SIZE as usize]));
        }
        // Other bytes under segment 7's name: its digest does not match.
        let damaged = keys[&7].clone();
        memory.put(&damaged, vec![1u8; SIZE as usize]);
        let storage: Arc<dyn Storage> = Arc::new(memory);
        let checks = verify("j", std::slice::from_ref(&storage), None)
            .await
            .unwrap();
        let c = &checks[0];
        assert_eq!(c.segment_size, SIZE, "learnt from the oldest segment");
        assert_eq!(c.from.as_deref(), Some("000000010000000000000002"));
        assert_eq!(c.from_backup, None);
        assert_eq!(c.newest.as_deref(), Some("000000010000000000000008"));
        assert_eq!(c.objects, 5);
        assert_eq!(c.gaps.len(), 1);
        let gap = &c.gaps[0];
        assert_eq!(
            (gap.first.as_str(), gap.last.as_str(), gap.segments),
            ("000000010000000000000004", "000000010000000000000005", 2)
        );
        assert_eq!(
            gap.describe(&TimeZone::UTC),
            "missing 000000010000000000000004 .. 000000010000000000000005 (2 segments): \
             recovery cannot pass from segment 000000010000000000000003 to segment \
             000000010000000000000006"
        );
        assert_eq!(c.corrupt.len(), 1);
        assert_eq!(c.corrupt[0].key, damaged.to_string());
        assert!(c.corrupt[0].on_path);
        assert!(
            c.corrupt[0].error.contains("raw sha256"),
            "{}",
            c.corrupt[0].error
        );
        assert_eq!(c.reachable.as_deref(), Some("000000010000000000000003"));
        let err = failure("j", &checks, &TimeZone::UTC).unwrap();
        assert_eq!(err.kind(), Kind::Integrity);
        assert!(
            err.message().contains("missing 000000010000000000000004"),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn an_unbroken_archive_passes_and_an_empty_one_is_not_found() {
        let memory = MemoryStorage::new("mem");
        // Timeline 2 began in segment 3: the path reads 1-2 from timeline
        // 1, then 3-4 from timeline 2; timeline 1's own 3 is left aside.
        for n in 1..=3 {
            put(&memory, segment(n), &vec![n as u8; SIZE as usize]);
        }
        for n in 3..=4 {
            let name = Segment {
                timeline: 2,
                number: n,
            }
            .name(SIZE);
            put(
                &memory,
                WalFile::Segment(name),
                &vec![n as u8 + 10; SIZE as usize],
            );
        }
        put(
            &memory,
            WalFile::History(2),
            b"1\t0/300100\tno recovery target specified\n",
        );
        let storage: Arc<dyn Storage> = Arc::new(memory);
        let checks = verify("j", std::slice::from_ref(&storage), None)
            .await
            .unwrap();
        assert!(checks[0].ok(), "{:?}", checks[0]);
        assert_eq!(checks[0].segments, 4);
        assert_eq!(checks[0].objects, 6);
        assert_eq!(checks[0].timelines, vec![1, 2]);
        assert_eq!(
            checks[0].newest.as_deref(),
            Some("000000020000000000000004")
        );
        assert!(failure("j", &checks, &TimeZone::UTC).is_none());

        let empty: Arc<dyn Storage> = Arc::new(MemoryStorage::new("empty"));
        let checks = verify("j", &[empty], None).await.unwrap();
        assert!(!checks[0].ok());
        let err = failure("j", &checks, &TimeZone::UTC).unwrap();
        assert_eq!(err.kind(), Kind::NotFound, "{}", err.message());
    }

    #[tokio::test]
    async fn a_damaged_copy_beside_an_intact_one_is_named_off_the_path() {
        let memory = MemoryStorage::new("mem");
        for n in 1..=3 {
            put(&memory, segment(n), &vec![n as u8; SIZE as usize]);
        }
        // A second object for segment 2 (two clusters pushing once), damaged.
        let other = put(&memory, segment(2), &vec![9u8; SIZE as usize]);
        memory.put(&other, vec![8u8; SIZE as usize]);
        let storage: Arc<dyn Storage> = Arc::new(memory);
        let checks = verify("j", &[storage], None).await.unwrap();
        let c = &checks[0];
        assert!(c.gaps.is_empty());
        assert_eq!(c.corrupt.len(), 1);
        assert_eq!(c.corrupt[0].key, other.to_string());
        assert!(!c.corrupt[0].on_path);
        assert_eq!(c.reachable.as_deref(), Some("000000010000000000000003"));
        // Still a failure: the archive holds a damaged object.
        assert_eq!(
            failure("j", &checks, &TimeZone::UTC).unwrap().kind(),
            Kind::Integrity
        );
    }
}
