//! Commands: what the edge publishes to JetStream and the workers apply.
//! A command carries everything its application needs (ids are assigned by
//! the edge, identity and roles come from the token); the worker adds only
//! the stream sequence and timestamp, so replaying the stream rebuilds the
//! same state.

use crate::ids::{AttachmentId, ConversationId, GroupId, MessageId, RoomKind, RoomRef, UserId};
use crate::model::Permissions;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// Wire version, `1`.
    pub v: u32,
    /// Who issued the command (from the token, never from a payload).
    pub actor: UserId,
    /// The actor's roles at the time of the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// A core NATS subject where the worker reports the outcome, for REST
    /// writes that answer once the change is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// How the request came in, for the audit trail (never secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<RequestMeta>,
    pub command: Command,
}

/// Request metadata recorded with a command: the transport, the client's
/// request id, its user agent and origin. No token, no credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMeta {
    /// `ws`, `socketio`, `rest`, `edge` (commands an edge makes itself) or
    /// `worker` (facts a worker records).
    pub via: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// The REST method and route (`DELETE /api/chat/messages/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Follows one request through the pipeline: the edge's log lines of
    /// the request, and the worker's of the command, carry it. From the
    /// caller (`traceparent`'s trace id or `x-request-id`, on REST) or new.
    /// Operational only: not in the audit record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// A new trace id: 32 hex digits, unique across edges (an ObjectId's
/// time, machine and counter, and the time's nanoseconds).
pub fn new_trace_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}{nanos:08x}", mongodb::bson::oid::ObjectId::new().to_hex())
}

/// A caller's trace id, if it is one we may log and store: 8 to 64 visible
/// characters of `[0-9A-Za-z-_]`. A W3C `traceparent` gives its trace id.
pub fn caller_trace_id(traceparent: Option<&str>, request_id: Option<&str>) -> Option<String> {
    let from_parent = traceparent.and_then(|t| t.split('-').nth(1));
    let ok = |s: &&str| {
        (8..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    from_parent.filter(ok).or(request_id.filter(ok)).map(str::to_string)
}

impl RequestMeta {
    pub fn to_map(&self) -> std::collections::BTreeMap<String, String> {
        let mut m = std::collections::BTreeMap::from([("via".to_string(), self.via.clone())]);
        for (k, v) in [
            ("requestId", &self.request_id),
            ("userAgent", &self.user_agent),
            ("origin", &self.origin),
            ("route", &self.route),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), v.chars().take(256).collect());
            }
        }
        m
    }
}

impl CommandEnvelope {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Where the command is ordered: its room, or for an upload made
    /// outside any room, its uploader.
    pub fn route(&self) -> Result<Route, &'static str> {
        match &self.command {
            Command::UploadAttachment(c) if c.room == RoomFields::default() => Ok(Route::User(self.actor)),
            Command::RecordAttachment(c) if c.room == RoomFields::default() => Ok(Route::User(self.actor)),
            Command::ExpireUpload(_) => Ok(Route::User(self.actor)),
            c => c.room().map(Route::Room),
        }
    }
}

/// The ordering (and partition) key of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Room(RoomRef),
    /// An upload outside any room, ordered with its uploader's.
    User(UserId),
}

/// Names a room in a payload, as the module's events do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
}

impl RoomFields {
    /// The fields of a room, or none.
    pub fn of_optional(room: Option<&RoomRef>) -> Self {
        room.map(RoomFields::of).unwrap_or_default()
    }

    pub fn of(room: &RoomRef) -> Self {
        match room.kind {
            RoomKind::Conversation => RoomFields { conversation_id: Some(room.id.clone()), group_id: None },
            RoomKind::Group => RoomFields { conversation_id: None, group_id: Some(room.id.clone()) },
        }
    }

    pub fn room(&self) -> Result<RoomRef, &'static str> {
        RoomRef::from_fields(self.conversation_id.as_deref(), self.group_id.as_deref())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    SendMessage(SendMessageCmd),
    CreateConversation(CreateConversationCmd),
    CreateGroup(CreateGroupCmd),
    UpdateGroup(UpdateGroupCmd),
    DeleteGroup(GroupCmd),
    AddMember(MemberCmd),
    RemoveMember(MemberCmd),
    LeaveGroup(GroupCmd),
    MarkRead(MarkReadCmd),
    MarkDelivered(MarkDeliveredCmd),
    DeleteMessage(MessageCmd),
    EditMessage(EditMessageCmd),
    AddReaction(ReactionCmd),
    RemoveReaction(ReactionCmd),
    PinMessage(MessageCmd),
    UnpinMessage(MessageCmd),
    UploadAttachment(UploadAttachmentCmd),
    RecordAttachment(RecordAttachmentCmd),
    ExpireUpload(ExpireUploadCmd),
}

/// The worker roles that own some actions, and which: each action is
/// applied by exactly one role, the messages role applying every action no
/// other role owns. The one place that says so: consumers' filters and the
/// runner's skipping of others' commands both read it.
pub const ROLE_ACTIONS: &[(&str, &[&str])] = &[("attachments", &["upload_attachment"])];

/// The role that applies every action no other role owns.
pub const DEFAULT_OWNER: &str = "messages";

/// The role that applies `action`.
pub fn owner_of(action: &str) -> &'static str {
    ROLE_ACTIONS.iter().find(|(_, actions)| actions.contains(&action)).map(|(role, _)| *role).unwrap_or(DEFAULT_OWNER)
}

/// The actions `role` owns, unless it is the default owner (or owns none).
pub fn actions_of(role: &str) -> Option<&'static [&'static str]> {
    ROLE_ACTIONS.iter().find(|(r, _)| *r == role).map(|(_, actions)| *actions)
}

impl Command {
    /// The worker role that applies this command.
    pub fn owner(&self) -> &'static str {
        owner_of(self.action())
    }

    /// The action name used in logs, audit and subjects.
    pub fn action(&self) -> &'static str {
        match self {
            Command::SendMessage(_) => "send_message",
            Command::CreateConversation(_) => "create_conversation",
            Command::CreateGroup(_) => "create_group",
            Command::UpdateGroup(_) => "update_group",
            Command::DeleteGroup(_) => "delete_group",
            Command::AddMember(_) => "add_member",
            Command::RemoveMember(_) => "remove_member",
            Command::LeaveGroup(_) => "leave_group",
            Command::MarkRead(_) => "mark_read",
            Command::MarkDelivered(_) => "mark_delivered",
            Command::DeleteMessage(_) => "delete_message",
            Command::EditMessage(_) => "edit_message",
            Command::AddReaction(_) => "add_reaction",
            Command::RemoveReaction(_) => "remove_reaction",
            Command::PinMessage(_) => "pin_message",
            Command::UnpinMessage(_) => "unpin_message",
            Command::UploadAttachment(_) => "upload_attachment",
            Command::RecordAttachment(_) => "record_attachment",
            Command::ExpireUpload(_) => "expire_upload",
        }
    }

    /// The ids the command acts on, for the audit trail.
    pub fn targets(&self) -> std::collections::BTreeMap<String, String> {
        let mut t = std::collections::BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            t.insert(k.to_string(), v.to_string());
        };
        match self {
            Command::SendMessage(c) => {
                put("messageId", &c.message_id.hex());
                put("clientMsgId", &c.client_msg_id);
                if let Some(r) = &c.reply_to {
                    put("replyTo", &r.hex());
                }
                for (i, a) in c.attachments.iter().enumerate() {
                    put(&format!("attachmentId.{i}"), &a.id.hex());
                }
            }
            Command::CreateConversation(c) => {
                put("userId.0", &c.participant_ids[0].hex());
                put("userId.1", &c.participant_ids[1].hex());
            }
            Command::CreateGroup(c) => {
                for (i, m) in c.member_ids.iter().enumerate() {
                    put(&format!("userId.{i}"), &m.hex());
                }
            }
            Command::UpdateGroup(_) | Command::DeleteGroup(_) | Command::LeaveGroup(_) => {}
            Command::AddMember(c) | Command::RemoveMember(c) => put("userId", &c.user_id.hex()),
            Command::MarkRead(c) => put("messageId", &c.message_id.hex()),
            Command::MarkDelivered(c) => {
                if let (Some(first), Some(last)) = (c.seqs.first(), c.seqs.last()) {
                    put("seqs", &format!("{first}..{last}"));
                }
                for (i, d) in c.more.iter().enumerate() {
                    put(&format!("userId.{i}"), &d.user_id.hex());
                }
            }
            Command::DeleteMessage(c) | Command::PinMessage(c) | Command::UnpinMessage(c) => {
                put("messageId", &c.message_id.hex())
            }
            Command::EditMessage(c) => put("messageId", &c.message_id.hex()),
            Command::AddReaction(c) | Command::RemoveReaction(c) => {
                put("messageId", &c.message_id.hex());
                put("emoji", &c.emoji);
            }
            Command::UploadAttachment(c) => put("attachmentId", &c.attachment_id.hex()),
            Command::RecordAttachment(c) => put("attachmentId", &c.attachment_id.hex()),
            Command::ExpireUpload(c) => put("attachmentId", &c.attachment_id.hex()),
        }
        t
    }

    /// The room the command belongs to: its ordering and partition key.
    pub fn room(&self) -> Result<RoomRef, &'static str> {
        let group = |id: &GroupId| Ok(RoomRef::new(RoomKind::Group, id.hex()));
        match self {
            Command::SendMessage(c) => c.room.room(),
            Command::CreateConversation(c) => Ok(RoomRef::new(RoomKind::Conversation, c.conversation_id.hex())),
            Command::CreateGroup(c) => group(&c.group_id),
            Command::UpdateGroup(c) => group(&c.group_id),
            Command::DeleteGroup(c) | Command::LeaveGroup(c) => group(&c.group_id),
            Command::AddMember(c) | Command::RemoveMember(c) => group(&c.group_id),
            Command::MarkRead(c) => c.room.room(),
            Command::MarkDelivered(c) => c.room.room(),
            Command::DeleteMessage(c) | Command::PinMessage(c) | Command::UnpinMessage(c) => c.room.room(),
            Command::EditMessage(c) => c.room.room(),
            Command::AddReaction(c) | Command::RemoveReaction(c) => c.room.room(),
            Command::UploadAttachment(c) => c.room.room(),
            Command::RecordAttachment(c) => c.room.room(),
            Command::ExpireUpload(_) => Err("an upload outside any room has no room"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageCmd {
    /// Assigned by the edge from the sender and `clientMsgId`.
    pub message_id: MessageId,
    #[serde(flatten)]
    pub room: RoomFields,
    pub content: String,
    pub message_type: crate::model::MessageType,
    pub client_msg_id: String,
    /// Accepted attachments, copied by the edge from their records so that
    /// applying the message never depends on another role's progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentMeta>,
    /// A reply to this message of the room (its thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// Members the message mentions, as the edge resolved them (the worker
    /// keeps those still members at its seq).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
}

/// An attachment as a message carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentMeta {
    pub id: AttachmentId,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub size: i64,
    pub uploaded_at: String,
    #[serde(default)]
    pub thumbnail: bool,
}

/// A file staged by the edge (in the object store, under `staged`) for the
/// attachments worker to check and store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadAttachmentCmd {
    /// Assigned by the edge; also the staged object's name.
    pub attachment_id: AttachmentId,
    #[serde(flatten)]
    pub room: RoomFields,
    /// As the client named it (sanitized by the worker).
    pub filename: String,
    /// The content type the client declared.
    pub declared_type: String,
    pub size: u64,
}

/// An upload made outside any room and never sent in a message, collected
/// once `UNSENT_UPLOAD_TTL` (and a grace period) passed: its record becomes
/// `expired` (the attachments worker then deletes the bytes). Published by
/// the attachments worker's sweep, as the uploader (ordered with their
/// uploads); applying it again changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpireUploadCmd {
    pub attachment_id: AttachmentId,
}

/// A fact, published by the attachments worker after checking and storing
/// an upload: what it learned from outside the command (the detected type,
/// the size, the object keys, or why the file was refused). Applying it
/// records the attachment, so a rebuild from the stream never needs the
/// staged bytes (long expired) or S3.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordAttachmentCmd {
    pub attachment_id: AttachmentId,
    #[serde(flatten)]
    pub room: RoomFields,
    /// The `upload_attachment` command's seq and time.
    pub upload_seq: u64,
    pub uploaded_at_ms: i64,
    pub name: String,
    /// Detected from the bytes (empty when refused). (Not `type`: that is
    /// the command's tag.)
    pub detected_type: String,
    pub declared_type: String,
    pub category: String,
    pub size: i64,
    /// `accepted` or `rejected`.
    pub status: crate::model::AttachmentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_key: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateConversationCmd {
    /// Derived from the two participants, so concurrent creates agree.
    pub conversation_id: ConversationId,
    pub participant_ids: [UserId; 2],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateGroupCmd {
    /// Assigned by the edge.
    pub group_id: GroupId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// `department`, `custom` or `operational`.
    pub group_type: crate::model::GroupType,
    /// Members besides the creator (who is always a member and the admin).
    pub member_ids: Vec<UserId>,
    pub permissions: Permissions,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateGroupCmd {
    pub group_id: GroupId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_type: Option<crate::model::GroupType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupCmd {
    pub group_id: GroupId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberCmd {
    pub group_id: GroupId,
    pub user_id: UserId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkReadCmd {
    #[serde(flatten)]
    pub room: RoomFields,
    /// This message and everything before it in the room become read.
    pub message_id: MessageId,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkDeliveredCmd {
    #[serde(flatten)]
    pub room: RoomFields,
    /// `seq`s of the room's messages that reached one of the actor's
    /// devices; the newest moves the actor's delivery cursor (edges send
    /// just that one; earlier versions sent every one).
    pub seqs: Vec<u64>,
    /// Other members' deliveries in the same room, reported by the same
    /// edge in the same flush: one command per room and flush, not one per
    /// member (a group of 2,000 would cost 4,000 commands a second while
    /// messages flow). Each moves that member's cursor as `seqs` moves the
    /// actor's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more: Vec<Delivered>,
}

/// A member's newest delivered `seq` in a room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    pub user_id: UserId,
    pub seq: u64,
}

/// Most message seqs one `mark_delivered` carries.
pub const MAX_DELIVERED_SEQS: usize = 1000;

/// Most members one `mark_delivered` reports for (the actor and `more`).
pub const MAX_DELIVERED_USERS: usize = 1000;

/// A command about one message of a room: `delete_message`,
/// `pin_message`, `unpin_message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageCmd {
    #[serde(flatten)]
    pub room: RoomFields,
    pub message_id: MessageId,
}

/// `edit_message`: the sender's new words for a message (it keeps its seq).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditMessageCmd {
    #[serde(flatten)]
    pub room: RoomFields,
    pub message_id: MessageId,
    pub content: String,
}

/// `add_reaction` / `remove_reaction`: the actor's `emoji` on a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactionCmd {
    #[serde(flatten)]
    pub room: RoomFields,
    pub message_id: MessageId,
    pub emoji: String,
}

/// What a worker reports on `reply` after handling a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub status: OutcomeStatus,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set when the refusal is an authorization failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<super::error::ErrorCode>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Applied,
    Refused,
}
