//! Per-user limits hold across a user's connections and edges: messages
//! per second and groups per day (uploads per minute are in
//! `attachments`). The refusal is the code clients know, `rate_limited`;
//! nothing refused is stored, and other users are not held back.

use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_on_many_sockets_and_two_edges_sends_within_one_budget() {
    let mut app = TestApp::new().await;
    // 5 a second: 10 in each two-second window.
    app.edge_env.insert("USER_SENDS_PER_SEC".into(), "5".into());
    app.edge_env.insert("USER_GROUPS_PER_DAY".into(), "2".into());
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    let ta = app.token(a, &[]);
    // Two sockets on one edge, one on the other.
    let mut socks =
        [WsClient::connect(e1, &ta).await, WsClient::connect(e1, &ta).await, WsClient::connect(e2, &ta).await];
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;

    // 15 sends round the three sockets, all in one window (tried again in
    // the next if a slow moment let them run over).
    let mut acked: Vec<String> = Vec::new();
    let mut counted = None;
    for attempt in 0..3 {
        natter_tests::room_in_window(2, Duration::from_millis(1900)).await;
        let window = natter_tests::window(2);
        let (mut ok, mut limited) = (Vec::new(), 0);
        for i in 0..15 {
            let r = socks[i % 3]
                .request("send_message", json!({"conversationId": conv, "content": format!("t{attempt} m{i}")}))
                .await;
            if r["type"] == "ack" {
                ok.push(r["data"]["messageId"].as_str().unwrap().to_string());
            } else {
                assert_eq!(r["data"]["code"], "rate_limited", "{r}");
                limited += 1;
            }
        }
        acked.extend(ok.iter().cloned());
        if natter_tests::window(2) == window {
            counted = Some((ok.len(), limited));
            break;
        }
    }
    assert_eq!(counted, Some((10, 5)), "10 of 15 in a window, whichever socket or edge they came from");
    // The recipient gets exactly what was acked, in order.
    let got = wb.events("message_received", acked.len() + 1, WAIT).await;
    let ids: Vec<&str> = got.iter().map(|f| f["data"]["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, acked.iter().map(String::as_str).collect::<Vec<_>>());

    // Another user is not held back by a's budget.
    let conv_cb = app.open_conversation(e2, c, b).await;
    let mut wc = WsClient::connect(e1, &app.token(c, &[])).await;
    let r = wc.request("send_message", json!({"conversationId": conv_cb, "content": "me too"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    // And a's budget comes back with the next window.
    natter_tests::room_in_window(2, Duration::from_millis(1999)).await;
    let r = socks[2].request("send_message", json!({"conversationId": conv, "content": "later"})).await;
    assert_eq!(r["type"], "ack", "{r}");

    // The same budget holds for a Socket.IO client of a's.
    let mut sio = natter_tests::SioClient::connect(e2, &ta, natter_tests::sio::Transports::WebsocketOnly).await;
    let mut counted = None;
    for _ in 0..3 {
        natter_tests::room_in_window(2, Duration::from_millis(1900)).await;
        let window = natter_tests::window(2);
        let mut codes = Vec::new();
        for i in 0..12 {
            let r = sio.request("send_message", json!({"conversationId": conv, "content": format!("s{i}")})).await;
            codes.push(r["error"]["code"].as_str().unwrap_or("ack").to_string());
        }
        if natter_tests::window(2) == window {
            counted = Some(codes);
            break;
        }
    }
    let codes = counted.expect("twelve sends in one window");
    assert_eq!(codes.iter().filter(|c| *c == "ack").count(), 10, "{codes:?}");
    assert!(codes[10..].iter().all(|c| c == "rate_limited"), "{codes:?}");

    // Groups per day, across edges: the third is refused.
    let admin = app.token(a, &["Admin"]);
    let body = json!({"name": "g", "memberIds": [b.hex()]});
    let mut statuses = Vec::new();
    for e in [e1, e2, e1] {
        let (s, v) = app.call(Method::POST, e, "/api/chat/groups", &admin, Some(body.clone())).await;
        statuses.push((s, v["error"]["code"].as_str().map(String::from)));
    }
    assert_eq!(statuses, [(201, None), (201, None), (429, Some("rate_limited".to_string()))]);
    let (_, groups) = app.get(e2, "/api/chat/groups", b).await;
    assert_eq!(groups.as_array().map(Vec::len), Some(2), "the refused group was never made: {groups}");
}

/// A burst of one user's sends on one edge, from many sockets at once,
/// gets exactly the budget: the edge asks for one lease at a time and the
/// others wait and spend it (racing each other for the count, some were
/// refused as contended, short of the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_edge_gets_the_whole_budget() {
    const SOCKETS: usize = 40;
    const EACH: usize = 6;
    let mut app = TestApp::new().await;
    // 100 a second: 200 in each two-second window, leased 20 at a time.
    app.edge_env.insert("USER_SENDS_PER_SEC".into(), "100".into());
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let ta = app.token(a, &[]);
    let mut socks = Vec::new();
    for _ in 0..SOCKETS {
        socks.push(WsClient::connect(e, &ta).await);
    }
    let mut counted = None;
    for attempt in 0..3 {
        natter_tests::room_in_window(2, Duration::from_millis(1000)).await;
        let window = natter_tests::window(2);
        let mut rids = Vec::new();
        for k in 0..EACH {
            for (i, s) in socks.iter_mut().enumerate() {
                let data = json!({"conversationId": conv, "content": format!("b{attempt} {k} {i}")});
                rids.push((i, s.send("send_message", data).await));
            }
        }
        let (mut ok, mut limited) = (0, 0);
        for (i, rid) in &rids {
            let r = socks[*i].reply_to(rid, WAIT).await;
            if r["type"] == "ack" {
                ok += 1;
            } else {
                assert_eq!(r["data"]["code"], "rate_limited", "{r}");
                limited += 1;
            }
        }
        if natter_tests::window(2) == window {
            counted = Some((ok, limited));
            break;
        }
    }
    assert_eq!(counted, Some((200, SOCKETS * EACH - 200)), "the whole budget of the window, and no more");
}
