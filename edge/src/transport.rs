//! The WebSocket plumbing both client protocols share. The read half has its
//! own task (fastwebsockets' `read_frame` is not cancel-safe, so it is never
//! raced in a `select!`) and hands whole messages to the protocol; the write
//! half is driven from one queue by the connection task, which also sends
//! "going away" on shutdown, "try again later" to a slow consumer and
//! "token expired" when the token that opened the connection runs out,
//! pings a client that has gone quiet and closes one that never answers,
//! gives up on a write the peer does not take within `WRITE_TIMEOUT`, and
//! reports what reached the user's device. What is ready at once goes to
//! the kernel in one write (see `gather`).

mod gather;

use crate::realtime::delivery::Deliveries;
use crate::realtime::hub::Head;
use crate::realtime::limits::close;
use crate::realtime::session::Next;
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead, WebSocketWrite};
use futures::FutureExt;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use natter_shared::ids::{RoomRef, UserId};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

pub type Io = TokioIo<Upgraded>;
pub type Reader = WebSocketRead<ReadHalf<Io>>;
pub type Writer = WebSocketWrite<gather::Gather<WriteHalf<Io>>>;

/// The halves of an upgraded connection: the reader for its task, the
/// writer for `write_loop`.
pub fn split(ws: WebSocket<Io>) -> (Reader, Writer) {
    ws.split(|io| {
        let (r, w) = tokio::io::split(io);
        (r, gather::Gather::new(w))
    })
}

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

/// Longest a single frame may take to be written: a peer that stops
/// reading (or vanished) holds the writer no longer than this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames already queued that are still written before a close.
const FLUSH_BEFORE_CLOSE: usize = 256;
/// Most frames, and bytes, that go to the kernel in one write.
const GATHER_FRAMES: usize = 64;
const GATHER_BYTES: usize = 64 * 1024;

/// When the reader last saw a frame (any: data, ping, pong, close), and
/// how many it saw, for the writer's keep-alive.
pub struct Liveness {
    start: Instant,
    last_ms: AtomicU64,
    frames: AtomicU64,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness { start: Instant::now(), last_ms: AtomicU64::new(0), frames: AtomicU64::new(0) }
    }
}

impl Liveness {
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.frames.fetch_add(1, Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }
}

/// What ends a connection besides its peer and the server.
#[derive(Default)]
pub struct Deadlines {
    /// The token's expiry (plus leeway): the connection is closed with
    /// `close::TOKEN_EXPIRED` then.
    pub expires: Option<Instant>,
    /// Ping when nothing was read for this long; close with
    /// `close::PING_TIMEOUT` when nothing comes back within as long again.
    pub ping: Option<(Duration, Arc<Liveness>)>,
}

/// The instant `exp` (Unix seconds) plus the token leeway, on the runtime's clock.
pub fn expiry_instant(exp: u64) -> Instant {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let until = Duration::from_secs(exp.saturating_add(natter_shared::auth::LEEWAY_SECS)).saturating_sub(now);
    // Far enough away is "never" for a connection, and stays within the clock's range.
    Instant::now() + until.min(Duration::from_secs(400 * 24 * 3600))
}

async fn stop(ctl: &mpsc::Sender<Control>, code: u16, reason: &'static str) {
    let _ = ctl.send(Control::Close(code, reason)).await;
}

/// Reads whole messages (fragments joined, each kind within its size limit)
/// and hands them to `handler`, until the peer goes, a limit is broken or
/// the handler says to close. A close the server decides on is sent, then
/// what the client still sends is read (and dropped) for a moment: closing
/// a socket with unread bytes resets it, and the reset can destroy the
/// close frame (and its code) before the client reads it.
pub async fn read_messages(
    mut rx: Reader,
    ctl: mpsc::Sender<Control>,
    text_limit: usize,
    binary_limit: usize,
    handler: &mut impl Handler,
    alive: Option<&Liveness>,
) {
    if let Some((code, reason)) = read_until_close(&mut rx, &ctl, text_limit, binary_limit, handler, alive).await {
        stop(&ctl, code, reason).await;
        let mut drop_obligations = |_: Frame<'_>| async { Ok::<(), &'static str>(()) };
        let _ = tokio::time::timeout(LINGER, async {
            while let Ok(f) = rx.read_frame(&mut drop_obligations).await {
                if f.opcode == OpCode::Close {
                    break;
                }
            }
        })
        .await;
    }
}

/// How long a closing socket still reads what its client sends.
const LINGER: Duration = Duration::from_secs(1);

/// The loop of [`read_messages`]; the close to send, if the server decided on one.
async fn read_until_close(
    rx: &mut Reader,
    ctl: &mpsc::Sender<Control>,
    text_limit: usize,
    binary_limit: usize,
    handler: &mut impl Handler,
    alive: Option<&Liveness>,
) -> Option<(u16, &'static str)> {
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
            Err(WebSocketError::FrameTooLarge) => return Some((close::TOO_BIG, "frame too large")),
            Err(WebSocketError::InvalidUTF8) => return Some((close::INVALID_DATA, "invalid UTF-8")),
            Err(WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => {
                return None;
            }
            Err(e) => {
                debug!(error = %e, "protocol error");
                return Some((close::PROTOCOL_ERROR, "protocol error"));
            }
        };
        if let Some(a) = alive {
            a.touch();
        }
        let whole = match (frame.opcode, partial.take()) {
            (OpCode::Close, _) => return None,
            (OpCode::Ping | OpCode::Pong, p) => {
                partial = p;
                continue;
            }
            (op @ (OpCode::Text | OpCode::Binary), None) if frame.payload.len() > limit(op) => {
                return Some((close::TOO_BIG, "message too large"));
            }
            (OpCode::Text | OpCode::Binary, None) if frame.fin => (frame.opcode, frame.payload.to_vec()),
            (OpCode::Text | OpCode::Binary, None) => {
                partial = Some((frame.opcode, frame.payload.to_vec()));
                continue;
            }
            (OpCode::Continuation, Some((op, mut buf))) => {
                if buf.len() + frame.payload.len() > limit(op) {
                    return Some((close::TOO_BIG, "message too large"));
                }
                buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    partial = Some((op, buf));
                    continue;
                }
                (op, buf)
            }
            _ => return Some((close::PROTOCOL_ERROR, "bad fragmentation")),
        };
        let msg = match whole {
            (OpCode::Text, bytes) => match String::from_utf8(bytes) {
                Ok(text) => Message::Text(text),
                Err(_) => return Some((close::INVALID_DATA, "invalid UTF-8")),
            },
            (_, bytes) => Message::Binary(bytes),
        };
        if let Next::Close(code, reason) = handler.on(msg).await {
            return Some((code, reason));
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

    /// Nothing on `subject` at or before `seq` is written any more.
    pub fn since(&mut self, subject: &Arc<str>, seq: u64) {
        let seen = self.last.entry(subject.clone()).or_insert((0, 0));
        *seen = (*seen).max((seq, u32::MAX));
    }

    /// `None` when the event was already written; otherwise whether writing
    /// it delivers a message.
    pub fn admit(&mut self, subject: &Arc<str>, head: &Head) -> Option<Option<Delivered>> {
        let Some(seq) = head.seq else { return Some(None) };
        let at = (seq, head.part);
        if head.room.is_some() {
            let seen = match self.last.get_mut(subject) {
                Some(seen) => seen,
                None => self.last.entry(subject.clone()).or_insert((0, 0)),
            };
            if at <= *seen {
                return None;
            }
            *seen = at;
        } else {
            let recent = match self.recent.get_mut(subject) {
                Some(r) => r,
                None => self.recent.entry(subject.clone()).or_default(),
            };
            if !recent.admit(at) {
                return None;
            }
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
    fn next(&mut self) -> impl Future<Output = Option<(Out, Option<Delivered>)>> + Send;
}

/// What a connection writes: a frame of its own, or a text frame whose
/// bytes every connection an event goes to shares (written from them, not
/// copied).
pub enum Out {
    Frame(Frame<'static>),
    Text(Bytes),
}

impl Out {
    fn is_close(&self) -> bool {
        matches!(self, Out::Frame(f) if f.opcode == OpCode::Close)
    }

    fn len(&self) -> usize {
        match self {
            Out::Frame(f) => f.payload.len(),
            Out::Text(b) => b.len(),
        }
    }
}

/// Adds `out` to what the next flush writes; false when it was not added
/// because a close frame already was (the only way adding fails: nothing
/// reaches the socket before the flush).
async fn put(tx: &mut Writer, out: Out) -> bool {
    let put = match out {
        Out::Frame(f) => tx.write_frame(f).await,
        Out::Text(b) => tx.write_frame(Frame::text(Payload::Borrowed(&b))).await,
    };
    put.is_ok()
}

/// Writes what was put within `WRITE_TIMEOUT`; false when the peer is gone
/// or does not take it.
async fn flush(tx: &mut Writer) -> bool {
    matches!(tokio::time::timeout(WRITE_TIMEOUT, tx.flush()).await, Ok(Ok(())))
}

/// Writes `frame` within `WRITE_TIMEOUT`; false when the peer is gone or
/// does not take it.
pub async fn write(tx: &mut Writer, frame: Frame<'_>) -> bool {
    tx.write_frame(frame).await.is_ok() && flush(tx).await
}

/// Puts what `source` has ready now, at most `frames` frames and about
/// `bytes` bytes, noting what each delivers in `reports`; true when a
/// close frame is held.
async fn put_ready(
    tx: &mut Writer,
    source: &mut impl Source,
    (frames, bytes): (usize, usize),
    reports: &mut Vec<Delivered>,
) -> bool {
    let mut held = 0;
    for _ in 0..frames {
        if held >= bytes {
            break;
        }
        let Some(Some((out, d))) = source.next().now_or_never() else { break };
        held += out.len();
        let closing = out.is_close();
        if !put(tx, out).await {
            return true;
        }
        reports.extend(d);
        if closing {
            return true;
        }
    }
    false
}

/// Writes frames from `ctl` (first) and `source`, in order, until the peer
/// goes, a close is sent, shutdown (`cancel`: "going away"), the queue
/// overflows (`overflow`: "try again later") or one of `deadlines` passes.
pub async fn write_loop(
    mut tx: Writer,
    mut source: impl Source,
    ctl: &mut mpsc::Receiver<Control>,
    cancel: &CancellationToken,
    overflow: &CancellationToken,
    deliveries: &Deliveries,
    deadlines: Deadlines,
) {
    let expires = tokio::time::sleep_until(deadlines.expires.unwrap_or_else(Instant::now));
    tokio::pin!(expires);
    let (every, alive) = match deadlines.ping {
        Some((every, alive)) => (every, Some(alive)),
        None => (Duration::from_secs(3600), None),
    };
    // Checked twice an interval: a silent peer is pinged after one interval
    // and closed after another without an answer.
    let mut pings = tokio::time::interval_at(Instant::now() + every / 2, every / 2);
    let mut pinged: Option<(Instant, u64)> = None;
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Made once, not per frame: each registers with its token when first
    // polled, and both end the loop.
    let cancelled = cancel.cancelled();
    let overflowed = overflow.cancelled();
    tokio::pin!(cancelled, overflowed);
    loop {
        // What the frames of this write deliver, reported once the kernel
        // has taken them.
        let mut reports: Vec<Delivered> = Vec::new();
        let mut more = false;
        let out: Out = tokio::select! {
            biased;
            _ = &mut cancelled => {
                put_ready(&mut tx, &mut source, (FLUSH_BEFORE_CLOSE, usize::MAX), &mut reports).await;
                Out::Frame(Frame::close(close::GOING_AWAY, b"server shutting down"))
            }
            _ = &mut overflowed => Out::Frame(Frame::close(close::TRY_AGAIN_LATER, b"slow consumer")),
            _ = &mut expires, if deadlines.expires.is_some() => {
                put_ready(&mut tx, &mut source, (FLUSH_BEFORE_CLOSE, usize::MAX), &mut reports).await;
                Out::Frame(Frame::close(close::TOKEN_EXPIRED, b"token expired"))
            }
            _ = pings.tick(), if alive.is_some() => {
                let Some(alive) = alive.as_ref() else { continue };
                match pinged {
                    // Nothing read since the ping.
                    Some((at, frames)) if alive.frames() == frames => {
                        if at.elapsed() < every {
                            continue;
                        }
                        debug!("no answer to pings");
                        Out::Frame(Frame::close(close::PING_TIMEOUT, b"no answer to pings"))
                    }
                    _ if alive.quiet_for() >= every => {
                        pinged = Some((Instant::now(), alive.frames()));
                        Out::Frame(Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"")))
                    }
                    _ => {
                        pinged = None;
                        continue;
                    }
                }
            }
            c = ctl.recv() => match c {
                Some(Control::Frame(op, payload)) => Out::Frame(Frame::new(true, op, None, Payload::Owned(payload))),
                Some(Control::Close(code, reason)) => Out::Frame(Frame::close(code, reason.as_bytes())),
                // The reader ended: the peer is gone.
                None => break,
            },
            o = source.next() => match o {
                Some((out, d)) => {
                    reports.extend(d);
                    more = true;
                    out
                }
                None => break,
            },
        };
        let (held, close) = (out.len(), out.is_close());
        let mut closing = !put(&mut tx, out).await || close;
        // What else is ready goes in the same write.
        if more && !closing {
            let room = (GATHER_FRAMES - 1, GATHER_BYTES.saturating_sub(held));
            closing = put_ready(&mut tx, &mut source, room, &mut reports).await;
        }
        if !flush(&mut tx).await {
            break;
        }
        for (user, room, seq) in reports {
            deliveries.report(user, room, seq);
        }
        if closing {
            break;
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

    #[test]
    fn a_join_with_last_seq_writes_nothing_at_or_before_it() {
        let mut g = EventGate::new(UserId(mongodb::bson::oid::ObjectId::new()));
        let room: Arc<str> = Arc::from("chat.*.conv.r");
        let r = Some(RoomRef::new(RoomKind::Conversation, "r"));
        g.since(&room, 117);
        let admitted: Vec<u64> =
            [62, 117, 118, 90, 119].into_iter().filter(|s| g.admit(&room, &head(*s, r.clone())).is_some()).collect();
        assert_eq!(admitted, [118, 119], "a republished older event is not written again");
        g.since(&room, 100);
        assert!(g.admit(&room, &head(120, r.clone())).is_some(), "an older mark moves nothing back");
    }
}
