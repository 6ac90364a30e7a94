//! Read and delivery receipts. A read moves the reader's cursor by `seq`
//! (only forward) and marks the messages in between (`readBy`, `status:
//! read`), then recounts the reader's unread messages from the cursor, so the
//! count is exact whatever happened before. A delivery marks exactly the
//! messages a device received (`status: delivered`).

use super::Ctx;
use super::events::{publication, refused, room_subject};
use super::room::Room;
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::doc;
use natter_shared::ids::parse_oid;
use natter_shared::timefmt::iso;
use natter_shared::v1::command::{MAX_DELIVERED_SEQS, MarkDeliveredCmd, MarkReadCmd, RoomFields};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind};
use serde_json::json;

pub(super) async fn read(
    ctx: &Ctx,
    room: &mut Room,
    inc: &Incoming,
    c: &MarkReadCmd,
) -> Result<Disposition, ApplyError> {
    let already = inc.seq as i64 <= room.last_seq;
    let user = inc.msg.actor.oid();
    let u = user.to_hex();
    let key = room.room_ref();
    let detail = json!({"messageId": c.message_id});
    if !already && (room.deleted() || !room.is_member(user)) {
        return Ok(refused(&ctx.subjects, inc, ErrorCode::NotAMember, "not a member of the room", detail));
    }
    let Some(mid) = parse_oid(&c.message_id) else {
        return Ok(Disposition::Poison("messageId is not an ObjectId".into()));
    };
    let mut filter = room.messages_filter();
    filter.insert("_id", mid);
    let Some(message) = ctx.store.messages().find_one(filter).await? else {
        return Ok(refused(&ctx.subjects, inc, ErrorCode::NotFound, "no such message in the room", detail));
    };
    let prev = room.read.get(&u).copied().unwrap_or(0);
    let upto = prev.max(message.seq);
    if !already {
        if message.seq > prev {
            let mut marked = room.messages_filter();
            marked.insert("seq", doc! {"$gt": prev, "$lte": message.seq});
            marked.insert("senderId", doc! {"$ne": user});
            ctx.store
                .messages()
                .update_many(marked, doc! {"$addToSet": {"readBy": &u}, "$set": {"status": "read"}})
                .await?;
        }
        let mut unread = room.messages_filter();
        unread.insert("seq", doc! {"$gt": upto});
        unread.insert("senderId", doc! {"$ne": user});
        unread.insert("deleted", doc! {"$ne": true});
        unread.insert("messageType", doc! {"$ne": "system"});
        let n = ctx.store.messages().count_documents(unread).await? as i64;
        room.commit(
            &ctx.store,
            inc.seq,
            doc! {"$set": {format!("readCursors.{u}"): upto, format!("unreadCounts.{u}"): n}},
        )
        .await?;
        room.read.insert(u.clone(), upto);
        room.unread.insert(u.clone(), n);
    }
    let mut data = json!({
        "messageId": c.message_id,
        "userId": u,
        "readAt": iso(inc.time),
        "upToSeq": upto,
    });
    RoomFields::of(&key).merge_into(&mut data);
    let frame = EventFrame::new(EventKind::MessageRead, inc.seq, data).from(u);
    Ok(Disposition::Applied(vec![publication(room_subject(&ctx.subjects, &key), &frame)?]))
}

pub(super) async fn delivered(
    ctx: &Ctx,
    room: &mut Room,
    inc: &Incoming,
    c: &MarkDeliveredCmd,
) -> Result<Disposition, ApplyError> {
    let user = inc.msg.actor.oid();
    if inc.seq as i64 <= room.last_seq {
        // Applied before; its status events are not rebuilt (the statuses
        // are already `delivered`, and clients converge on the next one).
        return Ok(Disposition::Applied(vec![]));
    }
    if !room.is_member(user) || c.seqs.is_empty() || c.seqs.len() > MAX_DELIVERED_SEQS {
        room.commit(&ctx.store, inc.seq, doc! {}).await?;
        return Ok(Disposition::Applied(vec![]));
    }
    // One index range over the room's messages, then the exact checks in
    // memory: cheaper than `$in` and negations on every server.
    let seqs: std::collections::HashSet<i64> = c.seqs.iter().map(|s| *s as i64).collect();
    let (lo, hi) = (seqs.iter().min().copied().unwrap_or(0), seqs.iter().max().copied().unwrap_or(0));
    let mut filter = room.messages_filter();
    filter.insert("seq", doc! {"$gte": lo, "$lte": hi});
    let mut changed = Vec::new();
    let fields = doc! {"_id": 1, "seq": 1, "senderId": 1, "status": 1, "deleted": 1, "messageType": 1};
    let raw = ctx.store.db().collection::<mongodb::bson::Document>(natter_shared::model::MESSAGES);
    let mut cur = raw.find(filter).projection(fields).await?;
    while cur.advance().await? {
        let m = cur.current();
        let seq = m.get_i64("seq").unwrap_or(0);
        let (Ok(id), Ok(sender)) = (m.get_object_id("_id"), m.get_object_id("senderId")) else { continue };
        let fresh = m.get_str("status").is_ok_and(|s| s == "sent")
            && !m.get_bool("deleted").unwrap_or(false)
            && m.get_str("messageType").is_ok_and(|t| t != "system");
        if seqs.contains(&seq) && sender != user && fresh {
            changed.push((id, sender));
        }
    }
    if !changed.is_empty() {
        let ids: Vec<_> = changed.iter().map(|(id, _)| *id).collect();
        ctx.store
            .messages()
            .update_many(
                {
                    let mut f = room.messages_filter();
                    f.insert("seq", doc! {"$gte": lo, "$lte": hi});
                    f.insert("_id", doc! {"$in": ids});
                    f.insert("status", "sent");
                    f
                },
                doc! {"$set": {"status": "delivered"}},
            )
            .await?;
    }
    room.commit(&ctx.store, inc.seq, doc! {}).await?;
    let key = room.room_ref();
    let mut events = Vec::with_capacity(changed.len());
    for (i, (id, sender)) in changed.iter().enumerate() {
        let mut data = json!({"messageId": id.to_hex(), "status": "delivered"});
        RoomFields::of(&key).merge_into(&mut data);
        let frame = EventFrame::new(EventKind::MessageStatusUpdated, inc.seq, data).part(i as u32);
        events.push(publication(ctx.subjects.user_events(&sender.to_hex()), &frame)?);
    }
    Ok(Disposition::Applied(events))
}
