//! The REST request rate, per caller: a token bucket per user (the token's
//! user, verified once here and handed to the handler) or, for requests
//! without a valid token, per client address. Past it the answer is 429
//! `rate_limited`, the code the WebSocket protocols use.

use crate::error::ChatError;
use crate::limits::Caller;
use crate::state::EdgeState;
use crate::token::{self, Authenticated};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use natter_shared::auth::AuthError;
use std::sync::Arc;

/// Axum middleware for the REST routes.
pub async fn limit(State(st): State<Arc<EdgeState>>, mut req: Request, next: Next) -> Response {
    let who = match token::bearer(req.headers()) {
        Some(t) => st.jwt.verify(&t),
        None => Err(AuthError::Missing),
    };
    let caller = match &who {
        Ok(w) => Caller::User(w.user),
        Err(_) => Caller::Addr(crate::meta::client_ip(&req, st.config.trust_forwarded_for)),
    };
    if !st.rest_limits.admit(caller, st.config.rest_rate_per_sec) {
        return ChatError::RateLimited.into_response();
    }
    req.extensions_mut().insert(Authenticated(who));
    next.run(req).await
}
