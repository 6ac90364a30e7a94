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
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::{doc, oid::ObjectId};
use natter_shared::store::round_trip;
use natter_shared::timefmt::iso;
use natter_shared::v1::command::{MAX_DELIVERED_SEQS, MarkDeliveredCmd, MarkReadCmd, RoomFields};
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
        let unread = unread_after(b, room, user, upto).await?;
        room.put(Cursor::Read, user, upto);
        room.put(Cursor::Unread, user, unread);
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

/// How many messages from others, not deleted and not `system`, the room
/// has after `upto`.
async fn unread_after(b: &Batch<'_>, room: &Room, user: ObjectId, upto: i64) -> Result<i64, ApplyError> {
    let from = room.tail.from();
    let newer = room.tail.between(upto.max(from), i64::MAX).filter(|e| e.counts && !e.deleted && e.sender != user);
    let newer = newer.count() as i64;
    if room.tail.covers(upto) {
        return Ok(newer);
    }
    // Older than the tail: what MongoDB holds up to the tail (everything
    // there is stored), less what is deleted there but not written yet.
    let f = from_others(room, user, upto, from);
    round_trip("count_unread");
    let stored = b.ctx.store.messages().count_documents(f).await? as i64;
    let gone = room.unwritten().filter(|t| t.seq > upto && t.seq <= from && t.counts && t.sender != user);
    Ok(newer + stored - gone.count() as i64)
}

pub(super) async fn delivered(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &MarkDeliveredCmd,
) -> Result<Disposition, ApplyError> {
    let user = inc.msg.actor.oid();
    if inc.seq as i64 <= room.last_seq() {
        // Applied before; its status events are not rebuilt (clients read
        // the status from the history).
        return Ok(Disposition::Applied(vec![]));
    }
    // A device cannot have got a message the room does not have yet.
    let newest = room.last_seq();
    room.advance(inc.seq);
    let upto = c.seqs.iter().max().map_or(0, |s| (*s as i64).min(newest));
    if !room.is_member(user) || c.seqs.len() > MAX_DELIVERED_SEQS || upto <= room.get(Cursor::Delivered, user) {
        return Ok(Disposition::Applied(vec![]));
    }
    let seen = room.seen(user);
    // Who else had received each message already: the three furthest
    // members are enough to find, for any sender, the furthest other one.
    let mut furthest: Vec<(i64, ObjectId)> =
        room.members().iter().filter(|m| **m != user).map(|m| (room.seen(*m), *m)).collect();
    furthest.sort_unstable_by(|a, b| b.cmp(a));
    furthest.truncate(3);
    room.put(Cursor::Delivered, user, upto);
    if upto <= seen {
        return Ok(Disposition::Applied(vec![]));
    }
    let passed = passed(b, room, user, seen, upto).await?;
    let mut events = Vec::new();
    for (id, sender, seq) in passed {
        let other = furthest.iter().find(|(_, m)| *m != sender).map_or(0, |(s, _)| *s);
        if other >= seq {
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
    Ok(Disposition::Applied(events))
}

/// The messages from others (not deleted, not `system`) with a seq in
/// `(lo, hi]`, oldest first, at most `MAX_STATUS_EVENTS` (the newest).
async fn passed(
    b: &Batch<'_>,
    room: &Room,
    user: ObjectId,
    lo: i64,
    hi: i64,
) -> Result<Vec<(ObjectId, ObjectId, i64)>, ApplyError> {
    let wanted = |sender: ObjectId, counts: bool, deleted: bool| sender != user && counts && !deleted;
    let mut out: Vec<(ObjectId, ObjectId, i64)> = room
        .tail
        .between(lo, hi)
        .filter(|e| wanted(e.sender, e.counts, e.deleted))
        .map(|e| (e.id, e.sender, e.seq))
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
                older.push((id, sender, seq));
            }
        }
        older.reverse();
        older.append(&mut out);
        out = older;
    }
    let skip = out.len().saturating_sub(MAX_STATUS_EVENTS);
    Ok(out.split_off(skip))
}
