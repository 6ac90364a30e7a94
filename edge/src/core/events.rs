//! Reading a room's published events back from `CHAT_EVENTS`: what the
//! join check needs (a membership change newer than MongoDB's copy of the
//! room) and what reconnect catch-up resends (`realtime::catchup`).

use super::Core;
use super::membership::GroupChange;
use crate::error::ChatError;
use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use futures::StreamExt;
use mongodb::bson::oid::ObjectId;
use natter_shared::ids::{RoomRef, UserId};
use natter_shared::model::Permissions;
use natter_shared::v1::event::{EventHead, MemberAdded, MemberRemoved, data_of};

/// The payloads published on `subject` from `deliver` on, in stream
/// order; `None` when more than `limit` would have to be read.
pub async fn read(
    events: &Stream,
    subject: &str,
    deliver: consumer::DeliverPolicy,
    limit: u64,
) -> Result<Option<Vec<Bytes>>, String> {
    let mut c = events
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_string(),
            deliver_policy: deliver,
            description: Some("edge catch-up".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = c.info().await.map_err(|e| e.to_string())?.num_pending;
    if pending > limit {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(pending as usize);
    if pending == 0 {
        return Ok(Some(out));
    }
    let mut msgs = c.messages().await.map_err(|e| e.to_string())?;
    while let Some(m) = msgs.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let remaining = m.info().map(|i| i.pending).unwrap_or(0);
        out.push(m.payload.clone());
        if remaining == 0 {
            break;
        }
    }
    Ok(Some(out))
}

/// Where to start reading the events that follow the command at `seq`:
/// from that command's time (events carry their command's seq, and are
/// published after it).
pub async fn after_command(core: &Core, seq: u64) -> Result<consumer::DeliverPolicy, ChatError> {
    if seq == 0 {
        return Ok(consumer::DeliverPolicy::All);
    }
    let cmds = core.js.get_stream(core.subjects.cmd_stream()).await.map_err(ChatError::unavailable)?;
    let at = cmds.direct_get(seq).await.map_err(ChatError::unavailable)?;
    Ok(consumer::DeliverPolicy::ByStartTime { start_time: at.time })
}

/// The change to a group's members or rules an event frame records, if
/// any (`member_added`, `member_removed`, `group_updated`'s rules,
/// `group_deleted`), with its seq.
pub fn group_change(payload: &[u8]) -> Option<(u64, GroupChange)> {
    #[derive(serde::Deserialize)]
    struct Rules {
        permissions: Permissions,
    }
    let h = serde_json::from_slice::<EventHead>(payload).ok()?;
    let seq = h.seq?;
    let user = |id: &str| ObjectId::parse_str(id).ok();
    let change = match h.kind.as_str() {
        "member_added" => GroupChange::Added(user(&data_of::<MemberAdded>(payload)?.user_id)?),
        "member_removed" => GroupChange::Removed(user(&data_of::<MemberRemoved>(payload)?.user_id)?),
        "group_updated" => GroupChange::Rules(data_of::<Rules>(payload)?.permissions),
        "group_deleted" => GroupChange::Deleted,
        _ => return None,
    };
    Some((seq, change))
}

/// The changes to a group that the room's events after the command at
/// `since` record, in stream order. MongoDB's copy of a room is written
/// after its events go out; this is what happened since it.
pub async fn group_changes_after(
    core: &Core,
    room: &RoomRef,
    since: u64,
) -> Result<Vec<(u64, GroupChange)>, ChatError> {
    let events = core.js.get_stream(core.subjects.evt_stream()).await.map_err(ChatError::unavailable)?;
    let room_on = core.subjects.room_events(room.kind, &room.id);
    // Usually the room's newest event is already in MongoDB's copy.
    match events.get_last_raw_message_by_subject(&room_on).await {
        Ok(m) => {
            let seq = serde_json::from_slice::<EventHead>(&m.payload).ok().and_then(|h| h.seq).unwrap_or(u64::MAX);
            if seq <= since {
                return Ok(vec![]);
            }
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(vec![]),
        Err(e) => return Err(ChatError::unavailable(e)),
    }
    let deliver = after_command(core, since).await?;
    let limit = core.config.catchup_max_events;
    let Some(after) = read(&events, &room_on, deliver, limit).await.map_err(ChatError::unavailable)? else {
        return Err(ChatError::unavailable("the room changes too fast to join; try again"));
    };
    Ok(after.iter().filter_map(|p| group_change(p)).filter(|(seq, _)| *seq > since).collect())
}

/// The last change of `user`'s membership of `room` that the events after
/// `since` record (`Some(true)` added, `Some(false)` removed or the group
/// deleted), `None` when they record none.
pub async fn membership_after(
    core: &Core,
    room: &RoomRef,
    user: UserId,
    since: u64,
) -> Result<Option<bool>, ChatError> {
    let me = user.oid();
    let changes = group_changes_after(core, room, since).await?;
    Ok(changes.into_iter().fold(None, |verdict, (_, c)| match c {
        GroupChange::Added(u) if u == me => Some(true),
        GroupChange::Removed(u) if u == me => Some(false),
        GroupChange::Deleted => Some(false),
        _ => verdict,
    }))
}
