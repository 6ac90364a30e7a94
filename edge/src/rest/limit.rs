//! The REST request rate, per caller: a token bucket per user (the token's
//! user, verified once here and handed to the handler) or, for requests
//! without a valid token, per client address. Past it the answer is 429
//! `rate_limited`, the code the WebSocket protocols use.

use crate::error::ChatError;
use crate::state::EdgeState;
use crate::token;
use crate::ws::limits::Bucket;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use natter_shared::auth::{AuthError, Identity};
use natter_shared::ids::UserId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Callers remembered before the idle ones are forgotten.
const MAX_CALLERS: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Caller {
    User(UserId),
    Addr(IpAddr),
}

/// The buckets of the callers seen lately.
#[derive(Default)]
pub struct RestLimits {
    callers: Mutex<HashMap<Caller, (Bucket, Instant)>>,
}

impl RestLimits {
    fn admit(&self, caller: Caller, rate: u32) -> bool {
        let now = Instant::now();
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if callers.len() >= MAX_CALLERS {
            // A bucket idle this long is full again: forgetting it changes nothing.
            callers.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(2));
        }
        let (bucket, at) = callers.entry(caller).or_insert_with(|| (Bucket::new(rate), now));
        *at = now;
        bucket.take()
    }
}

/// The caller's identity, or why there is none, as the limit found it
/// (the `AuthUser` extractor takes it from here instead of verifying again).
#[derive(Clone)]
pub struct Authenticated(pub Result<Identity, AuthError>);

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
