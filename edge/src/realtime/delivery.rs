//! Delivery receipts. When an edge writes a `message_received` frame to a
//! recipient's socket, the message has reached a device: the edge reports it
//! as a `mark_delivered` command, which moves the user's delivery cursor in
//! the room. Reports are coalesced per user and room (the newest `seq`
//! written) and flushed every `FLUSH_EVERY`, one command per room carrying
//! every member's newest seq, so a busy room costs an edge one command per
//! flush, not one per message or per recipient.

use natter_nats::publish;
use natter_nats::{Partitioning, Subjects};
use natter_shared::ids::{RoomRef, UserId};
use natter_shared::shutdown::Tasks;
use natter_shared::v1::command::{
    Command, CommandEnvelope, Delivered, MAX_DELIVERED_USERS, MarkDeliveredCmd, RoomFields,
};
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

/// Commands published at once by a flush (their acks awaited together).
const IN_FLIGHT: usize = 256;

/// One flush's receipts as commands: per room, its members' newest seqs,
/// at most `MAX_DELIVERED_USERS` to a command, in a stable order.
fn by_room(pending: Pending) -> Vec<(RoomRef, Vec<Delivered>)> {
    let mut rooms: HashMap<RoomRef, Vec<Delivered>> = HashMap::new();
    for ((user, room), seq) in pending {
        rooms.entry(room).or_default().push(Delivered { user_id: user, seq });
    }
    let mut out = Vec::new();
    for (room, mut all) in rooms {
        all.sort_unstable_by_key(|d| d.user_id);
        out.extend(all.chunks(MAX_DELIVERED_USERS).map(|c| (room.clone(), c.to_vec())));
    }
    out
}

/// The command reporting `delivered` (not empty) in `room`: the first
/// member is the actor, the others ride along.
fn command(room: &RoomRef, delivered: &[Delivered]) -> CommandEnvelope {
    let (first, more) = delivered.split_first().expect("a receipt");
    CommandEnvelope {
        v: natter_shared::v1::VERSION,
        actor: first.user_id,
        roles: vec![],
        reply: None,
        meta: Some(natter_shared::v1::command::RequestMeta { via: "edge".into(), ..Default::default() }),
        command: Command::MarkDelivered(MarkDeliveredCmd {
            room: RoomFields::of(room),
            seqs: vec![first.seq],
            more: more.to_vec(),
        }),
    }
}

/// The command's de-duplication id: the same receipts, the same id (a
/// publish retried after a timeout is stored once).
fn msg_id(room: &RoomRef, delivered: &[Delivered]) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for d in delivered {
        d.user_id.hash(&mut h);
        d.seq.hash(&mut h);
    }
    format!("dlv:{}:{}:{:016x}", room.id, delivered.len(), h.finish())
}

async fn flush(js: &async_nats::jetstream::Context, subjects: &Subjects, pending: &mut Pending) {
    use futures::StreamExt;
    let publish = |(room, delivered): (RoomRef, Vec<Delivered>)| async move {
        let env = command(&room, &delivered);
        let body = serde_json::to_vec(&env).ok()?;
        let subject = subjects.command(room.kind, &room.id, env.command.action());
        match publish::command(js, subject, &msg_id(&room, &delivered), body.into()).await {
            Ok(_) => None,
            Err(e) => {
                // Kept for the next flush (JetStream may be electing a leader).
                tracing::warn!(error = %e, "delivery receipts not stored; retrying");
                Some((room, delivered))
            }
        }
    };
    let failed: Vec<(RoomRef, Vec<Delivered>)> = futures::stream::iter(by_room(std::mem::take(pending)))
        .map(publish)
        .buffer_unordered(IN_FLIGHT)
        .filter_map(std::future::ready)
        .collect()
        .await;
    // `pending` was emptied above: nothing newer is there to merge with.
    for (room, delivered) in failed {
        pending.extend(delivered.into_iter().map(|d| ((d.user_id, room.clone()), d.seq)));
    }
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

    #[test]
    fn a_flush_is_one_command_per_room_with_every_members_newest_seq() {
        let users: Vec<UserId> = (0..2_500).map(|_| UserId(mongodb::bson::oid::ObjectId::new())).collect();
        let (big, small) = (RoomRef::new(RoomKind::Group, "g1"), RoomRef::new(RoomKind::Conversation, "c1"));
        let mut p = Pending::new();
        for (i, u) in users.iter().enumerate() {
            note(&mut p, (*u, big.clone(), 40 + i as u64 % 3));
        }
        note(&mut p, (users[0], small.clone(), 7));
        let commands = by_room(p);
        let big_ones: Vec<&Vec<Delivered>> = commands.iter().filter(|(r, _)| *r == big).map(|(_, d)| d).collect();
        let mut everyone: Vec<UserId> = big_ones.iter().flat_map(|d| d.iter().map(|d| d.user_id)).collect();
        everyone.sort_unstable();
        everyone.dedup();
        assert_eq!(everyone.len(), 2_500, "every member of the big room");
        assert_eq!(big_ones.iter().map(|d| d.len()).sum::<usize>(), 2_500, "each once");
        assert!(big_ones.iter().all(|d| d.len() <= MAX_DELIVERED_USERS));
        assert_eq!(
            (big_ones.len(), commands.len()),
            (3, 4),
            "three commands for 2,500 members, one for the other room"
        );
        let (room, delivered) = commands.iter().find(|(r, _)| *r == small).expect("the conversation's receipt");
        let env = command(room, delivered);
        assert_eq!(env.actor, users[0]);
        let Command::MarkDelivered(c) = &env.command else { panic!("not a receipt") };
        assert_eq!((c.seqs.clone(), c.more.len()), (vec![7], 0));
        let (room, delivered) = commands.iter().find(|(r, d)| *r == big && d.len() == MAX_DELIVERED_USERS).unwrap();
        let Command::MarkDelivered(c) = command(room, delivered).command else { panic!("not a receipt") };
        assert_eq!(c.more.len(), MAX_DELIVERED_USERS - 1, "the actor and the others");
        for d in &c.more {
            let i = users.iter().position(|u| *u == d.user_id).expect("a member who reported");
            assert_eq!(d.seq, 40 + i as u64 % 3, "each member's own seq");
        }
        assert_eq!(msg_id(room, delivered), msg_id(room, &delivered.clone()), "a retry is the same command");
        assert_ne!(msg_id(room, delivered), msg_id(room, &delivered[1..]), "other receipts, another command");
    }
}
