//! Bad input gets its documented error or refusal, and the server keeps
//! serving everyone else.

use fastwebsockets::{Frame, OpCode, Payload};
use natter_tests::ws::Handshake;
use natter_tests::{TestApp, WsClient};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

async fn expect_error(ws: &mut WsClient, raw: &str, code: &str, rid: Option<&str>) {
    ws.send_text(raw).await;
    let v = match ws.next(Duration::from_secs(5)).await {
        Some(natter_tests::ws::In::Json(v)) => v,
        other => panic!("{raw}: expected an error frame, got {other:?}"),
    };
    assert_eq!(v["type"], "error", "{raw}: {v}");
    assert_eq!(v["data"]["code"], code, "{raw}: {v}");
    assert_eq!(v["requestId"].as_str(), rid, "{raw}: {v}");
}

/// A healthy exchange: the server still serves.
async fn still_serving(app: &TestApp, edge: SocketAddr, conv: &str, a: natter_shared::ids::UserId) {
    let mut ws = WsClient::connect(edge, &app.token(a, &[])).await;
    let r = ws.request("send_message", json!({"conversationId": conv, "content": "still here"})).await;
    assert_eq!(r["type"], "ack", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_stable_errors_and_the_connection_stays_up() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;

    expect_error(&mut ws, "{not json", "invalid_json", None).await;
    expect_error(&mut ws, "[1,2,3]", "invalid_frame", None).await;
    expect_error(&mut ws, r#"{"requestId":"r1"}"#, "invalid_frame", None).await;
    expect_error(&mut ws, r#"{"type":"launch_rockets","requestId":"r2"}"#, "unknown_event", Some("r2")).await;
    expect_error(
        &mut ws,
        r#"{"type":"send_message","requestId":"r3","data":{"content":"no room"}}"#,
        "invalid_payload",
        Some("r3"),
    )
    .await;
    expect_error(
        &mut ws,
        &json!({"type":"send_message","requestId":"r4","data":{"conversationId": conv, "content": 42}}).to_string(),
        "invalid_payload",
        Some("r4"),
    )
    .await;
    expect_error(
        &mut ws,
        &json!({"type":"send_message","requestId":"r5","data":{"conversationId": "zzz", "content": "x"}}).to_string(),
        "invalid_payload",
        Some("r5"),
    )
    .await;
    expect_error(
        &mut ws,
        &json!({"type":"send_message","requestId":"r6","data":{"conversationId": conv, "content": "x", "messageType": "system"}}).to_string(),
        "invalid_payload",
        Some("r6"),
    )
    .await;
    expect_error(
        &mut ws,
        &json!({"type":"send_message","requestId":"r7","data":{"conversationId": conv, "content": "x".repeat(17 * 1024)}}).to_string(),
        "invalid_payload",
        Some("r7"),
    )
    .await;
    ws.send_frame(Frame::binary(Payload::Owned(vec![1, 2, 3]))).await;
    match ws.next(Duration::from_secs(5)).await {
        Some(natter_tests::ws::In::Json(v)) => {
            assert_eq!(v["data"]["code"], "invalid_frame", "{v}")
        }
        other => panic!("binary frame: {other:?}"),
    }
    // A message split into fragments is reassembled.
    let text =
        json!({"type":"send_message","requestId":"frag","data":{"conversationId": conv, "content": "in pieces"}})
            .to_string();
    let (p1, p2) = text.as_bytes().split_at(text.len() / 2);
    ws.send_frame(Frame::new(false, OpCode::Text, None, Payload::Owned(p1.to_vec()))).await;
    ws.send_frame(Frame::new(true, OpCode::Continuation, None, Payload::Owned(p2.to_vec()))).await;
    let r = ws.reply_to("frag", Duration::from_secs(5)).await;
    assert_eq!(r["type"], "ack", "{r}");
    // The same connection still works, and nothing invalid was stored.
    let r = ws.request("send_message", json!({"conversationId": conv, "content": "valid"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    natter_tests::eventually("two messages", Duration::from_secs(10), || async {
        let (_, v) = app.get(e, &format!("/api/chat/conversations/{conv}/messages"), a).await;
        (v["total"] == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009_and_others_keep_working() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;

    let mut big = WsClient::connect(e, &app.token(a, &[])).await;
    // The edge may close before the whole frame is written.
    let _ = big.try_send_text(&"x".repeat(200 * 1024)).await;
    assert_eq!(big.closed(Duration::from_secs(5)).await, Some(1009));

    // Fragments that add up past the limit are refused too.
    let mut frag = WsClient::connect(e, &app.token(a, &[])).await;
    let chunk = vec![b'x'; 40 * 1024];
    frag.send_frame(Frame::new(false, OpCode::Text, None, Payload::Owned(chunk.clone()))).await;
    frag.send_frame(Frame::new(false, OpCode::Continuation, None, Payload::Owned(chunk))).await;
    assert_eq!(frag.closed(Duration::from_secs(5)).await, Some(1009));

    still_serving(&app, e, &conv, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let a = app.user();
    let good = app.token(a, &[]);
    let refuse = |token: Option<String>, in_query: bool, origin: Option<&'static str>| async move {
        let h = Handshake { token: token.as_deref(), in_query, origin };
        match WsClient::handshake(e, h).await {
            Ok(_) => (101, Value::Null),
            Err(r) => (r.status, serde_json::from_str(&r.body).unwrap_or(Value::Null)),
        }
    };
    // Accepted: header, query parameter (browsers), an allowed origin.
    assert_eq!(refuse(Some(good.clone()), false, None).await.0, 101);
    assert_eq!(refuse(Some(good.clone()), true, None).await.0, 101);
    assert_eq!(refuse(Some(good.clone()), true, Some("http://localhost:3000")).await.0, 101);

    let (s, v) = refuse(None, false, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("missing_token")));
    let (s, v) = refuse(Some("garbage".into()), false, None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (401, Some("invalid_token")));

    // Another secret, alg none, expired, no exp, a non-ObjectId user id.
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let key = EncodingKey::from_secret(natter_tests::stack::JWT_SECRET.as_bytes());
    let sign = |claims: Value| encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
    let other = encode(
        &Header::new(Algorithm::HS256),
        &json!({"id": a.hex(), "exp": now + 600}),
        &EncodingKey::from_secret(b"some-other-secret-0123456789"),
    )
    .unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"id": a.hex(), "exp": now + 600}).to_string())
    );
    let hs512 = encode(&Header::new(Algorithm::HS512), &json!({"id": a.hex(), "exp": now + 600}), &key).unwrap();
    for (tok, code) in [
        (other, "invalid_token"),
        (none, "invalid_token"),
        (hs512, "invalid_token"),
        (sign(json!({"id": a.hex(), "exp": now - 600})), "token_expired"),
        (sign(json!({"id": a.hex()})), "invalid_token"),
        (sign(json!({"id": "alice", "exp": now + 600})), "invalid_user_id"),
    ] {
        let (s, v) = refuse(Some(tok.clone()), false, None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (401, Some(code)), "token {tok}");
    }
    let (s, v) = refuse(Some(good.clone()), false, Some("http://evil.example")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("origin_not_allowed")));
    // Still serving.
    assert_eq!(refuse(Some(good), false, None).await.0, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_rate_limited_then_closed() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("WS_RATE_PER_SEC".into(), "5".into());
    let e = app.start_edge().await;
    let a = app.user();
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    let unknown = mongodb::bson::oid::ObjectId::new().to_hex();
    for _ in 0..30 {
        ws.send("join_conversation", json!({"conversationId": unknown})).await;
    }
    let mut codes = Vec::new();
    while codes.len() < 30 {
        match ws.next(Duration::from_secs(5)).await {
            Some(natter_tests::ws::In::Json(v)) => codes.push(v["data"]["code"].as_str().unwrap_or("").to_string()),
            other => panic!("{other:?}"),
        }
    }
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert!(limited >= 15, "expected most of a 30-frame burst limited at 5/s (burst 10), got {limited}: {codes:?}");
    assert!(codes.iter().any(|c| c == "not_a_member"), "the first requests are served");
    // Keep flooding with garbage: the edge closes with policy violation
    // (writing on after that fails once the edge has dropped the connection).
    for _ in 0..200 {
        if !ws.try_send_text("{").await {
            break;
        }
    }
    assert_eq!(ws.closed(Duration::from_secs(10)).await, Some(1008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let http = app.http();
    let r = http.get(format!("http://{e}/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http.get(format!("http://{e}/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v, json!({"nats": true, "mongodb": true}));
    let r = http.get(format!("http://{e}/no/such/route")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
