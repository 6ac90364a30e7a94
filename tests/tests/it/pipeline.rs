//! The message pipeline end to end: WebSocket → edge → JetStream → messages
//! worker → MongoDB → events → the other participant, across two edges and
//! two workers.

use natter_tests::{TestApp, WsClient};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

/// Sends `n` messages, `pause` apart; the socket and each ack's
/// `(messageId, seq)`.
async fn send_many(
    mut ws: WsClient,
    conv: String,
    prefix: &'static str,
    n: usize,
    pause: Duration,
) -> (WsClient, Vec<(String, u64)>) {
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        let r = ws
            .request(
                "send_message",
                json!({"conversationId": conv, "content": format!("{prefix} {i}"), "clientMsgId": format!("{prefix}-{i}")}),
            )
            .await;
        assert_eq!(r["type"], "ack", "send {i}: {r}");
        acks.push((r["data"]["messageId"].as_str().unwrap().to_string(), r["data"]["seq"].as_u64().unwrap()));
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    (ws, acks)
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_edges_two_workers_thousand_each_way() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;

    let mut wa = WsClient::connect(e1, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    for ws in [&mut wa, &mut wb] {
        let r = ws.request("join_conversation", json!({"conversationId": conv})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    const N: usize = 1000;
    let ta = tokio::spawn(send_many(wa, conv.clone(), "a", N, Duration::ZERO));
    let tb = tokio::spawn(send_many(wb, conv.clone(), "b", N, Duration::ZERO));
    let (mut wa, acks_a) = ta.await.unwrap();
    let (mut wb, acks_b) = tb.await.unwrap();

    let mut all_ids: Vec<(u64, String)> = acks_a.iter().chain(&acks_b).map(|(id, s)| (*s, id.clone())).collect();
    all_ids.sort();
    let expected: Vec<String> = all_ids.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(expected.iter().collect::<HashSet<_>>().len(), 2 * N, "distinct ids");

    for (who, ws) in [("a", &mut wa), ("b", &mut wb)] {
        let ev = ws.events("message_received", 2 * N, Duration::from_secs(120)).await;
        assert_eq!(ev.len(), 2 * N, "{who} received {} of {}", ev.len(), 2 * N);
        let s = seqs(&ev);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "{who}: events out of seq order");
        let ids: Vec<String> = ev.iter().map(|e| e["data"]["_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, expected, "{who}: ids differ from acked ids in seq order");
        // Nothing more arrives (exactly once).
        assert!(ws.events("message_received", 1, Duration::from_millis(500)).await.is_empty(), "{who}: extra event");
    }

    // History over REST matches, page by page, oldest first within a page.
    let mut from_rest: Vec<String> = Vec::new();
    let pages = (2 * N).div_ceil(100);
    for page in (1..=pages).rev() {
        let (status, v) =
            app.get(e2, &format!("/api/chat/conversations/{conv}/messages?page={page}&limit=100"), b).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["total"], 2 * N, "total");
        assert_eq!(v["hasMore"], page < pages, "hasMore on page {page}");
        from_rest.extend(v["messages"].as_array().unwrap().iter().map(|m| m["_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(from_rest, expected, "REST history differs");

    // Unread counts: each side has the other's N messages unread.
    let (status, convs) = app.get(e1, "/api/chat/conversations", a).await;
    assert_eq!(status, 200, "{convs}");
    assert_eq!(convs.as_array().unwrap().len(), 1);
    let c = &convs[0];
    assert_eq!(c["unreadCounts"][a.hex()], N as u64, "{c}");
    assert_eq!(c["unreadCounts"][b.hex()], N as u64, "{c}");
    assert_eq!(c["lastMessageId"]["_id"], json!(expected.last().unwrap()), "last message populated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_msg_id_three_times_is_one_message() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut acks = Vec::new();
    for _ in 0..3 {
        let r = wa
            .request("send_message", json!({"conversationId": conv, "content": "once", "clientMsgId": "retry-1"}))
            .await;
        assert_eq!(r["type"], "ack", "{r}");
        acks.push(r["data"].clone());
    }
    assert!(acks.iter().all(|x| x["messageId"] == acks[0]["messageId"]), "{acks:?}");
    assert!(acks.iter().all(|x| x["seq"] == acks[0]["seq"]), "{acks:?}");
    assert_eq!(acks.iter().map(|x| x["duplicate"].as_bool().unwrap()).collect::<Vec<_>>(), [false, true, true]);
    let ev = wb.events("message_received", 2, Duration::from_secs(3)).await;
    assert_eq!(ev.len(), 1, "b must receive the message exactly once");
    let v: Value = app
        .http()
        .get(format!("http://{e}/api/chat/conversations/{conv}/messages"))
        .bearer_auth(app.token(a, &[]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"], 1);
    assert_eq!(v["messages"][0]["_id"], acks[0]["messageId"]);
    assert_eq!(v["messages"][0]["clientMsgId"], "retry-1");
}

/// Receives `n` messages in `conv` on `edge`, through the edge going away:
/// on a close it connects again (waiting for the edge to be back) and
/// joins with the last seq it saw (at first `base`, a command stored before
/// any of the messages), so catch-up sends what it missed. Every
/// `(seq, id)` received, in the order received, and how many times it came
/// back.
async fn receive_through_restarts(
    edge: std::net::SocketAddr,
    token: String,
    conv: String,
    n: usize,
    base: u64,
    joined: tokio::sync::oneshot::Sender<()>,
) -> (Vec<(u64, String)>, usize) {
    let mut joined = Some(joined);
    use natter_tests::ws::{Handshake, In};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut got: Vec<(u64, String)> = Vec::new();
    let mut reconnects = 0;
    let mut ws: Option<WsClient> = None;
    while got.len() < n && tokio::time::Instant::now() < deadline {
        let Some(w) = ws.as_mut() else {
            // (Re)connect and join from the last seq seen.
            // The edge may be down: only a listening edge is asked.
            if tokio::net::TcpStream::connect(edge).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let h = Handshake { token: Some(&token), in_query: false, origin: None };
            if let Ok(mut w) = WsClient::handshake(edge, h).await {
                let last = got.last().map_or(base, |(s, _)| *s);
                let r = w.request("join_conversation", json!({"conversationId": conv, "lastSeq": last})).await;
                if r["type"] == "ack" {
                    assert_eq!(r["data"]["catchUp"]["complete"], true, "{r}");
                    match joined.take() {
                        Some(j) => {
                            let _ = j.send(());
                        }
                        None => reconnects += 1,
                    }
                    ws = Some(w);
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let asked = tokio::time::Instant::now();
        match w.next(Duration::from_secs(1)).await {
            Some(In::Json(v)) if v["type"] == "message_received" => {
                got.push((v["seq"].as_u64().unwrap(), v["data"]["_id"].as_str().unwrap().to_string()));
            }
            Some(In::Close(_)) => ws = None,
            Some(_) => {}
            // Nothing at once: the connection dropped without a close.
            None if asked.elapsed() < Duration::from_millis(900) => ws = None,
            None => {}
        }
    }
    (got, reconnects)
}

/// Three edges and three workers of each role, users spread over them,
/// through an edge restart and a messages worker killed with -9: every
/// recipient gets every message exactly once and in order (live or by
/// catch-up after the restart), and the database holds each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_edges_three_workers_each_through_an_edge_restart_and_a_kill() {
    let mut app = TestApp::new().await;
    app.with_s3();
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    let stop3 = tokio_util::sync::CancellationToken::new();
    let (e3, run3) = app.start_edge_at("127.0.0.1:0", stop3.clone()).await;
    let workers: Vec<usize> = (0..3).map(|_| app.start_worker_process()).collect();
    for _ in 0..3 {
        app.start_audit_worker();
        app.start_attachments_worker();
    }
    // Three pairs: senders on the edges that stay, recipients on all three.
    const N: usize = 150;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, (send_on, recv_on)) in [(e2, e1), (e1, e2), (e1, e3)].into_iter().enumerate() {
        let (s, r) = (app.user(), app.user());
        let conv = app.open_conversation(e1, s, r).await;
        let base = {
            let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
            let mut cmds = js.get_stream(natter_nats::Subjects::new(&app.name).cmd_stream()).await.unwrap();
            cmds.info().await.unwrap().state.last_sequence
        };
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let rx = tokio::spawn(receive_through_restarts(recv_on, app.token(r, &[]), conv.clone(), N, base, ready));
        // The recipient follows the room before anything is sent.
        is_ready.await.expect("the recipient joined");
        let ws = WsClient::connect(send_on, &app.token(s, &[])).await;
        let prefix: &'static str = ["p0", "p1", "p2"][i];
        senders.push(tokio::spawn(send_many(ws, conv, prefix, N, Duration::from_millis(8))));
        receivers.push(rx);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.processes[workers[0]].kill9().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The third edge goes away (its sockets are told "going away") and
    // comes back on the same address.
    stop3.cancel();
    run3.await.unwrap().unwrap();
    let (again, _run) = app.start_edge_at(&e3.to_string(), app.cancel.child_token()).await;
    assert_eq!(again, e3);

    let mut total = 0;
    for (i, (tx, rx)) in senders.into_iter().zip(receivers).enumerate() {
        let (_, acks) = tx.await.unwrap();
        let mut acked: Vec<(u64, String)> = acks.into_iter().map(|(id, seq)| (seq, id)).collect();
        let (got, reconnects) = rx.await.unwrap();
        // The third pair's recipient was on the edge that restarted.
        assert_eq!(reconnects, usize::from(i == 2), "pair {i}: came back {reconnects} times");
        acked.sort();
        let missing: Vec<u64> = acked.iter().map(|(s, _)| *s).filter(|s| !got.iter().any(|(g, _)| g == s)).collect();
        assert_eq!(got.len(), N, "pair {i}: received {} of {N}; missing seqs {missing:?}", got.len());
        let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "pair {i}: out of order or twice: {seqs:?}");
        assert_eq!(got, acked, "pair {i}: what was received is what was stored, in seq order");
        total += N;
    }
    let stored = natter_tests::eventually("every message written", Duration::from_secs(30), || async {
        let n = app.store.messages().count_documents(mongodb::bson::doc! {}).await.ok()? as usize;
        (n == total).then_some(n)
    })
    .await;
    assert_eq!(stored, total, "each message stored once");
}
