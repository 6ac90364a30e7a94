//! Who is online, from the presence bucket's keys.
//!
//! - `edge.<edge>`: the edge is alive. Put every heartbeat; it expires
//!   after the bucket's TTL and leaves a marker, so a dead edge is seen.
//! - `user.<user>.<edge>`: the user has a socket on the edge. Put once,
//!   on the first socket, never expiring; deleted with the last socket.
//!   While the edge is dead it counts for nothing, and it is swept.
//! - `<user>.<edge>`: an edge of an older release, which refreshes a key
//!   per user and has no key of its own; present is online.
//!
//! A user is online while any of their keys is on a live edge. So an
//! edge's heartbeat is one put, however many users it holds, not one per
//! user; and the watchers of the bucket get transitions, not heartbeats.

use natter_shared::ids::UserId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// A key of the presence bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Edge(String),
    User(UserId, String),
    /// From an edge of an older release.
    Legacy(UserId, String),
}

impl Key {
    pub fn parse(key: &str) -> Option<Key> {
        if let Some(edge) = key.strip_prefix("edge.") {
            return (!edge.is_empty() && !edge.contains('.')).then(|| Key::Edge(edge.to_string()));
        }
        if let Some(rest) = key.strip_prefix("user.") {
            let (user, edge) = rest.split_once('.')?;
            return Some(Key::User(user.parse().ok()?, edge.to_string()));
        }
        let (user, edge) = key.split_once('.')?;
        Some(Key::Legacy(user.parse().ok()?, edge.to_string()))
    }

    pub fn edge(edge: &str) -> String {
        format!("edge.{edge}")
    }

    pub fn user(user: UserId, edge: &str) -> String {
        format!("user.{}.{edge}", user.hex())
    }
}

struct Edge {
    alive: bool,
    /// Of an older release: alive while its keys are there.
    legacy: bool,
    /// Its users, with the revision of each one's key.
    users: HashMap<UserId, u64>,
    /// When its key was last put (a watcher that missed the marker of its
    /// expiry still sees it die: see [`Online::expire`]).
    heard: Instant,
    /// When it was last seen dead (or first heard of without its key).
    dead_since: Option<Instant>,
}

struct User {
    edges: HashSet<String>,
    /// The transition that last changed whether they are online.
    changed: u64,
}

#[derive(Default)]
pub struct Online {
    users: HashMap<UserId, User>,
    edges: HashMap<String, Edge>,
    transitions: u64,
    /// The `since` of each contact load running (with how many share it):
    /// offline users changed after the oldest are remembered for it.
    loads: BTreeMap<u64, usize>,
}

impl Online {
    /// Applies a key's change (at `revision` of the bucket) seen at `now`;
    /// the users who came online (`true`) or went offline (`false`) by it.
    pub fn apply(&mut self, key: Key, present: bool, revision: u64, now: Instant) -> Vec<(UserId, bool)> {
        match key {
            Key::Edge(e) => self.edge(e, present, now),
            Key::User(u, e) => self.user(u, e, false, present, revision, now),
            Key::Legacy(u, e) => self.user(u, e, true, present, revision, now),
        }
    }

    fn edge(&mut self, e: String, alive: bool, now: Instant) -> Vec<(UserId, bool)> {
        if alive && let Some(held) = self.edges.get_mut(&e) {
            held.heard = now;
        }
        let was: Vec<(UserId, bool)> = match self.edges.get(&e) {
            Some(held) if held.alive == alive => return Vec::new(),
            Some(held) => held.users.keys().map(|u| (*u, self.is_online(*u))).collect(),
            None if !alive => return Vec::new(),
            None => Vec::new(),
        };
        let held = self.edges.entry(e.clone()).or_insert_with(|| Edge {
            alive,
            legacy: false,
            users: HashMap::new(),
            heard: now,
            dead_since: None,
        });
        held.alive = alive;
        held.dead_since = (!alive).then_some(now);
        if !alive && held.users.is_empty() {
            self.edges.remove(&e);
        }
        self.changed(was)
    }

    fn user(
        &mut self,
        u: UserId,
        e: String,
        legacy: bool,
        present: bool,
        revision: u64,
        now: Instant,
    ) -> Vec<(UserId, bool)> {
        let was = vec![(u, self.is_online(u))];
        if present {
            let held = self.edges.entry(e.clone()).or_insert_with(|| Edge {
                alive: legacy,
                legacy,
                users: HashMap::new(),
                heard: now,
                dead_since: (!legacy).then_some(now),
            });
            held.users.insert(u, revision);
            self.users.entry(u).or_insert_with(|| User { edges: HashSet::new(), changed: 0 }).edges.insert(e);
        } else {
            if let Some(held) = self.edges.get_mut(&e) {
                held.users.remove(&u);
                if held.users.is_empty() && (held.legacy || !held.alive) {
                    self.edges.remove(&e);
                }
            }
            if let Some(user) = self.users.get_mut(&u) {
                user.edges.remove(&e);
            }
        }
        self.changed(was)
    }

    /// Of `was` (users and whether they were online), those whose state
    /// changed, with the new one; counts each change.
    fn changed(&mut self, was: Vec<(UserId, bool)>) -> Vec<(UserId, bool)> {
        let mut out = Vec::new();
        for (u, was) in was {
            let is = self.is_online(u);
            if is == was {
                continue;
            }
            self.transitions += 1;
            if let Some(user) = self.users.get_mut(&u) {
                user.changed = self.transitions;
            }
            out.push((u, is));
        }
        out
    }

    /// Edges whose key was not put for `after` (missed heartbeats, and a
    /// marker of its expiry this watcher did not get) are dead; unless
    /// `me`'s own key was not heard within `lag` either: then the watch is
    /// behind (a stall of this process, a watch being set up again), not
    /// the other edges.
    pub fn expire(&mut self, me: &str, lag: Duration, after: Duration, now: Instant) -> Vec<(UserId, bool)> {
        if self.edges.get(me).is_none_or(|e| !e.alive || now.duration_since(e.heard) >= lag) {
            return Vec::new();
        }
        let stale: Vec<String> = self
            .edges
            .iter()
            .filter(|(_, e)| e.alive && !e.legacy && now.duration_since(e.heard) >= after)
            .map(|(id, _)| id.clone())
            .collect();
        stale.into_iter().flat_map(|e| self.edge(e, false, now)).collect()
    }

    /// A contact load begins: the transition it starts from (see
    /// [`Online::changed_after`]), until [`Online::load_ended`].
    pub fn load_begins(&mut self) -> u64 {
        *self.loads.entry(self.transitions).or_default() += 1;
        self.transitions
    }

    pub fn load_ended(&mut self, since: u64) {
        if let Some(n) = self.loads.get_mut(&since) {
            *n -= 1;
            if *n == 0 {
                self.loads.remove(&since);
            }
        }
    }

    /// Forgets offline users no contact load running needs (their last
    /// change is not after its start).
    pub fn prune(&mut self) {
        let keep_after = self.loads.keys().next().copied().unwrap_or(self.transitions);
        self.users.retain(|_, u| !u.edges.is_empty() || u.changed > keep_after);
    }

    pub fn is_online(&self, u: UserId) -> bool {
        self.users.get(&u).is_some_and(|user| user.edges.iter().any(|e| self.edges.get(e).is_some_and(|e| e.alive)))
    }

    /// The count of transitions so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    /// Whether `u` is online now, if that changed after transition `since`.
    pub fn changed_after(&self, u: UserId, since: u64) -> Option<bool> {
        let user = self.users.get(&u)?;
        (user.changed > since).then(|| self.is_online(u))
    }

    /// The users whose key on `edge` the bucket holds, with its revision.
    pub fn users_on(&self, edge: &str) -> Option<&HashMap<UserId, u64>> {
        self.edges.get(edge).map(|e| &e.users)
    }

    /// Whether `me` is the live edge of the lowest id: the one that deletes
    /// dead edges' keys and records when their users were last seen (not
    /// every edge).
    pub fn is_lowest(&self, me: &str) -> bool {
        self.edges.iter().filter(|(_, e)| e.alive && !e.legacy).map(|(id, _)| id.as_str()).min() == Some(me)
    }

    /// The user keys `me` deletes, each if still at its revision: those of
    /// edges dead for `after` or longer, when `me` is the lowest live edge
    /// (if it dies, the next takes over). An edge that comes back puts its
    /// keys again, at new revisions, which a sweep then leaves. An edge
    /// swept comes round again `after` later, if its keys are still there.
    pub fn to_sweep(&mut self, me: &str, after: Duration, now: Instant) -> Vec<(String, u64)> {
        if !self.is_lowest(me) {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (id, e) in self.edges.iter_mut() {
            if e.alive || e.legacy || e.dead_since.is_none_or(|t| now.duration_since(t) < after) {
                continue;
            }
            e.dead_since = Some(now);
            out.extend(e.users.iter().map(|(u, rev)| (Key::user(*u, id), *rev)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::oid::ObjectId;

    fn user() -> UserId {
        UserId(ObjectId::new())
    }

    #[test]
    fn keys_parse() {
        let u = user();
        assert_eq!(Key::parse(&Key::edge("e1")), Some(Key::Edge("e1".into())));
        assert_eq!(Key::parse(&Key::user(u, "e1")), Some(Key::User(u, "e1".into())));
        assert_eq!(Key::parse(&format!("{}.e1", u.hex())), Some(Key::Legacy(u, "e1".into())));
        for bad in ["edge.", "edge.a.b", "user.nope.e1", "user.x", "nope.e1", "nodot"] {
            assert_eq!(Key::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn online_while_a_key_is_on_a_live_edge() {
        let (a, b) = (user(), user());
        let t = Instant::now();
        let mut o = Online::default();
        // The user's key may come before its edge's (a watcher's history
        // is in the order of the last writes).
        assert!(o.apply(Key::User(a, "e1".into()), true, 1, t).is_empty());
        assert!(!o.is_online(a));
        assert_eq!(o.apply(Key::Edge("e1".into()), true, 1, t), [(a, true)]);
        assert!(o.apply(Key::Edge("e1".into()), true, 1, t).is_empty(), "a heartbeat changes nothing");
        assert_eq!(o.apply(Key::User(b, "e1".into()), true, 1, t), [(b, true)]);
        // A second device on another edge: no transition either way.
        assert!(o.apply(Key::Edge("e2".into()), true, 1, t).is_empty());
        assert!(o.apply(Key::User(a, "e2".into()), true, 1, t).is_empty());
        assert!(o.apply(Key::User(a, "e1".into()), false, 1, t).is_empty());
        // e2 dies: a goes offline with it; its key counts for nothing.
        assert_eq!(o.apply(Key::Edge("e2".into()), false, 1, t), [(a, false)]);
        assert!(!o.is_online(a) && o.is_online(b));
        assert_eq!(o.transitions(), 3);
        // e2 comes back (its key had expired while it stalled).
        assert_eq!(o.apply(Key::Edge("e2".into()), true, 1, t), [(a, true)]);
        assert_eq!((o.changed_after(a, 3), o.changed_after(b, 3)), (Some(true), None));
        assert_eq!(o.apply(Key::User(b, "e1".into()), false, 1, t), [(b, false)]);
        // Offline, and remembered so for a load that began before.
        assert_eq!(o.changed_after(b, 3), Some(false));
        o.prune();
        assert_eq!(o.changed_after(b, 3), None, "no load needs it");
        assert_eq!(o.users_on("e1"), Some(&HashMap::new()));
        assert_eq!(o.users_on("e2"), Some(&HashMap::from([(a, 1)])));
        let since = o.load_begins();
        assert_eq!(o.apply(Key::User(a, "e2".into()), false, 1, t), [(a, false)]);
        o.prune();
        assert_eq!(o.changed_after(a, since), Some(false), "kept for the load");
        o.load_ended(since);
        o.prune();
        assert_eq!(o.changed_after(a, since), None);
    }

    #[test]
    fn a_dead_edges_keys_are_swept_by_the_lowest_live_edge() {
        let (a, b) = (user(), user());
        let t = Instant::now();
        let after = Duration::from_secs(10);
        let mut o = Online::default();
        for e in ["e1", "e2", "e3"] {
            o.apply(Key::Edge(e.into()), true, 1, t);
        }
        o.apply(Key::User(a, "e3".into()), true, 1, t);
        o.apply(Key::User(b, "e3".into()), true, 1, t);
        assert_eq!(o.apply(Key::Edge("e3".into()), false, 1, t).len(), 2);
        assert!(o.to_sweep("e1", after, t + Duration::from_secs(5)).is_empty(), "not dead long enough");
        let later = t + after;
        assert!(o.to_sweep("e2", after, later).is_empty(), "not the lowest");
        let mut swept = o.to_sweep("e1", after, later);
        swept.sort();
        let mut want = vec![(Key::user(a, "e3"), 1), (Key::user(b, "e3"), 1)];
        want.sort();
        assert_eq!(swept, want);
        assert!(o.to_sweep("e1", after, later).is_empty(), "not again at once");
        // The deletes come back through the watch: nothing is left.
        for u in [a, b] {
            assert!(o.apply(Key::User(u, "e3".into()), false, 1, later).is_empty());
        }
        assert!(o.to_sweep("e1", after, later + after).is_empty());
        o.prune();
        assert!(o.edges.len() == 2 && o.users.is_empty(), "offline: forgotten");
        // A key of an edge never seen alive is swept too, in time.
        o.apply(Key::User(a, "e9".into()), true, 1, later);
        assert_eq!(o.to_sweep("e1", after, later + after), [(Key::user(a, "e9"), 1)]);
    }

    #[test]
    fn an_older_releases_keys_are_online_while_present() {
        let a = user();
        let t = Instant::now();
        let mut o = Online::default();
        o.apply(Key::Edge("e1".into()), true, 1, t);
        assert_eq!(o.apply(Key::Legacy(a, "old".into()), true, 1, t), [(a, true)]);
        assert!(o.to_sweep("e1", Duration::ZERO, t + Duration::from_secs(60)).is_empty(), "never swept");
        assert_eq!(o.apply(Key::Legacy(a, "old".into()), false, 1, t), [(a, false)]);
        assert!(o.edges.len() == 1);
    }

    #[test]
    fn an_edge_not_heard_from_is_dead_even_without_its_marker() {
        let a = user();
        let t = Instant::now();
        let after = Duration::from_secs(12);
        let mut o = Online::default();
        let lag = Duration::from_secs(6);
        let at = |s: u64| t + Duration::from_secs(s);
        o.apply(Key::Edge("e1".into()), true, 1, t);
        o.apply(Key::User(a, "e1".into()), true, 1, t);
        // This edge, "me", heard every 3 s.
        let me = |o: &mut Online, s: u64| {
            o.apply(Key::Edge("me".into()), true, 1, at(s));
        };
        me(&mut o, 9);
        assert!(o.expire("me", lag, after, at(11)).is_empty());
        // A heartbeat keeps it alive.
        o.apply(Key::Edge("e1".into()), true, 1, at(10));
        me(&mut o, 18);
        assert!(o.expire("me", lag, after, at(20)).is_empty());
        // This edge not heard either: the watch is behind, nobody dies.
        assert!(o.expire("me", lag, after, at(30)).is_empty());
        me(&mut o, 21);
        assert_eq!(o.expire("me", lag, after, at(22)), [(a, false)]);
        assert!(!o.is_online(a) && o.is_lowest("me"));
        // Heard again: alive again.
        assert_eq!(o.apply(Key::Edge("e1".into()), true, 1, at(23)), [(a, true)]);
    }
}
