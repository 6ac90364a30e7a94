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
    let seqs: Vec<i64> = c.seqs.iter().map(|s| *s as i64).collect();
    let mut filter = room.messages_filter();
    filter.insert("seq", doc! {"$in": &seqs});
    filter.insert("senderId", doc! {"$ne": user});
    filter.insert("status", "sent");
    filter.insert("deleted", doc! {"$ne": true});
    filter.insert("messageType", doc! {"$ne": "system"});
    let mut changed = Vec::new();
    let mut cur = ctx.store.messages().find(filter).await?;
    while cur.advance().await? {
        let m = cur.deserialize_current()?;
        changed.push((m.id, m.sender_id));
    }
    if !changed.is_empty() {
        let ids: Vec<_> = changed.iter().map(|(id, _)| *id).collect();
        ctx.store
            .messages()
            .update_many(doc! {"_id": {"$in": ids}, "status": "sent"}, doc! {"$set": {"status": "delivered"}})
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
