//! Hostile input against a running edge: each test sends what once
//! crashed, leaked or wedged something, and checks the documented refusal
//! and that the edge goes on serving.

use bytes::Bytes;
use natter_tests::sio::{RawSio, eio, gone, raw_session};
use natter_tests::{TestApp, WsClient};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_breaking_ids_are_refused_on_both_protocols_and_the_socket_goes_on() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;

    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    for bad in ["a\r\nb", "a\nb", "tab\there", "nul\u{0}"] {
        let r = ws.request("send_message", json!({"conversationId": conv, "content": "x", "clientMsgId": bad})).await;
        assert_eq!((r["type"].as_str(), r["data"]["code"].as_str()), (Some("error"), Some("invalid_payload")), "{r}");
    }
    // A request id that could not be stored or echoed: refused, not echoed.
    ws.send_text(&json!({"type": "typing", "requestId": "r".repeat(10_000), "data": {}}).to_string()).await;
    let r = match ws.next(Duration::from_secs(5)).await {
        Some(natter_tests::ws::In::Json(v)) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!((r["data"]["code"].as_str(), r.get("requestId")), (Some("invalid_frame"), None), "{r}");
    let ok =
        ws.request("send_message", json!({"conversationId": conv, "content": "after", "clientMsgId": "k-1"})).await;
    assert_eq!(ok["type"], "ack", "{ok}");

    let mut sio = RawSio::connect(e, &app.token(a, &[])).await;
    let r = sio.request("send_message", json!({"conversationId": conv, "content": "x", "clientMsgId": "a\r\nb"})).await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    let ok = sio
        .request("send_message", json!({"conversationId": conv, "content": "sio after", "clientMsgId": "k-2"}))
        .await;
    assert_eq!(ok["seq"].as_u64().map(|s| s > 0), Some(true), "{ok}");

    natter_tests::eventually("exactly the two valid messages", Duration::from_secs(10), || async {
        let (_, v) = app.get(e, &format!("/api/chat/conversations/{conv}/messages"), b).await;
        (v["total"] == 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_session_that_never_reads_its_replies_is_closed_and_forgotten() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("SIO_PING_INTERVAL_MS".into(), "300".into());
    app.edge_env.insert("SIO_PING_TIMEOUT_MS".into(), "300".into());
    let e = app.start_edge().await;
    let base = format!("http://{e}/socket.io/?EIO=4");
    let sid = raw_session(&app, &base, None).await;
    // More CONNECTs to other namespaces (each answered with an error) than
    // the session's queue holds, and no poll to read the answers.
    let body = vec!["40/x,"; 1040].join("\u{1e}");
    let url = format!("{base}&transport=polling&sid={sid}");
    let (status, body) = eio(&app, reqwest::Method::POST, url, Some(body)).await;
    // Read whole (200), or the session was closed while it was read (its
    // queue overflowed, or the 300 ms heartbeat gave up first: 400).
    assert!(matches!(status, 200 | 400), "{status} {body}");
    let error = gone(&app, &base, &sid, Duration::from_secs(5)).await;
    assert_eq!(error["message"], "Session ID unknown");
    // The edge still opens sessions.
    assert!(!raw_session(&app, &base, None).await.is_empty());
}

/// A chunked multipart body: the head, then `n` bytes of `x` (counted as
/// they are produced), then the tail; nothing declares its length.
fn chunked_form(field: &str, n: u64, produced: Arc<AtomicU64>) -> reqwest::Body {
    let head = format!("--B\r\nContent-Disposition: form-data; name=\"{field}\"\r\n\r\n");
    let tail = "\r\n--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhi\r\n--B--\r\n";
    const CHUNK: u64 = 64 * 1024;
    let chunks = (0..n.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(n - i * CHUNK);
        produced.fetch_add(len, Ordering::Relaxed);
        Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; len as usize]))
    });
    let stream = futures::stream::iter(
        std::iter::once(Ok(Bytes::from(head))).chain(chunks).chain(std::iter::once(Ok(Bytes::from(tail)))),
    );
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_multipart_fields_are_refused_before_they_are_read() {
    let mut app = TestApp::new().await;
    app.with_s3();
    app.edge_env.insert("MAX_FILE_SIZE".into(), (1024 * 1024).to_string());
    let e = app.start_edge().await;
    let a = app.user();
    let token = app.token(a, &[]);
    let http = app.http();
    let url = format!("http://{e}/api/chat/attachments");
    const HUGE: u64 = 300 * 1024 * 1024;
    // A known text field past its bound, and an unknown field the server
    // skips: the first is refused at once, the second once the body passes
    // the file limit plus the envelope's allowance.
    for (field, refused) in [("type", "invalid_payload"), ("junk", "file_too_large")] {
        let produced = Arc::new(AtomicU64::new(0));
        let r = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "multipart/form-data; boundary=B")
            .body(chunked_form(field, HUGE, produced.clone()))
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            assert!(matches!(status, 400 | 413), "{field}: {status} {v}");
            assert_eq!(v["error"]["code"], refused, "{field}: {v}");
        }
        // Whether the client saw the answer or the connection closed under
        // it, the server stopped reading long before the end.
        let read = produced.load(Ordering::Relaxed);
        assert!(read < 32 * 1024 * 1024, "{field}: {read} bytes were taken");
    }
    // A field just over its bound, with a length: a clean refusal.
    let form = reqwest::multipart::Form::new()
        .text("type", "t".repeat(2000))
        .part("file", reqwest::multipart::Part::bytes(b"hi".to_vec()).file_name("a.txt"));
    let r = http.post(&url).bearer_auth(&token).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_payload", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_write_formulas_as_text() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    for content in ["=HYPERLINK(\"http://evil.example\",\"click\")", "+1+2", "@SUM(A1)", "plain"] {
        let r = ws.request("send_message", json!({"conversationId": conv, "content": content})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    let admin = app.user();
    let csv = natter_tests::eventually("the export", Duration::from_secs(10), || async {
        let r = app
            .http()
            .get(format!("http://{e}/api/chat/conversations/{conv}/export?format=csv"))
            .bearer_auth(app.token(admin, &["Admin"]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().await.unwrap();
        body.contains("plain").then_some(body)
    })
    .await;
    for cell in csv.lines().flat_map(|l| l.split(',')) {
        let cell = cell.trim_start_matches('"');
        assert!(!cell.starts_with(['=', '+', '@']), "a formula cell: {cell}\n{csv}");
    }
    assert!(csv.contains("'=HYPERLINK") && csv.contains("'+1+2") && csv.contains("'@SUM(A1)"), "{csv}");
}

/// A WebSocket for the polling session `sid` that has sent the upgrade's
/// probe and got its answer.
async fn probe(e: std::net::SocketAddr, sid: &str) -> WsClient {
    let path = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let mut ws = WsClient::open(e, &path, "").await.expect("upgrade");
    ws.send_text("2probe").await;
    match ws.next(Duration::from_secs(5)).await {
        Some(natter_tests::ws::In::Text(t)) => assert_eq!(t, "3probe"),
        other => panic!("{other:?}"),
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upgrade_probe_closes_the_websocket() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let sid = raw_session(&app, &format!("http://{e}/socket.io/?EIO=4"), None).await;
    let mut ws = probe(e, &sid).await;
    ws.send_text("2probe").await;
    match ws.next(Duration::from_secs(5)).await {
        Some(natter_tests::ws::In::Close(code)) => assert_eq!(code, 1002),
        other => panic!("expected a close, got {other:?}"),
    }
}

/// The client finishes an upgrade once its poll in flight ends. Polls that
/// began before the probe's answer reached it (one may begin after the
/// first noop) end with a noop soon, not at the next ping 25 s on: until
/// then the client's events wait in its buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_in_flight_end_while_the_client_upgrades() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let base = format!("http://{e}/socket.io/?EIO=4");
    let sid = raw_session(&app, &base, None).await;
    let url = format!("{base}&transport=polling&sid={sid}");
    let poll = || {
        let (app_http, url) = (app.http(), url.clone());
        tokio::spawn(async move { app_http.get(url).send().await.unwrap().text().await.unwrap() })
    };
    let first = poll();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ws = probe(e, &sid).await;
    let ended = tokio::time::timeout(Duration::from_secs(2), first).await.expect("the poll in flight ended");
    assert_eq!(ended.unwrap(), "6");
    // A poll the client sent before it saw the probe's answer.
    for _ in 0..3 {
        let next = tokio::time::timeout(Duration::from_secs(2), poll()).await.expect("a later poll ended too");
        assert_eq!(next.unwrap(), "6");
    }
    // The upgrade completes; polling is over.
    ws.send_text("5").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _) = eio(&app, reqwest::Method::GET, url, None).await;
    assert_eq!(s, 400, "a polling GET after the upgrade");

    // A second session whose client never finishes the upgrade: the
    // WebSocket is closed after Engine.IO's upgradeTimeout, polling goes on.
    let sid2 = raw_session(&app, &base, None).await;
    let mut ws2 = probe(e, &sid2).await;
    assert_eq!(ws2.closed(Duration::from_secs(15)).await, Some(1008), "closed: upgrade timed out");
    let url2 = format!("{base}&transport=polling&sid={sid2}");
    let (s, body) = eio(&app, reqwest::Method::POST, url2, Some("3".into())).await;
    assert_eq!((s, body.as_str()), (200, "ok"), "the session still polls");
}

/// Frames of `kind` that arrive within `wait` (others are dropped).
async fn collect(ws: &mut WsClient, kind: &str, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Some(natter_tests::ws::In::Json(v)) if v["type"] == kind => out.push(v),
            Some(natter_tests::ws::In::Close(_)) | None => return out,
            Some(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_answers_no_pings_is_closed_and_its_user_goes_offline() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("WS_PING_INTERVAL_MS".into(), "300".into());
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    app.make_contacts(e, a, b).await;
    let mut watcher = WsClient::connect(e, &app.token(b, &[])).await;
    // A client that answers pings stays, however quiet.
    let mut alive = WsClient::connect(e, &app.token(app.user(), &[])).await;
    let mut gone = WsClient::connect_deaf(e, &app.token(a, &[])).await;
    let online = collect(&mut watcher, "user_online", Duration::from_millis(300)).await;
    assert_eq!(online.len(), 1, "{online:?}");
    let started = std::time::Instant::now();
    assert_eq!(gone.closed(Duration::from_secs(5)).await, Some(4002), "closed for not answering pings");
    let off = watcher.events("user_offline", 1, Duration::from_secs(5)).await;
    assert_eq!(off.first().map(|v| v["data"]["userId"].clone()), Some(json!(a.hex())), "{off:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = alive.request("typing", json!({"conversationId": "0".repeat(24), "isTyping": false})).await;
    assert_eq!(r["type"], "error", "still served: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_close_when_their_token_expires_on_both_protocols() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ws = WsClient::connect(e, &app.short_token(a, 2)).await;
    let mut sio = RawSio::connect(e, &app.short_token(b, 2)).await;
    let ok = ws.request("send_message", json!({"conversationId": conv, "content": "in time"})).await;
    assert_eq!(ok["type"], "ack", "{ok}");
    // Expiry plus the 5 s leeway, and no later.
    let code = ws.closed(Duration::from_secs(10)).await;
    assert_eq!(code, Some(4001), "closed at expiry");
    let mut saw = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Some((name, arg)) = sio.event(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
        if name == "error" {
            saw = Some(arg);
            break;
        }
    }
    assert_eq!(saw.map(|v| v["code"].clone()), Some(json!("token_expired")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_racing_joins_receives_nothing_after_the_removal() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (admin, u, m) = (app.user(), app.user(), app.user());
    let g = app.create_group(e, admin, &[u, m]).await;
    let mut sender = WsClient::connect(e, &app.token(m, &[])).await;
    let done_all = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two sockets of U join the group again and again, collecting what arrives.
    let mut loops = Vec::new();
    for _ in 0..2 {
        let mut ws = WsClient::connect(e, &app.token(u, &[])).await;
        let (g, done) = (g.clone(), Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let all_done = done_all.clone();
        loops.push(tokio::spawn(async move {
            let mut got: Vec<Value> = Vec::new();
            let mut removal: Option<u64> = None;
            while !done.load(Ordering::Relaxed) && !all_done.load(Ordering::Relaxed) {
                let rid = ws.send("join_group", json!({"groupId": g})).await;
                loop {
                    match ws.next(Duration::from_secs(5)).await {
                        Some(natter_tests::ws::In::Json(v)) if v["requestId"] == rid.as_str() => {
                            if v["data"]["code"] == "not_a_member" {
                                // Removed: joining again is refused from now on.
                                done.store(true, Ordering::Relaxed);
                            }
                            break;
                        }
                        Some(natter_tests::ws::In::Json(v)) => {
                            if v["type"] == "member_removed" && v["data"]["userId"] == u.hex() {
                                removal = v["seq"].as_u64();
                            }
                            got.push(v);
                        }
                        _ => break,
                    }
                }
            }
            // What was still on its way.
            while let Some(natter_tests::ws::In::Json(v)) = ws.next(Duration::from_millis(500)).await {
                got.push(v);
            }
            (got, removal)
        }));
    }
    for i in 0..20 {
        let r = sender.request("send_message", json!({"groupId": g, "content": format!("before {i}")})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    let (s, _) = app
        .call(
            reqwest::Method::DELETE,
            e,
            &format!("/api/chat/groups/{g}/members/{}", u.hex()),
            &app.token(admin, &["Admin"]),
            None,
        )
        .await;
    assert_eq!(s, 200);
    for i in 0..30 {
        let r = sender.request("send_message", json!({"groupId": g, "content": format!("after {i}")})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    done_all.store(true, Ordering::Relaxed);
    for l in loops {
        let (got, removal) = l.await.unwrap();
        let removal = removal.expect("the removal reached U's own subject");
        let late: Vec<&Value> = got
            .iter()
            .filter(|v| v["type"] == "message_received" && v["seq"].as_u64().is_some_and(|s| s > removal))
            .collect();
        assert!(late.is_empty(), "U got messages after its removal at {removal}: {late:?}");
    }
    let mut ws = WsClient::connect(e, &app.token(u, &[])).await;
    let r = ws.request("join_group", json!({"groupId": g})).await;
    assert_eq!(r["data"]["code"], "not_a_member", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_visible_only_once_both_sides_have_written_or_share_a_group() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (stalker, victim) = (app.user(), app.user());
    let conv = app.open_conversation(e, stalker, victim).await;
    let mut s = WsClient::connect(e, &app.token(stalker, &[])).await;
    let mut v = WsClient::connect(e, &app.token(victim, &[])).await;
    let path = format!("/api/chat/presence?userIds={}", victim.hex());
    let (_, seen) = app.get(e, &path, stalker).await;
    assert_eq!(seen, json!([]), "opening a conversation is not enough");
    // Writing to someone who never answered is not enough either.
    let r = s.request("send_message", json!({"conversationId": conv, "content": "hi?"})).await;
    assert_eq!(r["type"], "ack");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, seen) = app.get(e, &path, stalker).await;
    assert_eq!(seen, json!([]), "one side wrote");
    drop(v);
    assert!(collect(&mut s, "user_offline", Duration::from_secs(2)).await.is_empty(), "nothing leaks by events");
    // Once the other side answers, they are contacts.
    v = WsClient::connect(e, &app.token(victim, &[])).await;
    let r = v.request("send_message", json!({"conversationId": conv, "content": "hello"})).await;
    assert_eq!(r["type"], "ack");
    let added = collect(&mut s, "contact_added", Duration::from_secs(3)).await;
    assert_eq!(added.len(), 1, "{added:?}");
    natter_tests::eventually("the victim's presence, now a contact", Duration::from_secs(5), || async {
        let (_, seen) = app.get(e, &path, stalker).await;
        (seen[0]["isOnline"] == true).then_some(())
    })
    .await;
    drop(v);
    let off = collect(&mut s, "user_offline", Duration::from_secs(3)).await;
    assert_eq!(off.len(), 1, "{off:?}");
    // A shared group makes contacts too.
    let (x, y) = (app.user(), app.user());
    app.create_group(e, app.user(), &[x, y]).await;
    let (_, seen) = app.get(e, &format!("/api/chat/presence?userIds={}", y.hex()), x).await;
    assert_eq!(seen[0]["userId"], y.hex(), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typing_flood_reaches_the_room_as_a_trickle() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let mut p = app.chatting_pair(e).await;
    for i in 0..150 {
        let t = json!({"type": "typing", "data": {"conversationId": p.conv, "isTyping": i % 3 != 2}});
        p.wa.send_text(&t.to_string()).await;
    }
    let typing = collect(&mut p.wb, "user_typing", Duration::from_secs(2)).await;
    assert!(!typing.is_empty() && typing.len() <= 8, "{} typing frames reached the room", typing.len());
    let starts = typing.iter().filter(|t| t["data"]["isTyping"] == true).count();
    let stops = typing.len() - starts;
    assert!(stops + 1 >= starts, "every start but the last is followed by a stop: {typing:?}");
    let r = p.wa.request("send_message", json!({"conversationId": p.conv, "content": "real"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let got = p.wb.events("message_received", 1, Duration::from_secs(5)).await;
    assert_eq!(got[0]["data"]["content"], "real");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_engine_io_sessions_are_capped_per_address() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("SIO_PENDING_PER_IP".into(), "5".into());
    let e = app.start_edge().await;
    let base = format!("http://{e}/socket.io/?EIO=4");
    let mut sids = Vec::new();
    for _ in 0..5 {
        sids.push(raw_session(&app, &base, None).await);
    }
    let (status, body) = eio(&app, reqwest::Method::GET, format!("{base}&transport=polling"), None).await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], 3, "{v}");
    // Before CONNECT a body is small: no upload can be sent yet.
    let url = format!("{base}&transport=polling&sid={}", sids[0]);
    let (status, _) = eio(&app, reqwest::Method::POST, url, Some(format!("4{}", "x".repeat(200_000)))).await;
    assert_eq!(status, 413);
    gone(&app, &base, &sids[0], Duration::from_secs(5)).await;
    // That one ended, and an authenticated session does not count.
    let user = app.user();
    raw_session(&app, &base, Some(&app.token(user, &[]))).await;
    assert!(!raw_session(&app, &base, None).await.is_empty());

    // Behind a trusted proxy, clients are told apart by the address it
    // appends to X-Forwarded-For (not by what a client wrote before it).
    app.edge_env.insert("TRUST_FORWARDED_FOR".into(), "true".into());
    let behind = app.start_edge().await;
    let open = |client: &'static str| {
        let url = format!("http://{behind}/socket.io/?EIO=4&transport=polling");
        let http = app.http();
        async move {
            let r = http.get(url).header("x-forwarded-for", format!("203.0.113.9, {client}")).send().await.unwrap();
            r.status().as_u16()
        }
    };
    for _ in 0..5 {
        assert_eq!(open("198.51.100.7").await, 200);
    }
    assert_eq!(open("198.51.100.7").await, 429, "that client's cap");
    assert_eq!(open("198.51.100.8").await, 200, "another client behind the same proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_must_name_the_audience_and_issuer_and_live_no_longer_than_allowed() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("JWT_AUDIENCE".into(), "natter".into());
    app.edge_env.insert("JWT_ISSUER".into(), "https://id.example".into());
    app.edge_env.insert("JWT_MAX_TTL".into(), "3600".into());
    let e = app.start_edge().await;
    let u = app.user().hex();
    let now = natter_tests::stack::now_secs();
    let good = json!({"id": u, "aud": "natter", "iss": "https://id.example", "iat": now, "exp": now + 600});
    let mut cases = vec![(good.clone(), 200)];
    for (field, value) in [("aud", json!("other")), ("iss", json!("https://evil.example")), ("exp", json!(now + 7200))]
    {
        let mut c = good.clone();
        c[field] = value;
        cases.push((c, 401));
    }
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    cases.push((no_aud, 401));
    for (claims, want) in cases {
        let t = app.signed(claims.clone());
        let (status, v) = app.call(reqwest::Method::GET, e, "/api/chat/conversations", &t, None).await;
        assert_eq!(status, want, "{claims}: {v}");
        if want == 401 {
            assert_eq!(v["error"]["code"], "invalid_token", "{v}");
            let ws = natter_tests::ws::WsClient::handshake(
                e,
                natter_tests::ws::Handshake { token: Some(&t), in_query: false, origin: None },
            )
            .await;
            assert_eq!(ws.err().map(|r| r.status), Some(401), "{claims}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_has_its_own_budget_per_socket() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let mut p = app.chatting_pair(e).await;
    let r = p.wa.request("send_message", json!({"conversationId": p.conv, "content": "one"})).await;
    let seq = r["data"]["seq"].as_u64().unwrap();
    p.wb.events("message_received", 1, Duration::from_secs(5)).await;
    let mut complete = 0;
    let mut refused = 0;
    for _ in 0..30 {
        let r = p.wb.request("join_conversation", json!({"conversationId": p.conv, "lastSeq": seq - 1})).await;
        assert_eq!(r["type"], "ack", "{r}");
        match r["data"]["catchUp"]["complete"].as_bool() {
            Some(true) => complete += 1,
            Some(false) => {
                assert_eq!(r["data"]["catchUp"]["reason"], "too many catch-ups; refetch the history", "{r}");
                refused += 1;
            }
            None => panic!("{r}"),
        }
    }
    assert_eq!((complete, refused), (20, 10));
    assert!(!collect(&mut p.wb, "resync_required", Duration::from_secs(1)).await.is_empty());
    // Live events still flow.
    p.wa.request("send_message", json!({"conversationId": p.conv, "content": "two"})).await;
    let got = p.wb.events("message_received", 1, Duration::from_secs(5)).await;
    assert!(got.iter().any(|m| m["data"]["content"] == "two"), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_are_rate_limited_per_user() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("REST_RATE_PER_SEC".into(), "5".into());
    let e = app.start_edge().await;
    let (a, b) = (app.user(), app.user());
    let mut limited = 0;
    for _ in 0..30 {
        let (status, v) = app.get(e, "/api/chat/conversations", a).await;
        if status == 429 {
            assert_eq!(v["error"]["code"], "rate_limited", "{v}");
            limited += 1;
        }
    }
    assert!(limited >= 15, "{limited} of 30 refused");
    let (status, _) = app.get(e, "/api/chat/conversations", b).await;
    assert_eq!(status, 200, "another user is not slowed down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_permissions_are_bounded() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let admin = app.user();
    let roles: Vec<String> = (0..17).map(|i| format!("role{i}")).collect();
    let body = json!({"name": "big", "memberIds": [], "permissions": {"canAddMembers": roles}});
    let (status, v) =
        app.call(reqwest::Method::POST, e, "/api/chat/groups", &app.token(admin, &["Admin"]), Some(body)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_payload")), "{v}");
    let body = json!({"name": "long", "memberIds": [], "permissions": {"canDeleteMessages": ["r".repeat(65)]}});
    let (status, _) =
        app.call(reqwest::Method::POST, e, "/api/chat/groups", &app.token(admin, &["Admin"]), Some(body)).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_then_removed_at_once_stops_receiving_the_group() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (admin, u, m) = (app.user(), app.user(), app.user());
    let g = app.create_group(e, admin, &[m]).await;
    // Nobody on this edge follows the group: the grant's follow subscribes
    // anew, and the room's revoke goes out while it does.
    let mut sender = WsClient::connect(e, &app.token(m, &[])).await;
    // U's socket never joins: the grant makes it follow, the removal ends it.
    let mut ws = WsClient::connect(e, &app.token(u, &[])).await;
    // Added and removed by two commands stored back to back, as an edge
    // would store two Admins' requests: one batch applies both.
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
    let subjects = natter_nats::Subjects::new(&app.name);
    for (i, cmd) in [
        natter_shared::v1::command::Command::AddMember(natter_shared::v1::command::MemberCmd {
            group_id: g.parse().unwrap(),
            user_id: u,
        }),
        natter_shared::v1::command::Command::RemoveMember(natter_shared::v1::command::MemberCmd {
            group_id: g.parse().unwrap(),
            user_id: u,
        }),
    ]
    .into_iter()
    .enumerate()
    {
        let env = natter_shared::v1::command::CommandEnvelope {
            v: natter_shared::v1::VERSION,
            actor: admin,
            roles: vec!["Admin".into()],
            reply: None,
            meta: None,
            command: cmd,
        };
        let subject = subjects.routed_command(&env.route().unwrap(), env.command.action());
        let body = serde_json::to_vec(&env).unwrap();
        natter_nats::publish::command(&js, subject, &format!("race-{i}-{g}"), body.into()).await.unwrap();
    }
    let removed = ws.events("member_removed", 1, Duration::from_secs(5)).await;
    let at = removed[0]["seq"].as_u64().expect("seq");
    for i in 0..5 {
        let r = sender.request("send_message", json!({"groupId": g, "content": format!("after {i}")})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    natter_tests::eventually("the messages applied", Duration::from_secs(10), || async {
        let (_, v) = app.get(e, &format!("/api/chat/groups/{g}/messages"), m).await;
        v["messages"]
            .as_array()
            .is_some_and(|l| l.iter().filter(|x| x["messageType"] == "text").count() == 5)
            .then_some(())
    })
    .await;
    let late: Vec<Value> = collect(&mut ws, "message_received", Duration::from_millis(800))
        .await
        .into_iter()
        .filter(|v| v["seq"].as_u64().is_some_and(|s| s > at))
        .collect();
    assert!(late.is_empty(), "U got messages after its removal at {at}: {late:?}");
}
