//! Whose presence each user with a socket here may see: the other side of
//! their established conversations, and everyone in their groups. A
//! group's members are held once per edge, whoever here is in it, not once
//! per member: a group of 2,000 with all its members connected is one set
//! of 2,000 ids, read from MongoDB once, not 2,000 sets read 2,000 times.
//!
//! Kept current by the user's own events (`ContactNotice`) and by the
//! membership changes of groups whose room this edge follows, in their
//! stream order (by seq): a change that comes while the group is being
//! read is kept and applied over what the read found, if the read is older
//! (MongoDB's copy is written after the events go out). A group held
//! longer than `KEEP_FOR` is read again at the next refresh that names it.

use crate::core::membership::GroupChange;
use mongodb::bson::oid::ObjectId;
use natter_shared::ids::UserId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// How long a group's members are trusted without a read.
const KEEP_FOR: Duration = Duration::from_secs(60);
/// Changes of a group kept for a read in flight.
const LOG_LEN: usize = 256;

#[derive(Default)]
struct Mine {
    peers: HashSet<UserId>,
    groups: HashSet<ObjectId>,
}

struct Group {
    members: HashSet<UserId>,
    /// The seq of the last change `members` has.
    seq: u64,
    /// The users here who are in it.
    local: HashSet<UserId>,
    read: Instant,
}

#[derive(Default)]
pub struct Contacts {
    /// Groups of more members push no presence (`PRESENCE_MAX_GROUP`).
    max_group: usize,
    users: HashMap<UserId, Mine>,
    groups: HashMap<ObjectId, Group>,
    /// The held groups each user is a member of (so that a transition
    /// looks at that user's groups, not at every group held).
    member_of: HashMap<UserId, HashSet<ObjectId>>,
    /// A conversation peer, and the users here who have them as one.
    peer_of: HashMap<UserId, HashSet<UserId>>,
    /// Groups being read, and the changes that came meanwhile.
    reading: HashMap<ObjectId, VecDeque<(u64, GroupChange)>>,
    /// Groups seen deleted: a read of a copy from before the delete was
    /// written (MongoDB is written behind the events) finds nothing.
    deleted: HashSet<ObjectId>,
}

/// Deleted groups remembered before the oldest are forgotten.
const MAX_DELETED: usize = 10_000;

impl Contacts {
    pub fn new(max_group: usize) -> Contacts {
        Contacts { max_group, ..Contacts::default() }
    }

    /// Of `groups`, those whose members must be read (not held, or held
    /// too long); from now on, their changes are kept for the read.
    pub fn to_read(&mut self, groups: &[ObjectId]) -> Vec<ObjectId> {
        let out: Vec<ObjectId> = groups
            .iter()
            .copied()
            .filter(|g| self.groups.get(g).is_none_or(|h| h.read.elapsed() >= KEEP_FOR))
            .collect();
        for g in &out {
            self.reading.entry(*g).or_default();
        }
        out
    }

    /// A group as just read: its members as of the change at `seq` (`None`:
    /// gone or deleted). The changes after it that came meanwhile apply.
    pub fn group_read(&mut self, id: ObjectId, read: Option<(Vec<ObjectId>, u64)>) {
        let read = read.filter(|_| !self.deleted.contains(&id));
        let Some((members, seq)) = read else {
            // Not there (deleted, or not written yet): not held, so the next
            // refresh that names it reads it again.
            self.reading.remove(&id);
            if let Some(old) = self.groups.remove(&id) {
                self.reindex(id, Some(&old.members));
            }
            return;
        };
        let old = self.groups.remove(&id);
        let old_members = old.as_ref().map(|o| o.members.clone());
        let mut g = match old {
            // What is held is newer than MongoDB's copy (written after the
            // events go out): keep it.
            Some(old) if old.seq > seq => Group { read: Instant::now(), ..old },
            old => Group {
                members: members.into_iter().map(UserId).collect(),
                seq,
                local: old.map(|o| o.local).unwrap_or_default(),
                read: Instant::now(),
            },
        };
        for (at, change) in self.reading.remove(&id).unwrap_or_default() {
            g.apply(at, &change);
        }
        self.groups.insert(id, g);
        self.reindex(id, old_members.as_ref());
    }

    /// Brings `member_of` in step with group `id` as held now, from its
    /// members `old` before the change (`None`: it was not held).
    fn reindex(&mut self, id: ObjectId, old: Option<&HashSet<UserId>>) {
        let none = HashSet::new();
        let old = old.unwrap_or(&none);
        let new = self.groups.get(&id).map(|g| &g.members).unwrap_or(&none);
        for u in old.difference(new) {
            index(&mut self.member_of, id, *u, false);
        }
        for u in new.difference(old) {
            index(&mut self.member_of, id, *u, true);
        }
    }

    /// `user`'s contact lists, as just read; their groups' members must
    /// have been read ([`Contacts::group_read`]) first. Peers are only
    /// added: a conversation both wrote in stays so, and one that became so
    /// while the lists were read (`add_peers`) may not be in what was read.
    pub fn set(&mut self, user: UserId, mut peers: HashSet<UserId>, groups: HashSet<ObjectId>) {
        if let Some(held) = self.users.get(&user) {
            peers.extend(held.peers.iter().copied());
        }
        self.forget(user);
        for p in &peers {
            self.peer_of.entry(*p).or_default().insert(user);
        }
        for g in &groups {
            if let Some(held) = self.groups.get_mut(g) {
                held.local.insert(user);
            }
        }
        self.users.insert(user, Mine { peers, groups });
        self.drop_unused();
    }

    /// `others` became `user`'s contacts (a conversation both wrote in),
    /// whether or not `user`'s lists were read yet.
    pub fn add_peers(&mut self, user: UserId, others: impl IntoIterator<Item = UserId>) {
        let mine = self.users.entry(user).or_default();
        for o in others.into_iter().filter(|o| *o != user) {
            mine.peers.insert(o);
            self.peer_of.entry(o).or_default().insert(user);
        }
    }

    /// `user` has no socket here any more.
    pub fn remove(&mut self, user: UserId) {
        self.forget(user);
        self.drop_unused();
    }

    /// A change of a group's members by the command at `seq`.
    pub fn group_change(&mut self, id: ObjectId, seq: u64, change: GroupChange) {
        if change == GroupChange::Deleted {
            if self.deleted.len() >= MAX_DELETED {
                self.deleted.clear();
            }
            self.deleted.insert(id);
        }
        if let Some(log) = self.reading.get_mut(&id) {
            log.push_back((seq, change.clone()));
            if log.len() > LOG_LEN {
                log.pop_front();
            }
        }
        if let Some(g) = self.groups.get_mut(&id) {
            // One member changes, not the whole group: only a delete
            // needs the members it had.
            let old = (change == GroupChange::Deleted).then(|| g.members.clone());
            if !g.apply(seq, &change) {
                return;
            }
            match change {
                GroupChange::Added(u) => index(&mut self.member_of, id, UserId(u), true),
                GroupChange::Removed(u) => index(&mut self.member_of, id, UserId(u), false),
                GroupChange::Deleted => self.reindex(id, old.as_ref()),
                GroupChange::Rules(_) => {}
            }
        }
    }

    /// Whether `user`'s lists are held (they have a socket here).
    pub fn holds(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    /// Whether `who` (whose lists are held) may see `user`'s presence.
    pub fn may_see(&self, who: UserId, user: UserId) -> bool {
        if who == user {
            return true;
        }
        let Some(mine) = self.users.get(&who) else { return false };
        mine.peers.contains(&user)
            || mine.groups.iter().any(|g| self.groups.get(g).is_some_and(|g| g.members.contains(&user)))
    }

    /// Everyone whose presence is pushed to `who` (whose lists are held),
    /// not `who`: their peers, and the members of their groups that push
    /// presence.
    pub fn pushed_to(&self, who: UserId) -> HashSet<UserId> {
        let Some(mine) = self.users.get(&who) else { return HashSet::new() };
        let mut out = mine.peers.clone();
        for g in mine.groups.iter().filter_map(|g| self.groups.get(g)).filter(|g| g.members.len() <= self.max_group) {
            out.extend(g.members.iter().copied());
        }
        out.remove(&who);
        out
    }

    /// The users here to whom `user`'s presence is pushed (not `user`):
    /// who has them as a peer, or shares with them a group that pushes
    /// presence.
    pub fn watchers(&self, user: UserId) -> HashSet<UserId> {
        let mut out: HashSet<UserId> = self.peer_of.get(&user).cloned().unwrap_or_default();
        let groups = self.member_of.get(&user).into_iter().flatten().filter_map(|g| self.groups.get(g));
        for g in groups.filter(|g| g.members.len() <= self.max_group) {
            out.extend(g.local.iter().copied());
        }
        out.remove(&user);
        out
    }

    fn forget(&mut self, user: UserId) {
        let Some(old) = self.users.remove(&user) else { return };
        for p in old.peers {
            if let Some(set) = self.peer_of.get_mut(&p) {
                set.remove(&user);
                if set.is_empty() {
                    self.peer_of.remove(&p);
                }
            }
        }
        for g in old.groups {
            if let Some(held) = self.groups.get_mut(&g) {
                held.local.remove(&user);
            }
        }
    }

    /// The reads of `groups` failed: their changes are no longer kept.
    pub fn read_failed(&mut self, groups: &[ObjectId]) {
        for g in groups {
            self.reading.remove(g);
        }
    }

    /// Groups nobody here is in are not held.
    fn drop_unused(&mut self) {
        let unused: Vec<ObjectId> = self.groups.iter().filter(|(_, g)| g.local.is_empty()).map(|(id, _)| *id).collect();
        for id in unused {
            if let Some(g) = self.groups.remove(&id) {
                self.reindex(id, Some(&g.members));
            }
        }
    }
}

/// Notes in `member_of` whether `user` is a member of held group `id`.
fn index(member_of: &mut HashMap<UserId, HashSet<ObjectId>>, id: ObjectId, user: UserId, member: bool) {
    if member {
        member_of.entry(user).or_default().insert(id);
    } else if let Some(set) = member_of.get_mut(&user) {
        set.remove(&id);
        if set.is_empty() {
            member_of.remove(&user);
        }
    }
}

impl Group {
    /// Applies the change at `seq`; false when it is not newer than what
    /// is held (a redelivery).
    fn apply(&mut self, seq: u64, change: &GroupChange) -> bool {
        if seq <= self.seq {
            return false;
        }
        self.seq = seq;
        match change {
            GroupChange::Added(u) => {
                self.members.insert(UserId(*u));
            }
            GroupChange::Removed(u) => {
                self.members.remove(&UserId(*u));
            }
            GroupChange::Deleted => self.members.clear(),
            GroupChange::Rules(_) => {}
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<UserId> {
        (0..n).map(|_| UserId(ObjectId::new())).collect()
    }

    fn oids(u: &[UserId]) -> Vec<ObjectId> {
        u.iter().map(|x| x.oid()).collect()
    }

    /// `member_of` is what the held groups say.
    fn index_agrees(c: &Contacts) {
        let mut want: HashMap<UserId, HashSet<ObjectId>> = HashMap::new();
        for (id, g) in &c.groups {
            for u in &g.members {
                want.entry(*u).or_default().insert(*id);
            }
        }
        assert_eq!(c.member_of, want);
    }

    #[test]
    fn a_group_is_held_once_and_tells_its_members_here() {
        let u = ids(5);
        let g = ObjectId::new();
        let mut c = Contacts::new(100);
        // u0 and u1 are here; u2..u4 are elsewhere; all five are in g.
        assert_eq!(c.to_read(&[g]), vec![g]);
        c.group_read(g, Some((oids(&u), 10)));
        index_agrees(&c);
        assert!(c.to_read(&[g]).is_empty(), "just read");
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        index_agrees(&c);
        c.set(u[1], HashSet::from([u[4]]), HashSet::from([g]));
        index_agrees(&c);
        assert_eq!(c.watchers(u[3]), HashSet::from([u[0], u[1]]));
        assert_eq!(c.watchers(u[0]), HashSet::from([u[1]]), "not told of themselves");
        assert!(c.may_see(u[0], u[2]) && c.may_see(u[1], u[4]));
        assert_eq!(c.pushed_to(u[1]), HashSet::from([u[0], u[2], u[3], u[4]]));
        assert!(c.pushed_to(u[2]).is_empty(), "not held here");
        // A member removed: nobody here is told of them any more.
        c.group_change(g, 11, GroupChange::Removed(u[3].oid()));
        index_agrees(&c);
        assert!(c.watchers(u[3]).is_empty() && !c.may_see(u[0], u[3]));
        // An older change (a redelivery) is not applied again.
        c.group_change(g, 9, GroupChange::Added(u[3].oid()));
        index_agrees(&c);
        assert!(c.watchers(u[3]).is_empty());
        // u4 is still u1's peer, though not in the group.
        c.group_change(g, 12, GroupChange::Removed(u[4].oid()));
        index_agrees(&c);
        assert_eq!(c.watchers(u[4]), HashSet::from([u[1]]));
        // Everyone here gone: the group is not held.
        c.remove(u[0]);
        index_agrees(&c);
        c.remove(u[1]);
        index_agrees(&c);
        assert!(c.watchers(u[2]).is_empty() && c.watchers(u[4]).is_empty());
        assert_eq!(c.to_read(&[g]), vec![g], "read again when someone here is in it");
        assert!(!c.holds(u[0]));
    }

    #[test]
    fn changes_during_a_read_apply_over_an_older_copy() {
        let u = ids(4);
        let g = ObjectId::new();
        let mut c = Contacts::new(100);
        assert_eq!(c.to_read(&[g]), vec![g]);
        // While MongoDB is read: u3 added at 21, u1 removed at 22.
        c.group_change(g, 21, GroupChange::Added(u[3].oid()));
        index_agrees(&c);
        c.group_change(g, 22, GroupChange::Removed(u[1].oid()));
        index_agrees(&c);
        // The copy read is as of 21: it has u3 already, and u1.
        c.group_read(g, Some((oids(&u), 21)));
        index_agrees(&c);
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        index_agrees(&c);
        assert_eq!(c.watchers(u[3]), HashSet::from([u[0]]));
        assert!(c.watchers(u[1]).is_empty(), "the removal after the copy applies");
        // A later read of an older copy (written behind the events) keeps
        // what is held.
        c.group_read(g, Some((oids(&u), 20)));
        index_agrees(&c);
        assert!(c.watchers(u[1]).is_empty());
        // Deleted at 30, then forgotten here; a copy read from before the
        // delete was written finds nothing.
        c.group_change(g, 30, GroupChange::Deleted);
        index_agrees(&c);
        c.remove(u[0]);
        index_agrees(&c);
        c.to_read(&[g]);
        c.group_read(g, Some((oids(&u), 29)));
        index_agrees(&c);
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        index_agrees(&c);
        assert!(c.watchers(u[2]).is_empty(), "a deleted group's old copy is not taken");
    }

    #[test]
    fn a_group_not_written_yet_is_read_again_and_peers_added_meanwhile_stay() {
        let u = ids(3);
        let g = ObjectId::new();
        let mut c = Contacts::new(100);
        assert_eq!(c.to_read(&[g]), vec![g]);
        // An event made u1 u0's contact while u0's lists were being read.
        c.add_peers(u[0], [u[1]]);
        c.group_read(g, None);
        index_agrees(&c);
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        index_agrees(&c);
        assert_eq!(c.watchers(u[1]), HashSet::from([u[0]]), "the peer added meanwhile stays");
        assert_eq!(c.to_read(&[g]), vec![g], "a group not found is read again");
        c.group_read(g, Some((vec![u[0].oid(), u[2].oid()], 5)));
        index_agrees(&c);
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        index_agrees(&c);
        assert_eq!(c.watchers(u[2]), HashSet::from([u[0]]));
    }

    #[test]
    fn peers_are_added_and_a_refresh_replaces_the_groups() {
        let u = ids(4);
        let g = ObjectId::new();
        let mut c = Contacts::new(100);
        c.set(u[0], HashSet::new(), HashSet::new());
        index_agrees(&c);
        c.add_peers(u[0], [u[1], u[0]]);
        assert_eq!(c.watchers(u[1]), HashSet::from([u[0]]));
        assert!(c.watchers(u[0]).is_empty(), "not their own peer");
        c.to_read(&[g]);
        c.group_read(g, Some((vec![u[0].oid(), u[2].oid()], 3)));
        index_agrees(&c);
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        index_agrees(&c);
        assert_eq!(c.watchers(u[1]), HashSet::from([u[0]]), "peers stay");
        assert_eq!(c.watchers(u[2]), HashSet::from([u[0]]));
        c.group_change(g, 4, GroupChange::Added(u[3].oid()));
        index_agrees(&c);
        assert_eq!(c.watchers(u[3]), HashSet::from([u[0]]));
        c.group_change(g, 5, GroupChange::Deleted);
        index_agrees(&c);
        assert!(c.watchers(u[2]).is_empty() && c.watchers(u[3]).is_empty());
        c.group_change(g, 6, GroupChange::Added(u[2].oid()));
        index_agrees(&c);
        assert_eq!(c.watchers(u[2]), HashSet::from([u[0]]));
        c.set(u[0], HashSet::new(), HashSet::new());
        index_agrees(&c);
        assert!(c.watchers(u[2]).is_empty(), "the refresh replaced the groups");
        assert_eq!(c.watchers(u[1]), HashSet::from([u[0]]));
    }

    #[test]
    fn a_group_over_the_limit_pushes_no_presence_but_may_be_seen() {
        let u = ids(4);
        let (small, big) = (ObjectId::new(), ObjectId::new());
        let mut c = Contacts::new(3);
        c.to_read(&[small, big]);
        c.group_read(small, Some((oids(&u[..3]), 1)));
        index_agrees(&c);
        c.group_read(big, Some((oids(&u), 1)));
        index_agrees(&c);
        c.set(u[0], HashSet::new(), HashSet::from([small, big]));
        index_agrees(&c);
        // u3 is only in the big group: seen over REST, never pushed.
        assert!(c.may_see(u[0], u[3]));
        assert!(c.watchers(u[3]).is_empty());
        assert_eq!(c.pushed_to(u[0]), HashSet::from([u[1], u[2]]));
        assert_eq!(c.watchers(u[1]), HashSet::from([u[0]]), "through the small group");
        // The small group grows past the limit: it stops pushing too.
        c.group_change(small, 2, GroupChange::Added(u[3].oid()));
        index_agrees(&c);
        assert!(c.watchers(u[1]).is_empty() && c.pushed_to(u[0]).is_empty());
        assert!(c.may_see(u[0], u[1]));
    }
}
