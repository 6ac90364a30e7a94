//! Presence: who is online, across edges and devices.
//!
//! Each edge keeps a key `<user>.<edge>` in a KV bucket while the user has
//! at least one socket on it, refreshed every `HEARTBEAT` and expiring after
//! the bucket's TTL; the server leaves a delete marker when a key expires,
//! so a dead edge's users go offline within `OFFLINE_BOUND`. Every edge
//! watches the bucket: a user is online while any key of theirs exists. On
//! a transition each edge tells its own sockets whose users are that
//! user's contacts (see [`contacts_of`]), so nobody else learns it and no
//! frame is sent twice.

use crate::realtime::hub::{ConnId, ContactNotice, Outbound, Sink};
use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use mongodb::bson::DateTime;
use natter_nats::Subjects;
use natter_shared::ids::UserId;
use natter_shared::shutdown::Tasks;
use natter_shared::store::Store;
use natter_shared::timefmt::iso;
use natter_shared::v1::event::{EventFrame, EventKind, UserPresence};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use natter_nats::topology::PRESENCE_TTL;
/// How often an edge refreshes its users' keys.
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// Last-seen lookups a presence query keeps in flight.
const LOOKUPS_IN_FLIGHT: usize = 32;
/// Longest time from an edge's death to its users going offline.
pub const OFFLINE_BOUND: Duration = Duration::from_secs(PRESENCE_TTL.as_secs() + 5);

#[derive(Default)]
struct LocalUser {
    sinks: HashMap<ConnId, Sink>,
    contacts: HashSet<UserId>,
}

pub struct Presence {
    kv: kv::Store,
    seen: kv::Store,
    edge: String,
    store: Store,
    local: Mutex<HashMap<UserId, LocalUser>>,
    /// Edges each user has sockets on, as the bucket says.
    online: Mutex<HashMap<UserId, HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> DateTime {
    DateTime::now()
}

impl Presence {
    pub async fn start(
        js: &async_nats::jetstream::Context,
        subjects: &Subjects,
        store: Store,
        mut contacts_changed: mpsc::UnboundedReceiver<ContactNotice>,
        tasks: &Tasks,
    ) -> Result<Arc<Presence>, String> {
        let kv = js.get_key_value(subjects.presence_bucket()).await.map_err(|e| e.to_string())?;
        let seen = js.get_key_value(subjects.last_seen_bucket()).await.map_err(|e| e.to_string())?;
        let edge = mongodb::bson::oid::ObjectId::new().to_hex();
        let p = Arc::new(Presence {
            kv,
            seen,
            edge,
            store,
            local: Mutex::new(HashMap::new()),
            online: Mutex::new(HashMap::new()),
        });
        let mut watch = p.kv.watch_with_history(">").await.map_err(|e| e.to_string())?;
        let w = Arc::downgrade(&p);
        tasks.spawn_service(|stop: CancellationToken| async move {
            loop {
                let entry = tokio::select! {
                    _ = stop.cancelled() => break,
                    e = watch.next() => match e { Some(Ok(e)) => e, Some(Err(_)) => continue, None => break },
                };
                let Some(p) = w.upgrade() else { break };
                p.observe(&entry.key, entry.operation == Operation::Put).await;
            }
        });
        let w = Arc::downgrade(&p);
        // Stops after the connections: their disconnects have run by then.
        tasks.spawn_service(|stop: CancellationToken| async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                    n = contacts_changed.recv() => {
                        match (n, w.upgrade()) {
                            (Some(ContactNotice::Refresh(u)), Some(p)) => p.refresh_contacts(u).await,
                            (Some(ContactNotice::Add(u, others)), Some(p)) => p.add_contacts(u, others),
                            _ => {}
                        }
                        continue;
                    }
                }
                let Some(p) = w.upgrade() else { break };
                let users: Vec<UserId> = lock(&p.local).keys().copied().collect();
                for u in users {
                    let _ = p.kv.put(p.key(u), "1".into()).await;
                }
            }
            // Going away: our users are no longer online through this edge.
            if let Some(p) = w.upgrade() {
                let users: Vec<UserId> = lock(&p.local).keys().copied().collect();
                for u in users {
                    let _ = p.kv.delete(p.key(u)).await;
                }
            }
        });
        Ok(p)
    }

    fn key(&self, user: UserId) -> String {
        format!("{}.{}", user.hex(), self.edge)
    }

    /// A socket of `sink.user` connected to this edge. The user's
    /// contacts (two MongoDB reads) are loaded in the background: a
    /// connection opens at the speed of one NATS round trip.
    pub async fn connect(self: &Arc<Self>, sink: &Sink) {
        let first = {
            let mut local = lock(&self.local);
            let e = local.entry(sink.user).or_default();
            e.sinks.insert(sink.conn, sink.clone());
            e.sinks.len() == 1
        };
        if first {
            if let Err(e) = self.kv.put(self.key(sink.user), "1".into()).await {
                tracing::warn!(error = %e, "presence not recorded");
            }
            let (p, user) = (Arc::downgrade(self), sink.user);
            tokio::spawn(async move {
                if let Some(p) = p.upgrade() {
                    p.refresh_contacts(user).await;
                }
            });
        }
    }

    /// A socket went away; the user's last one on this edge removes the key.
    pub async fn disconnect(&self, user: UserId, conn: ConnId) {
        let last = {
            let mut local = lock(&self.local);
            match local.get_mut(&user) {
                Some(e) => {
                    e.sinks.remove(&conn);
                    if e.sinks.is_empty() {
                        local.remove(&user);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            let _ = self.seen.put(user.hex(), iso(now()).into()).await;
            if let Err(e) = self.kv.delete(self.key(user)).await {
                tracing::warn!(error = %e, "presence not cleared; it will expire");
            }
        }
    }

    /// Applies a change seen in the bucket; tells local contacts on a transition.
    async fn observe(&self, key: &str, present: bool) {
        let Some((user, edge)) = key.split_once('.') else { return };
        let Ok(user) = user.parse::<UserId>() else { return };
        let changed = {
            let mut online = lock(&self.online);
            let edges = online.entry(user).or_default();
            let was = !edges.is_empty();
            if present {
                edges.insert(edge.to_string());
            } else {
                edges.remove(edge);
            }
            let is = !edges.is_empty();
            if !is {
                online.remove(&user);
            }
            (was != is).then_some(is)
        };
        let Some(is_online) = changed else { return };
        let at = iso(now());
        if !is_online {
            // Also when the edge died: record when the user was last seen.
            let _ = self.seen.put(user.hex(), at.clone().into()).await;
        }
        let data = UserPresence { user_id: user.hex(), is_online, last_seen: Some(at) };
        let kind = if is_online { EventKind::UserOnline } else { EventKind::UserOffline };
        let Ok(text) = serde_json::to_string(&EventFrame::ephemeral(kind, data).from(user.hex())) else { return };
        let targets: Vec<Sink> = lock(&self.local)
            .iter()
            .filter(|(u, l)| **u != user && l.contacts.contains(&user))
            .flat_map(|(_, l)| l.sinks.values().cloned())
            .collect();
        for s in targets {
            s.offer(Outbound::Local(text.clone()));
        }
    }

    fn add_contacts(&self, user: UserId, others: Vec<UserId>) {
        if let Some(l) = lock(&self.local).get_mut(&user) {
            l.contacts.extend(others.into_iter().filter(|o| *o != user));
        }
    }

    async fn refresh_contacts(&self, user: UserId) {
        if !lock(&self.local).contains_key(&user) {
            return;
        }
        match contacts_of(&self.store, user).await {
            Ok(c) => {
                if let Some(l) = lock(&self.local).get_mut(&user) {
                    l.contacts = c;
                }
            }
            Err(e) => tracing::warn!(error = %e, "contacts not refreshed"),
        }
    }

    /// Presence of `users` as `who` may see it: only users who share a
    /// conversation or group with `who` (and `who`).
    pub async fn of(&self, who: UserId, users: &[UserId]) -> Result<Vec<UserPresence>, mongodb::error::Error> {
        let contacts = contacts_of(&self.store, who).await?;
        let visible: Vec<UserId> = users.iter().copied().filter(|u| *u == who || contacts.contains(u)).collect();
        // The last-seen times, a few lookups in flight at once.
        let out = futures::stream::iter(visible)
            .map(|u| async move {
                let is_online = lock(&self.online).get(&u).is_some_and(|e| !e.is_empty());
                let last_seen = match self.seen.get(u.hex()).await {
                    Ok(Some(v)) => Some(String::from_utf8_lossy(&v).to_string()),
                    _ => None,
                };
                UserPresence { user_id: u.hex(), is_online, last_seen }
            })
            .buffered(LOOKUPS_IN_FLIGHT)
            .collect()
            .await;
        Ok(out)
    }
}

/// Whose presence `user` may see: everyone who shares a group with them,
/// and the other side of each conversation in which both have written.
/// Opening a conversation with someone is not enough (anyone may open
/// one with anyone), nor is writing to someone who never answered.
pub async fn contacts_of(store: &Store, user: UserId) -> Result<HashSet<UserId>, mongodb::error::Error> {
    Ok(store.contacts_of(user.oid()).await?.into_iter().map(UserId).collect())
}
