//! The Socket.IO endpoint driven by the stock socket.io-client v4 (Node,
//! from npm), as the NestJS module's front end uses it: tokens in
//! `auth.token`, both transports, the module's events and payloads,
//! acknowledgements, binary uploads, a native `/ws` user in the same room,
//! reconnect after an edge restart; and raw Engine.IO / Socket.IO requests
//! that break the protocol.

use natter_tests::sio::{Transports, WAIT};
use natter_tests::{SioClient, TestApp, WsClient};
use serde_json::json;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_a_token_and_refuse_bad_ones() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let a = app.user();
    for t in [Transports::WebsocketOnly, Transports::PollingOnly, Transports::Default] {
        let mut c = SioClient::spawn().await;
        c.start(e, Some("not.a.token"), t).await;
        let v = c.wait(|v| v["kind"] != "event", WAIT).await;
        assert_eq!(v["kind"], "connect_error", "{t:?}: {v}");
        assert_eq!(v["data"]["code"], "invalid_token", "{t:?}: {v}");

        let mut c = SioClient::spawn().await;
        c.start(e, None, t).await;
        let v = c.wait(|v| v["kind"] != "event", WAIT).await;
        assert_eq!((v["kind"].as_str(), v["data"]["code"].as_str()), (Some("connect_error"), Some("missing_token")));

        let expired = app.expired_token(a);
        let mut c = SioClient::spawn().await;
        c.start(e, Some(&expired), t).await;
        let v = c.wait(|v| v["kind"] != "event", WAIT).await;
        assert_eq!(v["data"]["code"], "token_expired", "{v}");

        let mut c = SioClient::connect(e, &app.token(a, &[]), t).await;
        c.disconnect().await;
    }
}

/// Two socket.io-client users chat through the pipeline: one on WebSocket
/// only, one on the default polling-then-upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_chat_on_both_transports() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    let mut ca = SioClient::connect(e1, &app.token(a, &[]), Transports::WebsocketOnly).await;
    let mut cb = SioClient::connect(e2, &app.token(b, &[]), Transports::Default).await;
    let up = cb.wait(|v| v["kind"] == "upgrade", WAIT).await;
    assert_eq!(up["transport"], "websocket");

    // Joining answers through the acknowledgement callback.
    let j = ca.request("join_conversation", json!({"conversationId": conv})).await;
    assert_eq!(j["conversationId"], conv);
    cb.request("join_conversation", json!({"conversationId": conv})).await;

    // send_message: the ack carries the id and seq; the other side (and the
    // sender's socket) receive `message_received` with the module's shape.
    let mut sent = Vec::new();
    for i in 0..20 {
        let (from, text) = if i % 2 == 0 { (&mut ca, format!("a{i}")) } else { (&mut cb, format!("b{i}")) };
        let ack = from.request("send_message", json!({"conversationId": conv, "content": text})).await;
        assert!(ack["messageId"].is_string() && ack["seq"].is_u64(), "{ack}");
        sent.push(ack["messageId"].as_str().unwrap().to_string());
    }
    for cl in [&mut ca, &mut cb] {
        let got = cl.events("message_received", 20, WAIT).await;
        let ids: Vec<&str> = got.iter().map(|m| m["_id"].as_str().unwrap()).collect();
        assert_eq!(ids, sent.iter().map(String::as_str).collect::<Vec<_>>(), "every message once, in order");
        assert_eq!(got[0]["content"], "a0");
        assert_eq!(got[0]["senderId"], a.hex());
        assert_eq!(got[1]["senderId"], b.hex());
        assert_eq!(got[0]["conversationId"], conv);
        assert!(cl.no_more("message_received", QUIET).await.is_empty());
    }

    // Typing: the other member hears it, the typist does not; the user id
    // comes from the token, not the payload.
    cb.emit("typing", json!([{"conversationId": conv, "isTyping": true, "userId": "forged"}])).await;
    let t = ca.events("user_typing", 1, WAIT).await;
    assert_eq!((t[0]["userId"].as_str(), t[0]["isTyping"].as_bool()), (Some(b.hex().as_str()), Some(true)));
    assert!(cb.no_more("user_typing", QUIET).await.is_empty());

    // Read: B reads A's last message; A hears message_read.
    let last_from_a = &sent[18];
    let r = cb.request("mark_as_read", json!({"messageId": last_from_a})).await;
    assert_eq!(r["messageId"], *last_from_a);
    let read = ca.events("message_read", 1, WAIT).await;
    assert_eq!(read[0]["userId"], b.hex());
    // Delivered: A's messages reached B's device.
    let delivered = ca.events("message_status_updated", 10, WAIT).await;
    assert!(delivered.iter().all(|d| d["status"] == "delivered" || d["status"] == "read"), "{delivered:?}");

    // Delete: both hear it; it is gone from history.
    let d = ca.request("delete_message", json!({"messageId": sent[0]})).await;
    assert_eq!(d["messageId"], sent[0]);
    for cl in [&mut ca, &mut cb] {
        assert_eq!(cl.events("message_deleted", 1, WAIT).await[0]["messageId"], sent[0]);
    }
    let (_, h) = app.get(e1, &format!("/api/chat/conversations/{conv}/messages?limit=50"), a).await;
    assert_eq!(h["total"], 19, "{h}");

    // Refusals: an error event with a stable code, and an ack with it.
    let r = cb.request("delete_message", json!({"messageId": sent[2]})).await;
    assert_eq!(r["error"]["code"], "forbidden", "B may not delete A's message: {r}");
    let err = cb.events("error", 1, WAIT).await;
    assert_eq!((err[0]["code"].as_str(), err[0]["event"].as_str()), (Some("forbidden"), Some("delete_message")));
    let r = cb.request("fly", json!({})).await;
    assert_eq!(r["error"]["code"], "unknown_event");
    let r = cb.request("send_message", json!({"conversationId": conv})).await;
    assert_eq!(r["error"]["code"], "invalid_payload");
    cb.emit("send_message", json!(["not an object"])).await;
    assert_eq!(cb.events("error", 3, WAIT).await[2]["code"], "invalid_payload");

    // Groups: join, chat, leave (no more messages after leaving).
    let g = app.create_group(e1, c, &[a, b]).await;
    ca.request("join_group", json!({"groupId": g})).await;
    cb.request("join_group", json!({"groupId": g})).await;
    let m = ca.request("send_message", json!({"groupId": g, "content": "hello group"})).await;
    let got = cb.events("message_received", 1, WAIT).await;
    assert_eq!((got[0]["_id"].as_str(), got[0]["groupId"].as_str()), (m["messageId"].as_str(), Some(g.as_str())));
    ca.events("message_received", 1, WAIT).await;
    let l = cb.request("leave_group", json!({"groupId": g})).await;
    assert_eq!(l["groupId"], g);
    ca.request("send_message", json!({"groupId": g, "content": "after leave"})).await;
    assert_eq!(ca.events("message_received", 1, WAIT).await[0]["content"], "after leave");
    assert!(cb.no_more("message_received", QUIET).await.is_empty(), "B left the group's room");
}

/// A socket.io-client user and a native `/ws` user in one conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_and_native_users_see_each_other() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut sio = SioClient::connect(e, &app.token(a, &[]), Transports::Default).await;
    let mut ws = WsClient::connect(e, &app.token(b, &[])).await;
    sio.request("join_conversation", json!({"conversationId": conv})).await;
    ws.request("join_conversation", json!({"conversationId": conv})).await;

    let from_sio = sio.request("send_message", json!({"conversationId": conv, "content": "from socket.io"})).await;
    let got = ws.events("message_received", 1, WAIT).await;
    assert_eq!(got[0]["data"]["_id"], from_sio["messageId"]);
    assert_eq!(got[0]["data"]["content"], "from socket.io");
    let from_ws = ws.request("send_message", json!({"conversationId": conv, "content": "from ws"})).await;
    let got = sio.events("message_received", 2, WAIT).await;
    assert_eq!(got.iter().map(|m| m["content"].as_str().unwrap()).collect::<Vec<_>>(), ["from socket.io", "from ws"]);
    assert_eq!(got[1]["_id"], from_ws["data"]["messageId"]);

    // Receipts both ways: delivered and read.
    let st = sio.events("message_status_updated", 1, WAIT).await;
    assert_eq!(
        (st[0]["messageId"].clone(), st[0]["status"].as_str()),
        (from_sio["messageId"].clone(), Some("delivered"))
    );
    let st = ws.events("message_status_updated", 1, WAIT).await;
    assert_eq!(st[0]["data"]["messageId"], from_ws["data"]["messageId"]);
    ws.request("mark_as_read", json!({"messageId": from_sio["messageId"]})).await;
    assert_eq!(sio.events("message_read", 1, WAIT).await[0]["userId"], b.hex());
    sio.request("mark_as_read", json!({"messageId": from_ws["data"]["messageId"]})).await;
    assert_eq!(ws.events("message_read", 2, WAIT).await[1]["data"]["userId"], a.hex());

    // Typing both ways.
    sio.emit("typing", json!([{"conversationId": conv, "isTyping": true}])).await;
    assert_eq!(ws.events("user_typing", 1, WAIT).await[0]["data"]["userId"], a.hex());
    ws.request("typing", json!({"conversationId": conv, "isTyping": true})).await;
    assert_eq!(sio.events("user_typing", 1, WAIT).await[0]["userId"], b.hex());

    // Presence: B's native socket goes; A hears user_offline.
    drop(ws);
    let off = sio.events("user_offline", 1, WAIT).await;
    assert_eq!((off[0]["userId"].as_str(), off[0]["isOnline"].as_bool()), (Some(b.hex().as_str()), Some(false)));
}
