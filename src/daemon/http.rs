//! What the daemon serves over HTTP (axum): `/health/live`, `/health/ready`,
//! `/health` (the same checks in JSON) and `/metrics`.
//!
//! Readiness means: the job files are loaded, and every storage and database
//! of the jobs answers. The checks reach real services, so their result is
//! kept for a few seconds: a probe every second does not become a load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

use super::Shared;

/// How long a readiness result is reused.
const CACHE_FOR: Duration = Duration::from_secs(5);
/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `storage disk`, `database app`.
    pub what: String,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub ready: bool,
    pub checked_at: jiff::Timestamp,
    pub jobs: usize,
    pub checks: Vec<Check>,
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let health = checked(&shared).await;
    if health.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let failed: Vec<String> = health
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.what, c.error.as_deref().unwrap_or("failed")))
            .collect();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", failed.join("\n")),
        )
            .into_response()
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let health = checked(&shared).await;
    let status = if health.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string_pretty(&json!(health)).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: header::HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = super::metrics::Format::negotiate(accept);
    shared.metrics.refresh_wal(&shared.engine()).await;
    // A failed scrape says "unknown" honestly; zeros would say "never backed up".
    let Some(text) = shared.metrics.encode(format) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is still reading its run records from storage; try again shortly\n",
        )
            .into_response();
    };
    ([(header::CONTENT_TYPE, format.content_type())], text).into_response()
}

/// The readiness checks, from the cache when fresh.
async fn checked(shared: &Shared) -> Health {
    let mut cache = shared.health.lock().await;
    if let Some((at, health)) = cache.as_ref()
        && at.elapsed() < CACHE_FOR
    {
        return health.clone();
    }
    let health = run_checks(shared).await;
    *cache = Some((Instant::now(), health.clone()));
    health
}

async fn run_checks(shared: &Shared) -> Health {
    let engine = shared.engine();
    let config = &engine.config;
    let mut databases = std::collections::BTreeMap::new();
    let mut storages = std::collections::BTreeMap::new();
    let mut directories = std::collections::BTreeSet::new();
    for job in config.jobs.values() {
        if let Some(db) = job.database() {
            databases.insert(db.name.clone(), db.clone());
        }
        if let crate::model::JobKind::Backup(b) = &job.kind
            && let crate::model::BackupSource::Directory(dir) = &b.source
        {
            directories.insert(dir.clone());
        }
        for s in job.record_storages() {
            storages.insert(s.name.clone(), s.clone());
        }
    }
    let storage_checks = storages.into_values().map(|spec| async move {
        let probe = crate::storage::probe(&spec);
        check(format!("storage {}", spec.name), probe).await
    });
    let database_checks = databases.into_values().map(|db| async move {
        let probe = async {
            let conn = crate::pg::connect(&db, None).await?;
            conn.client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| crate::pg::query_error("SELECT 1", e))
        };
        check(format!("database {}", db.name), probe).await
    });
    // A files job's directory that is gone (an unmounted volume) would make
    // its next backup fail: the daemon is not ready.
    let directory_checks = directories.into_iter().map(|dir| async move {
        let probe = async {
            tokio::fs::read_dir(&dir).await.map(|_| ()).map_err(|e| {
                crate::error::Error::io(
                    crate::error::Kind::NotFound,
                    format!("reading {}", dir.display()),
                    e,
                )
            })
        };
        check(format!("directory {}", dir.display()), probe).await
    });
    let (mut checks, more, dirs) = futures::join!(
        futures::future::join_all(storage_checks),
        futures::future::join_all(database_checks),
        futures::future::join_all(directory_checks)
    );
    checks.extend(more);
    checks.extend(dirs);
    Health {
        ready: checks.iter().all(|c| c.ok),
        checked_at: jiff::Timestamp::now(),
        jobs: config.jobs.len(),
        checks,
    }
}

async fn check(what: String, probe: impl Future<Output = crate::error::Result<()>>) -> Check {
    let error = match tokio::time::timeout(CHECK_TIMEOUT, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    };
    Check {
        what,
        ok: error.is_none(),
        error,
    }
}
