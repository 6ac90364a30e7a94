//! The published shapes: every event, reply and REST view a client of the
//! module's front end reads, recorded from a running stack and compared
//! with `tests/snapshots/wire.json`. A shape is the JSON with its values
//! replaced by their kinds (`<oid>`, `<time>`, `<string>`, `<number>`,
//! `<bool>`, one element for an array, `<key>` for keys that are data) and `type`
//! names kept, merged over every frame of a name (so optional fields show),
//! so a renamed, dropped or retyped field fails here. A deliberate change:
//! `NATTER_UPDATE_SNAPSHOTS=1 cargo test -p natter-tests --test it wire::`
//! rewrites the file, and the diff goes in the commit.

use natter_tests::ws::In;
use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// The kind of a string: ids, times, URLs and tokens vary run to run.
fn kind_of(s: &str) -> &'static str {
    if s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        "<oid>"
    } else if mongodb::bson::DateTime::parse_rfc3339_str(s).is_ok() {
        "<time>"
    } else if s.starts_with("http://") || s.starts_with("https://") || s.starts_with('/') {
        "<url>"
    } else {
        "<string>"
    }
}

fn shape(v: &Value, key: Option<&str>) -> Value {
    match v {
        // Maps keyed by ids (`unreadCounts`) have one key: `<oid>`.
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                // Set on a user's own copy of a room event (the edge's cue
                // to follow or drop the room), which races the room's copy:
                // the client gets whichever comes first.
                if key.is_none() && matches!(k.as_str(), "grant" | "revoke") {
                    continue;
                }
                // `part` is left out when it is 0: whether a frame shows it
                // depends on how many events its command made (receipts
                // batch), so it counts as present wherever `seq` is.
                if key.is_none() && k == "seq" {
                    out.insert("part".to_string(), Value::String("<number>".into()));
                }
                // Ids as keys (`unreadCounts`), and the free-form keys of an
                // audit record's `targets`, are data.
                let name =
                    if kind_of(k) == "<oid>" || key == Some("targets") { "<key>".to_string() } else { k.clone() };
                let s = shape(v, Some(k));
                let merged = match out.remove(&name) {
                    Some(prev) => merge(prev, s),
                    None => s,
                };
                out.insert(name, merged);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| shape(x, None)).reduce(merge).into_iter().collect()),
        // Names of frames, events and kinds are the contract. (Audit
        // actions, codes and transports vary with what the trail holds
        // when it is read: they stay kinds.)
        Value::String(s) if key == Some("type") => Value::String(s.clone()),
        Value::String(s) => json!(kind_of(s)),
        Value::Number(_) => json!("<number>"),
        Value::Bool(_) => json!("<bool>"),
        Value::Null => Value::Null,
    }
}

/// Two shapes of one name as one: every key either had, and an array's
/// element from whichever had one.
fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            for (k, v) in b {
                let merged = match a.remove(&k) {
                    Some(prev) => merge(prev, v),
                    None => v,
                };
                a.insert(k, merged);
            }
            Value::Object(a)
        }
        (Value::Array(a), Value::Array(b)) => match (a.into_iter().next(), b.into_iter().next()) {
            (Some(x), Some(y)) => Value::Array(vec![merge(x, y)]),
            (x, y) => Value::Array(x.or(y).into_iter().collect()),
        },
        (Value::Null, b) => b,
        // Kept names (`type`) that differ: the same one
        // whatever the order they came in.
        (Value::String(a), Value::String(b)) => Value::String(a.min(b)),
        (a, _) => a,
    }
}

#[derive(Default)]
struct Shapes(BTreeMap<String, Value>);

impl Shapes {
    /// Adds a shape seen under `name`.
    fn note(&mut self, name: String, v: &Value) {
        let s = shape(v, None);
        let merged = match self.0.remove(&name) {
            Some(prev) => merge(prev, s),
            None => s,
        };
        self.0.insert(name, merged);
    }

    /// Every frame `ws` has received (until it is quiet), under its type.
    async fn frames(&mut self, ws: &mut WsClient) {
        while let Some(f) = ws.next(Duration::from_millis(700)).await {
            if let In::Json(v) = f {
                let kind = v["type"].as_str().unwrap_or("?").to_string();
                let name = match kind.as_str() {
                    "ack" | "error" => continue,
                    _ => format!("event {kind}"),
                };
                self.note(name, &v);
            }
        }
    }

    /// Every frame `ws` receives until one of type `kind` (within 20 s).
    async fn until(&mut self, ws: &mut WsClient, kind: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match ws.next(left).await {
                Some(In::Json(v)) => {
                    let t = v["type"].as_str().unwrap_or("?").to_string();
                    if t != "ack" && t != "error" {
                        self.note(format!("event {t}"), &v);
                    }
                    if t == kind {
                        return;
                    }
                }
                Some(In::Text(_)) => {}
                Some(In::Close(_)) | None => panic!("no {kind}"),
            }
        }
    }

    /// A request's reply, under the request's name.
    async fn reply(&mut self, ws: &mut WsClient, kind: &str, data: Value) -> Value {
        let r = ws.request(kind, data).await;
        let name = format!("{} {kind}", r["type"].as_str().unwrap_or("?"));
        self.note(name, &r);
        r
    }

    async fn rest(
        &mut self,
        app: &TestApp,
        e: std::net::SocketAddr,
        m: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = app.call(m.clone(), e, path, token, body).await;
        assert!((200..300).contains(&status), "{m} {path}: {status} {v}");
        // Ids in the path vary; the route does not.
        let route =
            path.split('?').next().unwrap_or(path).split('/').map(|p| if kind_of(p) == "<oid>" { "{id}" } else { p });
        self.note(format!("rest {m} {}", route.collect::<Vec<_>>().join("/")), &v);
        v
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_published_shape_matches_the_snapshot() {
    let mut app = TestApp::new().await;
    app.with_s3();
    app.edge_env.insert("CATCHUP_MAX_EVENTS".into(), "2".into());
    let e = app.start_edge().await;
    app.start_worker();
    app.start_attachments_worker();
    app.start_audit_worker();
    let mut s = Shapes::default();
    let (a, b, admin) = (app.user(), app.user(), app.user());
    let (ta, tb, tadmin) = (app.token(a, &[]), app.token(b, &[]), app.token(admin, &["Admin"]));

    let mut wa = WsClient::connect(e, &ta).await;
    let mut wb = WsClient::connect(e, &tb).await;
    let mut wadmin = WsClient::connect(e, &tadmin).await;
    let conv = s
        .rest(&app, e, Method::POST, "/api/chat/conversations/with-user", &ta, Some(json!({"userId": b.hex()})))
        .await["_id"]
        .as_str()
        .expect("_id")
        .to_string();
    s.reply(&mut wa, "join_conversation", json!({"conversationId": conv})).await;
    s.reply(&mut wb, "join_conversation", json!({"conversationId": conv})).await;
    let sent = s
        .reply(&mut wa, "send_message", json!({"conversationId": conv, "content": "hello", "clientMsgId": "k1"}))
        .await;
    let first = sent["data"]["messageId"].as_str().expect("messageId").to_string();
    s.until(&mut wb, "message_received").await;
    s.reply(&mut wb, "mark_as_read", json!({"messageId": first})).await;
    s.reply(&mut wb, "send_message", json!({"conversationId": conv, "content": "hi back"})).await;
    s.reply(&mut wa, "typing", json!({"conversationId": conv, "isTyping": true})).await;
    let header = json!({"type": "file_upload", "requestId": "up1", "data": {"filename": "a.pdf", "type": "application/pdf", "conversationId": conv}}).to_string();
    let mut frame = (header.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(header.as_bytes());
    frame.extend_from_slice(
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    );
    wa.send_frame(fastwebsockets::Frame::binary(fastwebsockets::Payload::Owned(frame))).await;
    let up = wa.reply_to("up1", Duration::from_secs(10)).await;
    s.note("ack file_upload".into(), &up);
    let attachment = up["data"]["attachmentId"].as_str().expect("attachmentId").to_string();
    s.until(&mut wa, "file_upload_response").await;
    s.reply(
        &mut wa,
        "send_message",
        json!({"conversationId": conv, "content": "see attached", "attachments": [attachment]}),
    )
    .await;
    let doomed = s.reply(&mut wa, "send_message", json!({"conversationId": conv, "content": "oops"})).await;
    s.reply(&mut wa, "delete_message", json!({"messageId": doomed["data"]["messageId"]})).await;
    s.reply(&mut wa, "leave_conversation", json!({"conversationId": conv})).await;
    let bad = wa.request("send_message", json!({"conversationId": conv})).await;
    s.note("error send_message".into(), &bad);

    // Groups, by an Admin, with both in them.
    let group = s
        .rest(
            &app,
            e,
            Method::POST,
            "/api/chat/groups",
            &tadmin,
            Some(json!({"name": "team", "type": "operational", "description": "d", "memberIds": [a.hex()]})),
        )
        .await["_id"]
        .as_str()
        .expect("_id")
        .to_string();
    s.reply(&mut wa, "join_group", json!({"groupId": group})).await;
    let g = format!("/api/chat/groups/{group}");
    s.rest(&app, e, Method::PATCH, &g, &tadmin, Some(json!({"name": "team two"}))).await;
    s.rest(&app, e, Method::POST, &format!("{g}/members"), &tadmin, Some(json!({"userId": b.hex()}))).await;
    s.reply(&mut wa, "send_message", json!({"groupId": group, "content": "to the team"})).await;
    s.reply(&mut wa, "leave_group", json!({"groupId": group})).await;
    s.rest(&app, e, Method::DELETE, &format!("{g}/members/{}", b.hex()), &tadmin, None).await;

    // Views, once the history and the audit trail have caught up (they are
    // written shortly after the events go out): empty lists have no shape.
    natter_tests::eventually("history and audit written", Duration::from_secs(20), || async {
        let (_, h) = app.call(Method::GET, e, &format!("{g}/messages"), &ta, None).await;
        let (_, c) = app.call(Method::GET, e, &format!("/api/chat/conversations/{conv}/messages"), &ta, None).await;
        let (_, l) = app.call(Method::GET, e, "/api/chat/audit/logs?limit=100", &tadmin, None).await;
        let removed = l["logs"].as_array().is_some_and(|l| l.iter().any(|r| r["action"] == "member_removed"));
        let attached = c["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["content"] == "see attached"));
        let team = h["messages"].as_array().is_some_and(|m| m.iter().any(|m| m["content"] == "to the team"));
        (team && removed && attached).then_some(())
    })
    .await;
    s.rest(&app, e, Method::GET, "/api/chat/conversations", &ta, None).await;
    s.rest(&app, e, Method::GET, &format!("/api/chat/conversations/{conv}"), &ta, None).await;
    s.rest(&app, e, Method::GET, &format!("/api/chat/conversations/{conv}/messages"), &ta, None).await;
    s.rest(&app, e, Method::GET, "/api/chat/groups", &ta, None).await;
    s.rest(&app, e, Method::GET, &g, &ta, None).await;
    s.rest(&app, e, Method::GET, &format!("{g}/messages"), &ta, None).await;
    s.rest(&app, e, Method::GET, &format!("/api/chat/presence?userIds={},{}", a.hex(), b.hex()), &ta, None).await;
    s.rest(&app, e, Method::GET, "/api/chat/audit/logs?limit=100", &tadmin, None).await;
    s.rest(&app, e, Method::POST, &format!("{g}/leave"), &ta, None).await;
    s.rest(&app, e, Method::DELETE, &g, &tadmin, None).await;

    // b goes, and comes back having missed more than catch-up sends again.
    s.frames(&mut wb).await;
    drop(wb);
    s.until(&mut wa, "user_offline").await;
    let mut late = WsClient::connect(e, &tb).await;
    s.until(&mut wa, "user_online").await;
    s.reply(&mut late, "join_conversation", json!({"conversationId": conv, "lastSeq": 1})).await;
    s.until(&mut late, "resync_required").await;
    for ws in [&mut wa, &mut late, &mut wadmin] {
        s.frames(ws).await;
    }

    let got = serde_json::to_string_pretty(&s.0).unwrap() + "\n";
    let path = natter_tests::procs::root().join("tests/snapshots/wire.json");
    if std::env::var("NATTER_UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want: BTreeMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_default()).unwrap_or_default();
    if s.0 != want {
        let mut diff = Vec::new();
        for (k, v) in &s.0 {
            match want.get(k) {
                None => diff.push(format!("new: {k}")),
                Some(w) if w != v => diff.push(format!("changed: {k}\n  was {w}\n  now {v}")),
                _ => {}
            }
        }
        diff.extend(want.keys().filter(|k| !s.0.contains_key(*k)).map(|k| format!("gone: {k}")));
        panic!("the published shapes changed (NATTER_UPDATE_SNAPSHOTS=1 records them):\n{}", diff.join("\n"));
    }
}

/// The running edge serves the REST API's OpenAPI document, and it is
/// `docs/openapi.json` (the edge's unit tests keep that file equal to what
/// the handlers generate).
#[tokio::test]
async fn the_edge_serves_the_openapi_document() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let served = reqwest::get(format!("http://{e}/api/openapi.json")).await.unwrap();
    assert_eq!(served.status().as_u16(), 200);
    let served: Value = served.json().await.unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let snapshot: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(served, snapshot);
    assert!(served["paths"]["/api/chat/conversations/{id}/messages"]["get"].is_object());
}
