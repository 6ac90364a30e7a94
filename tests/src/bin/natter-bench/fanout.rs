//! Fan-out into one big group: `members` users in one group, spread over
//! `edges` edges (each connected on `/ws` and joined), and one member
//! posting at increasing rates. Per rate: deliveries per second per edge,
//! send-to-delivery p50/p99, the edges' CPU per delivery, members missing
//! a message and members that got one out of order. The client reads
//! frames without parsing them as JSON (it shares the machine's cores with
//! the edges, NATS and the worker).

use crate::dbstats::cpu_of;
use natter_shared::ids::UserId;
use natter_tests::{TestApp, WsClient};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Members of the group (the sender is one of them).
    #[arg(long, default_value_t = 2000)]
    pub members: usize,
    /// Edges the members are spread over.
    #[arg(long, default_value_t = 2)]
    pub edges: usize,
    /// Messages per second the sender posts, one step each.
    #[arg(long, value_delimiter = ',', default_value = "5,10,25,50,100,200")]
    pub rates: Vec<u32>,
    /// Seconds each step lasts.
    #[arg(long, default_value_t = 5)]
    pub secs: u64,
}

/// What one member received: for each message, (step, index, latency µs),
/// and the seqs in the order they came.
#[derive(Default)]
struct Got {
    deliveries: Vec<(u32, u32, u64)>,
    seqs: Vec<u64>,
}

/// `"seq":N` and the content marker `fo <step> <i> <sent µs>` of a
/// `message_received` frame, found without parsing it.
fn scan(frame: &[u8]) -> Option<(u64, u32, u32, u64)> {
    let text = std::str::from_utf8(frame).ok()?;
    if !text.contains("\"message_received\"") {
        return None;
    }
    let seq_at = text.find("\"seq\":")? + 6;
    let seq: u64 = text[seq_at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let c = text.find("\"content\":\"fo ")? + 14;
    let mut it = text[c..].split(['"', ' ']);
    let step = it.next()?.parse().ok()?;
    let i = it.next()?.parse().ok()?;
    let sent = it.next()?.parse().ok()?;
    Some((seq, step, i, sent))
}

/// One member: connects from `source`, joins the group, records what it
/// gets until `stop`.
async fn member(
    edge: SocketAddr,
    source: Ipv4Addr,
    token: String,
    group: String,
    epoch: Instant,
    joined: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
) -> Got {
    let mut ws = crate::conns::upgrade(edge, source, "/ws", &format!("Authorization: Bearer {token}\r\n"))
        .await
        .expect("upgrade");
    let join = json!({"type": "join_group", "requestId": "j", "data": {"groupId": group}}).to_string();
    ws.write_frame(fastwebsockets::Frame::text(fastwebsockets::Payload::Owned(join.into_bytes()))).await.expect("join");
    let mut got = Got::default();
    let mut is_joined = false;
    loop {
        let f = tokio::select! {
            _ = stop.cancelled() => break,
            f = ws.read_frame() => match f { Ok(f) => f, Err(_) => break },
        };
        if f.opcode == fastwebsockets::OpCode::Close {
            break;
        }
        if !is_joined && contains(&f.payload, b"\"requestId\":\"j\"") {
            assert!(f.payload.starts_with(b"{\"type\":\"ack\""), "join: {}", String::from_utf8_lossy(&f.payload));
            is_joined = true;
            joined.add_permits(1);
            continue;
        }
        if let Some((seq, step, i, sent)) = scan(&f.payload) {
            let now = epoch.elapsed().as_micros() as u64;
            got.deliveries.push((step, i, now.saturating_sub(sent)));
            got.seqs.push(seq);
        }
    }
    got
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

#[allow(clippy::print_stdout)]
pub async fn run(a: FanoutArgs) {
    let mut app = TestApp::new().await;
    let edges: Vec<SocketAddr> = {
        let mut v = Vec::new();
        for _ in 0..a.edges {
            v.push(app.start_edge_process().await);
        }
        v
    };
    let edge_pids: Vec<u32> = app.processes.iter().filter_map(|p| p.child.id()).collect();
    app.start_worker_process();
    let users: Vec<UserId> = (0..a.members).map(|_| app.user()).collect();
    // A create names at most MAX_INITIAL_MEMBERS; the rest are added one
    // at a time.
    let first = natter_shared::model::MAX_INITIAL_MEMBERS.min(users.len() - 1);
    let group = app.create_group(edges[0], users[0], &users[1..=first]).await;
    let admin = app.token(users[0], &["Admin"]);
    for u in &users[first + 1..] {
        let path = format!("/api/chat/groups/{group}/members");
        let (status, v) =
            app.call(reqwest::Method::POST, edges[0], &path, &admin, Some(json!({"userId": u.hex()}))).await;
        assert_eq!(status, 201, "add member: {v}");
    }
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let joined = Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    // The sender (users[0]) is a member like the others, on edge 0.
    for (k, u) in users.iter().enumerate().skip(1) {
        let edge = edges[k % a.edges];
        let source = Ipv4Addr::new(127, 0, 0, 2 + (k % 8) as u8);
        tasks.push((
            k % a.edges,
            tokio::spawn(member(edge, source, app.token(*u, &[]), group.clone(), epoch, joined.clone(), stop.clone())),
        ));
        if k % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(120), joined.acquire_many(tasks.len() as u32))
        .await
        .expect("every member joined in time");
    let mut sender = WsClient::connect(edges[0], &app.token(users[0], &["Admin"])).await;
    let r = sender.request("join_group", json!({"groupId": group})).await;
    assert_eq!(r["type"], "ack", "{r}");
    println!(
        "natter-bench fanout: a group of {} members over {} edges (/ws), {} s per rate",
        a.members, a.edges, a.secs
    );

    // What the joins started (catch-up reads, membership loads) settles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ticks = crate::dbstats::ticks_per_s();
    let procs = crate::load::process_stats(&app);
    let db = crate::dbstats::DbStats::new(&natter_tests::servers().mongodb_base).await;
    let mut steps = Vec::new();
    for (step, rate) in a.rates.iter().enumerate() {
        let cpu0: Vec<Duration> = edge_pids.iter().map(|p| cpu_of(*p, ticks).unwrap_or_default()).collect();
        let (all0, db0) = (procs.sample(), db.sample().await);
        let n = (*rate as u64 * a.secs) as u32;
        let every = Duration::from_secs_f64(1.0 / f64::from(*rate));
        let started = Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for i in 0..n {
            tick.tick().await;
            let sent = epoch.elapsed().as_micros() as u64;
            sender.send("send_message", json!({"groupId": group, "content": format!("fo {step} {i} {sent}")})).await;
        }
        let took = started.elapsed();
        // Let the step's deliveries land before the next.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu1: Vec<Duration> = edge_pids.iter().map(|p| cpu_of(*p, ticks).unwrap_or_default()).collect();
        // The sender's acks and refusals (its own copies of the messages
        // are dropped).
        let (mut acks, mut refused) = (0u32, Vec::new());
        while let Some(f) = sender.next(Duration::from_millis(200)).await {
            if let natter_tests::ws::In::Json(v) = f {
                match v["type"].as_str() {
                    Some("ack") => acks += 1,
                    Some("error") => refused.push(v["data"]["code"].as_str().unwrap_or_default().to_string()),
                    _ => {}
                }
            }
        }
        let (all1, db1) = (procs.sample(), db.sample().await);
        println!("rate {rate}: {}; {}", procs.per(&all0, &all1, n as usize), db0.to(&db1).per(n as usize));
        if acks < n {
            println!("rate {rate}: {acks} of {n} sends acked, refused: {:?}", &refused[..refused.len().min(5)]);
        }
        steps.push((*rate, n, took, cpu0, cpu1));
    }
    stop.cancel();
    let mut per_member: Vec<(usize, Got)> = Vec::new();
    for (edge, t) in tasks {
        per_member.push((edge, t.await.expect("member")));
    }
    let out_of_order = per_member.iter().filter(|(_, g)| !g.seqs.windows(2).all(|w| w[0] < w[1])).count();
    println!("members whose seqs were not strictly increasing: {out_of_order}");
    println!("rate msg/s | deliveries/s per edge | p50 ms | p99 ms | members missing any | edge CPU µs/delivery");
    for (step, (rate, n, took, cpu0, cpu1)) in steps.iter().enumerate() {
        let mut lat: Vec<u64> = Vec::new();
        let mut per_edge = vec![0usize; a.edges];
        let mut missing = 0;
        for (edge, g) in &per_member {
            let mine: Vec<&(u32, u32, u64)> = g.deliveries.iter().filter(|d| d.0 as usize == step).collect();
            if mine.len() < *n as usize {
                missing += 1;
            }
            per_edge[*edge] += mine.len();
            lat.extend(mine.iter().map(|d| d.2));
        }
        lat.sort_unstable();
        let secs = took.as_secs_f64();
        let cpu: f64 = cpu0.iter().zip(cpu1).map(|(a, b)| b.saturating_sub(*a).as_secs_f64()).sum();
        let total: usize = per_edge.iter().sum();
        let rates: Vec<String> = per_edge.iter().map(|d| format!("{:.0}", *d as f64 / secs)).collect();
        println!(
            "{rate:>10} | {:>21} | {:>6.1} | {:>6.1} | {missing:>19} | {:.2}",
            rates.join(" / "),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            cpu * 1e6 / total.max(1) as f64
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn scans_a_delivery() {
        let f = br#"{"type":"message_received","seq":42,"part":0,"data":{"_id":"x","content":"fo 3 17 123456","senderId":"y"}}"#;
        assert_eq!(super::scan(f), Some((42, 3, 17, 123456)));
        assert_eq!(super::scan(br#"{"type":"message_read","seq":4}"#), None);
    }
}
