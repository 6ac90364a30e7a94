//! `create_conversation`: inserts the conversation keyed by the id derived
//! from its two participants, with dates from the command. Applying it again
//! (or a concurrent create from another edge) finds it and changes nothing.

use super::Ctx;
use super::events::publication;
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::oid::ObjectId;
use natter_shared::ids::{conversation_id_for, parse_oid};
use natter_shared::model::{ConversationDoc, ConversationView};
use natter_shared::v1::command::CreateConversationCmd;
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind};

pub(super) async fn apply(ctx: &Ctx, inc: &Incoming, c: &CreateConversationCmd) -> Result<Disposition, ApplyError> {
    let [a, b] = c.participant_ids;
    let Some(id) = parse_oid(&c.conversation_id) else {
        return Ok(Disposition::Poison("conversationId is not an ObjectId".into()));
    };
    if a == b {
        return Ok(Disposition::Poison("a conversation needs two different participants".into()));
    }
    if id != conversation_id_for(a, b) {
        return Ok(Disposition::Poison("conversationId does not match its participants".into()));
    }
    if inc.msg.actor != a && inc.msg.actor != b {
        return Ok(super::events::refused(
            &ctx.subjects,
            inc,
            ErrorCode::Forbidden,
            "the actor is not a participant",
            serde_json::json!({}),
        ));
    }
    let mut participants: Vec<ObjectId> = vec![a.oid(), b.oid()];
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
    };
    if let Err(e) = ctx.store.conversations().insert_one(&doc).await
        && !super::is_duplicate(&e)
    {
        return Err(e.into());
    }
    let Some(conv) = ctx.store.conversation(id).await? else {
        return Err(ApplyError::transient("conversation vanished after insert"));
    };
    let frame = EventFrame::new(EventKind::ConversationCreated, inc.seq, ConversationView::new(&conv, None))
        .from(inc.msg.actor.hex());
    Ok(Disposition::Applied(
        [a, b].iter().map(|u| publication(ctx.subjects.user_events(&u.hex()), &frame)).collect::<Result<_, _>>()?,
    ))
}
