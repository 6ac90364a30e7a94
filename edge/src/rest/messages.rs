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

pub async fn read(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ChatError> {
    let (room, _) = chat::mark_read(&st, &who, &id, true).await?;
    Ok(Json(reread(&st, &id, &room).await?))
}

pub async fn remove(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ChatError> {
    let (room, _) = chat::delete_message(&st, &who, &id, true).await?;
    Ok(Json(reread(&st, &id, &room).await?))
}
