//! `type = "maintenance"` jobs: the tasks, which tables they work on, and
//! the daily window they may start in.

use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::{Database, StorageSpec};

/// `type = "maintenance"`: VACUUM, ANALYZE and REINDEX where statistics say
/// they help, without queueing behind (or in front of) the application.
#[derive(Debug, Clone)]
pub struct MaintenanceJob {
    pub database: Arc<Database>,
    /// In the order they run on each table.
    pub tasks: Vec<Task>,
    pub targets: Targets,
    /// How long one statement may wait for a table's lock before it gives up.
    pub lock_timeout: std::time::Duration,
    /// How many more times a table whose lock was busy is tried.
    pub lock_retries: u32,
    /// When new tables may be started, in the job's zone.
    pub window: Option<Window>,
    /// REINDEX ... CONCURRENTLY (the default) rather than a plain REINDEX.
    pub reindex_concurrently: bool,
    /// Where run records go: the file's `reports`, else its first storage.
    pub reports: Option<Arc<StorageSpec>>,
}

impl MaintenanceJob {
    /// Whether the job takes locks that would stall a dump, or be stalled by
    /// one: such jobs wait for dumps of their database to end, and dumps for
    /// them. REINDEX CONCURRENTLY counts: it waits for every transaction older
    /// than itself, a running dump's included.
    pub fn is_heavy(&self) -> bool {
        self.tasks
            .iter()
            .any(|t| matches!(t, Task::VacuumFull | Task::Reindex))
    }
}

/// One kind of maintenance work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    Vacuum,
    Analyze,
    VacuumAnalyze,
    Freeze,
    VacuumFull,
    Reindex,
}

impl Task {
    pub const ALL: [(&'static str, Task); 6] = [
        ("vacuum", Task::Vacuum),
        ("analyze", Task::Analyze),
        ("vacuum-analyze", Task::VacuumAnalyze),
        ("freeze", Task::Freeze),
        ("vacuum-full", Task::VacuumFull),
        ("reindex", Task::Reindex),
    ];

    pub fn name(self) -> &'static str {
        Task::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map_or("?", |(n, _)| n)
    }
}

/// Which tables and indexes a maintenance job works on.
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    /// Every table and index in scope, whatever the statistics say.
    pub all: bool,
    /// `schema.table` or `table` patterns with `*` and `?`; empty means every table.
    pub tables: Vec<String>,
    pub exclude: Vec<String>,
    /// Dead tuples as a share of live plus dead.
    pub min_dead_ratio: f64,
    pub min_dead_tuples: i64,
    /// Tables (with their indexes and TOAST) smaller than this are left alone.
    pub min_table_size: u64,
    /// The share of an index that is empty space, above which it is rebuilt.
    pub min_index_bloat: f64,
    /// The share of a table that is empty space, above which VACUUM FULL pays.
    pub min_table_bloat: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            all: false,
            tables: Vec::new(),
            exclude: Vec::new(),
            min_dead_ratio: 0.1,
            min_dead_tuples: 1000,
            min_table_size: 1 << 20,
            min_index_bloat: 0.3,
            min_table_bloat: 0.3,
        }
    }
}

/// A daily stretch of wall-clock time, `02:00-05:00`; it may cross midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: jiff::civil::Time,
    pub end: jiff::civil::Time,
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Option<Window> {
        let (start, end) = text.split_once('-')?;
        let time = |t: &str| -> Option<jiff::civil::Time> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (i8, i8) = (h.parse().ok()?, m.parse().ok()?);
            jiff::civil::Time::new(h, m, 0, 0).ok()
        };
        let window = Window {
            start: time(start)?,
            end: time(end)?,
        };
        (window.start != window.end).then_some(window)
    }

    /// Whether `at`, in `zone`, falls inside the window.
    pub fn contains(&self, at: Timestamp, zone: &TimeZone) -> bool {
        let t = at.to_zoned(zone.clone()).time();
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            self.start.strftime("%H:%M"),
            self.end.strftime("%H:%M")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_may_cross_midnight() {
        let zone = TimeZone::get("Asia/Tokyo").unwrap();
        let at = |t: &str| -> Timestamp {
            format!("2026-11-25T{t}:00+09:00[Asia/Tokyo]")
                .parse::<jiff::Zoned>()
                .unwrap()
                .timestamp()
        };
        let night = Window::parse("22:00-05:00").unwrap();
        assert!(night.contains(at("23:30"), &zone));
        assert!(night.contains(at("04:59"), &zone));
        assert!(!night.contains(at("05:00"), &zone));
        assert!(!night.contains(at("12:00"), &zone));
        let early = Window::parse("02:00-05:00").unwrap();
        assert!(early.contains(at("02:00"), &zone));
        assert!(!early.contains(at("01:59"), &zone));
        for bad in ["02:00", "2-5", "25:00-05:00", "02:00-02:00", "02:00-05:61"] {
            assert!(Window::parse(bad).is_none(), "{bad}");
        }
    }
}
