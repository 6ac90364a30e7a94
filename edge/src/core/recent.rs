//! Messages this edge relayed or stored lately: their room and sender. A
//! client that reads or deletes a message it has just received names only
//! the message; this tells the edge where to route the command without a
//! database read, and works before the message is written (the worker
//! sends events out before its write, which follows within the
//! write-behind delay). Bounded: the oldest are forgotten first, and a
//! message not found here is looked up in MongoDB.

use mongodb::bson::oid::ObjectId;
use natter_shared::ids::RoomRef;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Messages remembered.
const KEEP: usize = 50_000;

/// Where a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    pub id: ObjectId,
    pub room: RoomRef,
    pub sender: ObjectId,
}

#[derive(Default)]
pub struct Recent {
    inner: Mutex<(HashMap<ObjectId, Known>, VecDeque<ObjectId>)>,
}

/// The fields of a `message_received` frame this needs.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(rename = "_id")]
    id: &'a str,
    #[serde(rename = "senderId")]
    sender: &'a str,
}

impl Recent {
    pub fn remember(&self, k: Known) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(k.id, k.clone()).is_none() {
            order.push_back(k.id);
        }
        while order.len() > KEEP {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    /// Remembers the message a relayed `message_received` frame carries.
    pub fn relayed(&self, room: &RoomRef, payload: &[u8]) {
        let Ok(f) = serde_json::from_slice::<Frame>(payload) else { return };
        if let (Ok(id), Ok(sender)) = (f.data.id.parse(), f.data.sender.parse()) {
            self.remember(Known { id, room: room.clone(), sender });
        }
    }

    pub fn get(&self, id: ObjectId) -> Option<Known> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0.get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_shared::ids::RoomKind;

    #[test]
    fn remembers_relayed_messages_and_forgets_the_oldest() {
        let r = Recent::default();
        let room = RoomRef::new(RoomKind::Conversation, ObjectId::new().to_hex());
        let (id, sender) = (ObjectId::new(), ObjectId::new());
        let frame = format!(
            r#"{{"type":"message_received","seq":3,"data":{{"_id":"{id}","senderId":"{sender}","content":"hi"}}}}"#
        );
        r.relayed(&room, frame.as_bytes());
        assert_eq!(r.get(id), Some(Known { id, room: room.clone(), sender }));
        r.relayed(&room, b"{\"type\":\"message_received\",\"data\":{}}");
        for _ in 0..KEEP {
            r.remember(Known { id: ObjectId::new(), room: room.clone(), sender });
        }
        assert_eq!(r.get(id), None, "the oldest goes first");
    }
}
