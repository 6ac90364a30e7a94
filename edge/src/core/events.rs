//! Reading a room's published events back from `CHAT_EVENTS`: what the
//! join check needs (a membership change newer than MongoDB's copy of the
//! room) and what reconnect catch-up resends (`realtime::catchup`).

use super::Core;
use crate::error::ChatError;
use async_nats::jetstream::consumer;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use bytes::Bytes;
use futures::StreamExt;
use natter_shared::ids::{RoomRef, UserId};
use natter_shared::v1::event::{EventHead, EventKind, MemberAdded, data_of};

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

/// The last change of `user`'s membership of `room` that the events after
/// `since` record (`Some(true)` added, `Some(false)` removed or the group
/// deleted), `None` when they record none. MongoDB's copy of a room is
/// written after its events go out; this is what happened since it.
pub async fn membership_after(
    core: &Core,
    room: &RoomRef,
    user: UserId,
    since: u64,
) -> Result<Option<bool>, ChatError> {
    let events = core.js.get_stream(core.subjects.evt_stream()).await.map_err(ChatError::unavailable)?;
    let room_on = core.subjects.room_events(room.kind, &room.id);
    // Usually the room's newest event is already in MongoDB's copy.
    match events.get_last_raw_message_by_subject(&room_on).await {
        Ok(m) => {
            let seq = serde_json::from_slice::<EventHead>(&m.payload).ok().and_then(|h| h.seq).unwrap_or(u64::MAX);
            if seq <= since {
                return Ok(None);
            }
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(ChatError::unavailable(e)),
    }
    let deliver = after_command(core, since).await?;
    let limit = core.config.catchup_max_events;
    let Some(after) = read(&events, &room_on, deliver, limit).await.map_err(ChatError::unavailable)? else {
        return Err(ChatError::unavailable("the room changes too fast to join; try again"));
    };
    let me = user.hex();
    let added = serde_json::to_value(EventKind::MemberAdded).ok();
    let mut verdict = None;
    for payload in after {
        let Ok(h) = serde_json::from_slice::<EventHead>(&payload) else { continue };
        if h.seq.is_none_or(|s| s <= since) {
            continue;
        }
        if h.revoke.as_deref().is_some_and(|r| r == "*" || r == me) {
            verdict = Some(false);
        } else if added.as_ref().and_then(|k| k.as_str()) == Some(h.kind.as_str())
            && data_of::<MemberAdded>(&payload).is_some_and(|a| a.user_id == me)
        {
            verdict = Some(true);
        }
    }
    Ok(verdict)
}
