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
    let (status, _) = eio(&app, reqwest::Method::POST, url, Some(body)).await;
    assert_eq!(status, 200);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_upgrade_probe_closes_the_websocket() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let sid = raw_session(&app, &format!("http://{e}/socket.io/?EIO=4"), None).await;
    let path = format!("/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let mut ws = WsClient::open(e, &path, "").await.expect("upgrade");
    ws.send_text("2probe").await;
    match ws.next(Duration::from_secs(5)).await {
        Some(natter_tests::ws::In::Text(t)) => assert_eq!(t, "3probe"),
        other => panic!("{other:?}"),
    }
    ws.send_text("2probe").await;
    match ws.next(Duration::from_secs(5)).await {
        Some(natter_tests::ws::In::Close(code)) => assert_eq!(code, 1002),
        other => panic!("expected a close, got {other:?}"),
    }
}
