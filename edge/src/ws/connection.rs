//! The life of one socket. The read half has its own task (fastwebsockets'
//! `read_frame` is not cancel-safe, so it is never raced in a `select!`); the
//! write half is driven from one queue by the connection task, which also
//! sends "going away" on shutdown and "try again later" to a slow consumer.

use super::limits::{MAX_FRAME_BYTES, QUEUE_LEN, close};
use super::session::{Next, Session};
use crate::delivery::Deliveries;
use crate::hub::{Outbound, Sink};
use crate::state::EdgeState;
use crate::typing::TypingState;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError, WebSocketRead};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use natter_shared::auth::Identity;
use natter_shared::ids::UserId;
use natter_shared::v1::client::MAX_UPLOAD_HEADER;
use natter_shared::v1::command::RequestMeta;
use natter_shared::v1::server::{Ready, to_text};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

type Io = TokioIo<Upgraded>;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// Frames the reader asks the writer to send.
enum Control {
    /// A frame the protocol obliges us to send (pong, close echo).
    Obligated(OpCode, Vec<u8>),
    /// Close with a code, then stop.
    Close(u16, &'static str),
}

pub async fn run(ws: WebSocket<Io>, who: Identity, meta: RequestMeta, st: Arc<EdgeState>, cancel: CancellationToken) {
    let conn = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let span = info_span!("ws", conn, user = %who.user);
    async move {
        debug!("connected");
        let (mut rx, tx) = ws.split(tokio::io::split);
        // Binary messages carry uploads, up to MAX_FILE_SIZE plus a header;
        // text frames stay within MAX_FRAME_BYTES (checked per message).
        let max_binary = st.config.max_file_size as usize + 4 + MAX_UPLOAD_HEADER;
        rx.set_max_message_size(max_binary.max(MAX_FRAME_BYTES) + 1);
        rx.set_auto_close(true);
        rx.set_auto_pong(true);
        let (out_tx, out_rx) = mpsc::channel::<Outbound>(QUEUE_LEN);
        let (ctl_tx, ctl_rx) = mpsc::channel::<Control>(8);
        let overflow = CancellationToken::new();
        let followed = Arc::new(Mutex::new(HashSet::new()));
        let sink =
            Sink { conn, user: who.user, tx: out_tx.clone(), overflow: overflow.clone(), followed: followed.clone() };
        let _ =
            out_tx.send(Outbound::Text(to_text("ready", None, Ready { user_id: &who.user.hex(), protocol: 1 }))).await;
        // The user's own subject: receipts for their messages, membership
        // changes, refusals; then presence.
        let own = st.subjects.user_events(&who.user.hex());
        if let Err(e) = st.hub.follow(&own, sink.clone()).await {
            tracing::warn!(error = %e, "cannot follow the user's subject");
        }
        st.presence.connect(&sink).await;
        let typing = Arc::new(TypingState::default());
        let session = Session::new(st.clone(), who.clone(), sink, typing.clone(), meta);
        let reader = tokio::spawn(read_loop(rx, session, ctl_tx, max_binary).in_current_span());
        drop(out_tx);
        let writer = Writer { user: who.user, deliveries: st.deliveries.clone() };
        writer.run(tx, out_rx, ctl_rx, &cancel, &overflow).await;
        // The writer is done (peer gone, close sent, or shutdown): give the
        // reader a moment to see the close, then stop it.
        let mut reader = reader;
        if tokio::time::timeout(Duration::from_secs(2), &mut reader).await.is_err() {
            reader.abort();
        }
        typing.stop_all(&st, &who).await;
        let subjects: Vec<String> = followed.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        for s in subjects {
            st.hub.unfollow(&s, conn).await;
        }
        st.presence.disconnect(who.user, conn).await;
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

async fn read_loop(
    mut rx: WebSocketRead<ReadHalf<Io>>,
    mut session: Session,
    ctl: mpsc::Sender<Control>,
    max_binary: usize,
) {
    let limit = |op: OpCode| if op == OpCode::Binary { max_binary } else { MAX_FRAME_BYTES };
    let obligated = ctl.clone();
    let mut send_fn = move |f: Frame<'_>| {
        let tx = obligated.clone();
        let owned = (f.opcode, f.payload.to_vec());
        async move { tx.send(Control::Obligated(owned.0, owned.1)).await.map_err(|_| "writer gone") }
    };
    // Fragments of one message, bounded by MAX_FRAME_BYTES in total.
    let mut partial: Option<(OpCode, Vec<u8>)> = None;
    loop {
        let frame = match rx.read_frame(&mut send_fn).await {
            Ok(f) => f,
            Err(WebSocketError::FrameTooLarge) => {
                let _ = ctl.send(Control::Close(close::TOO_BIG, "frame too large")).await;
                return;
            }
            Err(WebSocketError::ConnectionClosed | WebSocketError::UnexpectedEOF | WebSocketError::IoError(_)) => {
                return;
            }
            Err(e) => {
                debug!(error = %e, "protocol error");
                let _ = ctl.send(Control::Close(close::PROTOCOL_ERROR, "protocol error")).await;
                return;
            }
        };
        let whole = match (frame.opcode, partial.take()) {
            (OpCode::Close, _) => return,
            (OpCode::Ping | OpCode::Pong, p) => {
                partial = p;
                continue;
            }
            (op @ (OpCode::Text | OpCode::Binary), None) if frame.payload.len() > limit(op) => {
                let _ = ctl.send(Control::Close(close::TOO_BIG, "message too large")).await;
                return;
            }
            (OpCode::Text | OpCode::Binary, None) if frame.fin => (frame.opcode, frame.payload.to_vec()),
            (OpCode::Text | OpCode::Binary, None) => {
                partial = Some((frame.opcode, frame.payload.to_vec()));
                continue;
            }
            (OpCode::Continuation, Some((op, mut buf))) => {
                if buf.len() + frame.payload.len() > limit(op) {
                    let _ = ctl.send(Control::Close(close::TOO_BIG, "message too large")).await;
                    return;
                }
                buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    partial = Some((op, buf));
                    continue;
                }
                (op, buf)
            }
            _ => {
                let _ = ctl.send(Control::Close(close::PROTOCOL_ERROR, "bad fragmentation")).await;
                return;
            }
        };
        let next = match whole {
            (OpCode::Text, bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => session.text(text).await,
                Err(_) => {
                    let _ = ctl.send(Control::Close(close::INVALID_DATA, "invalid UTF-8")).await;
                    return;
                }
            },
            (_, bytes) => session.binary(bytes).await,
        };
        if let Next::Close(reason) = next {
            let _ = ctl.send(Control::Close(close::POLICY_VIOLATION, reason)).await;
            return;
        }
    }
}

/// The write half's owner: frames from the queue, in order, each event at
/// most once per subject; reports what reached the user's device.
struct Writer {
    user: UserId,
    deliveries: Deliveries,
}

impl Writer {
    async fn run(
        self,
        mut tx: fastwebsockets::WebSocketWrite<WriteHalf<Io>>,
        mut out: mpsc::Receiver<Outbound>,
        mut ctl: mpsc::Receiver<Control>,
        cancel: &CancellationToken,
        overflow: &CancellationToken,
    ) {
        let mut last: HashMap<Arc<str>, (u64, u32)> = HashMap::new();
        let me = self.user.hex();
        loop {
            let mut delivered = None;
            let frame: Frame<'static> = tokio::select! {
                biased;
                _ = cancel.cancelled() => Frame::close(close::GOING_AWAY, b"server shutting down"),
                _ = overflow.cancelled() => Frame::close(close::TRY_AGAIN_LATER, b"slow consumer"),
                c = ctl.recv() => match c {
                    Some(Control::Obligated(op, payload)) => Frame::new(true, op, None, Payload::Owned(payload)),
                    Some(Control::Close(code, reason)) => Frame::close(code, reason.as_bytes()),
                    // The reader ended: the peer is gone.
                    None => break,
                },
                o = out.recv() => match o {
                    Some(Outbound::Text(s)) => Frame::text(Payload::Owned(s.into_bytes())),
                    Some(Outbound::Event { subject, head, payload }) => {
                        if let Some(seq) = head.seq {
                            let at = (seq, head.part);
                            let seen = last.entry(subject).or_insert((0, 0));
                            if at <= *seen {
                                continue;
                            }
                            *seen = at;
                            if head.kind == "message_received" && head.from.as_deref() != Some(me.as_str()) {
                                delivered = head.room.clone().map(|r| (r, seq));
                            }
                        }
                        Frame::text(Payload::Owned(payload.to_vec()))
                    }
                    None => break,
                },
            };
            let closing = frame.opcode == OpCode::Close;
            if tx.write_frame(frame).await.is_err() || closing {
                break;
            }
            if let Some((room, seq)) = delivered {
                self.deliveries.report(self.user, room, seq);
            }
        }
    }
}
