//! The REST request rate, per caller: a token bucket per user (the token's
//! user, verified once here and handed to the handler) or, for requests
//! without a valid token, per client address. Past it the answer is 429
//! `rate_limited`, the code the WebSocket protocols use.

use crate::error::ChatError;
use crate::rate::{Bucket, Keyed};
use crate::realtime::EdgeState;
use crate::token::{self, Authenticated};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use natter_shared::auth::AuthError;
use natter_shared::ids::UserId;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Callers remembered before the idle ones are forgotten.
const MAX_CALLERS: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    User(UserId),
    Addr(IpAddr),
}

/// The buckets of the callers seen lately.
pub struct RestLimits {
    callers: Keyed<Caller, Bucket>,
}

impl Default for RestLimits {
    fn default() -> Self {
        // A bucket idle for two seconds is full again.
        RestLimits { callers: Keyed::new(MAX_CALLERS, Duration::from_secs(2)) }
    }
}

impl RestLimits {
    pub fn admit(&self, caller: Caller, rate: u32) -> bool {
        self.callers.with(caller, || Bucket::new(rate), Bucket::take)
    }
}

/// Axum middleware for the REST routes.
pub async fn limit(
    State((st, limits)): State<(Arc<EdgeState>, Arc<RestLimits>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let who = match token::bearer(req.headers()) {
        Some(t) => st.jwt.verify(&t),
        None => Err(AuthError::Missing),
    };
    let caller = match &who {
        Ok(w) => Caller::User(w.user),
        Err(_) => Caller::Addr(crate::meta::client_ip(&req, st.config.trust_forwarded_for)),
    };
    if !limits.admit(caller, st.config.rest_rate_per_sec) {
        metrics::counter!("natter_rate_limited_total", "scope" => "rest").increment(1);
        return ChatError::RateLimited.into_response();
    }
    req.extensions_mut().insert(Authenticated(who));
    next.run(req).await
}
