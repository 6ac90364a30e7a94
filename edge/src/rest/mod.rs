//! The REST API under `/api/chat`, with the NestJS module's paths and JSON.

pub mod conversations;
pub mod paging;

use crate::state::EdgeState;
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

pub fn router() -> Router<Arc<EdgeState>> {
    Router::new()
        .route("/api/chat/conversations", get(conversations::list))
        .route("/api/chat/conversations/with-user", post(conversations::with_user))
        .route("/api/chat/conversations/{id}", get(conversations::get_one))
        .route("/api/chat/conversations/{id}/messages", get(conversations::messages))
}
