//! Where a request's token comes from: `Authorization: Bearer` for REST and
//! non-browser WebSocket clients, and the `token` (or `access_token`) query
//! parameter for browsers, which cannot set headers on a WebSocket. The token
//! is never logged; request logs carry the path only.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use natter_shared::auth::{AuthError, Identity};
use std::sync::Arc;

use crate::error::ChatError;
use crate::realtime::EdgeState;

pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string())
}

pub fn from_query(query: Option<&str>) -> Option<String> {
    crate::query::param_of(query, &["token", "access_token"])
}

/// The caller's identity, or why there is none, as the limit found it
/// (the `AuthUser` extractor takes it from here instead of verifying again).
#[derive(Clone)]
pub struct Authenticated(pub Result<Identity, AuthError>);

/// The caller of a REST route, proven by a Bearer token.
pub struct AuthUser(pub Identity);

impl FromRequestParts<Arc<EdgeState>> for AuthUser {
    type Rejection = ChatError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<EdgeState>) -> Result<Self, Self::Rejection> {
        if let Some(Authenticated(who)) = parts.extensions.get() {
            return Ok(AuthUser(who.clone()?));
        }
        let token = bearer(&parts.headers).ok_or(AuthError::Missing)?;
        Ok(AuthUser(state.jwt.verify(&token)?))
    }
}
