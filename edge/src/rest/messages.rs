//! `/api/chat/messages/:id`: delete (`DELETE`), edit (`PATCH`), mark as
//! read (`PATCH .../read`), react (`POST .../reactions`, `DELETE
//! .../reactions/:emoji`) and pin (`POST` / `DELETE .../pin`). Each answers
//! once the worker has applied the change, with the message as it then is.
//! A room's pins are `GET /api/chat/{conversations,groups}/:id/pins`.

use crate::core::chat;
use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::extract::RawQuery;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use natter_shared::ids::RoomRef;
use natter_shared::model::{MessagePage, MessageView, PinView};
use natter_shared::v1::server::ErrorReply;
use std::sync::Arc;

type St = State<Arc<EdgeState>>;

/// The message as it now is, in `room` (as the change named it).
async fn reread(st: &EdgeState, id: &str, room: &RoomRef) -> Result<MessageView, ChatError> {
    let oid = chat::oid(id, "messageId")?;
    let (m, cursors) = tokio::try_join!(async { st.store.message(oid).await.map_err(ChatError::from) }, async {
        st.store.cursors(room).await.map_err(ChatError::from)
    },)?;
    let m = m.ok_or(ChatError::NotFound("message"))?;
    Ok(cursors.receipts().view(&m))
}

#[utoipa::path(
    patch,
    path = "/api/chat/messages/{id}/read",
    tag = "messages",
    summary = "Mark the room read up to a message",
    params(("id" = String, Path, description = "message id (24 hex)")),
    responses((status = 200, description = "read: {messageId, seq}"), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn read(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ChatError> {
    let (room, _) = chat::mark_read(&st, &who, &id, true).await?;
    Ok(Json(reread(&st, &id, &room).await?))
}

#[utoipa::path(
    delete,
    path = "/api/chat/messages/{id}",
    tag = "messages",
    summary = "Delete a message (its sender, or who the room allows)",
    params(("id" = String, Path, description = "message id (24 hex)")),
    responses((status = 200, description = "deleted: {messageId, seq}"), (status = 403, description = "forbidden", body = ErrorReply), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn remove(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ChatError> {
    let (room, _) = chat::delete_message(&st, &who, &id, true).await?;
    Ok(Json(reread(&st, &id, &room).await?))
}

/// `PATCH /api/chat/messages/:id`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct EditBody {
    /// The new content (not blank, at most 16 KiB).
    pub content: String,
}

/// `POST /api/chat/messages/:id/reactions`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct ReactionBody {
    /// An emoji (with its modifiers) or a short name like `:ship:`: 1 to 64
    /// bytes, no spaces.
    pub emoji: String,
}

#[utoipa::path(
    patch,
    path = "/api/chat/messages/{id}",
    tag = "messages",
    summary = "Edit a message (its sender only)",
    params(("id" = String, Path, description = "message id (24 hex)")),
    request_body = EditBody,
    responses((status = 200, body = MessageView), (status = 403, description = "forbidden", body = ErrorReply), (status = 404, description = "not_found", body = ErrorReply), (status = 409, description = "limit_exceeded", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn edit(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    b: Result<Json<EditBody>, JsonRejection>,
) -> Result<Json<MessageView>, ChatError> {
    let b = super::body(b)?;
    let (room, _) = chat::edit_message(&st, &who, &id, b.content, true).await?;
    Ok(Json(reread(&st, &id, &room).await?))
}

#[utoipa::path(
    post,
    path = "/api/chat/messages/{id}/reactions",
    tag = "messages",
    summary = "React to a message (any member; once per emoji)",
    params(("id" = String, Path, description = "message id (24 hex)")),
    request_body = ReactionBody,
    responses((status = 201, body = MessageView), (status = 404, description = "not_found", body = ErrorReply), (status = 409, description = "limit_exceeded", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn add_reaction(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    b: Result<Json<ReactionBody>, JsonRejection>,
) -> Result<(StatusCode, Json<MessageView>), ChatError> {
    let b = super::body(b)?;
    let (room, _) = chat::react(&st, &who, &id, b.emoji, true, true).await?;
    Ok((StatusCode::CREATED, Json(reread(&st, &id, &room).await?)))
}

#[utoipa::path(
    delete,
    path = "/api/chat/messages/{id}/reactions/{emoji}",
    tag = "messages",
    summary = "Take back a reaction",
    params(("id" = String, Path, description = "message id (24 hex)"), ("emoji" = String, Path, description = "the emoji, percent-encoded")),
    responses((status = 200, body = MessageView), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn remove_reaction(
    State(st): St,
    AuthUser(who): AuthUser,
    Path((id, emoji)): Path<(String, String)>,
) -> Result<Json<MessageView>, ChatError> {
    let (room, _) = chat::react(&st, &who, &id, emoji, false, true).await?;
    Ok(Json(reread(&st, &id, &room).await?))
}

#[utoipa::path(
    post,
    path = "/api/chat/messages/{id}/pin",
    tag = "messages",
    summary = "Pin a message (a conversation's participants, a group's admin, an Admin)",
    params(("id" = String, Path, description = "message id (24 hex)")),
    responses((status = 201, body = MessageView), (status = 403, description = "forbidden", body = ErrorReply), (status = 404, description = "not_found", body = ErrorReply), (status = 409, description = "limit_exceeded", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn pin(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<MessageView>), ChatError> {
    let (room, _) = chat::pin(&st, &who, &id, true, true).await?;
    Ok((StatusCode::CREATED, Json(reread(&st, &id, &room).await?)))
}

#[utoipa::path(
    delete,
    path = "/api/chat/messages/{id}/pin",
    tag = "messages",
    summary = "Unpin a message",
    params(("id" = String, Path, description = "message id (24 hex)")),
    responses((status = 200, body = MessageView), (status = 403, description = "forbidden", body = ErrorReply), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn unpin(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ChatError> {
    let (room, _) = chat::pin(&st, &who, &id, false, true).await?;
    Ok(Json(reread(&st, &id, &room).await?))
}

/// The pins of a room the caller is a member of.
async fn pins_of(
    st: &EdgeState,
    who: &natter_shared::auth::Identity,
    room: &RoomRef,
) -> Result<Vec<PinView>, ChatError> {
    chat::require_member(st, who, room).await?;
    Ok(st.store.pins(room).await?)
}

#[utoipa::path(
    get,
    path = "/api/chat/conversations/{id}/pins",
    tag = "conversations",
    summary = "The pinned messages, newest pin first",
    params(("id" = String, Path, description = "conversation id (24 hex)")),
    responses((status = 200, body = [PinView]), (status = 403, description = "not_a_member", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn conversation_pins(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<PinView>>, ChatError> {
    let (room, _) = chat::room(natter_shared::ids::RoomKind::Conversation, &id)?;
    Ok(Json(pins_of(&st, &who, &room).await?))
}

#[utoipa::path(
    get,
    path = "/api/chat/groups/{id}/pins",
    tag = "groups",
    summary = "The pinned messages, newest pin first",
    params(("id" = String, Path, description = "group id (24 hex)")),
    responses((status = 200, body = [PinView]), (status = 403, description = "not_a_member", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn group_pins(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Vec<PinView>>, ChatError> {
    let (room, _) = chat::room(natter_shared::ids::RoomKind::Group, &id)?;
    Ok(Json(pins_of(&st, &who, &room).await?))
}

#[utoipa::path(
    get,
    path = "/api/chat/messages/{id}/replies",
    tag = "messages",
    summary = "A page of a thread's replies, oldest first within the page",
    params(("id" = String, Path, description = "the thread's first message (24 hex)"), ("page" = Option<u64>, Query, description = "page from the newest, from 1"), ("limit" = Option<u64>, Query, description = "replies per page (50), at most 100"), ("before" = Option<i64>, Query, description = "only replies with a lower seq (wins over page)")),
    responses((status = 200, body = MessagePage), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn replies(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Json<MessagePage>, ChatError> {
    let (by, page, limit) = super::paging::history(q.as_deref())?;
    let m = chat::message(&st, &id).await?;
    chat::require_member(&st, &who, &m.room).await.map_err(|_| ChatError::NotFound("message"))?;
    let p = st.store.replies(m.id, by).await?;
    Ok(Json(super::page_of(&st.store, &m.room, p, page, limit).await?))
}
