//! Who may see a room. Participants of a 1:1 conversation never change, so
//! they are cached per conversation (bounded), from MongoDB or, before it
//! is written, from the `conversation_created` event the hub relays (a
//! participant joining at once is not refused for the write-behind). Group
//! membership changes, so it is read from MongoDB on every check (the
//! worker re-checks each command at its `seq` anyway).

use mongodb::bson::oid::ObjectId;
use natter_shared::ids::{RoomKind, UserId};
use natter_shared::model::GroupDoc;
use natter_shared::store::Store;
use std::collections::HashMap;
use std::sync::Mutex;

const MAX_CACHED: usize = 100_000;

#[derive(Default)]
pub struct Membership {
    conversations: Mutex<HashMap<ObjectId, Vec<ObjectId>>>,
}

impl Membership {
    /// `Ok(None)` when the conversation does not exist.
    pub async fn participants(
        &self,
        store: &Store,
        conv: ObjectId,
    ) -> Result<Option<Vec<ObjectId>>, mongodb::error::Error> {
        if let Some(p) = self.lock().get(&conv) {
            return Ok(Some(p.clone()));
        }
        let Some(doc) = store.conversation(conv).await? else { return Ok(None) };
        let mut map = self.lock();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(conv, doc.participant_ids.clone());
        Ok(Some(doc.participant_ids))
    }

    /// Notes a conversation's participants, as its `conversation_created`
    /// event says (published by a worker once it applied the command).
    pub fn note_conversation(&self, conv: ObjectId, participants: Vec<ObjectId>) {
        let mut map = self.lock();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(conv, participants);
    }

    /// A group that exists and is not deleted.
    pub async fn group(&self, store: &Store, id: ObjectId) -> Result<Option<GroupDoc>, mongodb::error::Error> {
        store.live_group(id).await
    }

    pub async fn is_member(
        &self,
        store: &Store,
        kind: RoomKind,
        room: ObjectId,
        user: UserId,
    ) -> Result<bool, mongodb::error::Error> {
        Ok(match kind {
            RoomKind::Conversation => self.participants(store, room).await?.is_some_and(|p| p.contains(&user.oid())),
            RoomKind::Group => self.group(store, room).await?.is_some_and(|g| g.is_member(user.oid())),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Vec<ObjectId>>> {
        self.conversations.lock().unwrap_or_else(|e| e.into_inner())
    }
}
