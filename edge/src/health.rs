//! `/healthz`: the process is up. `/readyz`: NATS and MongoDB are reachable,
//! so a load balancer only sends traffic to an edge that can serve it.

use crate::state::EdgeState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(st): State<Arc<EdgeState>>) -> (StatusCode, Json<serde_json::Value>) {
    let nats = st.nats.connection_state() == async_nats::connection::State::Connected;
    let mongo = matches!(tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await, Ok(Ok(())));
    let status = if nats && mongo { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"nats": nats, "mongodb": mongo})))
}
