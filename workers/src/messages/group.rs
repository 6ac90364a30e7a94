//! Group commands: create, update, delete, add and remove members, leave.
//! Authorization is checked again here against the group as it is at the
//! command's `seq` (the edge checked it too, but a concurrent change may
//! have raced it); roles are those the token carried.
//!
//! Membership changes are announced on the room (`member_added`,
//! `member_removed` with `revoke`, so edges stop sending the room to a
//! removed member after this frame) and on the member's own subject (with
//! `grant`, so an added member's open sockets start following the group).

use super::Batch;
use super::events::{message_received, publication, refused, room_subject, system_message};
use super::room::{Cursor, Doc, Room};
use super::rooms::Rooms;
use crate::handler::{ApplyError, Disposition, Incoming, Publication};
use mongodb::bson::{Bson, oid::ObjectId, to_bson};
use natter_nats::Subjects;
use natter_shared::ids::{RoomRef, UserId};
use natter_shared::model::{GroupDoc, GroupView, MAX_GROUP_MEMBERS, MessageDoc, Permissions};
use natter_shared::v1::command::{Command, CreateGroupCmd, MemberCmd, UpdateGroupCmd};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::event::{EventFrame, EventKind, GroupDeleted, MemberAdded, MemberRemoved, RefusedIds};

use natter_shared::model::MAX_GROUP_NAME;

fn forbidden(b: &Batch<'_>, inc: &Incoming, reason: &str) -> Disposition {
    refused(&b.ctx.subjects, inc, ErrorCode::Forbidden, reason, RefusedIds::default())
}

fn user_event<T: serde::Serialize>(
    subjects: &Subjects,
    user: ObjectId,
    frame: &EventFrame<T>,
) -> Result<Publication, ApplyError> {
    publication(subjects.user_events(&user.to_hex()), frame)
}

fn bson<T: serde::Serialize>(v: &T) -> Result<Bson, ApplyError> {
    to_bson(v).map_err(super::events::encoding)
}

pub(super) fn create(
    b: &mut Batch<'_>,
    rooms: &mut Rooms,
    key: &RoomRef,
    inc: &Incoming,
    c: &CreateGroupCmd,
) -> Result<Disposition, ApplyError> {
    let id = c.group_id.oid();
    if !inc.msg.has_role("Admin") {
        return Ok(forbidden(b, inc, "creating a group needs the Admin role"));
    }
    if c.name.trim().is_empty() || c.name.len() > MAX_GROUP_NAME {
        return Ok(Disposition::Poison("invalid group name".into()));
    }
    if let Err(reason) = c.permissions.check() {
        return Ok(Disposition::Poison(reason));
    }
    if c.member_ids.len() > MAX_GROUP_MEMBERS {
        return Ok(Disposition::Poison(format!("a group has at most {MAX_GROUP_MEMBERS} members")));
    }
    let seq = inc.seq as i64;
    let group = match rooms.get_mut(key).map(|r| &r.doc) {
        Some(Doc::Group(existing)) if existing.created_at != inc.time => {
            return Ok(Disposition::Poison("a group with this id already exists".into()));
        }
        Some(Doc::Group(existing)) => existing.clone(),
        Some(Doc::Conversation(_)) => return Ok(Disposition::Poison("not a group".into())),
        None => {
            let actor = inc.msg.actor.oid();
            let mut members: Vec<ObjectId> = vec![actor];
            for m in &c.member_ids {
                if !members.contains(&m.oid()) {
                    members.push(m.oid());
                }
            }
            let doc = GroupDoc {
                id,
                name: c.name.trim().to_string(),
                description: c.description.clone(),
                avatar: c.avatar.clone(),
                members: members.clone(),
                admin: actor,
                kind: c.group_type,
                last_message_id: None,
                permissions: c.permissions.clone(),
                unread_counts: members.iter().map(|m| (m.to_hex(), 0)).collect(),
                created_at: inc.time,
                updated_at: inc.time,
                last_seq: seq,
                read_cursors: members.iter().map(|m| (m.to_hex(), seq)).collect(),
                delivered_cursors: Default::default(),
                deleted: false,
                pins: vec![],
                mention_counts: Default::default(),
            };
            rooms.insert(Room::created(Doc::Group(doc.clone())));
            doc
        }
    };
    for m in &group.members {
        b.writes.membership(id, *m, true, inc.seq);
    }
    let frame = EventFrame::new(EventKind::GroupCreated, inc.seq, GroupView::new(&group, None))
        .from(inc.msg.actor.hex())
        .grant(id.to_hex());
    let events = group.members.iter().map(|m| user_event(&b.ctx.subjects, *m, &frame)).collect::<Result<_, _>>()?;
    Ok(Disposition::Applied(events))
}

/// Applies a group command other than create to `room` (a group).
pub(super) fn apply(b: &mut Batch<'_>, room: &mut Room, inc: &Incoming) -> Result<Disposition, ApplyError> {
    let already = inc.seq as i64 <= room.last_seq();
    let Some(group) = room.group().cloned() else {
        return Ok(Disposition::Poison("not a group".into()));
    };
    if group.deleted && !already {
        room.advance(inc.seq);
        return Ok(refused(
            &b.ctx.subjects,
            inc,
            ErrorCode::NotFound,
            "the group was deleted",
            RefusedIds::group(group.id.to_hex()),
        ));
    }
    let actor = inc.msg.actor.oid();
    match &inc.msg.command {
        Command::UpdateGroup(c) => update(b, room, inc, &group, c, already),
        Command::DeleteGroup(_) => {
            if !already && !inc.msg.has_role("Admin") {
                room.advance(inc.seq);
                return Ok(forbidden(b, inc, "deleting a group needs the Admin role"));
            }
            if !already {
                room.advance(inc.seq);
                room.update_group(|g| {
                    (g.deleted, g.updated_at) = (true, inc.time);
                    vec![("deleted", Bson::Boolean(true)), ("updatedAt", Bson::DateTime(inc.time))]
                });
                for m in &group.members {
                    b.writes.membership(group.id, *m, false, inc.seq);
                }
            }
            let data = GroupDeleted { group_id: group.id.to_hex(), deleted_by: actor.to_hex() };
            let room_frame =
                EventFrame::new(EventKind::GroupDeleted, inc.seq, data.clone()).from(actor.to_hex()).revoke("*");
            let mut events = vec![publication(room_subject(&b.ctx.subjects, &room.key), &room_frame)?];
            let user_frame = EventFrame::new(EventKind::GroupDeleted, inc.seq, data).from(actor.to_hex());
            for m in &group.members {
                events.push(user_event(&b.ctx.subjects, *m, &user_frame)?);
            }
            Ok(Disposition::Applied(events))
        }
        Command::AddMember(MemberCmd { user_id, .. }) => add(b, room, inc, &group, *user_id, already),
        Command::RemoveMember(MemberCmd { user_id, .. }) => {
            if !already && !group.may_remove(actor, &inc.msg.roles) {
                room.advance(inc.seq);
                return Ok(forbidden(b, inc, "removing members needs Admin or a role in canRemoveMembers"));
            }
            remove(b, room, inc, &group, *user_id, false, already)
        }
        Command::LeaveGroup(_) => {
            if !already && !group.members.contains(&actor) {
                room.advance(inc.seq);
                return Ok(refused(
                    &b.ctx.subjects,
                    inc,
                    ErrorCode::NotAMember,
                    "not a member of the group",
                    RefusedIds::group(group.id.to_hex()),
                ));
            }
            remove(b, room, inc, &group, inc.msg.actor, true, already)
        }
        _ => Ok(Disposition::Poison("not a group command".into())),
    }
}

/// Stores a `system` message in the room: written with the batch, the
/// room's newest message, known to its tail.
fn post_system(b: &mut Batch<'_>, room: &mut Room, m: &MessageDoc) {
    b.writes.message(m.clone());
    room.append(m, false);
    // A reaction or reply before the write starts from this copy.
    room.changed(b.generation, m.clone());
}

fn update(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    group: &GroupDoc,
    c: &UpdateGroupCmd,
    already: bool,
) -> Result<Disposition, ApplyError> {
    if !already && !inc.msg.has_role("Admin") {
        room.advance(inc.seq);
        return Ok(forbidden(b, inc, "updating a group needs the Admin role"));
    }
    if c.name.as_ref().is_some_and(|n| n.trim().is_empty() || n.len() > MAX_GROUP_NAME) {
        return Ok(Disposition::Poison("invalid group name".into()));
    }
    if let Some(Err(reason)) = c.permissions.as_ref().map(Permissions::check) {
        return Ok(Disposition::Poison(reason));
    }
    let renamed = c.name.as_ref().map(|n| n.trim().to_string()).filter(|n| *n != group.name);
    let key = room.key.clone();
    let actor = inc.msg.actor.oid();
    let system = renamed.as_ref().map(|n| {
        system_message(&key, inc.seq, inc.time, actor, "group_renamed", None, format!("renamed the group to \"{n}\""))
    });
    if !already {
        room.advance(inc.seq);
        let permissions = c.permissions.as_ref().map(bson).transpose()?;
        room.update_group(|g| {
            let mut fields = vec![("updatedAt", Bson::DateTime(inc.time))];
            g.updated_at = inc.time;
            if let Some(n) = &renamed {
                g.name = n.clone();
                fields.push(("name", Bson::String(n.clone())));
            }
            if let Some(d) = &c.description {
                g.description = Some(d.clone());
                fields.push(("description", Bson::String(d.clone())));
            }
            if let Some(a) = &c.avatar {
                g.avatar = Some(a.clone());
                fields.push(("avatar", Bson::String(a.clone())));
            }
            if let Some(t) = c.group_type {
                g.kind = t;
                fields.push(("type", Bson::String(t.as_str().into())));
            }
            if let (Some(p), Some(value)) = (&c.permissions, permissions) {
                g.permissions = p.clone();
                fields.push(("permissions", value));
            }
            fields
        });
        if let Some(m) = &system {
            post_system(b, room, m);
        }
    }
    let now = room.group().cloned().unwrap_or_else(|| group.clone());
    let frame = EventFrame::new(EventKind::GroupUpdated, inc.seq, GroupView::new(&now, None)).from(actor.to_hex());
    let mut events = vec![publication(room_subject(&b.ctx.subjects, &key), &frame)?];
    if let Some(m) = &system {
        events.push(message_received(&b.ctx.subjects, &key, m, 1)?);
    }
    Ok(Disposition::Applied(events))
}

fn add(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    group: &GroupDoc,
    user: UserId,
    already: bool,
) -> Result<Disposition, ApplyError> {
    let actor = inc.msg.actor.oid();
    if !already {
        room.advance(inc.seq);
        if !group.may_add(actor, &inc.msg.roles) {
            return Ok(forbidden(b, inc, "adding members needs Admin, Supervisor or a role in canAddMembers"));
        }
        if group.members.len() >= MAX_GROUP_MEMBERS && !group.members.contains(&user.oid()) {
            return Ok(forbidden(b, inc, &format!("a group has at most {MAX_GROUP_MEMBERS} members")));
        }
    }
    let u = user.oid();
    let key = room.key.clone();
    if !already && group.members.contains(&u) {
        return Ok(Disposition::Applied(vec![]));
    }
    let system = system_message(&key, inc.seq, inc.time, actor, "member_added", Some(u), "added a member".into());
    if !already {
        let members = {
            let mut m = group.members.clone();
            m.push(u);
            m
        };
        let value = bson(&members)?;
        room.update_group(|g| {
            g.members = members;
            vec![("members", value)]
        });
        room.put(Cursor::Read, u, inc.seq as i64);
        room.put(Cursor::Unread, u, 0);
        b.writes.membership(group.id, u, true, inc.seq);
        post_system(b, room, &system);
    }
    let data = MemberAdded { group_id: group.id.to_hex(), user_id: u.to_hex(), added_by: actor.to_hex() };
    let room_frame = EventFrame::new(EventKind::MemberAdded, inc.seq, data.clone()).from(actor.to_hex());
    let user_frame =
        EventFrame::new(EventKind::MemberAdded, inc.seq, data).from(actor.to_hex()).grant(group.id.to_hex());
    Ok(Disposition::Applied(vec![
        publication(room_subject(&b.ctx.subjects, &key), &room_frame)?,
        message_received(&b.ctx.subjects, &key, &system, 1)?,
        user_event(&b.ctx.subjects, u, &user_frame)?,
    ]))
}

fn remove(
    b: &mut Batch<'_>,
    room: &mut Room,
    inc: &Incoming,
    group: &GroupDoc,
    user: UserId,
    left: bool,
    already: bool,
) -> Result<Disposition, ApplyError> {
    let actor = inc.msg.actor.oid();
    let u = user.oid();
    let key = room.key.clone();
    if !already {
        room.advance(inc.seq);
        if !group.members.contains(&u) {
            return Ok(Disposition::Applied(vec![]));
        }
    }
    let (action, text) = if left { ("member_left", "left the group") } else { ("member_removed", "removed a member") };
    let system = system_message(&key, inc.seq, inc.time, actor, action, Some(u), text.into());
    if !already {
        let members: Vec<ObjectId> = group.members.iter().copied().filter(|m| *m != u).collect();
        let value = bson(&members)?;
        room.update_group(|g| {
            g.members = members;
            vec![("members", value)]
        });
        room.drop_user(u);
        b.writes.membership(group.id, u, false, inc.seq);
        post_system(b, room, &system);
    }
    let data = MemberRemoved { group_id: group.id.to_hex(), user_id: u.to_hex(), removed_by: actor.to_hex(), left };
    // The system message first, then the removal that ends the member's feed.
    let room_frame = EventFrame::new(EventKind::MemberRemoved, inc.seq, data.clone())
        .part(1)
        .from(actor.to_hex())
        .revoke(u.to_hex());
    let user_frame = EventFrame::new(EventKind::MemberRemoved, inc.seq, data).from(actor.to_hex());
    Ok(Disposition::Applied(vec![
        message_received(&b.ctx.subjects, &key, &system, 0)?,
        publication(room_subject(&b.ctx.subjects, &key), &room_frame)?,
        user_event(&b.ctx.subjects, u, &user_frame)?,
    ]))
}
