//! Fan-out from NATS to local sockets. One core NATS subscription per subject
//! (room or user) that at least one local socket follows, reference counted:
//! the first socket subscribes, the last one leaving unsubscribes. An edge
//! only receives what its sockets may see.
//!
//! Delivery to a socket never blocks the fan-out: a socket whose queue is
//! full is told to close (slow consumer) instead of stalling the others.

use bytes::Bytes;
use futures::StreamExt;
use natter_shared::v1::event::EventHead;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A local connection's id.
pub type ConnId = u64;

/// What a connection's writer is given.
#[derive(Debug)]
pub enum Outbound {
    /// A reply (ack, error, ready) to write as a text frame.
    Text(String),
    /// An event from `room`, written unless its `seq` was already written.
    Event { room: Arc<str>, seq: u64, payload: Bytes },
}

/// The sending side of a connection, as the hub holds it.
#[derive(Clone)]
pub struct Sink {
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled when the connection cannot keep up.
    pub overflow: CancellationToken,
}

struct Entry {
    sinks: Arc<Mutex<HashMap<ConnId, Sink>>>,
    stop: CancellationToken,
}

pub struct Hub {
    nats: async_nats::Client,
    subjects: tokio::sync::Mutex<HashMap<String, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(nats: async_nats::Client) -> Self {
        Hub { nats, subjects: tokio::sync::Mutex::new(HashMap::new()) }
    }

    /// Adds `conn` to `subject`'s receivers. Returns once the subscription is
    /// known to the server, so every event published after this returns is
    /// delivered.
    pub async fn follow(&self, subject: &str, conn: ConnId, sink: Sink) -> Result<(), async_nats::Error> {
        let mut subjects = self.subjects.lock().await;
        if let Some(e) = subjects.get(subject) {
            lock(&e.sinks).insert(conn, sink);
            return Ok(());
        }
        let sub = self.nats.subscribe(subject.to_string()).await?;
        self.nats.flush().await?;
        let sinks = Arc::new(Mutex::new(HashMap::from([(conn, sink)])));
        let stop = CancellationToken::new();
        tokio::spawn(fan_out(sub, Arc::from(subject), sinks.clone(), stop.clone()));
        subjects.insert(subject.to_string(), Entry { sinks, stop });
        Ok(())
    }

    /// Removes `conn` from `subject`; unsubscribes when nobody is left.
    pub async fn unfollow(&self, subject: &str, conn: ConnId) {
        let mut subjects = self.subjects.lock().await;
        let empty = match subjects.get(subject) {
            Some(e) => {
                let mut s = lock(&e.sinks);
                s.remove(&conn);
                s.is_empty()
            }
            None => false,
        };
        if empty && let Some(e) = subjects.remove(subject) {
            e.stop.cancel();
        }
    }

    /// Number of subjects this edge is subscribed to (for tests and metrics).
    pub async fn subscriptions(&self) -> usize {
        self.subjects.lock().await.len()
    }
}

async fn fan_out(
    mut sub: async_nats::Subscriber,
    room: Arc<str>,
    sinks: Arc<Mutex<HashMap<ConnId, Sink>>>,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Ok(head) = serde_json::from_slice::<EventHead>(&msg.payload) else {
            tracing::warn!(subject = %msg.subject, "event without seq dropped");
            continue;
        };
        let targets: Vec<Sink> = lock(&sinks).values().cloned().collect();
        for s in targets {
            let out = Outbound::Event { room: room.clone(), seq: head.seq, payload: msg.payload.clone() };
            if s.tx.try_send(out).is_err() {
                s.overflow.cancel();
            }
        }
    }
    let _ = sub.unsubscribe().await;
}
