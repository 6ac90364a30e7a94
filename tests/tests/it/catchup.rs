//! Reconnect catch-up on both protocols: a client that comes back (on any
//! edge) with the last `seq` it saw in a room gets what it missed, in order,
//! exactly once, then the live events; one too far behind is told to
//! refetch over REST.

use natter_tests::sio::{Transports, WAIT};
use natter_tests::stack::Pair;
use natter_tests::ws::In;
use natter_tests::{SioClient, TestApp, WsClient};
use serde_json::{Value, json};
use std::time::Duration;

/// Every JSON frame until nothing arrives for `quiet`.
async fn drain(ws: &mut WsClient, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(f) = ws.next(quiet).await {
        if let In::Json(v) = f {
            out.push(v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_on_another_edge_misses_nothing() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let Pair { a, b, conv, mut wa, mut wb } = app.chatting_pair(e1).await;
    let from_b = wb.request("send_message", json!({"conversationId": conv, "content": "from b"})).await;
    for i in 0..10 {
        wa.request("send_message", json!({"conversationId": conv, "content": format!("before {i}")})).await;
    }
    let seen = wb.events("message_received", 11, WAIT).await;
    let last_seq = seen.iter().map(|e| e["seq"].as_u64().unwrap()).max().unwrap();
    drop(wb);

    // Steady traffic from A while B is away, and after B is back.
    let token = app.token(a, &[]);
    let conv2 = conv.clone();
    let sender = tokio::spawn(async move {
        let mut w = WsClient::connect(e1, &token).await;
        let mut ids = Vec::new();
        for i in 0..120 {
            let r = w.request("send_message", json!({"conversationId": conv2, "content": format!("steady {i}")})).await;
            ids.push(r["data"]["messageId"].as_str().unwrap().to_string());
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        ids
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    // While B is away: a delete and a read in the room.
    let del = wa.request("send_message", json!({"conversationId": conv, "content": "to delete"})).await;
    let del_id = del["data"]["messageId"].as_str().unwrap().to_string();
    // Deleting needs the message applied: wait until A's socket has it.
    let mut applied = false;
    for _ in 0..200 {
        let got = wa.events("message_received", 1, WAIT).await;
        assert!(!got.is_empty(), "the message to delete was never delivered");
        if got[0]["data"]["_id"] == del_id {
            applied = true;
            break;
        }
    }
    assert!(applied);
    let r = wa.request("delete_message", json!({"messageId": del_id})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = wa.request("mark_as_read", json!({"messageId": from_b["data"]["messageId"]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // B comes back on the other edge with the last seq it saw.
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    let ack = wb.request("join_conversation", json!({"conversationId": conv, "lastSeq": last_seq})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["data"]["catchUp"]["complete"], true, "{ack}");
    assert!(ack["data"]["catchUp"]["events"].as_u64().unwrap() > 0);
    let steady = sender.await.unwrap();
    let frames = drain(&mut wb, Duration::from_secs(2)).await;

    // Room events: in seq order, none twice, none before lastSeq.
    let room: Vec<&Value> =
        frames.iter().filter(|f| f["seq"].is_u64() && f["type"] != "message_status_updated").collect();
    let seqs: Vec<(u64, u64)> =
        room.iter().map(|f| (f["seq"].as_u64().unwrap(), f["part"].as_u64().unwrap_or(0))).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no duplicate: {seqs:?}");
    assert!(seqs.iter().all(|(s, _)| *s > last_seq));
    let received: Vec<String> = room
        .iter()
        .filter(|f| f["type"] == "message_received")
        .map(|f| f["data"]["_id"].as_str().unwrap().to_string())
        .collect();
    // Every message after lastSeq: A's steady ones and the deleted one.
    let mut want = steady.clone();
    want.push(del_id.clone());
    let mut got_sorted = received.clone();
    got_sorted.sort();
    want.sort();
    assert_eq!(got_sorted, want, "exactly the missed and the live messages");
    let kinds: Vec<&str> =
        frames.iter().map(|f| f["type"].as_str().unwrap_or("")).filter(|k| *k != "message_received").collect();
    let deleted: Vec<&&Value> = room.iter().filter(|f| f["type"] == "message_deleted").collect();
    assert_eq!(deleted.len(), 1, "{kinds:?} {deleted:?}");
    assert_eq!(room.iter().filter(|f| f["type"] == "message_read").count(), 1, "{kinds:?}");

    // History agrees, once written (shortly after the events go out).
    natter_tests::eventually("the history written", Duration::from_secs(10), || async {
        let (_, h) = app.get(e2, &format!("/api/chat/conversations/{conv}/messages?limit=1"), b).await;
        (h["total"] == 11 + 120).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socketio_client_catches_up_from_the_seq_it_was_given() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    wa.request("join_conversation", json!({"conversationId": conv})).await;
    let mut cb = SioClient::connect(e, &app.token(b, &[]), Transports::Default).await;
    cb.request("join_conversation", json!({"conversationId": conv})).await;
    wa.request("send_message", json!({"conversationId": conv, "content": "seen"})).await;
    let ev = cb.wait(|v| v["kind"] == "event" && v["event"] == "message_received", WAIT).await;
    // The event's second argument carries its seq.
    let last_seq = ev["args"][1]["seq"].as_u64().expect("seq in the second argument");
    assert_eq!(ev["args"][0]["seq"].as_u64(), Some(last_seq));
    cb.disconnect().await;
    let mut missed = Vec::new();
    for i in 0..15 {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("missed {i}")})).await;
        missed.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    // All applied (so all in the events stream) before B comes back.
    let echoed = wa.events("message_received", 16, WAIT).await;
    assert_eq!(echoed.last().map(|m| &m["data"]["_id"]), Some(&json!(missed[14])));
    let mut cb = SioClient::connect(e, &app.token(b, &[]), Transports::WebsocketOnly).await;
    let ack = cb.request("join_conversation", json!({"conversationId": conv, "lastSeq": last_seq})).await;
    assert_eq!(ack["catchUp"]["events"], 15, "{ack}");
    let got = cb.events("message_received", 15, WAIT).await;
    let ids: Vec<&str> = got.iter().map(|m| m["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, missed.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(cb.no_more("message_received", Duration::from_millis(700)).await.is_empty());
    let live = wa.request("send_message", json!({"conversationId": conv, "content": "live"})).await;
    assert_eq!(cb.events("message_received", 1, WAIT).await[0]["_id"], live["data"]["messageId"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_far_behind_is_told_to_refetch() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("CATCHUP_MAX_EVENTS".into(), "5".into());
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let first = wa.request("send_message", json!({"conversationId": conv, "content": "first"})).await;
    let last_seq = first["data"]["seq"].as_u64().unwrap();
    for i in 0..8 {
        wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
    }
    natter_tests::eventually("messages applied", WAIT, || async {
        let (_, h) = app.get(e, &format!("/api/chat/conversations/{conv}/messages"), b).await;
        (h["total"] == 9).then_some(())
    })
    .await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    let ack = wb.request("join_conversation", json!({"conversationId": conv, "lastSeq": last_seq})).await;
    assert_eq!(ack["data"]["catchUp"]["complete"], false, "{ack}");
    let resync = wb.events("resync_required", 1, WAIT).await;
    assert_eq!(resync[0]["data"]["conversationId"], conv);
    assert_eq!(resync[0]["data"]["lastSeq"], last_seq);
    // A seq that was never stored: refetch too.
    let ack = wb.request("join_conversation", json!({"conversationId": conv, "lastSeq": 1_000_000})).await;
    assert_eq!(ack["data"]["catchUp"]["reason"], "lastSeq is not a stored command", "{ack}");
    // Live events go on.
    let live = wa.request("send_message", json!({"conversationId": conv, "content": "live"})).await;
    let got = wb.events("message_received", 1, WAIT).await;
    assert_eq!(got[0]["data"]["_id"], live["data"]["messageId"]);
}

/// The sender is away while the recipient's device gets its messages: back,
/// it gets the delivery receipts it missed (they travel on its own subject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_back_gets_the_receipts_it_missed() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    let mut wa = WsClient::connect(e1, &app.token(a, &[])).await;
    wa.request("join_conversation", json!({"conversationId": conv})).await;
    let mut ids = Vec::new();
    let mut last_seq = 0;
    for i in 0..5 {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        ids.push(r["data"]["messageId"].as_str().unwrap().to_string());
        last_seq = r["data"]["seq"].as_u64().unwrap();
    }
    drop(wa);

    // B was not connected: it catches up from the start of the room, and
    // its device getting them makes them delivered.
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    let ack = wb.request("join_conversation", json!({"conversationId": conv, "lastSeq": 0})).await;
    assert_eq!(ack["data"]["catchUp"]["complete"], true, "{ack}");
    let got = wb.events("message_received", 5, WAIT).await;
    assert_eq!(got.iter().map(|m| m["data"]["_id"].as_str().unwrap()).collect::<Vec<_>>(), ids);
    natter_tests::eventually("delivered in MongoDB", WAIT, || async {
        let (_, h) = app.get(e2, &format!("/api/chat/conversations/{conv}/messages"), b).await;
        h["messages"].as_array()?.iter().all(|m| m["status"] == "delivered").then_some(())
    })
    .await;

    // A comes back with the seq of its last send.
    let mut wa = WsClient::connect(e2, &app.token(a, &[])).await;
    let ack = wa.request("join_conversation", json!({"conversationId": conv, "lastSeq": last_seq})).await;
    assert_eq!(ack["data"]["catchUp"]["complete"], true, "{ack}");
    let st = wa.events("message_status_updated", 5, WAIT).await;
    let mut got: Vec<String> = st.iter().map(|e| e["data"]["messageId"].as_str().unwrap().to_string()).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "a receipt for each of its messages");
    assert!(st.iter().all(|e| e["data"]["status"] == "delivered"));
    assert!(wa.events("message_status_updated", 1, Duration::from_millis(700)).await.is_empty(), "once each");
}
