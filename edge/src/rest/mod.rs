//! The REST API under `/api/chat`, with the NestJS module's paths and JSON.

pub mod attachments;
pub mod audit;
pub mod conversations;
pub mod groups;
pub mod limit;
pub mod messages;
pub mod openapi;
pub mod paging;
pub mod presence;
pub mod search;

use crate::error::ChatError;
use crate::realtime::EdgeState;
use axum::Router;
use axum::routing::{delete, get, patch, post};
use natter_shared::ids::RoomRef;
use natter_shared::model::MessagePage;
use natter_shared::store::Store;
use std::sync::Arc;

/// The routes; every one counts against its caller's request rate
/// (`limit`, whose buckets the router owns), and those that store
/// commands carry the request's metadata.
pub fn router(st: Arc<EdgeState>) -> Router<Arc<EdgeState>> {
    let routes = Router::new()
        .route("/api/chat/conversations", get(conversations::list))
        .route("/api/chat/conversations/with-user", post(conversations::with_user))
        .route("/api/chat/conversations/{id}", get(conversations::get_one))
        .route("/api/chat/conversations/{id}/messages", get(conversations::messages))
        .route("/api/chat/groups", get(groups::list).post(groups::create))
        .route("/api/chat/groups/{id}", get(groups::get_one).patch(groups::update).delete(groups::remove))
        .route("/api/chat/groups/{id}/messages", get(groups::messages))
        .route("/api/chat/groups/{id}/members", post(groups::add_member))
        .route("/api/chat/groups/{id}/members/{user_id}", delete(groups::remove_member))
        .route("/api/chat/groups/{id}/leave", post(groups::leave))
        .route("/api/chat/conversations/{id}/pins", get(messages::conversation_pins))
        .route("/api/chat/groups/{id}/pins", get(messages::group_pins))
        .route("/api/chat/messages/{id}", delete(messages::remove).patch(messages::edit))
        .route("/api/chat/messages/{id}/read", patch(messages::read))
        .route("/api/chat/messages/{id}/replies", get(messages::replies))
        .route("/api/chat/messages/{id}/reactions", post(messages::add_reaction))
        .route("/api/chat/messages/{id}/reactions/{emoji}", delete(messages::remove_reaction))
        .route("/api/chat/messages/{id}/pin", post(messages::pin).delete(messages::unpin))
        .route("/api/chat/presence", get(presence::get))
        .route("/api/chat/search", get(search::search))
        .route("/api/chat/audit/logs", get(audit::logs))
        .route("/api/chat/audit/export", get(audit::export_logs))
        .route("/api/chat/conversations/{id}/export", get(audit::export_conversation))
        .route("/api/chat/groups/{id}/export", get(audit::export_group))
        .route("/api/chat/attachments", post(attachments::upload).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/api/chat/attachments/{id}", get(attachments::download))
        .route("/api/chat/attachments/{id}/thumbnail", get(attachments::thumbnail));
    routes
        .route_layer(axum::middleware::from_fn(crate::meta::rest))
        .route("/api/openapi.json", get(openapi::serve))
        .route_layer(axum::middleware::from_fn_with_state((st, Arc::new(limit::RestLimits::default())), limit::limit))
}

/// A page of a room's history, as the module returned it.
pub async fn history(store: &Store, room: &RoomRef, query: Option<&str>) -> Result<MessagePage, ChatError> {
    let (by, page, limit) = paging::history(query)?;
    let p = store.room_messages(room, by).await?;
    page_of(store, room, p, page, limit).await
}

/// A page of messages of `room` as members see them.
pub async fn page_of(
    store: &Store,
    room: &RoomRef,
    p: natter_shared::store::Page,
    page: u64,
    limit: u64,
) -> Result<MessagePage, ChatError> {
    let cursors = store.cursors(room).await?;
    Ok(MessagePage {
        messages: p.messages.iter().map(|m| cursors.receipts().view(m)).collect(),
        total: p.total,
        page,
        page_size: limit,
        has_more: p.has_more,
    })
}

/// Parses a JSON body with the stable error code on failure.
pub fn body<T>(b: Result<axum::Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ChatError> {
    b.map(|axum::Json(v)| v).map_err(|e| ChatError::InvalidPayload(e.body_text()))
}
