//! A room (conversation or group) as the worker holding its partition keeps
//! it in memory between batches: the document, its newest messages
//! (`Tail`), and what changed since it was last written. One write per
//! batch commits the changes, guarded by the `lastSeq` MongoDB holds, so a
//! stale owner's write matches nothing.

use super::tail::{Entry, Tail};
use super::writes::Tombstone;
use mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId, to_document};
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::model::{ConversationDoc, GroupDoc, MessageDoc, PerUser, Pin};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub(super) enum Doc {
    Conversation(ConversationDoc),
    Group(GroupDoc),
}

/// The per-user maps of a room document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cursor {
    Read,
    Delivered,
    Unread,
    /// Unread messages that mention the user.
    Mentions,
}

impl Cursor {
    const ALL: [Cursor; 4] = [Cursor::Read, Cursor::Delivered, Cursor::Unread, Cursor::Mentions];

    fn index(self) -> usize {
        self as usize
    }

    fn field(self) -> &'static str {
        match self {
            Cursor::Read => "readCursors",
            Cursor::Delivered => "deliveredCursors",
            Cursor::Unread => "unreadCounts",
            Cursor::Mentions => "mentionCounts",
        }
    }
}

/// From how many changed entries of one per-user map a write sets the
/// whole map instead of each entry (`Room::put`).
const WHOLE_MAP_FROM: usize = 32;

pub(super) struct Room {
    pub key: RoomRef,
    pub doc: Doc,
    pub tail: Tail,
    /// `lastSeq` as MongoDB holds it; `None` until the document is inserted.
    stored_seq: Option<i64>,
    set: Document,
    unset: Document,
    /// Per cursor map: whether the next write sets it whole (then no
    /// dotted path of it is staged), else how many of its entries are
    /// staged.
    whole: [bool; 4],
    entries: [usize; 4],
    /// Read from the database in this batch: MongoDB may hold messages of
    /// it that the worker has not seen (a dead worker's last batch).
    pub fresh: bool,
    /// Tombstones of messages older than the tail that are not written
    /// yet, with the take they go out with (reads of the database must
    /// discount them).
    unwritten: Vec<(u64, Tombstone)>,
    /// Messages whose stored copy is behind memory (sent, edited or
    /// reacted to, and not written yet), with the take they go out with:
    /// the next change of one starts from here, not from the database.
    changed: HashMap<ObjectId, (u64, MessageDoc)>,
}

/// A write of a room document.
#[derive(Clone, Debug)]
pub(super) enum RoomWrite {
    Insert(Box<Doc>),
    /// Applies `update` if `lastSeq` is still `expect`.
    Update {
        expect: i64,
        update: Document,
    },
}

impl Room {
    /// A room as read from the database.
    pub fn loaded(doc: Doc) -> Room {
        let last = doc.last_seq();
        Room {
            key: doc.key(),
            doc,
            tail: Tail::new(last),
            stored_seq: Some(last),
            set: Document::new(),
            unset: Document::new(),
            whole: [false; 4],
            entries: [0; 4],
            fresh: true,
            unwritten: Vec::new(),
            changed: HashMap::new(),
        }
    }

    /// A room created by a command of this batch.
    pub fn created(doc: Doc) -> Room {
        let last = doc.last_seq();
        Room {
            key: doc.key(),
            doc,
            tail: Tail::new(last),
            stored_seq: None,
            set: Document::new(),
            unset: Document::new(),
            whole: [false; 4],
            entries: [0; 4],
            fresh: false,
            unwritten: Vec::new(),
            changed: HashMap::new(),
        }
    }

    pub fn kind(&self) -> RoomKind {
        self.key.kind
    }

    pub fn id(&self) -> ObjectId {
        match &self.doc {
            Doc::Conversation(c) => c.id,
            Doc::Group(g) => g.id,
        }
    }

    pub fn members(&self) -> &[ObjectId] {
        match &self.doc {
            Doc::Conversation(c) => &c.participant_ids,
            Doc::Group(g) => &g.members,
        }
    }

    pub fn is_member(&self, user: ObjectId) -> bool {
        self.members().contains(&user)
    }

    pub fn group(&self) -> Option<&GroupDoc> {
        match &self.doc {
            Doc::Group(g) => Some(g),
            Doc::Conversation(_) => None,
        }
    }

    /// A deleted group accepts nothing more.
    pub fn deleted(&self) -> bool {
        self.group().is_some_and(|g| g.deleted)
    }

    /// Highest command seq applied to the room.
    pub fn last_seq(&self) -> i64 {
        self.doc.last_seq()
    }

    /// Marks the command at `seq` applied.
    pub fn advance(&mut self, seq: u64) {
        let seq = seq as i64;
        match &mut self.doc {
            Doc::Conversation(c) => c.last_seq = c.last_seq.max(seq),
            Doc::Group(g) => g.last_seq = g.last_seq.max(seq),
        }
    }

    fn map(&self, c: Cursor) -> &PerUser {
        match (&self.doc, c) {
            (Doc::Conversation(d), Cursor::Read) => &d.read_cursors,
            (Doc::Conversation(d), Cursor::Delivered) => &d.delivered_cursors,
            (Doc::Conversation(d), Cursor::Unread) => &d.unread_counts,
            (Doc::Conversation(d), Cursor::Mentions) => &d.mention_counts,
            (Doc::Group(d), Cursor::Read) => &d.read_cursors,
            (Doc::Group(d), Cursor::Delivered) => &d.delivered_cursors,
            (Doc::Group(d), Cursor::Unread) => &d.unread_counts,
            (Doc::Group(d), Cursor::Mentions) => &d.mention_counts,
        }
    }

    fn map_mut(&mut self, c: Cursor) -> &mut PerUser {
        match (&mut self.doc, c) {
            (Doc::Conversation(d), Cursor::Read) => &mut d.read_cursors,
            (Doc::Conversation(d), Cursor::Delivered) => &mut d.delivered_cursors,
            (Doc::Conversation(d), Cursor::Unread) => &mut d.unread_counts,
            (Doc::Conversation(d), Cursor::Mentions) => &mut d.mention_counts,
            (Doc::Group(d), Cursor::Read) => &mut d.read_cursors,
            (Doc::Group(d), Cursor::Delivered) => &mut d.delivered_cursors,
            (Doc::Group(d), Cursor::Unread) => &mut d.unread_counts,
            (Doc::Group(d), Cursor::Mentions) => &mut d.mention_counts,
        }
    }

    pub fn get(&self, c: Cursor, user: ObjectId) -> i64 {
        self.map(c).get(&user.to_hex()).copied().unwrap_or(0)
    }

    /// Sets `user`'s entry of a per-user map. A message to a big group
    /// changes every member's unread count: past `WHOLE_MAP_FROM` staged
    /// entries the map is written whole, and from then on until the write
    /// an entry costs only the map's update.
    pub fn put(&mut self, c: Cursor, user: ObjectId, value: i64) {
        let u = user.to_hex();
        let map = self.map_mut(c);
        match map.get_mut(&u) {
            Some(v) => *v = value,
            None => {
                map.insert(u.clone(), value);
            }
        }
        if self.whole[c.index()] {
            return;
        }
        let path = format!("{}.{u}", c.field());
        self.unset.remove(&path);
        if self.set.insert(path, Bson::Int64(value)).is_none() {
            self.entries[c.index()] += 1;
            if self.entries[c.index()] > WHOLE_MAP_FROM {
                self.write_whole(c);
            }
        }
    }

    /// Removes a user's entries from every per-user map.
    pub fn drop_user(&mut self, user: ObjectId) {
        let u = user.to_hex();
        for c in Cursor::ALL {
            self.map_mut(c).remove(&u);
            if self.whole[c.index()] {
                continue;
            }
            let path = format!("{}.{u}", c.field());
            self.set.remove(&path);
            if self.unset.insert(path, "").is_none() {
                self.entries[c.index()] += 1;
                if self.entries[c.index()] > WHOLE_MAP_FROM {
                    self.write_whole(c);
                }
            }
        }
    }

    /// The next write sets map `c` whole: its dotted paths go. Setting each
    /// of many entries costs MongoDB far more than the map (it resolves each
    /// dotted path against the document: the embedded server took 1.3 s for
    /// 2,000 paths into a group of 1,000, 12 ms for the two maps whole). The
    /// worker holding the partition is the room's only writer, so memory
    /// has the whole map.
    fn write_whole(&mut self, c: Cursor) {
        let prefix = format!("{}.", c.field());
        let keep =
            |d: &mut Document| *d = std::mem::take(d).into_iter().filter(|(k, _)| !k.starts_with(&prefix)).collect();
        keep(&mut self.set);
        keep(&mut self.unset);
        self.whole[c.index()] = true;
    }

    /// How far `user` has read or received (reading implies receiving).
    pub fn seen(&self, user: ObjectId) -> i64 {
        self.get(Cursor::Read, user).max(self.get(Cursor::Delivered, user))
    }

    /// Records the room's newest message.
    /// Notes a new message: the room's newest, at the end of its tail.
    pub fn append(&mut self, m: &natter_shared::model::MessageDoc, counts: bool) {
        self.set_last_message(m.id, m.created_at);
        self.tail.push(Entry {
            seq: m.seq,
            id: m.id,
            sender: m.sender_id,
            counts,
            deleted: false,
            delivered: false,
            mentions: m.mentions.clone().into(),
        });
    }

    fn set_last_message(&mut self, id: ObjectId, at: DateTime) {
        match &mut self.doc {
            Doc::Conversation(c) => (c.last_message_id, c.updated_at) = (Some(id), at),
            Doc::Group(g) => (g.last_message_id, g.updated_at) = (Some(id), at),
        }
        self.stage("lastMessageId".into(), Bson::ObjectId(id));
        self.stage("updatedAt".into(), Bson::DateTime(at));
    }

    /// Notes that `user` has written in a conversation; true when this
    /// makes every participant a writer (they become contacts).
    pub fn note_writer(&mut self, user: ObjectId) -> bool {
        let Doc::Conversation(c) = &mut self.doc else { return false };
        if c.writers.contains(&user) {
            return false;
        }
        c.writers.push(user);
        let value = Bson::Array(c.writers.iter().copied().map(Bson::ObjectId).collect());
        let both = c.established();
        self.stage("writers".into(), value);
        both
    }

    /// Changes the group document through `f`, staging the fields it names.
    pub fn update_group(&mut self, f: impl FnOnce(&mut GroupDoc) -> Vec<(&'static str, Bson)>) {
        let Doc::Group(g) = &mut self.doc else { return };
        for (field, value) in f(g) {
            self.stage(field.into(), value);
        }
    }

    /// Notes a changed field for the next write.
    fn stage(&mut self, path: String, value: Bson) {
        self.unset.remove(&path);
        self.set.insert(path, value);
    }

    /// Notes a tombstone of a message older than the tail, going out with
    /// take `generation`.
    pub fn tombstoned(&mut self, generation: u64, t: Tombstone) {
        self.unwritten.push((generation, t));
    }

    /// Notes a message as this worker has it after take `generation`.
    pub fn changed(&mut self, generation: u64, m: MessageDoc) {
        self.changed.insert(m.id, (generation, m));
    }

    /// A message as changed in memory and not written yet.
    pub fn unwritten_message(&self, id: ObjectId) -> Option<&MessageDoc> {
        self.changed.get(&id).map(|(_, m)| m)
    }

    pub fn pins(&self) -> &[Pin] {
        match &self.doc {
            Doc::Conversation(c) => &c.pins,
            Doc::Group(g) => &g.pins,
        }
    }

    /// Changes the pins through `f`; staged when it says it changed them.
    pub fn update_pins(&mut self, f: impl FnOnce(&mut Vec<Pin>) -> bool) -> Result<(), mongodb::bson::ser::Error> {
        let pins = match &mut self.doc {
            Doc::Conversation(c) => &mut c.pins,
            Doc::Group(g) => &mut g.pins,
        };
        if f(pins) {
            let value = mongodb::bson::to_bson(pins)?;
            self.stage("pins".into(), value);
        }
        Ok(())
    }

    /// Tombstones not written yet.
    pub fn unwritten(&self) -> impl Iterator<Item = &Tombstone> {
        self.unwritten.iter().map(|(_, t)| t)
    }

    /// The write that commits what changed since the last one, if anything
    /// did; afterwards the room counts as written.
    pub fn take_write(&mut self) -> Option<RoomWrite> {
        for c in Cursor::ALL {
            if self.whole[c.index()] {
                let whole: Document = self.map(c).iter().map(|(u, v)| (u.clone(), Bson::Int64(*v))).collect();
                self.set.insert(c.field(), whole);
            }
        }
        (self.whole, self.entries) = ([false; 4], [0; 4]);
        let last = self.last_seq();
        let write = match self.stored_seq {
            None => Some(RoomWrite::Insert(Box::new(self.doc.clone()))),
            Some(stored) if stored != last || !self.set.is_empty() || !self.unset.is_empty() => {
                let mut set = std::mem::take(&mut self.set);
                set.insert("lastSeq", last);
                let mut update = doc! {"$set": set};
                let unset = std::mem::take(&mut self.unset);
                if !unset.is_empty() {
                    update.insert("$unset", unset);
                }
                Some(RoomWrite::Update { expect: stored, update })
            }
            Some(_) => None,
        };
        self.stored_seq = Some(last);
        write
    }

    /// After take `generation` was written: its tombstones are in the
    /// database, and what every member has passed can be forgotten from
    /// the tail.
    pub fn written(&mut self, generation: u64) {
        self.unwritten.retain(|(g, _)| *g > generation);
        self.changed.retain(|_, (g, _)| *g > generation);
        let floor = self.members().iter().map(|m| self.seen(*m)).min().unwrap_or(0);
        self.tail.trim(floor);
    }
}

impl Doc {
    pub fn last_seq(&self) -> i64 {
        match self {
            Doc::Conversation(c) => c.last_seq,
            Doc::Group(g) => g.last_seq,
        }
    }

    pub fn key(&self) -> RoomRef {
        match self {
            Doc::Conversation(c) => RoomRef::new(RoomKind::Conversation, c.id.to_hex()),
            Doc::Group(g) => RoomRef::new(RoomKind::Group, g.id.to_hex()),
        }
    }

    pub fn to_document(&self) -> Result<Document, mongodb::bson::ser::Error> {
        match self {
            Doc::Conversation(c) => to_document(c),
            Doc::Group(g) => to_document(g),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_shared::model::{GroupType, Permissions};

    fn group(members: usize) -> Room {
        let members: Vec<ObjectId> = (0..members).map(|_| ObjectId::new()).collect();
        Room::loaded(Doc::Group(GroupDoc {
            id: ObjectId::new(),
            name: "g".into(),
            description: None,
            avatar: None,
            admin: members[0],
            kind: GroupType::Custom,
            last_message_id: None,
            permissions: Permissions::default(),
            unread_counts: members.iter().map(|m| (m.to_hex(), 0)).collect(),
            created_at: DateTime::from_millis(0),
            updated_at: DateTime::from_millis(0),
            last_seq: 1,
            read_cursors: Default::default(),
            delivered_cursors: Default::default(),
            deleted: false,
            pins: vec![],
            mention_counts: Default::default(),
            members,
        }))
    }

    fn set_of(w: Option<RoomWrite>) -> Document {
        match w {
            Some(RoomWrite::Update { update, .. }) => update.get_document("$set").expect("$set").clone(),
            other => panic!("not an update: {other:?}"),
        }
    }

    #[test]
    fn a_few_changed_entries_are_set_one_by_one() {
        let mut room = group(100);
        let m: Vec<ObjectId> = room.members()[..3].to_vec();
        for u in &m {
            room.put(Cursor::Unread, *u, 7);
        }
        room.advance(2);
        let set = set_of(room.take_write());
        assert!(!set.contains_key("unreadCounts"));
        for u in &m {
            assert_eq!(set.get_i64(format!("unreadCounts.{}", u.to_hex())), Ok(7));
        }
        assert_eq!(set.get_i64("lastSeq"), Ok(2));
    }

    #[test]
    fn many_changed_entries_set_the_whole_map_with_removals_and_other_maps_untouched() {
        let mut room = group(100);
        let members = room.members().to_vec();
        for (i, u) in members.iter().enumerate() {
            room.put(Cursor::Unread, *u, i as i64);
        }
        room.put(Cursor::Delivered, members[0], 9);
        room.drop_user(members[1]);
        room.advance(3);
        let set = set_of(room.take_write());
        let whole = set.get_document("unreadCounts").expect("the whole map");
        assert_eq!(whole.len(), 99, "the dropped user is not in it");
        assert_eq!(whole.get_i64(members[5].to_hex()), Ok(5));
        assert!(!whole.contains_key(members[1].to_hex()));
        assert!(set.keys().all(|k| !k.starts_with("unreadCounts.")), "no dotted path beside the whole map");
        assert_eq!(set.get_i64(format!("deliveredCursors.{}", members[0].to_hex())), Ok(9));
        // The next write is back to dotted paths.
        room.put(Cursor::Unread, members[2], 1);
        room.advance(4);
        let set = set_of(room.take_write());
        assert_eq!(set.get_i64(format!("unreadCounts.{}", members[2].to_hex())), Ok(1));
        assert!(!set.contains_key("unreadCounts"));
    }
}
