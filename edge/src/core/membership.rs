//! Who may see a room. Participants of a 1:1 conversation never change, so
//! they are cached per conversation (bounded), from MongoDB or, before it
//! is written, from the `conversation_created` event the hub relays (a
//! participant joining at once is not refused for the write-behind).
//!
//! A group's members change. While the hub follows the group's room (a
//! socket here joined it), every membership event reaches this edge in
//! stream order, so the group is kept in memory: loaded once (MongoDB's
//! copy as of its `lastSeq`, then the changes the events after it record),
//! and changed by each `member_added`, `member_removed`, `group_updated`
//! (its rules) and `group_deleted` as the hub relays them. A change that
//! arrives while the group is being loaded is kept in the group's log and
//! applied after. When nobody here follows the group any more it is
//! forgotten, and a check reads MongoDB again; a group kept longer than
//! `KEEP_FOR` is read again too. The worker re-checks each command at its
//! `seq` anyway: this spares a read per message.

use mongodb::bson::oid::ObjectId;
use natter_shared::ids::UserId;
use natter_shared::model::{GroupDoc, Permissions};
use natter_shared::store::Store;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const MAX_CACHED: usize = 100_000;
/// Changes of a followed group kept for a load in progress.
const LOG_LEN: usize = 256;
/// How long a group stays in memory before it is read again: events lost
/// with a NATS connection (the hub's subscription resumes after a
/// reconnect, without what was published meanwhile) cannot keep it wrong
/// for longer.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(30);

/// A change to a group's members or rules, as an event records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupChange {
    Added(ObjectId),
    Removed(ObjectId),
    Rules(Permissions),
    Deleted,
}

impl GroupChange {
    fn apply(&self, g: &mut GroupDoc) {
        match self {
            GroupChange::Added(u) => {
                if !g.members.contains(u) {
                    g.members.push(*u);
                }
            }
            GroupChange::Removed(u) => g.members.retain(|m| m != u),
            GroupChange::Rules(p) => g.permissions = p.clone(),
            GroupChange::Deleted => g.deleted = true,
        }
    }
}

#[derive(Default)]
struct Groups {
    /// The groups whose room the hub follows, with their latest changes.
    followed: HashMap<ObjectId, VecDeque<(u64, GroupChange)>>,
    /// Followed groups as of `seq`, the last change applied, and when
    /// they were read (without their per-user maps: members and rules are
    /// what a check needs).
    cached: HashMap<ObjectId, (Arc<GroupDoc>, u64, Instant)>,
}

/// A group read, and when it ended.
pub type Loaded = Option<(Arc<GroupDoc>, u64, Instant)>;

/// One group's read in progress: checks that arrive meanwhile wait for it
/// and share what it read instead of each reading the group (2,000
/// members joining a group at once would read it 2,000 times).
pub type LoadSlot = Arc<tokio::sync::Mutex<Loaded>>;

#[derive(Default)]
pub struct Membership {
    conversations: Mutex<HashMap<ObjectId, Vec<ObjectId>>>,
    groups: Mutex<Groups>,
    loads: Mutex<HashMap<ObjectId, LoadSlot>>,
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
        let Some(doc) = store.conversation(conv).await? else { return Ok(None) };
        let mut map = self.lock();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(conv, doc.participant_ids.clone());
        Ok(Some(doc.participant_ids))
    }

    /// Notes a conversation's participants, as its `conversation_created`
    /// event says (published by a worker once it applied the command).
    pub fn note_conversation(&self, conv: ObjectId, participants: Vec<ObjectId>) {
        let mut map = self.lock();
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(conv, participants);
    }

    /// A group that exists and is not deleted, as MongoDB has it.
    pub async fn group(&self, store: &Store, id: ObjectId) -> Result<Option<GroupDoc>, mongodb::error::Error> {
        store.live_group(id).await
    }

    /// The hub now receives every event of the group's room.
    pub fn follow_group(&self, id: ObjectId) {
        self.groups().followed.entry(id).or_default();
    }

    /// The hub no longer follows the group's room: forget it.
    pub fn unfollow_group(&self, id: ObjectId) {
        let mut g = self.groups();
        g.followed.remove(&id);
        g.cached.remove(&id);
    }

    pub fn is_followed(&self, id: ObjectId) -> bool {
        self.groups().followed.contains_key(&id)
    }

    /// The group in memory and the seq it is as of, deleted or not.
    pub fn cached_group(&self, id: ObjectId) -> Option<(Arc<GroupDoc>, u64)> {
        let g = self.groups();
        let (group, seq, read) = g.cached.get(&id)?;
        (read.elapsed() < KEEP_FOR).then(|| (group.clone(), *seq))
    }

    /// The slot of the group's read in progress (a new one if none is).
    pub fn load_slot(&self, id: ObjectId) -> LoadSlot {
        self.loads.lock().unwrap_or_else(|e| e.into_inner()).entry(id).or_default().clone()
    }

    /// The read of `slot` is over: later checks read again.
    pub fn load_done(&self, id: ObjectId, slot: &LoadSlot) {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        if loads.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            loads.remove(&id);
        }
    }

    /// A change the hub relayed, at the seq of its command.
    pub fn group_change(&self, id: ObjectId, seq: u64, change: GroupChange) {
        let mut g = self.groups();
        let Some(log) = g.followed.get_mut(&id) else { return };
        log.push_back((seq, change.clone()));
        if log.len() > LOG_LEN {
            log.pop_front();
        }
        if let Some((group, at, _)) = g.cached.get_mut(&id)
            && seq > *at
        {
            change.apply(Arc::make_mut(group));
            *at = seq;
        }
    }

    /// The group as of `seq` (MongoDB's copy) with `changes` (read from the
    /// events after it) and the changes relayed meanwhile applied; kept in
    /// memory while its room is followed. The group and its seq.
    pub fn keep_group(
        &self,
        mut group: GroupDoc,
        mut seq: u64,
        changes: Vec<(u64, GroupChange)>,
    ) -> (Arc<GroupDoc>, u64) {
        let mut g = self.groups();
        let relayed: Vec<(u64, GroupChange)> =
            g.followed.get(&group.id).map(|l| l.iter().cloned().collect()).unwrap_or_default();
        let mut all: Vec<(u64, GroupChange)> = changes.into_iter().chain(relayed).collect();
        all.sort_by_key(|(s, _)| *s);
        all.dedup();
        for (s, change) in all {
            if s > seq {
                change.apply(&mut group);
                seq = s;
            }
        }
        group.unread_counts.clear();
        group.read_cursors.clear();
        group.delivered_cursors.clear();
        group.mention_counts.clear();
        let group = Arc::new(group);
        if g.followed.contains_key(&group.id) {
            g.cached.insert(group.id, (group.clone(), seq, Instant::now()));
        }
        (group, seq)
    }

    /// Whether `user` is a participant of the conversation. (A group's
    /// members: `chat::group`, which keeps followed groups in memory.)
    pub async fn is_participant(
        &self,
        store: &Store,
        conv: ObjectId,
        user: UserId,
    ) -> Result<bool, mongodb::error::Error> {
        Ok(self.participants(store, conv).await?.is_some_and(|p| p.contains(&user.oid())))
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, Groups> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Vec<ObjectId>>> {
        self.conversations.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::DateTime;

    fn group(members: &[ObjectId]) -> GroupDoc {
        GroupDoc {
            id: ObjectId::new(),
            name: "g".into(),
            description: None,
            avatar: None,
            members: members.to_vec(),
            admin: members[0],
            kind: natter_shared::model::GroupType::Custom,
            last_message_id: None,
            permissions: Permissions::default(),
            unread_counts: Default::default(),
            created_at: DateTime::now(),
            updated_at: DateTime::now(),
            last_seq: 10,
            read_cursors: Default::default(),
            delivered_cursors: Default::default(),
            deleted: false,
            pins: vec![],
            mention_counts: Default::default(),
        }
    }

    #[test]
    fn a_followed_group_is_kept_exact_by_its_changes_in_order() {
        let (a, b, c) = (ObjectId::new(), ObjectId::new(), ObjectId::new());
        let m = Membership::default();
        let g = group(&[a, b]);
        let id = g.id;
        // Not followed: nothing is kept.
        m.keep_group(g.clone(), 10, vec![]);
        assert!(m.cached_group(id).is_none());
        m.follow_group(id);
        // Relayed while the load reads: kept in the log, applied on keeping.
        m.group_change(id, 13, GroupChange::Removed(b));
        // The events after MongoDB's copy (seq 10), one of them also relayed.
        let (kept, seq) = m.keep_group(
            g,
            10,
            vec![(11, GroupChange::Added(c)), (13, GroupChange::Removed(b)), (9, GroupChange::Removed(a))],
        );
        assert_eq!((kept.members.clone(), seq), (vec![a, c], 13), "9 is older than the copy; 13 once");
        // Later changes apply in order; an old one (a redelivery) does not.
        m.group_change(id, 14, GroupChange::Added(b));
        m.group_change(id, 12, GroupChange::Removed(c));
        let (now, at) = m.cached_group(id).unwrap();
        assert_eq!((now.members.clone(), at), (vec![a, c, b], 14));
        m.group_change(id, 15, GroupChange::Deleted);
        assert!(!m.cached_group(id).unwrap().0.is_member(a), "a deleted group has no members");
        // Unfollowed: forgotten, and changes are no longer kept.
        m.unfollow_group(id);
        assert!(m.cached_group(id).is_none() && !m.is_followed(id));
        m.group_change(id, 16, GroupChange::Added(a));
        assert!(m.cached_group(id).is_none());
    }
}
