//! Fan-out from NATS to local sockets. One core NATS subscription per subject
//! (a room, or a user) that at least one local socket follows, reference
//! counted: the first socket subscribes, the last one leaving unsubscribes.
//! An edge only receives what its sockets may see.
//!
//! Frames are forwarded untouched; the hub reads only their head:
//! - `revoke`: after this frame, the named user (or everyone, `*`) stops
//!   receiving the room, in stream order, so a removed member receives
//!   nothing published after the removal;
//! - `grant`: the receiving user's sockets start following that group;
//! - ephemeral frames (no `seq`) never go back to their `from` user.
//!
//! Delivery to a socket never blocks the fan-out: a socket whose queue is
//! full is told to close (slow consumer) instead of stalling the others.

use crate::core::membership::Membership;
use crate::core::recent::Recent;
use bytes::Bytes;
use futures::StreamExt;
use natter_nats::{RoomKind, Subjects};
use natter_shared::ids::{RoomRef, UserId, parse_oid};
use natter_shared::shutdown::Tasks;
use natter_shared::v1::event::{EventHead, data_of};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A local connection's id.
pub type ConnId = u64;

/// What the writer needs to know about an event.
#[derive(Debug)]
pub struct Head {
    pub kind: String,
    pub seq: Option<u64>,
    pub part: u32,
    pub from: Option<String>,
    /// The room the event belongs to (from its subject).
    pub room: Option<RoomRef>,
}

impl Head {
    /// The head of an event frame published on `subject`.
    fn of(subjects: &Subjects, subject: &str, h: &EventHead) -> Head {
        Head {
            kind: h.kind.clone(),
            seq: h.seq,
            part: h.part,
            from: h.from.clone(),
            room: subjects.parse_room(subject),
        }
    }
}

/// What a connection's writer is given.
#[derive(Debug)]
pub enum Outbound {
    /// A reply to this connection (ack, error, ready), already encoded in
    /// the connection's protocol.
    Reply(String),
    /// An event frame (the native JSON shape, as published) made on this
    /// edge for this connection, not from a subscription: presence.
    Local(String),
    /// An event from a subscription, one copy shared by every connection
    /// it goes to.
    Event(Arc<SharedEvent>),
    /// The client saw `subject`'s events up to `seq` (a join with
    /// `lastSeq`): none at or before it is written, whether catch-up or a
    /// live copy republished by a worker that took a partition over.
    Since { subject: Arc<str>, seq: u64 },
}

/// An event from the subscription `subject`, written (unless its `(seq,
/// part)` was already written for that subject) by every connection it
/// goes to, and encoded once per protocol: the native frame is the payload
/// as published; the other protocol's frame is made by the first of its
/// connections that writes it, then shared by the rest.
#[derive(Debug)]
pub struct SharedEvent {
    pub subject: Arc<str>,
    pub head: Arc<Head>,
    pub payload: Bytes,
    other: std::sync::OnceLock<Option<Bytes>>,
}

impl SharedEvent {
    pub fn new(subject: Arc<str>, head: Arc<Head>, payload: Bytes) -> Arc<Self> {
        Arc::new(SharedEvent { subject, head, payload, other: std::sync::OnceLock::new() })
    }

    /// The frame in the other protocol: made by `encode` from the native
    /// frame the first time it is asked for, then the same bytes.
    pub fn encoded(&self, encode: impl FnOnce(&[u8]) -> Option<Bytes>) -> Option<Bytes> {
        self.other.get_or_init(|| encode(&self.payload)).clone()
    }
}

/// The sending side of a connection, as the hub holds it.
#[derive(Clone)]
pub struct Sink {
    pub conn: ConnId,
    pub user: UserId,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection cannot keep up.
    pub overflow: CancellationToken,
    /// The subjects this connection follows, kept in step by the hub when it
    /// revokes or grants.
    pub followed: Arc<Mutex<HashSet<String>>>,
}

/// Queues `o` for a connection without waiting: a connection whose queue
/// is full cannot keep up, and `overflow` is cancelled to close it (it
/// reconnects and catches up). Nothing sent to a client ever waits on it.
pub fn offer(tx: &mpsc::Sender<Outbound>, overflow: &CancellationToken, o: Outbound) {
    if tx.try_send(o).is_err() {
        overflow.cancel();
    }
}

impl Sink {
    /// Queues `o` for this connection (see [`offer`]).
    pub fn offer(&self, o: Outbound) {
        offer(&self.tx, &self.overflow, o);
    }

    fn followed(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.followed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static NEXT_ENTRY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Side effects the fan-out asks of the hub.
enum Control {
    Follow(String, Sink),
    Unfollow(String, ConnId),
    /// A user-subject event that changes who the user shares rooms with.
    Contacts(ContactNotice),
}

struct Entry {
    /// Tells this entry from a later one for the same subject.
    id: u64,
    sinks: Arc<Mutex<HashMap<ConnId, Sink>>>,
    stop: CancellationToken,
    /// Set once the subscription is in place (or failed).
    ready: watch::Sender<Option<Result<(), String>>>,
}

pub struct Hub {
    nats: async_nats::Client,
    subjects: Subjects,
    entries: Mutex<HashMap<String, Entry>>,
    control: mpsc::UnboundedSender<Control>,
    /// Told when a user's contacts may have changed (presence uses it).
    contacts: mpsc::UnboundedSender<ContactNotice>,
    recent: Arc<Recent>,
    membership: Arc<Membership>,
    /// The edge's tasks: the control loop and the fan-outs are services.
    tasks: Tasks,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What presence is told about a local user's contacts.
#[derive(Debug)]
pub enum ContactNotice {
    /// They may have changed: read them again.
    Refresh(UserId),
    /// These became the user's contacts.
    Add(UserId, Vec<UserId>),
    /// A group's members changed by the command at a seq (its room's event).
    Group(mongodb::bson::oid::ObjectId, u64, crate::core::membership::GroupChange),
}

/// Whether `subject` matches the NATS subject `pattern` (`*` one token,
/// `>` the rest).
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut s = subject.split('.');
    for p in pattern.split('.') {
        match (p, s.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    s.next().is_none()
}

/// The group a frame's `data.groupId` names.
fn group_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        group_id: String,
    }
    data_of::<Data>(payload).map(|d| d.group_id)
}

/// The users a `contact_added` frame names.
fn contact_ids(payload: &[u8]) -> Vec<UserId> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Data {
        user_ids: Vec<String>,
    }
    data_of::<Data>(payload).map(|d| d.user_ids.iter().filter_map(|u| u.parse().ok()).collect()).unwrap_or_default()
}

/// Event types on a user's subject that change who they share rooms with.
const CONTACT_EVENTS: [&str; 5] = ["member_added", "member_removed", "group_created", "group_deleted", "contact_added"];

impl Hub {
    /// The hub and the receiver of "contacts changed" notices.
    pub fn new(
        nats: async_nats::Client,
        subjects: Subjects,
        recent: Arc<Recent>,
        membership: Arc<Membership>,
        tasks: Tasks,
    ) -> (Arc<Hub>, mpsc::UnboundedReceiver<ContactNotice>) {
        let (control, mut rx) = mpsc::unbounded_channel();
        let (contacts, contacts_rx) = mpsc::unbounded_channel();
        let entries = Mutex::new(HashMap::new());
        let hub = Arc::new(Hub { nats, subjects, entries, control, contacts, recent, membership, tasks });
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        hub.tasks.spawn_service(|stop: CancellationToken| async move {
            loop {
                let c = tokio::select! {
                    _ = stop.cancelled() => break,
                    c = rx.recv() => match c { Some(c) => c, None => break },
                };
                let Some(hub) = weak.upgrade() else { break };
                match c {
                    Control::Follow(subject, sink) => {
                        if let Err(e) = hub.follow(&subject, sink).await {
                            tracing::warn!(error = %e, "cannot follow granted room");
                        }
                    }
                    Control::Unfollow(subject, conn) => hub.unfollow(&subject, conn).await,
                    Control::Contacts(notice) => {
                        let _ = hub.contacts.send(notice);
                    }
                }
            }
        });
        (hub, contacts_rx)
    }

    /// The subject a room is followed on.
    pub fn room_subject(&self, room: &RoomRef) -> String {
        self.subjects.room_follow(room.kind, &room.id)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        lock(&self.entries)
    }

    /// Adds the connection to `subject`'s receivers. Returns once the
    /// subscription is known to the server, so every event published after
    /// this returns is delivered. The hub's lock is never held across a
    /// round trip to NATS: the first follower of a subject subscribes, the
    /// others wait for that subscription only.
    pub async fn follow(&self, subject: &str, sink: Sink) -> Result<(), async_nats::Error> {
        let conn = sink.conn;
        sink.followed().insert(subject.to_string());
        let (created, mut ready) = {
            let mut entries = self.entries();
            match entries.get(subject) {
                Some(e) => {
                    lock(&e.sinks).insert(conn, sink.clone());
                    (None, e.ready.subscribe())
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    // Stopped when everyone has left, or with the services.
                    let stop = self.tasks.services_stop().child_token();
                    let sinks = Arc::new(Mutex::new(HashMap::from([(conn, sink.clone())])));
                    let id = NEXT_ENTRY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let entry = Entry { id, sinks: sinks.clone(), stop: stop.clone(), ready: tx };
                    entries.insert(subject.to_string(), entry);
                    (Some((id, sinks, stop)), rx)
                }
            }
        };
        if let Some((id, sinks, stop)) = created {
            // Should everyone leave meanwhile, `stop` ends the fan-out.
            let result = self.subscribe(subject, sinks, stop).await;
            let mut entries = self.entries();
            if let Some(e) = entries.get(subject).filter(|e| e.id == id) {
                let _ = e.ready.send(Some(result.clone()));
                if result.is_err() {
                    // Nobody receives through it: the next follower tries again.
                    entries.remove(subject);
                } else if let Some(g) = self.group_of(subject) {
                    // Every event of the group's room reaches this edge now.
                    self.membership.follow_group(g);
                }
            }
        }
        let result = match ready.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or(Ok(())),
            // The entry went (everyone left) before it was ready.
            Err(_) => Err("the subscription was dropped".to_string()),
        };
        if let Err(e) = result {
            sink.followed().remove(subject);
            return Err(e.into());
        }
        Ok(())
    }

    /// Subscribes to `subject` and starts its fan-out into `sinks`, unless
    /// everyone left meanwhile (`stop`).
    async fn subscribe(
        &self,
        subject: &str,
        sinks: Arc<Mutex<HashMap<ConnId, Sink>>>,
        stop: CancellationToken,
    ) -> Result<(), String> {
        let sub = self.nats.subscribe(subject.to_string()).await.map_err(|e| e.to_string())?;
        // A flush only writes the subscription out; an answer to a request
        // sent after it on the same connection proves the server has it.
        let js = async_nats::jetstream::new(self.nats.clone());
        js.get_stream(self.subjects.evt_stream()).await.map_err(|e| e.to_string())?;
        let fan = FanOut {
            subject: Arc::from(subject),
            subjects: self.subjects.clone(),
            sinks,
            control: self.control.clone(),
            recent: self.recent.clone(),
            membership: self.membership.clone(),
            delivered: metrics::counter!("natter_events_delivered_total"),
        };
        self.tasks.spawn_service(|_| fan.run(sub, stop));
        Ok(())
    }

    /// Removes the connection from `subject`; unsubscribes when nobody is left.
    pub async fn unfollow(&self, subject: &str, conn: ConnId) {
        let mut entries = self.entries();
        let empty = match entries.get(subject) {
            Some(e) => {
                let mut s = lock(&e.sinks);
                if let Some(sink) = s.remove(&conn) {
                    sink.followed().remove(subject);
                }
                s.is_empty()
            }
            None => false,
        };
        if empty && let Some(e) = entries.remove(subject) {
            e.stop.cancel();
            if let Some(g) = self.group_of(subject) {
                self.membership.unfollow_group(g);
            }
        }
    }

    /// The group whose room `subject` follows, if it is a group's.
    fn group_of(&self, subject: &str) -> Option<mongodb::bson::oid::ObjectId> {
        let room = self.subjects.parse_room(subject).filter(|r| r.kind == RoomKind::Group)?;
        mongodb::bson::oid::ObjectId::parse_str(&room.id).ok()
    }

    /// An event frame as the fan-out sees it: its head (with the room of
    /// the subject it was published on), and the frame's routing fields.
    pub fn head(&self, published_on: &str, payload: &[u8]) -> Option<(Arc<Head>, EventHead)> {
        let h: EventHead = serde_json::from_slice(payload).ok()?;
        Some((Arc::new(Head::of(&self.subjects, published_on, &h)), h))
    }
}

struct FanOut {
    subject: Arc<str>,
    subjects: Subjects,
    sinks: Arc<Mutex<HashMap<ConnId, Sink>>>,
    control: mpsc::UnboundedSender<Control>,
    recent: Arc<Recent>,
    membership: Arc<Membership>,
    /// `natter_events_delivered_total`, looked up once per subscription.
    delivered: metrics::Counter,
}

impl FanOut {
    /// The participants a `conversation_created` event names, for the
    /// membership check of a join that comes before MongoDB has them.
    fn note_conversation(&self, payload: &[u8]) {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Created {
            #[serde(rename = "_id")]
            id: String,
            participant_ids: Vec<String>,
        }
        let Some(c) = natter_shared::v1::event::data_of::<Created>(payload) else { return };
        let ids: Option<Vec<_>> = c.participant_ids.iter().map(|p| natter_shared::ids::parse_oid(p)).collect();
        if let (Some(id), Some(ids)) = (natter_shared::ids::parse_oid(&c.id), ids) {
            self.membership.note_conversation(id, ids);
        }
    }

    async fn run(self, mut sub: async_nats::Subscriber, stop: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                m = sub.next() => match m { Some(m) => m, None => break },
            };
            // A JetStream push consumer can deliver copies of messages (with
            // their own subjects) into this subscription: only what was
            // published on a subject it follows is this room's or user's.
            if !subject_matches(&self.subject, &msg.subject) {
                tracing::warn!(subject = %msg.subject, on = %self.subject, "frame from elsewhere dropped");
                continue;
            }
            let Ok(h) = serde_json::from_slice::<EventHead>(&msg.payload) else {
                tracing::warn!(subject = %msg.subject, "frame without a type dropped");
                continue;
            };
            self.deliver(&msg.subject, h, msg.payload);
        }
        let _ = sub.unsubscribe().await;
    }

    fn deliver(&self, subject: &str, h: EventHead, payload: Bytes) {
        let head = Arc::new(Head::of(&self.subjects, subject, &h));
        if head.kind == "message_received"
            && let Some(room) = &head.room
        {
            self.recent.relayed(room, &payload);
        }
        if head.kind == "conversation_created" {
            self.note_conversation(&payload);
        }
        // A group's membership changes, in stream order. The room's copy
        // keeps the group in memory; presence takes the member's own copy
        // too (added, removed, the group deleted): it can come first and
        // stop this edge following the room, so the room's copy may never
        // reach presence.
        let group = match &head.room {
            Some(r) if r.kind == RoomKind::Group => Some(r.id.clone()),
            Some(_) => None,
            None => group_of(&payload),
        };
        if let Some(group) = group
            && let Some((seq, change)) = crate::core::events::group_change(&payload)
            && let Ok(id) = mongodb::bson::oid::ObjectId::parse_str(&group)
        {
            let _ = self.control.send(Control::Contacts(ContactNotice::Group(id, seq, change.clone())));
            if head.room.is_some() {
                self.membership.group_change(id, seq, change);
            }
        }
        let shared = SharedEvent::new(self.subject.clone(), head.clone(), payload.clone());
        // Offers never wait, so they are made under the lock, without a
        // copy of every sink per event.
        // A room's event without a seq (typing) skips its sender's sockets.
        let from = head.from.as_deref().filter(|_| head.seq.is_none()).and_then(parse_oid);
        let targets = lock(&self.sinks);
        self.delivered.increment(targets.len() as u64);
        for s in targets.values() {
            if from == Some(s.user.oid()) {
                continue;
            }
            s.offer(Outbound::Event(shared.clone()));
            if let Some(group) = &h.grant {
                let room = RoomRef::new(RoomKind::Group, group.clone());
                let _ = self.control.send(Control::Follow(self.subjects.room_follow(room.kind, &room.id), s.clone()));
            }
            // The user's own notice of leaving a group (in stream order with
            // the grant that made its sockets follow it): they stop, even
            // if the room's revoke went out before they followed.
            if head.room.is_none()
                && matches!(head.kind.as_str(), "member_removed" | "group_deleted")
                && let Some(group) = group_of(&payload)
            {
                let subject = self.subjects.room_follow(RoomKind::Group, &group);
                let _ = self.control.send(Control::Unfollow(subject, s.conn));
            }
            if head.kind == "contact_added" {
                // MongoDB may not have it yet: the event says who.
                let _ = self.control.send(Control::Contacts(ContactNotice::Add(s.user, contact_ids(&payload))));
            } else if CONTACT_EVENTS.contains(&head.kind.as_str()) {
                let _ = self.control.send(Control::Contacts(ContactNotice::Refresh(s.user)));
            }
        }
        drop(targets);
        if let Some(who) = &h.revoke {
            let mut sinks = lock(&self.sinks);
            let gone: Vec<ConnId> =
                sinks.values().filter(|s| who == "*" || s.user.hex() == *who).map(|s| s.conn).collect();
            for conn in gone {
                // Out of the map now, so nothing after this frame reaches
                // them; the hub then drops the subscription if it is unused.
                if let Some(s) = sinks.remove(&conn) {
                    s.followed().remove(&*self.subject);
                }
                let _ = self.control.send(Control::Unfollow(self.subject.to_string(), conn));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn only_followed_subjects_pass() {
        assert!(subject_matches("chat.*.conv.r1", "chat.evt.conv.r1"));
        assert!(subject_matches("chat.*.conv.r1", "chat.eph.conv.r1"));
        assert!(!subject_matches("chat.*.conv.r1", "chat.evt.conv.r2"));
        assert!(!subject_matches("chat.*.conv.r1", "chat.evt.conv.r1.x"));
        assert!(!subject_matches("chat.evt.user.u", "chat.evt.user"));
        assert!(subject_matches("chat.out.>", "chat.out.edge"));
    }
}
