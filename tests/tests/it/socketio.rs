//! The Socket.IO endpoint driven by the stock socket.io-client v4 (Node,
//! from npm), as the NestJS module's front end uses it: tokens in
//! `auth.token`, both transports, the module's events and payloads,
//! acknowledgements, binary uploads, a native `/ws` user in the same room,
//! reconnect after an edge restart; and raw Engine.IO / Socket.IO requests
//! that break the protocol.

use natter_tests::sio::{Transports, WAIT, eio, gone, raw_session};
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
        let v = c.wait(|v| v["kind"] == "connect" || v["kind"] == "connect_error", WAIT).await;
        assert_eq!(v["kind"], "connect_error", "{t:?}: {v}");
        assert_eq!(v["data"]["code"], "invalid_token", "{t:?}: {v}");

        let mut c = SioClient::spawn().await;
        c.start(e, None, t).await;
        let v = c.wait(|v| v["kind"] == "connect" || v["kind"] == "connect_error", WAIT).await;
        assert_eq!((v["kind"].as_str(), v["data"]["code"].as_str()), (Some("connect_error"), Some("missing_token")));

        let expired = app.expired_token(a);
        let mut c = SioClient::spawn().await;
        c.start(e, Some(&expired), t).await;
        let v = c.wait(|v| v["kind"] == "connect" || v["kind"] == "connect_error", WAIT).await;
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
    // The history follows once the delete is written.
    natter_tests::eventually("the delete written", WAIT, || async {
        let (_, h) = app.get(e1, &format!("/api/chat/conversations/{conv}/messages?limit=50"), a).await;
        (h["total"] == 19).then_some(())
    })
    .await;

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

fn png(side: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(side, side, |x, y| image::Rgb([(x * 5) as u8, (y * 9) as u8, (x ^ y) as u8]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `file_upload` with the file as a binary attachment, over WebSocket and
/// over long-polling; the file then travels in a message and downloads
/// byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_upload_with_a_binary_payload() {
    let mut app = TestApp::new().await;
    app.with_s3();
    let e = app.start_edge().await;
    app.start_worker();
    app.start_attachments_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ca = SioClient::connect(e, &app.token(a, &[]), Transports::WebsocketOnly).await;
    let mut cb = SioClient::connect(e, &app.token(b, &[]), Transports::PollingOnly).await;
    cb.request("join_conversation", json!({"conversationId": conv})).await;
    let image = png(200);
    let doc = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n".to_vec();

    let mut ids = Vec::new();
    for (cl, name, kind, bytes) in
        [(&mut ca, "p.png", "image/png", &image), (&mut cb, "d.pdf", "application/pdf", &doc)]
    {
        let arg = json!({"file": {"$binary": b64(bytes)}, "filename": name, "type": kind, "conversationId": conv});
        let ack = cl.request("file_upload", arg).await;
        let id = ack["attachmentId"].as_str().unwrap_or_else(|| panic!("{name}: {ack}")).to_string();
        let resp = cl.events("file_upload_response", 1, WAIT).await;
        assert_eq!((resp[0]["id"].as_str(), resp[0]["type"].as_str()), (Some(id.as_str()), Some(kind)), "{resp:?}");
        assert_eq!(resp[0]["size"], bytes.len());
        ids.push(id);
    }
    // Not what it claims to be: refused by the worker, told to the uploader.
    let exe = std::fs::read("/bin/true").unwrap();
    let arg =
        json!({"file": {"$binary": b64(&exe)}, "filename": "cat.png", "type": "image/png", "conversationId": conv});
    ca.request("file_upload", arg).await;
    assert_eq!(ca.events("file_upload_response", 1, WAIT).await[0]["code"], "content_mismatch");
    // Without a file: refused at once.
    let r = ca.request("file_upload", json!({"filename": "x.png", "type": "image/png", "conversationId": conv})).await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");

    let m =
        ca.request("send_message", json!({"conversationId": conv, "content": "pic", "attachments": [ids[0]]})).await;
    let got = cb.events("message_received", 1, WAIT).await;
    assert_eq!(got[0]["_id"], m["messageId"]);
    assert_eq!(got[0]["attachments"][0]["id"], ids[0]);
    let tb = app.token(b, &[]);
    for (id, bytes) in [(&ids[0], &image), (&ids[1], &doc)] {
        let r = app.http().get(format!("http://{e}/api/chat/attachments/{id}")).bearer_auth(&tb).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "followed the redirect");
        assert_eq!(&r.bytes().await.unwrap().to_vec(), bytes);
    }

    // The module's front end names no room and wants no ack: the upload is
    // the uploader's until sent in a message; then the room's members (and
    // only they) may download it.
    let c = app.user();
    let get = async |user, id: &str| {
        let r = app.http().get(format!("http://{e}/api/chat/attachments/{id}")).bearer_auth(app.token(user, &[]));
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
    };
    let arg = json!({"file": {"$binary": b64(&image)}, "filename": "mine.png", "type": "image/png"});
    ca.emit("file_upload", json!([arg])).await;
    let resp = ca.events("file_upload_response", 1, WAIT).await;
    let mine = resp[0]["id"].as_str().unwrap_or_else(|| panic!("{resp:?}")).to_string();
    assert_eq!((resp[0]["type"].as_str(), resp[0]["size"].as_u64()), (Some("image/png"), Some(image.len() as u64)));
    assert_eq!(get(a, &mine).await, (200, image.clone()), "the uploader downloads it");
    assert_eq!(get(b, &mine).await.0, 404, "not sent anywhere yet");
    let mut cc = SioClient::connect(e, &app.token(c, &[]), Transports::WebsocketOnly).await;
    let cd = app.open_conversation(e, c, a).await;
    let r = cc.request("send_message", json!({"conversationId": cd, "content": "x", "attachments": [&mine]})).await;
    assert_eq!(r["error"]["code"], "invalid_payload", "someone else's upload: {r}");
    // Sent as the module sends it: the file_upload_response object.
    let m = ca
        .request("send_message", json!({"conversationId": conv, "content": "mine", "attachments": [resp[0].clone()]}))
        .await;
    let got = cb.events("message_received", 1, WAIT).await;
    assert_eq!((&got[0]["_id"], &got[0]["attachments"][0]["id"]), (&m["messageId"], &json!(mine)), "{got:?}");
    assert_eq!(get(b, &mine).await, (200, image.clone()), "a member of the room it was sent to");
    assert_eq!(get(c, &mine).await.0, 404, "not a member of that room");
}

/// The edge goes away and comes back on the same address: clients on both
/// transports reconnect by themselves and chat again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_the_edge_restarts() {
    let mut app = TestApp::new().await;
    let port = natter_tests::procs::free_port();
    let listen = format!("127.0.0.1:{port}");
    let first = tokio_util::sync::CancellationToken::new();
    let (e, run) = app.start_edge_at(&listen, first.clone()).await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ca = SioClient::connect(e, &app.token(a, &[]), Transports::Default).await;
    let mut cb = SioClient::connect(e, &app.token(b, &[]), Transports::PollingOnly).await;
    for cl in [&mut ca, &mut cb] {
        cl.request("join_conversation", json!({"conversationId": conv})).await;
    }
    ca.request("send_message", json!({"conversationId": conv, "content": "before"})).await;
    for cl in [&mut ca, &mut cb] {
        assert_eq!(cl.events("message_received", 1, WAIT).await[0]["content"], "before");
    }

    first.cancel();
    run.await.unwrap().unwrap();
    for cl in [&mut ca, &mut cb] {
        let d = cl.wait(|v| v["kind"] == "disconnect", WAIT).await;
        // The transport went (not "io server disconnect"): the client reconnects.
        assert!(d["reason"] == "transport close" || d["reason"] == "transport error", "{d}");
    }
    let (e2, _run) = app.start_edge_at(&listen, app.cancel.child_token()).await;
    assert_eq!(e2, e);
    for cl in [&mut ca, &mut cb] {
        cl.wait(|v| v["kind"] == "connect", Duration::from_secs(30)).await;
        // The front end joins its rooms again on connect.
        cl.request("join_conversation", json!({"conversationId": conv})).await;
    }
    let m = cb.request("send_message", json!({"conversationId": conv, "content": "after"})).await;
    let got = ca.events("message_received", 1, WAIT).await;
    assert_eq!((got[0]["_id"].clone(), got[0]["content"].as_str()), (m["messageId"].clone(), Some("after")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_get_the_protocols_answers() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    // Bystanders who must keep chatting through all of this.
    let mut ca = SioClient::connect(e, &app.token(a, &[]), Transports::Default).await;
    let mut cb = SioClient::connect(e, &app.token(b, &[]), Transports::PollingOnly).await;
    cb.request("join_conversation", json!({"conversationId": conv})).await;
    let base = format!("http://{e}/socket.io/?EIO=4");
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // Engine.IO's errors: code and message, status 400.
    for (url, code, message) in [
        (format!("{base}&transport=polling&sid=unknown"), 1, "Session ID unknown"),
        (format!("http://{e}/socket.io/?EIO=3&transport=polling"), 5, "Unsupported protocol version"),
        (format!("{base}&transport=carrier-pigeon"), 0, "Transport unknown"),
    ] {
        let (s, body) = eio(&app, get.clone(), url, None).await;
        assert_eq!(s, 400);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({"code": code, "message": message})
        );
    }
    let (s, body) = eio(&app, post.clone(), format!("{base}&transport=polling"), Some("40".into())).await;
    assert_eq!((s, body.contains("\"code\":2")), (400, true), "{body}");
    let (s, body) = eio(&app, post.clone(), format!("{base}&transport=polling&sid=unknown"), Some("3".into())).await;
    assert_eq!((s, body.contains("\"code\":1")), (400, true), "{body}");

    // Browsers: a foreign Origin is Forbidden; the front end's origin gets
    // CORS with credentials (polling from another origin).
    let r = app
        .http()
        .get(format!("{base}&transport=polling"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"code": 4, "message": "Forbidden"}));
    let r = app
        .http()
        .request(reqwest::Method::OPTIONS, format!("{base}&transport=polling"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    let r = app
        .http()
        .get(format!("{base}&transport=polling"))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), r.headers()["access-control-allow-origin"].to_str().unwrap()),
        (200, "http://localhost:3000")
    );

    // The handshake advertises the heartbeat, the upgrade and maxPayload.
    let (_, open) = eio(&app, get.clone(), format!("{base}&transport=polling"), None).await;
    let open: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    assert_eq!((open["pingInterval"].as_u64(), open["pingTimeout"].as_u64()), (Some(25000), Some(20000)));
    assert_eq!(open["upgrades"], json!(["websocket"]));
    let max_payload = open["maxPayload"].as_u64().unwrap() as usize;

    // A packet Engine.IO does not know: 400, and the session is closed.
    let token = app.token(a, &[]);
    let sid = raw_session(&app, &base, Some(&token)).await;
    let (s, _) = eio(&app, post.clone(), format!("{base}&transport=polling&sid={sid}"), Some("x".into())).await;
    assert_eq!(s, 400);
    gone(&app, &base, &sid, WAIT).await;

    // A Socket.IO packet that does not parse: the socket is disconnected.
    let sid = raw_session(&app, &base, Some(&token)).await;
    let (s, _) = eio(&app, post.clone(), format!("{base}&transport=polling&sid={sid}"), Some("49garbage".into())).await;
    assert_eq!(s, 200, "a well-formed Engine.IO message");
    gone(&app, &base, &sid, WAIT).await;

    // An event that is not an array: an `error` event, the socket stays.
    let sid = raw_session(&app, &base, Some(&token)).await;
    let url = format!("{base}&transport=polling&sid={sid}");
    eio(&app, post.clone(), url.clone(), Some(r#"42{"no":"array"}"#.into())).await;
    let (_, reply) = eio(&app, get.clone(), url.clone(), None).await;
    assert!(reply.starts_with(r#"42["error",{"code":"invalid_frame""#), "{reply}");
    // Events before CONNECT or on another namespace are not served.
    let sid2 = raw_session(&app, &base, None).await;
    let url2 = format!("{base}&transport=polling&sid={sid2}");
    eio(&app, post.clone(), url2.clone(), Some(format!("40/admin,{}", json!({"token": token})))).await;
    let (_, reply) = eio(&app, get.clone(), url2, None).await;
    assert_eq!(reply, r#"44/admin,{"message":"Invalid namespace"}"#);

    // Over maxPayload: 413, the session is closed.
    let (s, _) =
        eio(&app, post.clone(), url.clone(), Some(format!("42[\"typing\",\"{}\"]", "x".repeat(max_payload)))).await;
    assert_eq!(s, 413);
    gone(&app, &base, &sid, WAIT).await;
    // A text packet over 64 KiB (uploads go as binary attachments): 413.
    let sid = raw_session(&app, &base, Some(&token)).await;
    let url = format!("{base}&transport=polling&sid={sid}");
    let (s, _) = eio(&app, post.clone(), url, Some(format!("42[\"typing\",\"{}\"]", "x".repeat(70_000)))).await;
    assert_eq!(s, 413);
    gone(&app, &base, &sid, WAIT).await;

    // Over WebSocket: the open packet first, then a bad packet closes with 1002
    // and an oversized one with 1009.
    use natter_tests::ws::In;
    for (send, code) in [("zzz".to_string(), 1002), (format!("42[\"typing\",\"{}\"]", "x".repeat(70_000)), 1009)] {
        let mut ws = WsClient::open(e, "/socket.io/?EIO=4&transport=websocket", "").await.unwrap();
        match ws.next(WAIT).await {
            Some(In::Text(t)) => assert!(t.starts_with("0{\"sid\""), "{t}"),
            other => panic!("expected the open packet, got {other:?}"),
        }
        ws.send_text(&format!("40{}", json!({"token": token}))).await;
        match ws.next(WAIT).await {
            Some(In::Text(t)) => assert!(t.starts_with("40{\"sid\""), "{t}"),
            other => panic!("expected the CONNECT reply, got {other:?}"),
        }
        ws.send_text(&send).await;
        assert_eq!(ws.closed(WAIT).await, Some(code));
    }

    // Through all of it, the bystanders were served.
    let m = ca.request("send_message", json!({"conversationId": conv, "content": "still here"})).await;
    let got = cb.events("message_received", 1, WAIT).await;
    assert_eq!(got[0]["_id"], m["messageId"]);
    assert!(ca.find(|v| v["kind"] == "disconnect", Duration::ZERO).await.is_none());
}

/// Clients answer pings and stay; a session that does not answer is
/// closed after the ping timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_clients_and_drop_the_silent() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("SIO_PING_INTERVAL_MS".into(), "300".into());
    app.edge_env.insert("SIO_PING_TIMEOUT_MS".into(), "300".into());
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ca = SioClient::connect(e, &app.token(a, &[]), Transports::PollingOnly).await;
    let mut cb = SioClient::connect(e, &app.token(b, &[]), Transports::WebsocketOnly).await;
    let base = format!("http://{e}/socket.io/?EIO=4");
    let silent = raw_session(&app, &base, Some(&app.token(a, &[]))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    gone(&app, &base, &silent, WAIT).await;
    for cl in [&mut ca, &mut cb] {
        assert!(cl.find(|v| v["kind"] == "disconnect", Duration::ZERO).await.is_none(), "answered every ping");
        cl.request("join_conversation", json!({"conversationId": conv})).await;
    }
    let m = ca.request("send_message", json!({"conversationId": conv, "content": "alive"})).await;
    assert_eq!(cb.events("message_received", 1, WAIT).await[0]["_id"], m["messageId"]);
}
