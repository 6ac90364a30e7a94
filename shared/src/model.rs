//! The domain model as stored in MongoDB (`*Doc`, the NestJS module's document
//! shapes plus `seq`) and as returned on the wire (`*View`, what Mongoose's
//! `toJSON` printed: ids as hex strings, dates as ISO strings).

use crate::timefmt::iso;
use mongodb::bson::{DateTime, Document, oid::ObjectId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Collection names.
pub const MESSAGES: &str = "messages";
pub const CONVERSATIONS: &str = "conversations";

/// A chat message. `seq` is the JetStream sequence of the command that
/// created it: the order of the room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDoc {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub content: String,
    pub sender_id: ObjectId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    pub message_type: String,
    pub status: String,
    #[serde(default)]
    pub read_by: Vec<String>,
    #[serde(default)]
    pub attachments: Vec<Document>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    pub seq: i64,
    pub client_msg_id: String,
}

/// A 1:1 conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationDoc {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub participant_ids: Vec<ObjectId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<ObjectId>,
    /// Unread messages per participant (user id hex → count).
    #[serde(default)]
    pub unread_counts: BTreeMap<String, i64>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    /// Highest message `seq` applied to this conversation: the guard that
    /// makes counter updates idempotent.
    #[serde(default)]
    pub last_seq: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    #[serde(rename = "_id")]
    pub id: String,
    pub content: String,
    pub sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    pub message_type: String,
    pub status: String,
    pub read_by: Vec<String>,
    pub attachments: Vec<serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
    pub seq: i64,
    pub client_msg_id: String,
}

impl From<&MessageDoc> for MessageView {
    fn from(m: &MessageDoc) -> Self {
        MessageView {
            id: m.id.to_hex(),
            content: m.content.clone(),
            sender_id: m.sender_id.to_hex(),
            conversation_id: m.conversation_id.clone(),
            group_id: m.group_id.clone(),
            message_type: m.message_type.clone(),
            status: m.status.clone(),
            read_by: m.read_by.clone(),
            attachments: m
                .attachments
                .iter()
                .map(|d| mongodb::bson::Bson::Document(d.clone()).into_relaxed_extjson())
                .collect(),
            created_at: iso(m.created_at),
            updated_at: iso(m.updated_at),
            seq: m.seq,
            client_msg_id: m.client_msg_id.clone(),
        }
    }
}

/// `lastMessageId` on the wire: the id, or the message itself where the
/// module populated it (the conversation list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LastMessage {
    Id(String),
    Message(Box<MessageView>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    #[serde(rename = "_id")]
    pub id: String,
    pub participant_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<LastMessage>,
    pub unread_counts: BTreeMap<String, i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl ConversationView {
    pub fn new(c: &ConversationDoc, last: Option<&MessageDoc>) -> Self {
        ConversationView {
            id: c.id.to_hex(),
            participant_ids: c.participant_ids.iter().map(|p| p.to_hex()).collect(),
            last_message_id: match (last, c.last_message_id) {
                (Some(m), _) => Some(LastMessage::Message(Box::new(m.into()))),
                (None, Some(id)) => Some(LastMessage::Id(id.to_hex())),
                (None, None) => None,
            },
            unread_counts: c.unread_counts.clone(),
            created_at: iso(c.created_at),
            updated_at: iso(c.updated_at),
        }
    }
}

/// A page of history, as `GET .../messages` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub total: u64,
    pub page: u64,
    pub page_size: u64,
    pub has_more: bool,
}
