//! Attachments through the pipeline and a real S3 server (s3s-fs): upload
//! over WebSocket and HTTP, checks of what a file really is, storage,
//! authorized download, limits, and a worker killed mid-upload.

use natter_shared::model::AttachmentStatus;
use natter_tests::ws::In;
use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

fn png(side: u32) -> Vec<u8> {
    let img =
        image::RgbImage::from_fn(side, side, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, ((x ^ y) * 5) as u8]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n".to_vec()
}

/// A binary `file_upload` message.
fn upload_frame(rid: &str, filename: &str, kind: &str, room: (&str, &str), bytes: &[u8]) -> Vec<u8> {
    let header =
        json!({"type": "file_upload", "requestId": rid, "data": {"filename": filename, "type": kind, room.0: room.1}})
            .to_string();
    let mut msg = (header.len() as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(header.as_bytes());
    msg.extend_from_slice(bytes);
    msg
}

async fn ws_upload(ws: &mut WsClient, rid: &str, filename: &str, kind: &str, conv: &str, bytes: &[u8]) -> Value {
    let frame = upload_frame(rid, filename, kind, ("conversationId", conv), bytes);
    ws.send_frame(fastwebsockets::Frame::binary(fastwebsockets::Payload::Owned(frame))).await;
    ws.reply_to(rid, Duration::from_secs(10)).await
}

async fn http_raw(
    app: &TestApp,
    edge: SocketAddr,
    who: natter_shared::ids::UserId,
    conv: &str,
    name: &str,
    kind: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let resp = app
        .http()
        .post(format!("http://{edge}/api/chat/attachments"))
        .query(&[("conversationId", conv), ("filename", name), ("type", kind)])
        .bearer_auth(app.token(who, &[]))
        .body(body)
        .send()
        .await
        .unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

fn no_redirect() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// GET the download route as `token`; follows the presigned redirect
/// without credentials; the bytes.
async fn download(edge: SocketAddr, path: &str, token: &str) -> Result<Vec<u8>, u16> {
    let r = no_redirect().get(format!("http://{edge}{path}")).bearer_auth(token).send().await.unwrap();
    match r.status().as_u16() {
        302 => {
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let r = reqwest::get(loc).await.unwrap();
            if r.status().is_success() { Ok(r.bytes().await.unwrap().to_vec()) } else { Err(r.status().as_u16()) }
        }
        200 => Ok(r.bytes().await.unwrap().to_vec()),
        s => Err(s),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_over_both_paths_send_and_download() {
    let mut app = TestApp::new().await;
    app.with_s3();
    let e = app.start_edge().await;
    app.start_worker();
    app.start_attachments_worker();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let (image, doc) = (png(300), pdf());

    // HTTP: raw body and multipart.
    let (s, up_png) = http_raw(&app, e, a, &conv, "photo.png", "image/png", image.clone()).await;
    assert_eq!(s, 201, "{up_png}");
    assert_eq!((up_png["type"].as_str(), up_png["name"].as_str()), (Some("image/png"), Some("photo.png")));
    assert_eq!(up_png["size"], image.len());
    assert!(up_png["thumbnailUrl"].is_string(), "{up_png}");
    let form = reqwest::multipart::Form::new().text("conversationId", conv.clone()).part(
        "file",
        reqwest::multipart::Part::bytes(doc.clone()).file_name("report.pdf").mime_str("application/pdf").unwrap(),
    );
    let r = app
        .http()
        .post(format!("http://{e}/api/chat/attachments"))
        .bearer_auth(app.token(a, &[]))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let up_pdf: Value = r.json().await.unwrap();
    assert_eq!(up_pdf["type"], "application/pdf");

    // WebSocket: binary file_upload, acked, then file_upload_response.
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let ack = ws_upload(&mut wa, "u1", "ws.png", "image/png", &conv, &image).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ws_png = ack["data"]["attachmentId"].as_str().unwrap().to_string();
    let resp = wa.events("file_upload_response", 1, Duration::from_secs(10)).await;
    assert_eq!(resp[0]["data"]["id"], ws_png);
    assert_eq!(resp[0]["data"]["type"], "image/png");
    let ack = ws_upload(&mut wa, "u2", "ws.pdf", "application/pdf", &conv, &doc).await;
    let ws_pdf = ack["data"]["attachmentId"].as_str().unwrap().to_string();
    assert_eq!(wa.events("file_upload_response", 1, Duration::from_secs(10)).await[0]["data"]["id"], ws_pdf);

    // Messages carrying them; a text message may carry both kinds.
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    let pngs = json!([up_png["id"], ws_png]);
    let pdfs = json!([up_pdf, {"id": ws_pdf}]);
    let r = wa
        .request(
            "send_message",
            json!({"conversationId": conv, "content": "pics", "messageType": "image", "attachments": pngs}),
        )
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = wa
        .request(
            "send_message",
            json!({"conversationId": conv, "content": "docs", "messageType": "document", "attachments": pdfs}),
        )
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = wa
        .request(
            "send_message",
            json!({"conversationId": conv, "content": "x", "messageType": "image", "attachments": [up_pdf["id"]]}),
        )
        .await;
    assert_eq!(r["data"]["code"], "invalid_payload", "a document in an image message: {r}");
    let got = wb.events("message_received", 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let first = &got[0]["data"]["attachments"];
    assert_eq!(first.as_array().unwrap().len(), 2);
    assert_eq!(first[0]["id"], up_png["id"]);
    assert_eq!(first[0]["url"], format!("/api/chat/attachments/{}", up_png["id"].as_str().unwrap()));
    assert_eq!(first[0]["name"], "photo.png");
    assert_eq!(first[0]["type"], "image/png");
    assert_eq!(first[0]["size"], image.len());
    assert!(first[0]["uploadedAt"].is_string());

    // B downloads each and gets the same bytes; C (not a member) cannot.
    let tb = app.token(b, &[]);
    let tc = app.token(c, &[]);
    for (id, bytes) in [
        (up_png["id"].as_str().unwrap(), &image),
        (up_pdf["id"].as_str().unwrap(), &doc),
        (&ws_png, &image),
        (&ws_pdf, &doc),
    ] {
        assert_eq!(download(e, &format!("/api/chat/attachments/{id}"), &tb).await.as_ref(), Ok(bytes), "{id}");
        // Not a member: told it does not exist, as for an unknown id.
        assert_eq!(download(e, &format!("/api/chat/attachments/{id}"), &tc).await, Err(404), "{id}");
    }
    let r = app.http().get(format!("http://{e}/api/chat/attachments/{ws_png}")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "no token");
    // The thumbnail is a small PNG.
    let thumb = download(e, &format!("/api/chat/attachments/{ws_png}/thumbnail"), &tb).await.unwrap();
    let t = image::load_from_memory(&thumb).unwrap();
    assert!(t.width() <= 256 && t.height() <= 256 && t.width() > 0);
    // C cannot attach A's file either.
    let mut wc = WsClient::connect(e, &tc).await;
    let conv_c = app.open_conversation(e, c, a).await;
    let r = wc
        .request("send_message", json!({"conversationId": conv_c, "content": "steal", "attachments": [ws_png]}))
        .await;
    assert_eq!(r["data"]["code"], "invalid_payload", "{r}");
    // Nor upload into a room they are not in.
    let (s, v) = http_raw(&app, e, c, &conv, "x.png", "image/png", image.clone()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_a_member")));

    // Outside any room: C's own until sent; then A (in that room) may
    // download it, B still may not.
    let r = app
        .http()
        .post(format!("http://{e}/api/chat/attachments"))
        .query(&[("filename", "own.pdf"), ("type", "application/pdf")])
        .bearer_auth(&tc)
        .body(doc.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let own: Value = r.json().await.unwrap();
    let own_url = format!("/api/chat/attachments/{}", own["id"].as_str().unwrap());
    let ta = app.token(a, &[]);
    assert_eq!(download(e, &own_url, &tc).await.as_ref(), Ok(&doc), "the uploader");
    assert_eq!(download(e, &own_url, &ta).await, Err(404), "not sent yet");
    let r =
        wc.request("send_message", json!({"conversationId": conv_c, "content": "mine", "attachments": [own]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let sent = natter_tests::eventually("the message stored", Duration::from_secs(10), || async {
        let n = app.store.messages().count_documents(mongodb::bson::doc! {"conversationId": &conv_c}).await.ok()?;
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(sent, 1);
    assert_eq!(download(e, &own_url, &ta).await.as_ref(), Ok(&doc), "a member of the room it was sent to");
    assert_eq!(download(e, &own_url, &tb).await, Err(404), "not in that room");
    let unknown = format!("/api/chat/attachments/{}", mongodb::bson::oid::ObjectId::new().to_hex());
    assert_eq!(download(e, &unknown, &tb).await, Err(404), "no such attachment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_urls_expire_and_proxy_mode_streams() {
    let mut app = TestApp::new().await;
    app.with_s3();
    app.edge_env.insert("ATTACHMENT_URL_TTL".into(), "1".into());
    let e = app.start_edge().await;
    app.edge_env.insert("ATTACHMENT_DOWNLOAD".into(), "proxy".into());
    let proxy = app.start_edge().await;
    app.start_worker();
    app.start_attachments_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let bytes = pdf();
    let (s, up) = http_raw(&app, e, a, &conv, "r.pdf", "application/pdf", bytes.clone()).await;
    assert_eq!(s, 201);
    let id = up["id"].as_str().unwrap();
    let r = no_redirect()
        .get(format!("http://{e}/api/chat/attachments/{id}"))
        .bearer_auth(app.token(b, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.contains("X-Amz-Signature"), "presigned: {loc}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let expired = reqwest::get(&loc).await.unwrap();
    assert_eq!(expired.status().as_u16(), 403, "the S3 server refuses an expired URL");
    // Without a signature the object is not public either.
    let bare = loc.split('?').next().unwrap().to_string();
    assert_eq!(reqwest::get(&bare).await.unwrap().status().as_u16(), 403);
    // Proxy mode streams the bytes through the edge.
    let r = app
        .http()
        .get(format!("http://{proxy}/api/chat/attachments/{id}"))
        .bearer_auth(app.token(b, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "application/pdf");
    assert_eq!(r.bytes().await.unwrap().to_vec(), bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_bad_files_and_names() {
    let mut app = TestApp::new().await;
    app.with_s3();
    const LIMIT: usize = 1024 * 1024;
    app.edge_env.insert("MAX_FILE_SIZE".into(), LIMIT.to_string());
    // Its own process: its memory is measured apart from the tests running
    // beside this one.
    let e = app.start_edge_process().await;
    let pid = app.processes.last().and_then(|p| p.child.id()).expect("edge pid");
    let rss_kib = || natter_tests::procs::rss_kib(pid);
    app.start_worker();
    app.start_attachments_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;

    // Exactly the limit passes; one byte over is refused on both paths.
    let mut text = vec![b'a'; LIMIT];
    let (s, v) = http_raw(&app, e, a, &conv, "max.txt", "text/plain", text.clone()).await;
    assert_eq!(s, 201, "{v}");
    text.push(b'a');
    let (s, v) = http_raw(&app, e, a, &conv, "over.txt", "text/plain", text.clone()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (413, Some("file_too_large")));
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    let r = ws_upload(&mut ws, "big", "over.txt", "text/plain", &conv, &text).await;
    assert_eq!(r["data"]["code"], "file_too_large", "{r}");
    // A chunked body (no length) is cut off at the limit.
    let chunks = futures::stream::iter((0..3).map(|_| Ok::<_, std::io::Error>(vec![b'b'; LIMIT / 2])));
    let r = app
        .http()
        .post(format!("http://{e}/api/chat/attachments"))
        .query(&[("conversationId", conv.as_str()), ("filename", "c.txt"), ("type", "text/plain")])
        .bearer_auth(app.token(a, &[]))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // A 1 GiB streamed body is refused early, and memory does not follow it.
    let before = rss_kib();
    let started = std::time::Instant::now();
    let gig = futures::stream::iter((0..1024).map(|_| Ok::<_, std::io::Error>(vec![0u8; 1024 * 1024])));
    let r = app
        .http()
        .post(format!("http://{e}/api/chat/attachments"))
        .query(&[("conversationId", conv.as_str()), ("filename", "huge.bin"), ("type", "application/pdf")])
        .bearer_auth(app.token(a, &[]))
        .body(reqwest::Body::wrap_stream(gig))
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }
    let grew = rss_kib().saturating_sub(before);
    assert!(grew < 200 * 1024, "memory grew by {grew} KiB for a refused 1 GiB upload");
    assert!(started.elapsed() < Duration::from_secs(20), "refused early: {:?}", started.elapsed());
    // A declared length over the limit is refused before any byte is read.
    let r = app
        .http()
        .post(format!("http://{e}/api/chat/attachments"))
        .query(&[("conversationId", conv.as_str()), ("filename", "huge.bin"), ("type", "application/pdf")])
        .bearer_auth(app.token(a, &[]))
        .header("content-length", (1u64 << 30).to_string())
        .body(vec![0u8; 16])
        .send()
        .await;
    if let Ok(r) = r {
        assert_eq!(r.status().as_u16(), 413);
    }

    // An executable named .png; an empty file; a path in the name.
    let exe = std::fs::read("/bin/true").unwrap();
    let (s, v) = http_raw(&app, e, a, &conv, "cat.png", "image/png", exe.clone()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (422, Some("content_mismatch")), "{v}");
    let r = ws_upload(&mut ws, "exe", "cat.png", "image/png", &conv, &exe).await;
    assert_eq!(r["type"], "ack");
    let resp = ws.events("file_upload_response", 1, Duration::from_secs(10)).await;
    assert_eq!(resp[0]["data"]["code"], "content_mismatch", "{resp:?}");
    let (s, v) = http_raw(&app, e, a, &conv, "empty.txt", "text/plain", vec![]).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("empty_file")));
    let (s, v) = http_raw(&app, e, a, &conv, "../../etc/passwd", "text/plain", b"root:x:0:0".to_vec()).await;
    assert_eq!((s, v["name"].as_str()), (201, Some("passwd")), "{v}");
    let rec = app
        .store
        .attachments()
        .find_one(
            mongodb::bson::doc! {"_id": v["id"].as_str().unwrap().parse::<mongodb::bson::oid::ObjectId>().unwrap()},
        )
        .await
        .unwrap()
        .unwrap();
    let key = rec.key.unwrap();
    assert!(!key.contains("passwd") && !key.contains(".."), "server-generated key: {key}");
    // Nothing refused reached S3: only the accepted files are there.
    let s3 = natter_s3::client(&app.s3_config());
    let listed = s3.list_objects_v2().bucket(app.name.to_lowercase()).send().await.unwrap();
    let keys: Vec<String> = listed.contents().iter().filter_map(|o| o.key().map(String::from)).collect();
    let accepted = app.store.attachments().count_documents(mongodb::bson::doc! {"status": "accepted"}).await.unwrap();
    assert_eq!(keys.len() as u64, accepted, "objects: {keys:?}");
    let _ = Method::GET;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_upload_finishes_after_restart() {
    let mut app = TestApp::new().await;
    app.with_s3();
    app.edge_env.insert("MAX_FILE_SIZE".into(), (20 * 1024 * 1024).to_string());
    let e = app.start_edge().await;
    app.start_worker();
    let w = app.start_role_process("attachments");
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    // A 12 MiB document goes multipart; kill the worker while it works.
    let big: Vec<u8> = {
        let mut v = b"%PDF-1.4\n".to_vec();
        v.resize(12 * 1024 * 1024, b'x');
        v
    };
    // Let the worker take its partitions before the upload arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    let ack = ws_upload(&mut ws, "big", "big.pdf", "application/pdf", &conv, &big).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let id = ack["data"]["attachmentId"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.processes[w].kill9().await;
    app.start_role_process("attachments");
    let resp = ws.events("file_upload_response", 1, Duration::from_secs(60)).await;
    assert_eq!(resp.len(), 1, "the upload completes after the restart");
    assert_eq!(resp[0]["data"]["id"], id);
    assert_eq!(resp[0]["data"]["size"], big.len());
    assert_eq!(
        download(e, &format!("/api/chat/attachments/{id}"), &app.token(b, &[])).await.map(|v| v.len()),
        Ok(big.len())
    );
    // One object for it in S3, no leftover multipart uploads, staged copy gone.
    let s3 = natter_s3::client(&app.s3_config());
    let bucket = app.name.to_lowercase();
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.contents().len(), 1, "{:?}", listed.contents());
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let staging = js.get_object_store(natter_nats::Subjects::new(&app.name).staging_bucket()).await.unwrap();
    assert!(staging.info(&id).await.map(|i| i.deleted).unwrap_or(true), "staged copy deleted");
    // Staged copies that nobody processes expire.
    let mut stream =
        js.get_stream(format!("OBJ_{}", natter_nats::Subjects::new(&app.name).staging_bucket())).await.unwrap();
    assert_eq!(stream.info().await.unwrap().config.max_age, natter_nats::topology::STAGING_TTL);
    let _ = In::Close(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_budgeted_per_user_across_connections_and_edges() {
    let mut app = TestApp::new().await;
    app.with_s3();
    app.edge_env.insert("UPLOADS_PER_MIN".into(), "6".into());
    app.edge_env.insert("UPLOAD_BYTES_PER_MIN".into(), (4 * 1024 * 1024).to_string());
    let e = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut w1 = WsClient::connect(e, &app.token(a, &[])).await;
    let mut w2 = WsClient::connect(e, &app.token(a, &[])).await;
    // The count is kept per minute of Unix time: all of it in one.
    natter_tests::room_in_window(60, std::time::Duration::from_secs(20)).await;
    let mut codes = Vec::new();
    for i in 0..10 {
        let ws = if i % 2 == 0 { &mut w1 } else { &mut w2 };
        let r = ws_upload(ws, &format!("u{i}"), "doc.pdf", "application/pdf", &conv, &pdf()).await;
        codes.push(if r["type"] == "ack" {
            "ack".to_string()
        } else {
            r["data"]["code"].as_str().unwrap().to_string()
        });
    }
    assert_eq!(codes.iter().filter(|c| *c == "ack").count(), 6, "{codes:?}");
    assert!(codes[6..].iter().all(|c| c == "rate_limited"), "{codes:?}");
    let (s, v) = http_raw(&app, e, a, &conv, "doc.pdf", "application/pdf", pdf()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("rate_limited")), "REST shares the budget: {v}");
    // So does another edge, whose own budget for a is untouched.
    let (s, v) = http_raw(&app, e2, a, &conv, "doc.pdf", "application/pdf", pdf()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("rate_limited")), "another edge shares it: {v}");
    // Bytes too: one big upload spends them all.
    let mut w3 = WsClient::connect(e, &app.token(b, &[])).await;
    let big = vec![b'x'; 5 * 1024 * 1024];
    let r = ws_upload(&mut w3, "big", "big.txt", "text/plain", &conv, &big).await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = ws_upload(&mut w3, "next", "doc.pdf", "application/pdf", &conv, &pdf()).await;
    assert_eq!(r["data"]["code"], "rate_limited", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_staging_bucket_refuses_uploads_until_the_worker_drains_it() {
    let mut app = TestApp::new().await;
    app.with_s3();
    const MIB: usize = 1024 * 1024;
    app.edge_env.insert("STAGING_MAX_BYTES".into(), (2 * MIB).to_string());
    app.edge_env.insert("MAX_FILE_SIZE".into(), MIB.to_string());
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    // No attachments worker yet: uploads stay staged until the bucket is full.
    let file = vec![b'x'; 900 * 1024];
    let mut codes = Vec::new();
    for i in 0..3 {
        let r = ws_upload(&mut ws, &format!("u{i}"), "a.txt", "text/plain", &conv, &file).await;
        codes.push(if r["type"] == "ack" {
            "ack".to_string()
        } else {
            r["data"]["code"].as_str().unwrap().to_string()
        });
    }
    assert_eq!(codes, ["ack", "ack", "unavailable"], "the third does not fit 2 MiB");
    let (s, v) = http_raw(&app, e, a, &conv, "a.txt", "text/plain", file.clone()).await;
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("unavailable")), "{v}");
    // The two taken are moved to S3, which frees the bucket.
    app.start_attachments_worker();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        let r = ws_upload(&mut ws, &format!("again{i}"), "a.txt", "text/plain", &conv, &file).await;
        if r["type"] == "ack" {
            break;
        }
        assert_eq!(r["data"]["code"], "unavailable", "{r}");
        assert!(tokio::time::Instant::now() < deadline, "staging never drained");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A `file_upload` outside any room over `/ws`; the attachment's id once
/// the worker accepted it.
async fn roomless_upload(ws: &mut WsClient, rid: &str) -> String {
    let header =
        json!({"type": "file_upload", "requestId": rid, "data": {"filename": "a.pdf", "type": "application/pdf"}})
            .to_string();
    let mut frame = (header.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(&pdf());
    ws.send_frame(fastwebsockets::Frame::binary(fastwebsockets::Payload::Owned(frame))).await;
    let ack = ws.reply_to(rid, Duration::from_secs(10)).await;
    let id = ack["data"]["attachmentId"].as_str().unwrap_or_else(|| panic!("{ack}")).to_string();
    let resp = ws.events("file_upload_response", 1, Duration::from_secs(10)).await;
    assert_eq!(resp[0]["data"]["id"], id.as_str(), "{resp:?}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_outside_any_room_never_sent_are_collected() {
    let mut app = TestApp::new().await;
    app.with_s3();
    app.edge_env.insert("UNSENT_UPLOAD_TTL".into(), "2".into());
    let e = app.start_edge().await;
    app.start_worker();
    app.start_attachments_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    let kept = roomless_upload(&mut ws, "k").await;
    let dropped = roomless_upload(&mut ws, "d").await;
    let r = ws.request("send_message", json!({"conversationId": conv, "content": "sent", "attachments": [kept]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let (status, _) = app.get(e, &format!("/api/chat/attachments/{dropped}"), a).await;
    assert!(matches!(status, 200 | 302), "the uploader downloads it while it waits: {status}");
    let oid = |id: &str| mongodb::bson::oid::ObjectId::parse_str(id).unwrap();
    let key = app.store.attachments().find_one(mongodb::bson::doc! {"_id": oid(&dropped)}).await.unwrap().unwrap().key;
    let key = key.expect("stored in S3");
    // Too old to be sent now.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late =
        ws.request("send_message", json!({"conversationId": conv, "content": "late", "attachments": [dropped]})).await;
    assert_eq!(late["data"]["code"], "invalid_payload", "{late}");
    // Collected: expired, bytes gone; the sent one stays.
    let gone = natter_tests::eventually("the unsent upload collected", Duration::from_secs(20), || async {
        let d = app.store.attachments().find_one(mongodb::bson::doc! {"_id": oid(&dropped)}).await.unwrap()?;
        (d.status == AttachmentStatus::Expired && d.key.is_none()).then_some(d)
    })
    .await;
    assert_eq!(gone.code.as_deref(), Some("expired"));
    let s3 = natter_s3::client(&app.s3_config());
    let head = s3.head_object().bucket(app.s3_config().bucket).key(&key).send().await;
    assert!(head.is_err(), "the bytes are deleted");
    let (status, _) = app.get(e, &format!("/api/chat/attachments/{dropped}"), a).await;
    assert_eq!(status, 404);
    let k = app.store.attachments().find_one(mongodb::bson::doc! {"_id": oid(&kept)}).await.unwrap().unwrap();
    assert_eq!((k.status, k.key.is_some()), (AttachmentStatus::Accepted, true), "a sent upload stays");
}
