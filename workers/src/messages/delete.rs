//! `delete_message`: a tombstone. Content and attachments are removed, the
//! id stays (so a late or replayed insert of the same message is a duplicate
//! key and cannot bring it back), and readers who had not read it get one
//! fewer unread.

use super::Ctx;
use super::events::{publication, refused, room_subject};
use super::room::Room;
use crate::handler::{ApplyError, Disposition, Incoming};
use mongodb::bson::{Bson, Document, doc};
use natter_shared::ids::parse_oid;
use natter_shared::v1::command::{DeleteMessageCmd, RoomFields};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind};
use serde_json::json;

pub(super) async fn apply(
    ctx: &Ctx,
    room: &mut Room,
    inc: &Incoming,
    c: &DeleteMessageCmd,
) -> Result<Disposition, ApplyError> {
    let already = inc.seq as i64 <= room.last_seq;
    let actor = inc.msg.actor.oid();
    let key = room.room_ref();
    let detail = json!({"messageId": c.message_id});
    let Some(mid) = parse_oid(&c.message_id) else {
        return Ok(Disposition::Poison("messageId is not an ObjectId".into()));
    };
    let mut filter = room.messages_filter();
    filter.insert("_id", mid);
    let Some(message) = ctx.store.messages().find_one(filter).await? else {
        return Ok(refused(&ctx.subjects, inc, ErrorCode::NotFound, "no such message in the room", detail));
    };
    if !already {
        let roles = &inc.msg.roles;
        let allowed = match &room.group {
            Some(g) => g.may_delete(actor, roles, message.sender_id),
            None => inc.msg.has_role("Admin") || (room.is_member(actor) && message.sender_id == actor),
        };
        if !allowed {
            return Ok(refused(
                &ctx.subjects,
                inc,
                ErrorCode::Forbidden,
                "only the sender, an Admin or a role in canDeleteMessages may delete",
                detail,
            ));
        }
        if message.deleted {
            room.commit(&ctx.store, inc.seq, doc! {}).await?;
        } else {
            ctx.store
                .messages()
                .update_one(
                    doc! {"_id": mid, "deleted": {"$ne": true}},
                    doc! {"$set": {"deleted": true, "content": "", "attachments": [], "deletedAt": inc.time, "deletedBy": actor, "updatedAt": inc.time}},
                )
                .await?;
            let mut dec = Document::new();
            if message.message_type != "system" {
                for p in &room.members {
                    let h = p.to_hex();
                    let unread_before = room.read.get(&h).copied().unwrap_or(0) < message.seq;
                    if *p != message.sender_id && unread_before && room.unread.get(&h).copied().unwrap_or(0) > 0 {
                        dec.insert(format!("unreadCounts.{h}"), Bson::Int64(-1));
                    }
                }
            }
            let update = if dec.is_empty() {
                doc! {}
            } else {
                doc! {"$inc": dec.clone()}
            };
            room.commit(&ctx.store, inc.seq, update).await?;
            for (k, _) in dec {
                if let Some(n) = room.unread.get_mut(k.trim_start_matches("unreadCounts.")) {
                    *n -= 1;
                }
            }
        }
    }
    let mut data = json!({"messageId": c.message_id, "deletedBy": actor.to_hex()});
    RoomFields::of(&key).merge_into(&mut data);
    let frame = EventFrame::new(EventKind::MessageDeleted, inc.seq, data).from(actor.to_hex());
    Ok(Disposition::Applied(vec![publication(room_subject(&ctx.subjects, &key), &frame)?]))
}
