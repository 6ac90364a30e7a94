//! A WebSocket client for protocol v1, built on fastwebsockets like the edge.
//! The handshake is written by hand so refusals (status codes) are visible.

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketWrite};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// What the server sent.
#[derive(Debug, Clone)]
pub enum In {
    Json(Value),
    /// A text frame that is not JSON (should never happen).
    Text(String),
    Close(u16),
}

type Writer = std::sync::Arc<tokio::sync::Mutex<WebSocketWrite<WriteHalf<TcpStream>>>>;

pub struct WsClient {
    /// Shared with the reader, which answers the server's pings (as
    /// browsers do).
    tx: Writer,
    /// Owns the read half; aborted on drop so the socket closes.
    reader: tokio::task::JoinHandle<()>,
    rx: mpsc::UnboundedReceiver<In>,
    pending: VecDeque<In>,
    next_id: u64,
}

/// A refused handshake: the HTTP status and body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

pub struct Handshake<'a> {
    pub token: Option<&'a str>,
    pub in_query: bool,
    pub origin: Option<&'a str>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, token: &str) -> WsClient {
        Self::handshake(addr, Handshake { token: Some(token), in_query: false, origin: None })
            .await
            .expect("handshake refused")
    }

    pub async fn handshake(addr: SocketAddr, h: Handshake<'_>) -> Result<WsClient, Refused> {
        let path = match (h.token, h.in_query) {
            (Some(t), true) => format!("/ws?token={t}"),
            _ => "/ws".to_string(),
        };
        let mut headers = String::new();
        if let (Some(t), false) = (h.token, h.in_query) {
            headers.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(o) = h.origin {
            headers.push_str(&format!("Origin: {o}\r\n"));
        }
        let mut c = Self::open(addr, &path, &headers).await?;
        match c.next(Duration::from_secs(5)).await {
            Some(In::Json(v)) if v["type"] == "ready" => Ok(c),
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// A WebSocket to `path` (with its query), with extra header lines;
    /// no protocol is assumed.
    pub async fn open(addr: SocketAddr, path: &str, headers: &str) -> Result<WsClient, Refused> {
        Self::open_with(addr, path, headers, true).await
    }

    /// A `/ws` client that never answers pings (a peer that vanished).
    pub async fn connect_deaf(addr: SocketAddr, token: &str) -> WsClient {
        let mut c = Self::open_with(addr, "/ws", &format!("Authorization: Bearer {token}\r\n"), false)
            .await
            .expect("handshake refused");
        match c.next(Duration::from_secs(5)).await {
            Some(In::Json(v)) if v["type"] == "ready" => c,
            other => panic!("expected ready, got {other:?}"),
        }
    }

    async fn open_with(addr: SocketAddr, path: &str, headers: &str, pongs: bool) -> Result<WsClient, Refused> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n",
            fastwebsockets::handshake::generate_key()
        );
        stream.write_all(req.as_bytes()).await.expect("write handshake");
        // Read the response head byte by byte: frames may follow at once.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = stream.read_u8().await.expect("read handshake");
            head.push(b);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 101 {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = stream.read_exact(&mut body).await;
            return Err(Refused { status, body: String::from_utf8_lossy(&body).to_string() });
        }
        let ws = WebSocket::after_handshake(stream, Role::Client);
        let (mut r, w) = ws.split(tokio::io::split);
        let w: Writer = std::sync::Arc::new(tokio::sync::Mutex::new(w));
        let pong_to = w.clone();
        r.set_max_message_size(64 << 20);
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut obliged = |f: Frame<'_>| {
                let (op, payload, tx) = (f.opcode, f.payload.to_vec(), pong_to.clone());
                async move {
                    if pongs || op != OpCode::Pong {
                        let _ = tx.lock().await.write_frame(Frame::new(true, op, None, Payload::Owned(payload))).await;
                    }
                    Ok::<(), &'static str>(())
                }
            };
            loop {
                match r.read_frame(&mut obliged).await {
                    Ok(f) => match f.opcode {
                        OpCode::Text => {
                            let text = String::from_utf8_lossy(&f.payload).to_string();
                            let item = serde_json::from_str(&text).map(In::Json).unwrap_or(In::Text(text));
                            if in_tx.send(item).is_err() {
                                return;
                            }
                        }
                        OpCode::Close => {
                            let code = if f.payload.len() >= 2 {
                                u16::from_be_bytes([f.payload[0], f.payload[1]])
                            } else {
                                1005
                            };
                            let _ = in_tx.send(In::Close(code));
                            return;
                        }
                        _ => {}
                    },
                    Err(_) => {
                        let _ = in_tx.send(In::Close(1006));
                        return;
                    }
                }
            }
        });
        Ok(WsClient { tx: w, reader, rx: in_rx, pending: VecDeque::new(), next_id: 0 })
    }

    pub async fn send_text(&mut self, text: &str) {
        assert!(self.try_send_text(text).await, "send");
    }

    /// Sends a text frame; `false` once the connection is gone (a server
    /// that closed on us resets a connection still being written to).
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.tx.lock().await.write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec()))).await.is_ok()
    }

    pub async fn send_frame(&mut self, f: Frame<'_>) {
        self.tx.lock().await.write_frame(f).await.expect("send frame");
    }

    /// Sends a request; returns its request id.
    pub async fn send(&mut self, kind: &str, data: Value) -> String {
        self.next_id += 1;
        let rid = format!("r{}", self.next_id);
        self.send_text(&json!({"type": kind, "requestId": rid, "data": data}).to_string()).await;
        rid
    }

    /// Sends a request and waits for its `ack` or `error` (other frames are
    /// kept for later).
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        let rid = self.send(kind, data).await;
        self.reply_to(&rid, Duration::from_secs(10)).await
    }

    pub async fn reply_to(&mut self, rid: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut kept = VecDeque::new();
        let found = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(In::Json(v)) if v["requestId"] == rid => break v,
                Some(other) => kept.push_back(other),
                None => panic!("no reply to {rid}"),
            }
        };
        kept.extend(self.pending.drain(..));
        self.pending = kept;
        found
    }

    /// The next frame, or `None` after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<In> {
        if let Some(x) = self.pending.pop_front() {
            return Some(x);
        }
        tokio::time::timeout(timeout, self.rx.recv()).await.ok().flatten()
    }

    /// Collects `n` events of `kind` (others are dropped), or what arrived
    /// before `timeout`.
    pub async fn events(&mut self, kind: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(In::Json(v)) if v["type"] == kind => out.push(v),
                Some(In::Close(_)) | None => break,
                Some(_) => {}
            }
        }
        out
    }

    /// Waits for a close frame (or the connection dropping); its code.
    pub async fn closed(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(In::Close(c)) => return Some(c),
                Some(_) => {}
                None => return None,
            }
        }
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}
