//! Idle connections: what each costs the edge and nats-server in memory,
//! and how fast they can be opened. Every connection is a different user,
//! authenticated (`/ws` with a bearer token, or Socket.IO over WebSocket
//! with the CONNECT packet's token), joined to nothing; the client answers
//! pings and keeps them open for `--hold-secs`, then counts the ones still
//! open. Connections come from several loopback addresses (127.0.0.2, ...)
//! so the ephemeral ports of one address never run out.
//!
//! Figures: edge and nats-server RSS before (after a warm-up batch was
//! opened and closed) and after, the growth per connection, the rate
//! connections were opened at, and how many were refused or dropped.

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use natter_shared::ids::UserId;
use natter_tests::TestApp;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Clone, Debug)]
pub struct ConnsArgs {
    /// Connections to open. A process here may hold 20,000 files (`ulimit
    /// -Hn`), the edge's own sockets included.
    #[arg(long, default_value_t = 19_500)]
    pub count: usize,
    /// `socketio` (Socket.IO over WebSocket), `polling` (Socket.IO over
    /// HTTP long-polling: one pending GET per session) or `native` (/ws).
    #[arg(long, default_value = "socketio")]
    pub protocol: String,
    /// Loopback addresses to connect from.
    #[arg(long, default_value_t = 8)]
    pub sources: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Seconds the connections are kept open after the last one opened
    /// (past a ping interval, to see that none is dropped).
    #[arg(long, default_value_t = 30)]
    pub hold_secs: u64,
    /// More environment for the edge (`KEY=VALUE`, repeatable).
    #[arg(long = "edge-env")]
    pub edge_env: Vec<String>,
}

/// A process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// A WebSocket client connection to `edge`'s `path`, from `source`, with
/// `headers` (each ending in CRLF) in the upgrade request; it answers
/// pings by itself.
pub async fn upgrade(
    edge: SocketAddr,
    source: Ipv4Addr,
    path: &str,
    headers: &str,
) -> Result<WebSocket<TcpStream>, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::from((source, 0))).map_err(|e| format!("bind {source}: {e}"))?;
    let mut stream: TcpStream = sock.connect(edge).await.map_err(|e| format!("connect: {e}"))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {edge}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{headers}\r\n",
        fastwebsockets::handshake::generate_key()
    );
    stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.map_err(|e| format!("handshake: {e}"))?);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string());
    }
    let mut ws = WebSocket::after_handshake(stream, Role::Client);
    ws.set_auto_pong(true);
    Ok(ws)
}

/// Opens one authenticated connection from `source`; it stays open,
/// answering pings, until `stop`. `alive` counts it while it is open;
/// `permit` (a handshake slot) is given back once it is.
async fn open(
    edge: SocketAddr,
    source: Ipv4Addr,
    token: String,
    socketio: bool,
    alive: Arc<AtomicUsize>,
    stop: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let (path, auth) = if socketio {
        ("/socket.io/?EIO=4&transport=websocket", String::new())
    } else {
        ("/ws", format!("Authorization: Bearer {token}\r\n"))
    };
    let mut ws = upgrade(edge, source, path, &auth).await?;
    let text = |f: Frame<'_>| String::from_utf8_lossy(&f.payload).into_owned();
    // The server speaks first: `ready` on /ws, the Engine.IO open packet on Socket.IO.
    let first = ws.read_frame().await.map_err(|e| e.to_string())?;
    if socketio {
        let connect = format!("40{}", serde_json::json!({"token": token}));
        ws.write_frame(Frame::text(Payload::Owned(connect.into_bytes()))).await.map_err(|e| e.to_string())?;
        let reply = text(ws.read_frame().await.map_err(|e| e.to_string())?);
        if !reply.starts_with("40") {
            return Err(format!("socket.io connect: {reply}"));
        }
    } else if !text(first).contains("\"ready\"") {
        return Err("no ready".into());
    }
    alive.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let result = loop {
        let f = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            f = ws.read_frame() => f,
        };
        match f {
            Ok(f) if f.opcode == OpCode::Close => break Err("closed by the edge".to_string()),
            // Engine.IO ping: pong.
            Ok(f) if f.opcode == OpCode::Text && &f.payload[..] == b"2" => {
                let pong = Frame::text(Payload::Borrowed(b"3"));
                if let Err(e) = ws.write_frame(pong).await {
                    break Err(e.to_string());
                }
            }
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    alive.fetch_sub(1, Ordering::Relaxed);
    result
}

/// Opens one authenticated Socket.IO session over HTTP long-polling from
/// `client` (bound to one loopback address); it keeps a GET pending and
/// answers pings until `stop`.
async fn open_polling(
    edge: SocketAddr,
    client: reqwest::Client,
    token: String,
    alive: Arc<AtomicUsize>,
    stop: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<(), String> {
    let base = format!("http://{edge}/socket.io/?EIO=4&transport=polling");
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.map_err(|e| format!("poll: {e}"))?;
            let status = r.status();
            let body = r.text().await.map_err(|e| format!("poll body: {e}"))?;
            if !status.is_success() {
                return Err(format!("poll {status}: {body}"));
            }
            Ok::<String, String>(body)
        }
    };
    let post = |url: String, body: String| {
        let client = client.clone();
        async move {
            let r = client.post(url).body(body).send().await.map_err(|e| format!("post: {e}"))?;
            if !r.status().is_success() {
                return Err(format!("post {}", r.status()));
            }
            Ok::<(), String>(())
        }
    };
    let open = get(base.clone()).await?;
    let sid = open
        .strip_prefix('0')
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v["sid"].as_str().map(str::to_string))
        .ok_or_else(|| format!("engine.io open: {open}"))?;
    let url = format!("{base}&sid={sid}");
    post(url.clone(), format!("40{}", serde_json::json!({"token": token}))).await?;
    let reply = get(url.clone()).await?;
    if !reply.starts_with("40") {
        return Err(format!("socket.io connect: {reply}"));
    }
    alive.fetch_add(1, Ordering::Relaxed);
    drop(permit);
    let result = loop {
        let body = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            b = get(url.clone()) => b,
        };
        match body {
            Err(e) => break Err(e),
            Ok(b) if b.split('\u{1e}').any(|p| p == "1") => break Err("closed by the edge".to_string()),
            Ok(b) if b.split('\u{1e}').any(|p| p == "2") => {
                if let Err(e) = post(url.clone(), "3".into()).await {
                    break Err(e);
                }
            }
            Ok(_) => {}
        }
    };
    alive.fetch_sub(1, Ordering::Relaxed);
    result
}

/// Opens `n` connections, `concurrency` handshakes at a time; how long it
/// took and the errors.
async fn open_many(
    app: &TestApp,
    edge: SocketAddr,
    a: &ConnsArgs,
    n: usize,
    alive: &Arc<AtomicUsize>,
    stop: &CancellationToken,
) -> (Duration, Vec<String>, Vec<tokio::task::JoinHandle<Result<(), String>>>) {
    let tokens: Vec<String> = (0..n).map(|_| app.token(UserId(mongodb::bson::oid::ObjectId::new()), &[])).collect();
    let gate = Arc::new(Semaphore::new(a.concurrency));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    // For polling: one HTTP client per loopback address, its pool as large
    // as the sessions (each keeps a GET pending).
    let clients: Vec<reqwest::Client> = (0..a.sources.max(1))
        .map(|k| {
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k)))
                .pool_max_idle_per_host(usize::MAX)
                .timeout(Duration::from_secs(120))
                .build()
                .expect("http client")
        })
        .collect();
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    let before = alive.load(Ordering::Relaxed);
    for (i, token) in tokens.into_iter().enumerate() {
        let permit = gate.clone().acquire_owned().await.expect("gate");
        let k = i % usize::from(a.sources.max(1));
        let source = Ipv4Addr::new(127, 0, 0, 2 + k as u8);
        let (alive, stop, errors) = (alive.clone(), stop.clone(), errors.clone());
        let protocol = a.protocol.clone();
        let client = clients[k].clone();
        handles.push(tokio::spawn(async move {
            let r = match protocol.as_str() {
                "polling" => open_polling(edge, client, token, alive, stop, permit).await,
                p => open(edge, source, token, p == "socketio", alive, stop, permit).await,
            };
            if let Err(e) = &r {
                errors.lock().unwrap().push(e.clone());
            }
            r
        }));
    }
    // Until every one is open or has failed.
    while alive.load(Ordering::Relaxed) + errors.lock().unwrap().len() < before + n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let errors = errors.lock().unwrap().clone();
    (took, errors, handles)
}

#[allow(clippy::print_stdout)]
pub async fn run(a: ConnsArgs) {
    assert!(
        ["socketio", "polling", "native"].contains(&a.protocol.as_str()),
        "--protocol is socketio, polling or native"
    );
    let mut app = TestApp::new().await;
    // Handshakes come much faster than a person connects.
    app.edge_env.insert("SIO_PENDING_PER_IP".into(), "100000".into());
    app.edge_env.insert("SIO_PENDING_MAX".into(), "100000".into());
    for kv in &a.edge_env {
        let (k, v) = kv.split_once('=').expect("--edge-env KEY=VALUE");
        app.edge_env.insert(k.into(), v.into());
    }
    let edge = app.start_edge_process().await;
    let edge_pid = app.processes.last().and_then(|p| p.child.id()).expect("edge pid");
    let nats_pid = crate::dbstats::pid_serving(&natter_tests::stack::servers().nats_url).expect("nats pid");
    let alive = Arc::new(AtomicUsize::new(0));

    // Warm up: a batch opened and closed, so that what is allocated once
    // (pools, caches, the allocator's arenas) is not counted.
    let warm_stop = CancellationToken::new();
    let (_, errs, handles) = open_many(&app, edge, &a, 500.min(a.count), &alive, &warm_stop).await;
    assert!(errs.is_empty(), "warm-up refused: {:?}", &errs[..errs.len().min(3)]);
    warm_stop.cancel();
    for h in handles {
        let _ = h.await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (edge0, nats0) = (rss_kib(edge_pid), rss_kib(nats_pid));

    let stop = CancellationToken::new();
    let (took, errors, handles) = open_many(&app, edge, &a, a.count, &alive, &stop).await;
    let open_now = alive.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (edge1, nats1) = (rss_kib(edge_pid), rss_kib(nats_pid));
    // Costs while held, over the second half of the hold (the first
    // still sees the tail of the opening: closes of the warm-up, contact
    // loads).
    let half = Duration::from_secs(a.hold_secs) / 2;
    tokio::time::sleep(half).await;
    let ticks = crate::dbstats::ticks_per_s();
    let cpu_time = |pid: u32| crate::dbstats::cpu_of(pid, ticks).unwrap_or_default();
    let (edge_cpu, nats_cpu, writes) = (cpu_time(edge_pid), cpu_time(nats_pid), app.presence_writes().await);
    tokio::time::sleep(half).await;
    let (edge2, nats2) = (rss_kib(edge_pid), rss_kib(nats_pid));
    let hold = half.as_secs_f64().max(1.0);
    let busy = |before: Duration, pid: u32| (cpu_time(pid) - before).as_secs_f64() / hold * 100.0;
    let (edge_busy, nats_busy) = (busy(edge_cpu, edge_pid), busy(nats_cpu, nats_pid));
    let writes = (app.presence_writes().await - writes) as f64 / hold;
    let held = alive.load(Ordering::Relaxed);

    let n = open_now.max(1) as f64;
    let per = |before: u64, after: u64| (after.saturating_sub(before)) as f64 / n;
    println!(
        "natter-bench conns: {} protocol, {} connections from {} loopback addresses",
        a.protocol, a.count, a.sources
    );
    println!(
        "opened {open_now} in {:.2} s ({:.0}/s), {} refused or failed{}",
        took.as_secs_f64(),
        open_now as f64 / took.as_secs_f64(),
        errors.len(),
        errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
    );
    println!(
        "edge RSS {:.1} MiB -> {:.1} MiB: {:.2} KiB per connection ({:.2} after {} s)",
        edge0 as f64 / 1024.0,
        edge1 as f64 / 1024.0,
        per(edge0, edge1),
        per(edge0, edge2),
        a.hold_secs
    );
    println!(
        "nats-server RSS {:.1} MiB -> {:.1} MiB: {:.2} KiB per connection ({:.2} after {} s)",
        nats0 as f64 / 1024.0,
        nats1 as f64 / 1024.0,
        per(nats0, nats1),
        per(nats0, nats2),
        a.hold_secs
    );
    println!(
        "together {:.2} KiB per connection; {held} of {open_now} still open after {} s",
        per(edge0 + nats0, edge1 + nats1),
        a.hold_secs
    );
    println!(
        "while held idle (the hold's second half): edge {edge_busy:.1}% of a core, nats-server \
         {nats_busy:.1}%; {writes:.1} presence writes a second"
    );
    stop.cancel();
    for h in handles {
        let _ = h.await;
    }
}
