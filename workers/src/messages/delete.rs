//! `delete_message`: a tombstone. Content and attachments are removed, the
//! id stays (so a late or replayed insert of the same message is a duplicate
//! key and cannot bring it back), and readers who had not read it get one
//! fewer unread.

use super::Batch;
use super::events::{publication, refused, room_subject};
use super::room::{Cursor, Room};
use super::writes::Tombstone;
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::oid::ObjectId;
use natter_shared::v1::command::{MessageCmd, RoomFields};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind, MessageDeleted, RefusedIds};

pub(super) fn apply(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    c: &MessageCmd,
) -> Result<Disposition, ApplyError> {
    let already = inc.seq as i64 <= room.last_seq();
    let actor = inc.msg.actor.oid();
    let detail = || RefusedIds::message(c.message_id.hex());
    let mid = c.message_id.oid();
    let Some(message) = b.lookup(room, mid) else {
        return Ok(refused(&b.ctx.subjects, inc, ErrorCode::NotFound, "no such message in the room", detail()));
    };
    if !already {
        room.advance(inc.seq);
        let roles = &inc.msg.roles;
        let allowed = match room.group() {
            Some(g) => g.may_delete(actor, roles, message.sender),
            None => inc.msg.has_role("Admin") || (room.is_member(actor) && message.sender == actor),
        };
        if !allowed {
            return Ok(refused(
                &b.ctx.subjects,
                inc,
                ErrorCode::Forbidden,
                "only the sender, an Admin or a role in canDeleteMessages may delete",
                detail(),
            ));
        }
        if !message.deleted {
            let mentions: Vec<ObjectId> = match room.tail.get(mid) {
                Some(e) => e.mentions.to_vec(),
                None => b.message(room, mid).map(|m| m.mentions).unwrap_or_default(),
            };
            // A reply: one fewer in its thread.
            if let Some(root) = b.message(room, mid).and_then(|m| m.reply_to) {
                super::thread::reply_deleted(b, room, inc, root)?;
            }
            let tombstone = Tombstone {
                id: mid,
                seq: message.seq,
                sender: message.sender,
                counts: message.counts,
                at: inc.time,
                by: actor,
                mentions: mentions.clone(),
            };
            // Kept until written, whether or not the tail covers the
            // message: the tail may be trimmed before this take is written,
            // and then only this says the stored copy is stale.
            room.tombstoned(b.generation, tombstone.clone());
            b.writes.tombstone(tombstone);
            b.deleted(room, mid);
            room.update_pins(|pins| {
                let before = pins.len();
                pins.retain(|p| p.message_id != mid);
                pins.len() != before
            })
            .map_err(super::events::encoding)?;
            if message.counts {
                let unread: Vec<_> = room
                    .members()
                    .iter()
                    .copied()
                    .filter(|p| *p != message.sender && room.get(Cursor::Read, *p) < message.seq)
                    .collect();
                for p in unread {
                    let n = room.get(Cursor::Unread, p);
                    if n > 0 {
                        room.put(Cursor::Unread, p, n - 1);
                    }
                }
            }
            // Those it mentioned who had not read it: one mention fewer.
            for p in mentions {
                let n = room.get(Cursor::Mentions, p);
                if n > 0 && room.get(Cursor::Read, p) < message.seq {
                    room.put(Cursor::Mentions, p, n - 1);
                }
            }
        }
    }
    let data = MessageDeleted {
        message_id: c.message_id.hex(),
        deleted_by: Some(actor.to_hex()),
        retracted: false,
        room: RoomFields::of(&room.key),
    };
    let frame = EventFrame::new(EventKind::MessageDeleted, inc.seq, data).from(actor.to_hex());
    Ok(Disposition::Applied(vec![publication(room_subject(&b.ctx.subjects, &room.key), &frame)?]))
}
