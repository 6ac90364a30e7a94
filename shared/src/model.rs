//! The domain model as stored in MongoDB (`*Doc`: the NestJS module's document
//! shapes plus `seq` and the bookkeeping that makes replay exact) and as
//! returned on the wire (`*View`: what Mongoose's `toJSON` printed, ids as hex
//! strings and dates as ISO strings).

use crate::ids::{RoomKind, RoomRef};
use crate::timefmt::iso;
use mongodb::bson::{DateTime, Document, oid::ObjectId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Collection names (the module's Mongoose models: Message, Conversation, GroupChat).
pub const MESSAGES: &str = "messages";
pub const CONVERSATIONS: &str = "conversations";
pub const GROUPS: &str = "groupchats";
pub const ATTACHMENTS: &str = "attachments";
/// Which groups each user is in, one document per user and group (see
/// [`MembershipDoc`]).
pub const MEMBERSHIPS: &str = "groupmemberships";

/// Per-user counters and cursors of a room (user id hex → value).
pub type PerUser = BTreeMap<String, i64>;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A message's `messageType`: what clients send (`text`, `image`,
/// `document`) and `system`, which only the server writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageType {
    Text,
    Image,
    Document,
    System,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Text => "text",
            MessageType::Image => "image",
            MessageType::Document => "document",
            MessageType::System => "system",
        }
    }
}

impl From<crate::v1::client::ClientMessageType> for MessageType {
    fn from(t: crate::v1::client::ClientMessageType) -> Self {
        use crate::v1::client::ClientMessageType as C;
        match t {
            C::Text => MessageType::Text,
            C::Image => MessageType::Image,
            C::Document => MessageType::Document,
        }
    }
}

/// A message's status as its sender sees it, in the order it moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Sent,
    Delivered,
    Read,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
        }
    }
}

/// A group's `type`, as the module's schema enumerated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum GroupType {
    Department,
    Custom,
    Operational,
}

impl GroupType {
    pub const ALL: [GroupType; 3] = [GroupType::Department, GroupType::Custom, GroupType::Operational];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupType::Department => "department",
            GroupType::Custom => "custom",
            GroupType::Operational => "operational",
        }
    }

    pub fn parse(s: &str) -> Option<GroupType> {
        GroupType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// What the attachments worker decided about an upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentStatus {
    Accepted,
    Rejected,
    /// An upload outside any room, never sent, collected after its time.
    Expired,
}

impl AttachmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachmentStatus::Accepted => "accepted",
            AttachmentStatus::Rejected => "rejected",
            AttachmentStatus::Expired => "expired",
        }
    }
}

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
    pub message_type: MessageType,
    pub status: MessageStatus,
    #[serde(default)]
    pub read_by: Vec<String>,
    #[serde(default)]
    pub attachments: Vec<Document>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    pub seq: i64,
    pub client_msg_id: String,
    /// What a `system` message records: `{action, userId, actorId, name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<Document>,
    /// Tombstone: content and attachments are gone, the id stays so that a
    /// late or replayed insert of the same message cannot bring it back.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<ObjectId>,
    /// When its sender last edited it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edit_count: i64,
    /// The versions edits replaced, oldest first: for the audit trail and
    /// an Admin's export, never shown to members. Gone with a delete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<EditDoc>,
    /// Reactions, each emoji in the order it was first used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// A reply: the first message of its thread (a reply to a reply
    /// joins the same thread).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ObjectId>,
    /// The first message of a thread: how many replies it has (not
    /// deleted), when the last came, and the seq of the last reply or
    /// deleted reply applied (one not above it was applied already).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_reply_seq: i64,
    /// Who takes part in the thread (its first message's sender and each
    /// replier, at most `MAX_THREAD_PARTICIPANTS`): they hear of every
    /// reply (`thread_reply`) whether or not they follow the room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thread_participants: Vec<ObjectId>,
    /// Members the message mentions (resolved when it was sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<ObjectId>,
    /// The words search finds it by (`search::terms` of its content; none
    /// for a `system` message or a deleted one). Not shown to clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub terms: Vec<String>,
}

/// Most participants a thread keeps (later repliers still reply; they
/// are not told of others' replies).
pub const MAX_THREAD_PARTICIPANTS: usize = 100;

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A version of a message that an edit replaced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditDoc {
    pub content: String,
    /// When this version was written (sent, or an earlier edit).
    pub written_at: DateTime,
    /// The edit that replaced it: its time and command seq (an edit whose
    /// seq is not above the last one's was applied already).
    pub replaced_at: DateTime,
    pub replaced_seq: i64,
}

/// One emoji on a message and who reacted with it (user ids, in order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Reaction {
    pub emoji: String,
    pub user_ids: Vec<String>,
}

/// A pinned message of a room, in the room's document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    pub message_id: ObjectId,
    pub pinned_by: ObjectId,
    pub pinned_at: DateTime,
}

impl MessageDoc {
    /// A message as first stored: sent, read by no one, no attachments,
    /// not a system message, created and updated at `time`.
    #[allow(clippy::too_many_arguments, reason = "every field a new message must be given, named at the call")]
    pub fn new(
        id: ObjectId,
        room: &RoomRef,
        sender: ObjectId,
        message_type: MessageType,
        content: String,
        client_msg_id: String,
        seq: u64,
        time: DateTime,
    ) -> MessageDoc {
        let fields = crate::v1::command::RoomFields::of(room);
        MessageDoc {
            id,
            content,
            sender_id: sender,
            conversation_id: fields.conversation_id,
            group_id: fields.group_id,
            message_type,
            status: MessageStatus::Sent,
            read_by: vec![],
            attachments: vec![],
            created_at: time,
            updated_at: time,
            seq: seq as i64,
            client_msg_id,
            system: None,
            deleted: false,
            deleted_at: None,
            deleted_by: None,
            edited_at: None,
            edit_count: 0,
            edits: vec![],
            reactions: vec![],
            reply_to: None,
            reply_count: 0,
            last_reply_at: None,
            last_reply_seq: 0,
            thread_participants: vec![],
            mentions: vec![],
            terms: vec![],
        }
    }

    /// The seq of the edit applied last (0: never edited).
    pub fn last_edit_seq(&self) -> i64 {
        self.edits.last().map_or(0, |e| e.replaced_seq)
    }

    pub fn room_kind(&self) -> RoomKind {
        if self.group_id.is_some() { RoomKind::Group } else { RoomKind::Conversation }
    }

    pub fn room_id(&self) -> &str {
        self.group_id.as_deref().or(self.conversation_id.as_deref()).unwrap_or("")
    }

    /// The room the message belongs to.
    pub fn room(&self) -> RoomRef {
        RoomRef::new(self.room_kind(), self.room_id())
    }
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
    /// Messages from others each participant has not read.
    #[serde(default)]
    pub unread_counts: PerUser,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    /// Highest command `seq` applied to this room: the guard that makes
    /// every room update idempotent (compare-and-set on it).
    #[serde(default)]
    pub last_seq: i64,
    /// Read cursor per user: every message up to this `seq` is read.
    #[serde(default)]
    pub read_cursors: PerUser,
    /// Delivery cursor per user: every message up to this `seq` has reached
    /// one of the user's devices.
    #[serde(default)]
    pub delivered_cursors: PerUser,
    /// Messages mentioning each user that they have not read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mention_counts: PerUser,
    /// Participants who have sent a message here. Once both have, each
    /// may see the other's presence (opening a conversation alone does not
    /// make a contact).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writers: Vec<ObjectId>,
    /// Pinned messages, oldest pin first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<Pin>,
}

impl ConversationDoc {
    /// Both participants have written: they are each other's contacts.
    pub fn established(&self) -> bool {
        self.participant_ids.iter().all(|p| self.writers.contains(p))
    }
}

/// Who may do what in a group, as lists of roles (the module's schema).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    #[serde(default = "admin_only")]
    pub can_add_members: Vec<String>,
    #[serde(default = "admin_only")]
    pub can_remove_members: Vec<String>,
    #[serde(default = "admin_only")]
    pub can_delete_messages: Vec<String>,
}

fn admin_only() -> Vec<String> {
    vec!["Admin".to_string()]
}

/// The kinds a group may be (`type`).
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 100;
/// Longest group description or avatar, in bytes.
pub const MAX_GROUP_TEXT: usize = 1000;
/// Most members one create request may name (the group grows past it,
/// up to `MAX_GROUP_MEMBERS`, one add at a time).
pub const MAX_INITIAL_MEMBERS: usize = 1000;

/// Roles one permission may list.
pub const MAX_PERMISSION_ROLES: usize = 16;
/// Longest role name in a permission.
pub const MAX_ROLE_NAME: usize = 64;
/// Most members a group may have: every event that carries a group (its
/// member list included) must fit in one NATS message.
pub const MAX_GROUP_MEMBERS: usize = 10_000;

impl Permissions {
    /// Bounded, so a group's events stay publishable.
    pub fn check(&self) -> Result<(), String> {
        for roles in [&self.can_add_members, &self.can_remove_members, &self.can_delete_messages] {
            if roles.len() > MAX_PERMISSION_ROLES {
                return Err(format!("a permission lists at most {MAX_PERMISSION_ROLES} roles"));
            }
            if roles.iter().any(|r| r.is_empty() || r.len() > MAX_ROLE_NAME) {
                return Err(format!("a role name is 1 to {MAX_ROLE_NAME} bytes"));
            }
        }
        Ok(())
    }
}

impl Default for Permissions {
    fn default() -> Self {
        Permissions {
            can_add_members: admin_only(),
            can_remove_members: admin_only(),
            can_delete_messages: admin_only(),
        }
    }
}

/// A group chat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDoc {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    pub members: Vec<ObjectId>,
    pub admin: ObjectId,
    #[serde(rename = "type")]
    pub kind: GroupType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<ObjectId>,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub unread_counts: PerUser,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    #[serde(default)]
    pub last_seq: i64,
    #[serde(default)]
    pub read_cursors: PerUser,
    #[serde(default)]
    pub delivered_cursors: PerUser,
    /// Messages mentioning each member that they have not read.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mention_counts: PerUser,
    /// Deleted groups stay as tombstones (hidden from every read).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Pinned messages, oldest pin first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pins: Vec<Pin>,
}

fn has(roles: &[String], role: &str) -> bool {
    roles.iter().any(|r| r == role)
}

fn any_of(roles: &[String], allowed: &[String]) -> bool {
    roles.iter().any(|r| allowed.contains(r))
}

/// The group rules, shared by the edge (to answer at once) and the worker
/// (the authority, at the command's `seq`). `Admin` is the global role.
impl GroupDoc {
    pub fn is_member(&self, user: ObjectId) -> bool {
        !self.deleted && self.members.contains(&user)
    }

    /// Adding members: Admin, Supervisor (the module's route guard), or a
    /// role in `canAddMembers`; non-Admins must be members.
    pub fn may_add(&self, actor: ObjectId, roles: &[String]) -> bool {
        has(roles, "Admin")
            || (self.is_member(actor) && (has(roles, "Supervisor") || any_of(roles, &self.permissions.can_add_members)))
    }

    /// Removing members: Admin, or a member with a role in `canRemoveMembers`.
    pub fn may_remove(&self, actor: ObjectId, roles: &[String]) -> bool {
        has(roles, "Admin") || (self.is_member(actor) && any_of(roles, &self.permissions.can_remove_members))
    }

    /// Pinning and unpinning: Admin, or the group's admin (a member).
    pub fn may_pin(&self, actor: ObjectId, roles: &[String]) -> bool {
        has(roles, "Admin") || (self.is_member(actor) && self.admin == actor)
    }

    /// Deleting a message: Admin, its sender (a member), or a member with a
    /// role in `canDeleteMessages`.
    pub fn may_delete(&self, actor: ObjectId, roles: &[String], sender: ObjectId) -> bool {
        has(roles, "Admin")
            || (self.is_member(actor) && (sender == actor || any_of(roles, &self.permissions.can_delete_messages)))
    }
}

/// An uploaded file, as the attachments worker recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentDoc {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    pub uploader_id: ObjectId,
    /// The original file name, sanitized; kept as metadata only.
    pub name: String,
    /// The content type detected from the bytes (for accepted files).
    #[serde(rename = "type")]
    pub kind: String,
    pub declared_type: String,
    /// `image` or `document`.
    pub category: String,
    pub size: i64,
    pub uploaded_at: DateTime,
    pub status: AttachmentStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Server-generated object key; never derived from the file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_key: Option<String>,
    /// The command that produced this record.
    pub seq: i64,
}

impl AttachmentDoc {
    /// The record a `record_attachment` fact describes (uploaded by the
    /// fact's actor).
    pub fn from_fact(uploader: ObjectId, f: &crate::v1::command::RecordAttachmentCmd) -> Option<AttachmentDoc> {
        Some(AttachmentDoc {
            id: f.attachment_id.oid(),
            conversation_id: f.room.conversation_id.clone(),
            group_id: f.room.group_id.clone(),
            uploader_id: uploader,
            name: f.name.clone(),
            kind: f.detected_type.clone(),
            declared_type: f.declared_type.clone(),
            category: f.category.clone(),
            size: f.size,
            uploaded_at: DateTime::from_millis(f.uploaded_at_ms),
            status: f.status,
            code: f.code.clone(),
            reason: f.reason.clone(),
            key: f.key.clone(),
            thumbnail_key: f.thumbnail_key.clone(),
            seq: f.upload_seq as i64,
        })
    }

    /// The fact that records this attachment.
    pub fn to_fact(&self) -> crate::v1::command::RecordAttachmentCmd {
        crate::v1::command::RecordAttachmentCmd {
            attachment_id: self.id.into(),
            room: crate::v1::command::RoomFields {
                conversation_id: self.conversation_id.clone(),
                group_id: self.group_id.clone(),
            },
            upload_seq: self.seq as u64,
            uploaded_at_ms: self.uploaded_at.timestamp_millis(),
            name: self.name.clone(),
            detected_type: self.kind.clone(),
            declared_type: self.declared_type.clone(),
            category: self.category.clone(),
            size: self.size,
            status: self.status,
            code: self.code.clone(),
            reason: self.reason.clone(),
            key: self.key.clone(),
            thumbnail_key: self.thumbnail_key.clone(),
        }
    }

    /// The room it was uploaded to; `None` for an upload made outside any
    /// room (its uploader's, until sent in a message).
    pub fn room(&self) -> Option<RoomRef> {
        RoomRef::optional(self.conversation_id.as_deref(), self.group_id.as_deref()).ok().flatten()
    }

    pub fn accepted(&self) -> bool {
        self.status == AttachmentStatus::Accepted
    }
}

/// Where clients download an attachment (the edge authorizes, then
/// redirects to a short-lived presigned URL): filled in at read time.
pub fn attachment_url(id: &str) -> String {
    format!("/api/chat/attachments/{id}")
}

/// An attachment as the module showed it (`id, url, type, name, size,
/// uploadedAt`), inside messages and in `file_upload_response`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AttachmentView {
    pub id: String,
    pub url: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub size: i64,
    pub uploaded_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
}

impl From<&AttachmentDoc> for AttachmentView {
    fn from(a: &AttachmentDoc) -> Self {
        let id = a.id.to_hex();
        AttachmentView {
            url: attachment_url(&id),
            thumbnail_url: a.thumbnail_key.as_ref().map(|_| format!("{}/thumbnail", attachment_url(&id))),
            id,
            kind: a.kind.clone(),
            name: a.name.clone(),
            size: a.size,
            uploaded_at: iso(a.uploaded_at),
        }
    }
}

/// Adds the read-time `url` (and `thumbnailUrl`) to a stored attachment.
fn attachment_json(d: &Document) -> serde_json::Value {
    let mut v = json(d);
    if let (Some(o), Some(id)) = (v.as_object_mut(), d.get_str("id").ok()) {
        o.insert("url".into(), attachment_url(id).into());
        if d.get_bool("thumbnail").unwrap_or(false) {
            o.insert("thumbnailUrl".into(), format!("{}/thumbnail", attachment_url(id)).into());
        }
        o.remove("thumbnail");
        if let Ok(at) = d.get_datetime("uploadedAt") {
            o.insert("uploadedAt".into(), iso(*at).into());
        }
    }
    v
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    pub message_type: MessageType,
    pub status: MessageStatus,
    pub read_by: Vec<String>,
    pub attachments: Vec<serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
    pub seq: i64,
    pub client_msg_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edit_count: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// A reply: the first message of its thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The first message of a thread: its replies and when the last came.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reply_count: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reply_at: Option<String>,
    /// Members the message mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

/// A pinned message, in `GET .../pins`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PinView {
    pub message: MessageView,
    pub pinned_by: String,
    pub pinned_at: String,
}

/// A room's receipt cursors, from which a message's `status` and `readBy`
/// are derived where a client reads them: the worker moves one cursor per
/// reader instead of updating every message read or received.
#[derive(Clone, Copy, Debug)]
pub struct Receipts<'a> {
    pub read: &'a PerUser,
    pub delivered: &'a PerUser,
}

impl<'a> Receipts<'a> {
    pub fn of_conversation(c: &'a ConversationDoc) -> Self {
        Receipts { read: &c.read_cursors, delivered: &c.delivered_cursors }
    }

    pub fn of_group(g: &'a GroupDoc) -> Self {
        Receipts { read: &g.read_cursors, delivered: &g.delivered_cursors }
    }

    /// `status` and `readBy` of the message at `seq` sent by `sender`:
    /// `read` once another member's read cursor reaches it, `delivered` once
    /// another member's delivery (or read) cursor does; `readBy` is the
    /// sender and every member who has read it. What the document stores is
    /// kept if it says more (documents written before the cursors existed).
    pub fn apply(&self, view: &mut MessageView) {
        if view.message_type == MessageType::System {
            return;
        }
        let (sender, seq) = (view.sender_id.clone(), view.seq);
        let reached = |m: &'a PerUser| m.iter().filter(|(u, at)| **u != sender && **at >= seq).map(|(u, _)| u);
        let readers: Vec<&String> = reached(self.read).collect();
        let derived = if !readers.is_empty() {
            MessageStatus::Read
        } else if reached(self.delivered).next().is_some() {
            MessageStatus::Delivered
        } else {
            MessageStatus::Sent
        };
        view.status = view.status.max(derived);
        for r in readers {
            if !view.read_by.contains(r) {
                view.read_by.push(r.clone());
            }
        }
    }

    /// The view of `m` with its derived receipts.
    pub fn view(&self, m: &MessageDoc) -> MessageView {
        let mut v = MessageView::from(m);
        self.apply(&mut v);
        v
    }
}

fn json(d: &Document) -> serde_json::Value {
    mongodb::bson::Bson::Document(d.clone()).into_relaxed_extjson()
}

impl From<&MessageDoc> for MessageView {
    fn from(m: &MessageDoc) -> Self {
        MessageView {
            id: m.id.to_hex(),
            content: m.content.clone(),
            sender_id: m.sender_id.to_hex(),
            conversation_id: m.conversation_id.clone(),
            group_id: m.group_id.clone(),
            message_type: m.message_type,
            status: m.status,
            read_by: m.read_by.clone(),
            attachments: m.attachments.iter().map(attachment_json).collect(),
            created_at: iso(m.created_at),
            updated_at: iso(m.updated_at),
            seq: m.seq,
            client_msg_id: m.client_msg_id.clone(),
            system: m.system.as_ref().map(json),
            deleted: m.deleted,
            edited_at: m.edited_at.map(iso),
            edit_count: m.edit_count,
            reactions: m.reactions.clone(),
            reply_to: m.reply_to.map(|r| r.to_hex()),
            reply_count: m.reply_count,
            last_reply_at: m.last_reply_at.map(iso),
            mentions: m.mentions.iter().map(|u| u.to_hex()).collect(),
        }
    }
}

/// `lastMessageId` on the wire: the id, or the message itself where the
/// module populated it (the lists).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum LastMessage {
    Id(String),
    Message(Box<MessageView>),
}

fn last(id: Option<ObjectId>, populated: Option<&MessageDoc>, receipts: Receipts) -> Option<LastMessage> {
    match (populated, id) {
        (Some(m), _) => Some(LastMessage::Message(Box::new(receipts.view(m)))),
        (None, Some(id)) => Some(LastMessage::Id(id.to_hex())),
        (None, None) => None,
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    #[serde(rename = "_id")]
    pub id: String,
    pub participant_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<LastMessage>,
    pub unread_counts: PerUser,
    /// Unread messages mentioning each participant (left out when none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mention_counts: PerUser,
    pub created_at: String,
    pub updated_at: String,
}

impl ConversationView {
    pub fn new(c: &ConversationDoc, populated: Option<&MessageDoc>) -> Self {
        ConversationView {
            id: c.id.to_hex(),
            participant_ids: c.participant_ids.iter().map(|p| p.to_hex()).collect(),
            last_message_id: last(c.last_message_id, populated, Receipts::of_conversation(c)),
            unread_counts: c.unread_counts.clone(),
            mention_counts: c.mention_counts.clone(),
            created_at: iso(c.created_at),
            updated_at: iso(c.updated_at),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GroupView {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    pub members: Vec<String>,
    pub admin: String,
    #[serde(rename = "type")]
    pub kind: GroupType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_message_id: Option<LastMessage>,
    pub permissions: Permissions,
    pub unread_counts: PerUser,
    /// Unread messages mentioning each member (left out when none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mention_counts: PerUser,
    pub created_at: String,
    pub updated_at: String,
}

impl GroupView {
    pub fn new(g: &GroupDoc, populated: Option<&MessageDoc>) -> Self {
        GroupView {
            id: g.id.to_hex(),
            name: g.name.clone(),
            description: g.description.clone(),
            avatar: g.avatar.clone(),
            members: g.members.iter().map(|m| m.to_hex()).collect(),
            admin: g.admin.to_hex(),
            kind: g.kind,
            last_message_id: last(g.last_message_id, populated, Receipts::of_group(g)),
            permissions: g.permissions.clone(),
            unread_counts: g.unread_counts.clone(),
            mention_counts: g.mention_counts.clone(),
            created_at: iso(g.created_at),
            updated_at: iso(g.updated_at),
        }
    }
}

/// A page of history, as `GET .../messages` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    pub total: u64,
    pub page: u64,
    pub page_size: u64,
    pub has_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(members: &[ObjectId], permissions: Permissions) -> GroupDoc {
        let now = DateTime::from_millis(0);
        GroupDoc {
            id: ObjectId::new(),
            name: "team".into(),
            description: None,
            avatar: None,
            members: members.to_vec(),
            admin: members[0],
            kind: GroupType::Custom,
            last_message_id: None,
            permissions,
            unread_counts: PerUser::new(),
            created_at: now,
            updated_at: now,
            last_seq: 0,
            read_cursors: PerUser::new(),
            delivered_cursors: PerUser::new(),
            deleted: false,
            pins: vec![],
            mention_counts: Default::default(),
        }
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn group_rules_admin_anywhere_others_as_members_with_a_listed_role() {
        let (m, lead, outsider) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let perms = Permissions {
            can_add_members: roles(&["Admin", "Lead"]),
            can_remove_members: roles(&["Admin", "Lead"]),
            can_delete_messages: roles(&["Admin"]),
        };
        let mut g = group(&[m, lead], perms);
        // Admin: every rule, member or not.
        for admin in [m, outsider] {
            assert!(g.may_add(admin, &roles(&["Admin"])));
            assert!(g.may_remove(admin, &roles(&["Admin"])));
            assert!(g.may_delete(admin, &roles(&["Admin"]), lead));
        }
        // A listed role counts for members only.
        assert!(g.may_add(lead, &roles(&["Lead"])) && g.may_remove(lead, &roles(&["Lead"])));
        assert!(!g.may_add(outsider, &roles(&["Lead"])) && !g.may_remove(outsider, &roles(&["Lead"])));
        // Supervisor adds (the module's route guard), but does not remove.
        assert!(g.may_add(m, &roles(&["Supervisor"])) && !g.may_remove(m, &roles(&["Supervisor"])));
        assert!(!g.may_add(outsider, &roles(&["Supervisor"])));
        // Messages: the sender's own, or a listed role.
        assert!(g.may_delete(m, &[], m));
        assert!(!g.may_delete(m, &roles(&["Lead"]), lead));
        assert!(!g.may_delete(outsider, &[], outsider), "not a member: not even one's own");
        // A deleted group has no members.
        g.deleted = true;
        assert!(!g.is_member(m) && !g.may_add(lead, &roles(&["Lead"])) && !g.may_delete(m, &[], m));
        assert!(g.may_add(outsider, &roles(&["Admin"])), "Admin is not asked to be a member");
    }

    #[test]
    fn permissions_default_to_admin_only() {
        let p: Permissions = serde_json::from_str("{}").unwrap();
        assert_eq!(p.can_add_members, roles(&["Admin"]));
        assert_eq!(p.can_remove_members, roles(&["Admin"]));
        assert_eq!(p.can_delete_messages, roles(&["Admin"]));
    }
}

/// A user's place in a group, as the messages worker writes it beside the
/// group's `members`: the index of "the groups of a user". It lives apart
/// from the group so that the group document carries no index over its
/// members; with one, every write of a big group (its unread counts move
/// with each message) rewrites an index entry per member.
///
/// The seqs of the commands that last added and removed the user, each
/// only ever raised (`$max`): writes commute, and a replay or a stale
/// worker cannot move a membership back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MembershipDoc {
    /// `<group>.<user>`.
    #[serde(rename = "_id")]
    pub id: String,
    pub group_id: ObjectId,
    pub user_id: ObjectId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_seq: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_seq: Option<i64>,
}

impl MembershipDoc {
    pub fn key(group: ObjectId, user: ObjectId) -> String {
        format!("{}.{}", group.to_hex(), user.to_hex())
    }

    /// The filter and update that record `user` added to (`member`) or
    /// removed from `group` by the command at `seq`: an upsert raising
    /// that seq only, so writes commute.
    pub fn upsert(group: ObjectId, user: ObjectId, member: bool, seq: i64) -> (Document, Document) {
        let field = if member { "addedSeq" } else { "removedSeq" };
        (
            mongodb::bson::doc! {"_id": Self::key(group, user)},
            mongodb::bson::doc! {"$set": {"groupId": group, "userId": user}, "$max": {field: seq}},
        )
    }

    /// Added after it was last removed.
    pub fn is_member(&self) -> bool {
        self.added_seq.unwrap_or(-1) > self.removed_seq.unwrap_or(-1)
    }
}
