//! The newest messages of a room, as the worker that applied them knows
//! them: enough to answer receipts (which messages a cursor passes, who
//! sent them) and deletes without reading MongoDB back. It covers every
//! message above `from`; what is older is read from the database.

use mongodb::bson::oid::ObjectId;
use std::collections::VecDeque;

/// Most messages that count toward unread (not `system`) a room's tail
/// keeps.
pub const MAX_TAIL: usize = 512;
/// Most messages of any kind a room's tail keeps. `system` messages (one
/// per member added or removed) are kept beyond `MAX_TAIL`, up to this:
/// otherwise a group that grew one member at a time has a tail of nothing
/// but them, and every receipt of a member whose cursor is older reads
/// MongoDB.
pub const MAX_TAIL_ALL: usize = 4 * MAX_TAIL;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub id: ObjectId,
    pub sender: ObjectId,
    /// Counts toward unread (not a `system` message).
    pub counts: bool,
    pub deleted: bool,
    /// A member other than the sender has received or read it (its
    /// `delivered` status went out).
    pub delivered: bool,
    /// The members it mentions.
    pub mentions: Box<[ObjectId]>,
}

#[derive(Clone, Debug)]
pub struct Tail {
    /// Every message with a greater seq is in `entries`.
    from: i64,
    entries: VecDeque<Entry>,
    /// How many of `entries` count toward unread.
    counting: usize,
}

impl Tail {
    /// A tail that knows nothing at or below `from` (the room's seq when
    /// it was read from the database).
    pub fn new(from: i64) -> Tail {
        Tail { from, entries: VecDeque::new(), counting: 0 }
    }

    pub fn from(&self) -> i64 {
        self.from
    }

    /// Whether every message with a seq above `seq` is here.
    pub fn covers(&self, seq: i64) -> bool {
        seq >= self.from
    }

    /// Appends a message applied after every one here.
    pub fn push(&mut self, e: Entry) {
        debug_assert!(self.entries.back().is_none_or(|b| b.seq < e.seq));
        self.counting += usize::from(e.counts);
        self.entries.push_back(e);
    }

    pub fn get(&self, id: ObjectId) -> Option<&Entry> {
        self.entries.iter().rev().find(|e| e.id == id)
    }

    pub fn get_mut(&mut self, id: ObjectId) -> Option<&mut Entry> {
        self.entries.iter_mut().rev().find(|e| e.id == id)
    }

    /// The messages with a seq in `(lo, hi]` (only those above `from` are
    /// known here).
    pub fn between(&self, lo: i64, hi: i64) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.seq > lo && e.seq <= hi)
    }

    /// Prepends `older`, the room's messages (oldest first) with a seq in
    /// `(from, self.from]`: every one of them.
    pub fn backfill(&mut self, older: Vec<Entry>, from: i64) {
        debug_assert!(older.windows(2).all(|w| w[0].seq < w[1].seq));
        debug_assert!(older.first().is_none_or(|e| e.seq > from) && older.last().is_none_or(|e| e.seq <= self.from));
        for e in older.into_iter().rev() {
            self.counting += usize::from(e.counts);
            self.entries.push_front(e);
        }
        self.from = self.from.min(from);
    }

    /// Notes that `user`'s cursors passed the messages in `(lo, hi]`: those
    /// of others have reached a member other than their sender.
    pub fn mark_delivered(&mut self, lo: i64, hi: i64, user: ObjectId) {
        for e in self.entries.iter_mut().filter(|e| e.seq > lo && e.seq <= hi && e.sender != user) {
            e.delivered = true;
        }
    }

    /// Forgets what nobody can still ask about: messages every member's
    /// cursors have passed (`floor`), and the oldest beyond `MAX_TAIL`
    /// counting or `MAX_TAIL_ALL` in all.
    pub fn trim(&mut self, floor: i64) {
        while let Some(front) = self.entries.front() {
            if front.seq > floor && self.counting <= MAX_TAIL && self.entries.len() <= MAX_TAIL_ALL {
                break;
            }
            self.from = self.from.max(front.seq);
            self.counting -= usize::from(front.counts);
            self.entries.pop_front();
        }
        self.from = self.from.max(floor.min(self.entries.front().map_or(floor, |f| f.seq - 1)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> Entry {
        Entry {
            seq,
            id: ObjectId::new(),
            sender: ObjectId::new(),
            counts: true,
            deleted: false,
            delivered: false,
            mentions: Box::new([]),
        }
    }

    #[test]
    fn covers_what_it_was_given_after_from() {
        let mut t = Tail::new(10);
        assert!(t.covers(10) && !t.covers(9));
        for s in [11, 12, 15] {
            t.push(entry(s));
        }
        assert_eq!(t.between(11, 15).map(|e| e.seq).collect::<Vec<_>>(), vec![12, 15]);
        let id = t.entries[1].id;
        assert_eq!(t.get(id).map(|e| e.seq), Some(12));
    }

    #[test]
    fn system_messages_are_kept_past_the_counting_bound_up_to_the_whole_bound() {
        let mut t = Tail::new(0);
        for s in 1..=1000 {
            t.push(Entry { counts: false, ..entry(s) });
        }
        for s in 1001..=1000 + MAX_TAIL as i64 {
            t.push(entry(s));
        }
        t.trim(0);
        assert_eq!(t.len(), 1000 + MAX_TAIL, "every system message is kept");
        assert!(t.covers(0));
        for s in 1..=2000 {
            t.push(Entry { counts: false, ..entry(10_000 + s) });
        }
        t.trim(0);
        assert_eq!(t.len(), MAX_TAIL_ALL);
        t.push(entry(20_000));
        t.trim(0);
        assert_eq!(t.len(), MAX_TAIL_ALL);
        assert_eq!(t.counting, MAX_TAIL_ALL - 2000, "the oldest went, counting or not");
        assert_eq!(t.entries.iter().filter(|e| e.counts).count(), t.counting);
    }

    #[test]
    fn a_backfill_extends_coverage_down() {
        let mut t = Tail::new(10);
        t.push(entry(12));
        t.backfill(vec![entry(7), entry(9)], 6);
        assert!(t.covers(6) && !t.covers(5));
        assert_eq!(t.between(0, 20).map(|e| e.seq).collect::<Vec<_>>(), vec![7, 9, 12]);
        let mut u = Tail::new(10);
        u.mark_delivered(0, 20, ObjectId::new());
        t.mark_delivered(8, 12, t.entries[2].sender);
        assert_eq!(t.entries.iter().map(|e| e.delivered).collect::<Vec<_>>(), vec![false, true, false]);
    }

    #[test]
    fn trimming_keeps_coverage_exact() {
        let mut t = Tail::new(0);
        for s in 1..=10 {
            t.push(entry(s));
        }
        t.trim(4);
        assert_eq!(t.len(), 6);
        assert!(t.covers(4) && !t.covers(3), "messages 5.. are known, 4 and below are not");
        // A floor between entries moves coverage only up to the next entry.
        let mut t = Tail::new(0);
        for s in [2, 6, 9] {
            t.push(entry(s));
        }
        t.trim(4);
        assert!(t.covers(4) && !t.covers(3));
        assert_eq!(t.len(), 2);
        // Bounded.
        let mut t = Tail::new(0);
        for s in 1..=(MAX_TAIL as i64 + 10) {
            t.push(entry(s));
        }
        t.trim(0);
        assert_eq!(t.len(), MAX_TAIL);
        assert!(t.covers(10) && !t.covers(9));
    }
}
