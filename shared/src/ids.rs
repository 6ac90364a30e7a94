//! Identifier newtypes. User ids are MongoDB ObjectIds, as in the NestJS module
//! (it stored `senderId` and `participantIds` as ObjectId); parsing at the
//! boundary means an invalid id never travels further.

use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// An id newtype over an ObjectId, serialized as its 24-hex string and
/// parsed once, where it enters (the edge, or a command being decoded): a
/// command whose id is not an ObjectId does not decode.
macro_rules! oid_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(pub ObjectId);

        impl $name {
            pub fn oid(&self) -> ObjectId {
                self.0
            }
            pub fn hex(&self) -> String {
                self.0.to_hex()
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_oid(s).map($name).ok_or_else(|| format!("{} `{s}` is not a 24-character hex ObjectId", $what))
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(u: $name) -> String {
                u.hex()
            }
        }

        impl From<ObjectId> for $name {
            fn from(id: ObjectId) -> Self {
                $name(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.to_hex())
            }
        }
    };
}

oid_newtype!(
    /// A user id (the NestJS module stored `senderId` and `participantIds`
    /// as ObjectIds).
    UserId,
    "user id"
);
oid_newtype!(
    /// A message id.
    MessageId,
    "messageId"
);
oid_newtype!(
    /// A 1:1 conversation's id.
    ConversationId,
    "conversationId"
);
oid_newtype!(
    /// A group's id.
    GroupId,
    "groupId"
);
oid_newtype!(
    /// An uploaded attachment's id.
    AttachmentId,
    "attachment id"
);

/// The two kinds of room a message can belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoomKind {
    Conversation,
    Group,
}

impl RoomKind {
    /// The message field naming the room (`conversationId` / `groupId`).
    pub fn field(self) -> &'static str {
        match self {
            RoomKind::Conversation => "conversationId",
            RoomKind::Group => "groupId",
        }
    }

    /// The collection holding rooms of this kind.
    pub fn collection(self) -> &'static str {
        match self {
            RoomKind::Conversation => crate::model::CONVERSATIONS,
            RoomKind::Group => crate::model::GROUPS,
        }
    }
}

/// A room: its kind and id (24-hex).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomRef {
    pub kind: RoomKind,
    pub id: String,
}

impl RoomRef {
    pub fn new(kind: RoomKind, id: impl Into<String>) -> Self {
        RoomRef { kind, id: id.into() }
    }

    /// From a payload's `conversationId` / `groupId`: exactly one must be set.
    pub fn from_fields(conversation: Option<&str>, group: Option<&str>) -> Result<RoomRef, &'static str> {
        match (conversation, group) {
            (Some(c), None) => Ok(RoomRef::new(RoomKind::Conversation, c)),
            (None, Some(g)) => Ok(RoomRef::new(RoomKind::Group, g)),
            (Some(_), Some(_)) => Err("give conversationId or groupId, not both"),
            (None, None) => Err("conversationId or groupId is required"),
        }
    }

    /// The filter selecting the room's messages. Both room fields are
    /// named (one equal to the id, the other absent), so that one index,
    /// `{conversationId, groupId, seq}`, serves conversations and groups
    /// alike, in `seq` order.
    pub fn messages(&self) -> mongodb::bson::Document {
        match self.kind {
            RoomKind::Conversation => mongodb::bson::doc! {"conversationId": &self.id, "groupId": null},
            RoomKind::Group => mongodb::bson::doc! {"conversationId": null, "groupId": &self.id},
        }
    }

    /// The filter selecting the room's messages that are not deleted.
    pub fn live_messages(&self) -> mongodb::bson::Document {
        let mut f = self.messages();
        f.insert("deleted", mongodb::bson::doc! {"$ne": true});
        f
    }

    /// At most one room: `None` when neither field is set.
    pub fn optional(conversation: Option<&str>, group: Option<&str>) -> Result<Option<RoomRef>, &'static str> {
        match (conversation, group) {
            (None, None) => Ok(None),
            _ => RoomRef::from_fields(conversation, group).map(Some),
        }
    }
}

/// Parses a 24-hex ObjectId given by a client, as a string field or path segment.
pub fn parse_oid(s: &str) -> Option<ObjectId> {
    if s.len() != 24 {
        return None;
    }
    ObjectId::parse_str(s).ok()
}

/// The SHA-256 of `bytes` as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// An ObjectId derived from a hash of its parts, so that every edge (and every
/// retry) that names the same thing computes the same id: a retried
/// `send_message` with the same `clientMsgId` gets the message id of the first
/// attempt, and two edges opening the same 1:1 conversation at once agree on it.
pub fn derived_oid(kind: &str, parts: &[&str]) -> ObjectId {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 12];
    bytes.copy_from_slice(&digest[..12]);
    ObjectId::from_bytes(bytes)
}

/// The id of the 1:1 conversation between two users, independent of order.
pub fn conversation_id_for(a: UserId, b: UserId) -> ObjectId {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    derived_oid("conversation", &[&lo.hex(), &hi.hex()])
}

/// The id of a message from its sender and the client's idempotency key.
pub fn message_id_for(sender: UserId, client_msg_id: &str) -> ObjectId {
    derived_oid("message", &[&sender.hex(), client_msg_id])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_id_is_symmetric_and_distinct() {
        let a = UserId(ObjectId::new());
        let b = UserId(ObjectId::new());
        let c = UserId(ObjectId::new());
        assert_eq!(conversation_id_for(a, b), conversation_id_for(b, a));
        assert_ne!(conversation_id_for(a, b), conversation_id_for(a, c));
    }

    #[test]
    fn message_id_depends_on_sender_and_key() {
        let a = UserId(ObjectId::new());
        let b = UserId(ObjectId::new());
        assert_eq!(message_id_for(a, "k1"), message_id_for(a, "k1"));
        assert_ne!(message_id_for(a, "k1"), message_id_for(a, "k2"));
        assert_ne!(message_id_for(a, "k1"), message_id_for(b, "k1"));
    }

    #[test]
    fn user_id_rejects_non_hex() {
        assert!("alice".parse::<UserId>().is_err());
        assert!("64b7f0c2a1b2c3d4e5f60718".parse::<UserId>().is_ok());
        assert!(parse_oid("zz").is_none());
    }
}
