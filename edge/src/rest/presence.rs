//! `GET /api/chat/presence?userIds=a,b,c`: who is online, for the initial
//! screen. Only users who share a conversation or group with the caller
//! (and the caller) are reported; others are left out.

use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::extract::{RawQuery, State};
use natter_shared::ids::UserId;
use natter_shared::v1::event::UserPresence;
use natter_shared::v1::server::ErrorReply;
use std::sync::Arc;

const MAX_USERS: usize = 500;

#[utoipa::path(
    get,
    path = "/api/chat/presence",
    tag = "presence",
    summary = "Presence of the listed users who are the caller's contacts",
    params(("userIds" = String, Query, description = "comma-separated user ids, at most 500")),
    responses((status = 200, body = Vec<UserPresence>), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn get(
    State(st): State<Arc<EdgeState>>,
    AuthUser(who): AuthUser,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<UserPresence>>, ChatError> {
    let raw = crate::query::param(q.as_deref(), "userIds")
        .ok_or_else(|| ChatError::InvalidPayload("userIds is required (comma-separated)".into()))?;
    let users = raw
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<UserId>().map_err(ChatError::InvalidPayload))
        .collect::<Result<Vec<_>, _>>()?;
    if users.len() > MAX_USERS {
        return Err(ChatError::InvalidPayload(format!("at most {MAX_USERS} userIds")));
    }
    Ok(Json(st.presence.of(who.user, &users).await?))
}
