//! `/healthz`: the process is up. `/readyz`: NATS and MongoDB are reachable,
//! so a load balancer only sends traffic to an edge that can serve it.
//! `/metrics`: the process's Prometheus metrics.

use crate::realtime::EdgeState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn metrics() -> impl axum::response::IntoResponse {
    let body = natter_shared::telemetry::metrics().render();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// `/readyz`'s body: whether each dependency answered.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    pub nats: bool,
    pub mongodb: bool,
}

pub async fn readyz(State(st): State<Arc<EdgeState>>) -> (StatusCode, Json<Readiness>) {
    let nats = st.nats.connection_state() == async_nats::connection::State::Connected;
    let mongo = matches!(tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await, Ok(Ok(())));
    let status = if nats && mongo { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Readiness { nats, mongodb: mongo }))
}
