//! `natter-bench`: throughput and latency of the message pipeline on this
//! machine, with real servers (started like the integration tests) and
//! in-process edges and workers. Prints figures; compare runs made on the
//! same machine in one sitting.
//!
//! cargo run --release -p natter-tests --bin natter-bench -- --pairs 8 --messages 500 [--protocol socketio]

use clap::Parser;
use natter_tests::sio::RawSio;
use natter_tests::{TestApp, WsClient};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Conversations, each with a sender and a receiver.
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Edges (senders on one, receivers on another when > 1).
    #[arg(long, default_value_t = 2)]
    edges: usize,
    /// Messages workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Pause between a sender's messages, in milliseconds (0: as fast as acks come).
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Seconds to let the workers share out the partitions before measuring
    /// (0 measures through the start-up rebalancing).
    #[arg(long, default_value_t = 6)]
    settle_secs: u64,
    /// `native` (/ws) or `socketio` (/socket.io/ over WebSocket).
    #[arg(long, default_value = "native")]
    protocol: String,
}

/// A client of either protocol.
enum Client {
    Native(WsClient),
    Sio(RawSio),
}

impl Client {
    async fn connect(sio: bool, addr: std::net::SocketAddr, token: &str) -> Client {
        if sio {
            Client::Sio(RawSio::connect(addr, token).await)
        } else {
            Client::Native(WsClient::connect(addr, token).await)
        }
    }

    /// The request's ack data, or panics on an error.
    async fn request(&mut self, kind: &str, data: serde_json::Value) -> serde_json::Value {
        match self {
            Client::Native(w) => {
                let r = w.request(kind, data).await;
                assert_eq!(r["type"], "ack", "{r}");
                r["data"].clone()
            }
            Client::Sio(s) => {
                let r = s.request(kind, data).await;
                assert!(r["error"].is_null(), "{r}");
                r
            }
        }
    }

    /// The content of the next `message_received`, skipping other events.
    async fn next_content(&mut self, timeout: Duration) -> Option<Option<String>> {
        match self {
            Client::Native(w) => match w.next(timeout).await? {
                natter_tests::ws::In::Json(v) if v["type"] == "message_received" => {
                    Some(v["data"]["content"].as_str().map(str::to_string))
                }
                _ => Some(None),
            },
            Client::Sio(s) => {
                let (name, arg) = s.event(timeout).await?;
                Some((name == "message_received").then(|| arg["content"].as_str().map(str::to_string)).flatten())
            }
        }
    }
}

fn now_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0)
}

fn pct(sorted: &[u128], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[allow(clippy::print_stdout)]
#[tokio::main]
async fn main() {
    let args = Args::parse();
    let sio = match args.protocol.as_str() {
        "native" => false,
        "socketio" => true,
        other => panic!("--protocol is native or socketio, not {other}"),
    };
    let mut app = TestApp::new().await;
    let mut edges = Vec::new();
    for _ in 0..args.edges.max(1) {
        edges.push(app.start_edge().await);
    }
    for _ in 0..args.workers.max(1) {
        app.start_worker();
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let send_edge = edges[0];
    let recv_edge = *edges.last().unwrap();

    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for _ in 0..args.pairs {
        let (a, b) = (app.user(), app.user());
        let conv = app.open_conversation(send_edge, a, b).await;
        let mut rb = Client::connect(sio, recv_edge, &app.token(b, &[])).await;
        rb.request("join_conversation", json!({"conversationId": conv})).await;
        let wa = Client::connect(sio, send_edge, &app.token(a, &[])).await;
        receivers.push(rb);
        senders.push((wa, conv));
    }
    let n = args.messages;
    let started = Instant::now();
    // Each content carries its send time (µs since the epoch); the receiver
    // records send → receive latency as each event arrives.
    let recv_tasks: Vec<_> = receivers
        .into_iter()
        .map(|mut rb| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n);
                let deadline = Instant::now() + Duration::from_secs(300);
                while lat.len() < n && Instant::now() < deadline {
                    match rb.next_content(Duration::from_secs(30)).await {
                        Some(Some(content)) => {
                            if let Ok(sent) = content.parse::<u128>() {
                                lat.push(now_micros().saturating_sub(sent));
                            }
                        }
                        Some(None) => {}
                        None => break,
                    }
                }
                lat
            })
        })
        .collect();
    let send_tasks: Vec<_> = senders
        .into_iter()
        .map(|(mut wa, conv)| {
            let pause = Duration::from_millis(args.interval_ms);
            tokio::spawn(async move {
                let mut ack_lat = Vec::with_capacity(n);
                for i in 0..n {
                    let t0 = Instant::now();
                    wa.request("send_message", json!({"conversationId": conv, "content": now_micros().to_string(), "clientMsgId": format!("b{i}")}))
                        .await;
                    ack_lat.push(t0.elapsed().as_micros());
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
                ack_lat
            })
        })
        .collect();
    let mut ack_lat = Vec::new();
    for t in send_tasks {
        ack_lat.extend(t.await.unwrap());
    }
    let sent_in = started.elapsed();
    let mut e2e = Vec::new();
    for t in recv_tasks {
        e2e.extend(t.await.unwrap());
    }
    let all_in = started.elapsed();
    let delivered = e2e.len();
    e2e.sort_unstable();
    ack_lat.sort_unstable();
    let total = args.pairs * n;
    println!(
        "natter-bench: {} pairs x {} messages, {} edges, {} workers, {} ms between sends, protocol {}",
        args.pairs, n, args.edges, args.workers, args.interval_ms, args.protocol
    );
    println!(
        "  acked      {total} in {:.2}s = {:.0} msg/s",
        sent_in.as_secs_f64(),
        total as f64 / sent_in.as_secs_f64()
    );
    println!(
        "  ack latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        pct(&ack_lat, 0.5),
        pct(&ack_lat, 0.95),
        pct(&ack_lat, 0.99),
        pct(&ack_lat, 1.0)
    );
    println!(
        "  delivered  {delivered}/{total} in {:.2}s = {:.0} msg/s end to end (persisted in MongoDB, fanned out)",
        all_in.as_secs_f64(),
        delivered as f64 / all_in.as_secs_f64()
    );
    println!(
        "  send→receive latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        pct(&e2e, 0.5),
        pct(&e2e, 0.95),
        pct(&e2e, 0.99),
        pct(&e2e, 1.0)
    );
}
