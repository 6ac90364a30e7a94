//! `send_message`: bulk insert of the messages (the `_id` is derived from
//! sender and `clientMsgId`, so a repeat is a duplicate key, not a second
//! message), then one guarded update per conversation.
//!
//! Counters are exact under redelivery: a message bumps `unreadCounts` only
//! if its `seq` is above the conversation's `lastSeq` (applied in order, so
//! not yet counted) or if this very insert created it (late but new). The
//! update is a compare-and-set on `lastSeq`, retried on conflict.

use crate::handler::{ApplyError, Disposition, Incoming, Publication};
use mongodb::bson::{Document, doc, oid::ObjectId};
use mongodb::error::ErrorKind;
use natter_nats::{RoomKind, Subjects};
use natter_shared::ids::parse_oid;
use natter_shared::model::{ConversationDoc, MessageDoc, MessageView};
use natter_shared::store::Store;
use natter_shared::v1::command::{Command, SendMessageCmd};
use natter_shared::v1::event::{EventFrame, EventKind};
use std::collections::{BTreeMap, HashMap, HashSet};

const DUPLICATE_KEY: i32 = 11000;
const CAS_ATTEMPTS: usize = 20;

struct Valid<'a> {
    slot: usize,
    inc: &'a Incoming,
    conv: ObjectId,
    doc: MessageDoc,
}

fn validate(inc: &Incoming, c: &SendMessageCmd) -> Result<(ObjectId, MessageDoc), String> {
    let id = parse_oid(&c.message_id).ok_or("messageId is not an ObjectId")?;
    let conv = parse_oid(&c.conversation_id).ok_or("conversationId is not an ObjectId")?;
    if !matches!(c.message_type.as_str(), "text" | "image" | "document") {
        return Err(format!("messageType `{}` is not allowed", c.message_type));
    }
    if c.content.is_empty() || c.content.len() > natter_shared::v1::MAX_CONTENT_BYTES {
        return Err("content is empty or too long".into());
    }
    let sender = inc.envelope.actor;
    Ok((
        conv,
        MessageDoc {
            id,
            content: c.content.clone(),
            sender_id: sender.oid(),
            conversation_id: Some(c.conversation_id.clone()),
            group_id: None,
            message_type: c.message_type.clone(),
            status: "sent".into(),
            read_by: vec![sender.hex()],
            attachments: vec![],
            created_at: inc.time,
            updated_at: inc.time,
            seq: inc.seq as i64,
            client_msg_id: c.client_msg_id.clone(),
        },
    ))
}

/// Applies the sends of a batch; returns a disposition per batch slot.
pub(super) async fn apply(
    store: &Store,
    subjects: &Subjects,
    sends: &[(usize, &Incoming)],
) -> Result<Vec<(usize, Disposition)>, ApplyError> {
    let mut out = Vec::with_capacity(sends.len());
    let mut valid: Vec<Valid<'_>> = Vec::new();
    for (slot, inc) in sends {
        let Command::SendMessage(c) = &inc.envelope.command else {
            continue;
        };
        match validate(inc, c) {
            Ok((conv, doc)) => valid.push(Valid {
                slot: *slot,
                inc,
                conv,
                doc,
            }),
            Err(reason) => out.push((*slot, Disposition::Poison(reason))),
        }
    }
    if valid.is_empty() {
        return Ok(out);
    }

    let conv_ids: Vec<ObjectId> = valid
        .iter()
        .map(|v| v.conv)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut convs: HashMap<ObjectId, ConversationDoc> = HashMap::new();
    let mut cursor = store
        .conversations()
        .find(doc! {"_id": {"$in": &conv_ids}})
        .await?;
    while cursor.advance().await? {
        let c = cursor.deserialize_current()?;
        convs.insert(c.id, c);
    }

    let mut accepted: Vec<Valid<'_>> = Vec::new();
    for v in valid {
        match convs.get(&v.conv) {
            None => out.push((v.slot, Disposition::Poison("conversation not found".into()))),
            Some(c) if !c.participant_ids.contains(&v.doc.sender_id) => out.push((
                v.slot,
                Disposition::Refused("the sender is not a participant".into()),
            )),
            Some(_) => accepted.push(v),
        }
    }
    if accepted.is_empty() {
        return Ok(out);
    }

    let newly = insert(store, &accepted).await?;

    let mut by_conv: BTreeMap<ObjectId, Vec<(usize, &Valid<'_>)>> = BTreeMap::new();
    for (k, v) in accepted.iter().enumerate() {
        by_conv.entry(v.conv).or_default().push((k, v));
    }
    for (conv_id, items) in by_conv {
        let Some(conv) = convs.remove(&conv_id) else {
            continue;
        };
        update_conversation(store, conv, &items, &newly).await?;
    }

    for v in &accepted {
        let frame = EventFrame {
            kind: EventKind::MessageReceived,
            seq: v.inc.seq,
            data: MessageView::from(&v.doc),
        };
        let payload = serde_json::to_vec(&frame).map_err(|e| ApplyError(e.to_string()))?;
        let subject = subjects.room_events(RoomKind::Conversation, &v.conv.to_hex());
        out.push((
            v.slot,
            Disposition::Applied(vec![Publication {
                subject,
                payload: payload.into(),
            }]),
        ));
    }
    Ok(out)
}

/// Inserts all messages; returns which (by index in `accepted`) were new.
async fn insert(store: &Store, accepted: &[Valid<'_>]) -> Result<HashSet<usize>, ApplyError> {
    let docs: Vec<&MessageDoc> = accepted.iter().map(|v| &v.doc).collect();
    let mut newly: HashSet<usize> = (0..accepted.len()).collect();
    match store.messages().insert_many(docs).ordered(false).await {
        Ok(_) => {}
        Err(e) => match *e.kind {
            ErrorKind::InsertMany(ref ime) => {
                if ime.write_concern_error.is_some() {
                    return Err(ApplyError(e.to_string()));
                }
                for we in ime.write_errors.iter().flatten() {
                    if we.code != DUPLICATE_KEY {
                        return Err(ApplyError(format!("insert failed: {}", we.message)));
                    }
                    newly.remove(&we.index);
                }
            }
            _ => return Err(e.into()),
        },
    }
    Ok(newly)
}

async fn update_conversation(
    store: &Store,
    mut conv: ConversationDoc,
    items: &[(usize, &Valid<'_>)],
    newly: &HashSet<usize>,
) -> Result<(), ApplyError> {
    for _ in 0..CAS_ATTEMPTS {
        let last = conv.last_seq;
        let mut inc: BTreeMap<String, i64> = BTreeMap::new();
        let mut newest: Option<&MessageDoc> = None;
        for (k, v) in items {
            let seq = v.doc.seq;
            if seq > last || newly.contains(k) {
                for p in &conv.participant_ids {
                    if *p != v.doc.sender_id {
                        *inc.entry(format!("unreadCounts.{}", p.to_hex()))
                            .or_default() += 1;
                    }
                }
            }
            if seq > last && newest.is_none_or(|n| seq > n.seq) {
                newest = Some(&v.doc);
            }
        }
        if inc.is_empty() && newest.is_none() {
            return Ok(());
        }
        let mut update = Document::new();
        if !inc.is_empty() {
            update.insert(
                "$inc",
                inc.into_iter()
                    .map(|(k, n)| (k, mongodb::bson::Bson::Int64(n)))
                    .collect::<Document>(),
            );
        }
        if let Some(m) = newest {
            update.insert(
                "$set",
                doc! {"lastMessageId": m.id, "updatedAt": m.created_at, "lastSeq": m.seq},
            );
        }
        let res = store
            .conversations()
            .update_one(doc! {"_id": conv.id, "lastSeq": last}, update)
            .await?;
        if res.matched_count == 1 {
            return Ok(());
        }
        match store.conversation(conv.id).await? {
            Some(c) => conv = c,
            None => return Err(ApplyError("conversation vanished".into())),
        }
    }
    Err(ApplyError("conversation update kept conflicting".into()))
}
