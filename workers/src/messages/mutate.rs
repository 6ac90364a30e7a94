//! Changes to a message after it was sent: `edit_message` (its sender's new
//! words; the message keeps its seq, the replaced version is kept for the
//! audit trail and exports), `add_reaction` / `remove_reaction` (one per
//! user per emoji) and `pin_message` / `unpin_message` (the pins are in the
//! room's document).
//!
//! Each is checked again here, at its seq: the actor must still be a
//! member, the message must be in the room and not deleted. A change
//! starts from the message as memory holds it (a send or change not yet
//! written) or as read for the batch, and is written as the fields' new
//! values, so applying a command twice is applying it once; an edit whose
//! seq is not above the message's last edit was applied already (a write
//! that stored the message but not the room).

use super::Batch;
use super::events::{encoding, publication, refused, room_subject};
use super::room::Room;
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::doc;
use natter_shared::model::{EditDoc, MessageDoc, MessageType, Pin, Reaction};
use natter_shared::timefmt::iso;
use natter_shared::v1::client::{check_content, check_emoji};
use natter_shared::v1::command::{EditMessageCmd, MessageCmd, ReactionCmd, RoomFields};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind, MessageEdited, MessagePinned, ReactionChanged, RefusedIds};
use natter_shared::v1::{MAX_EDITS, MAX_PINS, MAX_REACTIONS};
use serde::Serialize;

/// The room's event `kind` about a change by the command's actor.
fn event<T: Serialize>(b: &Batch<'_>, room: &Room, inc: &Incoming, kind: EventKind, data: T) -> Disposition {
    let frame = EventFrame::new(kind, inc.seq, data).from(inc.msg.actor.hex());
    match publication(room_subject(&b.ctx.subjects, &room.key), &frame) {
        Ok(p) => Disposition::Applied(vec![p]),
        Err(e) => Disposition::Poison(e.reason),
    }
}

/// Why a change of message `id` cannot be applied by the actor now, or the
/// message (when `whole`) as it is: refused when the actor is not a member
/// or the message is not in the room (or deleted).
fn target(b: &Batch<'_>, room: &Room, inc: &Incoming, id: &natter_shared::ids::MessageId) -> Result<(), Disposition> {
    let detail = || RefusedIds::message(id.hex());
    if room.deleted() || !room.is_member(inc.msg.actor.oid()) {
        return Err(refused(&b.ctx.subjects, inc, ErrorCode::NotAMember, "not a member of the room", detail()));
    }
    match b.lookup(room, id.oid()) {
        Some(k) if !k.deleted => Ok(()),
        _ => Err(refused(&b.ctx.subjects, inc, ErrorCode::NotFound, "no such message in the room", detail())),
    }
}

/// The whole message a change starts from (it passed [`target`]).
/// Memory holds every message not yet written and the batch read the
/// others, so `None` is a defect: the command is dead-lettered (a retry
/// would meet the same state), never retried in place.
fn whole(b: &Batch<'_>, room: &Room, id: &natter_shared::ids::MessageId) -> Result<MessageDoc, Disposition> {
    b.message(room, id.oid())
        .ok_or_else(|| Disposition::Poison(format!("message {} is known but was not read", id.hex())))
}

pub(super) fn edit(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &EditMessageCmd,
) -> Result<Disposition, ApplyError> {
    let detail = || RefusedIds::message(c.message_id.hex());
    let seq = inc.seq as i64;
    let fields = RoomFields::of(&room.key);
    let data = |m: &MessageDoc| MessageEdited {
        message_id: c.message_id.hex(),
        content: m.content.clone(),
        edited_at: m.edited_at.map(iso).unwrap_or_default(),
        edit_count: m.edit_count,
        room: fields.clone(),
    };
    if seq <= room.last_seq() {
        // Applied before: its event again, if the message still says so.
        return Ok(match b.message(room, c.message_id.oid()) {
            Some(m) if !m.deleted && m.last_edit_seq() == seq => {
                event(b, room, inc, EventKind::MessageEdited, data(&m))
            }
            _ => Disposition::Applied(vec![]),
        });
    }
    room.advance(inc.seq);
    if let Err(refusal) = target(b, room, inc, &c.message_id) {
        return Ok(refusal);
    }
    if let Err(why) = check_content(&c.content) {
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::InvalidPayload, &why, detail()));
    }
    let mut m = match whole(b, room, &c.message_id) {
        Ok(m) => m,
        Err(poison) => return Ok(poison),
    };
    if m.message_type == MessageType::System || m.sender_id != inc.msg.actor.oid() {
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::Forbidden, "only its sender may edit a message", detail()));
    }
    if m.last_edit_seq() >= seq {
        // Stored by a write that did not store the room.
        return Ok(event(b, room, inc, EventKind::MessageEdited, data(&m)));
    }
    if m.content == c.content {
        return Ok(Disposition::Applied(vec![]));
    }
    if m.edits.len() >= MAX_EDITS {
        let why = format!("a message is edited at most {MAX_EDITS} times");
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::LimitExceeded, &why, detail()));
    }
    let previous = std::mem::replace(&mut m.content, c.content.clone());
    m.edits.push(EditDoc {
        content: previous,
        written_at: m.edited_at.unwrap_or(m.created_at),
        replaced_at: inc.time,
        replaced_seq: seq,
    });
    m.edited_at = Some(inc.time);
    m.edit_count += 1;
    m.updated_at = inc.time;
    m.terms = natter_shared::search::terms(&m.content);
    let edits = mongodb::bson::to_bson(&m.edits).map_err(encoding)?;
    b.writes.message_set(
        m.id,
        doc! {
            "content": &m.content, "editedAt": inc.time, "editCount": m.edit_count,
            "edits": edits, "updatedAt": inc.time, "terms": &m.terms,
        },
    );
    let out = event(b, room, inc, EventKind::MessageEdited, data(&m));
    room.changed(b.generation, m);
    Ok(out)
}

/// `add_reaction` (`add`) or `remove_reaction`.
pub(super) fn react(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &ReactionCmd,
    add: bool,
) -> Result<Disposition, ApplyError> {
    let user = inc.msg.actor.hex();
    let kind = if add { EventKind::ReactionAdded } else { EventKind::ReactionRemoved };
    let fields = RoomFields::of(&room.key);
    let data = |m: &MessageDoc| ReactionChanged {
        message_id: c.message_id.hex(),
        emoji: c.emoji.clone(),
        user_id: user.clone(),
        count: m.reactions.iter().find(|r| r.emoji == c.emoji).map_or(0, |r| r.user_ids.len()),
        room: fields.clone(),
    };
    let has = |m: &MessageDoc| m.reactions.iter().any(|r| r.emoji == c.emoji && r.user_ids.contains(&user));
    if inc.seq as i64 <= room.last_seq() {
        return Ok(match b.message(room, c.message_id.oid()) {
            Some(m) if !m.deleted && has(&m) == add => event(b, room, inc, kind, data(&m)),
            _ => Disposition::Applied(vec![]),
        });
    }
    room.advance(inc.seq);
    if let Err(refusal) = target(b, room, inc, &c.message_id) {
        return Ok(refusal);
    }
    if let Err(why) = check_emoji(&c.emoji) {
        let detail = RefusedIds::message(c.message_id.hex());
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::InvalidPayload, &why, detail));
    }
    let mut m = match whole(b, room, &c.message_id) {
        Ok(m) => m,
        Err(poison) => return Ok(poison),
    };
    if has(&m) == add {
        return Ok(Disposition::Applied(vec![]));
    }
    let at = m.reactions.iter().position(|r| r.emoji == c.emoji);
    match (add, at) {
        (true, Some(i)) => m.reactions[i].user_ids.push(user.clone()),
        (true, None) if m.reactions.len() >= MAX_REACTIONS => {
            let why = format!("a message has at most {MAX_REACTIONS} different reactions");
            let detail = RefusedIds::message(c.message_id.hex());
            return Ok(refused(&b.ctx.subjects, inc, ErrorCode::LimitExceeded, &why, detail));
        }
        (true, None) => m.reactions.push(Reaction { emoji: c.emoji.clone(), user_ids: vec![user.clone()] }),
        (false, Some(i)) => {
            m.reactions[i].user_ids.retain(|u| *u != user);
            if m.reactions[i].user_ids.is_empty() {
                m.reactions.remove(i);
            }
        }
        (false, None) => return Ok(Disposition::Applied(vec![])),
    }
    let reactions = mongodb::bson::to_bson(&m.reactions).map_err(encoding)?;
    b.writes.message_set(m.id, doc! {"reactions": reactions});
    let out = event(b, room, inc, kind, data(&m));
    room.changed(b.generation, m);
    Ok(out)
}

/// `pin_message` (`pin`) or `unpin_message`: a conversation's participants,
/// a group's admin or an Admin.
pub(super) fn pin(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &MessageCmd,
    pin: bool,
) -> Result<Disposition, ApplyError> {
    let mid = c.message_id.oid();
    let actor = inc.msg.actor.oid();
    let kind = if pin { EventKind::MessagePinned } else { EventKind::MessageUnpinned };
    let data = |room: &Room| MessagePinned {
        message_id: c.message_id.hex(),
        user_id: actor.to_hex(),
        at: iso(inc.time),
        room: RoomFields::of(&room.key),
    };
    let pinned = |room: &Room| room.pins().iter().any(|p| p.message_id == mid);
    if inc.seq as i64 <= room.last_seq() {
        return Ok(if pinned(room) == pin {
            event(b, room, inc, kind, data(room))
        } else {
            Disposition::Applied(vec![])
        });
    }
    room.advance(inc.seq);
    let allowed = match room.group() {
        Some(g) => g.may_pin(actor, &inc.msg.roles),
        None => room.is_member(actor),
    };
    if room.deleted() || !allowed {
        let why = "only a conversation's participants, a group's admin or an Admin may pin";
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::Forbidden, why, RefusedIds::message(c.message_id.hex())));
    }
    match b.lookup(room, mid) {
        Some(k) if !k.deleted => {}
        _ if !pin => {}
        _ => {
            let detail = RefusedIds::message(c.message_id.hex());
            return Ok(refused(&b.ctx.subjects, inc, ErrorCode::NotFound, "no such message in the room", detail));
        }
    }
    if pinned(room) == pin {
        return Ok(Disposition::Applied(vec![]));
    }
    if pin && room.pins().len() >= MAX_PINS {
        let why = format!("a room has at most {MAX_PINS} pinned messages");
        let detail = RefusedIds::message(c.message_id.hex());
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::LimitExceeded, &why, detail));
    }
    room.update_pins(|pins| {
        if pin {
            pins.push(Pin { message_id: mid, pinned_by: actor, pinned_at: inc.time });
        } else {
            pins.retain(|p| p.message_id != mid);
        }
        true
    })
    .map_err(encoding)?;
    Ok(event(b, room, inc, kind, data(room)))
}
