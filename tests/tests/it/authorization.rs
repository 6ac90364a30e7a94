//! Only participants join, send to or read a conversation, and only their
//! sockets receive its events.

use natter_tests::{TestApp, WsClient};
use serde_json::{Value, json};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_participant_cannot_join_send_read_or_receive() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;

    let mut wc = WsClient::connect(e2, &app.token(c, &["Admin"])).await;
    let r = wc.request("join_conversation", json!({"conversationId": conv})).await;
    assert_eq!((r["type"].as_str(), r["data"]["code"].as_str()), (Some("error"), Some("not_a_member")), "{r}");
    let r = wc.request("send_message", json!({"conversationId": conv, "content": "intrude", "clientMsgId": "x"})).await;
    assert_eq!(r["data"]["code"], "not_a_member", "{r}");
    // An unknown conversation answers the same (no probing).
    let unknown = mongodb::bson::oid::ObjectId::new().to_hex();
    let r = wc.request("join_conversation", json!({"conversationId": unknown})).await;
    assert_eq!(r["data"]["code"], "not_a_member", "{r}");

    let http = app.http();
    for path in [format!("/api/chat/conversations/{conv}"), format!("/api/chat/conversations/{conv}/messages")] {
        let resp = http.get(format!("http://{e2}{path}")).bearer_auth(app.token(c, &[])).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 403, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "not_a_member", "{path}: {v}");
    }
    // Without a token: 401.
    let resp = http.get(format!("http://{e2}/api/chat/conversations")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // C's conversation list does not show it.
    let (status, v) = app.get(e2, "/api/chat/conversations", c).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v, json!([]));

    // Participants talk; C (on the same edge as B) hears nothing.
    let mut wa = WsClient::connect(e1, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    for i in 0..20 {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        assert_eq!(r["type"], "ack");
    }
    assert_eq!(wb.events("message_received", 20, Duration::from_secs(10)).await.len(), 20);
    assert!(
        wc.events("message_received", 1, Duration::from_millis(500)).await.is_empty(),
        "non-participant got an event"
    );

    // Only A's legitimate 20 messages exist: the refused send wrote nothing.
    // (The history is written shortly after the events go out.)
    let v = natter_tests::eventually("the history written", Duration::from_secs(10), || async {
        let (status, v) = app.get(e1, &format!("/api/chat/conversations/{conv}/messages"), a).await;
        assert_eq!(status, 200, "{v}");
        (v["total"] == 20).then_some(v)
    })
    .await;
    assert!(v["messages"].as_array().unwrap().iter().all(|m| m["senderId"] == a.hex()));

    // Leaving stops delivery.
    let r = wb.request("leave_conversation", json!({"conversationId": conv})).await;
    assert_eq!(r["type"], "ack");
    wa.request("send_message", json!({"conversationId": conv, "content": "after leave"})).await;
    assert!(wb.events("message_received", 1, Duration::from_millis(800)).await.is_empty(), "event after leave");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_user_is_idempotent_and_validated() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let first = app.open_conversation(e, a, b).await;
    let again = app.open_conversation(e, b, a).await;
    assert_eq!(first, again, "both sides get the same conversation");
    let http = app.http();
    let (status, v) = app.get(e, &format!("/api/chat/conversations/{first}"), b).await;
    assert_eq!(status, 200, "{v}");
    let mut parts: Vec<String> =
        v["participantIds"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    parts.sort();
    let mut expect = vec![a.hex(), b.hex()];
    expect.sort();
    assert_eq!(parts, expect);
    assert_eq!(v["unreadCounts"], json!({}));
    for (body, code) in [(json!({"userId": "not-an-id"}), 400), (json!({}), 400), (json!({"userId": a.hex()}), 400)] {
        let resp = http
            .post(format!("http://{e}/api/chat/conversations/with-user"))
            .bearer_auth(app.token(a, &[]))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_payload", "{body}: {v}");
    }
    let n = app.store.conversations().count_documents(mongodb::bson::doc! {}).await.unwrap();
    assert_eq!(n, 1, "one conversation document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_paging_and_before_cursor() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut seqs = Vec::new();
    for i in 0..25 {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        seqs.push(r["data"]["seq"].as_u64().unwrap());
    }
    let path = |q: &str| format!("/api/chat/conversations/{conv}/messages?{q}");
    natter_tests::eventually("25 messages stored", Duration::from_secs(10), || async {
        let (_, v) = app.get(e, &path(""), b).await;
        (v["total"] == 25).then_some(())
    })
    .await;
    let get = |q: String| {
        let p = path(&q);
        let app = &app;
        async move { app.get(e, &p, b).await.1 }
    };
    let contents = |v: &Value| {
        v["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    };
    let p1 = get("page=1&limit=10".into()).await;
    assert_eq!(contents(&p1), (15..25).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(
        (p1["page"].as_u64(), p1["pageSize"].as_u64(), p1["hasMore"].as_bool()),
        (Some(1), Some(10), Some(true))
    );
    let p3 = get("page=3&limit=10".into()).await;
    assert_eq!(contents(&p3), (0..5).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(p3["hasMore"], false);
    let before = get(format!("before={}&limit=5", seqs[10])).await;
    assert_eq!(contents(&before), (5..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(before["hasMore"], true);
    let first = get(format!("before={}&limit=5", seqs[3])).await;
    assert_eq!(contents(&first), (0..3).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert_eq!(first["hasMore"], false);
    let (status, v) = app.get(e, &path("limit=abc"), b).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_payload")));
}
