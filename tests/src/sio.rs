//! A stock socket.io-client v4 (from npm, `tests/sio/`) in a Node process,
//! driven over stdin/stdout: see `tests/sio/client.js`.

use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(15);

pub struct SioClient {
    _child: Child,
    stdin: ChildStdin,
    rx: mpsc::UnboundedReceiver<Value>,
    pending: VecDeque<Value>,
    next_id: u64,
}

/// The client's connect options.
#[derive(Clone, Copy, Debug)]
pub enum Transports {
    /// socket.io-client's default: long-polling, then the upgrade.
    Default,
    WebsocketOnly,
    PollingOnly,
}

impl SioClient {
    pub async fn spawn() -> SioClient {
        let script = crate::procs::root().join("tests/sio/client.js");
        let mut child = Command::new("node")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node (run ./infra/install.sh --node)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("sio client: {line}"),
                }
            }
        });
        SioClient { _child: child, stdin, rx, pending: VecDeque::new(), next_id: 1 }
    }

    async fn command(&mut self, c: Value) {
        let mut line = c.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.expect("write to node");
        self.stdin.flush().await.expect("flush");
    }

    /// Starts connecting; see [`SioClient::connect`] to wait for it.
    pub async fn start(&mut self, addr: SocketAddr, token: Option<&str>, t: Transports) {
        let transports = match t {
            Transports::Default => Value::Null,
            Transports::WebsocketOnly => json!(["websocket"]),
            Transports::PollingOnly => json!(["polling"]),
        };
        let mut c = json!({"op": "connect", "url": format!("http://{addr}"), "token": token});
        if !transports.is_null() {
            c["transports"] = transports;
        }
        self.command(c).await;
    }

    /// A connected client.
    pub async fn connect(addr: SocketAddr, token: &str, t: Transports) -> SioClient {
        let mut c = SioClient::spawn().await;
        c.start(addr, Some(token), t).await;
        let v = c.wait(|v| v["kind"] == "connect" || v["kind"] == "connect_error", WAIT).await;
        assert_eq!(v["kind"], "connect", "connect: {v}");
        c
    }

    /// The next output matching `pred` (others stay queued), or `None`
    /// after `timeout`.
    pub async fn find(&mut self, mut pred: impl FnMut(&Value) -> bool, timeout: Duration) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&mut pred) {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = tokio::time::timeout_at(deadline, self.rx.recv()).await.ok()??;
            if pred(&v) {
                return Some(v);
            }
            self.pending.push_back(v);
        }
    }

    pub async fn wait(&mut self, pred: impl FnMut(&Value) -> bool, timeout: Duration) -> Value {
        self.find(pred, timeout).await.expect("timed out waiting for the socket.io client")
    }

    /// Emits `event` with one argument and waits for its acknowledgement;
    /// the ack's first argument.
    pub async fn request(&mut self, event: &str, arg: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.command(json!({"op": "emit", "id": id, "event": event, "args": [arg], "ack": true})).await;
        let v = self.wait(|v| v["kind"] == "ack" && v["id"] == id, WAIT).await;
        assert!(v["err"].is_null(), "ack of {event}: {v}");
        v["args"][0].clone()
    }

    /// Emits `event` with these arguments, no acknowledgement asked.
    pub async fn emit(&mut self, event: &str, args: Value) {
        let id = self.next_id;
        self.next_id += 1;
        self.command(json!({"op": "emit", "id": id, "event": event, "args": args, "ack": false})).await;
        self.wait(|v| v["kind"] == "sent" && v["id"] == id, WAIT).await;
    }

    /// The first arguments of the next `n` events named `name`.
    pub async fn events(&mut self, name: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.find(|v| v["kind"] == "event" && v["event"] == name, left).await {
                Some(v) => out.push(v["args"][0].clone()),
                None => break,
            }
        }
        out
    }

    /// Every `name` event that arrives within `within`.
    pub async fn no_more(&mut self, name: &str, within: Duration) -> Vec<Value> {
        self.events(name, usize::MAX, within).await
    }

    pub async fn disconnect(&mut self) {
        self.command(json!({"op": "disconnect"})).await;
    }
}

/// A Socket.IO client over one WebSocket (Engine.IO 4, Socket.IO 5), in
/// Rust, for the benchmark: the stock client's framing without Node.
pub struct RawSio {
    ws: crate::WsClient,
    next_ack: u64,
    /// Events that arrived while waiting for an ack.
    pending: VecDeque<(String, Value)>,
}

impl RawSio {
    pub async fn connect(addr: SocketAddr, token: &str) -> RawSio {
        let mut ws = crate::WsClient::open(addr, "/socket.io/?EIO=4&transport=websocket", "").await.expect("upgrade");
        match ws.next(WAIT).await {
            Some(crate::ws::In::Text(t)) if t.starts_with('0') => {}
            other => panic!("expected the open packet, got {other:?}"),
        }
        ws.send_text(&format!("40{}", json!({"token": token}))).await;
        match ws.next(WAIT).await {
            Some(crate::ws::In::Text(t)) if t.starts_with("40") => {}
            other => panic!("expected the CONNECT reply, got {other:?}"),
        }
        RawSio { ws, next_ack: 0, pending: VecDeque::new() }
    }

    /// The next packet as (event name or `ack:<id>`, first argument);
    /// answers pings on the way.
    async fn packet(&mut self, timeout: Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let text = match self.ws.next(left).await? {
                crate::ws::In::Text(t) => t,
                crate::ws::In::Json(v) => v.to_string(),
                crate::ws::In::Close(_) => return None,
            };
            if text == "2" {
                self.ws.send_text("3").await;
                continue;
            }
            if let Some(rest) = text.strip_prefix("43") {
                let at = rest.find('[').unwrap_or(rest.len());
                let args: Value = serde_json::from_str(&rest[at..]).unwrap_or(Value::Null);
                return Some((format!("ack:{}", &rest[..at]), args[0].clone()));
            }
            if let Some(rest) = text.strip_prefix("42") {
                let args: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                return Some((args[0].as_str().unwrap_or("").to_string(), args[1].clone()));
            }
        }
    }

    /// Emits `event` with an ack callback; the ack's first argument.
    pub async fn request(&mut self, event: &str, arg: Value) -> Value {
        self.next_ack += 1;
        let id = self.next_ack;
        self.ws.send_text(&format!("42{id}{}", json!([event, arg]))).await;
        let want = format!("ack:{id}");
        loop {
            let (name, arg) = self.packet(WAIT).await.expect("no ack");
            if name == want {
                return arg;
            }
            self.pending.push_back((name, arg));
        }
    }

    /// The WebSocket under the Socket.IO framing (for a client that reads
    /// and writes packets itself).
    pub fn into_ws(self) -> crate::WsClient {
        self.ws
    }

    /// The next event: its name and first argument.
    pub async fn event(&mut self, timeout: Duration) -> Option<(String, Value)> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        self.packet(timeout).await
    }
}

/// An Engine.IO request over long-polling: the status and the body.
pub async fn eio(app: &crate::TestApp, method: reqwest::Method, url: String, body: Option<String>) -> (u16, String) {
    let mut r = app.http().request(method, url);
    if let Some(b) = body {
        r = r.header("content-type", "text/plain;charset=UTF-8").body(b);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// A raw long-polling session at `base` (`http://<edge>/socket.io/?EIO=4`):
/// its sid, after the handshake and (with a token) the Socket.IO CONNECT.
pub async fn raw_session(app: &crate::TestApp, base: &str, token: Option<&str>) -> String {
    let (s, open) = eio(app, reqwest::Method::GET, format!("{base}&transport=polling"), None).await;
    assert_eq!(s, 200);
    let open: Value = serde_json::from_str(open.strip_prefix('0').expect("open packet")).unwrap();
    let sid = open["sid"].as_str().unwrap().to_string();
    if let Some(t) = token {
        let url = format!("{base}&transport=polling&sid={sid}");
        let (s, ok) = eio(app, reqwest::Method::POST, url.clone(), Some(format!("40{}", json!({"token": t})))).await;
        assert_eq!((s, ok.as_str()), (200, "ok"));
        let (_, reply) = eio(app, reqwest::Method::GET, url, None).await;
        assert!(reply.starts_with("40{\"sid\":"), "{reply}");
    }
    sid
}

/// Waits until the session's sid is unknown (400, code 1), as it is once
/// the session is closed; the error's body.
pub async fn gone(app: &crate::TestApp, base: &str, sid: &str, within: Duration) -> Value {
    let url = format!("{base}&transport=polling&sid={sid}");
    crate::eventually("the session to close", within, || async {
        let (s, body) = eio(app, reqwest::Method::GET, url.clone(), None).await;
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (s == 400 && v["code"] == 1).then_some(v)
    })
    .await
}
