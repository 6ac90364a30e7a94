//! One Engine.IO session: its transports (long-polling, WebSocket, the
//! upgrade from the first to the second), its heartbeat and its downlink.
//!
//! Everything the client sends goes, in order, to the session's Socket.IO
//! task through one bounded queue (a slow task slows the client down, it
//! never grows memory). Everything sent to the client (replies, events,
//! pings) is taken from one downlink by whichever transport is active: a
//! pending long-poll GET, or the WebSocket writer once the upgrade is done.

use super::socket;
use super::{EioError, Transport};
use crate::realtime::EdgeState;
use crate::realtime::hub::Outbound;
use crate::realtime::limits::{MAX_FRAME_BYTES, QUEUE_LEN, close};
use crate::realtime::session::Next;
use crate::transport::{self, Control, Delivered, EventGate, Io, Message, Out, Source};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use engineioxide_core::{OpenPacket, Packet, PacketParseError, ProtocolVersion, Sid, Str, TransportType};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket};
use futures::StreamExt;
use natter_shared::ids::UserId;
use natter_shared::v1::client::MAX_UPLOAD_HEADER;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug};

/// What the client sent, for the Socket.IO task.
pub enum Inbound {
    Text(Str),
    Binary(Bytes),
}

/// Most bytes one long-poll response carries (more waits for the next poll).
const MAX_POLL_BODY: usize = 1 << 20;
/// How often a poll in flight is ended with a noop while the client
/// finishes an upgrade (as Engine.IO's server does).
const UPGRADE_NOOP_EVERY: Duration = Duration::from_millis(100);
/// How long a client has to finish an upgrade it began (Engine.IO's
/// `upgradeTimeout`).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Client packets queued for the Socket.IO task before the client waits.
const INBOUND_LEN: usize = 32;
/// Largest polling body or binary packet before the CONNECT is accepted.
const UNAUTHENTICATED_PAYLOAD: u64 = 2 * MAX_FRAME_BYTES as u64;

/// Why a client packet was refused; either ends the session.
#[derive(Debug)]
enum Refusal {
    TooLarge,
    Bad,
}

pub struct Engine {
    pub sid: Sid,
    inbound: mpsc::Sender<Inbound>,
    /// Replies and events for the client; the session's sink sends here.
    pub out: mpsc::Sender<Outbound>,
    /// Engine.IO packets of our own (open, ping, noop).
    /// Boxed: a channel's first block holds 32 of its items for the
    /// session's whole life, and these are rare (pings, noops, a close).
    ctl: mpsc::UnboundedSender<Box<Packet>>,
    down: tokio::sync::Mutex<Downlink>,
    transport: Mutex<Transport>,
    upgrading: std::sync::atomic::AtomicBool,
    /// Set while a long-poll GET waits for something to send.
    poll_waiting: std::sync::atomic::AtomicBool,
    posting: tokio::sync::Mutex<()>,
    last_pong: Mutex<Instant>,
    pong: tokio::sync::Notify,
    /// The user, once the Socket.IO CONNECT is accepted.
    user: Arc<OnceLock<UserId>>,
    /// Held until then (see `Registry::reserve`).
    pending: Mutex<Option<super::PendingSlot>>,
    /// Cancelled when the session ends, for whatever reason (a child of
    /// the edge's shutdown token).
    pub closed: CancellationToken,
    /// Cancelled when the client cannot keep up with its events.
    pub overflow: CancellationToken,
    ping_interval: Duration,
    ping_timeout: Duration,
    /// Largest binary message or attachment (an upload).
    pub max_binary: usize,
    /// Largest polling request body (`maxPayload`): an upload in base64.
    max_payload: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    pub fn new(
        st: &EdgeState,
        transport: Transport,
        pending: super::PendingSlot,
    ) -> (Arc<Engine>, mpsc::Receiver<Inbound>) {
        let (in_tx, in_rx) = mpsc::channel(INBOUND_LEN);
        let (out_tx, out_rx) = mpsc::channel(QUEUE_LEN);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let user = Arc::new(OnceLock::new());
        let max_binary = st.config.max_file_size as usize + MAX_UPLOAD_HEADER;
        let engine = Engine {
            sid: Sid::new(),
            inbound: in_tx,
            out: out_tx,
            ctl: ctl_tx,
            down: tokio::sync::Mutex::new(Downlink { out: out_rx, ctl: ctl_rx, gate: None, user: user.clone() }),
            transport: Mutex::new(transport),
            upgrading: false.into(),
            poll_waiting: false.into(),
            posting: tokio::sync::Mutex::new(()),
            last_pong: Mutex::new(Instant::now()),
            pong: tokio::sync::Notify::new(),
            user,
            pending: Mutex::new(Some(pending)),
            closed: st.lifecycle.shutdown().child_token(),
            overflow: CancellationToken::new(),
            ping_interval: st.config.sio_ping_interval,
            ping_timeout: st.config.sio_ping_timeout,
            max_binary,
            max_payload: (max_binary.div_ceil(3) * 4 + MAX_FRAME_BYTES + 64) as u64,
        };
        (Arc::new(engine), in_rx)
    }

    pub fn open_packet_fields(&self) -> OpenPacket {
        let polling = *lock(&self.transport) == Transport::Polling;
        OpenPacket {
            sid: self.sid,
            upgrades: if polling { vec![TransportType::Websocket].into() } else { Vec::new().into() },
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_payload: self.max_payload,
        }
    }

    pub fn open_packet(&self) -> String {
        String::from(Packet::Open(self.open_packet_fields()))
    }

    /// Queues a reply before the socket has a session (a refused
    /// CONNECT); like a session's replies it never waits (see
    /// `Session::reply`).
    pub fn reply(&self, text: String) {
        crate::realtime::hub::offer(&self.out, &self.overflow, Outbound::Reply(text));
    }

    /// Queues an Engine.IO packet of our own.
    pub fn push(&self, p: Packet) {
        let _ = self.ctl.send(Box::new(p));
    }

    pub fn set_user(&self, user: UserId) {
        let _ = self.user.set(user);
        self.release_pending();
    }

    /// The session no longer counts as unauthenticated.
    pub fn release_pending(&self) {
        lock(&self.pending).take();
    }

    fn authenticated(&self) -> bool {
        self.user.get().is_some()
    }

    /// Largest polling body now: before CONNECT, no upload can be sent, so
    /// a body of text packets is all that is read.
    fn payload_limit(&self) -> u64 {
        if self.authenticated() { self.max_payload } else { UNAUTHENTICATED_PAYLOAD }
    }

    /// Ends the session: transports close, the Socket.IO task stops.
    pub fn close(&self) {
        self.closed.cancel();
    }

    fn transport(&self) -> Transport {
        *lock(&self.transport)
    }

    /// A packet from the client, on either transport.
    async fn receive(&self, p: Packet) -> Result<(), Refusal> {
        match p {
            Packet::Pong => {
                *lock(&self.last_pong) = Instant::now();
                self.pong.notify_one();
            }
            Packet::Message(s) if s.len() > MAX_FRAME_BYTES => return Err(Refusal::TooLarge),
            Packet::Message(s) => self.inbound.send(Inbound::Text(s)).await.map_err(|_| Refusal::Bad)?,
            Packet::Binary(b) if b.len() > self.max_binary => return Err(Refusal::TooLarge),
            Packet::Binary(b) if !self.authenticated() && b.len() as u64 > UNAUTHENTICATED_PAYLOAD => {
                return Err(Refusal::TooLarge);
            }
            Packet::Binary(b) => self.inbound.send(Inbound::Binary(b)).await.map_err(|_| Refusal::Bad)?,
            Packet::Close => self.close(),
            _ => return Err(Refusal::Bad),
        }
        Ok(())
    }

    /// A long-poll GET: waits for something to send (a ping comes every
    /// `pingInterval`), then sends all that is queued.
    pub async fn poll(&self, st: &EdgeState) -> Result<Response, EioError> {
        if self.transport() != Transport::Polling {
            return Err(EioError::BadRequest);
        }
        // Two polls at once break the protocol: Engine.IO closes the session.
        let Ok(mut down) = self.down.try_lock() else {
            self.close();
            return Err(EioError::BadRequest);
        };
        // What is queued goes first, also when the session is ending (the
        // packets that explain why).
        let first = match down.try_next() {
            Some(n) => Some(n),
            None => {
                /// Clears the flag however the wait ends (a client that
                /// gives up on its request drops this future).
                struct Waiting<'a>(&'a std::sync::atomic::AtomicBool);
                impl Drop for Waiting<'_> {
                    fn drop(&mut self) {
                        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                self.poll_waiting.store(true, std::sync::atomic::Ordering::SeqCst);
                let _waiting = Waiting(&self.poll_waiting);
                tokio::select! {
                    biased;
                    n = down.next() => n,
                    _ = self.closed.cancelled() => None,
                }
            }
        };
        let Some((p, d)) = first else { return Ok(text_response(String::from(Packet::Close))) };
        let mut body = String::from(p);
        let mut delivered: Vec<Delivered> = d.into_iter().collect();
        while body.len() < MAX_POLL_BODY {
            let Some((p, d)) = down.try_next() else { break };
            body.push('\u{1e}');
            body.push_str(&String::from(p));
            delivered.extend(d);
        }
        drop(down);
        for (user, room, seq) in delivered {
            st.deliveries.report(user, room, seq);
        }
        Ok(text_response(body))
    }

    /// A polling POST: the packets of its body, in order.
    pub async fn post(&self, body: Body) -> Result<Response, EioError> {
        if self.transport() != Transport::Polling {
            return Err(EioError::BadRequest);
        }
        let Ok(_one) = self.posting.try_lock() else {
            self.close();
            return Err(EioError::BadRequest);
        };
        let packets = engineioxide_core::payload::decoder(body, None, ProtocolVersion::V4, self.payload_limit());
        let mut packets = std::pin::pin!(packets);
        while let Some(p) = packets.next().await {
            let result = match p {
                Ok(p) => self.receive(p).await,
                Err(PacketParseError::PayloadTooLarge { .. }) => Err(Refusal::TooLarge),
                Err(_) => Err(Refusal::Bad),
            };
            match result {
                Ok(()) => {}
                Err(Refusal::TooLarge) => {
                    self.close();
                    return Ok((StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large").into_response());
                }
                Err(Refusal::Bad) => {
                    self.close();
                    return Err(EioError::BadRequest);
                }
            }
        }
        Ok(text_response("ok".to_string()))
    }

    /// A WebSocket for a session that polls so far: the upgrade.
    pub fn upgrade_to_websocket(self: Arc<Self>, st: Arc<EdgeState>, req: Request) -> Result<Response, EioError> {
        if self.transport() != Transport::Polling || self.upgrading.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(EioError::BadRequest);
        }
        Ok(websocket(self, st, req, true))
    }

    async fn run_ws(self: Arc<Self>, ws: WebSocket<Io>, st: Arc<EdgeState>, upgrade: bool) {
        let (rx, mut tx) = transport::split(ws);
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<Control>(8);
        let (up_tx, mut up_rx) = oneshot::channel::<()>();
        let mut inbound = WsInbound {
            engine: self.clone(),
            probing: upgrade,
            probed: false,
            upgraded: Some(up_tx),
            ctl: ctl_tx.clone(),
        };
        let max_binary = self.max_binary;
        let reader =
            st.lifecycle.spawn(
                async move {
                    transport::read_messages(rx, ctl_tx, MAX_FRAME_BYTES + 1, max_binary, &mut inbound, None).await
                }
                .in_current_span(),
            );
        if upgrade {
            // Until the client confirms the upgrade only the probe's answer
            // goes this way; the session's packets still go by polling.
            let mut probed = false;
            let give_up = tokio::time::sleep(UPGRADE_TIMEOUT);
            tokio::pin!(give_up);
            let mut noops = tokio::time::interval(UPGRADE_NOOP_EVERY);
            noops.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    // A close the reader asked for is written before its end
                    // (which drops `up_tx`) is noticed.
                    biased;
                    _ = self.closed.cancelled() => break,
                    c = ctl_rx.recv() => match c {
                        Some(Control::Frame(op, payload)) => {
                            if !transport::write(&mut tx, Frame::new(true, op, None, Payload::Owned(payload))).await {
                                break;
                            }
                            // The probe's answer (the only frame this way).
                            probed = true;
                        }
                        Some(Control::Close(code, reason)) => {
                            transport::write(&mut tx, Frame::close(code, reason.as_bytes())).await;
                            break;
                        }
                        None => break,
                    },
                    _ = &mut up_rx => break,
                    // The client finishes the upgrade once its poll in
                    // flight ends; a poll it sent before the probe's answer
                    // came would otherwise wait for the next ping.
                    _ = noops.tick(), if probed => {
                        if self.poll_waiting.load(std::sync::atomic::Ordering::SeqCst) {
                            self.push(Packet::Noop);
                        }
                    }
                    // The client never finished it: polling goes on. Under
                    // the transport's lock: an upgrade the reader took just
                    // now stands; after this, the reader refuses it.
                    _ = &mut give_up => {
                        let upgraded = {
                            let t = lock(&self.transport);
                            let upgraded = *t == Transport::Websocket;
                            if !upgraded {
                                self.upgrading.store(false, std::sync::atomic::Ordering::SeqCst);
                            }
                            upgraded
                        };
                        if !upgraded {
                            transport::write(&mut tx, Frame::close(close::POLICY_VIOLATION, b"upgrade timed out")).await;
                        }
                        break;
                    }
                }
            }
            if self.transport() != Transport::Websocket {
                // The probe failed or the session ended: polling goes on
                // (or stops with the session).
                self.upgrading.store(false, std::sync::atomic::Ordering::SeqCst);
                reader.abort();
                return;
            }
        }
        {
            let down = self.down.lock().await;
            let source = DownSource { down };
            // Engine.IO's heartbeat watches the peer; the Socket.IO task
            // ends the session when its token expires.
            let deadlines = transport::Deadlines::default();
            transport::write_loop(tx, source, &mut ctl_rx, &self.closed, &self.overflow, &st.deliveries, deadlines)
                .await;
        }
        self.close();
        let mut reader = reader;
        if tokio::time::timeout(Duration::from_secs(2), &mut reader).await.is_err() {
            reader.abort();
        }
    }
}

/// Engine.IO packets from a WebSocket: first the upgrade's probe (when the
/// session polled so far), then the session's packets.
struct WsInbound {
    engine: Arc<Engine>,
    probing: bool,
    probed: bool,
    upgraded: Option<oneshot::Sender<()>>,
    ctl: mpsc::Sender<Control>,
}

impl transport::Handler for WsInbound {
    async fn on(&mut self, m: Message) -> Next {
        let p = match m {
            Message::Text(t) => match Packet::parse(ProtocolVersion::V4, t) {
                Ok(p) => p,
                Err(_) => return Next::Close(close::PROTOCOL_ERROR, "bad Engine.IO packet"),
            },
            Message::Binary(b) => Packet::Binary(b.into()),
        };
        match (self.probing, p) {
            // One probe per upgrade: each answer also queues a packet for
            // the polling side.
            (true, Packet::PingUpgrade) if self.probed => {
                Next::Close(close::PROTOCOL_ERROR, "one upgrade probe per WebSocket")
            }
            (true, Packet::PingUpgrade) => {
                self.probed = true;
                // Polls in flight are then ended (`Engine::run_ws`).
                let _ = self.ctl.send(Control::Frame(OpCode::Text, b"3probe".to_vec())).await;
                Next::Continue
            }
            (true, Packet::Upgrade) => {
                self.probing = false;
                {
                    let mut t = lock(&self.engine.transport);
                    // Given up on (`Engine::run_ws`): too late.
                    if !self.engine.upgrading.load(std::sync::atomic::Ordering::SeqCst) {
                        return Next::Close(close::POLICY_VIOLATION, "upgrade timed out");
                    }
                    *t = Transport::Websocket;
                }
                if let Some(t) = self.upgraded.take() {
                    let _ = t.send(());
                }
                Next::Continue
            }
            (true, _) => Next::Close(close::PROTOCOL_ERROR, "expected the upgrade probe"),
            (false, p) => match self.engine.receive(p).await {
                Ok(()) => Next::Continue,
                Err(Refusal::TooLarge) => Next::Close(close::TOO_BIG, "message too large"),
                Err(Refusal::Bad) => Next::Close(close::PROTOCOL_ERROR, "bad Engine.IO packet"),
            },
        }
    }
}

/// Upgrades `req` and runs the WebSocket transport of `engine` on it.
pub fn websocket(engine: Arc<Engine>, st: Arc<EdgeState>, mut req: Request, upgrade: bool) -> Response {
    let (resp, fut) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(_) => return EioError::BadRequest.into_response(),
    };
    let tasks = st.lifecycle.clone();
    tasks.spawn(
        async move {
            match fut.await {
                Ok(ws) => engine.run_ws(ws, st, upgrade).await,
                Err(e) => {
                    debug!(error = %e, "upgrade failed");
                    if !upgrade {
                        engine.close();
                    }
                }
            }
        }
        .in_current_span(),
    );
    resp.map(Body::new)
}

pub fn text_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=UTF-8")], body).into_response()
}

/// Pings `interval` after the last pong; a client that does not answer
/// within `timeout` is gone (socket.io-client, for its part, gives up when
/// no ping comes within `interval + timeout`).
pub async fn heartbeat(engine: Arc<Engine>, interval: Duration, timeout: Duration) {
    // A polling client that lets its queue fill is closed here (on a
    // WebSocket the writer closes it with 1013).
    loop {
        tokio::select! {
            _ = engine.closed.cancelled() => return,
            _ = engine.overflow.cancelled(), if engine.transport() == Transport::Polling => {
                debug!(sid = %engine.sid, "polling client not keeping up");
                engine.close();
                return;
            }
            _ = tokio::time::sleep(interval) => {}
        }
        let sent = Instant::now();
        engine.push(Packet::Ping);
        let deadline = tokio::time::Instant::from_std(sent + timeout);
        loop {
            tokio::select! {
                _ = engine.closed.cancelled() => return,
                _ = engine.pong.notified() => {
                    if *lock(&engine.last_pong) >= sent {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    debug!(sid = %engine.sid, "ping timeout");
                    engine.close();
                    return;
                }
            }
        }
    }
}

/// Everything for the client, as Engine.IO packets: our own packets first,
/// then replies and events (each event at most once per subject).
struct Downlink {
    out: mpsc::Receiver<Outbound>,
    ctl: mpsc::UnboundedReceiver<Box<Packet>>,
    gate: Option<EventGate>,
    user: Arc<OnceLock<UserId>>,
}

impl Downlink {
    fn convert(&mut self, o: Outbound) -> Option<(Down, Option<Delivered>)> {
        match o {
            Outbound::Reply(s) => Some((Down::Packet(Packet::Message(s.into())), None)),
            Outbound::Local(s) => {
                socket::event_from_native(s.as_bytes()).map(|m| (Down::Packet(Packet::Message(m)), None))
            }
            Outbound::Event(e) => {
                if self.gate.is_none() {
                    self.gate = Some(EventGate::new(*self.user.get()?));
                }
                let delivered = self.gate.as_mut()?.admit(&e.subject, &e.head)?;
                // Encoded by the first Socket.IO connection it reaches.
                let text = e.encoded(|native| {
                    let m = socket::event_from_native(native)?;
                    Some(Bytes::from(String::from(Packet::Message(m))))
                })?;
                Some((Down::Text(text), delivered))
            }
            Outbound::Since { subject, seq } => {
                if self.gate.is_none() {
                    self.gate = Some(EventGate::new(*self.user.get()?));
                }
                self.gate.as_mut()?.since(&subject, seq);
                None
            }
        }
    }

    async fn next(&mut self) -> Option<(Down, Option<Delivered>)> {
        loop {
            let o = tokio::select! {
                biased;
                p = self.ctl.recv() => return p.map(|p| (Down::Packet(*p), None)),
                o = self.out.recv() => o?,
            };
            if let Some(x) = self.convert(o) {
                return Some(x);
            }
        }
    }

    fn try_next(&mut self) -> Option<(Down, Option<Delivered>)> {
        if let Ok(p) = self.ctl.try_recv() {
            return Some((Down::Packet(*p), None));
        }
        loop {
            let o = self.out.try_recv().ok()?;
            if let Some(x) = self.convert(o) {
                return Some(x);
            }
        }
    }
}

/// The downlink as WebSocket text frames.
struct DownSource<'a> {
    down: tokio::sync::MutexGuard<'a, Downlink>,
}

impl Source for DownSource<'_> {
    async fn next(&mut self) -> Option<(Out, Option<Delivered>)> {
        let (p, d) = self.down.next().await?;
        Some((
            match p {
                Down::Packet(p) => Out::Frame(Frame::text(Payload::Owned(String::from(p).into_bytes()))),
                Down::Text(b) => Out::Text(b),
            },
            d,
        ))
    }
}

/// An Engine.IO packet to send, or one already encoded (an event's text,
/// shared by every connection it goes to).
enum Down {
    Packet(Packet),
    Text(Bytes),
}

impl From<Down> for String {
    fn from(d: Down) -> String {
        match d {
            Down::Packet(p) => String::from(p),
            Down::Text(b) => String::from_utf8_lossy(&b).into_owned(),
        }
    }
}
