//! The WebSocket plumbing both client protocols share. The read half has its
//! own task (fastwebsockets' `read_frame` is not cancel-safe, so it is never
//! raced in a `select!`) and hands whole messages to the protocol; the write
//! half is driven from one queue by the connection task, which also sends
//! "going away" on shutdown and "try again later" to a slow consumer, and
//! reports what reached the user's device.

use crate::delivery::Deliveries;
use crate::hub::Head;
use crate::session::Next;
use crate::ws::limits::close;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError, WebSocketRead, WebSocketWrite};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use natter_shared::ids::{RoomRef, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub type Io = TokioIo<Upgraded>;
pub type Reader = WebSocketRead<ReadHalf<Io>>;
pub type Writer = WebSocketWrite<WriteHalf<Io>>;

/// Frames the reader (or the protocol) asks the writer to send.
pub enum Control {
    /// A frame the protocol obliges us to send (pong, close echo, probe).
    Frame(OpCode, Vec<u8>),
    /// Close with a code, then stop.
    Close(u16, &'static str),
}

/// A whole message from the client.
pub enum Message {
    Text(String),
    Binary(Vec<u8>),
}

/// What a protocol does with each whole message.
pub trait Handler: Send {
    fn on(&mut self, m: Message) -> impl Future<Output = Next> + Send;
}

async fn stop(ctl: &mpsc::Sender<Control>, code: u16, reason: &'static str) {
    let _ = ctl.send(Control::Close(code, reason)).await;
}

/// Reads whole messages (fragments joined, each kind within its size limit)
/// and hands them to `handler`, until the peer goes, a limit is broken or
/// the handler says to close.
pub async fn read_messages(
    mut rx: Reader,
    ctl: mpsc::Sender<Control>,
    text_limit: usize,
    binary_limit: usize,
    handler: &mut impl Handler,
) {
    rx.set_max_message_size(text_limit.max(binary_limit) + 1);
    rx.set_auto_close(true);
    rx.set_auto_pong(true);
    let limit = |op: OpCode| if op == OpCode::Binary { binary_limit } else { text_limit };
    let obligated = ctl.clone();
    let mut send_fn = move |f: Frame<'_>| {
        let tx = obligated.clone();
        let owned = (f.opcode, f.payload.to_vec());
        async move { tx.send(Control::Frame(owned.0, owned.1)).await.map_err(|_| "writer gone") }
    };
    // Fragments of one message, bounded by the limit in total.
    let mut partial: Option<(OpCode, Vec<u8>)> = None;
    loop {
        let frame = match rx.read_frame(&mut send_fn).await {
            Ok(f) => f,
            Err(WebSocketError::FrameTooLarge) => return stop(&ctl, close::TOO_BIG, "frame too large").await,
            Err(WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => {
                return;
            }
            Err(e) => {
                debug!(error = %e, "protocol error");
                return stop(&ctl, close::PROTOCOL_ERROR, "protocol error").await;
            }
        };
        let whole = match (frame.opcode, partial.take()) {
            (OpCode::Close, _) => return,
            (OpCode::Ping | OpCode::Pong, p) => {
                partial = p;
                continue;
            }
            (op @ (OpCode::Text | OpCode::Binary), None) if frame.payload.len() > limit(op) => {
                return stop(&ctl, close::TOO_BIG, "message too large").await;
            }
            (OpCode::Text | OpCode::Binary, None) if frame.fin => (frame.opcode, frame.payload.to_vec()),
            (OpCode::Text | OpCode::Binary, None) => {
                partial = Some((frame.opcode, frame.payload.to_vec()));
                continue;
            }
            (OpCode::Continuation, Some((op, mut buf))) => {
                if buf.len() + frame.payload.len() > limit(op) {
                    return stop(&ctl, close::TOO_BIG, "message too large").await;
                }
                buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    partial = Some((op, buf));
                    continue;
                }
                (op, buf)
            }
            _ => return stop(&ctl, close::PROTOCOL_ERROR, "bad fragmentation").await,
        };
        let msg = match whole {
            (OpCode::Text, bytes) => match String::from_utf8(bytes) {
                Ok(text) => Message::Text(text),
                Err(_) => return stop(&ctl, close::INVALID_DATA, "invalid UTF-8").await,
            },
            (_, bytes) => Message::Binary(bytes),
        };
        if let Next::Close(code, reason) = handler.on(msg).await {
            return stop(&ctl, code, reason).await;
        }
    }
}

/// A message (its room and seq) written to a recipient's device.
pub type Delivered = (UserId, RoomRef, u64);

/// Decides which events reach a connection: each `(seq, part)` at most once
/// per subject (an edge may see an event twice around a reconnect of its
/// subscription, and a catch-up overlaps the live events), and notes
/// messages from others as delivered. A room's events come in seq order, so
/// the last one written is enough to know; a user's subject mixes rooms
/// applied by different workers, so there the recent ones are remembered.
pub struct EventGate {
    user: UserId,
    me: String,
    last: HashMap<Arc<str>, (u64, u32)>,
    recent: HashMap<Arc<str>, Recent>,
}

/// The last few `(seq, part)` seen on a subject whose seqs are not ordered.
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<(u64, u32)>,
    seen: std::collections::HashSet<(u64, u32)>,
}

const RECENT: usize = 4096;

impl Recent {
    /// False when `at` was seen.
    fn admit(&mut self, at: (u64, u32)) -> bool {
        if !self.seen.insert(at) {
            return false;
        }
        self.order.push_back(at);
        if self.order.len() > RECENT
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

impl EventGate {
    pub fn new(me: UserId) -> Self {
        EventGate { user: me, me: me.hex(), last: HashMap::new(), recent: HashMap::new() }
    }

    /// `None` when the event was already written; otherwise whether writing
    /// it delivers a message.
    pub fn admit(&mut self, subject: &Arc<str>, head: &Head) -> Option<Option<Delivered>> {
        let Some(seq) = head.seq else { return Some(None) };
        let at = (seq, head.part);
        if head.room.is_some() {
            let seen = self.last.entry(subject.clone()).or_insert((0, 0));
            if at <= *seen {
                return None;
            }
            *seen = at;
        } else if !self.recent.entry(subject.clone()).or_default().admit(at) {
            return None;
        }
        let from_other = head.from.as_deref() != Some(self.me.as_str());
        Some(
            (head.kind == "message_received" && from_other)
                .then(|| head.room.clone().map(|r| (self.user, r, seq)))
                .flatten(),
        )
    }
}

/// Where the writer takes its frames from.
pub trait Source {
    /// The next frame to write and what it delivers; `None` when the
    /// connection has nothing more to send.
    fn next(&mut self) -> impl Future<Output = Option<(Frame<'static>, Option<Delivered>)>> + Send;
}

/// Writes frames from `ctl` (first) and `source`, in order, until the peer
/// goes, a close is sent, shutdown (`cancel`: "going away") or the queue
/// overflows (`overflow`: "try again later").
pub async fn write_loop(
    mut tx: Writer,
    mut source: impl Source,
    ctl: &mut mpsc::Receiver<Control>,
    cancel: &CancellationToken,
    overflow: &CancellationToken,
    deliveries: &Deliveries,
) {
    loop {
        let mut delivered = None;
        let frame: Frame<'static> = tokio::select! {
            biased;
            _ = cancel.cancelled() => Frame::close(close::GOING_AWAY, b"server shutting down"),
            _ = overflow.cancelled() => Frame::close(close::TRY_AGAIN_LATER, b"slow consumer"),
            c = ctl.recv() => match c {
                Some(Control::Frame(op, payload)) => Frame::new(true, op, None, Payload::Owned(payload)),
                Some(Control::Close(code, reason)) => Frame::close(code, reason.as_bytes()),
                // The reader ended: the peer is gone.
                None => break,
            },
            o = source.next() => match o {
                Some((frame, d)) => {
                    delivered = d;
                    frame
                }
                None => break,
            },
        };
        let closing = frame.opcode == OpCode::Close;
        if tx.write_frame(frame).await.is_err() || closing {
            break;
        }
        if let Some((user, room, seq)) = delivered {
            deliveries.report(user, room, seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_shared::ids::{RoomKind, RoomRef};

    fn head(seq: u64, room: Option<RoomRef>) -> Head {
        Head { kind: "message_read".into(), seq: Some(seq), part: 0, from: None, room }
    }

    #[test]
    fn room_events_once_in_order_user_events_once_in_any_order() {
        let mut g = EventGate::new(UserId(mongodb::bson::oid::ObjectId::new()));
        let room: Arc<str> = Arc::from("chat.*.conv.r");
        let r = Some(RoomRef::new(RoomKind::Conversation, "r"));
        let admitted: Vec<u64> =
            [1, 2, 2, 5, 3, 6].into_iter().filter(|s| g.admit(&room, &head(*s, r.clone())).is_some()).collect();
        assert_eq!(admitted, [1, 2, 5, 6]);
        let user: Arc<str> = Arc::from("chat.evt.user.u");
        let admitted: Vec<u64> =
            [9, 4, 9, 7, 4, 12].into_iter().filter(|s| g.admit(&user, &head(*s, None)).is_some()).collect();
        assert_eq!(admitted, [9, 4, 7, 12], "other rooms' older seqs still pass, repeats do not");
    }
}
