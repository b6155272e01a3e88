//! The HTTP servers operators and probes talk to: axum on a small tokio
//! runtime of its own, so scrapes and profiles never touch the pipelines'
//! threads. Routes: `/metrics`, `/healthz`, `/readyz` on `http.listen`;
//! `/debug/pprof/profile?seconds=N[&format=svg]` only when
//! `http.profiling.enabled`, on a listener of its own (loopback by default):
//! profiling is costly and its unwinder is not signal-safe, so it is never
//! exposed next to the scrape port by accident.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tracing::warn;

use super::profile;
use super::Registry;

fn text(status: StatusCode, kind: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (status, [(header::CONTENT_TYPE, kind)], body.into()).into_response()
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    text(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        registry.render(),
    )
}

async fn healthz(State(registry): State<Arc<Registry>>) -> Response {
    match registry.failure() {
        None => text(StatusCode::OK, "text/plain", "ok\n"),
        Some(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("failed: {why}\n"),
        ),
    }
}

async fn readyz(State(registry): State<Arc<Registry>>) -> Response {
    if let Some(why) = registry.failure() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("failed: {why}\n"),
        );
    }
    if registry.ready() {
        text(StatusCode::OK, "text/plain", "ready\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: partitions not assigned, dimensions still loading or state being restored\n",
        )
    }
}

async fn pprof_profile(RawQuery(query): RawQuery) -> Response {
    let (duration, format) = match profile::parse_query(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
    };
    // Sampling blocks for the whole duration: off the runtime's thread.
    let taken = tokio::task::spawn_blocking(move || profile::cpu_profile(duration, format)).await;
    match taken {
        Ok(Ok(body)) if format == profile::Format::Svg => {
            text(StatusCode::OK, "image/svg+xml", body)
        }
        Ok(Ok(body)) => text(StatusCode::OK, "application/octet-stream", body),
        Ok(Err(e)) => text(StatusCode::CONFLICT, "text/plain", format!("{e}\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("the profiler failed: {e}\n"),
        ),
    }
}

/// The routes, over `registry`.
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(registry)
}

/// The profiling route.
pub fn profiling_router() -> Router {
    Router::new().route("/debug/pprof/profile", get(pprof_profile))
}

/// Serves `/debug/pprof/profile` on `listener` (already bound) from a
/// thread with its own single-threaded runtime.
pub fn serve_profiling(listener: std::net::TcpListener) -> std::io::Result<()> {
    spawn_server("kaflowsql-pprof", listener, profiling_router(), None)
}

/// Serves the routes on `listener` (already bound, so a busy port is an
/// error at start) from a thread with its own single-threaded runtime.
pub fn serve(listener: std::net::TcpListener, registry: Arc<Registry>) -> std::io::Result<()> {
    let app = router(registry.clone());
    spawn_server("kaflowsql-http", listener, app, Some(registry))
}

/// Runs `app` on `listener` from a thread named `name` with its own
/// single-threaded runtime; with `upkeep`, folds histogram samples into
/// buckets between scrapes too.
fn spawn_server(
    name: &str,
    listener: std::net::TcpListener,
    app: Router,
    upkeep: Option<Arc<Registry>>,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .thread_name(name)
        .build()?;
    let name = name.to_string();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            runtime.block_on(async move {
                if let Some(registry) = upkeep {
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(super::UPKEEP_INTERVAL);
                        loop {
                            tick.tick().await;
                            registry.upkeep();
                        }
                    });
                }
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(error) => return warn!(%error, server = %name, "Cannot serve HTTP."),
                };
                if let Err(error) = axum::serve(listener, app).await {
                    warn!(%error, server = %name, "The HTTP server stopped.");
                }
            })
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(response: Response) -> StatusCode {
        response.status()
    }

    #[test]
    fn health_and_readiness_turn_503_once_a_pipeline_failed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let registry = Arc::new(Registry::new());
        let m = registry.pipeline("p");
        m.set_ready(true);
        rt.block_on(async {
            assert_eq!(
                status(healthz(State(registry.clone())).await),
                StatusCode::OK
            );
            assert_eq!(
                status(readyz(State(registry.clone())).await),
                StatusCode::OK
            );
            registry.set_failed("pipeline `p`: boom");
            assert_eq!(
                status(healthz(State(registry.clone())).await),
                StatusCode::SERVICE_UNAVAILABLE
            );
            assert_eq!(
                status(readyz(State(registry.clone())).await),
                StatusCode::SERVICE_UNAVAILABLE
            );
        });
    }
}
