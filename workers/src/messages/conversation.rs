//! `create_conversation`: makes the conversation keyed by the id derived
//! from its two participants, with dates from the command. Applying it again
//! (or a concurrent create from another edge) finds it and changes nothing.

use super::Batch;
use super::events::{publication, refused};
use super::room::{Doc, Room};
use super::rooms::Rooms;
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::oid::ObjectId;
use natter_shared::ids::{RoomRef, conversation_id_for};
use natter_shared::model::{ConversationDoc, ConversationView};
use natter_shared::v1::command::CreateConversationCmd;
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind, RefusedIds};

pub(super) fn create(
    b: &mut Batch<'_>,
    rooms: &mut Rooms,
    key: &RoomRef,
    inc: &Incoming,
    c: &CreateConversationCmd,
) -> Result<Disposition, ApplyError> {
    let [a, bb] = c.participant_ids;
    let id = c.conversation_id.oid();
    if a == bb {
        return Ok(Disposition::Poison("a conversation needs two different participants".into()));
    }
    if id != conversation_id_for(a, bb) || key.id != id.to_hex() {
        return Ok(Disposition::Poison("conversationId does not match its participants".into()));
    }
    if inc.msg.actor != a && inc.msg.actor != bb {
        return Ok(refused(
            &b.ctx.subjects,
            inc,
            ErrorCode::Forbidden,
            "the actor is not a participant",
            RefusedIds::default(),
        ));
    }
    let conv = match rooms.get_mut(key).map(|r| &r.doc) {
        Some(Doc::Conversation(existing)) => existing.clone(),
        Some(Doc::Group(_)) => return Ok(Disposition::Poison("not a conversation".into())),
        None => {
            let mut participants: Vec<ObjectId> = vec![a.oid(), bb.oid()];
            participants.sort();
            let doc = ConversationDoc {
                id,
                participant_ids: participants,
                last_message_id: None,
                unread_counts: Default::default(),
                created_at: inc.time,
                updated_at: inc.time,
                last_seq: inc.seq as i64,
                read_cursors: Default::default(),
                delivered_cursors: Default::default(),
                writers: vec![],
                pins: vec![],
                mention_counts: Default::default(),
            };
            rooms.insert(Room::created(Doc::Conversation(doc.clone())));
            doc
        }
    };
    let frame = EventFrame::new(EventKind::ConversationCreated, inc.seq, ConversationView::new(&conv, None))
        .from(inc.msg.actor.hex());
    Ok(Disposition::Applied(
        [a, bb].iter().map(|u| publication(b.ctx.subjects.user_events(&u.hex()), &frame)).collect::<Result<_, _>>()?,
    ))
}
