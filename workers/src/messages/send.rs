//! `send_message`. The `_id` is derived from sender and `clientMsgId`, so a
//! repeat is the same id, never a second message.
//!
//! A message counts as unread for the other members only when this command
//! created it (the stored copy carries this command's `seq`) and the room
//! had not applied the command yet (`seq > lastSeq`): exact under
//! redelivery, replay, a retry beyond the dedupe window, and a tombstone.

use super::events::{message_received, publication, refused};
use super::room::{Cursor, Room};
use super::{Batch, Known};
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::{DateTime, doc};
use natter_shared::model::{MessageDoc, MessageType, MessageView};
use natter_shared::v1::command::SendMessageCmd;
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{ContactAdded, EventFrame, EventKind, RefusedIds};

fn validate(inc: &Incoming, c: &SendMessageCmd, room: &Room) -> Result<MessageDoc, String> {
    let id = c.message_id.oid();
    if c.message_type == MessageType::System {
        return Err("messageType `system` is the server's".into());
    }
    if c.content.is_empty() || c.content.len() > natter_shared::v1::MAX_CONTENT_BYTES {
        return Err("content is empty or too long".into());
    }
    let sender = inc.msg.actor;
    let mut attachments = Vec::with_capacity(c.attachments.len());
    for a in &c.attachments {
        let at = DateTime::parse_rfc3339_str(&a.uploaded_at).map_err(|_| "attachment uploadedAt is not a date")?;
        attachments.push(doc! {
            "id": a.id.hex(), "type": &a.kind, "name": &a.name, "size": a.size, "uploadedAt": at, "thumbnail": a.thumbnail,
        });
    }
    let new = MessageDoc::new(
        id,
        &room.key,
        sender.oid(),
        c.message_type,
        c.content.clone(),
        c.client_msg_id.clone(),
        inc.seq,
        inc.time,
    );
    // The thread's first message replaces the parent when the reply is
    // applied (`thread::reply`).
    let reply_to = c.reply_to.as_ref().map(|r| r.oid());
    let terms = natter_shared::search::terms(&c.content);
    Ok(MessageDoc { read_by: vec![sender.hex()], attachments, reply_to, terms, ..new })
}

pub(super) fn apply(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &SendMessageCmd,
) -> Result<Disposition, ApplyError> {
    let m = match validate(inc, c, room) {
        Ok(m) => m,
        Err(reason) => return Ok(Disposition::Poison(reason)),
    };
    let stored: Option<Known> = b.lookup(room, m.id);
    // Created by this very command (now or in an earlier delivery) and not
    // deleted since.
    let ours = |k: &Option<Known>| k.as_ref().is_none_or(|k| k.seq == m.seq && !k.deleted);
    if inc.seq as i64 <= room.last_seq() {
        // Applied before: its event again, if it is still ours.
        let events = if stored.is_some() && ours(&stored) {
            vec![message_received(&b.ctx.subjects, &room.key, &m, 0)?]
        } else {
            vec![]
        };
        return Ok(Disposition::Applied(events));
    }
    room.advance(inc.seq);
    let sender = inc.msg.actor.oid();
    if room.deleted() || !room.is_member(sender) {
        let detail = RefusedIds {
            message_id: Some(c.message_id.hex()),
            client_msg_id: Some(c.client_msg_id.clone()),
            group_id: None,
        };
        return Ok(refused(
            &b.ctx.subjects,
            inc,
            ErrorCode::NotAMember,
            "the sender is not a member of the room",
            detail,
        ));
    }
    if !ours(&stored) {
        // The id of an earlier message (its `clientMsgId` sent again after
        // the dedupe window), or one deleted since.
        return Ok(Disposition::Applied(vec![]));
    }
    let mut m = m;
    let mut events = Vec::new();
    if let Some(parent) = &c.reply_to {
        match super::thread::reply(b, room, inc, parent.oid(), &mut m)? {
            Ok(told) => events = told,
            Err(refusal) => return Ok(refusal),
        }
    }
    // Mentions of those still members (the sender's own left out).
    m.mentions = c.mentions.iter().map(|u| u.oid()).filter(|u| *u != sender && room.is_member(*u)).collect();
    if stored.is_none() {
        b.writes.message(m.clone());
    }
    let others: Vec<_> = room.members().iter().copied().filter(|p| *p != sender).collect();
    for p in others {
        let n = room.get(Cursor::Unread, p) + 1;
        room.put(Cursor::Unread, p, n);
    }
    if !m.mentions.is_empty() {
        let frame = EventFrame::new(EventKind::Mentioned, inc.seq, MessageView::from(&m)).from(sender.to_hex());
        for u in m.mentions.clone() {
            let n = room.get(Cursor::Mentions, u) + 1;
            room.put(Cursor::Mentions, u, n);
            events.push(publication(b.ctx.subjects.user_events(&u.to_hex()), &frame)?);
        }
    }
    room.append(&m, true);
    events.insert(0, message_received(&b.ctx.subjects, &room.key, &m, 0)?);
    // An edit or reaction before the write starts from this copy.
    room.changed(b.generation, m);
    if room.note_writer(sender) {
        // Both have written now: each may see the other's presence.
        let data = ContactAdded {
            conversation_id: room.key.id.clone(),
            user_ids: room.members().iter().map(|u| u.to_hex()).collect(),
        };
        let frame = EventFrame::new(EventKind::ContactAdded, inc.seq, data).from(sender.to_hex());
        for u in room.members() {
            events.push(publication(b.ctx.subjects.user_events(&u.to_hex()), &frame)?);
        }
    }
    Ok(Disposition::Applied(events))
}
