//! A room (conversation or group) as the messages role sees it while it
//! applies the room's commands in stream order: members, cursors and
//! counters in memory, committed to the room's document with a
//! compare-and-set on `lastSeq`.

use crate::handler::ApplyError;
use mongodb::Collection;
use mongodb::bson::{Document, doc, oid::ObjectId};
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::model::{CONVERSATIONS, ConversationDoc, GROUPS, GroupDoc, PerUser};
use natter_shared::store::Store;

pub(super) struct Room {
    pub kind: RoomKind,
    pub id: ObjectId,
    pub members: Vec<ObjectId>,
    /// Highest command seq applied to the room.
    pub last_seq: i64,
    pub read: PerUser,
    pub unread: PerUser,
    /// The whole document, for groups (admin, permissions, tombstone).
    pub group: Option<GroupDoc>,
}

pub(super) fn collection(store: &Store, kind: RoomKind) -> Collection<Document> {
    store.db().collection(match kind {
        RoomKind::Conversation => CONVERSATIONS,
        RoomKind::Group => GROUPS,
    })
}

impl Room {
    pub fn from_conversation(c: ConversationDoc) -> Room {
        Room {
            kind: RoomKind::Conversation,
            id: c.id,
            members: c.participant_ids,
            last_seq: c.last_seq,
            read: c.read_cursors,
            unread: c.unread_counts,
            group: None,
        }
    }

    pub fn from_group(g: GroupDoc) -> Room {
        Room {
            kind: RoomKind::Group,
            id: g.id,
            members: g.members.clone(),
            last_seq: g.last_seq,
            read: g.read_cursors.clone(),
            unread: g.unread_counts.clone(),
            group: Some(g),
        }
    }

    pub async fn load(store: &Store, room: &RoomRef, id: ObjectId) -> Result<Option<Room>, ApplyError> {
        Ok(match room.kind {
            RoomKind::Conversation => store.conversation(id).await?.map(Room::from_conversation),
            RoomKind::Group => store.groups().find_one(doc! {"_id": id}).await?.map(Room::from_group),
        })
    }

    pub fn room_ref(&self) -> RoomRef {
        RoomRef::new(self.kind, self.id.to_hex())
    }

    pub fn is_member(&self, user: ObjectId) -> bool {
        self.members.contains(&user)
    }

    /// A deleted group accepts nothing more.
    pub fn deleted(&self) -> bool {
        self.group.as_ref().is_some_and(|g| g.deleted)
    }

    /// The filter that selects this room's messages.
    pub fn messages_filter(&self) -> Document {
        doc! {self.kind.field(): self.id.to_hex()}
    }

    /// Applies `update` to the room document unless a later command was
    /// applied meanwhile (then the batch is retried and finds it applied),
    /// and advances `lastSeq` to `seq`.
    pub async fn commit(&mut self, store: &Store, seq: u64, mut update: Document) -> Result<(), ApplyError> {
        let seq = seq as i64;
        let mut set = update.get_document("$set").cloned().unwrap_or_default();
        set.insert("lastSeq", seq);
        update.insert("$set", set);
        let res =
            collection(store, self.kind).update_one(doc! {"_id": self.id, "lastSeq": self.last_seq}, update).await?;
        if res.matched_count != 1 {
            return Err(ApplyError::transient(format!("room {} changed under us; retrying", self.id)));
        }
        self.last_seq = seq;
        Ok(())
    }
}
