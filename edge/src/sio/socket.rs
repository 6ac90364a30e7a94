//! The Socket.IO layer of one Engine.IO session: the CONNECT to the default
//! namespace (the JWT in `auth.token`), then events in, mapped onto the same
//! [`Session`] as the native protocol, and acknowledgements, `error` events
//! and the fanned-out events (the native frames' `type` and `data`) out.

use super::engine::{Engine, Inbound};
use crate::error::ChatError;
use crate::realtime::EdgeState;
use crate::realtime::session::{CloseOnDrop, Next, Session, next_conn};
use engineioxide_core::Str;
use natter_shared::auth::Verified;
use natter_shared::v1::client::{self, FileUpload};
use natter_shared::v1::command::RequestMeta;
use natter_shared::v1::error::{ErrorBody, ErrorCode};
use natter_shared::v1::server::{CodeOnly, ConnectError, ErrorEvent, ErrorReply};
use serde::Deserialize;
use serde_json::value::RawValue;
use socketioxide_core::Value;
use socketioxide_core::packet::{Packet, PacketData};
use socketioxide_core::parser::{Parse, ParseConfig, ParseError, ParserState};
use socketioxide_parser_common::CommonParser;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info_span};

/// Time a client has to CONNECT after the Engine.IO handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// Refused CONNECTs (bad tokens) before the session is closed.
const MAX_CONNECT_ATTEMPTS: u32 = 5;

/// What the Engine.IO handshake told about the client.
pub struct Handshake {
    pub meta: RequestMeta,
    /// A token from the handshake's `Authorization` header or `?token=`,
    /// used when the CONNECT's `auth` has none.
    pub token: Option<String>,
}

fn encode(p: Packet) -> String {
    match CommonParser.encode(p) {
        Value::Str(s, _) => s.as_str().to_owned(),
        // The common parser encodes every packet as text.
        Value::Bytes(_) => String::new(),
    }
}

fn args_value(json: String) -> Value {
    Value::Str(Str::from(json), None)
}

/// An event packet `["<name>", <data>, ...more]` with `data` as JSON text.
fn event_packet(name: &str, data: &str, more: Option<&str>) -> Str {
    let name = serde_json::to_string(name).unwrap_or_else(|_| "\"\"".into());
    let args = match more {
        Some(m) => format!("[{name},{data},{m}]"),
        None => format!("[{name},{data}]"),
    };
    Str::from(encode(Packet::event("/", args_value(args))))
}

/// A native event frame (`{"type": .., "seq": .., "data": ..}`) as a
/// Socket.IO event of the same name with `data` as its argument, the NestJS
/// module's shape; events from the stream add a second argument `{"seq"}`,
/// the position a reconnecting client gives back as `lastSeq`.
pub fn event_from_native(frame: &[u8]) -> Option<Str> {
    #[derive(Deserialize)]
    struct Native<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(default)]
        seq: Option<u64>,
        #[serde(borrow)]
        data: &'a RawValue,
    }
    let f: Native<'_> = serde_json::from_slice(frame).ok()?;
    let meta = f.seq.map(|s| format!("{{\"seq\":{s}}}"));
    Some(event_packet(&f.kind, f.data.get(), meta.as_deref()))
}

/// `file_upload`'s argument: the file as a binary attachment.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadArg {
    file: bytes::Bytes,
    filename: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    group_id: Option<String>,
}

#[derive(Deserialize, Default)]
struct Auth {
    #[serde(default)]
    token: Option<String>,
}

pub async fn run(engine: Arc<Engine>, mut inbound: mpsc::Receiver<Inbound>, st: Arc<EdgeState>, hs: Handshake) {
    let conn = next_conn();
    let span = info_span!("sio", conn, sid = %engine.sid);
    async move {
        let state = ParserState::default();
        let config = ParseConfig {
            max_incoming_binary_buf_size: engine.max_binary,
            max_incoming_binaries: 1,
            packet_completion_timeout: Duration::from_secs(60),
        };
        let mut socket: Option<Socket> = None;
        let mut refused = 0;
        let connect_by = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        // Until CONNECT, the CONNECT deadline; then the token's expiry.
        let deadline = tokio::time::sleep_until(connect_by);
        tokio::pin!(deadline);
        loop {
            let item = tokio::select! {
                _ = engine.closed.cancelled() => break,
                _ = &mut deadline => {
                    match &socket {
                        None => debug!("no CONNECT in time"),
                        Some(s) => {
                            debug!("token expired");
                            s.expired();
                        }
                    }
                    break;
                }
                i = inbound.recv() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let decoded = match item {
                Inbound::Text(s) => CommonParser.decode_str(&config, &state, s),
                Inbound::Binary(b) => CommonParser.decode_bin(&config, &state, b),
            };
            let packet = match decoded {
                Ok(p) => p,
                Err(ParseError::NeedsMoreBinaryData) => continue,
                Err(e) => {
                    // Socket.IO's answer to a packet it cannot parse: disconnect.
                    debug!(error = %e, "bad Socket.IO packet");
                    break;
                }
            };
            if packet.ns != "/" {
                if matches!(packet.inner, PacketData::Connect(_)) {
                    let err = connect_error(&packet.ns, "Invalid namespace", None);
                    engine.reply(err);
                }
                continue;
            }
            match packet.inner {
                PacketData::Connect(auth) => {
                    if socket.is_some() {
                        continue;
                    }
                    match authenticate(&st, auth.as_ref(), hs.token.as_deref()) {
                        Ok(verified) => {
                            let who = verified.who;
                            deadline.as_mut().reset(crate::transport::expiry_instant(verified.expires_at));
                            engine.set_user(who.user);
                            let meta = hs.meta.clone();
                            let out = engine.out.clone();
                            // The CONNECT answer goes before anything the session's
                            // subscriptions bring.
                            let sid = engineioxide_core::Sid::new();
                            #[derive(serde::Serialize)]
                            struct Connected {
                                sid: engineioxide_core::Sid,
                            }
                            let body = serde_json::to_string(&Connected { sid }).unwrap_or_default();
                            let ok = encode(Packet::connect("/", Some(args_value(body))));
                            engine.reply(ok);
                            let session =
                                Box::pin(Session::open(st.clone(), who, meta, conn, out, engine.overflow.clone()))
                                    .await;
                            let cleanup = CloseOnDrop::new(session.closer());
                            socket = Some(Socket { session, cleanup });
                        }
                        Err(e) => {
                            let err = connect_error("/", &e.public_message(), Some(e.code()));
                            engine.reply(err);
                            refused += 1;
                            if refused >= MAX_CONNECT_ATTEMPTS {
                                break;
                            }
                        }
                    }
                }
                PacketData::Disconnect => break,
                PacketData::Event(v, ack) | PacketData::BinaryEvent(v, ack) => {
                    // Events before CONNECT belong to no socket: ignored.
                    let Some(s) = socket.as_mut() else { continue };
                    if let Next::Close(..) = s.event(v, ack).await {
                        break;
                    }
                }
                // The server asks for no acknowledgements.
                PacketData::EventAck(..) | PacketData::BinaryAck(..) => {}
                PacketData::ConnectError(_) => break,
            }
        }
        if let Some(s) = socket {
            Box::pin(s.cleanup.close()).await;
        }
        // The session ends with this task (see `sio::Unregister`).
        debug!("disconnected");
    }
    .instrument(span)
    .await
}

/// `CONNECT_ERROR`: `{"message": .., "data": {"code": ..}}`, which
/// socket.io-client raises as `connect_error` with `err.message` and
/// `err.data.code`. (The codec crate's packet carries a message only.)
fn connect_error(ns: &str, message: &str, code: Option<ErrorCode>) -> String {
    let body = ConnectError { message: message.to_string(), data: code.map(|code| CodeOnly { code }) };
    let body = serde_json::to_string(&body).unwrap_or_default();
    if ns == "/" { format!("4{body}") } else { format!("4{ns},{body}") }
}

fn authenticate(st: &EdgeState, auth: Option<&Value>, fallback: Option<&str>) -> Result<Verified, ChatError> {
    let auth: Auth =
        auth.and_then(|v| v.as_str()).and_then(|s| serde_json::from_str(s.as_str()).ok()).unwrap_or_default();
    let token = auth.token.as_deref().or(fallback).ok_or(natter_shared::auth::AuthError::Missing)?;
    Ok(st.jwt.verify_token(token)?)
}

/// A connected socket.
struct Socket {
    session: Session,
    /// Cleans up after the socket, even if this task panics.
    cleanup: CloseOnDrop,
}

impl Socket {
    /// The token ran out: an `error` event `token_expired`, then the
    /// server's DISCONNECT (socket.io-client does not reconnect by itself
    /// after one: the front end gets a new token and connects again).
    fn expired(&self) {
        let code = ErrorCode::TokenExpired;
        let body = ErrorEvent { code, message: "token expired".into(), event: String::new() };
        let body = serde_json::to_string(&body).unwrap_or_default();
        self.session.reply(event_packet("error", &body, None).as_str().to_owned());
        self.session.reply(encode(Packet::disconnect("/")));
    }

    /// Answers one event: its acknowledgement (when the client asked for
    /// one) carries the data of the native protocol's `ack`, or
    /// `{"error": {"code", "message"}}`; a refusal is also emitted as an
    /// `error` event, as the NestJS module did.
    async fn event(&mut self, mut v: Value, ack: Option<i64>) -> Next {
        let name = match CommonParser.read_event(&v) {
            Ok(n) => n.to_string(),
            Err(_) => return self.refuse("", ack, ErrorCode::InvalidFrame, "an event starts with its name").await,
        };
        if !self.session.admit() {
            return self.refuse(&name, ack, ErrorCode::RateLimited, "too many requests").await;
        }
        let rid = ack.map(|a| a.to_string());
        let result = if name == "file_upload" {
            match CommonParser.decode_value::<UploadArg>(&mut v, true) {
                Ok(a) => {
                    let up = FileUpload {
                        filename: a.filename,
                        kind: a.kind,
                        conversation_id: a.conversation_id,
                        group_id: a.group_id,
                    };
                    match up.validate() {
                        Ok(()) => self.session.upload(rid.as_deref(), up, a.file).await.map_err(chat_error),
                        Err(m) => Err((ErrorCode::InvalidPayload, m)),
                    }
                }
                Err(e) => Err((
                    ErrorCode::InvalidPayload,
                    format!("file_upload wants {{file: <binary>, filename, type[, conversationId | groupId]}}: {e}"),
                )),
            }
        } else {
            let data = first_arg(&v);
            match client::parse_request(&name, data.as_deref().unwrap_or("{}")) {
                Ok(req) => self.session.request(rid.as_deref(), req).await.map_err(chat_error),
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(data) => {
                if let Some(id) = ack {
                    let args = serde_json::to_string(&[data]).unwrap_or_else(|_| "[null]".into());
                    self.session.reply(encode(Packet::ack("/", args_value(args), id)));
                }
                Next::Continue
            }
            Err((code, message)) => self.refuse(&name, ack, code, &message).await,
        }
    }

    async fn refuse(&mut self, event: &str, ack: Option<i64>, code: ErrorCode, message: &str) -> Next {
        let body = ErrorEvent { code, message: message.into(), event: event.into() };
        let body = serde_json::to_string(&body).unwrap_or_default();
        self.session.reply(event_packet("error", &body, None).as_str().to_owned());
        if let Some(id) = ack {
            let reply = [ErrorReply { error: ErrorBody { code, message: message.into() } }];
            let args = serde_json::to_string(&reply).unwrap_or_default();
            self.session.reply(encode(Packet::ack("/", args_value(args), id)));
        }
        self.session.strike()
    }
}

fn chat_error(e: ChatError) -> (ErrorCode, String) {
    (e.code(), e.public_message())
}

/// The event's first argument as JSON text (`None` when it has none).
fn first_arg(v: &Value) -> Option<String> {
    let text = v.as_str()?;
    let args: Vec<&RawValue> = serde_json::from_str(text.as_str()).ok()?;
    args.get(1).map(|a| a.get().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_frames_become_module_events() {
        let native = br#"{"type":"message_received","seq":42,"from":"u1","data":{"_id":"m1","content":"hi"}}"#;
        let p = event_from_native(native).unwrap();
        assert_eq!(p.as_str(), r#"2["message_received",{"_id":"m1","content":"hi"},{"seq":42}]"#);
        let ephemeral = br#"{"type":"user_typing","from":"u1","data":{"userId":"u1","isTyping":true}}"#;
        assert_eq!(
            event_from_native(ephemeral).unwrap().as_str(),
            r#"2["user_typing",{"userId":"u1","isTyping":true}]"#
        );
        assert!(event_from_native(b"not json").is_none());
    }

    #[test]
    fn connect_errors_carry_the_code() {
        assert_eq!(
            connect_error("/", "token expired", Some(ErrorCode::TokenExpired)),
            r#"4{"message":"token expired","data":{"code":"token_expired"}}"#
        );
        assert_eq!(connect_error("/admin", "Invalid namespace", None), r#"4/admin,{"message":"Invalid namespace"}"#);
    }

    #[test]
    fn first_argument_of_an_event() {
        let v = args_value(r#"["send_message",{"content":"x"},"extra"]"#.to_string());
        assert_eq!(first_arg(&v).as_deref(), Some(r#"{"content":"x"}"#));
        assert_eq!(first_arg(&args_value(r#"["typing"]"#.to_string())), None);
    }
}
