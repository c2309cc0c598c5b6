//! The status page: every job's state and its last 90 days as one HTML
//! document, served by the daemon at `/` and written by `backup report
//! --html`. Pure functions from a [`Page`] to a `String`.
//!
//! The page is read-only and self-contained: inline CSS and SVG, no script,
//! no font or image fetched from anywhere, so it works offline, behind a
//! strict proxy, and as a file attached to a ticket. Everything taken from
//! records or the job files is escaped. Failing jobs come first, and a
//! failure is said in words (FAILED) as well as in colour.

use std::fmt::Write as _;

use jiff::Timestamp;

use super::svg::{self, Point, Series, Unit};
use super::{JobPage, PAGE_DAYS, Page};
use crate::report::html::{document, escape};
use crate::report::{Outcome, RunRecord, bytes_human};
use crate::time::show_duration;

/// How many runs the table of last runs lists.
const LAST_RUNS: usize = 10;

/// How a job stands, worst first: the page's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    Failing,
    Warning,
    Ok,
}

impl Standing {
    fn name(self) -> &'static str {
        match self {
            Standing::Failing => "failing",
            Standing::Warning => "warning",
            Standing::Ok => "ok",
        }
    }

    /// The badge: colour for the eye, a word for everyone.
    fn badge(self) -> &'static str {
        match self {
            Standing::Failing => "<span class=\"failed\">FAILED</span>",
            Standing::Warning => "<span class=\"warn\">WARNING</span>",
            Standing::Ok => "<span class=\"ok\">OK</span>",
        }
    }
}

fn outcome_of(name: &str) -> Option<Outcome> {
    Outcome::ALL.into_iter().find(|o| o.name() == name)
}

/// Failing: the last run failed, or the WAL archive has a hole recovery
/// cannot pass. Warning: something could not be read, or nothing ran yet.
pub fn standing(job: &JobPage) -> Standing {
    let s = &job.state;
    let last_failed = s
        .last_run
        .as_ref()
        .and_then(|r| outcome_of(r.outcome))
        .is_some_and(Outcome::is_failure);
    let wal_broken = s
        .wal
        .as_ref()
        .is_some_and(|w| !w.archive.gaps.is_empty() || !w.archive.dropped.is_empty());
    if last_failed || wal_broken {
        Standing::Failing
    } else if !s.problems.is_empty() || s.last_run.is_none() {
        Standing::Warning
    } else {
        Standing::Ok
    }
}

/// The whole page.
pub fn render(page: &Page) -> String {
    let mut jobs: Vec<&JobPage> = page.jobs.iter().collect();
    jobs.sort_by(|a, b| (standing(a), &a.state.job).cmp(&(standing(b), &b.state.job)));
    let count = |want: Standing| jobs.iter().filter(|j| standing(j) == want).count();
    let mut body = String::new();
    let _ = writeln!(
        body,
        "<header><h1>Backup status</h1>\n<p>Read from storage at {} UTC; charts cover the last {PAGE_DAYS} days. \
         {} job{}: {} FAILED, {} WARNING, {} OK.</p></header>",
        page.now.strftime("%Y-%m-%d %H:%M:%S"),
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" },
        count(Standing::Failing),
        count(Standing::Warning),
        count(Standing::Ok),
    );
    for job in jobs {
        body.push_str(&render_job(job, page));
    }
    document("Backup status", &body)
}

fn render_job(job: &JobPage, page: &Page) -> String {
    let s = &job.state;
    let now = page.now;
    let standing = standing(job);
    let show = |t: Timestamp| escape(&crate::time::show(t, &job.zone));
    let ago = |t: Timestamp| format!("{} ago", show_duration(now.duration_since(t)));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<section class=\"job is-{}\" id=\"job-{}\" data-job=\"{}\" data-standing=\"{}\">\n\
         <h2>{} {} <span class=\"muted\">({})</span></h2>\n<dl>",
        standing.name(),
        escape(&s.job),
        escape(&s.job),
        standing.name(),
        standing.badge(),
        escape(&s.job),
        escape(s.kind)
    );
    let mut fact = |name: &str, html: String| {
        let _ = writeln!(out, "<dt>{name}</dt><dd>{html}</dd>");
    };
    match &s.schedule {
        Some(expr) => {
            let next: Vec<String> = job.next_runs.iter().map(|t| show(*t)).collect();
            fact(
                "Schedule",
                format!(
                    "<code>{}</code>; next: {}",
                    escape(expr),
                    if next.is_empty() {
                        "none".to_owned()
                    } else {
                        next.join(", ")
                    }
                ),
            );
        }
        None => fact(
            "Schedule",
            "none (runs with <code>backup run</code>)".to_owned(),
        ),
    }
    match &s.last_run {
        Some(r) => fact(
            "Last run",
            format!(
                "{} {} ({}, took {}){}",
                outcome_badge(r.outcome),
                ago(r.finished_at),
                escape(r.trigger),
                crate::time::show_seconds(r.duration_seconds),
                r.error
                    .as_ref()
                    .map(|e| format!(": {}", escape(e)))
                    .unwrap_or_default()
            ),
        ),
        None => fact("Last run", "none recorded".to_owned()),
    }
    match &s.last_success {
        Some(r) => fact(
            "Last success",
            format!("{} ({})", show(r.finished_at), ago(r.finished_at)),
        ),
        None => fact(
            "Last success",
            "<span class=\"warn\">never</span>".to_owned(),
        ),
    }
    if matches!(s.kind, "backup" | "files" | "physical") {
        match &s.newest_backup {
            Some(b) => fact(
                "Newest backup",
                format!(
                    "{}: data as of {}, <strong>{}</strong>; {} stored in {}",
                    escape(&b.id),
                    show(b.snapshot_at),
                    ago(b.snapshot_at),
                    bytes_human(b.stored_size),
                    escape(&b.storages.join(", "))
                ),
            ),
            None => fact(
                "Newest backup",
                "<span class=\"failed\">none</span>".to_owned(),
            ),
        }
    }
    if let Some(w) = &s.wal {
        let window = match &w.archive.window {
            Some(win) => match win.to {
                Some(to) => format!(
                    "{} .. {} (from base backup {})",
                    show(win.from),
                    show(to),
                    escape(&win.base_backup)
                ),
                None => format!(
                    "from {} (no WAL archived after base backup {})",
                    show(win.from),
                    escape(&win.base_backup)
                ),
            },
            None => "none: no base backup".to_owned(),
        };
        let holes = match (w.archive.gaps.len(), w.archive.dropped.len()) {
            (0, 0) => "; no gaps".to_owned(),
            (g, d) => format!(
                "; <span class=\"failed\">FAILED: {g} gap(s), {d} dropped segment(s)</span>"
            ),
        };
        fact("Recovery window", format!("{window}{holes}"));
    }
    if let Some(test) = job.tests.first() {
        fact("Last restore test or drill", tested(test, &show, &ago));
    } else if matches!(s.kind, "backup" | "physical") {
        match &s.last_restore_test {
            Some(r) => fact(
                "Last restore test or drill",
                format!(
                    "restore test passed {} ({}), backup {}",
                    show(r.finished_at),
                    ago(r.finished_at),
                    escape(r.backup_id.as_deref().unwrap_or("?"))
                ),
            ),
            None => fact(
                "Last restore test or drill",
                "<span class=\"warn\">never</span>".to_owned(),
            ),
        }
    }
    for p in &s.problems {
        fact(
            "Problem",
            format!("<span class=\"warn\">{}</span>", escape(p)),
        );
    }
    out.push_str("</dl>\n");
    out.push_str(&runs_table(&job.runs, &show));
    out.push_str(&charts(job, page));
    out.push_str("</section>\n");
    out
}

fn outcome_badge(outcome: &str) -> String {
    let failed = outcome_of(outcome).is_some_and(Outcome::is_failure);
    if failed {
        format!(
            "<span class=\"failed\">{}</span>",
            escape(&outcome.to_uppercase())
        )
    } else if outcome == "succeeded" {
        "<span class=\"ok\">succeeded</span>".to_owned()
    } else {
        escape(outcome)
    }
}

/// A restore test or drill: when, how, and the RTO and RPO it measured.
fn tested(
    r: &RunRecord,
    show: &impl Fn(Timestamp) -> String,
    ago: &impl Fn(Timestamp) -> String,
) -> String {
    let mut text = format!(
        "{} {} {} ({})",
        escape(&r.kind),
        outcome_badge(r.outcome.name()),
        show(r.finished_at),
        ago(r.finished_at)
    );
    if let Some(id) = r.details["backup_id"].as_str() {
        let _ = write!(text, ", backup {}", escape(id));
    }
    if let Some(rto) = r.details["rto_seconds"].as_f64() {
        let _ = write!(text, "; RTO {}", seconds(rto));
    }
    if let Some(rpo) = r.details["rpo_seconds"].as_f64() {
        let _ = write!(text, "; RPO {}", seconds(rpo));
    }
    if let Some(e) = &r.error {
        let _ = write!(text, ": {}", escape(e));
    }
    text
}

fn seconds(s: f64) -> String {
    escape(&crate::jobs::drill::seconds(s))
}

fn runs_table(runs: &[RunRecord], show: &impl Fn(Timestamp) -> String) -> String {
    if runs.is_empty() {
        return "<p class=\"muted\">No run in the window.</p>\n".to_owned();
    }
    let mut out = String::from(
        "<h3>Last runs</h3>\n<table class=\"runs\"><tr><th>Started</th><th>Trigger</th>\
         <th>Outcome</th><th class=\"num\">Duration</th><th>Error</th></tr>\n",
    );
    for r in runs.iter().take(LAST_RUNS) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            show(r.started_at),
            escape(r.trigger.name()),
            outcome_badge(r.outcome.name()),
            show_duration(r.finished_at.duration_since(r.started_at)),
            escape(r.error.as_deref().unwrap_or(""))
        );
    }
    out.push_str("</table>\n");
    out
}

/// The series of one job's charts, read from its records.
pub struct Charted {
    pub stored: Vec<Point>,
    pub raw: Vec<Point>,
    pub duration: Vec<Point>,
    pub rto: Vec<Point>,
    pub dead_before: Vec<Point>,
    pub dead_after: Vec<Point>,
}

/// One point per backup for sizes (a record that names a backup and its
/// sizes), one per run for durations, one per restore test or drill that
/// measured an RTO, one per maintenance run that measured dead tuples.
pub fn charted(job: &JobPage) -> Charted {
    let mut c = Charted {
        stored: Vec::new(),
        raw: Vec::new(),
        duration: Vec::new(),
        rto: Vec::new(),
        dead_before: Vec::new(),
        dead_after: Vec::new(),
    };
    for r in &job.runs {
        let failed = r.outcome.is_failure();
        let id = r.details["backup_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !id.is_empty()
            && let (Some(stored), Some(raw)) = (
                r.details["stored_size"].as_u64(),
                r.details["raw_size"].as_u64(),
            )
        {
            let at = r.details["snapshot_at"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .unwrap_or(r.started_at);
            c.stored.push(point(at, stored as f64, &id, false));
            c.raw.push(point(at, raw as f64, &id, false));
        }
        c.duration.push(point(
            r.started_at,
            r.finished_at.duration_since(r.started_at).as_secs_f64(),
            r.outcome.name(),
            failed,
        ));
        if let Some(steps) = r.details["steps"].as_array() {
            let sum = |side: &str| {
                let values: Vec<i64> = steps
                    .iter()
                    .filter_map(|s| s[side]["dead_tuples"].as_i64())
                    .collect();
                (!values.is_empty()).then(|| values.iter().sum::<i64>())
            };
            if let Some(before) = sum("before") {
                c.dead_before
                    .push(point(r.started_at, before as f64, "", failed));
            }
            if let Some(after) = sum("after") {
                c.dead_after
                    .push(point(r.started_at, after as f64, "", failed));
            }
        }
    }
    let tests = job.tests.iter().chain(if job.tests.is_empty() {
        // A restore-test job's own runs are its tests.
        job.runs
            .iter()
            .filter(|r| r.kind == "restore-test")
            .collect::<Vec<_>>()
    } else {
        Vec::new()
    });
    for r in tests {
        if let Some(rto) = r.details["rto_seconds"].as_f64() {
            let what = format!("{} {}", r.kind, r.job);
            c.rto
                .push(point(r.started_at, rto, &what, r.outcome.is_failure()));
        }
    }
    c
}

fn point(at: Timestamp, value: f64, label: &str, failed: bool) -> Point {
    Point {
        at,
        value,
        label: label.to_owned(),
        failed,
    }
}

fn charts(job: &JobPage, page: &Page) -> String {
    let c = charted(job);
    let name = &job.state.job;
    let mut out = String::new();
    let mut add = |id: &str, title: &str, unit: Unit, series: Vec<Series>| {
        if series.iter().all(|s| s.points.is_empty()) {
            return;
        }
        out.push_str(&svg::chart(
            &format!("{id}-{name}"),
            title,
            unit,
            &series,
            page.from,
            page.now,
        ));
    };
    add(
        "size",
        "Size per backup",
        Unit::Bytes,
        vec![
            series("stored", "#1f5fa8", c.stored),
            series("raw", "#8a5a00", c.raw),
        ],
    );
    add(
        "duration",
        "Run duration",
        Unit::Seconds,
        vec![series("duration", "#444444", c.duration)],
    );
    add(
        "rto",
        "Restore-test and drill RTO",
        Unit::Seconds,
        vec![series("rto", "#17692c", c.rto)],
    );
    add(
        "dead-tuples",
        "Dead tuples before and after maintenance",
        Unit::Count,
        vec![
            series("before", "#b00020", c.dead_before),
            series("after", "#17692c", c.dead_after),
        ],
    );
    if out.is_empty() {
        return out;
    }
    format!("<h3>Last {PAGE_DAYS} days</h3>\n<div class=\"charts\">\n{out}</div>\n")
}

fn series(name: &'static str, colour: &'static str, points: Vec<Point>) -> Series {
    Series {
        name,
        colour,
        points,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Trigger;
    use crate::status::{BackupSummary, JobState, RunSummary};
    use jiff::SignedDuration;

    fn at(hours: i64) -> Timestamp {
        "2026-12-01T00:00:00Z".parse::<Timestamp>().unwrap() + SignedDuration::from_hours(hours)
    }

    fn record(
        job: &str,
        kind: &str,
        hours: i64,
        outcome: Outcome,
        details: serde_json::Value,
    ) -> RunRecord {
        let mut r = RunRecord::begin(
            RunRecord::run_id(at(hours), kind),
            job,
            kind,
            Trigger::Schedule,
            None,
            at(hours),
        );
        r.details = details;
        let error = outcome
            .is_failure()
            .then(|| "<img src=x onerror=alert(1)> broke".to_owned());
        r.end(at(hours) + SignedDuration::from_secs(90), outcome, error);
        r
    }

    fn job(name: &str, kind: &'static str, runs: Vec<RunRecord>) -> JobPage {
        let state = JobState {
            job: name.to_owned(),
            kind,
            schedule: Some("0 3 * * *".into()),
            next_run: None,
            last_run: runs.first().map(RunSummary::from),
            last_success: runs.iter().find(|r| r.succeeded).map(RunSummary::from),
            newest_backup: Some(BackupSummary {
                id: "20261201T030000Z".into(),
                snapshot_at: at(0),
                stored_size: 1024,
                storages: vec!["disk".into()],
            }),
            growth: None,
            last_restore_test: None,
            wal: None,
            problems: vec![],
        };
        JobPage {
            state,
            zone: jiff::tz::TimeZone::UTC,
            next_runs: vec![at(27)],
            runs,
            tests: vec![],
        }
    }

    fn backup(hours: i64, size: u64) -> RunRecord {
        record(
            "nightly",
            "backup",
            hours,
            Outcome::Succeeded,
            serde_json::json!({ "backup_id": format!("b{hours}"), "stored_size": size, "raw_size": size * 3 }),
        )
    }

    fn page(jobs: Vec<JobPage>) -> Page {
        Page {
            now: at(48),
            from: at(48) - SignedDuration::from_hours(24 * PAGE_DAYS),
            jobs,
        }
    }

    #[test]
    fn failing_jobs_come_first_and_say_so_in_words() {
        let good = job("a-good", "backup", vec![backup(24, 2000), backup(0, 1000)]);
        let bad = job(
            "z-<bad>",
            "backup",
            vec![record(
                "z-<bad>",
                "backup",
                30,
                Outcome::Failed,
                serde_json::json!({}),
            )],
        );
        let html = render(&page(vec![good, bad]));
        let bad_at = html.find("data-job=\"z-&lt;bad&gt;\"").unwrap();
        let good_at = html.find("data-job=\"a-good\"").unwrap();
        assert!(bad_at < good_at, "the failed job first");
        assert!(html[bad_at..good_at].contains(">FAILED<"));
        assert!(html.contains("1 FAILED, 0 WARNING, 1 OK"));
        // The section's class is not the badge's: `.ok` would colour it all.
        assert!(html.contains("<section class=\"job is-ok\""));
        // Hostile text from the records is inert.
        assert!(!html.contains("<img") && !html.contains("<bad>"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; broke"));
    }

    #[test]
    fn the_size_chart_has_one_point_per_backup() {
        let mut runs = vec![backup(40, 3000), backup(24, 2000), backup(0, 1000)];
        runs.insert(
            0,
            record(
                "nightly",
                "backup",
                44,
                Outcome::Failed,
                serde_json::json!({}),
            ),
        );
        let html = render(&page(vec![job("nightly", "backup", runs)]));
        let size = &html[html.find("id=\"size-nightly\"").unwrap()..];
        let size = &size[..size.find("</svg>").unwrap()];
        assert_eq!(size.matches("data-series=\"stored\"").count(), 3);
        assert_eq!(size.matches("data-series=\"raw\"").count(), 3);
        let duration = &html[html.find("id=\"duration-nightly\"").unwrap()..];
        let duration = &duration[..duration.find("</svg>").unwrap()];
        assert_eq!(duration.matches("class=\"point\"").count(), 3);
        assert_eq!(duration.matches("class=\"point failed\"").count(), 1);
    }

    #[test]
    fn the_page_is_self_contained() {
        let html = render(&page(vec![job("nightly", "backup", vec![backup(0, 1)])]));
        assert!(!html.contains("<script"));
        assert!(!html.contains("<link"));
        assert!(!html.contains("@import") && !html.contains("url("));
        // The only URL is the SVG namespace, which is a name, never fetched.
        let urls = html.matches("http").count();
        let namespaces = html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
        assert_eq!(urls, namespaces);
    }

    #[test]
    fn maintenance_dead_tuples_and_test_rtos_are_charted() {
        let steps = serde_json::json!({ "steps": [
            { "before": { "dead_tuples": 500 }, "after": { "dead_tuples": 10 } },
            { "before": { "dead_tuples": 300 } },
        ]});
        let m = job(
            "vacuum",
            "maintenance",
            vec![record(
                "vacuum",
                "maintenance",
                0,
                Outcome::Succeeded,
                steps,
            )],
        );
        let c = charted(&m);
        assert_eq!(c.dead_before[0].value, 800.0);
        assert_eq!(c.dead_after[0].value, 10.0);
        let mut b = job("nightly", "backup", vec![backup(0, 1)]);
        b.tests = vec![record(
            "weekly",
            "restore-test",
            5,
            Outcome::Succeeded,
            serde_json::json!({ "backup_id": "b0", "rto_seconds": 12.5, "rpo_seconds": 3600.0 }),
        )];
        assert_eq!(charted(&b).rto[0].value, 12.5);
        let html = render(&page(vec![b]));
        assert!(html.contains("RTO 12.5 s"), "{html}");
        assert!(html.contains("RPO 3600 s (1h)"), "{html}");
    }
}
