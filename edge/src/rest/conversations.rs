//! `/api/chat/conversations...`: list, open with a user, get one, history.
//! Only participants may read a conversation.

use crate::core::chat;
use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::rest::paging;
use crate::token::AuthUser;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use natter_shared::ids::{RoomKind, UserId};
use natter_shared::model::{ConversationView, MessagePage};
use natter_shared::v1::server::{ErrorReply, PendingReply};
use serde::Deserialize;
use std::sync::Arc;

type St = State<Arc<EdgeState>>;

#[utoipa::path(
    get,
    path = "/api/chat/conversations",
    tag = "conversations",
    summary = "The caller's conversations, most recent activity first",
    params(("page" = Option<u64>, Query, description = "page, from 1"), ("limit" = Option<u64>, Query, description = "page size, at most 100")),
    responses((status = 200, body = Vec<ConversationView>), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn list(
    State(st): St,
    AuthUser(who): AuthUser,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<ConversationView>>, ChatError> {
    let (page, limit) = paging::page_limit(q.as_deref(), 20)?;
    let convs = st.store.conversations_for(who.user.oid(), page, limit).await?;
    let last = st.store.messages_by_id(convs.iter().filter_map(|c| c.last_message_id)).await?;
    Ok(Json(convs.iter().map(|c| ConversationView::new(c, c.last_message_id.and_then(|id| last.get(&id)))).collect()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WithUser {
    user_id: String,
}

#[utoipa::path(
    post,
    path = "/api/chat/conversations/with-user",
    tag = "conversations",
    summary = "The 1:1 conversation with a user, created if needed",
    request_body = WithUser,
    responses((status = 201, body = ConversationView), (status = 202, description = "stored, not applied yet", body = PendingReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn with_user(
    State(st): St,
    AuthUser(who): AuthUser,
    body: Result<Json<WithUser>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<ConversationView>), ChatError> {
    let body = super::body(body)?;
    let other: UserId = body.user_id.parse().map_err(ChatError::InvalidPayload)?;
    let conv = chat::conversation_with(&st, &who, other).await?;
    Ok((StatusCode::CREATED, Json(ConversationView::new(&conv, None))))
}

#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}",
    tag = "conversations",
    summary = "One conversation of the caller's",
    params(("id" = String, Path, description = "conversation id (24 hex)")),
    responses((status = 200, body = ConversationView), (status = 403, description = "not_a_member", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn get_one(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<ConversationView>, ChatError> {
    let (room, oid) = chat::room(RoomKind::Conversation, &id)?;
    chat::require_member(&st, &who, &room).await?;
    let conv = st.store.conversation(oid).await?.ok_or(ChatError::NotFound("conversation"))?;
    Ok(Json(ConversationView::new(&conv, None)))
}

#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}/messages",
    tag = "conversations",
    summary = "A page of the history, oldest first within the page",
    params(("id" = String, Path, description = "conversation id (24 hex)"), ("page" = Option<u64>, Query, description = "page from the newest, from 1"), ("limit" = Option<u64>, Query, description = "messages per page (50), at most 100"), ("before" = Option<i64>, Query, description = "only messages with a lower seq (wins over page)")),
    responses((status = 200, body = MessagePage), (status = 403, description = "not_a_member", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn messages(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<MessagePage>, ChatError> {
    let (room, _) = chat::room(RoomKind::Conversation, &id)?;
    paging::history(q.as_deref())?;
    chat::require_member(&st, &who, &room).await?;
    Ok(Json(super::history(&st.store, &room, q.as_deref()).await?))
}
