//! Whose presence each user with a socket here may see: the other side of
//! their established conversations, and everyone in their groups. A
//! group's members are held once per edge, whoever here is in it, not once
//! per member: a group of 2,000 with all its members connected is one set
//! of 2,000 ids, read from MongoDB once, not 2,000 sets read 2,000 times.
//!
//! Kept current by the user's own events (`ContactNotice`) and by the
//! membership changes of groups whose room this edge follows; a group
//! held longer than `KEEP_FOR` is read again at the next refresh that
//! names it.

use crate::core::membership::GroupChange;
use mongodb::bson::oid::ObjectId;
use natter_shared::ids::UserId;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a group's members are trusted without a read.
const KEEP_FOR: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Mine {
    peers: HashSet<UserId>,
    groups: HashSet<ObjectId>,
}

struct Group {
    members: HashSet<UserId>,
    /// The users here who are in it.
    local: HashSet<UserId>,
    read: Instant,
}

#[derive(Default)]
pub struct Contacts {
    users: HashMap<UserId, Mine>,
    groups: HashMap<ObjectId, Group>,
    /// A conversation peer, and the users here who have them as one.
    peer_of: HashMap<UserId, HashSet<UserId>>,
}

impl Contacts {
    /// Of `groups`, those whose members must be read: not held, or held
    /// too long.
    pub fn to_read(&self, groups: &[ObjectId]) -> Vec<ObjectId> {
        groups.iter().copied().filter(|g| self.groups.get(g).is_none_or(|h| h.read.elapsed() >= KEEP_FOR)).collect()
    }

    /// The members of a group, as just read (`None`: gone or deleted).
    pub fn group_read(&mut self, id: ObjectId, members: Option<Vec<ObjectId>>) {
        let members: HashSet<UserId> = members.unwrap_or_default().into_iter().map(UserId).collect();
        match self.groups.get_mut(&id) {
            Some(g) => (g.members, g.read) = (members, Instant::now()),
            None => {
                self.groups.insert(id, Group { members, local: HashSet::new(), read: Instant::now() });
            }
        }
    }

    /// `user`'s contact lists, as just read; their groups' members must
    /// have been read ([`Contacts::group_read`]) first.
    pub fn set(&mut self, user: UserId, peers: HashSet<UserId>, groups: HashSet<ObjectId>) {
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

    /// `others` became `user`'s contacts (a conversation both wrote in).
    pub fn add_peers(&mut self, user: UserId, others: impl IntoIterator<Item = UserId>) {
        let Some(mine) = self.users.get_mut(&user) else { return };
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

    /// A change of a group's members, in its stream order.
    pub fn group_change(&mut self, id: ObjectId, change: &GroupChange) {
        let Some(g) = self.groups.get_mut(&id) else { return };
        match change {
            GroupChange::Added(u) => {
                g.members.insert(UserId(*u));
            }
            GroupChange::Removed(u) => {
                g.members.remove(&UserId(*u));
            }
            GroupChange::Deleted => g.members.clear(),
            GroupChange::Rules(_) => {}
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

    /// The users here who may see `user`'s presence (not `user`).
    pub fn watchers(&self, user: UserId) -> HashSet<UserId> {
        let mut out: HashSet<UserId> = self.peer_of.get(&user).cloned().unwrap_or_default();
        for g in self.groups.values().filter(|g| g.members.contains(&user)) {
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

    /// Groups nobody here is in are not held.
    fn drop_unused(&mut self) {
        self.groups.retain(|_, g| !g.local.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<UserId> {
        (0..n).map(|_| UserId(ObjectId::new())).collect()
    }

    #[test]
    fn a_group_is_held_once_and_tells_its_members_here() {
        let u = ids(5);
        let g = ObjectId::new();
        let mut c = Contacts::default();
        // u0 and u1 are here; u2..u4 are elsewhere; all five are in g.
        assert_eq!(c.to_read(&[g]), vec![g]);
        c.group_read(g, Some(u.iter().map(|x| x.oid()).collect()));
        assert!(c.to_read(&[g]).is_empty(), "just read");
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        c.set(u[1], HashSet::from([u[4]]), HashSet::from([g]));
        assert_eq!(c.watchers(u[3]), HashSet::from([u[0], u[1]]));
        assert_eq!(c.watchers(u[0]), HashSet::from([u[1]]), "not told of themselves");
        assert!(c.may_see(u[0], u[2]) && c.may_see(u[1], u[4]));
        // A member removed: nobody here is told of them any more.
        c.group_change(g, &GroupChange::Removed(u[3].oid()));
        assert!(c.watchers(u[3]).is_empty() && !c.may_see(u[0], u[3]));
        // u4 is still u1's peer, though not in the group.
        c.group_change(g, &GroupChange::Removed(u[4].oid()));
        assert_eq!(c.watchers(u[4]), HashSet::from([u[1]]));
        // Everyone here gone: the group is not held.
        c.remove(u[0]);
        c.remove(u[1]);
        assert!(c.watchers(u[2]).is_empty() && c.watchers(u[4]).is_empty());
        assert_eq!(c.to_read(&[g]), vec![g], "read again when someone here is in it");
        assert!(!c.holds(u[0]));
    }

    #[test]
    fn peers_are_added_and_a_refresh_replaces_the_lists() {
        let u = ids(4);
        let g = ObjectId::new();
        let mut c = Contacts::default();
        c.set(u[0], HashSet::new(), HashSet::new());
        c.add_peers(u[0], [u[1], u[0]]);
        c.add_peers(u[3], [u[1]]);
        assert_eq!(c.watchers(u[1]), HashSet::from([u[0]]), "only users here are told");
        c.group_read(g, Some(vec![u[0].oid(), u[2].oid()]));
        c.set(u[0], HashSet::new(), HashSet::from([g]));
        assert!(c.watchers(u[1]).is_empty(), "the refresh replaced the peers");
        assert_eq!(c.watchers(u[2]), HashSet::from([u[0]]));
        c.group_change(g, &GroupChange::Deleted);
        assert!(c.watchers(u[2]).is_empty());
        c.group_change(g, &GroupChange::Added(u[1].oid()));
        assert_eq!(c.watchers(u[1]), HashSet::from([u[0]]));
    }
}
