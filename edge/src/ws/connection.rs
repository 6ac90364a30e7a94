//! The life of one socket on `/ws`.

use super::native::Native;
use crate::realtime::EdgeState;
use crate::realtime::hub::Outbound;
use crate::realtime::limits::{MAX_FRAME_BYTES, QUEUE_LEN};
use crate::realtime::session::{CloseOnDrop, Session, next_conn};
use crate::transport::{self, Control, Deadlines, Delivered, EventGate, Io, Liveness, Out, Source};
use fastwebsockets::{Frame, Payload, WebSocket};
use natter_shared::auth::Verified;
use natter_shared::v1::client::MAX_UPLOAD_HEADER;
use natter_shared::v1::command::RequestMeta;
use natter_shared::v1::server::{Ready, to_text};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

pub async fn run(ws: WebSocket<Io>, token: Verified, meta: RequestMeta, st: Arc<EdgeState>, cancel: CancellationToken) {
    let who = token.who;
    let conn = next_conn();
    let span = info_span!("ws", conn, user = %who.user);
    async move {
        debug!("connected");
        let (rx, tx) = transport::split(ws);
        // Binary messages carry uploads, up to MAX_FILE_SIZE plus a header;
        // text frames stay within MAX_FRAME_BYTES.
        let max_binary = st.config.max_file_size as usize + 4 + MAX_UPLOAD_HEADER;
        let (out_tx, out_rx) = mpsc::channel::<Outbound>(QUEUE_LEN);
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Control>(8);
        let overflow = CancellationToken::new();
        let _ =
            out_tx.send(Outbound::Reply(to_text("ready", None, Ready { user_id: &who.user.hex(), protocol: 1 }))).await;
        let session = Box::pin(Session::open(st.clone(), who.clone(), meta, conn, out_tx, overflow.clone())).await;
        let closer = CloseOnDrop::new(session.closer());
        let alive = Arc::new(Liveness::default());
        let reader_alive = alive.clone();
        let reader = st.lifecycle.spawn(
            async move {
                let mut native = Native(session);
                let alive = Some(&*reader_alive);
                transport::read_messages(rx, ctl_tx, MAX_FRAME_BYTES, max_binary, &mut native, alive).await;
            }
            .in_current_span(),
        );
        let source = NativeSource { out: out_rx, gate: EventGate::new(who.user) };
        let deadlines = Deadlines {
            expires: Some(transport::expiry_instant(token.expires_at)),
            ping: Some((st.config.ws_ping_interval, alive)),
        };
        transport::write_loop(tx, source, &mut ctl_rx, &cancel, &overflow, &st.deliveries, deadlines).await;
        // The writer is done (peer gone, close sent, or shutdown): give the
        // reader a moment to see the close, then stop it.
        let mut reader = reader;
        if tokio::time::timeout(Duration::from_secs(2), &mut reader).await.is_err() {
            reader.abort();
        }
        Box::pin(closer.close()).await;
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// Replies and events as native text frames.
struct NativeSource {
    out: mpsc::Receiver<Outbound>,
    gate: EventGate,
}

impl Source for NativeSource {
    async fn next(&mut self) -> Option<(Out, Option<Delivered>)> {
        loop {
            return Some(match self.out.recv().await? {
                Outbound::Reply(s) | Outbound::Local(s) => {
                    (Out::Frame(Frame::text(Payload::Owned(s.into_bytes()))), None)
                }
                // The payload as published, the same bytes for every socket.
                Outbound::Event(e) => match self.gate.admit(&e.subject, &e.head) {
                    Some(d) => (Out::Text(e.payload.clone()), d),
                    None => continue,
                },
                Outbound::Since { subject, seq } => {
                    self.gate.since(&subject, seq);
                    continue;
                }
            });
        }
    }
}
