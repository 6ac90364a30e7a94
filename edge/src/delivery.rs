//! Delivery receipts. When an edge writes a `message_received` frame to a
//! recipient's socket, the message has reached a device: the edge reports it
//! as a `mark_delivered` command, which moves the user's delivery cursor in
//! the room. Reports are coalesced per user and room (the newest `seq`
//! written) and flushed every `FLUSH_EVERY`, so a busy room costs one
//! command per recipient per flush, not one per message.

use natter_nats::Subjects;
use natter_nats::publish;
use natter_shared::ids::{RoomRef, UserId};
use natter_shared::shutdown::Tasks;
use natter_shared::v1::command::{Command, CommandEnvelope, MarkDeliveredCmd, RoomFields};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub const FLUSH_EVERY: Duration = Duration::from_millis(500);
const QUEUE: usize = 65_536;

#[derive(Clone)]
pub struct Deliveries {
    tx: mpsc::Sender<(UserId, RoomRef, u64)>,
}

impl Deliveries {
    /// Starts the flusher, a service: it stops once the connections have
    /// drained, and stores what they reported to the end.
    pub fn spawn(js: async_nats::jetstream::Context, subjects: Subjects, tasks: &Tasks) -> Self {
        let (tx, mut rx) = mpsc::channel::<(UserId, RoomRef, u64)>(QUEUE);
        tasks.spawn_service(|stop: CancellationToken| async move {
            let mut pending: HashMap<(UserId, RoomRef), u64> = HashMap::new();
            let note = |pending: &mut HashMap<(UserId, RoomRef), u64>, (u, room, seq): (UserId, RoomRef, u64)| {
                let newest = pending.entry((u, room)).or_default();
                *newest = (*newest).max(seq);
            };
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tokio::select! {
                    r = rx.recv() => match r {
                        Some(r) => note(&mut pending, r),
                        None => break,
                    },
                    _ = tick.tick() => flush(&js, &subjects, &mut pending).await,
                    _ = stop.cancelled() => break,
                }
            }
            // Reported before the stop, still queued.
            rx.close();
            while let Ok(r) = rx.try_recv() {
                note(&mut pending, r);
            }
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

async fn flush(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    pending: &mut HashMap<(UserId, RoomRef), u64>,
) {
    let mut failed: Vec<((UserId, RoomRef), u64)> = Vec::new();
    for ((user, room), seq) in pending.drain() {
        let env = CommandEnvelope {
            v: natter_shared::v1::VERSION,
            actor: user,
            roles: vec![],
            reply: None,
            meta: Some(natter_shared::v1::command::RequestMeta { via: "edge".into(), ..Default::default() }),
            command: Command::MarkDelivered(MarkDeliveredCmd { room: RoomFields::of(&room), seqs: vec![seq] }),
        };
        let Ok(body) = serde_json::to_vec(&env) else { continue };
        let subject = subjects.command(room.kind, &room.id, env.command.action());
        let msg_id = format!("dlv:{user}:{}:{seq}", room.id);
        if let Err(e) = publish::command(js, subject, &msg_id, body.into()).await {
            // Kept for the next flush (JetStream may be electing a leader).
            tracing::warn!(error = %e, "delivery receipt not stored; retrying");
            failed.push(((user, room), seq));
        }
    }
    // `pending` was drained above: nothing newer is there to merge with.
    pending.extend(failed);
}
