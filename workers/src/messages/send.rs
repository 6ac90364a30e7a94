//! `send_message` runs: consecutive sends of one room applied with one bulk
//! insert and one room update. The `_id` is derived from sender and
//! `clientMsgId`, so a repeat is a duplicate key, never a second message.
//!
//! A message counts as unread for the other members only when this command
//! created it (the stored copy carries this command's `seq`) and the room
//! had not applied the command yet (`seq > lastSeq`): exact under
//! redelivery, replay, a retry beyond the dedupe window, and a tombstone.

use super::Ctx;
use super::events::{message_received, refused};
use super::room::Room;
use crate::handler::{ApplyError, Disposition, Done, Incoming};
use mongodb::bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use mongodb::error::ErrorKind;
use natter_shared::ids::parse_oid;
use natter_shared::model::MessageDoc;
use natter_shared::v1::command::{Command, SendMessageCmd};
use natter_shared::v1::error::ErrorCode;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};

const DUPLICATE_KEY: i32 = 11000;

fn validate(inc: &Incoming, c: &SendMessageCmd, room: &Room) -> Result<MessageDoc, String> {
    let id = parse_oid(&c.message_id).ok_or("messageId is not an ObjectId")?;
    if !matches!(c.message_type.as_str(), "text" | "image" | "document") {
        return Err(format!("messageType `{}` is not allowed", c.message_type));
    }
    if c.content.is_empty() || c.content.len() > natter_shared::v1::MAX_CONTENT_BYTES {
        return Err("content is empty or too long".into());
    }
    let sender = inc.msg.actor;
    let fields = natter_shared::v1::command::RoomFields::of(&room.room_ref());
    let mut attachments = Vec::with_capacity(c.attachments.len());
    for a in &c.attachments {
        let at = DateTime::parse_rfc3339_str(&a.uploaded_at).map_err(|_| "attachment uploadedAt is not a date")?;
        attachments.push(doc! {
            "id": &a.id, "type": &a.kind, "name": &a.name, "size": a.size, "uploadedAt": at, "thumbnail": a.thumbnail,
        });
    }
    Ok(MessageDoc {
        id,
        content: c.content.clone(),
        sender_id: sender.oid(),
        conversation_id: fields.conversation_id,
        group_id: fields.group_id,
        message_type: c.message_type.clone(),
        status: "sent".into(),
        read_by: vec![sender.hex()],
        attachments,
        created_at: inc.time,
        updated_at: inc.time,
        seq: inc.seq as i64,
        client_msg_id: c.client_msg_id.clone(),
        system: None,
        deleted: false,
        deleted_at: None,
        deleted_by: None,
    })
}

/// Applies a run of sends (stream order) to `room`.
pub(super) async fn apply_run(
    ctx: &Ctx,
    room: &mut Room,
    run: &[&Incoming],
    done: &mut Done,
) -> Result<(), ApplyError> {
    let key = room.room_ref();
    let mut accepted: Vec<MessageDoc> = Vec::new();
    for inc in run {
        let Command::SendMessage(c) = &inc.msg.command else { continue };
        match validate(inc, c, room) {
            Err(reason) => {
                done.insert(inc.seq, Disposition::Poison(reason));
            }
            Ok(_) if room.deleted() || !room.is_member(inc.msg.actor.oid()) => {
                let detail = json!({"clientMsgId": c.client_msg_id, "messageId": c.message_id});
                done.insert(
                    inc.seq,
                    refused(
                        &ctx.subjects,
                        inc,
                        ErrorCode::NotAMember,
                        "the sender is not a member of the room",
                        detail,
                    ),
                );
            }
            Ok(doc) => accepted.push(doc),
        }
    }
    let last = room.last_seq;
    let fresh: Vec<&MessageDoc> = accepted.iter().filter(|m| m.seq > last).collect();
    let duplicates = insert(ctx, &fresh).await?;

    // What is stored under each id we did not just insert.
    let check: Vec<ObjectId> =
        accepted.iter().filter(|m| m.seq <= last || duplicates.contains_key(&m.id)).map(|m| m.id).collect();
    let mut stored: HashMap<ObjectId, (i64, bool)> = HashMap::new();
    if !check.is_empty() {
        let mut cur = ctx.store.messages().find(doc! {"_id": {"$in": &check}}).await?;
        while cur.advance().await? {
            let m = cur.deserialize_current()?;
            stored.insert(m.id, (m.seq, m.deleted));
        }
    }
    // Ours: created by this very command (now or in an earlier delivery) and
    // not deleted since.
    let ours = |m: &MessageDoc| match stored.get(&m.id) {
        Some((seq, deleted)) => *seq == m.seq && !deleted,
        None => true,
    };

    let mut inc_by: BTreeMap<String, i64> = BTreeMap::new();
    let mut newest: Option<&MessageDoc> = None;
    for m in accepted.iter().filter(|m| m.seq > last && ours(m)) {
        for p in &room.members {
            if *p != m.sender_id {
                *inc_by.entry(p.to_hex()).or_default() += 1;
            }
        }
        newest = Some(m);
    }
    let max_seq = run.iter().map(|i| i.seq).max().unwrap_or(0);
    if max_seq as i64 > last {
        let mut update = Document::new();
        if !inc_by.is_empty() {
            let incs: Document = inc_by.iter().map(|(u, n)| (format!("unreadCounts.{u}"), Bson::Int64(*n))).collect();
            update.insert("$inc", incs);
        }
        if let Some(m) = newest {
            update.insert("$set", doc! {"lastMessageId": m.id, "updatedAt": m.created_at});
        }
        room.commit(&ctx.store, max_seq, update).await?;
        for (u, n) in inc_by {
            *room.unread.entry(u).or_default() += n;
        }
    }

    for m in &accepted {
        let events = if ours(m) { vec![message_received(&ctx.subjects, &key, m, 0)?] } else { vec![] };
        done.insert(m.seq as u64, Disposition::Applied(events));
    }
    Ok(())
}

/// Inserts the messages; returns the ids that already existed.
async fn insert(ctx: &Ctx, docs: &[&MessageDoc]) -> Result<HashMap<ObjectId, ()>, ApplyError> {
    let mut dups = HashMap::new();
    if docs.is_empty() {
        return Ok(dups);
    }
    if let Err(e) = ctx.store.messages().insert_many(docs.iter().copied()).ordered(false).await {
        match *e.kind {
            ErrorKind::InsertMany(ref ime) if ime.write_concern_error.is_none() => {
                for we in ime.write_errors.iter().flatten() {
                    if we.code != DUPLICATE_KEY {
                        return Err(ApplyError::write(we.code, &we.message));
                    }
                    if let Some(d) = docs.get(we.index) {
                        dups.insert(d.id, ());
                    }
                }
            }
            _ => return Err(e.into()),
        }
    }
    Ok(dups)
}

/// Inserts one message, ignoring a duplicate (already applied).
pub(super) async fn insert_one(ctx: &Ctx, m: &MessageDoc) -> Result<(), ApplyError> {
    insert(ctx, &[m]).await.map(|_| ())
}
