//! Reconnect catch-up. A client joining a room with the last `seq` it saw
//! there gets the room's events it missed, from the events stream, in
//! order, and then the live ones, with no gap and no duplicate:
//!
//! 1. the connection follows the room through a holding queue, so live
//!    events from now on are kept;
//! 2. the events published since the command at `lastSeq` are read from
//!    `CHAT_EVENTS` (ephemeral ordered consumers from that command's time):
//!    the room's, and those on the user's own subject about the room
//!    (`message_status_updated` for their messages); those after `lastSeq`
//!    are queued for the connection in seq order;
//! 3. the held live events follow; the connection's gate drops those the
//!    catch-up already sent.
//!
//! When more than `CATCHUP_MAX_EVENTS` were missed, or events the client
//! missed have expired from the stream (24 h), the client is told to
//! refetch the history over REST (`resync_required`) and gets live events.

use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::realtime::hub::{Outbound, SharedEvent, Sink};
use async_nats::jetstream::consumer;
use natter_shared::ids::RoomRef;
use natter_shared::v1::command::RoomFields;
use natter_shared::v1::event::{EventFrame, EventKind, ResyncRequired, data_of};
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a catch-up did.
#[derive(Debug, PartialEq, Eq)]
pub enum CatchUp {
    /// Every missed event was sent (this many).
    Complete(u64),
    /// Too much was missed, or has expired: the client must refetch.
    Resync(&'static str),
}

/// Follows `room` for `sink`'s connection with catch-up after `last_seq`;
/// `confirm` runs once the room is followed (live events held) and may
/// refuse, and then nothing of the room reaches the connection.
pub async fn follow<F: Future<Output = Result<(), ChatError>>>(
    st: &Arc<EdgeState>,
    sink: &Sink,
    room: &RoomRef,
    last_seq: u64,
    confirm: F,
) -> Result<CatchUp, ChatError> {
    let subject = st.hub.room_subject(room);
    let (hold_tx, mut hold_rx) = mpsc::channel::<Outbound>(crate::realtime::limits::QUEUE_LEN);
    let holding = Sink { tx: hold_tx, ..sink.clone() };
    st.hub.follow(&subject, holding).await.map_err(ChatError::unavailable)?;
    // Refused, or not known: the socket follows nothing it may not see.
    if let Err(e) = confirm.await {
        st.hub.unfollow(&subject, sink.conn).await;
        return Err(e);
    }
    let result = missed(st, sink, room, &subject, last_seq).await.map_err(ChatError::unavailable);
    if result.is_err() {
        // Answered with an error: the client joins again.
        st.hub.unfollow(&subject, sink.conn).await;
        return result;
    }
    match &result {
        Ok(CatchUp::Resync(reason)) => resync_notice(sink, room, last_seq, reason),
        // A stored command's seq: nothing the client saw is written again
        // (a worker that took the room's partition over republishes what
        // its predecessor had published), before the held live events.
        Ok(CatchUp::Complete(_)) => {
            sink.offer(Outbound::Since { subject: Arc::from(subject.as_str()), seq: last_seq });
        }
        Err(_) => {}
    }
    let outcome = if matches!(result, Ok(CatchUp::Complete(_))) { "complete" } else { "resync" };
    metrics::counter!("natter_catchups_total", "outcome" => outcome).increment(1);
    // Then the held live events, and every later one, in order.
    let tx = sink.tx.clone();
    st.lifecycle.spawn(async move {
        while let Some(o) = hold_rx.recv().await {
            if tx.send(o).await.is_err() {
                break;
            }
        }
    });
    result
}

/// Tells the connection to refetch `room`'s history over REST
/// (`resync_required`), since what it missed after `last_seq` is not sent.
pub fn resync_notice(sink: &Sink, room: &RoomRef, last_seq: u64, reason: &str) {
    let data = ResyncRequired { last_seq, reason: reason.to_string(), room: RoomFields::of(room) };
    if let Ok(text) = serde_json::to_string(&EventFrame::ephemeral(EventKind::ResyncRequired, data)) {
        sink.offer(Outbound::Local(text));
    }
}

async fn missed(st: &EdgeState, sink: &Sink, room: &RoomRef, subject: &str, last_seq: u64) -> Result<CatchUp, String> {
    let events = st.js.get_stream(st.subjects.evt_stream()).await.map_err(|e| e.to_string())?;
    let evt_state = events.cached_info().state.clone();
    let deliver = if last_seq == 0 {
        if evt_state.first_sequence > 1 {
            return Ok(CatchUp::Resync("the room's first events have expired"));
        }
        consumer::DeliverPolicy::All
    } else {
        let cmds = st.js.get_stream(st.subjects.cmd_stream()).await.map_err(|e| e.to_string())?;
        let Ok(at) = cmds.direct_get(last_seq).await else {
            return Ok(CatchUp::Resync("lastSeq is not a stored command"));
        };
        if evt_state.first_sequence > 1 && evt_state.first_timestamp > at.time {
            return Ok(CatchUp::Resync("events after lastSeq have expired"));
        }
        consumer::DeliverPolicy::ByStartTime { start_time: at.time }
    };
    let me = sink.user.hex();
    let max = st.config.catchup_max_events;
    // The room's events, and the user's own about this room (receipts for
    // their messages), each as the connection follows them.
    let room_on = st.subjects.room_events(room.kind, &room.id);
    let Some(mut missed) = read(st, &events, &room_on, subject, deliver, last_seq, max, |_| true).await? else {
        return Ok(CatchUp::Resync("too many events were missed"));
    };
    if missed.iter().any(|(_, h)| h.revoke.as_deref().is_some_and(|r| r == "*" || r == me)) {
        // The client was out of the room for a while since.
        return Ok(CatchUp::Resync("membership changed since lastSeq"));
    }
    let fields = RoomFields::of(room);
    let user_on = st.subjects.user_events(&me);
    let about_room = |payload: &[u8]| data_of::<RoomFields>(payload).is_some_and(|d| d == fields);
    // A user's subject carries every room's: read further, keep this room's.
    let Some(own) = read(st, &events, &user_on, &user_on, deliver, last_seq, max * 10, about_room).await? else {
        return Ok(CatchUp::Resync("too many events were missed"));
    };
    missed.extend(own);
    missed.sort_by_key(|(o, _)| match o {
        Outbound::Event(e) => (e.head.seq.unwrap_or(0), e.head.part),
        _ => (0, 0),
    });
    if missed.len() as u64 > max {
        return Ok(CatchUp::Resync("too many events were missed"));
    }
    // Up to `CATCHUP_MAX_EVENTS` (more than a queue holds): waited on, so
    // a slow client slows its own join down instead of being closed for it.
    let mut sent = 0;
    for (out, _) in missed {
        if sink.tx.send(out).await.is_err() {
            break;
        }
        sent += 1;
    }
    Ok(CatchUp::Complete(sent))
}

/// The events on `published_on` from `deliver` with a seq after `last_seq`
/// that `keep` accepts, as the connection's frames on `followed`; `None`
/// when more than `limit` would have to be read.
#[allow(clippy::too_many_arguments)]
async fn read(
    st: &EdgeState,
    events: &async_nats::jetstream::stream::Stream,
    published_on: &str,
    followed: &str,
    deliver: consumer::DeliverPolicy,
    last_seq: u64,
    limit: u64,
    keep: impl Fn(&[u8]) -> bool,
) -> Result<Option<Vec<(Outbound, natter_shared::v1::event::EventHead)>>, String> {
    let Some(raw) = crate::core::events::read(events, published_on, deliver, limit).await? else {
        return Ok(None);
    };
    let shared: Arc<str> = Arc::from(followed);
    let mut out = Vec::with_capacity(raw.len());
    for payload in raw {
        if let Some((head, h)) = st.hub.head(published_on, &payload)
            && head.seq.is_some_and(|s| s > last_seq)
            && keep(&payload)
        {
            out.push((Outbound::Event(SharedEvent::new(shared.clone(), head, payload)), h));
        }
    }
    Ok(Some(out))
}
