//! The REST API as an OpenAPI 3 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the wire types' schemas, served at
//! `GET /api/openapi.json`. `docs/openapi.json` is its snapshot: the edge's
//! tests fail when the two differ, and when a route is not documented.

use super::{attachments, audit, conversations, groups, messages, presence, search};
use natter_shared::audit::{AuditView, FactStatus};
use natter_shared::model::{
    AttachmentView, ConversationView, GroupType, GroupView, LastMessage, MessagePage, MessageStatus, MessageType,
    MessageView, Permissions, PinView, Reaction,
};
use natter_shared::v1::error::{ErrorBody, ErrorCode};
use natter_shared::v1::event::UserPresence;
use natter_shared::v1::server::{ErrorReply, PendingReply, PendingStatus};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "natter REST API",
        description = "The chat REST API under /api/chat, with the NestJS chat module's paths and JSON. \
                       Every route takes `Authorization: Bearer <JWT>`. Errors are `{\"error\": {\"code\", \"message\"}}` \
                       with the stable codes of docs/protocol.md."
    ),
    paths(
        conversations::list, conversations::with_user, conversations::get_one, conversations::messages,
        groups::list, groups::create, groups::get_one, groups::update, groups::remove,
        groups::add_member, groups::remove_member, groups::leave, groups::messages,
        messages::remove, messages::read, messages::edit, messages::add_reaction, messages::remove_reaction,
        messages::pin, messages::unpin, messages::conversation_pins, messages::group_pins, messages::replies,
        search::search, presence::get,
        audit::logs, audit::export_logs, audit::export_conversation, audit::export_group,
        attachments::upload, attachments::download, attachments::thumbnail,
    ),
    components(schemas(
        ConversationView, GroupView, MessageView, MessagePage, AttachmentView, LastMessage, Permissions,
        MessageType, MessageStatus, GroupType, UserPresence, AuditView, FactStatus, ErrorReply, ErrorBody,
        ErrorCode, PendingReply, PendingStatus, groups::CreateBody, groups::UpdateBody, groups::MemberBody,
        conversations::WithUser, audit::LogsPage, messages::EditBody, messages::ReactionBody, PinView, Reaction,
        crate::core::search::Found,
    )),
    modifiers(&Bearer),
    tags(
        (name = "conversations", description = "1:1 conversations"),
        (name = "groups", description = "group chats"),
        (name = "messages", description = "deleting, editing, reading, reacting to and pinning messages"),
        (name = "presence", description = "who is online"),
        (name = "audit", description = "the audit trail and exports (Admin)"),
        (name = "attachments", description = "uploads and downloads"),
    )
)]
pub struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        api.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document, as served.
pub fn document() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

/// `GET /api/openapi.json`
pub async fn serve() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], document())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// `docs/openapi.json` is the document the handlers generate. A
    /// deliberate change: `NATTER_UPDATE_SNAPSHOTS=1 cargo test -p
    /// natter-edge openapi` rewrites it, and the diff goes in the commit.
    #[test]
    fn the_snapshot_is_the_generated_document() {
        let path = root().join("docs/openapi.json");
        let doc = document() + "\n";
        if std::env::var("NATTER_UPDATE_SNAPSHOTS").is_ok() {
            std::fs::write(&path, &doc).unwrap();
        }
        let snapshot = std::fs::read_to_string(&path).expect("docs/openapi.json");
        assert!(snapshot == doc, "docs/openapi.json differs from the handlers' document; see the test's comment");
    }

    /// Every REST route the router declares is documented, with its methods.
    #[test]
    fn every_route_is_documented() {
        let src = std::fs::read_to_string(root().join("edge/src/rest/mod.rs")).unwrap();
        let api = ApiDoc::openapi();
        let mut routes = 0;
        for line in src.lines().map(str::trim).filter(|l| l.starts_with(".route(\"/api/chat")) {
            let path = line.split('"').nth(1).unwrap();
            let item = api.paths.paths.get(path).unwrap_or_else(|| panic!("{path} is not documented"));
            for (method, op) in
                [("get(", &item.get), ("post(", &item.post), ("patch(", &item.patch), ("delete(", &item.delete)]
            {
                let routed = line.contains(&format!(" {method}")) || line.contains(&format!(".{method}"));
                assert_eq!(routed, op.is_some(), "{path} {method}: routed {routed}, documented {}", op.is_some());
            }
            routes += 1;
        }
        assert_eq!(routes, api.paths.paths.len(), "documented paths that are not routed");
        assert!(routes >= 19, "{routes}");
    }
}
