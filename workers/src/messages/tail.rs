//! The newest messages of a room, as the worker that applied them knows
//! them: enough to answer receipts (which messages a cursor passes, who
//! sent them) and deletes without reading MongoDB back. It covers every
//! message above `from`; what is older is read from the database.

use mongodb::bson::oid::ObjectId;
use std::collections::VecDeque;

/// Most messages a room's tail keeps.
pub const MAX_TAIL: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub id: ObjectId,
    pub sender: ObjectId,
    /// Counts toward unread (not a `system` message).
    pub counts: bool,
    pub deleted: bool,
}

#[derive(Clone, Debug)]
pub struct Tail {
    /// Every message with a greater seq is in `entries`.
    from: i64,
    entries: VecDeque<Entry>,
}

impl Tail {
    /// A tail that knows nothing at or below `from` (the room's seq when
    /// it was read from the database).
    pub fn new(from: i64) -> Tail {
        Tail { from, entries: VecDeque::new() }
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

    /// Forgets what nobody can still ask about: messages every member's
    /// cursors have passed (`floor`), and the oldest beyond `MAX_TAIL`.
    pub fn trim(&mut self, floor: i64) {
        while let Some(front) = self.entries.front() {
            if front.seq > floor && self.entries.len() <= MAX_TAIL {
                break;
            }
            self.from = self.from.max(front.seq);
            self.entries.pop_front();
        }
        self.from = self.from.max(floor.min(self.entries.front().map_or(floor, |f| f.seq - 1)));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> Entry {
        Entry { seq, id: ObjectId::new(), sender: ObjectId::new(), counts: true, deleted: false }
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
