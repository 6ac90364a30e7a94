//! Events: facts the workers publish after applying a command (and a few
//! ephemeral frames the edges publish themselves), fanned out by the edges.
//! The frame a client receives is exactly the published bytes:
//!
//! `{"type": <event>, "seq": <stream seq>, "part": <n>, "data": {...}}`
//!
//! plus routing fields the edge reads: `from` (the actor), `revoke` (after
//! this frame, stop sending the room to this user, or `*` for everyone) and
//! `grant` (a group id the receiving user's sockets start following).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MessageReceived,
    MessageStatusUpdated,
    MessageRead,
    MessageDeleted,
    MessageEdited,
    ReactionAdded,
    ReactionRemoved,
    MessagePinned,
    MessageUnpinned,
    /// A reply in a thread, to each of its participants but the replier
    /// (as `message_received`'s data), whether or not they follow the room.
    ThreadReply,
    /// A message that mentions the receiving user, to that user's sockets
    /// (as `message_received`'s data), whether or not they follow the room.
    Mentioned,
    ConversationCreated,
    GroupCreated,
    GroupUpdated,
    GroupDeleted,
    MemberAdded,
    MemberRemoved,
    /// Both participants of a conversation have written in it: from now on
    /// each sees the other's presence. To both participants.
    ContactAdded,
    /// A command the worker refused after the edge accepted it (a race with
    /// a membership change); sent to the actor only.
    CommandRefused,
    /// The outcome of an upload, to the uploader: the attachment, or why
    /// it was refused.
    FileUploadResponse,
    UserTyping,
    UserOnline,
    UserOffline,
    /// A reconnecting client missed more than can be sent again (or events
    /// it missed have expired): it should refetch the room's history over
    /// REST. Live events follow.
    ResyncRequired,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventFrame<T> {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Stream sequence of the command this event results from; absent on
    /// ephemeral frames (typing, presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Index of this event among those of one command on one subject.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    pub data: T,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl<T> EventFrame<T> {
    pub fn new(kind: EventKind, seq: u64, data: T) -> Self {
        EventFrame { kind, seq: Some(seq), part: 0, from: None, revoke: None, grant: None, data }
    }

    pub fn ephemeral(kind: EventKind, data: T) -> Self {
        EventFrame { kind, seq: None, part: 0, from: None, revoke: None, grant: None, data }
    }

    pub fn part(mut self, part: u32) -> Self {
        self.part = part;
        self
    }

    pub fn from(mut self, user: impl Into<String>) -> Self {
        self.from = Some(user.into());
        self
    }

    pub fn revoke(mut self, user: impl Into<String>) -> Self {
        self.revoke = Some(user.into());
        self
    }

    pub fn grant(mut self, group: impl Into<String>) -> Self {
        self.grant = Some(group.into());
        self
    }
}

/// The `data` of an event frame, read as `T` (the fields the reader needs);
/// `None` when the frame has no such data.
pub fn data_of<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Option<T> {
    #[derive(Deserialize)]
    struct Frame<T> {
        data: T,
    }
    serde_json::from_slice::<Frame<T>>(frame).ok().map(|f| f.data)
}

/// The part of an event frame the edge reads before forwarding it untouched.
#[derive(Debug, Deserialize)]
pub struct EventHead {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub part: u32,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub revoke: Option<String>,
    #[serde(default)]
    pub grant: Option<String>,
}

// The `data` of each event. `message_received`, `conversation_created`,
// `group_created` and `group_updated` carry the REST views
// (`model::MessageView`, `ConversationView`, `GroupView`);
// `file_upload_response` carries `model::AttachmentView` or
// [`UploadRefused`]. Rooms are named as the module named them, by
// `conversationId` or `groupId` ([`RoomFields`]).

use super::command::RoomFields;
use super::error::ErrorCode;
pub use crate::model::MessageStatus;

fn is_false(b: &bool) -> bool {
    !*b
}

/// `message_deleted`: by `deletedBy`, or `retracted` (the send's events
/// went out, then its write was refused for good; `deletedBy` is null).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageDeleted {
    pub message_id: String,
    pub deleted_by: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub retracted: bool,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// `message_edited`: the sender's new words; the message keeps its `seq`.
/// `editCount` is how many edits it has had, so a client that got an older
/// edit later keeps the newer one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEdited {
    pub message_id: String,
    pub content: String,
    pub edited_at: String,
    pub edit_count: i64,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// `reaction_added` / `reaction_removed`: `userId`'s `emoji` on a message,
/// and how many members now react with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactionChanged {
    pub message_id: String,
    pub emoji: String,
    pub user_id: String,
    pub count: usize,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// `message_pinned` / `message_unpinned`: by `userId`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagePinned {
    pub message_id: String,
    pub user_id: String,
    pub at: String,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// `message_read`: `userId` has read the room up to `upToSeq` (the message
/// `messageId` and everything before it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRead {
    pub message_id: String,
    pub user_id: String,
    pub read_at: String,
    pub up_to_seq: i64,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// `message_status_updated`, to the sender: a message of theirs reached a
/// recipient's socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatusUpdated {
    pub message_id: String,
    pub status: MessageStatus,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// `contact_added`, to both participants of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContactAdded {
    pub conversation_id: String,
    pub user_ids: Vec<String>,
}

/// `group_deleted`, to the room and to each member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDeleted {
    pub group_id: String,
    pub deleted_by: String,
}

/// `member_added`, to the room and to the new member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberAdded {
    pub group_id: String,
    pub user_id: String,
    pub added_by: String,
}

/// `member_removed`, to the room and to the removed member; `left` when
/// the member removed themself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRemoved {
    pub group_id: String,
    pub user_id: String,
    pub removed_by: String,
    pub left: bool,
}

/// `command_refused`, to the actor: which command (`action`, `seq`), why
/// (`code`, `reason`), and the ids it named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandRefused {
    pub action: String,
    pub code: ErrorCode,
    pub reason: String,
    pub seq: u64,
    #[serde(flatten)]
    pub about: RefusedIds,
}

/// The ids a refused command named, as its event repeats them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedIds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

impl RefusedIds {
    pub fn message(id: impl Into<String>) -> Self {
        RefusedIds { message_id: Some(id.into()), ..Default::default() }
    }

    pub fn group(id: impl Into<String>) -> Self {
        RefusedIds { group_id: Some(id.into()), ..Default::default() }
    }
}

/// `file_upload_response` for an upload the worker refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRefused {
    pub id: String,
    pub error: Option<String>,
    pub code: Option<String>,
}

/// `user_typing`, to the room (ephemeral).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserTyping {
    pub user_id: String,
    pub username: String,
    pub is_typing: bool,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// `user_online` / `user_offline`, and each entry of
/// `GET /api/chat/presence`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct UserPresence {
    pub user_id: String,
    pub is_online: bool,
    pub last_seen: Option<String>,
}

/// `resync_required`, to one connection: refetch the room's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResyncRequired {
    pub last_seq: u64,
    pub reason: String,
    #[serde(flatten)]
    pub room: RoomFields,
}
