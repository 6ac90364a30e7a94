//! Delivery receipts. When an edge writes a `message_received` frame to a
//! recipient's socket, the message has reached a device: the edge reports it
//! as a `mark_delivered` command, which moves the user's delivery cursor in
//! the room. Reports are coalesced per user and room (the newest `seq`
//! written) and flushed every `FLUSH_EVERY`, so a busy room costs one
//! command per recipient per flush, not one per message.

use natter_nats::publish;
use natter_nats::{Partitioning, Subjects};
use natter_shared::ids::{RoomRef, UserId};
use natter_shared::shutdown::Tasks;
use natter_shared::v1::command::{Command, CommandEnvelope, MarkDeliveredCmd, RoomFields};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
const QUEUE: usize = 65_536;

/// Receipts waiting for the next flush: the newest `seq` per user and room.
type Pending = HashMap<(UserId, RoomRef), u64>;

/// Adds a report: a later report of an older message (a catch-up written
/// after live events) never moves the cursor back.
fn note(pending: &mut Pending, (user, room, seq): (UserId, RoomRef, u64)) {
    let newest = pending.entry((user, room)).or_default();
    *newest = (*newest).max(seq);
}

#[derive(Clone)]
pub struct Deliveries {
    tx: mpsc::Sender<(UserId, RoomRef, u64)>,
}

impl Deliveries {
    /// Starts the flusher, a service: it stops once the connections have
    /// drained, and stores what they reported to the end.
    pub fn spawn(
        js: async_nats::jetstream::Context,
        subjects: Subjects,
        partitioning: Partitioning,
        tasks: &Tasks,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<(UserId, RoomRef, u64)>(QUEUE);
        tasks.spawn_service(|stop: CancellationToken| async move {
            let mut pending: Pending = HashMap::new();
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(r) => note(&mut pending, r),
                        None => break,
                    },
                    // Kept while a move to another partition count drains.
                    _ = tick.tick(), if !partitioning.draining() => {
                        flush(&js, &subjects, &mut pending).await
                    }
                    _ = stop.cancelled() => break,
                }
            }
            // Reported before the stop, still queued.
            rx.close();
            while let Ok(r) = rx.try_recv() {
                note(&mut pending, r);
            }
            partitioning.ready(natter_nats::partitioning::HOLD).await;
            flush(&js, &subjects, &mut pending).await;
        });
        Deliveries { tx }
    }

    /// Notes that `user` got the room's message at `seq`. Never blocks: if
    /// the queue is full the report is dropped, and a later one covers it.
    pub fn report(&self, user: UserId, room: RoomRef, seq: u64) {
        let _ = self.tx.try_send((user, room, seq));
    }
}

/// Receipts published at once by a flush (their acks awaited together).
const IN_FLIGHT: usize = 256;

async fn flush(js: &async_nats::jetstream::Context, subjects: &Subjects, pending: &mut Pending) {
    use futures::StreamExt;
    let publish = |((user, room), seq): ((UserId, RoomRef), u64)| async move {
        let env = CommandEnvelope {
            v: natter_shared::v1::VERSION,
            actor: user,
            roles: vec![],
            reply: None,
            meta: Some(natter_shared::v1::command::RequestMeta { via: "edge".into(), ..Default::default() }),
            command: Command::MarkDelivered(MarkDeliveredCmd { room: RoomFields::of(&room), seqs: vec![seq] }),
        };
        let body = serde_json::to_vec(&env).ok()?;
        let subject = subjects.command(room.kind, &room.id, env.command.action());
        let msg_id = format!("dlv:{user}:{}:{seq}", room.id);
        match publish::command(js, subject, &msg_id, body.into()).await {
            Ok(_) => None,
            Err(e) => {
                // Kept for the next flush (JetStream may be electing a leader).
                tracing::warn!(error = %e, "delivery receipt not stored; retrying");
                Some(((user, room), seq))
            }
        }
    };
    let failed: Vec<((UserId, RoomRef), u64)> = futures::stream::iter(pending.drain().collect::<Vec<_>>())
        .map(publish)
        .buffer_unordered(IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await;
    // `pending` was drained above: nothing newer is there to merge with.
    pending.extend(failed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_shared::ids::RoomKind;

    #[test]
    fn reports_coalesce_to_the_newest_seq_per_user_and_room() {
        let (a, b) = (UserId(mongodb::bson::oid::ObjectId::new()), UserId(mongodb::bson::oid::ObjectId::new()));
        let (r1, r2) = (RoomRef::new(RoomKind::Conversation, "c1"), RoomRef::new(RoomKind::Group, "g1"));
        let mut p = Pending::new();
        for (u, r, s) in [(a, &r1, 5), (a, &r1, 9), (a, &r1, 7), (b, &r1, 3), (a, &r2, 2)] {
            note(&mut p, (u, r.clone(), s));
        }
        assert_eq!(p.len(), 3, "one receipt per user and room");
        assert_eq!(p[&(a, r1.clone())], 9, "the newest, whatever the order of the reports");
        assert_eq!(p[&(b, r1)], 3);
        assert_eq!(p[&(a, r2)], 2);
    }
}
