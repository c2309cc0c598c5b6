//! `backup drill --job J [--at TIME | --id ID] [--report FILE] [--target-url URL]`:
//! the disaster-recovery rehearsal, with a report an auditor can read.

use std::path::PathBuf;

use crate::catalog::Selector;
use crate::engine::{Drill, Engine};
use crate::error::{Error, Kind, Result};
use crate::jobs::drill;
use crate::model::BackupId;
use crate::time;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").args(["at", "id"])))]
pub struct Args {
    /// A backup job, or a restore-test job whose checks to run.
    #[arg(long, value_name = "JOB")]
    job: String,
    /// The newest backup whose data is as of TIME or earlier (default: the newest).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// The backup with this id.
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Also write the report to FILE: an HTML page when FILE ends in
    /// `.html`, else Markdown.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Restore into this server instead of a throwaway cluster; the database
    /// must not exist there. The password comes from PGPASSWORD.
    #[arg(long, value_name = "URL")]
    target_url: Option<String>,
    /// Parallel pg_restore jobs, as the real restore would run [default: the
    /// restore-test job's `jobs`, else 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    jobs: Option<u32>,
    /// Print the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Args {
    pub(super) fn uses_server(&self) -> bool {
        self.target_url.is_some()
    }
}

pub async fn run(
    engine: &Engine,
    args: Args,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let job = engine.config.job(&args.job)?;
    if let Some((physical, checks, from)) = physical_of(&engine.config, &args.job) {
        return drill_pitr(engine, &args, physical, checks, from, json, cancel).await;
    }
    let selector = match (&args.at, &args.id) {
        (Some(at), _) => Selector::At(time::parse_point(at, &job.timezone)?),
        (None, Some(id)) => Selector::Id(BackupId::parse(id)?),
        (None, None) => Selector::Latest,
    };
    let request = drill::DrillRequest::new(
        &engine.config,
        &args.job,
        selector,
        args.target_url.clone(),
        args.jobs,
    )?;
    let work = Drill::new(&engine.config, request)?;
    let plan = engine.plan(&work, cancel).await?;
    if args.dry_run {
        println!("{plan}");
        println!("dry run: nothing was changed");
        return Ok(());
    }
    eprintln!("{plan}");
    let (outcome, recorded) = engine.act(&work, Some(plan.clone()), cancel).await?.split();
    let report = drill::markdown(&plan, &outcome, &hostname());
    let ended = Ended {
        details: outcome.details(),
        failure: outcome.failure(),
        kind: outcome.error_kind,
    };
    finish(&args, json, &report, ended, recorded)
}

/// What a drill's end prints and returns, logical or physical alike.
struct Ended {
    details: serde_json::Value,
    failure: Option<String>,
    kind: Option<Kind>,
}

/// Writes the report, prints it (or the JSON), and fails with the drill.
fn finish(args: &Args, json: bool, report: &str, ended: Ended, recorded: Result<()>) -> Result<()> {
    if let Some(path) = &args.report {
        write_report(path, report)?;
        eprintln!("report written to {}", path.display());
    }
    if json {
        let mut value = ended.details;
        value["ok"] = ended.failure.is_none().into();
        value["report"] = args.report.as_ref().map(|p| p.display().to_string()).into();
        super::print_json(&value)?;
    } else {
        print!("{report}");
    }
    match ended.failure {
        None => recorded,
        Some(why) => Err(Error::new(ended.kind.unwrap_or(Kind::Integrity), why)
            .with_hint("the report lists each step and check with what was expected and found")),
    }
}

/// The physical job a drill of `name` rehearses (`name` itself, or the
/// backup job of restore-test job `name`), with its checks and where they
/// come from.
fn physical_of(
    config: &crate::model::Config,
    name: &str,
) -> Option<(String, Vec<crate::model::Check>, Vec<String>)> {
    use crate::model::JobKind;
    let job = config.job(name).ok()?;
    let (backup_job, checks, from) = match &job.kind {
        JobKind::RestoreTest(t) => (
            t.backup_job.clone(),
            t.checks.clone(),
            vec![name.to_owned()],
        ),
        JobKind::Backup(_) => {
            let from = config
                .jobs
                .values()
                .filter(|j| matches!(&j.kind, JobKind::RestoreTest(t) if t.backup_job == name))
                .map(|j| j.name.clone())
                .collect();
            (
                name.to_owned(),
                crate::engine::checks_of(config, name),
                from,
            )
        }
        _ => return None,
    };
    config.physical_job(&backup_job, "a drill").ok()?;
    Some((backup_job, checks, from))
}

/// The drill of a physical job: base backup, WAL replay, proof.
async fn drill_pitr(
    engine: &Engine,
    args: &Args,
    physical: String,
    checks: Vec<crate::model::Check>,
    from: Vec<String>,
    json: bool,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    use crate::jobs::pitr::drill::{self as pitr_drill, When};
    if args.target_url.is_some() || args.id.is_some() || args.jobs.is_some() {
        return Err(Error::usage(format!(
            "job {physical} is a physical job: its drill recovers a throwaway cluster to a \
             moment; --target-url, --id and --jobs are for logical jobs"
        ))
        .with_hint("pass --at TIME, or nothing for the newest archived moment"));
    }
    let job = engine.config.job(&physical)?;
    let when = match &args.at {
        Some(at) => When::At(time::parse_point(at, &job.timezone)?),
        None => When::Latest,
    };
    let work =
        crate::engine::PitrDrill::new(&engine.config, &physical, when, checks, from, "drill")?;
    let plan = match engine.plan(&work, cancel).await {
        Ok(plan) => plan,
        // The archive could not carry a drill (a corrupt or missing
        // segment): that is what a drill is for, so it is recorded and
        // reported like a failure of any later step.
        Err(e) if !args.dry_run && matches!(e.kind(), Kind::Integrity | Kind::Tool) => {
            let started = engine.clock().now();
            if let Err(recorded) = engine.act(&work, None, cancel).await {
                tracing::debug!("recorded: {recorded}");
            }
            let report =
                pitr_drill::markdown_unplanned(&physical, &job.timezone, started, &hostname(), &e);
            if let Some(path) = &args.report {
                write_report(path, &report)?;
                eprintln!("report written to {}", path.display());
            }
            if !json {
                print!("{report}");
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if args.dry_run {
        println!("{plan}");
        println!("dry run: nothing was changed");
        return Ok(());
    }
    eprintln!("{plan}");
    let (outcome, recorded) = engine.act(&work, Some(plan.clone()), cancel).await?.split();
    let report = pitr_drill::markdown(&plan, &outcome, &hostname());
    let ended = Ended {
        details: outcome.details(),
        failure: outcome.failure(),
        kind: outcome.error_kind,
    };
    finish(args, json, &report, ended, recorded)
}

/// Writes the report: as an HTML page when FILE ends in `.html` (or
/// `.htm`), else the Markdown. The page is converted from the Markdown, so
/// both state the same facts.
fn write_report(path: &std::path::Path, markdown: &str) -> Result<()> {
    let text = if is_html(path) {
        crate::report::html::from_markdown(markdown)
    } else {
        markdown.to_owned()
    };
    super::write_whole(path, &text, "--report")
}

fn is_html(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}
