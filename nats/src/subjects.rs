//! Subject, stream, consumer and bucket names.
//!
//! Commands are partitioned by room: `<ns>.cmd.p<N>.<kind>.<room>.<action>`,
//! where N = crc32(room) mod the partition count. Each partition has its own
//! durable consumer per worker role, and a partition is applied by one
//! worker at a time, so the commands of a room are applied and their events
//! published in stream order. The count is kept in the topology bucket
//! (`partitioning`); changing it re-maps rooms, so `natterctl partitions set`
//! drains the old partitions before anything is published under the new one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Partitions of a deployment that never chose a count (and of every
/// deployment from before the count was a setting).
pub const DEFAULT_PARTITIONS: u32 = natter_shared::config::PARTITIONS_DEFAULT;
/// Most partitions a deployment may have.
pub const MAX_PARTITIONS: u32 = natter_shared::config::PARTITIONS_MAX;

pub use natter_shared::ids::RoomKind;

fn token(kind: RoomKind) -> &'static str {
    match kind {
        RoomKind::Conversation => "conv",
        RoomKind::Group => "group",
    }
}

/// The partition a room's commands go to when there are `count`.
pub fn partition_of(room: &str, count: u32) -> u32 {
    crc32fast::hash(room.as_bytes()) % count.max(1)
}

/// All names in one namespace (`NATS_NAMESPACE`), and the partition count
/// the process publishes and consumes by (shared by every clone, and set
/// by `partitioning::Partitioning::follow` as it changes).
#[derive(Clone, Debug)]
pub struct Subjects {
    ns: String,
    partitions: Arc<AtomicU32>,
}

impl Subjects {
    pub fn new(namespace: &str) -> Self {
        Subjects { ns: namespace.to_string(), partitions: Arc::new(AtomicU32::new(DEFAULT_PARTITIONS)) }
    }

    /// The partition count commands are published and consumed by now.
    pub fn partitions(&self) -> u32 {
        self.partitions.load(Ordering::Acquire)
    }

    /// Sets the partition count for this and every clone.
    pub fn set_partitions(&self, count: u32) {
        self.partitions.store(count.clamp(1, MAX_PARTITIONS), Ordering::Release);
    }

    /// The partition a room's commands go to now.
    pub fn partition_of(&self, room: &str) -> u32 {
        partition_of(room, self.partitions())
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn upper(&self) -> String {
        self.ns.to_uppercase().replace('-', "_")
    }

    /// Stream of commands (every state change).
    pub fn cmd_stream(&self) -> String {
        format!("{}_CMDS", self.upper())
    }

    /// Stream of events (facts after applying), kept for catch-up.
    pub fn evt_stream(&self) -> String {
        format!("{}_EVENTS", self.upper())
    }

    /// Stream of outcome facts (what became of each command), for audit.
    pub fn outcomes_stream(&self) -> String {
        format!("{}_OUTCOMES", self.upper())
    }

    pub fn outcomes_all(&self) -> String {
        format!("{}.out.>", self.ns)
    }

    /// Outcome facts of one role.
    pub fn outcome(&self, role: &str) -> String {
        format!("{}.out.{}", self.ns, role)
    }

    /// Stream of dead-lettered commands.
    pub fn dlq_stream(&self) -> String {
        format!("{}_DLQ", self.upper())
    }

    /// KV bucket where workers lease partitions.
    pub fn leases_bucket(&self) -> String {
        format!("{}_leases", self.ns.replace('-', "_"))
    }

    /// KV bucket of the deployment's partition count (`partitioning`).
    pub fn topology_bucket(&self) -> String {
        format!("{}_topology", self.ns.replace('-', "_"))
    }

    /// Object store where the edge stages uploads for the attachments worker.
    pub fn staging_bucket(&self) -> String {
        format!("{}_staging", self.ns.replace('-', "_"))
    }

    /// Filter of one action's commands in one partition.
    pub fn partition_action(&self, p: u32, action: &str) -> String {
        format!("{}.cmd.p{}.*.*.{}", self.ns, p, action)
    }

    /// KV bucket holding the audit chain's head, to detect a cut-off tail.
    pub fn audit_head_bucket(&self) -> String {
        format!("{}_audit", self.ns.replace('-', "_"))
    }

    /// KV bucket of who is online: `edge.<edge>` while the edge lives
    /// (with a TTL), `user.<user>.<edge>` while the user has sockets on it.
    pub fn presence_bucket(&self) -> String {
        format!("{}_presence", self.ns.replace('-', "_"))
    }

    /// KV bucket of when each user was last seen.
    pub fn last_seen_bucket(&self) -> String {
        format!("{}_lastseen", self.ns.replace('-', "_"))
    }

    /// KV bucket of per-user limits: the current window's count of each
    /// user's sends, uploads and group creations (`<limit>.<user>`).
    pub fn quota_bucket(&self) -> String {
        format!("{}_quota", self.ns.replace('-', "_"))
    }

    pub fn cmd_all(&self) -> String {
        format!("{}.cmd.>", self.ns)
    }

    pub fn evt_all(&self) -> String {
        format!("{}.evt.>", self.ns)
    }

    /// Whether a subject is one the events stream keeps.
    pub fn is_stored_event(&self, subject: &str) -> bool {
        subject.strip_prefix(self.ns.as_str()).is_some_and(|r| r.starts_with(".evt."))
    }

    pub fn dlq_all(&self) -> String {
        format!("{}.dlq.>", self.ns)
    }

    /// Subject of a command for `room`.
    pub fn command(&self, kind: RoomKind, room: &str, action: &str) -> String {
        format!("{}.cmd.p{}.{}.{}.{}", self.ns, self.partition_of(room), token(kind), room, action)
    }

    /// Every command of one room, under whatever partition count it was
    /// published.
    pub fn room_commands(&self, kind: RoomKind, room: &str) -> String {
        format!("{}.cmd.*.{}.{}.*", self.ns, token(kind), room)
    }

    /// Subject of a command routed by `route` (its room, or its uploader).
    pub fn routed_command(&self, route: &natter_shared::v1::command::Route, action: &str) -> String {
        use natter_shared::v1::command::Route;
        match route {
            Route::Room(r) => self.command(r.kind, &r.id, action),
            Route::User(u) => {
                let u = u.hex();
                format!("{}.cmd.p{}.user.{}.{}", self.ns, self.partition_of(&u), u, action)
            }
        }
    }

    /// Filter of one partition's commands.
    pub fn partition(&self, p: u32) -> String {
        format!("{}.cmd.p{}.>", self.ns, p)
    }

    /// Events of one room.
    pub fn room_events(&self, kind: RoomKind, room: &str) -> String {
        format!("{}.evt.{}.{}", self.ns, token(kind), room)
    }

    /// Ephemeral frames of one room (typing): core NATS, never stored.
    pub fn room_ephemeral(&self, kind: RoomKind, room: &str) -> String {
        format!("{}.eph.{}.{}", self.ns, token(kind), room)
    }

    /// What an edge subscribes to for a room: its events and its ephemeral
    /// frames, in one subscription.
    pub fn room_follow(&self, kind: RoomKind, room: &str) -> String {
        format!("{}.*.{}.{}", self.ns, token(kind), room)
    }

    /// The room of an event or ephemeral subject (`<ns>.evt.conv.<id>`).
    pub fn parse_room(&self, subject: &str) -> Option<natter_shared::ids::RoomRef> {
        let rest = subject.strip_prefix(&self.ns)?.strip_prefix('.')?;
        let mut it = rest.split('.');
        let (_, kind, id) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() {
            return None;
        }
        let kind = match kind {
            "conv" => RoomKind::Conversation,
            "group" => RoomKind::Group,
            _ => return None,
        };
        Some(natter_shared::ids::RoomRef::new(kind, id))
    }

    /// Events addressed to one user (all their devices).
    pub fn user_events(&self, user: &str) -> String {
        format!("{}.evt.user.{}", self.ns, user)
    }

    /// Dead letters of a worker role.
    pub fn dlq(&self, role: &str) -> String {
        format!("{}.dlq.{}", self.ns, role)
    }

    /// Durable consumer name of a role on a partition.
    pub fn consumer(&self, role: &str, p: u32) -> String {
        format!("{role}-p{p}")
    }

    /// Lease key of a role's partition.
    pub fn lease_key(&self, role: &str, p: u32) -> String {
        format!("{role}.p{p}")
    }

    /// Liveness key of a worker instance (to count live workers of a role).
    pub fn member_key(&self, role: &str, instance: &str) -> String {
        format!("{role}.member.{instance}")
    }

    /// Prefix of the liveness keys of a role.
    pub fn member_prefix(&self, role: &str) -> String {
        format!("{role}.member.")
    }

    /// Every lease and liveness key of a role, to watch.
    pub fn lease_keys(&self, role: &str) -> String {
        format!("{role}.>")
    }

    /// What a key of `lease_keys(role)` names.
    pub fn parse_lease_key(&self, role: &str, key: &str) -> Option<LeaseKey> {
        let rest = key.strip_prefix(role)?.strip_prefix('.')?;
        if let Some(instance) = rest.strip_prefix("member.") {
            return Some(LeaseKey::Member(instance.to_string()));
        }
        rest.strip_prefix('p')?.parse().ok().map(LeaseKey::Partition)
    }
}

/// A key of the leases bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseKey {
    /// A live worker instance of the role.
    Member(String),
    /// The lease of a partition.
    Partition(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let s = Subjects::new("chat");
        assert_eq!(s.cmd_stream(), "CHAT_CMDS");
        let subj = s.command(RoomKind::Conversation, "abc", "send_message");
        assert!(subj.starts_with("chat.cmd.p"));
        assert!(subj.ends_with(".conv.abc.send_message"));
        assert_eq!(s.room_events(RoomKind::Conversation, "abc"), "chat.evt.conv.abc");
        assert_eq!(s.partition(3), "chat.cmd.p3.>");
        let r = s.parse_room("chat.evt.group.g1").unwrap();
        assert_eq!((r.kind, r.id.as_str()), (RoomKind::Group, "g1"));
        assert!(s.parse_room("chat.evt.user.u1").is_none());
        assert!(s.parse_room("other.evt.conv.c").is_none());
    }

    #[test]
    fn lease_keys_round_trip() {
        let s = Subjects::new("chat");
        assert_eq!(s.parse_lease_key("messages", &s.lease_key("messages", 7)), Some(LeaseKey::Partition(7)));
        let member = s.member_key("messages", "123-abc");
        assert_eq!(s.parse_lease_key("messages", &member), Some(LeaseKey::Member("123-abc".into())));
        assert!(member.starts_with(&s.member_prefix("messages")));
        assert_eq!(s.parse_lease_key("audit", &s.lease_key("messages", 1)), None);
        assert_eq!(s.parse_lease_key("messages", "messages.px"), None);
    }

    #[test]
    fn partitions_spread_and_are_stable() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let p = partition_of(&format!("room{i}"), DEFAULT_PARTITIONS);
            assert!(p < DEFAULT_PARTITIONS);
            seen.insert(p);
        }
        assert_eq!(seen.len() as u32, DEFAULT_PARTITIONS);
        assert_eq!(partition_of("room1", 8), partition_of("room1", 8));
    }
}
