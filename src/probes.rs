//! The probes and metrics server: `/metrics` (Prometheus text), `/healthz` (alive), `/readyz`
//! (ready: the leader once its caches are synced; a standby at once — the body says which).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Role of this replica, as `/readyz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Starting up.
    Starting,
    /// Waiting for the leader Lease.
    Standby,
    /// Leading, caches not synced yet.
    LeaderSyncing,
    /// Leading and synced.
    Leader,
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    role: watch::Receiver<Role>,
}

/// The router serving the three endpoints.
pub fn router(metrics: Arc<Metrics>, role: watch::Receiver<Role>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready_handler))
        .with_state(AppState { metrics, role })
}

async fn metrics_handler(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn ready_handler(State(s): State<AppState>) -> impl IntoResponse {
    let role = *s.role.borrow();
    match role {
        Role::Leader => (StatusCode::OK, "ready: leader"),
        Role::Standby => (StatusCode::OK, "ready: standby"),
        Role::LeaderSyncing => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: leader, caches syncing",
        ),
        Role::Starting => (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting"),
    }
}

/// Binds `addr` and serves until the process ends. Returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    role: watch::Receiver<Role>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(metrics, role);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(bound)
}
