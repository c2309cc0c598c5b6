//! The drill's report, in Markdown, for an auditor.

use std::fmt::Write as _;

use super::{DrillOutcome, DrillPlan};
use crate::jobs::proof;
use crate::model::show_number;
use crate::report::bytes_human;
use crate::time;

/// The report an auditor reads.
pub fn markdown(plan: &DrillPlan, o: &DrillOutcome, host: &str) -> String {
    let zone = &plan.timezone;
    let mut md = String::new();
    let verdict = match o.failure() {
        None => "**PASSED**".to_owned(),
        Some(why) => format!("**FAILED**: {}", why.replace('|', "\\|")),
    };
    let _ = writeln!(md, "# Disaster-recovery drill: job {}\n", plan.job);
    let _ = writeln!(md, "| | |\n|---|---|");
    let rows = [
        ("Result", verdict),
        ("Started", time::show(o.started_at, zone)),
        ("Host", host.to_owned()),
        (
            "Backup",
            format!(
                "{} of job {}: database {} on PostgreSQL {}, {} tables, {} stored",
                plan.backup.id,
                plan.job,
                plan.backup.dbname,
                plan.backup.server_version,
                plan.backup.tables.len(),
                bytes_human(plan.backup.stored_size())
            ),
        ),
        ("Data as of", time::show(plan.backup.snapshot_at, zone)),
        (
            "Read from",
            format!("storage {} ({})", plan.storage, plan.storage_location),
        ),
        ("Restored into", plan.target_description()),
        (
            "RTO",
            o.rto_seconds.map_or_else(
                || "not reached: the drill failed before the data was verified".to_owned(),
                |s| format!("{} (start of the drill to verified data)", seconds(s)),
            ),
        ),
        (
            "RPO",
            format!(
                "{} (start of the drill minus the backup's snapshot)",
                seconds(o.rpo_seconds)
            ),
        ),
    ];
    body(&mut md, &rows, &o.steps, &o.proof.checks);
    if !o.proof.tables.is_empty() {
        let _ = writeln!(
            md,
            "\n## Row counts\n\n| Table | In the backup | Restored |\n|---|---:|---:|"
        );
        for t in o.proof.tables.iter().take(proof::TABLES_RECORDED) {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t.table.replace('|', "\\|"),
                t.expected,
                t.actual
                    .map_or_else(|| "missing".to_owned(), |n| n.to_string())
            );
        }
    }
    if !o.warnings.is_empty() {
        let _ = writeln!(md, "\n## Warnings\n");
        for w in &o.warnings {
            let _ = writeln!(md, "- {w}");
        }
    }
    md
}

/// The part every drill report shares: the summary table, the steps with
/// their times, and every check with what was expected and found.
pub(crate) fn body(
    md: &mut String,
    rows: &[(&str, String)],
    steps: &[super::StepTiming],
    checks: &[proof::CheckResult],
) {
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {} |", v.replace('\n', " "));
    }
    let _ = writeln!(md, "\n## Steps\n\n| Step | Time | Result |\n|---|---:|---|");
    for s in steps {
        let _ = writeln!(
            md,
            "| {} | {:.1} s | {} |",
            s.step,
            s.seconds,
            s.result.replace('|', "\\|").replace('\n', " ")
        );
    }
    let _ = writeln!(md, "\n## Checks\n");
    if checks.is_empty() {
        let _ = writeln!(md, "No check ran: the drill failed before them.");
    } else {
        let passed = checks.iter().filter(|c| c.passed).count();
        let _ = writeln!(
            md,
            "{passed} of {} passed.\n\n| Check | Expected | Found | Result |\n|---|---|---|---|",
            checks.len()
        );
        for c in checks {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.check.replace('|', "\\|"),
                c.expected.replace('|', "\\|"),
                c.actual.replace('|', "\\|"),
                if c.passed { "passed" } else { "**FAILED**" }
            );
        }
    }
}

/// `754.2 s (12 min 34 s)`: exact for the record, readable for people.
pub(crate) fn seconds(s: f64) -> String {
    let exact = format!("{} s", show_number((s * 10.0).round() / 10.0));
    if s < 60.0 {
        return exact;
    }
    format!("{exact} ({})", time::show_seconds(s))
}
