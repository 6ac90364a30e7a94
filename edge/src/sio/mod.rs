//! Socket.IO v4 at `/socket.io/`: Engine.IO protocol 4 (handshake,
//! heartbeats, HTTP long-polling, WebSocket, the upgrade from one to the
//! other) carrying Socket.IO protocol 5 (the default namespace, `auth` in
//! CONNECT, events, acknowledgements, binary attachments), so that a stock
//! `socket.io-client` front end connects unchanged.
//!
//! Packets are encoded and decoded by `engineioxide-core` (Engine.IO
//! packets, polling payloads) and `socketioxide-parser-common` (Socket.IO
//! packets, binary attachments): the codec crates of socketioxide, which
//! carry no transport and no adapter. Transports, queues and fan-out are the
//! edge's own: a socket's WebSocket is fastwebsockets, its queue and NATS
//! subscriptions are those of the native protocol, and its requests go
//! through the same [`Session`](crate::realtime::session::Session).
//!
//! Long-polling keeps a session's state on the edge that created it: behind
//! several edges the load balancer must route a session's requests to one
//! edge (sticky sessions). A request for a session this edge does not know
//! gets Engine.IO's `Session ID unknown` error.

mod engine;
mod socket;

use crate::realtime::EdgeState;
use crate::token;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
pub use engine::Engine;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Engine.IO's error codes, answered as `{"code": n, "message": ...}` with
/// status 400 (403 for `Forbidden`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EioError {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
    /// Too many sessions not yet authenticated, from this address or in
    /// all (429, Engine.IO's "Bad request" code): try again later.
    TooManySessions = 103,
}

impl EioError {
    fn code(self) -> u8 {
        match self {
            EioError::TooManySessions => EioError::BadRequest as u8,
            e => e as u8,
        }
    }

    fn message(self) -> &'static str {
        match self {
            EioError::TooManySessions => "Too many pending sessions",
            EioError::UnknownTransport => "Transport unknown",
            EioError::UnknownSid => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::Forbidden => "Forbidden",
            EioError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }
}

impl IntoResponse for EioError {
    fn into_response(self) -> Response {
        let status = match self {
            EioError::Forbidden => StatusCode::FORBIDDEN,
            EioError::TooManySessions => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        // Engine.IO's own error body: a numeric code and its message.
        #[derive(serde::Serialize)]
        struct Body {
            code: u8,
            message: &'static str,
        }
        (status, axum::Json(Body { code: self.code(), message: self.message() })).into_response()
    }
}

/// The Engine.IO sessions this edge holds.
#[derive(Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Arc<Engine>>>,
    pending: Arc<Mutex<Pending>>,
}

/// Sessions not yet authenticated, in all and per client address.
#[derive(Default)]
struct Pending {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// A session's place among the unauthenticated ones, given back when it
/// authenticates or ends.
pub struct PendingSlot {
    counts: Arc<Mutex<Pending>>,
    ip: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut p = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        p.total = p.total.saturating_sub(1);
        if let Some(n) = p.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                p.by_ip.remove(&self.ip);
            }
        }
    }
}

impl Registry {
    /// A place for a new unauthenticated session from `ip`, unless `ip`
    /// holds `per_ip` of them or the edge `max`.
    fn reserve(&self, ip: IpAddr, per_ip: usize, max: usize) -> Option<PendingSlot> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mine = p.by_ip.get(&ip).copied().unwrap_or(0);
        if mine >= per_ip || p.total >= max {
            return None;
        }
        p.total += 1;
        *p.by_ip.entry(ip).or_default() += 1;
        Some(PendingSlot { counts: self.pending.clone(), ip })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Engine>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, sid: &str) -> Option<Arc<Engine>> {
        self.lock().get(sid).cloned()
    }

    fn insert(&self, engine: Arc<Engine>) {
        self.lock().insert(engine.sid.to_string(), engine);
    }

    fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }
}

/// The query of an Engine.IO request.
#[derive(Debug, Default)]
struct Query {
    eio: Option<String>,
    transport: Option<String>,
    sid: Option<String>,
}

impl Query {
    fn parse(q: Option<&str>) -> Query {
        let mut out = Query::default();
        for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "EIO" => out.eio = Some(v.into_owned()),
                "transport" => out.transport = Some(v.into_owned()),
                "sid" => out.sid = Some(v.into_owned()),
                _ => {}
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

/// The Socket.IO routes, with the sessions they hold (this protocol's own
/// state, beside the edge's).
pub fn router() -> axum::Router<Arc<EdgeState>> {
    axum::Router::new()
        .route("/socket.io/", axum::routing::any(handle))
        .route("/socket.io", axum::routing::any(handle))
        .layer(axum::Extension(Arc::new(Registry::default())))
}

async fn handle(
    State(st): State<Arc<EdgeState>>,
    axum::Extension(sessions): axum::Extension<Arc<Registry>>,
    req: Request,
) -> Response {
    match route(st, sessions, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(st: Arc<EdgeState>, sessions: Arc<Registry>, req: Request) -> Result<Response, EioError> {
    let q = Query::parse(req.uri().query());
    if q.eio.as_deref() != Some("4") {
        return Err(EioError::UnsupportedProtocolVersion);
    }
    let transport = match q.transport.as_deref() {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::Websocket,
        _ => return Err(EioError::UnknownTransport),
    };
    if !crate::meta::origin_allowed(&st.config.frontend_urls, req.headers()) {
        return Err(EioError::Forbidden);
    }
    let is_upgrade = fastwebsockets::upgrade::is_upgrade_request(&req);
    match (q.sid, req.method().clone(), transport) {
        (None, Method::GET, Transport::Polling) => {
            let engine = open(&st, &sessions, &req, Transport::Polling)?;
            Ok(engine::text_response(engine.open_packet()))
        }
        (None, Method::GET, Transport::Websocket) if is_upgrade => {
            let engine = open(&st, &sessions, &req, Transport::Websocket)?;
            engine.push(engineioxide_core::Packet::Open(engine.open_packet_fields()));
            Ok(engine::websocket(engine, st, req, false))
        }
        (None, Method::GET, Transport::Websocket) => Err(EioError::BadRequest),
        (None, _, _) => Err(EioError::BadHandshakeMethod),
        (Some(sid), method, transport) => {
            let engine = sessions.get(&sid).ok_or(EioError::UnknownSid)?;
            match (method, transport) {
                (Method::GET, Transport::Polling) => engine.poll(&st).await,
                (Method::POST, Transport::Polling) => engine.post(req.into_body()).await,
                (Method::GET, Transport::Websocket) if is_upgrade => engine.upgrade_to_websocket(st, req),
                _ => Err(EioError::BadRequest),
            }
        }
    }
}

/// Ends a session and forgets it when its Socket.IO task ends, however
/// it ends (a panic included).
struct Unregister {
    sessions: Arc<Registry>,
    engine: Arc<Engine>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        self.engine.close();
        self.engine.release_pending();
        self.sessions.remove(&self.engine.sid.to_string());
    }
}

/// The client's address, as the listener saw it.
/// A new session: registered, its Socket.IO task and heartbeat started;
/// refused when too many sessions wait for their CONNECT.
fn open(
    st: &Arc<EdgeState>,
    sessions: &Arc<Registry>,
    req: &Request,
    transport: Transport,
) -> Result<Arc<Engine>, EioError> {
    let slot = sessions
        .reserve(
            crate::meta::client_ip(req, st.config.trust_forwarded_for),
            st.config.sio_pending_per_ip,
            st.config.sio_pending_max,
        )
        .ok_or(EioError::TooManySessions)?;
    let handshake = socket::Handshake {
        meta: natter_shared::v1::command::RequestMeta {
            via: "socketio".into(),
            ..crate::meta::from_handshake(req.headers())
        },
        token: token::bearer(req.headers()).or_else(|| token::from_query(req.uri().query())),
    };
    let (engine, inbound) = Engine::new(st, transport, slot);
    sessions.insert(engine.clone());
    let (st2, e2, sessions) = (st.clone(), engine.clone(), sessions.clone());
    st.lifecycle.spawn(async move {
        let _gone = Unregister { sessions, engine: e2.clone() };
        socket::run(e2, inbound, st2, handshake).await;
    });
    st.lifecycle.spawn(engine::heartbeat(engine.clone(), st.config.sio_ping_interval, st.config.sio_ping_timeout));
    Ok(engine)
}
