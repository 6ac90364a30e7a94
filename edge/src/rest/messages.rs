//! `/api/chat/messages/:id`: delete (`DELETE`) and mark as read
//! (`PATCH .../read`). Both answer once the worker has applied the change,
//! with the message as it then is.

use crate::chat;
use crate::error::ChatError;
use crate::state::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::extract::{Path, State};
use mongodb::bson::doc;
use natter_shared::model::MessageView;
use std::sync::Arc;

type St = State<Arc<EdgeState>>;

async fn reread(st: &EdgeState, id: &str) -> Result<MessageView, ChatError> {
    let oid = chat::oid(id, "messageId")?;
    let m = st.store.messages().find_one(doc! {"_id": oid}).await?.ok_or(ChatError::NotFound("message"))?;
    let room = natter_shared::ids::RoomRef::new(m.room_kind(), m.room_id());
    Ok(st.store.cursors(&room).await?.receipts().view(&m))
}

pub async fn read(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ChatError> {
    chat::mark_read(&st, &who, &id, true).await?;
    Ok(Json(reread(&st, &id).await?))
}

pub async fn remove(
    State(st): St,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ChatError> {
    chat::delete_message(&st, &who, &id, true).await?;
    Ok(Json(reread(&st, &id).await?))
}
