//! Threads: a `send_message` with `replyTo` is a reply in the thread its
//! parent belongs to (a reply to a reply joins the same thread). The
//! thread's first message keeps `replyCount`, `lastReplyAt` and who takes
//! part; each participant but the replier hears of the reply
//! (`thread_reply`, on their own subject) whether or not they follow the
//! room. A reply's delete takes it off the count.
//!
//! The first message is changed as memory holds it (`Room::changed`) and
//! written as absolute values; a change at a seq not above its
//! `lastReplySeq` was applied already (a write that stored the messages
//! but not the room).

use super::Batch;
use super::events::{encoding, publication, refused};
use super::room::Room;
use crate::handler::{ApplyError, Disposition, Incoming, Publication};
use mongodb::bson::{doc, oid::ObjectId};
use natter_shared::model::{MAX_THREAD_PARTICIPANTS, MessageDoc, MessageView};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind, RefusedIds};

/// Stages the thread's first message as `root` now is.
fn stage(b: &mut Batch<'_>, room: &mut Room, root: MessageDoc) -> Result<(), ApplyError> {
    let participants = mongodb::bson::to_bson(&root.thread_participants).map_err(encoding)?;
    let mut set = doc! {
        "replyCount": root.reply_count, "lastReplySeq": root.last_reply_seq, "threadParticipants": participants,
    };
    if let Some(at) = root.last_reply_at {
        set.insert("lastReplyAt", at);
    }
    b.writes.message_set(root.id, set);
    room.changed(b.generation, root);
    Ok(())
}

/// Makes `m` a reply to `parent`'s thread and counts it there: the
/// `thread_reply` events to its participants, or the refusal when the
/// parent (or its thread's first message) is not in the room.
pub(super) fn reply(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    parent: ObjectId,
    m: &mut MessageDoc,
) -> Result<Result<Vec<Publication>, Disposition>, ApplyError> {
    let gone = |b: &Batch<'_>| {
        let detail = RefusedIds {
            message_id: Some(m.id.to_hex()),
            client_msg_id: Some(m.client_msg_id.clone()),
            group_id: None,
        };
        Err(refused(&b.ctx.subjects, inc, ErrorCode::NotFound, "the message replied to is not in the room", detail))
    };
    let live = |b: &Batch<'_>, room: &Room, id: ObjectId| b.lookup(room, id).is_some_and(|k| !k.deleted);
    if !live(b, room, parent) {
        return Ok(gone(b));
    }
    let Some(parent_doc) = b.message(room, parent) else {
        // A defect (memory holds what is not written, the batch read the
        // rest): dead-lettered, not retried in place.
        return Ok(Err(Disposition::Poison(format!("message {parent} is known but was not read"))));
    };
    let root_id = parent_doc.reply_to.unwrap_or(parent);
    let root = if root_id == parent { Some(parent_doc) } else { b.message(room, root_id) };
    let Some(mut root) = root.filter(|_| live(b, room, root_id)) else {
        return Ok(gone(b));
    };
    m.reply_to = Some(root_id);
    let seq = m.seq;
    let sender = m.sender_id;
    if seq > root.last_reply_seq {
        root.reply_count += 1;
        root.last_reply_at = Some(m.created_at);
        root.last_reply_seq = seq;
        for p in [root.sender_id, sender] {
            if !root.thread_participants.contains(&p) && root.thread_participants.len() < MAX_THREAD_PARTICIPANTS {
                root.thread_participants.push(p);
            }
        }
    }
    let told: Vec<ObjectId> =
        root.thread_participants.iter().copied().filter(|p| *p != sender && room.is_member(*p)).collect();
    stage(b, room, root)?;
    let frame = EventFrame::new(EventKind::ThreadReply, inc.seq, MessageView::from(&*m)).from(sender.to_hex());
    let mut events = Vec::with_capacity(told.len());
    for p in told {
        events.push(publication(b.ctx.subjects.user_events(&p.to_hex()), &frame)?);
    }
    Ok(Ok(events))
}

/// A reply deleted by the command at `inc`: one fewer in its thread.
pub(super) fn reply_deleted(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    root_id: ObjectId,
) -> Result<(), ApplyError> {
    let Some(mut root) = b.message(room, root_id) else { return Ok(()) };
    let seq = inc.seq as i64;
    if root.deleted || seq <= root.last_reply_seq {
        return Ok(());
    }
    root.reply_count = (root.reply_count - 1).max(0);
    root.last_reply_seq = seq;
    stage(b, room, root)
}
