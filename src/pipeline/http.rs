//! The HTTP side: `/healthz`, `/readyz` and `/metrics`, for probes and Prometheus.
//!
//! `/healthz` answers 200 once the migrations ran and the consumer is subscribed; `/readyz`
//! also needs the database to answer (the last batch's transaction did not fail, and a
//! `SELECT 1` answers within [`DATABASE_CHECK_TIMEOUT`], so an idle processor notices a database
//! that is gone), partitions to be assigned, the reply producer to reach a broker, and neither
//! the reply topic nor the dead-letter topic to be unusable (deleted, or denied by an ACL). Both
//! answer 503 otherwise; `/readyz` says why.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::pipeline::health::Health;

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
    database: Option<PgPool>,
}

/// How long `/readyz` waits for the database's answer to `SELECT 1`.
pub const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves until `shutdown` turns true. `database`: the pool `/readyz` checks (none: only the
/// health flags count).
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Option<PrometheusHandle>,
    database: Option<PgPool>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            health,
            metrics,
            database,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let reason = match s.health.unready_reason() {
        None if database_answers(s.database.as_ref()).await => None,
        None => Some("the database does not answer"),
        Some(r) => Some(r),
    };
    match reason {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {r}\n")),
    }
}

async fn database_answers(pool: Option<&PgPool>) -> bool {
    let Some(pool) = pool else { return true };
    let ping = sqlx::query("SELECT 1").execute(pool);
    matches!(
        tokio::time::timeout(DATABASE_CHECK_TIMEOUT, ping).await,
        Ok(Ok(_))
    )
}

async fn render_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = s
        .metrics
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
