//! The native WebSocket protocol v1 at `/ws` (see `docs/protocol.md`).
//! The handshake is refused before the upgrade when the `Origin` is not an
//! allowed front end or the token is missing, invalid or expired.

mod connection;
mod native;

use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::token;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub async fn handle(State(st): State<Arc<EdgeState>>, mut req: Request) -> Response {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return ChatError::InvalidPayload("expected a WebSocket upgrade".into()).into_response();
    }
    if !crate::meta::origin_allowed(&st.config.frontend_urls, req.headers()) {
        return ChatError::OriginNotAllowed.into_response();
    }
    let Some(tok) = token::bearer(req.headers()).or_else(|| token::from_query(req.uri().query())) else {
        return ChatError::from(natter_shared::auth::AuthError::Missing).into_response();
    };
    let verified = match st.jwt.verify_token(&tok) {
        Ok(v) => v,
        Err(e) => return ChatError::from(e).into_response(),
    };
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => return ChatError::InvalidPayload(format!("bad upgrade: {e}")).into_response(),
    };
    let cancel = st.lifecycle.shutdown().child_token();
    let st2 = st.clone();
    let meta = crate::meta::from_handshake(req.headers());
    st.lifecycle.spawn(async move {
        match upgrade.await {
            Ok(ws) => connection::run(ws, verified, meta, st2, cancel).await,
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
    resp.map(Body::new)
}
