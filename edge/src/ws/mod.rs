//! The native WebSocket protocol v1 at `/ws` (see `docs/protocol.md`).
//! The handshake is refused before the upgrade when the `Origin` is not an
//! allowed front end or the token is missing, invalid or expired.

mod connection;
pub mod limits;
mod session;

use crate::error::ChatError;
use crate::state::EdgeState;
use crate::token;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

pub use limits::{MAX_FRAME_BYTES, QUEUE_LEN};

/// The `Origin` check: absent (not a browser) or exactly an allowed origin.
pub fn origin_allowed(st: &EdgeState, headers: &axum::http::HeaderMap) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(o) => {
            let o = o.to_str().unwrap_or("").trim_end_matches('/');
            st.config.frontend_urls.iter().any(|u| u == o)
        }
    }
}

pub async fn handle(State(st): State<Arc<EdgeState>>, mut req: Request) -> Response {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        return ChatError::InvalidPayload("expected a WebSocket upgrade".into()).into_response();
    }
    if !origin_allowed(&st, req.headers()) {
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
