//! The HTTP endpoint: `GET /metrics` (Prometheus text format 0.0.4), `GET /v2/health/live` and
//! `/v2/health/ready` when checks are set, 404 elsewhere. It also runs the resource poller.

use std::future::Future;
use std::sync::{Arc, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::{HealthCheck, Metrics};

/// Serves `routes` (normally [`router`], perhaps with the caller's layers, such as
/// authentication) on `listener` (a TcpListener, or a TLS listener) until `shutdown` resolves, refreshing CPU, memory and GPU
/// readings every `--metrics-interval-ms` meanwhile. The caller binds (port 0 works) and
/// decides when to stop; open connections are drained on shutdown.
pub async fn serve_metrics<L>(
    listener: L,
    metrics: Arc<Metrics>,
    routes: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    // The first reading before the first scrape can arrive, so no scrape shows zeros.
    first_resource_reading(metrics.clone()).await;
    let poller = tokio::spawn(resource_task(metrics));
    let result = axum::serve(listener, routes).with_graceful_shutdown(shutdown).await;
    poller.abort();
    result
}

/// The routes, for a caller that composes its own server.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/v2/health/live", get(live_handler))
        .route("/v2/health/ready", get(ready_handler))
        .with_state(metrics)
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    // The sampler and NVML-free gather are cheap, but keep them off the async workers anyway.
    let body = match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(body) => body,
        Err(e) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics rendering failed: {e}\n"))
                .into_response();
        }
    };
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], body).into_response()
}

async fn live_handler(State(metrics): State<Arc<Metrics>>) -> StatusCode {
    let check = metrics.live.read().unwrap_or_else(PoisonError::into_inner).clone();
    health(check, StatusCode::OK)
}

async fn ready_handler(State(metrics): State<Arc<Metrics>>) -> StatusCode {
    let check = metrics.ready.read().unwrap_or_else(PoisonError::into_inner).clone();
    health(check, StatusCode::NOT_FOUND)
}

fn health(check: Option<HealthCheck>, unset: StatusCode) -> StatusCode {
    match check {
        Some(check) if check() => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        None => unset,
    }
}

/// Reads CPU, memory and GPU once (on a blocking thread): before a metrics server accepts its
/// first scrape, so no scrape shows zeros.
pub async fn first_resource_reading(metrics: Arc<Metrics>) {
    if tokio::task::spawn_blocking(move || metrics.refresh_resources()).await.is_err() {
        tracing::warn!("resource metrics refresh panicked");
    }
}

/// Refreshes resource readings every interval after the first (the first CPU utilization
/// needs two readings, so it reads 0 until the second, as Triton's). Runs until aborted.
pub async fn resource_task(metrics: Arc<Metrics>) {
    let every = metrics.settings().interval;
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let m = metrics.clone();
        if tokio::task::spawn_blocking(move || m.refresh_resources()).await.is_err() {
            tracing::warn!("resource metrics refresh panicked");
        }
    }
}
