//! Presence: who is online, across edges and devices.
//!
//! Each edge keeps a key of its own in a KV bucket, put every `HEARTBEAT`
//! and expiring after the bucket's TTL (the server leaves a marker when it
//! does, so a dead edge's users go offline within `OFFLINE_BOUND`), and a
//! key per user with a socket on it, put once (see [`online`] for the
//! keys). A heartbeat is one put per edge, not one per user. If the edge's
//! own key went meanwhile (a stall longer than the TTL, or a restarted
//! NATS), its users' keys are put again, and each heartbeat round mends
//! those the bucket lacks or holds for users gone. Every edge watches the
//! bucket: a user is online while any key of theirs is on a live edge. On
//! a transition each edge tells its own sockets whose users are that
//! user's contacts (see [`Contacts`]), so nobody else learns it and no
//! frame is sent twice. The live edge of the lowest id deletes the keys a
//! dead edge left.
//!
//! [`online`]: crate::realtime::online

use crate::realtime::contacts::Contacts;
use crate::realtime::hub::{ConnId, ContactNotice, Outbound, Sink};
use crate::realtime::online::{Key, Online};
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
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use natter_nats::topology::PRESENCE_TTL;
/// How often an edge refreshes its own key (and mends its users').
pub const HEARTBEAT: Duration = Duration::from_secs(3);
/// Presence keys an edge puts or deletes at once.
const PUTS_IN_FLIGHT: usize = 256;
/// Most keys of this edge mended in one round (see `Presence::reconcile`).
const MENDS_PER_ROUND: usize = 4096;
/// Last-seen lookups a presence query keeps in flight.
const LOOKUPS_IN_FLIGHT: usize = 32;
/// Longest time from an edge's death to its users going offline.
pub const OFFLINE_BOUND: Duration = Duration::from_secs(PRESENCE_TTL.as_secs() + 5);

pub struct Presence {
    js: async_nats::jetstream::Context,
    kv: kv::Store,
    seen: kv::Store,
    edge: String,
    store: Store,
    /// Each user who has sockets here.
    local: Mutex<HashMap<UserId, Here>>,
    contacts: Mutex<Contacts>,
    /// Held while groups' members are read, so that users of one group
    /// connecting together read it once.
    group_reads: tokio::sync::Mutex<()>,
    /// Who is online, as the bucket says.
    online: Mutex<Online>,
    /// Held while a sweep of dead edges' keys runs (one at a time).
    sweeping: Arc<tokio::sync::Mutex<()>>,
    /// Set by the heartbeat when this edge's key was lost: all its users'
    /// keys are put again.
    lost: AtomicBool,
    /// The revision of this edge's key, as last written.
    alive: AtomicU64,
}

/// Runs `round` every heartbeat until `stop`, or until the presence is
/// dropped.
async fn every_heartbeat<F, Fut>(stop: &CancellationToken, w: &Weak<Presence>, mut round: F)
where
    F: FnMut(Arc<Presence>) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(p) = w.upgrade() else { return };
        round(p).await;
    }
}

/// A user with sockets here.
#[derive(Default)]
struct Here {
    sinks: HashMap<ConnId, Sink>,
    loads: Arc<Loads>,
}

/// The loads of one user's contacts.
#[derive(Default)]
struct Loads {
    /// Held by a load: loads run one after another, so an older read never
    /// lands over a newer one, and each load's announcements start where
    /// the previous load's lists took over.
    running: tokio::sync::Mutex<()>,
    /// A load waits to start: it reads the lists after any change told
    /// meanwhile, so another is not needed (a burst of changes is one load).
    queued: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> DateTime {
    DateTime::now()
}

/// The `user_online` or `user_offline` frame of `user`.
fn presence_frame(user: UserId, is_online: bool, at: String) -> Option<String> {
    let data = UserPresence { user_id: user.hex(), is_online, last_seen: Some(at) };
    let kind = if is_online { EventKind::UserOnline } else { EventKind::UserOffline };
    serde_json::to_string(&EventFrame::ephemeral(kind, data).from(user.hex())).ok()
}

impl Presence {
    pub async fn start(
        js: &async_nats::jetstream::Context,
        subjects: &Subjects,
        store: Store,
        mut contacts_changed: mpsc::UnboundedReceiver<ContactNotice>,
        max_group: usize,
        tasks: &Tasks,
    ) -> Result<Arc<Presence>, String> {
        let kv = js.get_key_value(subjects.presence_bucket()).await.map_err(|e| e.to_string())?;
        let seen = js.get_key_value(subjects.last_seen_bucket()).await.map_err(|e| e.to_string())?;
        let edge = mongodb::bson::oid::ObjectId::new().to_hex();
        // Alive before any user of ours is put.
        let alive = kv.put(Key::edge(&edge), "1".into()).await.map_err(|e| e.to_string())?;
        let p = Arc::new(Presence {
            js: js.clone(),
            kv,
            seen,
            edge,
            store,
            local: Mutex::new(HashMap::new()),
            contacts: Mutex::new(Contacts::new(max_group)),
            group_reads: tokio::sync::Mutex::new(()),
            online: Mutex::new(Online::default()),
            sweeping: Arc::new(tokio::sync::Mutex::new(())),
            lost: AtomicBool::new(false),
            alive: AtomicU64::new(alive),
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
                p.observe(&entry.key, entry.operation == Operation::Put, entry.revision).await;
            }
        });
        let w = Arc::downgrade(&p);
        tasks.spawn_service(|stop: CancellationToken| async move {
            loop {
                let n = tokio::select! {
                    _ = stop.cancelled() => break,
                    n = contacts_changed.recv() => match n { Some(n) => n, None => break },
                };
                let Some(p) = w.upgrade() else { break };
                match n {
                    // In a task of its own: reads (waiting for other users'
                    // group reads) must not hold up other notices.
                    ContactNotice::Refresh(u) => {
                        let Some(loads) = lock(&p.local).get(&u).map(|h| h.loads.clone()) else { continue };
                        if loads.queued.swap(true, Ordering::SeqCst) {
                            continue;
                        }
                        let since = lock(&p.online).load_begins();
                        tokio::spawn(async move { p.refresh_contacts(u, since, loads).await });
                    }
                    ContactNotice::Add(u, others) => {
                        // `local` before `contacts`, as everywhere.
                        let local = lock(&p.local);
                        if local.contains_key(&u) {
                            lock(&p.contacts).add_peers(u, others);
                        }
                    }
                    ContactNotice::Group(g, seq, change) => lock(&p.contacts).group_change(g, seq, change),
                }
            }
        });
        let w = Arc::downgrade(&p);
        // The edge's key alone, so that nothing delays it past the TTL.
        // Stops after the connections: their disconnects have run by then.
        tasks.spawn_service(|stop: CancellationToken| async move {
            every_heartbeat(&stop, &w, |p| async move { p.heartbeat().await }).await;
            // Going away: our users are no longer online through this edge
            // (the first delete says so to every edge; the rest tidy up).
            if let Some(p) = w.upgrade() {
                let _ = p.kv.delete(Key::edge(&p.edge)).await;
                let users: Vec<UserId> = lock(&p.local).keys().copied().collect();
                futures::stream::iter(users)
                    .for_each_concurrent(PUTS_IN_FLIGHT, |u| {
                        let p = &p;
                        async move {
                            let _ = p.kv.delete(Key::user(u, &p.edge)).await;
                        }
                    })
                    .await;
            }
        });
        let w = Arc::downgrade(&p);
        // The users' keys, other edges' deaths, dead edges' keys.
        tasks.spawn_service(|stop: CancellationToken| async move {
            every_heartbeat(&stop, &w, |p| async move {
                if p.lost.swap(false, Ordering::SeqCst) {
                    let users: Vec<UserId> = lock(&p.local).keys().copied().collect();
                    futures::stream::iter(users).for_each_concurrent(PUTS_IN_FLIGHT, |u| p.put_user(u)).await;
                } else {
                    p.reconcile().await;
                }
                let now = Instant::now();
                p.apply_and_tell(|o| o.expire(&p.edge, HEARTBEAT * 2, PRESENCE_TTL + HEARTBEAT, now), true);
                lock(&p.online).prune();
                if let Ok(one) = p.sweeping.clone().try_lock_owned() {
                    tokio::spawn(async move {
                        p.sweep().await;
                        drop(one);
                    });
                }
            })
            .await;
        });
        Ok(p)
    }

    /// Refreshes this edge's key, last written at revision `alive`. If
    /// the key went meanwhile (expired in a stall, or a NATS restart lost
    /// the bucket), other edges took our users offline and may have
    /// deleted their keys: all are put again (`lost`).
    async fn heartbeat(&self) {
        let key = Key::edge(&self.edge);
        match self.kv.update(&key, "1".into(), self.alive.load(Ordering::SeqCst)).await {
            Ok(rev) => return self.alive.store(rev, Ordering::SeqCst),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => {
                // Maybe written, maybe not: the next update tells.
                return tracing::warn!(error = %e, "presence heartbeat failed");
            }
        }
        // An update that timed out may have landed: then the key is ours.
        if let Ok(Some(entry)) = self.kv.entry(&key).await
            && entry.operation == Operation::Put
        {
            return self.alive.store(entry.revision, Ordering::SeqCst);
        }
        tracing::warn!("this edge's presence key was lost; putting its users' again");
        match self.kv.put(&key, "1".into()).await {
            Ok(rev) => {
                self.alive.store(rev, Ordering::SeqCst);
                self.lost.store(true, Ordering::SeqCst);
            }
            Err(e) => tracing::warn!(error = %e, "presence heartbeat failed"),
        }
    }

    /// Puts the keys of users here the bucket lacks, and deletes the keys
    /// of users no longer here: a put or delete that failed, or that raced
    /// a reconnect, is mended within a heartbeat or two. Nothing to write,
    /// as a rule, and at most `MENDS_PER_ROUND`.
    async fn reconcile(&self) {
        let (missing, extra) = {
            // `local` before `online`, as everywhere.
            let local = lock(&self.local);
            let online = lock(&self.online);
            let none = HashMap::new();
            let held = online.users_on(&self.edge).unwrap_or(&none);
            let missing: Vec<UserId> =
                local.keys().filter(|u| !held.contains_key(u)).copied().take(MENDS_PER_ROUND).collect();
            let extra: Vec<(UserId, u64)> = held
                .iter()
                .filter(|(u, _)| !local.contains_key(u))
                .map(|(u, r)| (*u, *r))
                .take(MENDS_PER_ROUND)
                .collect();
            (missing, extra)
        };
        // Each write checks again (a user may have come or gone since): a
        // put only for a user still here, a delete only of the key as seen.
        futures::stream::iter(missing)
            .for_each_concurrent(PUTS_IN_FLIGHT, |u| async move {
                if lock(&self.local).contains_key(&u) {
                    self.put_user(u).await;
                }
            })
            .await;
        futures::stream::iter(extra)
            .for_each_concurrent(PUTS_IN_FLIGHT, |(u, rev)| async move {
                let _ = self.kv.delete_expect_revision(Key::user(u, &self.edge), Some(rev)).await;
            })
            .await;
    }

    /// Deletes dead edges' keys, if this is the live edge of the lowest id.
    async fn sweep(&self) {
        let dead = lock(&self.online).to_sweep(&self.edge, PRESENCE_TTL, Instant::now());
        futures::stream::iter(dead)
            .for_each_concurrent(PUTS_IN_FLIGHT, |(k, rev)| async move {
                let _ = self.kv.delete_expect_revision(k, Some(rev)).await;
            })
            .await;
    }

    /// Puts `user`'s key for this edge, never expiring (the edge's own key
    /// says whether it counts).
    async fn put_user(&self, user: UserId) {
        let subject =
            format!("{}{}", self.kv.put_prefix.as_ref().unwrap_or(&self.kv.prefix), Key::user(user, &self.edge));
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_TTL, "never");
        let put = async { self.js.publish_with_headers(subject, headers, "1".into()).await?.await };
        if let Err(e) = put.await {
            tracing::warn!(error = %e, "presence not recorded");
        }
    }

    /// A socket of `sink.user` connected to this edge. The user's
    /// contacts (two MongoDB reads of ids, and their groups' members if
    /// this edge does not hold them) are loaded in the background: a
    /// connection opens at the speed of one NATS round trip.
    pub async fn connect(self: &Arc<Self>, sink: &Sink) {
        let first = {
            let mut local = lock(&self.local);
            let here = local.entry(sink.user).or_default();
            here.sinks.insert(sink.conn, sink.clone());
            (here.sinks.len() == 1).then(|| {
                here.loads.queued.store(true, Ordering::SeqCst);
                // `local` before `online`, as everywhere.
                (lock(&self.online).load_begins(), here.loads.clone())
            })
        };
        if let Some((since, loads)) = first {
            self.put_user(sink.user).await;
            let (p, user) = (Arc::downgrade(self), sink.user);
            tokio::spawn(async move {
                if let Some(p) = p.upgrade() {
                    p.refresh_contacts(user, since, loads).await;
                }
            });
        }
    }

    /// A socket went away; the user's last one on this edge removes the key.
    pub async fn disconnect(&self, user: UserId, conn: ConnId) {
        let last = {
            let mut local = lock(&self.local);
            match local.get_mut(&user) {
                Some(here) => {
                    here.sinks.remove(&conn);
                    if here.sinks.is_empty() {
                        local.remove(&user);
                        lock(&self.contacts).remove(user);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            if let Err(e) = self.kv.delete(Key::user(user, &self.edge)).await {
                tracing::warn!(error = %e, "presence not cleared; the next heartbeat tries again");
            }
            let _ = self.seen.put(user.hex(), iso(now()).into()).await;
        }
    }

    /// Applies a change seen in the bucket; tells local contacts of each
    /// transition.
    async fn observe(&self, key: &str, present: bool, revision: u64) {
        let Some(key) = Key::parse(key) else { return };
        // An edge's death: its users' sockets are gone without a
        // disconnect to record when they were last seen.
        let edge_died = !present && matches!(key, Key::Edge(_) | Key::Legacy(..));
        self.apply_and_tell(|o| o.apply(key, present, revision, Instant::now()), edge_died);
    }

    /// Applies `change` to who is online, and tells each transition to
    /// the local users it is pushed to; with `edge_died`, records when the
    /// users gone offline were last seen (this edge, if it is the live
    /// edge of the lowest id: not every edge).
    fn apply_and_tell(&self, change: impl FnOnce(&mut Online) -> Vec<(UserId, bool)>, edge_died: bool) {
        // `contacts` before `online`, as in a contact load: a load either
        // finds the transition done, or is done before and its user is
        // among the watchers; never both, never neither.
        let (told, record) = {
            let contacts = lock(&self.contacts);
            let mut online = lock(&self.online);
            let changed = change(&mut online);
            let record = edge_died && online.is_lowest(&self.edge);
            let told: Vec<_> = changed.into_iter().map(|(u, is)| (u, is, contacts.watchers(u))).collect();
            (told, record)
        };
        if told.is_empty() {
            return;
        }
        let at = iso(now());
        // The sockets under the lock; the frames made and queued after.
        let targets: Vec<Vec<Sink>> = {
            let local = lock(&self.local);
            told.iter()
                .map(|(_, _, watchers)| {
                    watchers.iter().filter_map(|w| local.get(w)).flat_map(|h| h.sinks.values().cloned()).collect()
                })
                .collect()
        };
        for ((user, is_online, _), sinks) in told.iter().zip(targets) {
            if sinks.is_empty() {
                continue;
            }
            let Some(text) = presence_frame(*user, *is_online, at.clone()) else { continue };
            for s in sinks {
                s.offer(Outbound::Local(text.clone()));
            }
        }
        if record {
            let seen = self.seen.clone();
            let gone: Vec<UserId> = told.into_iter().filter(|(_, is, _)| !is).map(|(u, _, _)| u).collect();
            tokio::spawn(async move {
                futures::stream::iter(gone)
                    .for_each_concurrent(PUTS_IN_FLIGHT, |u| {
                        let (seen, at) = (&seen, &at);
                        async move {
                            let _ = seen.put(u.hex(), at.clone().into()).await;
                        }
                    })
                    .await;
            });
        }
    }

    /// Reads `user`'s contact lists again (and their groups' members this
    /// edge does not hold, or has held too long).
    /// (`since` is from [`Online::load_begins`]; the load's end is told.
    /// `loads` are those of the user's sockets when it was asked for.)
    async fn refresh_contacts(&self, user: UserId, since: u64, loads: Arc<Loads>) {
        /// Tells `online` the load ended, however it ends.
        struct Ended<'a>(&'a Mutex<Online>, u64);
        impl Drop for Ended<'_> {
            fn drop(&mut self) {
                lock(self.0).load_ended(self.1);
            }
        }
        let _ended = Ended(&self.online, since);
        let _one = loads.running.lock().await;
        loads.queued.store(false, Ordering::SeqCst);
        if let Err(e) = self.load_contacts(user, since, &loads).await {
            tracing::warn!(error = %e, "contacts not refreshed");
        }
    }

    /// Loads `user`'s contacts, and tells them of those who came online or
    /// went offline after transition `since` (taken before the user's
    /// first socket was counted here, or when their contacts changed) whom
    /// they could not see before: nobody told them yet.
    /// `loads` is the lock of the user's sockets it runs under: if they all
    /// went and others came meanwhile, a newer load is theirs, and this
    /// one's lists are not taken.
    async fn load_contacts(&self, user: UserId, since: u64, loads: &Arc<Loads>) -> Result<(), mongodb::error::Error> {
        let lists = self.store.contact_lists(user.oid()).await?;
        let _reading = self.group_reads.lock().await;
        let missing = lock(&self.contacts).to_read(&lists.groups);
        let read = if missing.is_empty() {
            vec![]
        } else {
            match self.store.group_members(&missing).await {
                Ok(read) => read,
                Err(e) => {
                    lock(&self.contacts).read_failed(&missing);
                    return Err(e);
                }
            }
        };
        let mut read: HashMap<_, _> = read.into_iter().map(|(id, members, seq)| (id, (members, seq))).collect();
        // `local` before `contacts`, as everywhere both are held.
        let local = lock(&self.local);
        let mut contacts = lock(&self.contacts);
        for g in missing {
            contacts.group_read(g, read.remove(&g));
        }
        let Some(here) = local.get(&user).filter(|h| Arc::ptr_eq(&h.loads, loads)) else { return Ok(()) };
        let before = contacts.holds(user).then(|| contacts.pushed_to(user));
        let peers = lists.peers.into_iter().map(UserId).collect();
        contacts.set(user, peers, lists.groups.into_iter().collect());
        let online = lock(&self.online);
        let changed: Vec<(UserId, bool)> = contacts
            .pushed_to(user)
            .into_iter()
            .filter(|c| before.as_ref().is_none_or(|b| !b.contains(c)))
            .filter_map(|c| online.changed_after(c, since).map(|is| (c, is)))
            .collect();
        drop(online);
        let at = iso(now());
        for (c, is_online) in changed {
            let Some(text) = presence_frame(c, is_online, at.clone()) else { continue };
            for s in here.sinks.values() {
                s.offer(Outbound::Local(text.clone()));
            }
        }
        Ok(())
    }

    /// Presence of `users` as `who` may see it: only users who share a
    /// conversation or group with `who` (and `who`).
    pub async fn of(&self, who: UserId, users: &[UserId]) -> Result<Vec<UserPresence>, mongodb::error::Error> {
        let visible = self.visible_to(who, users).await?;
        // The last-seen times, a few lookups in flight at once.
        let out = futures::stream::iter(visible)
            .map(|u| async move {
                let is_online = lock(&self.online).is_online(u);
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

    /// Of `users`, those `who` may see: everyone who shares a group with
    /// them, and the other side of each conversation in which both have
    /// written (opening a conversation with someone is not enough, nor is
    /// writing to someone who never answered). From the lists held for a
    /// user with a socket here, read for anyone else.
    async fn visible_to(&self, who: UserId, users: &[UserId]) -> Result<Vec<UserId>, mongodb::error::Error> {
        {
            let contacts = lock(&self.contacts);
            if contacts.holds(who) {
                return Ok(users.iter().copied().filter(|u| contacts.may_see(who, *u)).collect());
            }
        }
        let lists = self.store.contact_lists(who.oid()).await?;
        let members = self.store.group_members(&lists.groups).await?;
        let mut seen: HashSet<UserId> = lists.peers.into_iter().map(UserId).collect();
        // Only groups whose members have `who` (not a stale membership).
        seen.extend(members.into_iter().filter(|(_, m, _)| m.contains(&who.oid())).flat_map(|(_, m, _)| m).map(UserId));
        seen.insert(who);
        Ok(users.iter().copied().filter(|u| seen.contains(u)).collect())
    }
}
