//! Read and delivery receipts, as per-user cursors. A read moves the
//! reader's read cursor (only forward) to the message read; a delivery
//! moves the device owner's delivery cursor to the newest message a device
//! got. Nothing is written per message: the module's per-message `status`
//! and `readBy` are derived from the cursors where a client reads them
//! (`Receipts`). The reader's unread count is recounted from the cursor
//! over the room's tail, so it is exact whatever happened before; only a
//! cursor older than the tail makes it count in MongoDB.

use super::Batch;
use super::events::{publication, refused, room_subject};
use super::room::{Cursor, Room};
use super::tail::{Entry, MAX_TAIL_ALL};
use super::writes::Tombstone;
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::{doc, oid::ObjectId};
use natter_shared::store::round_trip;
use natter_shared::timefmt::iso;
use natter_shared::v1::command::{MAX_DELIVERED_SEQS, MAX_DELIVERED_USERS, MarkDeliveredCmd, MarkReadCmd, RoomFields};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind, MessageRead, MessageStatus, MessageStatusUpdated, RefusedIds};

/// Most `message_status_updated` events one delivery receipt produces (the
/// newest messages it passes); clients read the rest from the history.
const MAX_STATUS_EVENTS: usize = 1000;

pub(super) async fn read(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &MarkReadCmd,
) -> Result<Disposition, ApplyError> {
    let already = inc.seq as i64 <= room.last_seq();
    let user = inc.msg.actor.oid();
    let detail = || RefusedIds::message(c.message_id.hex());
    if !already {
        room.advance(inc.seq);
        if room.deleted() || !room.is_member(user) {
            return Ok(refused(&b.ctx.subjects, inc, ErrorCode::NotAMember, "not a member of the room", detail()));
        }
    }
    let mid = c.message_id.oid();
    let Some(message) = b.lookup(room, mid) else {
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::NotFound, "no such message in the room", detail()));
    };
    let prev = room.get(Cursor::Read, user);
    let upto = prev.max(message.seq);
    if !already && upto > prev {
        let unread = count_after(b, room, user, upto, Counted::Unread).await?;
        let seen = room.seen(user);
        room.put(Cursor::Read, user, upto);
        room.put(Cursor::Unread, user, unread);
        if room.get(Cursor::Mentions, user) > 0 {
            let mentions = count_after(b, room, user, upto, Counted::Mentions).await?;
            room.put(Cursor::Mentions, user, mentions);
        }
        // Reading implies receiving.
        room.tail.mark_delivered(seen, upto, user);
    }
    let u = user.to_hex();
    let data = MessageRead {
        message_id: c.message_id.hex(),
        user_id: u.clone(),
        read_at: iso(inc.time),
        up_to_seq: upto,
        room: RoomFields::of(&room.key),
    };
    let frame = EventFrame::new(EventKind::MessageRead, inc.seq, data).from(u);
    Ok(Disposition::Applied(vec![publication(room_subject(&b.ctx.subjects, &room.key), &frame)?]))
}

/// The filter for the room's stored messages from others than `user`, not
/// deleted and not `system` (those that count), with a seq in `(lo, hi]`.
fn from_others(room: &Room, user: ObjectId, lo: i64, hi: i64) -> mongodb::bson::Document {
    let mut f = room.key.live_messages();
    f.insert("seq", doc! {"$gt": lo, "$lte": hi});
    f.insert("senderId", doc! {"$ne": user});
    f.insert("messageType", doc! {"$ne": "system"});
    f
}

/// What a reader's count past their read cursor counts.
#[derive(Clone, Copy)]
enum Counted {
    /// Messages from others, not deleted and not `system`.
    Unread,
    /// Messages mentioning the reader, not deleted.
    Mentions,
}

impl Counted {
    fn entry(self, e: &Entry, user: ObjectId) -> bool {
        !e.deleted
            && match self {
                Counted::Unread => e.counts && e.sender != user,
                Counted::Mentions => e.mentions.contains(&user),
            }
    }

    fn tombstone(self, t: &Tombstone, user: ObjectId) -> bool {
        match self {
            Counted::Unread => t.counts && t.sender != user,
            Counted::Mentions => t.mentions.contains(&user),
        }
    }

    /// The stored messages it counts with a seq in `(lo, hi]`.
    fn filter(self, room: &Room, user: ObjectId, lo: i64, hi: i64) -> mongodb::bson::Document {
        match self {
            Counted::Unread => from_others(room, user, lo, hi),
            Counted::Mentions => {
                let mut f = room.key.live_messages();
                f.insert("seq", doc! {"$gt": lo, "$lte": hi});
                f.insert("mentions", user);
                f
            }
        }
    }

    fn round_trip(self) -> &'static str {
        match self {
            Counted::Unread => "count_unread",
            Counted::Mentions => "count_mentions",
        }
    }
}

/// How many messages `what` counts the room has after `upto`: from the
/// tail, and for what is older than the tail, what MongoDB holds up to it
/// (everything there is stored) less what is deleted there but not
/// written yet.
async fn count_after(b: &Batch<'_>, room: &Room, user: ObjectId, upto: i64, what: Counted) -> Result<i64, ApplyError> {
    let from = room.tail.from();
    let newer = room.tail.between(upto.max(from), i64::MAX).filter(|e| what.entry(e, user)).count() as i64;
    if room.tail.covers(upto) {
        return Ok(newer);
    }
    let f = what.filter(room, user, upto, from);
    round_trip(what.round_trip());
    let stored = b.ctx.store.messages().count_documents(f).await? as i64;
    let gone = room.unwritten().filter(|t| t.seq > upto && t.seq <= from && what.tombstone(t, user));
    Ok(newer + stored - gone.count() as i64)
}

pub(super) async fn delivered(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &MarkDeliveredCmd,
) -> Result<Disposition, ApplyError> {
    if inc.seq as i64 <= room.last_seq() {
        // Applied before; its status events are not rebuilt (clients read
        // the status from the history).
        return Ok(Disposition::Applied(vec![]));
    }
    // A device cannot have got a message the room does not have yet.
    let newest = room.last_seq();
    room.advance(inc.seq);
    if c.seqs.len() > MAX_DELIVERED_SEQS || c.more.len() >= MAX_DELIVERED_USERS {
        return Ok(Disposition::Applied(vec![]));
    }
    let actor = c.seqs.iter().max().map(|s| (inc.msg.actor.oid(), *s));
    let mut events = Vec::new();
    for (user, seq) in actor.into_iter().chain(c.more.iter().map(|d| (d.user_id.oid(), d.seq))) {
        let upto = (seq as i64).min(newest);
        if upto > room.get(Cursor::Delivered, user) && room.is_member(user) {
            deliver(b, room, inc, user, upto, &mut events).await?;
        }
    }
    Ok(Disposition::Applied(events))
}

/// Moves `user`'s delivery cursor forward to `upto`, and tells the senders
/// of the messages it passes that no other member had yet (events after
/// those already in `events`, as parts of the command's seq).
async fn deliver(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    user: ObjectId,
    upto: i64,
    events: &mut Vec<crate::handler::Publication>,
) -> Result<(), ApplyError> {
    let seen = room.seen(user);
    if upto <= seen {
        room.put(Cursor::Delivered, user, upto);
        return Ok(());
    }
    // Before the cursor moves: the backfill marks what members had.
    if !room.tail.covers(seen) {
        backfill(b, room).await?;
    }
    room.put(Cursor::Delivered, user, upto);
    // Who else had received each message already. The tail knows it per
    // message; for older ones, the furthest other members (a scan of the
    // members, so only when it is needed).
    let furthest = if room.tail.covers(seen) { Vec::new() } else { furthest(room, Some(user)) };
    let passed = passed(b, room, user, seen, upto).await?;
    room.tail.mark_delivered(seen, upto, user);
    for (id, sender, seq, known) in passed {
        let already = known.unwrap_or_else(|| reached_another(&furthest, sender, seq));
        if already {
            continue;
        }
        let data = MessageStatusUpdated {
            message_id: id.to_hex(),
            status: MessageStatus::Delivered,
            room: RoomFields::of(&room.key),
        };
        let frame = EventFrame::new(EventKind::MessageStatusUpdated, inc.seq, data).part(events.len() as u32);
        events.push(publication(b.ctx.subjects.user_events(&sender.to_hex()), &frame)?);
    }
    Ok(())
}

/// The three members (other than `except`) whose cursors are furthest:
/// enough to find, for any sender, the furthest member other than it.
fn furthest(room: &Room, except: Option<ObjectId>) -> Vec<(i64, ObjectId)> {
    let mut f: Vec<(i64, ObjectId)> =
        room.members().iter().filter(|m| Some(**m) != except).map(|m| (room.seen(*m), *m)).collect();
    f.sort_unstable_by(|a, b| b.cmp(a));
    f.truncate(3);
    f
}

/// Whether a member other than `sender` had the message at `seq`, by
/// [`furthest`].
fn reached_another(furthest: &[(i64, ObjectId)], sender: ObjectId, seq: i64) -> bool {
    furthest.iter().find(|(_, m)| *m != sender).is_some_and(|(s, _)| *s >= seq)
}

/// Reads into the tail the room's newest messages older than it, as many
/// as it has room for. A room read from the database has an empty tail,
/// and without this every member's first receipt would read MongoDB (a
/// group of 2,000: 2,000 reads); with it, one read serves them all.
async fn backfill(b: &Batch<'_>, room: &mut Room) -> Result<(), ApplyError> {
    let want = MAX_TAIL_ALL.saturating_sub(room.tail.len());
    if want == 0 {
        return Ok(());
    }
    let mut f = room.key.messages();
    f.insert("seq", doc! {"$lte": room.tail.from()});
    let raw = b.ctx.store.db().collection::<mongodb::bson::Document>(natter_shared::model::MESSAGES);
    round_trip("backfill_tail");
    let mut cur = raw
        .find(f)
        .projection(doc! {"_id": 1, "senderId": 1, "seq": 1, "messageType": 1, "deleted": 1, "mentions": 1})
        .sort(doc! {"seq": -1})
        .limit(want as i64)
        .await?;
    let gone: Vec<ObjectId> = room.unwritten().map(|t| t.id).collect();
    let furthest = furthest(room, None);
    let mut older = Vec::new();
    while cur.advance().await? {
        let m = cur.current();
        let (Ok(id), Ok(sender), Ok(seq)) = (m.get_object_id("_id"), m.get_object_id("senderId"), m.get_i64("seq"))
        else {
            continue;
        };
        older.push(Entry {
            seq,
            id,
            sender,
            counts: m.get_str("messageType") != Ok("system"),
            deleted: m.get_bool("deleted").unwrap_or(false) || gone.contains(&id),
            delivered: reached_another(&furthest, sender, seq),
            mentions: m
                .get_array("mentions")
                .map(|a| a.into_iter().filter_map(|v| v.ok()?.as_object_id()).collect())
                .unwrap_or_default(),
        });
    }
    // Fewer than asked for: the room has no older message.
    let from = if older.len() < want { 0 } else { older.last().map_or(0, |e| e.seq - 1) };
    older.reverse();
    room.tail.backfill(older, from);
    Ok(())
}

/// A message a receipt passed: id, sender, seq, and whether a member
/// other than its sender had it already, when the tail knows.
type Passed = (ObjectId, ObjectId, i64, Option<bool>);

/// The messages from others (not deleted, not `system`) with a seq in
/// `(lo, hi]`, oldest first, at most `MAX_STATUS_EVENTS` (the newest).
async fn passed(b: &Batch<'_>, room: &Room, user: ObjectId, lo: i64, hi: i64) -> Result<Vec<Passed>, ApplyError> {
    let wanted = |sender: ObjectId, counts: bool, deleted: bool| sender != user && counts && !deleted;
    let mut out: Vec<Passed> = room
        .tail
        .between(lo, hi)
        .filter(|e| wanted(e.sender, e.counts, e.deleted))
        .map(|e| (e.id, e.sender, e.seq, Some(e.delivered)))
        .collect();
    let from = room.tail.from();
    if lo < from && out.len() < MAX_STATUS_EVENTS {
        let f = from_others(room, user, lo, hi.min(from));
        let raw = b.ctx.store.db().collection::<mongodb::bson::Document>(natter_shared::model::MESSAGES);
        round_trip("find_passed");
        let mut cur = raw
            .find(f)
            .projection(doc! {"_id": 1, "senderId": 1, "seq": 1})
            .sort(doc! {"seq": -1})
            .limit((MAX_STATUS_EVENTS - out.len()) as i64)
            .await?;
        let gone: Vec<ObjectId> = room.unwritten().map(|t| t.id).collect();
        let mut older = Vec::new();
        while cur.advance().await? {
            let m = cur.current();
            if let (Ok(id), Ok(sender), Ok(seq)) =
                (m.get_object_id("_id"), m.get_object_id("senderId"), m.get_i64("seq"))
                && !gone.contains(&id)
            {
                older.push((id, sender, seq, None));
            }
        }
        older.reverse();
        older.append(&mut out);
        out = older;
    }
    let skip = out.len().saturating_sub(MAX_STATUS_EVENTS);
    Ok(out.split_off(skip))
}
