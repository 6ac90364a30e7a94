//! The load generator's scenario (as `../shared/bench/loadgen`): pairs of
//! users in 1:1 conversations, each sender with at most `window` messages
//! in flight (sent, not yet received by the recipient), optionally paced at
//! `rate` messages per second; a message is done when the recipient's
//! socket gets its `message_received`. Per run: throughput, latency from
//! send to receipt, lost, late and duplicated messages, the throughput of
//! the first and last tenth, and the database's operations and CPU per
//! message (including what it does after the load: receipts and audit).

use crate::dbstats::{DbStats, ProcStats};
use natter_tests::TestApp;
use natter_tests::sio::RawSio;
use natter_tests::ws::{In, WsClient};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};

#[derive(clap::Args, Clone, Debug)]
pub struct LoadArgs {
    /// Conversations, each with a sender and a recipient.
    #[arg(long, default_value_t = 5)]
    pub pairs: usize,
    /// Measured messages per sender, per run.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    /// Unmeasured messages per sender before each run.
    #[arg(long, default_value_t = 20)]
    pub warmup: usize,
    /// Most messages a sender has in flight.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Messages per second per sender (0: as fast as the window allows).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// A message not received within this many milliseconds is lost.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Runs, back to back, on the same stack and data.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Seconds to wait after each run before reading the database's
    /// counters (receipts and audit land after delivery).
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// `socketio` (/socket.io/ over WebSocket) or `native` (/ws).
    #[arg(long, default_value = "socketio")]
    pub protocol: String,
    /// Edges (senders on the first, recipients on the last).
    #[arg(long, default_value_t = 1)]
    pub edges: usize,
    /// Messages workers (processes).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Pad each message's content to this many bytes.
    #[arg(long, default_value_t = 0)]
    pub size: usize,
}

/// One pair's messages in flight and done.
#[derive(Default)]
struct Flight {
    sent_at: HashMap<u64, Instant>,
    measured: HashSet<u64>,
    done: HashSet<u64>,
    lost: HashSet<u64>,
}

#[derive(Default)]
struct Tally {
    received: usize,
    lost: usize,
    late: usize,
    duplicated: usize,
    latencies_us: Vec<u64>,
    done_at: Vec<Instant>,
}

struct Pair {
    send: mpsc::UnboundedSender<String>,
    window: Arc<Semaphore>,
    flight: Arc<Mutex<Flight>>,
}

/// Starts the stack and runs the scenario `args.runs` times.
#[allow(clippy::print_stdout)]
pub async fn run(args: LoadArgs) {
    let sio = match args.protocol.as_str() {
        "native" => false,
        "socketio" => true,
        other => panic!("--protocol is native or socketio, not {other}"),
    };
    let mut app = TestApp::new().await;
    let stats = DbStats::new(&natter_tests::servers().mongodb_base).await;
    let mut edges = Vec::new();
    for _ in 0..args.edges.max(1) {
        edges.push(app.start_edge_process().await);
    }
    for _ in 0..args.workers.max(1) {
        app.start_worker_process();
    }
    app.start_role_process("audit");
    // Let the workers share out the partitions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let procs = process_stats(&app);
    let (send_edge, recv_edge) = (edges[0], *edges.last().expect("an edge"));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut pairs = Vec::new();
    for p in 0..args.pairs {
        pairs.push(pair(&app, p as u64, sio, (send_edge, recv_edge), args.window, tally.clone()).await);
    }
    println!(
        "natter-bench load: {} pairs, window {}, rate {}, {} messages per sender per run, {} edges, {} messages workers, protocol {}",
        args.pairs,
        args.window,
        if args.rate > 0.0 { format!("{}/s per sender", args.rate) } else { "unpaced".into() },
        args.messages,
        edges.len(),
        args.workers.max(1),
        args.protocol
    );
    let pairs = Arc::new(pairs);
    let sweeper = tokio::spawn(sweep(pairs.clone(), tally.clone(), Duration::from_millis(args.timeout_ms)));
    for run in 1..=args.runs {
        phase(&pairs, &args, run, args.warmup, false).await;
        *tally.lock().expect("tally") = Tally::default();
        let before = stats.sample().await;
        let cpu_before = procs.sample();
        let started = Instant::now();
        phase(&pairs, &args, run, args.messages, true).await;
        tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
        let delta = before.to(&stats.sample().await);
        let cpu = procs.per(&cpu_before, &procs.sample(), args.pairs * args.messages);
        let t = std::mem::take(&mut *tally.lock().expect("tally"));
        report(run, &t, started, args.pairs * args.messages, &format!("{}; {cpu}", delta.per(t.received)));
    }
    sweeper.abort();
}

/// The processes of the stack, by role, for the CPU split.
pub fn process_stats(app: &TestApp) -> ProcStats {
    let mut procs = Vec::new();
    for p in &app.processes {
        let Some(pid) = p.child.id() else { continue };
        let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let name = cmd.split('\0').next().and_then(|c| c.rsplit('/').next()).unwrap_or("?");
        let name = name.trim_start_matches("natter-").trim_start_matches("worker-").to_string();
        procs.push((name, pid));
    }
    let servers = natter_tests::servers();
    if let Some(pid) = crate::dbstats::pid_serving(&servers.nats_url) {
        procs.push(("nats".into(), pid));
    }
    if let Some(pid) = crate::dbstats::pid_serving(&servers.mongodb_base) {
        procs.push(("db".into(), pid));
    }
    procs.push(("clients".into(), std::process::id()));
    ProcStats::new(procs)
}

/// Sends `count` messages from every sender and waits until each is
/// received or lost.
async fn phase(pairs: &Arc<Vec<Pair>>, args: &LoadArgs, run: usize, count: usize, measured: bool) {
    let mut senders = Vec::new();
    for (p, pair) in pairs.iter().enumerate() {
        let (send, window, flight) = (pair.send.clone(), pair.window.clone(), pair.flight.clone());
        let args = args.clone();
        senders.push(tokio::spawn(async move {
            let start = Instant::now();
            let interval = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
            for k in 0..count {
                if let Some(i) = interval {
                    tokio::time::sleep_until((start + i * k as u32).into()).await;
                }
                window.acquire().await.expect("window").forget();
                let key = ((run as u64) << 40) | ((measured as u64) << 32) | k as u64;
                let mut content = format!("{p}:{key}");
                if args.size > content.len() {
                    content.push(' ');
                    content.push_str(&"x".repeat(args.size - content.len()));
                }
                {
                    let mut f = flight.lock().expect("flight");
                    f.sent_at.insert(key, Instant::now());
                    if measured {
                        f.measured.insert(key);
                    }
                }
                let _ = send.send(content);
            }
            // Done when nothing is in flight.
            let _ = window.acquire_many(args.window.max(1) as u32).await.map(|p| p.forget());
            window.add_permits(args.window.max(1));
        }));
    }
    for s in senders {
        let _ = s.await;
    }
}

/// Marks what has waited too long as lost, freeing its window slot.
async fn sweep(pairs: Arc<Vec<Pair>>, tally: Arc<Mutex<Tally>>, timeout: Duration) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for pair in pairs.iter() {
            let mut f = pair.flight.lock().expect("flight");
            let late: Vec<u64> = f.sent_at.iter().filter(|(_, t)| t.elapsed() > timeout).map(|(k, _)| *k).collect();
            for k in late {
                f.sent_at.remove(&k);
                if f.measured.remove(&k) {
                    tally.lock().expect("tally").lost += 1;
                }
                f.lost.insert(k);
                pair.window.add_permits(1);
            }
        }
    }
}

/// Sets up one pair: the conversation, both sockets, the recipient joined.
async fn pair(
    app: &TestApp,
    p: u64,
    sio: bool,
    (send_edge, recv_edge): (SocketAddr, SocketAddr),
    window: usize,
    tally: Arc<Mutex<Tally>>,
) -> Pair {
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(send_edge, a, b).await;
    let flight = Arc::new(Mutex::new(Flight::default()));
    let window = Arc::new(Semaphore::new(window.max(1)));
    let recipient = connect(sio, recv_edge, &app.token(b, &[]), &conv).await;
    let sender = connect(sio, send_edge, &app.token(a, &[]), &conv).await;
    let (send, outbox) = mpsc::unbounded_channel::<String>();
    let (_, no_outbox) = mpsc::unbounded_channel::<String>();
    tokio::spawn(socket(sender, sio, conv.clone(), outbox, None));
    let counter = Counter { p, flight: flight.clone(), window: window.clone(), tally };
    tokio::spawn(socket(recipient, sio, conv, no_outbox, Some(counter)));
    Pair { send, window, flight }
}

/// A connection, joined to the conversation.
async fn connect(sio: bool, addr: SocketAddr, token: &str, conv: &str) -> WsClient {
    if sio {
        let mut s = RawSio::connect(addr, token).await;
        let r = s.request("join_conversation", json!({"conversationId": conv})).await;
        assert!(r["error"].is_null(), "join: {r}");
        s.into_ws()
    } else {
        let mut w = WsClient::connect(addr, token).await;
        let r = w.request("join_conversation", json!({"conversationId": conv})).await;
        assert_eq!(r["type"], "ack", "join: {r}");
        w
    }
}

/// Counts what a recipient gets.
struct Counter {
    p: u64,
    flight: Arc<Mutex<Flight>>,
    window: Arc<Semaphore>,
    tally: Arc<Mutex<Tally>>,
}

impl Counter {
    fn received(&self, content: &str) {
        let now = Instant::now();
        let Some((p, key)) = content.split_once(' ').map_or(content, |(c, _)| c).split_once(':') else { return };
        let (Ok(p), Ok(key)) = (p.parse::<u64>(), key.parse::<u64>()) else { return };
        if p != self.p {
            return;
        }
        let mut f = self.flight.lock().expect("flight");
        let mut t = self.tally.lock().expect("tally");
        if let Some(sent) = f.sent_at.remove(&key) {
            f.done.insert(key);
            if f.measured.remove(&key) {
                t.received += 1;
                t.latencies_us.push((now - sent).as_micros() as u64);
                t.done_at.push(now);
            }
            self.window.add_permits(1);
        } else if f.done.contains(&key) {
            t.duplicated += 1;
        } else if f.lost.contains(&key) {
            t.late += 1;
        }
    }
}

/// Owns a socket: writes what the outbox gives (as `send_message`), answers
/// pings, and hands `message_received` contents to the counter. Reads and
/// writes happen in the bodies of a `select!` (never cancelled); only the
/// waits are raced.
async fn socket(
    mut ws: WsClient,
    sio: bool,
    conv: String,
    mut outbox: mpsc::UnboundedReceiver<String>,
    counter: Option<Counter>,
) {
    let mut n = 0u64;
    let mut open = true;
    loop {
        tokio::select! {
            content = outbox.recv(), if open => {
                let Some(content) = content else { open = false; continue };
                n += 1;
                let data = json!({"conversationId": conv, "content": content, "messageType": "text"});
                let frame = if sio {
                    format!("42{}", json!(["send_message", data]))
                } else {
                    json!({"type": "send_message", "requestId": format!("r{n}"), "data": data}).to_string()
                };
                if !ws.try_send_text(&frame).await {
                    return;
                }
            }
            frame = ws.next(Duration::from_secs(3600)) => {
                let event: Option<Value> = match frame {
                    Some(In::Json(v)) if !sio => (v["type"] == "message_received").then(|| v["data"].clone()),
                    Some(In::Text(t)) if sio => t.strip_prefix("42").and_then(|rest| {
                        let args: Value = serde_json::from_str(rest).ok()?;
                        (args[0] == "message_received").then(|| args[1].clone())
                    }),
                    Some(In::Json(v)) if sio && v.is_number() => {
                        // A bare `2` parses as JSON: the ping.
                        if v == 2 {
                            let _ = ws.try_send_text("3").await;
                        }
                        None
                    }
                    Some(In::Close(_)) | None => return,
                    Some(_) => None,
                };
                if let (Some(c), Some(e)) = (&counter, event) {
                    c.received(e["content"].as_str().unwrap_or(""));
                }
            }
        }
    }
}

pub(crate) fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Messages per second over the first and the last tenth of the run.
fn tenths(started: Instant, done: &[Instant]) -> (f64, f64) {
    let n = done.len();
    if n < 20 {
        return (0.0, 0.0);
    }
    let tenth = n / 10;
    let rate = |from: Instant, to: Instant, k: usize| k as f64 / (to - from).as_secs_f64().max(1e-9);
    (rate(started, done[tenth - 1], tenth), rate(done[n - tenth - 1], done[n - 1], tenth))
}

#[allow(clippy::print_stdout)]
fn report(run: usize, t: &Tally, started: Instant, sent: usize, db: &str) {
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let mut done = t.done_at.clone();
    done.sort();
    let span = done.last().map_or(Duration::ZERO, |l| *l - started);
    let (first, last) = tenths(started, &done);
    println!(
        "run {run}: sent {sent}, received {}, lost {}, late {}, duplicated {}; {:.1} msg/s (first tenth {first:.1}, last tenth {last:.1}); latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}; {db}",
        t.received,
        t.lost,
        t.late,
        t.duplicated,
        t.received as f64 / span.as_secs_f64().max(1e-9),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 1.0),
    );
}
