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
use serde::Deserialize;
use std::sync::Arc;

type St = State<Arc<EdgeState>>;

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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WithUser {
    user_id: String,
}

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
