//! Who may see a conversation. Participants of a 1:1 conversation never
//! change, so they are cached per conversation (bounded); a miss reads
//! MongoDB.

use mongodb::bson::oid::ObjectId;
use natter_shared::ids::UserId;
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
        let Some(doc) = store.conversation(conv).await? else {
            return Ok(None);
        };
        let mut map = self.lock();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(conv, doc.participant_ids.clone());
        Ok(Some(doc.participant_ids))
    }

    pub async fn is_participant(
        &self,
        store: &Store,
        conv: ObjectId,
        user: UserId,
    ) -> Result<bool, mongodb::error::Error> {
        Ok(self.participants(store, conv).await?.is_some_and(|p| p.contains(&user.oid())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Vec<ObjectId>>> {
        self.conversations.lock().unwrap_or_else(|e| e.into_inner())
    }
}
