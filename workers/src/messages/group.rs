//! Group commands: create, update, delete, add and remove members, leave.
//! Authorization is checked again here against the group as it is at the
//! command's `seq` (the edge checked it too, but a concurrent change may
//! have raced it); roles are those the token carried.
//!
//! Membership changes are announced on the room (`member_added`,
//! `member_removed` with `revoke`, so edges stop sending the room to a
//! removed member after this frame) and on the member's own subject (with
//! `grant`, so an added member's open sockets start following the group).

use super::Ctx;
use super::events::{message_received, publication, refused, room_subject, system_message};
use super::room::Room;
use super::send::insert_one;
use crate::handler::{ApplyError, Disposition, Incoming, Publication};
use mongodb::bson::{Document, doc, oid::ObjectId, to_bson};
use natter_shared::ids::{RoomKind, RoomRef, UserId, parse_oid};
use natter_shared::model::{GroupDoc, GroupView, Permissions};
use natter_shared::v1::command::{Command, CreateGroupCmd, MemberCmd, UpdateGroupCmd};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind};
use serde_json::json;

pub const GROUP_TYPES: [&str; 3] = ["department", "custom", "operational"];
pub const MAX_NAME: usize = 100;
pub const MAX_DESCRIPTION: usize = 1000;

fn forbidden(ctx: &Ctx, inc: &Incoming, reason: &str) -> Disposition {
    refused(&ctx.subjects, inc, ErrorCode::Forbidden, reason, json!({}))
}

fn user_event<T: serde::Serialize>(
    ctx: &Ctx,
    user: ObjectId,
    frame: &EventFrame<T>,
) -> Result<Publication, ApplyError> {
    publication(ctx.subjects.user_events(&user.to_hex()), frame)
}

pub(super) async fn create(ctx: &Ctx, inc: &Incoming, c: &CreateGroupCmd) -> Result<Disposition, ApplyError> {
    let Some(id) = parse_oid(&c.group_id) else {
        return Ok(Disposition::Poison("groupId is not an ObjectId".into()));
    };
    if !inc.msg.has_role("Admin") {
        return Ok(forbidden(ctx, inc, "creating a group needs the Admin role"));
    }
    if c.name.trim().is_empty() || c.name.len() > MAX_NAME || !GROUP_TYPES.contains(&c.group_type.as_str()) {
        return Ok(Disposition::Poison("invalid group name or type".into()));
    }
    let actor = inc.msg.actor.oid();
    let mut members: Vec<ObjectId> = vec![actor];
    for m in &c.member_ids {
        if !members.contains(&m.oid()) {
            members.push(m.oid());
        }
    }
    let seq = inc.seq as i64;
    let doc = GroupDoc {
        id,
        name: c.name.trim().to_string(),
        description: c.description.clone(),
        avatar: c.avatar.clone(),
        members: members.clone(),
        admin: actor,
        kind: c.group_type.clone(),
        last_message_id: None,
        permissions: c.permissions.clone(),
        unread_counts: members.iter().map(|m| (m.to_hex(), 0)).collect(),
        created_at: inc.time,
        updated_at: inc.time,
        last_seq: seq,
        read_cursors: members.iter().map(|m| (m.to_hex(), seq)).collect(),
        deleted: false,
    };
    if let Err(e) = ctx.store.groups().insert_one(&doc).await
        && !super::is_duplicate(&e)
    {
        return Err(e.into());
    }
    let Some(stored) = ctx.store.groups().find_one(doc! {"_id": id}).await? else {
        return Err(ApplyError::transient("group vanished after insert"));
    };
    if stored.last_seq != seq && stored.created_at != inc.time {
        return Ok(Disposition::Poison("a group with this id already exists".into()));
    }
    let frame = EventFrame::new(EventKind::GroupCreated, inc.seq, GroupView::new(&stored, None))
        .from(inc.msg.actor.hex())
        .grant(id.to_hex());
    let events = stored.members.iter().map(|m| user_event(ctx, *m, &frame)).collect::<Result<_, _>>()?;
    Ok(Disposition::Applied(events))
}

/// Applies a group command other than create to `room` (a group).
pub(super) async fn apply(ctx: &Ctx, room: &mut Room, inc: &Incoming) -> Result<Disposition, ApplyError> {
    let already = inc.seq as i64 <= room.last_seq;
    let Some(group) = room.group.clone() else {
        return Ok(Disposition::Poison("not a group".into()));
    };
    if group.deleted && !already {
        return Ok(refused(
            &ctx.subjects,
            inc,
            ErrorCode::NotFound,
            "the group was deleted",
            json!({"groupId": group.id.to_hex()}),
        ));
    }
    let actor = inc.msg.actor.oid();
    let key = RoomRef::new(RoomKind::Group, group.id.to_hex());
    match &inc.msg.command {
        Command::UpdateGroup(c) => update(ctx, room, inc, &group, c, already).await,
        Command::DeleteGroup(_) => {
            if !already && !inc.msg.has_role("Admin") {
                return Ok(forbidden(ctx, inc, "deleting a group needs the Admin role"));
            }
            if !already {
                room.commit(&ctx.store, inc.seq, doc! {"$set": {"deleted": true, "updatedAt": inc.time}}).await?;
            }
            let data = json!({"groupId": group.id.to_hex(), "deletedBy": actor.to_hex()});
            let room_frame =
                EventFrame::new(EventKind::GroupDeleted, inc.seq, data.clone()).from(actor.to_hex()).revoke("*");
            let mut events = vec![publication(room_subject(&ctx.subjects, &key), &room_frame)?];
            let user_frame = EventFrame::new(EventKind::GroupDeleted, inc.seq, data).from(actor.to_hex());
            for m in &group.members {
                events.push(user_event(ctx, *m, &user_frame)?);
            }
            Ok(Disposition::Applied(events))
        }
        Command::AddMember(MemberCmd { user_id, .. }) => add(ctx, room, inc, &group, *user_id, already).await,
        Command::RemoveMember(MemberCmd { user_id, .. }) => {
            if !already && !group.may_remove(actor, &inc.msg.roles) {
                return Ok(forbidden(ctx, inc, "removing members needs Admin or a role in canRemoveMembers"));
            }
            remove(ctx, room, inc, &group, *user_id, "member_removed", already).await
        }
        Command::LeaveGroup(_) => {
            if !already && !group.members.contains(&actor) {
                return Ok(refused(
                    &ctx.subjects,
                    inc,
                    ErrorCode::NotAMember,
                    "not a member of the group",
                    json!({"groupId": group.id.to_hex()}),
                ));
            }
            remove(ctx, room, inc, &group, inc.msg.actor, "member_left", already).await
        }
        _ => Ok(Disposition::Poison("not a group command".into())),
    }
}

async fn update(
    ctx: &Ctx,
    room: &mut Room,
    inc: &Incoming,
    group: &GroupDoc,
    c: &UpdateGroupCmd,
    already: bool,
) -> Result<Disposition, ApplyError> {
    if !already && !inc.msg.has_role("Admin") {
        return Ok(forbidden(ctx, inc, "updating a group needs the Admin role"));
    }
    if c.name.as_ref().is_some_and(|n| n.trim().is_empty() || n.len() > MAX_NAME)
        || c.group_type.as_ref().is_some_and(|t| !GROUP_TYPES.contains(&t.as_str()))
    {
        return Ok(Disposition::Poison("invalid group name or type".into()));
    }
    let renamed = c.name.as_ref().map(|n| n.trim().to_string()).filter(|n| *n != group.name);
    let key = room.room_ref();
    let actor = inc.msg.actor.oid();
    let system = renamed.as_ref().map(|n| {
        system_message(&key, inc.seq, inc.time, actor, "group_renamed", None, format!("renamed the group to \"{n}\""))
    });
    if !already {
        let mut set = doc! {"updatedAt": inc.time};
        if let Some(n) = &renamed {
            set.insert("name", n);
        }
        if let Some(d) = &c.description {
            set.insert("description", d);
        }
        if let Some(a) = &c.avatar {
            set.insert("avatar", a);
        }
        if let Some(t) = &c.group_type {
            set.insert("type", t);
        }
        if let Some(p) = &c.permissions {
            set.insert("permissions", to_bson::<Permissions>(p).map_err(|e| ApplyError::transient(e.to_string()))?);
        }
        if let Some(m) = &system {
            insert_one(ctx, m).await?;
            set.insert("lastMessageId", m.id);
        }
        room.commit(&ctx.store, inc.seq, doc! {"$set": set}).await?;
    }
    let Some(now) = ctx.store.groups().find_one(doc! {"_id": group.id}).await? else {
        return Err(ApplyError::transient("group vanished"));
    };
    room.group = Some(now.clone());
    let frame = EventFrame::new(EventKind::GroupUpdated, inc.seq, GroupView::new(&now, None)).from(actor.to_hex());
    let mut events = vec![publication(room_subject(&ctx.subjects, &key), &frame)?];
    if let Some(m) = &system {
        events.push(message_received(&ctx.subjects, &key, m, 1)?);
    }
    Ok(Disposition::Applied(events))
}

async fn add(
    ctx: &Ctx,
    room: &mut Room,
    inc: &Incoming,
    group: &GroupDoc,
    user: UserId,
    already: bool,
) -> Result<Disposition, ApplyError> {
    let actor = inc.msg.actor.oid();
    if !already && !group.may_add(actor, &inc.msg.roles) {
        return Ok(forbidden(ctx, inc, "adding members needs Admin, Supervisor or a role in canAddMembers"));
    }
    let u = user.oid();
    let key = room.room_ref();
    if !already && group.members.contains(&u) {
        return Ok(Disposition::Applied(vec![]));
    }
    let system = system_message(&key, inc.seq, inc.time, actor, "member_added", Some(u), "added a member".into());
    if !already {
        insert_one(ctx, &system).await?;
        let mut update = Document::new();
        update.insert("$push", doc! {"members": u});
        update.insert(
            "$set",
            doc! {
                format!("readCursors.{}", u.to_hex()): inc.seq as i64,
                format!("unreadCounts.{}", u.to_hex()): 0_i64,
                "lastMessageId": system.id,
                "updatedAt": inc.time,
            },
        );
        room.commit(&ctx.store, inc.seq, update).await?;
        room.members.push(u);
        room.read.insert(u.to_hex(), inc.seq as i64);
        room.unread.insert(u.to_hex(), 0);
        if let Some(g) = room.group.as_mut() {
            g.members.push(u);
        }
    }
    let data = json!({"groupId": group.id.to_hex(), "userId": u.to_hex(), "addedBy": actor.to_hex()});
    let room_frame = EventFrame::new(EventKind::MemberAdded, inc.seq, data.clone()).from(actor.to_hex());
    let user_frame =
        EventFrame::new(EventKind::MemberAdded, inc.seq, data).from(actor.to_hex()).grant(group.id.to_hex());
    Ok(Disposition::Applied(vec![
        publication(room_subject(&ctx.subjects, &key), &room_frame)?,
        message_received(&ctx.subjects, &key, &system, 1)?,
        user_event(ctx, u, &user_frame)?,
    ]))
}

async fn remove(
    ctx: &Ctx,
    room: &mut Room,
    inc: &Incoming,
    group: &GroupDoc,
    user: UserId,
    action: &str,
    already: bool,
) -> Result<Disposition, ApplyError> {
    let actor = inc.msg.actor.oid();
    let u = user.oid();
    let key = room.room_ref();
    if !already && !group.members.contains(&u) {
        return Ok(Disposition::Applied(vec![]));
    }
    let text = if action == "member_left" { "left the group" } else { "removed a member" };
    let system = system_message(&key, inc.seq, inc.time, actor, action, Some(u), text.into());
    if !already {
        insert_one(ctx, &system).await?;
        let h = u.to_hex();
        let update = doc! {
            "$pull": {"members": u},
            "$unset": {format!("readCursors.{h}"): "", format!("unreadCounts.{h}"): ""},
            "$set": {"lastMessageId": system.id, "updatedAt": inc.time},
        };
        room.commit(&ctx.store, inc.seq, update).await?;
        room.members.retain(|m| *m != u);
        room.read.remove(&h);
        room.unread.remove(&h);
        if let Some(g) = room.group.as_mut() {
            g.members.retain(|m| *m != u);
        }
    }
    let data = json!({"groupId": group.id.to_hex(), "userId": u.to_hex(), "removedBy": actor.to_hex(), "left": action == "member_left"});
    // The system message first, then the removal that ends the member's feed.
    let room_frame = EventFrame::new(EventKind::MemberRemoved, inc.seq, data.clone())
        .part(1)
        .from(actor.to_hex())
        .revoke(u.to_hex());
    let user_frame = EventFrame::new(EventKind::MemberRemoved, inc.seq, data).from(actor.to_hex());
    Ok(Disposition::Applied(vec![
        message_received(&ctx.subjects, &key, &system, 0)?,
        publication(room_subject(&ctx.subjects, &key), &room_frame)?,
        user_event(ctx, u, &user_frame)?,
    ]))
}
