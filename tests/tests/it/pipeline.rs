//! The message pipeline end to end: WebSocket → edge → JetStream → messages
//! worker → MongoDB → events → the other participant, across two edges and
//! two workers.

use natter_tests::{TestApp, WsClient};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;

async fn send_many(mut ws: WsClient, conv: String, prefix: &'static str, n: usize) -> (WsClient, Vec<(String, u64)>) {
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
    let ta = tokio::spawn(send_many(wa, conv.clone(), "a", N));
    let tb = tokio::spawn(send_many(wb, conv.clone(), "b", N));
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
