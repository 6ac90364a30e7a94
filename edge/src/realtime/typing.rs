//! Typing indicators: ephemeral frames on the room's `eph` subject (core
//! NATS, never stored), with the user id and name from the token. A client
//! that goes quiet stops "typing" after `TYPING_TTL`; leaving the room or
//! disconnecting stops it at once.
//!
//! Throttled per user and room across the user's connections on this edge
//! ([`TypingGate`]): a repeated `isTyping: true` only keeps the indicator
//! alive, and a user starts typing in a room at most `TYPING_STARTS_PER_SEC`
//! times a second (bursts of twice that), so a flood of typing frames
//! reaches the room as a trickle. Each published start is followed by its
//! stop, so nobody is left "typing".

use crate::rate::{Bucket, Keyed};
use crate::realtime::EdgeState;
use natter_shared::auth::Identity;
use natter_shared::ids::{RoomRef, UserId};
use natter_shared::v1::command::RoomFields;
use natter_shared::v1::event::{EventFrame, EventKind, UserTyping};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How long `isTyping: true` lasts without being repeated.
pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// Starts of typing a user may publish per room and second.
pub const TYPING_STARTS_PER_SEC: u32 = 1;
/// A user still typing is announced again at most this often.
const REPEAT_EVERY: Duration = Duration::from_secs(3);
/// Users and rooms remembered before the idle ones are forgotten.
const GATE_SIZE: usize = 10_000;

/// Typing publishes per user and room on this edge.
pub struct TypingGate {
    seen: Keyed<(UserId, RoomRef), Gate>,
}

impl Default for TypingGate {
    fn default() -> Self {
        TypingGate { seen: Keyed::new(GATE_SIZE, TYPING_TTL) }
    }
}

struct Gate {
    starts: Bucket,
    /// When `isTyping: true` was last published.
    announced: Instant,
}

impl TypingGate {
    /// Whether `isTyping: true` from `user` in `room` is published now;
    /// `typing` says their connection already shows them typing there.
    pub fn admit(&self, user: UserId, room: &RoomRef, typing: bool) -> bool {
        let now = Instant::now();
        let init = || Gate { starts: Bucket::new(TYPING_STARTS_PER_SEC), announced: now - REPEAT_EVERY };
        self.seen.with((user, room.clone()), init, |g| {
            if typing && now.duration_since(g.announced) < REPEAT_EVERY {
                return false;
            }
            let ok = g.starts.take();
            if ok {
                g.announced = now;
            }
            ok
        })
    }
}

/// The rooms one connection is typing in, each with its expiry timer.
#[derive(Default)]
pub struct TypingState {
    active: Mutex<HashMap<RoomRef, JoinHandle<()>>>,
}

async fn publish(st: &EdgeState, who: &Identity, room: &RoomRef, typing: bool) {
    let data = UserTyping {
        user_id: who.user.hex(),
        username: who.name.clone().unwrap_or_default(),
        is_typing: typing,
        room: RoomFields::of(room),
    };
    let frame = EventFrame::ephemeral(EventKind::UserTyping, data).from(who.user.hex());
    if let Ok(body) = serde_json::to_vec(&frame) {
        let subject = st.subjects.room_ephemeral(room.kind, &room.id);
        if let Err(e) = st.nats.publish(subject, body.into()).await {
            tracing::debug!(error = %e, "typing frame not published");
        }
    }
}

impl TypingState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomRef, JoinHandle<()>>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `isTyping: true`: published when the gate allows, and the expiry
    /// timer (re)started; a throttled start of a user not yet typing is
    /// dropped (its stop would be, too).
    pub async fn start(self: &Arc<Self>, st: &Arc<EdgeState>, who: &Identity, room: &RoomRef) {
        let typing = self.lock().contains_key(room);
        let announce = st.typing.admit(who.user, room, typing);
        if !typing && !announce {
            metrics::counter!("natter_rate_limited_total", "scope" => "typing").increment(1);
            return;
        }
        if announce {
            publish(st, who, room, true).await;
        }
        let (me, st2, who2, room2) = (Arc::downgrade(self), st.clone(), who.clone(), room.clone());
        let expiry = st.lifecycle.spawn(async move {
            tokio::time::sleep(TYPING_TTL).await;
            if let Some(me) = me.upgrade() {
                me.lock().remove(&room2);
            }
            publish(&st2, &who2, &room2, false).await;
        });
        if let Some(old) = self.lock().insert(room.clone(), expiry) {
            old.abort();
        }
    }

    pub async fn stop(&self, st: &EdgeState, who: &Identity, room: &RoomRef) {
        let was = self.lock().remove(room);
        if let Some(h) = was {
            h.abort();
            publish(st, who, room, false).await;
        }
    }

    pub async fn stop_all(&self, st: &EdgeState, who: &Identity) {
        let rooms: Vec<RoomRef> = self.lock().keys().cloned().collect();
        for r in rooms {
            self.stop(st, who, &r).await;
        }
    }
}
