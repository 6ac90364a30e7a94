//! `/api/chat/messages/:id`: delete (`DELETE`) and mark as read
//! (`PATCH .../read`). Both answer once the worker has applied the change,
//! with the message as it then is.

use crate::core::chat;
use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::extract::{Path, State};
use natter_shared::ids::RoomRef;
use natter_shared::model::MessageView;
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
