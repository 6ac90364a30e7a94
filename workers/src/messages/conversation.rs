//! `create_conversation`: an upsert keyed by the id derived from the two
//! participants, with dates from the command; applying it again changes
//! nothing.

use crate::handler::{ApplyError, Disposition, Incoming, Publication};
use mongodb::bson::{doc, oid::ObjectId};
use natter_nats::Subjects;
use natter_shared::ids::{conversation_id_for, parse_oid};
use natter_shared::model::ConversationView;
use natter_shared::store::Store;
use natter_shared::v1::command::CreateConversationCmd;
use natter_shared::v1::event::{EventFrame, EventKind};

pub(super) async fn apply(
    store: &Store,
    subjects: &Subjects,
    inc: &Incoming,
    c: &CreateConversationCmd,
) -> Result<Disposition, ApplyError> {
    let [a, b] = c.participant_ids;
    let Some(id) = parse_oid(&c.conversation_id) else {
        return Ok(Disposition::Poison(
            "conversationId is not an ObjectId".into(),
        ));
    };
    if a == b {
        return Ok(Disposition::Poison(
            "a conversation needs two different participants".into(),
        ));
    }
    if id != conversation_id_for(a, b) {
        return Ok(Disposition::Poison(
            "conversationId does not match its participants".into(),
        ));
    }
    if inc.envelope.actor != a && inc.envelope.actor != b {
        return Ok(Disposition::Refused(
            "the actor is not a participant".into(),
        ));
    }
    let mut participants: Vec<ObjectId> = vec![a.oid(), b.oid()];
    participants.sort();
    store
        .conversations()
        .update_one(
            doc! {"_id": id},
            doc! {"$setOnInsert": {
                "participantIds": &participants,
                "unreadCounts": {},
                "createdAt": inc.time,
                "updatedAt": inc.time,
                "lastSeq": 0_i64,
            }},
        )
        .upsert(true)
        .await?;
    let Some(conv) = store.conversation(id).await? else {
        return Err(ApplyError("conversation vanished after upsert".into()));
    };
    let frame = EventFrame {
        kind: EventKind::ConversationCreated,
        seq: inc.seq,
        data: ConversationView::new(&conv, None),
    };
    let payload: bytes::Bytes = serde_json::to_vec(&frame)
        .map_err(|e| ApplyError(e.to_string()))?
        .into();
    Ok(Disposition::Applied(
        [a, b]
            .iter()
            .map(|u| Publication {
                subject: subjects.user_events(&u.hex()),
                payload: payload.clone(),
            })
            .collect(),
    ))
}
