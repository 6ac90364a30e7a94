//! Building the publications of applied commands.

use crate::handler::{ApplyError, Disposition, Incoming, Publication};
use mongodb::bson::{DateTime, doc, oid::ObjectId};
use natter_nats::Subjects;
use natter_shared::ids::{RoomRef, derived_oid};
use natter_shared::model::{MessageDoc, MessageType, MessageView};
use natter_shared::v1::command::RoomFields;
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{CommandRefused, EventFrame, EventKind, MessageDeleted, RefusedIds};
use serde::Serialize;

pub(super) fn publication<T: Serialize>(subject: String, frame: &EventFrame<T>) -> Result<Publication, ApplyError> {
    let payload = serde_json::to_vec(frame).map_err(|e| ApplyError::transient(format!("event encoding: {e}")))?;
    Ok(Publication { subject, payload: payload.into() })
}

/// A document that could not be encoded: applying again cannot help.
pub(super) fn encoding(e: mongodb::bson::ser::Error) -> ApplyError {
    ApplyError { reason: format!("encoding: {e}"), permanent: true }
}

pub(super) fn room_subject(subjects: &Subjects, room: &RoomRef) -> String {
    subjects.room_events(room.kind, &room.id)
}

/// `message_received` for a stored message, to its room.
pub(super) fn message_received(
    subjects: &Subjects,
    room: &RoomRef,
    m: &MessageDoc,
    part: u32,
) -> Result<Publication, ApplyError> {
    let frame = EventFrame::new(EventKind::MessageReceived, m.seq as u64, MessageView::from(m))
        .part(part)
        .from(m.sender_id.to_hex());
    publication(room_subject(subjects, room), &frame)
}

/// `command_refused`'s data: which command, why, the ids it named.
fn refusal(inc: &Incoming, code: ErrorCode, reason: &str, about: RefusedIds) -> CommandRefused {
    CommandRefused {
        action: inc.msg.command.action().to_string(),
        code,
        reason: reason.to_string(),
        seq: inc.seq,
        about,
    }
}

/// A refusal: nothing written; the actor hears why on their own subject.
pub(super) fn refused(
    subjects: &Subjects,
    inc: &Incoming,
    code: ErrorCode,
    reason: &str,
    about: RefusedIds,
) -> Disposition {
    let data = refusal(inc, code, reason, about);
    let frame = EventFrame::new(EventKind::CommandRefused, inc.seq, data);
    let events = publication(subjects.user_events(&inc.msg.actor.hex()), &frame).into_iter().collect();
    Disposition::Refused { code, reason: reason.to_string(), events }
}

/// The withdrawal of a command whose events went out before its write was
/// refused for good: a message as `message_deleted` with `retracted`, to
/// its room; anything else as `command_refused`, to its actor.
pub(super) fn withdrawal(subjects: &Subjects, inc: &Incoming, seq: u64, part: u32) -> Result<Publication, ApplyError> {
    if let natter_shared::v1::command::Command::SendMessage(c) = &inc.msg.command
        && let Ok(room) = inc.msg.command.room()
    {
        let data = MessageDeleted {
            message_id: c.message_id.hex(),
            deleted_by: None,
            retracted: true,
            room: RoomFields::of(&room),
        };
        let frame = EventFrame::new(EventKind::MessageDeleted, seq, data).part(part);
        return publication(room_subject(subjects, &room), &frame);
    }
    let reason = "not applied: the database refused it (dead-lettered)";
    let data = refusal(inc, ErrorCode::Unavailable, reason, RefusedIds::default());
    let frame = EventFrame::new(EventKind::CommandRefused, seq, data).part(part);
    publication(subjects.user_events(&inc.msg.actor.hex()), &frame)
}

/// A `system` message recording a change in a room, with an id derived
/// from the command's seq (so applying it again finds it).
pub(super) fn system_message(
    room: &RoomRef,
    seq: u64,
    time: DateTime,
    actor: ObjectId,
    action: &str,
    user: Option<ObjectId>,
    text: String,
) -> MessageDoc {
    let mut system = doc! {"action": action, "actorId": actor.to_hex()};
    if let Some(u) = user {
        system.insert("userId", u.to_hex());
    }
    let id = derived_oid("system", &[&seq.to_string()]);
    let new = MessageDoc::new(id, room, actor, MessageType::System, text, format!("system-{seq}"), seq, time);
    MessageDoc { system: Some(system), ..new }
}
