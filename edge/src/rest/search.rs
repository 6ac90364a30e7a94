//! `GET /api/chat/search?q=&room=&before=&limit=`.

use crate::core::search::{self, Found};
use crate::error::ChatError;
use crate::query::param;
use crate::realtime::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::extract::{RawQuery, State};
use natter_shared::v1::server::ErrorReply;
use std::sync::Arc;

#[utoipa::path(
    get,
    path = "/api/chat/search",
    tag = "messages",
    summary = "Messages holding every word of q, in the caller's rooms, newest first",
    params(("q" = String, Query, description = "1 to 8 words (whole words, any case)"), ("room" = Option<String>, Query, description = "only this conversation or group (24 hex)"), ("before" = Option<i64>, Query, description = "only messages with a lower seq: the last page's nextBefore"), ("limit" = Option<u64>, Query, description = "results per page (20), at most 50")),
    responses((status = 200, body = Found), (status = 403, description = "not_a_member (of room)", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn search(
    State(st): State<Arc<EdgeState>>,
    AuthUser(who): AuthUser,
    RawQuery(q): RawQuery,
) -> Result<Json<Found>, ChatError> {
    let query = q.as_deref();
    let text = param(query, "q").ok_or_else(|| ChatError::InvalidPayload("q is required".into()))?;
    let before = match param(query, "before") {
        None => None,
        Some(_) => Some(super::paging::number(query, "before", 0, 1, i64::MAX as u64)? as i64),
    };
    let limit = super::paging::number(query, "limit", 20, 1, 50)? as usize;
    let room = param(query, "room");
    Ok(Json(search::search(&st, &who, &text, room.as_deref(), before, limit).await?))
}
