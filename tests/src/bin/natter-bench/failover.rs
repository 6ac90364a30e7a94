//! Failover: one busy room, two messages workers (processes); a while into
//! the traffic the worker holding the room's partition is killed with -9.
//! Reports the longest gap between consecutive deliveries in the room
//! (before and after the kill), and whether anything was lost, duplicated
//! or delivered out of order.

use natter_nats::subjects::partition_of;
use natter_tests::TestApp;
use natter_tests::ws::{In, WsClient};
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct FailoverArgs {
    /// Messages per second into the room.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Seconds into the traffic when the worker is killed.
    #[arg(long, default_value_t = 6)]
    pub kill_at: u64,
}

#[allow(clippy::print_stdout)]
pub async fn run(args: FailoverArgs) {
    let mut app = TestApp::new().await;
    let edge = app.start_edge_process().await;
    let workers = [app.start_worker_process(), app.start_worker_process()];
    app.start_role_process("audit");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(edge, a, b).await;
    let mut rb = WsClient::connect(edge, &app.token(b, &[])).await;
    assert_eq!(rb.request("join_conversation", json!({"conversationId": conv})).await["type"], "ack");
    let mut wa = WsClient::connect(edge, &app.token(a, &[])).await;
    let total = (args.rate * args.secs as f64) as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let partition = partition_of(&conv, natter_nats::DEFAULT_PARTITIONS);

    let receiver = tokio::spawn(async move {
        let mut got: Vec<(Instant, u64)> = Vec::new();
        while (got.len() as u64) < total {
            match rb.next(Duration::from_secs(30)).await {
                Some(In::Json(v)) if v["type"] == "message_received" => {
                    if let Some(k) = v["data"]["content"].as_str().and_then(|c| c.parse().ok()) {
                        got.push((Instant::now(), k));
                    }
                }
                Some(In::Close(_)) | None => break,
                Some(_) => {}
            }
        }
        got
    });
    let start = Instant::now();
    let sender = tokio::spawn(async move {
        for k in 0..total {
            tokio::time::sleep_until((start + interval * k as u32).into()).await;
            let frame = json!({"type": "send_message", "requestId": format!("r{k}"),
                "data": {"conversationId": conv, "content": k.to_string(), "clientMsgId": format!("k{k}")}});
            if !wa.try_send_text(&frame.to_string()).await {
                break;
            }
        }
        wa
    });

    tokio::time::sleep_until((start + Duration::from_secs(args.kill_at)).into()).await;
    let pid = app.lease_holder("messages", partition).await.expect("a holder");
    let victim = app.process_with_pid(&workers, pid).expect("the holder is ours");
    let killed = Instant::now();
    app.processes[victim].kill9().await;
    println!(
        "{:?} into traffic: kill -9 the messages worker holding partition {partition} (pid {pid})",
        killed - start
    );

    let _wa = sender.await.expect("sender");
    let got = receiver.await.expect("receiver");
    let keys: Vec<u64> = got.iter().map(|(_, k)| *k).collect();
    let mut distinct = keys.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let out_of_order = keys.windows(2).filter(|w| w[1] <= w[0]).count();
    let gap = |from: Instant, to: Instant| {
        got.windows(2).filter(|w| w[0].0 >= from && w[1].0 <= to).map(|w| w[1].0 - w[0].0).max().unwrap_or_default()
    };
    let far = Instant::now() + Duration::from_secs(3600);
    println!(
        "natter-bench failover: {total} messages at {}/s; received {} ({} distinct), missing {}, out of order {out_of_order}",
        args.rate,
        keys.len(),
        distinct.len(),
        total - distinct.len() as u64
    );
    println!(
        "  longest gap between deliveries: {:?} before the kill, {:?} from the kill on",
        gap(start, killed),
        gap(killed - Duration::from_millis(500), far)
    );
}
