//! The rooms of a partition the worker holds, kept in memory between
//! batches: each is read from MongoDB once (all of a batch's missing rooms
//! in one query per collection), then known from what the worker applied.
//! A write that finds a room changed under it drops the room, and the
//! batch is applied again against what the database holds.

use super::room::{Doc, Room};
use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId};
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::store::Store;
use std::collections::{BTreeSet, HashMap};

/// Rooms kept per partition; the least recently used go beyond it.
const MAX_ROOMS: usize = 4096;

#[derive(Default)]
pub struct Rooms {
    map: HashMap<RoomRef, (Room, u64)>,
    /// Batches applied, to tell which rooms were used last.
    clock: u64,
}

impl Rooms {
    pub(super) fn get_mut(&mut self, key: &RoomRef) -> Option<&mut Room> {
        let clock = self.clock;
        self.map.get_mut(key).map(|(r, used)| {
            *used = clock;
            r
        })
    }

    pub(super) fn insert(&mut self, room: Room) {
        self.map.insert(room.key.clone(), (room, self.clock));
    }

    /// Drops rooms whose state may be wrong (a failed or partial write).
    pub(super) fn forget<'a>(&mut self, keys: impl IntoIterator<Item = &'a RoomRef>) {
        for k in keys {
            self.map.remove(k);
        }
    }

    /// Reads the rooms among `keys` that are not in memory (and exist).
    pub(super) async fn load(&mut self, store: &Store, keys: &BTreeSet<RoomRef>) -> Result<(), mongodb::error::Error> {
        self.clock += 1;
        self.evict();
        let missing = |kind: RoomKind| -> Vec<ObjectId> {
            keys.iter()
                .filter(|k| k.kind == kind && !self.map.contains_key(*k))
                .filter_map(|k| k.id.parse().ok())
                .collect()
        };
        let (convs, groups) = (missing(RoomKind::Conversation), missing(RoomKind::Group));
        if !convs.is_empty() {
            let mut cur = store.conversations().find(doc! {"_id": {"$in": convs}}).await?;
            while let Some(c) = cur.try_next().await? {
                self.insert(Room::loaded(Doc::Conversation(c)));
            }
        }
        if !groups.is_empty() {
            let mut cur = store.groups().find(doc! {"_id": {"$in": groups}}).await?;
            while let Some(g) = cur.try_next().await? {
                self.insert(Room::loaded(Doc::Group(g)));
            }
        }
        Ok(())
    }

    /// Keeps memory bounded: past `MAX_ROOMS`, the least recently used
    /// tenth goes (it is read again if it comes back).
    fn evict(&mut self) {
        if self.map.len() <= MAX_ROOMS {
            return;
        }
        let mut ages: Vec<u64> = self.map.values().map(|(_, used)| *used).collect();
        ages.sort_unstable();
        let cut = ages[self.map.len() / 10];
        self.map.retain(|_, (_, used)| *used > cut);
    }
}
