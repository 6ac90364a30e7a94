//! The rooms of a partition the worker holds, kept in memory between
//! batches: each is read from MongoDB once (all of a batch's missing rooms
//! in one query per collection), then known from what the worker applied.
//! A write that finds a room changed under it drops the room, and the
//! batch is applied again against what the database holds.

use super::room::{Doc, Room};
use super::writes::Writes;
use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId};
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::store::Store;
use natter_shared::store::round_trip;
use std::collections::{BTreeSet, HashMap};

/// Rooms kept per partition; the least recently used go beyond it.
const MAX_ROOMS: usize = 4096;

/// Also what applied batches staged: writes are taken (with a write of
/// every room changed since the last take) and written behind.
#[derive(Default)]
pub struct Rooms {
    map: HashMap<RoomRef, (Room, u64)>,
    /// Batches applied, to tell which rooms were used last.
    clock: u64,
    staged: Writes,
    /// Rooms changed since the last take.
    dirty: BTreeSet<RoomRef>,
    /// Takes so far; and the rooms of the take being written, with its
    /// number.
    generation: u64,
    writing: Option<(u64, BTreeSet<RoomRef>)>,
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

    /// The number of the take what is applied now goes out with.
    pub(super) fn generation(&self) -> u64 {
        self.generation + 1
    }

    /// Keeps what a batch applied to `rooms` staged, for the next take.
    pub(super) fn stage(&mut self, writes: Writes, rooms: &[RoomRef]) {
        self.staged.append(writes);
        for key in rooms {
            if let Some((room, _)) = self.map.get_mut(key) {
                room.fresh = false;
                self.dirty.insert(key.clone());
            }
        }
    }

    /// The most members a room changed since the last take has.
    pub(super) fn most_members_dirty(&self) -> usize {
        self.dirty.iter().filter_map(|k| self.map.get(k)).map(|(r, _)| r.members().len()).max().unwrap_or(0)
    }

    /// Everything staged, then a write of each room changed since the last
    /// take (messages before rooms: a room's `lastSeq` never moves past a
    /// message that is not stored).
    pub(super) fn take(&mut self) -> Writes {
        self.generation += 1;
        let mut writes = std::mem::take(&mut self.staged);
        let dirty = std::mem::take(&mut self.dirty);
        for key in &dirty {
            let Some((room, _)) = self.map.get_mut(key) else { continue };
            if let Some(w) = room.take_write() {
                writes.room(room.kind(), room.id(), w);
            }
        }
        self.writing = Some((self.generation, dirty));
        writes
    }

    /// After the oldest take in flight was written (`ok`), or failed (or an
    /// apply did): then every room changed since is read again.
    pub(super) fn written(&mut self, ok: bool) {
        let writing = self.writing.take();
        if ok {
            if let Some((generation, rooms)) = writing {
                for key in rooms {
                    if let Some((room, _)) = self.map.get_mut(&key) {
                        room.written(generation);
                    }
                }
            }
            return;
        }
        let mut gone: BTreeSet<RoomRef> = std::mem::take(&mut self.dirty);
        gone.extend(writing.into_iter().flat_map(|(_, rooms)| rooms));
        self.forget(&gone);
        self.staged = Writes::default();
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
            round_trip("load_rooms");
            let mut cur = store.conversations().find(doc! {"_id": {"$in": convs}}).await?;
            while let Some(c) = cur.try_next().await? {
                self.insert(Room::loaded(Doc::Conversation(c)));
            }
        }
        if !groups.is_empty() {
            round_trip("load_rooms");
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
        let writing = self.writing.as_ref().map(|(_, r)| r);
        // A room with changes not yet written stays.
        let (dirty, writing) = (&self.dirty, writing);
        self.map.retain(|k, (_, used)| *used > cut || dirty.contains(k) || writing.is_some_and(|w| w.contains(k)));
    }
}
