//! What a point-in-time restore will do, decided before anything is
//! written: the base backup (the newest whose data is consistent at or
//! before the moment), the WAL to replay from it across timeline switches,
//! the recovery window the archive covers, and the target directory; and
//! the moments it must refuse: before the window, after it, or past a gap.
//! Its `Display` is what `--dry-run` prints.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use super::lay::{self, TargetDir};
use super::scan::{self, TxEnd};
use super::{RecoverySettings, Target};
use crate::archive::crypt::Crypt;
use crate::catalog::{self, Manifest, Physical};
use crate::error::{Error, Kind, Result};
use crate::model::{BackupJob, Database, Job, WalSettings};
use crate::pg::cluster::ServerInstall;
use crate::report::bytes_human;
use crate::storage::Storage;
use crate::time;
use crate::wal::chain::{Chain, chain_to};
use crate::wal::{Archived, History, Segment, WalFile, object};

/// Segments read backwards from the end of the archive for its last
/// transaction, and forwards from the moment for the first after it.
const SCAN_LIMIT: usize = 64;
/// A storage's clock and the database server's may disagree: the scan for
/// the first transaction after the moment starts at a segment archived
/// this long before it.
const CLOCK_MARGIN: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

/// What the operator asked for.
#[derive(Debug, Clone)]
pub struct PitrRequest {
    pub target: Target,
    /// `--timeline`: recover along this timeline instead of the newest.
    pub timeline: Option<u32>,
    pub storage: Option<String>,
    pub dir: PathBuf,
    pub force: bool,
    pub pause: bool,
    /// `--archive`: the restored server archives into the job; else (and
    /// in drills) it does not.
    pub archive: bool,
    pub port: Option<u16>,
    /// How the restored server runs `backup wal fetch`: this binary and
    /// this configuration, as absolute paths.
    pub exe: PathBuf,
    pub config: Option<PathBuf>,
}

/// The recovery window: from the oldest base backup's end to the archive's
/// last transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    pub from: Timestamp,
    pub to: Option<Timestamp>,
    /// How `to` is known: `"transaction"` (the last commit in the archive,
    /// read with pg_waldump) or `"archived"` (when the newest segment
    /// reached the storage: the last transaction is at or before it).
    pub to_from: &'static str,
}

/// The WAL a restore replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalRange {
    pub first: String,
    pub last: String,
    pub segments: u64,
    pub bytes: u64,
    pub timelines: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct PitrPlan {
    pub job: String,
    pub timezone: TimeZone,
    pub backup: Manifest,
    pub storage: String,
    pub crypt: Crypt,
    pub target: Target,
    pub window: Window,
    pub wal: WalRange,
    /// The first transaction after the moment: recovery stops before it.
    pub stops_before: Option<TxEnd>,
    pub target_dir: PathBuf,
    pub dir: TargetDir,
    pub install: ServerInstall,
    /// An incremental `backup`: the backups it is combined with, the full
    /// one first, and the `pg_combinebackup` of its major.
    pub chain: Vec<Manifest>,
    /// What opens each backup of `chain`: a chain may span a key change.
    pub chain_crypts: Vec<Crypt>,
    pub combine: Option<PathBuf>,
    pub settings: RecoverySettings,
    pub space_needed: u64,
    pub space_free: Option<u64>,
    /// What the plan could not establish, said.
    pub notes: Vec<String>,
}

impl PitrPlan {
    pub fn physical(&self) -> Result<&Physical> {
        self.backup.physical.as_ref().ok_or_else(|| {
            Error::internal(format!("backup {} is not a base backup", self.backup.id))
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "job": self.job,
            "backup": self.backup.id,
            "storage": self.storage,
            "target": self.target,
            "window": self.window,
            "wal": self.wal,
            "stops_before": self.stops_before,
            // The timeline recovery ends on (before its promotion).
            "timeline": self.wal.timelines.last(),
            "requested_timeline": self.settings.timeline,
            "target_dir": self.target_dir,
            "existing_entries": self.dir.existing,
            "space_needed": self.space_needed,
            "space_free": self.space_free,
            "server": self.install.bindir,
            "chain": self.chain.iter().map(|m| m.id.to_string()).collect::<Vec<_>>(),
            "combine": self.combine,
            "notes": self.notes,
        })
    }
}

impl fmt::Display for PitrPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.backup;
        let show = |at: Timestamp| time::show(at, &self.timezone);
        writeln!(f, "point-in-time restore plan for job {}:", self.job)?;
        match self.target {
            Target::Time(at) => writeln!(f, "  recover to: {}", show(at))?,
            Target::Latest => writeln!(f, "  recover to: the end of the archive (--latest)")?,
        }
        if let Some(p) = &b.physical {
            writeln!(
                f,
                "  base:       {} from storage {} (consistent at {}, timeline {}, {} raw)",
                b.id,
                self.storage,
                show(p.stop_time),
                p.timeline,
                bytes_human(b.raw_size())
            )?;
        }
        if !self.chain.is_empty() {
            writeln!(
                f,
                "  chain:      incremental on {} ({} raw in all): combined with {}",
                self.chain
                    .iter()
                    .map(|m| m.id.to_string())
                    .collect::<Vec<_>>()
                    .join(" + "),
                bytes_human(self.chain.iter().map(Manifest::raw_size).sum::<u64>() + b.raw_size()),
                self.combine
                    .as_deref()
                    .map_or("pg_combinebackup".into(), |p| p.display().to_string())
            )?;
        }
        writeln!(
            f,
            "  wal:        {} .. {} ({} segments, {}{})",
            self.wal.first,
            self.wal.last,
            self.wal.segments,
            bytes_human(self.wal.bytes),
            if self.wal.timelines.len() > 1 {
                format!(
                    ", timelines {}",
                    self.wal
                        .timelines
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" → ")
                )
            } else {
                String::new()
            }
        )?;
        if let Some(tx) = &self.stops_before {
            writeln!(
                f,
                "  stops:      before transaction {} ({} at {})",
                tx.xid,
                if tx.abort { "aborted" } else { "committed" },
                show(tx.at)
            )?;
        }
        writeln!(
            f,
            "  window:     {} .. {}",
            show(self.window.from),
            match self.window.to {
                Some(to) if self.window.to_from == "transaction" =>
                    format!("{} (the archive's last transaction)", show(to)),
                Some(to) => format!("{} (when its newest segment was archived)", show(to)),
                None => "unknown".to_owned(),
            }
        )?;
        writeln!(
            f,
            "  into:       {} ({}), mode 0700",
            self.target_dir.display(),
            match (&self.dir.staging, self.dir.existing) {
                (_, 0) => "new or empty".to_owned(),
                (Some(staging), n) => format!(
                    "holds {n} entries: kept until the restored directory is complete in {}, \
                     then swapped in and removed",
                    staging.display()
                ),
                (None, n) => format!("holds {n} entries"),
            }
        )?;
        writeln!(
            f,
            "  space:      {} needed ({}, and WAL fetched a few segments ahead){}",
            bytes_human(self.space_needed),
            if self.chain.is_empty() {
                "the base backup"
            } else {
                "each backup of the chain unpacked beside the target, and the data directory \
                 combined from them"
            },
            self.space_free
                .map(|free| format!(", {} free", bytes_human(free)))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "  server:     {} ({})",
            self.install.version,
            self.install.bindir.display()
        )?;
        writeln!(
            f,
            "  then:       recovery_target_action = {}, {}",
            if self.settings.pause {
                "pause"
            } else {
                "promote"
            },
            if self.settings.archive {
                "archive_mode as backed up (--archive: once promoted, it archives its new \
                 timeline into this job)"
            } else {
                "archive_mode = off (--archive for a restore that becomes the primary)"
            }
        )?;
        for note in &self.notes {
            writeln!(f, "  note:       {note}")?;
        }
        Ok(())
    }
}

/// The job's archive, all storages together: what recovery reads.
struct Archive {
    objects: Vec<Archived>,
    /// Each segment name: the copy to read (from `storage_of`) and the
    /// earliest time a storage dates it.
    segments: BTreeMap<String, (usize, Option<Timestamp>)>,
    histories: Vec<History>,
    /// What opens its objects.
    crypt: Crypt,
}

/// Decides what a point-in-time restore of physical job `job` will do.
pub async fn plan(
    job: &Job,
    spec: &BackupJob,
    database: &Database,
    wal: &WalSettings,
    storages: &[Arc<dyn Storage>],
    request: &PitrRequest,
) -> Result<PitrPlan> {
    // The base backups, from the first storage that answers (or the one named).
    let selector = match request.target {
        Target::Time(at) => catalog::Selector::At(at),
        Target::Latest => catalog::Selector::Latest,
    };
    let (chosen, storage_name) =
        match crate::jobs::restore::choose(job, storages, request.storage.as_deref(), &selector)
            .await
        {
            Ok(found) => found,
            Err(e) if e.kind() == Kind::NotFound && request.target != Target::Latest => {
                return Err(before_window(job, storages, request).await.unwrap_or(e));
            }
            Err(e) => return Err(e),
        };
    let storage = crate::jobs::restore::named(storages, &storage_name)?.clone();
    let listing = catalog::list(storage.as_ref(), &job.name).await?;
    let bases: Vec<&Manifest> = listing
        .backups
        .iter()
        .filter(|m| m.physical.is_some())
        .collect();
    let oldest = bases
        .iter()
        .filter_map(|m| m.physical.as_ref().map(|p| p.stop_time))
        .min();
    // The newest base backup consistent at or before the moment whose
    // chain (for an incremental one) is whole: a backup taken by its id's
    // time may have ended after it.
    let mut candidates: Vec<&Manifest> = match request.target {
        Target::Latest => bases.clone(),
        Target::Time(at) => bases
            .iter()
            .filter(|m| m.physical.as_ref().is_some_and(|p| p.stop_time <= at))
            .copied()
            .collect(),
    };
    candidates.sort_by_key(|m| {
        std::cmp::Reverse((m.physical.as_ref().map(|p| p.stop_time), m.id.clone()))
    });
    let mut notes = Vec::new();
    let mut chosen_chain = None;
    for candidate in candidates {
        match chain_of(candidate, &bases) {
            Ok(chain) => {
                chosen_chain = Some((candidate, chain));
                break;
            }
            Err(why) => notes.push(format!(
                "base backup {} is passed over: {why}; an older one is used",
                candidate.id
            )),
        }
    }
    let (backup, chain) = match chosen_chain {
        Some((backup, chain)) => (Some(backup), chain),
        None => (None, Vec::new()),
    };
    let Some(backup) = backup.cloned() else {
        if chosen.physical.is_none() {
            return Err(not_physical(job, &chosen));
        }
        if let Some(why) = notes.first() {
            return Err(Error::integrity(format!(
                "job {}: no base backup at or before the moment can be restored: {why}; \
                 nothing was written",
                job.name
            ))
            .with_hint("`backup verify --job J` names what is missing; choose a later moment"));
        }
        let at = request.target.time().unwrap_or_default();
        return Err(Error::refused(format!(
            "{} is before the recovery window of job {}, which begins at {} (the end of its \
             oldest base backup); nothing was written",
            time::show(at, &job.timezone),
            job.name,
            oldest.map_or("?".to_owned(), |o| time::show(o, &job.timezone))
        ))
        .with_hint(
            "choose a later moment; `backup list --job` shows the base backups and `backup \
             status` the window",
        ));
    };
    let physical = backup
        .physical
        .clone()
        .ok_or_else(|| not_physical(job, &backup))?;
    // What is cheap to refuse first: a directory in the way, a key missing.
    let dir = lay::check_target(&request.dir, request.force, backup.id.as_str())?;
    let crypt = catalog::opener(storage.as_ref(), &backup, spec.keys()).await?;
    let major = backup.server_major();
    let install = crate::pg::cluster::find_server(database, major)?;
    if install.major != major {
        return Err(Error::tool(format!(
            "backup {} is of PostgreSQL {major}, and the server found to recover it with is \
             {} ({}): a base backup starts only with the binaries of its own major version",
            backup.id,
            install.version,
            install.bindir.display()
        ))
        .with_hint(format!(
            "install postgresql-{major}, or list its bin directory in pg_bin_dirs (or point \
             pg_bin_dir at it)"
        )));
    }
    let combine = if chain.is_empty() {
        None
    } else {
        Some(combine_tool(database, &install, major)?)
    };
    let mut chain_crypts = Vec::with_capacity(chain.len());
    for link in &chain {
        chain_crypts.push(catalog::opener(storage.as_ref(), link, spec.keys()).await?);
    }
    let archive = read_archive(storages, &job.name, &crypt, spec).await?;
    let size = physical.wal_segment_size;
    let from = Segment::parse(&physical.wal_start, size)
        .ok_or_else(|| Error::integrity(format!("backup {} names no first segment", backup.id)))?;
    let path = chain_to(
        &archive.objects,
        &archive.histories,
        from,
        physical.start_lsn,
        size,
        request.timeline,
    );
    if let Some(t) = request.timeline
        && !path.timelines.contains(&t)
    {
        return Err(Error::refused(format!(
            "timeline {t} does not descend from the timeline of base backup {} ({}) after it \
             began: recovery from it cannot reach that timeline; nothing was written",
            backup.id, physical.timeline
        ))
        .with_hint("leave out --timeline to follow the newest timeline, or choose another base backup by --at"));
    }
    if !path.missing_history.is_empty() {
        notes.push(format!(
            "timelines {:?} have segments in the archive and no history file: recovery does not \
             follow them",
            path.missing_history
        ));
    }
    let order = path_segments(&path);
    // The backup itself needs every segment to its end.
    let stop = Segment::parse(&physical.wal_stop, size)
        .ok_or_else(|| Error::integrity(format!("backup {} names no last segment", backup.id)))?;
    let stop_index = order.iter().position(|s| *s == stop).ok_or_else(|| {
        Error::integrity(format!(
            "the WAL path from base backup {} does not pass its last segment {}: the archive's \
             timelines branch before the backup ended",
            backup.id, physical.wal_stop
        ))
        .with_hint("`backup verify --job J --wal` shows the timelines; choose another base backup with --at or --timeline")
    })?;
    let waldump = install.bindir.join("pg_waldump");
    let waldump = waldump.is_file().then_some(waldump);
    if waldump.is_none() {
        notes.push(format!(
            "no pg_waldump in {}: the window's end is when the newest segment was archived, and \
             a moment after the last transaction fails at the end of recovery instead of here",
            install.bindir.display()
        ));
    }
    let held = |s: &Segment| archive.segments.contains_key(&s.name(size));
    let reach = order
        .iter()
        .position(|s| !held(s))
        .map_or(order.len(), |i| i);
    let zone = &job.timezone;
    let gap_text = |i: usize| {
        let missing = order[i];
        let last_held = i.checked_sub(1).map(|j| order[j]);
        let resumes = order[i..].iter().find(|s| held(s));
        format!(
            "segment {} is missing from the archive{}{}",
            missing.name(size),
            last_held
                .and_then(|s| archive.segments.get(&s.name(size)).and_then(|(_, at)| *at))
                .map(|at| format!(
                    ": recovery cannot pass the gap after {}",
                    time::show(at, zone)
                ))
                .unwrap_or_default(),
            resumes
                .and_then(|s| archive.segments.get(&s.name(size)).and_then(|(_, at)| *at))
                .map(|at| format!(" (the archive resumes at {})", time::show(at, zone)))
                .unwrap_or_default()
        )
    };
    if reach <= stop_index {
        return Err(Error::integrity(format!(
            "base backup {} of job {} cannot be recovered: {}; nothing was written",
            backup.id,
            job.name,
            gap_text(reach)
        ))
        .with_hint("`backup verify --job J --wal` names every gap; choose a later base backup with a later --at"));
    }
    // The end of the window: the last transaction on the path, else when
    // its newest segment was archived.
    let newest = order[reach - 1];
    let dated = |s: &Segment| archive.segments.get(&s.name(size)).and_then(|(_, at)| *at);
    let mut window = Window {
        from: oldest.unwrap_or(physical.stop_time),
        to: dated(&newest),
        to_from: "archived",
    };
    if let Some(waldump) = &waldump {
        let tail = order[stop_index..reach].iter().rev().take(SCAN_LIMIT);
        let mut later: Option<&Segment> = None;
        for s in tail {
            let pair: Vec<&Segment> = std::iter::once(s).chain(later).collect();
            let scanned = scan_pair(&archive, storages, &pair, size, waldump).await?;
            if let Some(last) = scanned.ends.iter().map(|t| t.at).max() {
                window.to = Some(last);
                window.to_from = "transaction";
                break;
            }
            later = Some(s);
        }
    }
    let (last_index, stops_before) = match request.target {
        Target::Latest => {
            if reach < order.len() {
                return Err(Error::integrity(format!(
                    "--latest: {}; recovery would stop there, before the newest archived WAL; \
                     nothing was written",
                    gap_text(reach)
                ))
                .with_hint("restore to a moment before the gap with --at, or restore the missing segment into the archive"));
            }
            (reach - 1, None)
        }
        Target::Time(at) => {
            // At or past the last transaction before a gap, the moment is
            // beyond the gap; with no gap, beyond the archive.
            if let Some(to) = window.to
                && at >= to
            {
                if reach < order.len() {
                    return Err(in_gap(job, at, &gap_text(reach)));
                }
                return Err(after_window(job, at, &window));
            }
            // The first transaction after the moment, searched from a
            // segment archived well before it, never past a gap.
            let start = order[stop_index..reach]
                .iter()
                .rposition(|s| dated(s).is_some_and(|d| d < at - CLOCK_MARGIN))
                .map_or(stop_index, |i| stop_index + i);
            match &waldump {
                None => {
                    let first_after = order[start..]
                        .iter()
                        .position(|s| dated(s).is_some_and(|d| d > at))
                        .map(|i| start + i);
                    match first_after {
                        Some(i) if i < reach => (i, None),
                        Some(i) => return Err(in_gap(job, at, &gap_text(i.min(reach)))),
                        None if reach < order.len() => {
                            return Err(in_gap(job, at, &gap_text(reach)));
                        }
                        None => return Err(after_window(job, at, &window)),
                    }
                }
                Some(waldump) => {
                    let mut found = None;
                    for (i, s) in order.iter().enumerate().skip(start).take(SCAN_LIMIT) {
                        if !held(s) {
                            return Err(in_gap(job, at, &gap_text(i)));
                        }
                        let next = order.get(i + 1).filter(|n| held(n));
                        let pair: Vec<&Segment> = std::iter::once(s).chain(next).collect();
                        let scanned = scan_pair(&archive, storages, &pair, size, waldump).await?;
                        if let Some(tx) = scanned.ends.into_iter().find(|t| t.at > at) {
                            found = Some((i + usize::from(next.is_some()), tx));
                            break;
                        }
                    }
                    match found {
                        Some((i, tx)) => (i, Some(tx)),
                        None if reach < order.len() && start + SCAN_LIMIT > reach => {
                            return Err(in_gap(job, at, &gap_text(reach)));
                        }
                        None if start + SCAN_LIMIT >= order.len() => {
                            return Err(after_window(job, at, &window));
                        }
                        None => {
                            notes.push(format!(
                                "no transaction ends in the {SCAN_LIMIT} segments read from {}: \
                                 recovery reads on until it finds one",
                                order[start].name(size)
                            ));
                            (reach - 1, None)
                        }
                    }
                }
            }
        }
    };
    let replayed = &order[..=last_index];
    if replayed.iter().any(|s| s.timeline != physical.timeline) {
        notes.push(format!(
            "recovery follows timeline {} after the base backup's timeline {} (--timeline {} stays on it)",
            replayed.last().map_or(0, |s| s.timeline),
            physical.timeline,
            physical.timeline
        ));
    }
    let wal_range = WalRange {
        first: physical.wal_start.clone(),
        last: order[last_index].name(size),
        segments: replayed.len() as u64,
        bytes: replayed.len() as u64 * size,
        timelines: {
            let mut t: Vec<u32> = replayed.iter().map(|s| s.timeline).collect();
            t.dedup();
            t
        },
    };
    // The base backup lands whole; WAL passes a few segments at a time
    // (fetched ahead, then recycled by the server).
    // A chain is unpacked whole, then combined into a directory about as
    // large as all of it (less where hard links work, not counted on).
    let chain_size: u64 = chain.iter().map(Manifest::raw_size).sum::<u64>() + backup.raw_size();
    let laid_size = if chain.is_empty() {
        backup.raw_size()
    } else {
        2 * chain_size
    };
    let space_needed = laid_size + (u64::from(wal.fetch_ahead) + 3) * size;
    let space_free = free_space(&request.dir);
    if let Some(free) = space_free
        && free < space_needed
    {
        return Err(Error::refused(format!(
            "{} has {} free, and the restore needs {}; nothing was written",
            existing_ancestor(&request.dir).display(),
            bytes_human(free),
            bytes_human(space_needed)
        ))
        .with_hint("restore into a --target-dir on a file system with room"));
    }
    // The chain's spool is beside the target: on another file system (the
    // target a mount point of its own) it needs the chain's size there.
    if !chain.is_empty() {
        let spool = lay::combining_spool(&request.dir, backup.id.as_str())?;
        let spool_fs = existing_ancestor(&spool);
        if !same_file_system(&spool_fs, &existing_ancestor(&request.dir))
            && let Some(free) = free_space(&spool_fs)
            && free < chain_size
        {
            return Err(Error::refused(format!(
                "{} has {} free, and the chain unpacked there before it is combined needs {}; \
                 nothing was written",
                spool_fs.display(),
                bytes_human(free),
                bytes_human(chain_size)
            ))
            .with_hint("make room beside the --target-dir, or restore into another one"));
        }
    }
    reachable_by_server(request)?;
    let settings = RecoverySettings {
        restore_command: restore_command(request, &job.name),
        target: request.target,
        pause: request.pause,
        // The timeline the plan followed, not 'latest': a history file
        // written since (a copy restored elsewhere and promoted) must not
        // send recovery down another branch than the one planned.
        timeline: request.timeline.or(wal_range.timelines.last().copied()),
        port: request.port,
        archive: request.archive,
    };
    Ok(PitrPlan {
        job: job.name.clone(),
        timezone: job.timezone.clone(),
        backup,
        storage: storage_name,
        crypt,
        target: request.target,
        window,
        wal: wal_range,
        stops_before,
        target_dir: request.dir.clone(),
        dir,
        install,
        chain,
        chain_crypts,
        combine,
        settings,
        space_needed,
        space_free,
        notes,
    })
}

/// The backups an incremental `backup` is combined with, the full one first,
/// from `bases` (one storage's); why not, when one is missing or is not the
/// one it was taken against.
pub fn chain_of(
    backup: &Manifest,
    bases: &[&Manifest],
) -> std::result::Result<Vec<Manifest>, String> {
    let mut chain = Vec::new();
    let mut at = backup;
    while let Some(parent) = at.physical.as_ref().and_then(|p| p.incremental_of.as_ref()) {
        let Some(found) = bases.iter().find(|m| m.id == parent.backup) else {
            return Err(format!(
                "it is incremental on backup {}, which is not complete in this storage",
                parent.backup
            ));
        };
        let matches = found
            .physical
            .as_ref()
            .is_some_and(|p| p.start_lsn == parent.start_lsn && p.timeline == parent.timeline)
            && found.system_identifier == at.system_identifier;
        if !matches || chain.len() > 1000 {
            return Err(format!(
                "it is incremental on backup {} from {} on timeline {}, and that backup is not \
                 the one it was taken against",
                parent.backup, parent.start_lsn, parent.timeline
            ));
        }
        chain.push((*found).clone());
        at = found;
    }
    chain.reverse();
    Ok(chain)
}

/// The `pg_combinebackup` of `major`: the server's own, else one in the
/// client search list of that major exactly (its control file format
/// changes between majors).
fn combine_tool(database: &Database, install: &ServerInstall, major: u32) -> Result<PathBuf> {
    let own = install.bindir.join("pg_combinebackup");
    if own.is_file() {
        return Ok(own);
    }
    crate::pg::holding(database, "pg_combinebackup")
        .into_iter()
        .find(|(m, _)| *m == major)
        .map(|(_, dir)| dir.join("pg_combinebackup"))
        .ok_or_else(|| {
            Error::tool(format!(
                "the base backup is incremental, and no pg_combinebackup of PostgreSQL {major} \
                 was found to combine its chain (not in {}); nothing was written",
                install.bindir.display()
            ))
            .with_hint(format!(
                "install postgresql-{major} (or postgresql{major} on RPM systems), or list its \
                 bin directory in pg_bin_dirs"
            ))
        })
}

/// The error for a moment before every base backup, naming the window.
async fn before_window(
    job: &Job,
    storages: &[Arc<dyn Storage>],
    request: &PitrRequest,
) -> Option<Error> {
    let at = request.target.time()?;
    let bases = crate::jobs::wal_status::base_backups(storages, &job.name)
        .await
        .ok()?;
    let oldest = bases
        .iter()
        .filter_map(|m| m.physical.as_ref().map(|p| p.stop_time))
        .min()?;
    Some(
        Error::refused(format!(
            "{} is before the recovery window of job {}, which begins at {} (the end of its \
             oldest base backup); nothing was written",
            time::show(at, &job.timezone),
            job.name,
            time::show(oldest, &job.timezone)
        ))
        .with_hint("choose a later moment; `backup status` shows the window"),
    )
}

fn after_window(job: &Job, at: Timestamp, window: &Window) -> Error {
    let zone = &job.timezone;
    Error::refused(format!(
        "{} is after the recovery window of job {} ({} .. {}{}); nothing was written",
        time::show(at, zone),
        job.name,
        time::show(window.from, zone),
        window.to.map_or("?".to_owned(), |t| time::show(t, zone)),
        if window.to_from == "transaction" {
            ", the archive's last transaction"
        } else {
            ", when its newest segment was archived"
        }
    ))
    .with_hint(format!(
        "WAL written since is not archived until its segment fills: run `backup wal check --job \
         {}` (it switches WAL and waits for the archive), then restore again; or restore \
         everything archived with --latest",
        job.name
    ))
}

fn in_gap(job: &Job, at: Timestamp, gap: &str) -> Error {
    Error::integrity(format!(
        "{} cannot be reached: {gap}; nothing was written",
        time::show(at, &job.timezone)
    ))
    .with_hint(format!(
        "choose a moment before the gap, or one after a base backup taken after it; `backup \
         verify --job {} --wal` names every gap",
        job.name
    ))
}

fn not_physical(job: &Job, backup: &Manifest) -> Error {
    Error::integrity(format!(
        "backup {} of job {} is not a base backup",
        backup.id, job.name
    ))
    .with_hint("it was made while the job was a logical one: restore it with --target-db")
}

/// Every segment on the path, in the order recovery reads them.
fn path_segments(path: &Chain) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut first = path.from.number;
    for (tli, leg_first, last) in &path.legs {
        for number in (*leg_first).max(first)..=*last {
            out.push(Segment {
                timeline: *tli,
                number,
            });
        }
        first = last + 1;
    }
    if out.is_empty() {
        out.push(path.from);
    }
    out
}

/// The archive as every storage together holds it.
async fn read_archive(
    storages: &[Arc<dyn Storage>],
    job: &str,
    crypt: &Crypt,
    spec: &BackupJob,
) -> Result<Archive> {
    let mut objects: Vec<Archived> = Vec::new();
    let mut segments: BTreeMap<String, (usize, Option<Timestamp>)> = BTreeMap::new();
    let mut history_objects: Vec<(usize, Archived)> = Vec::new();
    let mut listed = 0;
    let mut failed = None;
    for (i, storage) in storages.iter().enumerate() {
        let dated = match object::list_dated(storage.as_ref(), job).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("storage {}: {e}", storage.name());
                failed = Some(e);
                continue;
            }
        };
        listed += 1;
        for (a, at) in dated {
            match &a.file {
                WalFile::Segment(name) => {
                    let entry = segments.entry(name.clone()).or_insert((i, at));
                    entry.1 = match (entry.1, at) {
                        (Some(x), Some(y)) => Some(x.min(y)),
                        (x, y) => x.or(y),
                    };
                }
                WalFile::History(_) => history_objects.push((i, a.clone())),
                _ => {}
            }
            objects.push(a);
        }
    }
    if listed == 0 {
        return Err(failed.unwrap_or_else(|| Error::internal("no storage to read")));
    }
    let crypt = wal_crypt(crypt, &objects, spec)?;
    let mut histories: Vec<History> = Vec::new();
    for (i, a) in &history_objects {
        let found =
            object::histories(storages[*i].as_ref(), std::slice::from_ref(a), &crypt).await?;
        for h in found {
            if !histories.iter().any(|have| have.timeline == h.timeline) {
                histories.push(h);
            }
        }
    }
    Ok(Archive {
        objects,
        segments,
        histories,
        crypt,
    })
}

/// The identities that open the archive's objects: the base backup's, or
/// the job's when only the WAL is sealed.
fn wal_crypt(crypt: &Crypt, objects: &[Archived], spec: &BackupJob) -> Result<Crypt> {
    if matches!(crypt, Crypt::Open(_)) || !objects.iter().any(|a| a.encrypted) {
        return Ok(crypt.clone());
    }
    let keys = spec.keys();
    let identities = crate::keys::Identities::load(
        keys.and_then(|e| e.passphrase.as_ref()),
        keys.and_then(|e| e.identity_file.as_deref()),
    )?
    .ok_or_else(|| {
        Error::refused("the WAL archive is encrypted with age, and no identity to decrypt it is given; nothing was written")
            .with_hint(format!(
                "set {} to the secret key (or the path of its file), or identity_file in the job's `encryption`",
                crate::keys::IDENTITY_ENV
            ))
    })?;
    Ok(Crypt::Open(Arc::new(identities)))
}

/// Lists the transactions that end in `pair` (a segment and its successor).
async fn scan_pair(
    archive: &Archive,
    storages: &[Arc<dyn Storage>],
    pair: &[&Segment],
    size: u64,
    waldump: &Path,
) -> Result<scan::Scanned> {
    let Some(first) = pair.first() else {
        return Ok(scan::Scanned { ends: Vec::new() });
    };
    let name = first.name(size);
    let Some((storage_index, _)) = archive.segments.get(&name) else {
        return Ok(scan::Scanned { ends: Vec::new() });
    };
    let storage = &storages[*storage_index];
    let mut chosen: Vec<&Archived> = Vec::new();
    for s in pair {
        let n = s.name(size);
        // The copy in the storage the first segment is read from; a
        // successor only another storage holds is left out.
        if let Some(a) = archive.objects.iter().find(|a| {
            matches!(&a.file, WalFile::Segment(x) if *x == n)
                && archive
                    .segments
                    .get(&n)
                    .is_some_and(|(i, _)| i == storage_index)
        }) {
            chosen.push(a);
        }
    }
    scan::transactions(storage.as_ref(), &chosen, &archive.crypt, waldump).await
}

/// `'<exe>' --config '<config>' wal fetch --job '<job>' %f %p`, quoted for
/// the shell PostgreSQL runs it with.
fn restore_command(request: &PitrRequest, job: &str) -> String {
    // `%` is PostgreSQL's: a path holding one is written `%%`.
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''").replace('%', "%%"));
    let mut command = quote(&request.exe.to_string_lossy());
    if let Some(config) = &request.config {
        command.push_str(" --config ");
        command.push_str(&quote(&config.to_string_lossy()));
    }
    command.push_str(" wal fetch --job ");
    command.push_str(&quote(job));
    command.push_str(" %f %p");
    command
}

/// Run as root, the server runs as `postgres`, and so does its
/// `restore_command`: that user must be able to run this binary and read
/// the job file, or recovery fails only after the directory is written.
fn reachable_by_server(request: &PitrRequest) -> Result<()> {
    if crate::pg::cluster::server_user()?.is_none() {
        return Ok(());
    }
    let mut test = std::process::Command::new("runuser");
    test.args(["-u", "postgres", "--", "test", "-x"])
        .arg(&request.exe);
    if let Some(config) = &request.config {
        test.arg("-a").arg("-r").arg(config);
    }
    match test.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => Err(Error::refused(format!(
            "the server's user postgres cannot run {}{}: recovery runs `backup wal fetch` as \
             that user; nothing was written",
            request.exe.display(),
            request
                .config
                .as_ref()
                .map(|c| format!(" or cannot read {}", c.display()))
                .unwrap_or_default()
        ))
        .with_hint(
            "install backup where postgres can run it (/usr/local/bin) and make the job file \
             (and the key files it names) readable by postgres, as for `wal push`",
        )),
        Err(e) => Err(Error::io(Kind::Tool, "running runuser", e)
            .with_hint("run as the server's user instead of root")),
    }
}

/// The nearest existing directory at or above `dir`.
fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|p| p.is_dir())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn same_file_system(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev(),
        _ => true,
    }
}

/// Free bytes where `dir` is (or would be created).
fn free_space(dir: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(&existing_ancestor(dir)).ok()?;
    Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base backup started at `start` (its segment number), incremental
    /// on `parent` (its id and start) when given.
    fn base(id: &str, start: u64, parent: Option<(&str, u64, u32)>) -> Manifest {
        let lsn = |segment: u64| format!("0/{:X}", segment << 24 | 0x28);
        let mut format = 1;
        let mut physical = serde_json::json!({
            "timeline": 1, "start_lsn": lsn(start), "stop_lsn": lsn(start + 1),
            "start_time": "2026-01-01T00:00:00Z", "stop_time": "2026-01-01T00:00:10Z",
            "wal_segment_size": 16777216,
            "wal_start": format!("0000000100000000{start:08X}"),
            "wal_stop": format!("0000000100000000{:08X}", start + 1),
            "manifest_checksums": "CRC32C"
        });
        if let Some((backup, from, chain_length)) = parent {
            format = 2;
            physical["incremental_of"] = serde_json::json!({
                "backup": backup, "start_lsn": lsn(from), "timeline": 1,
                "chain_length": chain_length
            });
        }
        serde_json::from_value(serde_json::json!({
            "format": format, "id": id, "job": "base", "database": "app", "dbname": "postgres",
            "server_version": "18.1", "pg_dump_version": "18.1",
            "snapshot_at": "2026-01-01T00:00:10Z", "started_at": "2026-01-01T00:00:00Z",
            "finished_at": "2026-01-01T00:00:10Z", "compression": "none", "encryption": null,
            "objects": [{ "key": "base.tar", "role": "base", "raw_size": 1,
                "raw_sha256": "0".repeat(64), "stored_size": 1, "stored_sha256": "0".repeat(64) }],
            "tables": [], "system_identifier": "7",
            "physical": physical
        }))
        .unwrap()
    }

    #[test]
    fn an_incremental_backup_is_combined_with_every_backup_back_to_its_full_one() {
        let full = base("20260101T000000Z", 2, None);
        let first = base("20260102T000000Z", 4, Some(("20260101T000000Z", 2, 2)));
        let second = base("20260103T000000Z", 6, Some(("20260102T000000Z", 4, 3)));
        let all = [&full, &first, &second];
        for m in all {
            assert_eq!(m.problem("base", &m.id), None);
        }
        let ids = |chain: Vec<Manifest>| -> Vec<String> {
            chain.into_iter().map(|m| m.id.to_string()).collect()
        };
        assert_eq!(ids(chain_of(&full, &all).unwrap()), Vec::<String>::new());
        assert_eq!(
            ids(chain_of(&second, &all).unwrap()),
            ["20260101T000000Z", "20260102T000000Z"]
        );
        // A link gone: the backup cannot be restored, and says which.
        let e = chain_of(&second, &[&full, &second]).unwrap_err();
        assert!(
            e.contains("incremental on backup 20260102T000000Z, which is not complete"),
            "{e}"
        );
        // A link that is not the backup it was taken against (another start).
        let other = base("20260102T000000Z", 5, Some(("20260101T000000Z", 2, 2)));
        let e = chain_of(&second, &[&full, &other, &second]).unwrap_err();
        assert!(e.contains("is not the one it was taken against"), "{e}");
        // The format says which it is: an older version must not read an
        // incremental backup as a full one.
        let mut old = second.clone();
        old.format = 1;
        assert!(
            old.problem("base", &old.id)
                .is_some_and(|w| w.contains("format 2 is for"))
        );
        let mut new = full.clone();
        new.format = 2;
        assert!(
            new.problem("base", &new.id)
                .is_some_and(|w| w.contains("format 2 is for"))
        );
        // A parent that does not start before its child is not a manifest we read.
        let backwards = base("20260104T000000Z", 2, Some(("20260103T000000Z", 6, 4)));
        let why = backwards.problem("base", &backwards.id);
        assert!(why.is_some_and(|w| w.contains("not before its own start")));
    }

    #[test]
    fn the_restore_command_survives_the_shell() {
        let request = PitrRequest {
            target: Target::Latest,
            timeline: None,
            storage: None,
            dir: "/srv/restore".into(),
            force: false,
            pause: false,
            archive: true,
            port: None,
            exe: "/usr/local/bin/backup".into(),
            config: Some("/etc/backup/it's 100%.toml".into()),
        };
        assert_eq!(
            restore_command(&request, "base"),
            r"'/usr/local/bin/backup' --config '/etc/backup/it'\''s 100%%.toml' wal fetch --job 'base' %f %p"
        );
    }
}
