//! `type = "maintenance"` jobs: which tasks, which tables, how careful.

use std::sync::Arc;

use toml::Spanned;

use super::duration_of;
use super::raw::RawJob;
use super::sources::Source;
use crate::error::Result;
use crate::model::{Database, MaintenanceJob, StorageSpec, Targets, Task, Window};

/// The keys a maintenance job takes beyond the common ones.
pub(super) const KEYS: &[&str] = &[
    "tasks",
    "all",
    "tables",
    "exclude",
    "min_dead_ratio",
    "min_dead_tuples",
    "min_table_size",
    "min_index_bloat",
    "min_table_bloat",
    "lock_timeout",
    "lock_retries",
    "window",
    "reindex_concurrently",
];

pub(super) fn validate(
    source: &Source,
    name: &str,
    raw: &Spanned<RawJob>,
    database: Arc<Database>,
    reports: Option<Arc<StorageSpec>>,
) -> Result<MaintenanceJob> {
    let job = raw.get_ref();
    let section = format!("jobs.{name}");
    let names: Vec<String> = Task::ALL.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let raw_tasks = job.tasks.as_ref().ok_or_else(|| {
        source
            .error(raw, format!("[{section}] a maintenance job needs `tasks`"))
            .with_hint(format!(
                "for example tasks = [\"vacuum-analyze\"]; tasks: {}",
                names.join(", ")
            ))
    })?;
    if raw_tasks.get_ref().is_empty() {
        return Err(source
            .error(raw_tasks, format!("[{section}] tasks is empty"))
            .with_hint(format!("name at least one task: {}", names.join(", "))));
    }
    let mut tasks = Vec::new();
    for t in raw_tasks.get_ref() {
        let task = Task::ALL
            .iter()
            .find(|(n, _)| n == t.get_ref())
            .map(|(_, task)| *task)
            .ok_or_else(|| {
                source
                    .error(
                        t,
                        format!("[{section}] task '{}' is not known", t.get_ref()),
                    )
                    .with_hint(format!("tasks: {}", names.join(", ")))
            })?;
        if tasks.contains(&task) {
            return Err(source.error(
                t,
                format!("[{section}] tasks lists '{}' twice", t.get_ref()),
            ));
        }
        tasks.push(task);
    }

    let mut targets = Targets {
        all: job.all.as_ref().is_some_and(|a| *a.get_ref()),
        ..Targets::default()
    };
    for (list, out) in [
        (&job.tables, &mut targets.tables),
        (&job.exclude, &mut targets.exclude),
    ] {
        for pattern in list.iter().flat_map(|l| l.get_ref()) {
            let p = pattern.get_ref();
            if p.is_empty() || p.matches('.').count() > 1 {
                return Err(source
                    .error(pattern, format!("[{section}] '{p}' is not a table pattern"))
                    .with_hint("write `table` or `schema.table`; `*` and `?` match any text and any one character"));
            }
            out.push(p.clone());
        }
    }
    for (key, value, out) in [
        (
            "min_dead_ratio",
            &job.min_dead_ratio,
            &mut targets.min_dead_ratio,
        ),
        (
            "min_index_bloat",
            &job.min_index_bloat,
            &mut targets.min_index_bloat,
        ),
        (
            "min_table_bloat",
            &job.min_table_bloat,
            &mut targets.min_table_bloat,
        ),
    ] {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(v.get_ref()) {
                return Err(source
                    .error(
                        v,
                        format!("[{section}] {key} = {} is outside 0..=1", v.get_ref()),
                    )
                    .with_hint("it is a share: 0.2 means 20 %"));
            }
            *out = *v.get_ref();
        }
    }
    if let Some(n) = &job.min_dead_tuples {
        if *n.get_ref() < 0 {
            return Err(source.error(
                n,
                format!("[{section}] min_dead_tuples must not be negative"),
            ));
        }
        targets.min_dead_tuples = *n.get_ref();
    }
    if let Some(size) = &job.min_table_size {
        targets.min_table_size = size.get_ref().bytes().ok_or_else(|| {
            source
                .error(size, format!("[{section}] min_table_size is not a size"))
                .with_hint("write bytes, or a number and a unit such as \"10MiB\" or \"1GB\"")
        })?;
    }

    let lock_timeout = match &job.lock_timeout {
        Some(t) => {
            let d = duration_of(source, &section, "lock_timeout", t)?;
            if d.as_millis() == 0 {
                return Err(source
                    .error(t, format!("[{section}] lock_timeout must be at least 1ms"))
                    .with_hint("0 would mean waiting for locks forever, which is what this setting prevents"));
            }
            d
        }
        None => std::time::Duration::from_secs(5),
    };
    let lock_retries = match &job.lock_retries {
        None => 2,
        Some(n) => match *n.get_ref() {
            v @ 0..=10 => v as u32,
            v => {
                return Err(source.error(
                    n,
                    format!("[{section}] lock_retries = {v} is outside 0..=10"),
                ));
            }
        },
    };
    let window = match &job.window {
        None => None,
        Some(w) => Some(Window::parse(w.get_ref()).ok_or_else(|| {
            source
                .error(w, format!("[{section}] window = '{}' is not a time window", w.get_ref()))
                .with_hint("write start and end as HH:MM in the job's zone, such as \"02:00-05:00\"; it may cross midnight")
        })?),
    };
    Ok(MaintenanceJob {
        database,
        tasks,
        targets,
        lock_timeout,
        lock_retries,
        window,
        reindex_concurrently: job
            .reindex_concurrently
            .as_ref()
            .is_none_or(|c| *c.get_ref()),
        reports,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::HEAVY_MAINTENANCE_TIMEOUT;
    use crate::config::testing::{GOOD, check, error_of};
    use crate::model::JobKind;

    #[test]
    fn maintenance_jobs_take_their_own_keys_and_defaults() {
        let text = format!(
            "{GOOD}\n[storages.archive]\ntype = \"local\"\npath = \"/a\"\n\n\
             [jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n\
             tasks = [\"vacuum-analyze\", \"reindex\"]\ntables = [\"public.*\"]\n\
             exclude = [\"audit_log\"]\nmin_dead_ratio = 0.2\nmin_table_size = \"10MiB\"\n\
             lock_timeout = \"2s\"\nwindow = \"22:00-05:00\"\n"
        );
        let config = check(&text).unwrap();
        let job = config.job("tidy").unwrap();
        let JobKind::Maintenance(m) = &job.kind else {
            panic!("not a maintenance job")
        };
        assert_eq!(
            m.tasks,
            [
                crate::model::Task::VacuumAnalyze,
                crate::model::Task::Reindex
            ]
        );
        assert!(m.is_heavy(), "reindex waits for dumps");
        assert_eq!(m.targets.tables, ["public.*"]);
        assert_eq!(m.targets.min_dead_ratio, 0.2);
        assert_eq!(m.targets.min_dead_tuples, 1000);
        assert_eq!(m.targets.min_table_size, 10 << 20);
        assert_eq!(m.lock_timeout, Duration::from_secs(2));
        assert_eq!(m.lock_retries, 2);
        assert_eq!(m.window.unwrap().to_string(), "22:00-05:00");
        assert_eq!(
            job.policy.timeout,
            Some(HEAVY_MAINTENANCE_TIMEOUT),
            "heavy jobs end"
        );
        // The file's first storage in the text, not in name order.
        assert_eq!(job.record_storages()[0].name, "disk");
        assert_eq!(
            config.job("nightly").unwrap().database().unwrap().name,
            "app"
        );
    }

    #[test]
    fn maintenance_mistakes_name_the_key_and_line() {
        let job = |extra: &str| {
            format!("{GOOD}\n[jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\n{extra}\n")
        };
        for (extra, expected) in [
            ("", "a maintenance job needs `tasks`"),
            ("tasks = []", "tasks is empty"),
            (
                "tasks = [\"vacuum\", \"defrag\"]",
                "task 'defrag' is not known",
            ),
            ("tasks = [\"vacuum\", \"vacuum\"]", "lists 'vacuum' twice"),
            (
                "tasks = [\"vacuum\"]\ncompression = \"gzip\"",
                "`compression` does not apply to a maintenance job",
            ),
            (
                "tasks = [\"vacuum\"]\nmin_dead_ratio = 20",
                "min_dead_ratio = 20 is outside 0..=1",
            ),
            (
                "tasks = [\"vacuum\"]\nwindow = \"2am-5am\"",
                "is not a time window",
            ),
            (
                "tasks = [\"vacuum\"]\nlock_timeout = \"0s\"",
                "lock_timeout must be at least 1ms",
            ),
            (
                "tasks = [\"vacuum\"]\ntables = [\"a.b.c\"]",
                "'a.b.c' is not a table pattern",
            ),
        ] {
            let e = error_of(&job(extra));
            assert!(e.contains(expected), "{extra}: {e}");
            assert!(e.starts_with("jobs/app.toml:"), "{e}");
        }
        let e = error_of(&GOOD.replace("compression = \"gzip\"", "tasks = [\"vacuum\"]"));
        assert!(e.contains("`tasks` does not apply to a backup job"), "{e}");
        let e = error_of(&format!("reports = \"nowhere\"\n{GOOD}"));
        assert!(e.contains("reports = 'nowhere': no such storage"), "{e}");
    }
}
