//! What the daemon serves over HTTP (axum): the status page at `/`,
//! `/health/live`, `/health/ready`, `/health` (the same checks in JSON) and
//! `/metrics`.
//!
//! On an address other than loopback, `/`, `/health` and `/metrics` ask for
//! `Authorization: Bearer <token>`: they tell whoever asks which databases
//! and storages exist and what failed. The probes (`/health/live`,
//! `/health/ready`) stay open: a kubelet or load balancer has no token, and
//! they say no more than "ok".
//!
//! Readiness means: the job files are loaded, and every storage and database
//! of the jobs answers. The checks reach real services, so their result is
//! kept for a few seconds: a probe every second does not become a load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::json;

use super::Shared;

/// How long a readiness result is reused.
const CACHE_FOR: Duration = Duration::from_secs(5);
/// How long a rendered status page is reused: it reads every job's records
/// of 90 days, which a page left open and reloaded must not repeat each time.
const PAGE_CACHE_FOR: Duration = Duration::from_secs(30);
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

/// The routes; with a `token`, `/`, `/health` and `/metrics` require it.
pub fn router(shared: Arc<Shared>, token: Option<crate::secret::Secret>) -> Router {
    let mut guarded = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    let terse = token.is_some();
    match token {
        Some(token) => {
            guarded = guarded.route_layer(middleware::from_fn_with_state(
                Arc::new(token),
                require_token,
            ));
        }
        None => guarded = guarded.route_layer(middleware::from_fn(local_host_only)),
    }
    Router::new()
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(move |state| ready(state, terse)))
        .merge(guarded)
        .with_state(shared)
}

/// Without a token the daemon listens on loopback only; a browser page from
/// elsewhere can still reach it through DNS rebinding, with its own host
/// name in `Host`: only this host's names are answered.
async fn local_host_only(request: axum::extract::Request, next: middleware::Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_local_host(host) {
        return next.run(request).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        "this daemon answers to localhost, 127.0.0.1 and [::1] only; set [daemon] token_env \
         to serve other names\n",
    )
        .into_response()
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
fn is_local_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().map(|ip| format!("[{ip}]")),
        None => host.split(':').next().map(str::to_owned),
    };
    matches!(name.as_deref(), Some("localhost" | "127.0.0.1" | "[::1]"))
}

async fn require_token(
    State(token): State<Arc<crate::secret::Secret>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    if given.is_some_and(|given| same_token(given, token.expose().trim())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this address needs `Authorization: Bearer <token>`, the token of [daemon] token_env\n",
    )
        .into_response()
}

/// The token of an `Authorization` value; the scheme is case-insensitive
/// (RFC 9110 section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares the SHA-256 digests of both, byte by byte without stopping at
/// the first difference: how long it takes says nothing of how much of a
/// guess was right, nor of the token's length.
fn same_token(given: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// The status page (see [`crate::status::html`]), from the cache when fresh.
/// How long the page may take to read from storage.
const PAGE_TIMEOUT: Duration = Duration::from_secs(60);

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let mut cache = shared.page.lock().await;
    let html = match cache.as_ref() {
        Some((at, html)) if at.elapsed() < PAGE_CACHE_FOR => html.clone(),
        _ => {
            let engine = shared.engine();
            // The reading borrows across awaits in a way the compiler cannot
            // prove `Send` (higher-ranked lifetimes in `RunHistory::ask`), as
            // axum wants of a handler's future: it runs on a blocking thread
            // of its own, which waits on it there.
            let runtime = tokio::runtime::Handle::current();
            let rendered = tokio::task::spawn_blocking(move || {
                let jobs: Vec<&crate::model::Job> = engine.config.jobs.values().collect();
                // Bounded: a storage that hangs must not hold the page (and
                // its lock) for ever.
                let page = runtime
                    .block_on(async {
                        tokio::time::timeout(
                            PAGE_TIMEOUT,
                            crate::status::page(&engine, &jobs, engine.clock().now()),
                        )
                        .await
                    })
                    .ok()?;
                Some(crate::status::html::render(&page))
            })
            .await;
            match rendered {
                Ok(Some(html)) => {
                    *cache = Some((Instant::now(), html.clone()));
                    html
                }
                Ok(None) => {
                    tracing::warn!(
                        "the status page was not made within {}s: a storage is slow",
                        PAGE_TIMEOUT.as_secs()
                    );
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the status page could not be read from storage in time; try again\n",
                    )
                        .into_response();
                }
                Err(e) => {
                    // The cause is logged; the page says nothing of the process.
                    tracing::error!("the status page could not be made: {e}");
                    return (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the status page could not be made; the daemon's log says why\n",
                    )
                        .into_response();
                }
            }
        }
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing on the page is fetched from anywhere; a page that
            // somehow held a script still could not run it or call out.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// `terse`: the probe is open on an address others reach, so it names no
/// storage, database nor error.
async fn ready(State(shared): State<Arc<Shared>>, terse: bool) -> Response {
    let health = checked(&shared).await;
    if health.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else if terse {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_token_only_this_hosts_names_are_answered() {
        for host in [
            "localhost",
            "localhost:9187",
            "127.0.0.1:9187",
            "[::1]:9187",
            "[::1]",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "127.0.0.1.evil.example:9187",
            "[::2]:1",
            "localhost.evil",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = "0123456789abcdef0123";
        assert_eq!(bearer("Bearer 0123456789abcdef0123"), Some(token));
        assert_eq!(bearer("bearer   0123456789abcdef0123 "), Some(token));
        assert_eq!(bearer("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer("Bearer"), None);
        assert!(same_token(token, token));
        assert!(!same_token("0123456789abcdef012", token));
        assert!(!same_token("", token));
        assert!(!same_token(&format!("{token}x"), token));
    }
}
