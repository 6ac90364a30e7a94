//! Chat operations independent of the client protocol: authorization, id
//! assignment, publishing commands and waiting for their outcome. The
//! WebSocket protocols and the REST routes call these; none of them
//! re-implements a rule. The worker checks every command again at its
//! `seq`; the checks here give the caller an immediate answer.

use crate::core::Core;
use crate::core::quota::Limit;
use crate::core::recent::Known;
use crate::error::ChatError;
use bytes::Bytes;
use futures::StreamExt;
use mongodb::bson::oid::ObjectId;
use natter_nats::publish::{self, Stored};
use natter_shared::auth::Identity;
use natter_shared::ids::{RoomKind, RoomRef, UserId, conversation_id_for, message_id_for, parse_oid};
use natter_shared::model::{ConversationDoc, GroupDoc, Permissions};
use natter_shared::v1::client::{SendMessage, check_content, check_emoji, mentioned};
use natter_shared::v1::command::{
    Command, CommandEnvelope, CreateConversationCmd, CreateGroupCmd, EditMessageCmd, GroupCmd, MarkReadCmd, MemberCmd,
    MessageCmd, Outcome, OutcomeStatus, ReactionCmd, RoomFields, SendMessageCmd, UpdateGroupCmd,
};
use natter_shared::v1::error::ErrorCode;
use std::sync::Arc;
use std::time::Duration;

/// How long a REST write waits for a worker to apply its command.
pub const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The ack of a stored `send_message`.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub room: RoomRef,
    pub client_msg_id: String,
    pub seq: u64,
    pub duplicate: bool,
}

/// Parses a room id given by a client.
pub fn room(kind: RoomKind, id: &str) -> Result<(RoomRef, ObjectId), ChatError> {
    let oid = parse_oid(id).ok_or_else(|| ChatError::InvalidPayload(format!("{} is not a valid id", kind.field())))?;
    Ok((RoomRef::new(kind, oid.to_hex()), oid))
}

/// The room a payload's `conversationId` / `groupId` names, if any (at most
/// one may be given).
pub fn optional_room(conversation: Option<&str>, group: Option<&str>) -> Result<Option<RoomRef>, ChatError> {
    match RoomRef::optional(conversation, group).map_err(|e| ChatError::InvalidPayload(e.into()))? {
        Some(raw) => Ok(Some(room(raw.kind, &raw.id)?.0)),
        None => Ok(None),
    }
}

pub fn oid(id: &str, what: &str) -> Result<ObjectId, ChatError> {
    parse_oid(id).ok_or_else(|| ChatError::InvalidPayload(format!("{what} is not a valid id")))
}

/// Fails unless `who` is a member of the room. A missing room answers the
/// same as a foreign one, so ids cannot be probed.
pub async fn require_member(st: &Core, who: &Identity, room: &RoomRef) -> Result<(), ChatError> {
    let id = oid(&room.id, room.kind.field())?;
    let member = match room.kind {
        RoomKind::Group => group(st, id).await?.is_some_and(|(g, _)| g.is_member(who.user.oid())),
        RoomKind::Conversation => st.membership.is_participant(&st.store, id, who.user).await?,
    };
    if member { Ok(()) } else { Err(ChatError::NotAMember) }
}

/// A group as of the seq returned, for membership checks: from memory
/// while this edge follows its room (kept exact by its events), else
/// MongoDB's copy. `None`: no such group (or deleted, when read).
pub async fn group(st: &Core, id: ObjectId) -> Result<Option<(Arc<GroupDoc>, u64)>, ChatError> {
    if let Some(hit) = st.membership.cached_group(id) {
        return Ok(Some(hit));
    }
    // One read at a time per group: who waited for it takes what it read.
    let asked = std::time::Instant::now();
    let slot = st.membership.load_slot(id);
    let mut loaded = slot.lock().await;
    if let Some((g, seq, at)) = loaded.as_ref()
        && *at >= asked
    {
        return Ok(Some((g.clone(), *seq)));
    }
    if let Some(hit) = st.membership.cached_group(id) {
        return Ok(Some(hit));
    }
    let read = read_group(st, id).await;
    if let Ok(Some((g, seq))) = &read {
        *loaded = Some((g.clone(), *seq, std::time::Instant::now()));
    }
    drop(loaded);
    st.membership.load_done(id, &slot);
    read
}

/// The group from MongoDB, and kept in memory if its room is followed.
async fn read_group(st: &Core, id: ObjectId) -> Result<Option<(Arc<GroupDoc>, u64)>, ChatError> {
    let followed = st.membership.is_followed(id);
    natter_shared::store::round_trip("edge_group");
    let Some(g) = st.membership.group(&st.store, id).await? else { return Ok(None) };
    let seq = u64::try_from(g.last_seq).unwrap_or(0);
    if !followed {
        return Ok(Some((Arc::new(g), seq)));
    }
    let room = RoomRef::new(RoomKind::Group, id.to_hex());
    match crate::core::events::group_changes_after(st, &room, seq).await {
        Ok(changes) => Ok(Some(st.membership.keep_group(g, seq, changes))),
        // Not kept: the next check reads again.
        Err(_) => Ok(Some((Arc::new(g), seq))),
    }
}

/// [`require_member`] for a join: for a group, also the `lastSeq` of the
/// copy of it that said so, for [`confirm_member`] (conversations never
/// change members: `None`).
pub async fn require_member_as_of(st: &Core, who: &Identity, room: &RoomRef) -> Result<Option<u64>, ChatError> {
    if room.kind == RoomKind::Conversation {
        return require_member(st, who, room).await.map(|()| None);
    }
    match group(st, oid(&room.id, "groupId")?).await? {
        Some((g, seq)) if g.is_member(who.user.oid()) => Ok(Some(seq)),
        _ => Err(ChatError::NotAMember),
    }
}

/// Confirms, for a connection that now follows `room` (every later event
/// reaches it), that `user`, a member as of the room's `lastSeq` `since`
/// (MongoDB's copy, which is written after the events go out), still is
/// as of the newest event: the membership changes the events after
/// `since` recorded. A removal that raced the join is seen here or arrives
/// through the subscription. `None`: nothing to confirm.
pub async fn confirm_member(st: &Core, user: UserId, room: &RoomRef, since: Option<u64>) -> Result<(), ChatError> {
    let Some(since) = since else { return Ok(()) };
    let member = crate::core::events::membership_after(st, room, user, since).await?.unwrap_or(true);
    if member { Ok(()) } else { Err(ChatError::NotAMember) }
}

fn envelope(who: &Identity, command: Command) -> CommandEnvelope {
    CommandEnvelope {
        v: natter_shared::v1::VERSION,
        actor: who.user,
        roles: who.roles.clone(),
        reply: None,
        meta: crate::meta::current(),
        command,
    }
}

/// Publishes `command` as `who` to the command stream (JetStream); the PubAck's seq.
pub async fn submit(st: &Core, who: &Identity, command: Command, msg_id: &str) -> Result<u64, ChatError> {
    Ok(publish_command(st, &envelope(who, command), msg_id).await?.seq)
}

/// Publishes `command` as `who` and waits for a worker to apply it.
pub async fn submit_and_wait(st: &Core, who: &Identity, command: Command, msg_id: &str) -> Result<u64, ChatError> {
    apply_and_wait(st, envelope(who, command), msg_id).await
}

/// Publishes a command to the command stream; the PubAck is the answer.
async fn publish_command(st: &Core, env: &CommandEnvelope, msg_id: &str) -> Result<Stored, ChatError> {
    let route = env.route().map_err(|e| ChatError::InvalidPayload(e.into()))?;
    // Held while a move to another partition count drains the current one.
    if !st.partitioning.ready(natter_nats::partitioning::HOLD).await {
        return Err(ChatError::unavailable("the partition count is being changed"));
    }
    let subject = st.subjects.routed_command(&route, env.command.action());
    let payload: Bytes = serde_json::to_vec(env).map_err(|e| ChatError::InvalidPayload(e.to_string()))?.into();
    let started = std::time::Instant::now();
    let stored = publish::command(&st.js, subject, msg_id, payload).await;
    let action = env.command.action();
    metrics::histogram!("natter_puback_seconds").record(started.elapsed().as_secs_f64());
    let outcome = match &stored {
        Ok(s) if s.duplicate => "duplicate",
        Ok(_) => "stored",
        Err(_) => "unavailable",
    };
    metrics::counter!("natter_commands_published_total", "action" => action, "outcome" => outcome).increment(1);
    stored.map_err(ChatError::unavailable)
}

/// `send_message`: checks membership, assigns the id, stores the command.
pub async fn send_message(st: &Core, who: &Identity, req: SendMessage) -> Result<Sent, ChatError> {
    let raw = RoomRef::from_fields(req.conversation_id.as_deref(), req.group_id.as_deref())
        .map_err(|e| ChatError::InvalidPayload(e.into()))?;
    let (room, _) = room(raw.kind, &raw.id)?;
    require_member(st, who, &room).await?;
    let ids: Vec<String> = req.attachments.iter().map(|a| a.id().to_string()).collect();
    let attachments = attachments_for_message(st, who, &room, req.message_type, &ids).await?;
    // A reply names a message of the same room (one elsewhere, or
    // gone, answers as missing).
    let reply_to = match &req.reply_to {
        Some(id) => {
            let parent = message(st, id).await?;
            if parent.room != room {
                return Err(ChatError::NotFound("message"));
            }
            Some(parent.id.into())
        }
        None => None,
    };
    let mentions = mentioned(&req.content, &req.mentions).map_err(ChatError::InvalidPayload)?;
    let mentions = members_among(st, &room, mentions, who.user).await?;
    st.quota.take(who.user, Limit::Send).await?;
    let client_msg_id = req.client_msg_id.unwrap_or_else(|| ObjectId::new().to_hex());
    let id = message_id_for(who.user, &client_msg_id);
    let message_id = id.to_hex();
    let env = envelope(
        who,
        Command::SendMessage(SendMessageCmd {
            message_id: id.into(),
            room: RoomFields::of(&room),
            content: req.content,
            message_type: req.message_type.into(),
            client_msg_id: client_msg_id.clone(),
            attachments,
            reply_to,
            mentions,
        }),
    );
    let stored = publish_command(st, &env, &format!("msg:{}:{client_msg_id}", who.user)).await?;
    st.recent.remember(Known { id, room: room.clone(), sender: who.user.oid() });
    Ok(Sent { message_id, room, client_msg_id, seq: stored.seq, duplicate: stored.duplicate })
}

/// The users of `users` who are members of `room`, but `sender`: a
/// mention of anyone else is dropped (they could not see the message).
async fn members_among(
    st: &Core,
    room: &RoomRef,
    users: Vec<UserId>,
    sender: UserId,
) -> Result<Vec<UserId>, ChatError> {
    let users: Vec<UserId> = users.into_iter().filter(|u| *u != sender).collect();
    if users.is_empty() {
        return Ok(users);
    }
    let id = oid(&room.id, room.kind.field())?;
    let member = |members: &[ObjectId], u: &UserId| members.contains(&u.oid());
    Ok(match room.kind {
        RoomKind::Group => match group(st, id).await? {
            Some((g, _)) if !g.deleted => users.into_iter().filter(|u| member(&g.members, u)).collect(),
            _ => Vec::new(),
        },
        RoomKind::Conversation => match st.membership.participants(&st.store, id).await? {
            Some(p) => users.into_iter().filter(|u| member(&p, u)).collect(),
            None => Vec::new(),
        },
    })
}

/// How long a message a client names may take to be written after its
/// event (the workers' write-behind) before it is reported missing.
const WRITTEN_WITHIN: Duration = Duration::from_millis(1500);

/// Where the message `id` is: as this edge relayed or stored it lately, or
/// as MongoDB has it (not deleted), waiting a little for a message whose
/// event came before its write.
pub async fn message(st: &Core, id: &str) -> Result<Known, ChatError> {
    let id = oid(id, "messageId")?;
    if let Some(k) = st.recent.get(id) {
        return Ok(k);
    }
    let found = written(|| async {
        let m = st.store.live_message(id).await?;
        Ok(m.map(|m| Known { id, room: m.room(), sender: m.sender_id }))
    })
    .await?;
    found.ok_or(ChatError::NotFound("message"))
}

/// Reads until `read` finds something or `WRITTEN_WITHIN` has passed: for
/// what a client may ask about right after its event, before it is written.
pub async fn written<T, F, Fut>(mut read: F) -> Result<Option<T>, ChatError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, ChatError>>,
{
    let deadline = tokio::time::Instant::now() + WRITTEN_WITHIN;
    loop {
        if let Some(v) = read().await? {
            return Ok(Some(v));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The message `message_id`, if the caller is a member of its room (a
/// message of another room answers as a missing one).
async fn member_message(st: &Core, who: &Identity, message_id: &str) -> Result<Known, ChatError> {
    let m = message(st, message_id).await?;
    require_member(st, who, &m.room).await.map_err(|_| ChatError::NotFound("message"))?;
    Ok(m)
}

/// Publishes `command` as `who`, deduplicated by `msg_id`; with `wait`,
/// answers once a worker applied it. The command's seq.
async fn issue(st: &Core, who: &Identity, command: Command, msg_id: &str, wait: bool) -> Result<u64, ChatError> {
    let env = envelope(who, command);
    if wait { apply_and_wait(st, env, msg_id).await } else { Ok(publish_command(st, &env, msg_id).await?.seq) }
}

/// `mark_as_read`: that message and everything before it in its room.
pub async fn mark_read(st: &Core, who: &Identity, message_id: &str, wait: bool) -> Result<(RoomRef, u64), ChatError> {
    let m = member_message(st, who, message_id).await?;
    let cmd = Command::MarkRead(MarkReadCmd { room: RoomFields::of(&m.room), message_id: m.id.into() });
    let seq = issue(st, who, cmd, &format!("read:{}:{}", who.user, m.id.to_hex()), wait).await?;
    Ok((m.room, seq))
}

/// `delete_message`: the sender, an Admin, or a group role allowed by
/// `canDeleteMessages`.
pub async fn delete_message(
    st: &Core,
    who: &Identity,
    message_id: &str,
    wait: bool,
) -> Result<(RoomRef, u64), ChatError> {
    let m = member_message(st, who, message_id).await?;
    let allowed = match m.room.kind {
        RoomKind::Conversation => who.has_role("Admin") || m.sender == who.user.oid(),
        RoomKind::Group => {
            let (g, _) = group(st, oid(&m.room.id, "groupId")?).await?.ok_or(ChatError::NotAMember)?;
            g.may_delete(who.user.oid(), &who.roles, m.sender)
        }
    };
    if !allowed {
        return Err(ChatError::Forbidden("only the sender, an Admin or a role in canDeleteMessages may delete".into()));
    }
    let cmd = Command::DeleteMessage(MessageCmd { room: RoomFields::of(&m.room), message_id: m.id.into() });
    // Per actor: a refused delete by one user must not swallow an
    // authorized one by another as its duplicate.
    let seq = issue(st, who, cmd, &format!("del:{}:{}", who.user, m.id.to_hex()), wait).await?;
    Ok((m.room, seq))
}

/// A deduplication id of its own: a change a user may make, undo and make
/// again (an edit back, a reaction added again) is never a duplicate of
/// the first; the worker applies a repeat as a no-op.
fn once(what: &str, who: &Identity) -> String {
    format!("{what}:{}:{}", who.user, ObjectId::new().to_hex())
}

/// `edit_message`: its sender only (an Admin deletes, never rewrites).
pub async fn edit_message(
    st: &Core,
    who: &Identity,
    message_id: &str,
    content: String,
    wait: bool,
) -> Result<(RoomRef, u64), ChatError> {
    check_content(&content).map_err(ChatError::InvalidPayload)?;
    let m = member_message(st, who, message_id).await?;
    if m.sender != who.user.oid() {
        return Err(ChatError::Forbidden("only its sender may edit a message".into()));
    }
    let cmd = Command::EditMessage(EditMessageCmd { room: RoomFields::of(&m.room), message_id: m.id.into(), content });
    let seq = issue(st, who, cmd, &once("edit", who), wait).await?;
    Ok((m.room, seq))
}

/// `add_reaction` (`add`) or `remove_reaction`: any member of the room.
pub async fn react(
    st: &Core,
    who: &Identity,
    message_id: &str,
    emoji: String,
    add: bool,
    wait: bool,
) -> Result<(RoomRef, u64), ChatError> {
    check_emoji(&emoji).map_err(ChatError::InvalidPayload)?;
    let m = member_message(st, who, message_id).await?;
    let c = ReactionCmd { room: RoomFields::of(&m.room), message_id: m.id.into(), emoji };
    let cmd = if add { Command::AddReaction(c) } else { Command::RemoveReaction(c) };
    let seq = issue(st, who, cmd, &once("react", who), wait).await?;
    Ok((m.room, seq))
}

/// `pin_message` (`pin`) or `unpin_message`: a conversation's participants,
/// a group's admin, or an Admin.
pub async fn pin(
    st: &Core,
    who: &Identity,
    message_id: &str,
    pin: bool,
    wait: bool,
) -> Result<(RoomRef, u64), ChatError> {
    let m = member_message(st, who, message_id).await?;
    if m.room.kind == RoomKind::Group {
        let (g, _) = group(st, oid(&m.room.id, "groupId")?).await?.ok_or(ChatError::NotAMember)?;
        if !g.may_pin(who.user.oid(), &who.roles) {
            return Err(ChatError::Forbidden("only the group's admin or an Admin may pin in a group".into()));
        }
    }
    let c = MessageCmd { room: RoomFields::of(&m.room), message_id: m.id.into() };
    let cmd = if pin { Command::PinMessage(c) } else { Command::UnpinMessage(c) };
    let seq = issue(st, who, cmd, &once("pin", who), wait).await?;
    Ok((m.room, seq))
}

/// `POST /api/chat/conversations/with-user`: returns the conversation between
/// the caller and `other`, creating it through the pipeline if needed.
pub async fn conversation_with(st: &Core, who: &Identity, other: UserId) -> Result<ConversationDoc, ChatError> {
    if other == who.user {
        return Err(ChatError::InvalidPayload("cannot open a conversation with yourself".into()));
    }
    let id = conversation_id_for(who.user, other);
    if let Some(c) = st.store.conversation(id).await? {
        return Ok(c);
    }
    let env = envelope(
        who,
        Command::CreateConversation(CreateConversationCmd {
            conversation_id: id.into(),
            participant_ids: [who.user, other],
        }),
    );
    let seq = apply_and_wait(st, env, &format!("conv:{}", id.to_hex())).await?;
    // Applied by us, or stored by a concurrent request and applied soon.
    poll(|| st.store.conversation(id), seq).await
}

async fn poll<T, F, Fut>(mut f: F, seq: u64) -> Result<T, ChatError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, mongodb::error::Error>>,
{
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ChatError::Pending { seq });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fields of `POST /api/chat/groups`, validated.
pub struct NewGroup {
    pub name: String,
    pub description: Option<String>,
    pub avatar: Option<String>,
    pub group_type: natter_shared::model::GroupType,
    pub member_ids: Vec<UserId>,
    pub permissions: Permissions,
}

fn require_role(who: &Identity, roles: &[&str]) -> Result<(), ChatError> {
    if roles.iter().any(|r| who.has_role(r)) {
        Ok(())
    } else {
        Err(ChatError::Forbidden(format!("needs the role {}", roles.join(" or "))))
    }
}

/// A group the caller may see (a member, or an Admin).
pub async fn visible_group(st: &Core, who: &Identity, id: &str) -> Result<GroupDoc, ChatError> {
    let gid = oid(id, "groupId")?;
    let g = st.membership.group(&st.store, gid).await?;
    match g {
        Some(g) if g.is_member(who.user.oid()) || who.has_role("Admin") => Ok(g),
        Some(_) => Err(ChatError::NotAMember),
        None if who.has_role("Admin") => Err(ChatError::NotFound("group")),
        None => Err(ChatError::NotAMember),
    }
}

async fn group_after(st: &Core, gid: ObjectId, seq: u64) -> Result<GroupDoc, ChatError> {
    poll(|| st.store.group(gid), seq).await
}

pub async fn create_group(st: &Core, who: &Identity, g: NewGroup) -> Result<GroupDoc, ChatError> {
    require_role(who, &["Admin"])?;
    st.quota.take(who.user, Limit::CreateGroup).await?;
    let gid = ObjectId::new();
    let env = envelope(
        who,
        Command::CreateGroup(CreateGroupCmd {
            group_id: gid.into(),
            name: g.name,
            description: g.description,
            avatar: g.avatar,
            group_type: g.group_type,
            member_ids: g.member_ids,
            permissions: g.permissions,
        }),
    );
    let seq = apply_and_wait(st, env, &format!("grp:{}", gid.to_hex())).await?;
    group_after(st, gid, seq).await
}

pub async fn update_group(st: &Core, who: &Identity, c: UpdateGroupCmd) -> Result<GroupDoc, ChatError> {
    require_role(who, &["Admin"])?;
    let g = visible_group(st, who, &c.group_id.hex()).await?;
    let env = envelope(who, Command::UpdateGroup(c));
    let seq = apply_and_wait(st, env, &ObjectId::new().to_hex()).await?;
    group_after(st, g.id, seq).await
}

pub async fn delete_group(st: &Core, who: &Identity, id: &str) -> Result<GroupDoc, ChatError> {
    require_role(who, &["Admin"])?;
    let g = visible_group(st, who, id).await?;
    let env = envelope(who, Command::DeleteGroup(GroupCmd { group_id: g.id.into() }));
    apply_and_wait(st, env, &format!("grpdel:{}", g.id.to_hex())).await?;
    Ok(g)
}

pub async fn add_member(st: &Core, who: &Identity, id: &str, user: UserId) -> Result<GroupDoc, ChatError> {
    let g = visible_group(st, who, id).await?;
    if !g.may_add(who.user.oid(), &who.roles) {
        return Err(ChatError::Forbidden("adding members needs Admin, Supervisor or a role in canAddMembers".into()));
    }
    if g.members.len() >= natter_shared::model::MAX_GROUP_MEMBERS && !g.members.contains(&user.oid()) {
        let max = natter_shared::model::MAX_GROUP_MEMBERS;
        return Err(ChatError::Forbidden(format!("a group has at most {max} members")));
    }
    let env = envelope(who, Command::AddMember(MemberCmd { group_id: g.id.into(), user_id: user }));
    let seq = apply_and_wait(st, env, &ObjectId::new().to_hex()).await?;
    group_after(st, g.id, seq).await
}

pub async fn remove_member(st: &Core, who: &Identity, id: &str, user: UserId) -> Result<GroupDoc, ChatError> {
    let g = visible_group(st, who, id).await?;
    if !g.may_remove(who.user.oid(), &who.roles) {
        return Err(ChatError::Forbidden("removing members needs Admin or a role in canRemoveMembers".into()));
    }
    if !g.members.contains(&user.oid()) {
        return Err(ChatError::NotFound("member"));
    }
    let env = envelope(who, Command::RemoveMember(MemberCmd { group_id: g.id.into(), user_id: user }));
    let seq = apply_and_wait(st, env, &ObjectId::new().to_hex()).await?;
    group_after(st, g.id, seq).await
}

pub async fn leave_group(st: &Core, who: &Identity, id: &str) -> Result<GroupDoc, ChatError> {
    let gid = oid(id, "groupId")?;
    let g = group(st, gid).await?.map(|(g, _)| g).filter(|g| g.is_member(who.user.oid()));
    let g = g.ok_or(ChatError::NotAMember)?;
    let env = envelope(who, Command::LeaveGroup(GroupCmd { group_id: g.id.into() }));
    let seq = apply_and_wait(st, env, &ObjectId::new().to_hex()).await?;
    group_after(st, g.id, seq).await
}

/// Stores a command and waits until a worker reports it applied. When the
/// store says it is a duplicate (another request stored it first), the
/// worker will not report to us; the caller reads the result back.
async fn apply_and_wait(st: &Core, mut env: CommandEnvelope, msg_id: &str) -> Result<u64, ChatError> {
    let inbox = st.nats.new_inbox();
    let mut sub = st.nats.subscribe(inbox.clone()).await.map_err(ChatError::unavailable)?;
    env.reply = Some(inbox);
    let stored = publish_command(st, &env, msg_id).await?;
    if stored.duplicate {
        return Ok(stored.seq);
    }
    let outcome = tokio::time::timeout(APPLY_WAIT, sub.next()).await;
    let _ = sub.unsubscribe().await;
    match outcome {
        Ok(Some(msg)) => match serde_json::from_slice::<Outcome>(&msg.payload) {
            Ok(Outcome { status: OutcomeStatus::Applied, seq, .. }) => Ok(seq),
            Ok(Outcome { status: OutcomeStatus::Refused, reason, code, .. }) => {
                let reason = reason.unwrap_or_else(|| "refused".into());
                Err(match code {
                    Some(ErrorCode::Forbidden) => ChatError::Forbidden(reason),
                    Some(ErrorCode::NotAMember) => ChatError::NotAMember,
                    Some(ErrorCode::NotFound) => ChatError::NotFound("target"),
                    Some(ErrorCode::LimitExceeded) => ChatError::LimitExceeded(reason),
                    Some(ErrorCode::InvalidPayload) => ChatError::InvalidPayload(reason),
                    _ => ChatError::Refused(reason),
                })
            }
            Err(e) => Err(ChatError::unavailable(format!("bad outcome: {e}"))),
        },
        _ => Err(ChatError::Pending { seq: stored.seq }),
    }
}

/// Checks the attachments a message names and copies what the message
/// carries: each must be accepted, the sender's, in the same room, and an
/// image for an image message, a document for a document message.
pub async fn attachments_for_message(
    st: &Core,
    who: &Identity,
    room: &RoomRef,
    message_type: natter_shared::v1::client::ClientMessageType,
    ids: &[String],
) -> Result<Vec<natter_shared::v1::command::AttachmentMeta>, ChatError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let oid = oid(id, "attachment id")?;
        let bad = |why: &str| ChatError::InvalidPayload(format!("attachment {id}: {why}"));
        let a = st.store.attachment(oid).await?.ok_or_else(|| bad("no such upload"))?;
        if !a.accepted() {
            return Err(bad("was not accepted"));
        }
        if a.uploader_id != who.user.oid() {
            return Err(bad("was uploaded by someone else"));
        }
        if a.room().is_some_and(|r| r != *room) {
            return Err(bad("was uploaded to another room"));
        }
        // One outside any room is collected when unsent for this long.
        let age = mongodb::bson::DateTime::now().timestamp_millis() - a.uploaded_at.timestamp_millis();
        if a.room().is_none() && age > st.config.unsent_upload_ttl.as_millis() as i64 {
            return Err(bad("was uploaded too long ago to be sent; upload it again"));
        }
        let wanted = message_type.as_str();
        if (wanted == "image" || wanted == "document") && a.category != wanted {
            return Err(bad(&format!("is not a {wanted}")));
        }
        out.push(natter_shared::v1::command::AttachmentMeta {
            id: a.id.into(),
            kind: a.kind.clone(),
            name: a.name.clone(),
            size: a.size,
            uploaded_at: natter_shared::timefmt::iso(a.uploaded_at),
            thumbnail: a.thumbnail_key.is_some(),
        });
    }
    Ok(out)
}
