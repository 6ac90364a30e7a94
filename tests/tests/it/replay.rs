//! Recovery from the streams: `natterctl replay` rebuilds MongoDB exactly
//! (messages, groups and members, reads, deliveries, deletes, attachments,
//! the audit chain), on top of itself and in parallel; dead letters are
//! listed, retried once their cause is fixed, and dropped.

use futures::TryStreamExt;
use natter_tests::procs;
use natter_tests::stack::Pair;
use natter_tests::state::canonical;
use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// NATS for the app's namespace, as natterctl's library takes it.
async fn nats(app: &TestApp) -> (async_nats::jetstream::Context, natter_nats::Subjects) {
    let client = async_nats::connect(&app.nats_url).await.unwrap();
    (async_nats::jetstream::new(client), natter_nats::Subjects::new(&app.name))
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
    out
}

/// Messages, reads, deliveries, deletes, a group whose members change, an
/// attachment in a message.
async fn scenario(app: &mut TestApp) {
    let e = app.start_edge().await;
    let (a, b, c, d) = (app.user(), app.user(), app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    for w in [&mut wa, &mut wb] {
        w.request("join_conversation", json!({"conversationId": conv})).await;
    }
    let mut ids = Vec::new();
    for i in 0..30 {
        let (w, text) = if i % 3 == 2 { (&mut wb, format!("b{i}")) } else { (&mut wa, format!("a{i}")) };
        let r = w.request("send_message", json!({"conversationId": conv, "content": text})).await;
        ids.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    wb.events("message_received", 30, WAIT).await;
    wb.request("mark_as_read", json!({"messageId": ids[20]})).await;
    wa.request("delete_message", json!({"messageId": ids[3]})).await;
    // Changes after sending: edits (one of a message not written yet),
    // reactions added and taken back, pins, and the delete of a pinned,
    // reacted-to, edited message.
    wa.request("edit_message", json!({"messageId": ids[0], "content": "a0 edited"})).await;
    let r = wa.request("send_message", json!({"conversationId": conv, "content": "quick"})).await;
    let quick = r["data"]["messageId"].as_str().unwrap().to_string();
    wa.request("edit_message", json!({"messageId": quick, "content": "quick, edited"})).await;
    for (by_a, id, emoji, add) in [
        (false, &ids[0], "👍", true),
        (true, &ids[0], "👍", true),
        (false, &ids[1], "🎉", true),
        (false, &ids[1], "🎉", false),
        (false, &ids[4], ":x:", true),
    ] {
        let kind = if add { "add_reaction" } else { "remove_reaction" };
        let w = if by_a { &mut wa } else { &mut wb };
        w.request(kind, json!({"messageId": id, "emoji": emoji})).await;
    }
    wb.request("pin_message", json!({"messageId": ids[0]})).await;
    wa.request("pin_message", json!({"messageId": ids[4]})).await;
    wa.request("edit_message", json!({"messageId": ids[4], "content": "a4 edited"})).await;
    wa.request("delete_message", json!({"messageId": ids[4]})).await;
    // A thread: replies (one to a reply), one of them deleted.
    let mut replies = Vec::new();
    for (w, to) in [(&mut wb, ids[0].clone()), (&mut wa, ids[0].clone())] {
        let r = w.request("send_message", json!({"conversationId": conv, "content": "re", "replyTo": to})).await;
        replies.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    let r =
        wb.request("send_message", json!({"conversationId": conv, "content": "re re", "replyTo": replies[1]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    wa.request("delete_message", json!({"messageId": replies[1]})).await;
    // Mentions: one read past, one not.
    for text in ["<@B> first", "<@B> second"] {
        let content = text.replace('B', &b.hex());
        wa.request("send_message", json!({"conversationId": conv, "content": content})).await;
    }

    // Attachments, uploaded to the room and outside any room, sent in messages.
    for data in [
        json!({"filename": "p.png", "type": "image/png", "conversationId": conv}),
        json!({"filename": "q.png", "type": "image/png"}),
    ] {
        let header = json!({"type": "file_upload", "requestId": "up", "data": data}).to_string();
        let mut frame = (header.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(&png());
        wa.send_frame(fastwebsockets::Frame::binary(fastwebsockets::Payload::Owned(frame))).await;
        let ack = wa.reply_to("up", WAIT).await;
        let att = ack["data"]["attachmentId"].as_str().unwrap().to_string();
        assert_eq!(wa.events("file_upload_response", 1, WAIT).await[0]["data"]["id"], att);
        wa.request("send_message", json!({"conversationId": conv, "content": "pic", "attachments": [att]})).await;
    }

    // A group: created, a member added, one removed, one leaving, messages.
    let g = app.create_group(e, a, &[b, c]).await;
    let admin = app.token(a, &["Admin"]);
    let (s, _) = app
        .call(Method::POST, e, &format!("/api/chat/groups/{g}/members"), &admin, Some(json!({"userId": d.hex()})))
        .await;
    assert_eq!(s, 201);
    wa.request("join_group", json!({"groupId": g})).await;
    // A reaction and a reply to the system message that the add posted: a
    // replay applies them in the batch that posts it, before it is written.
    let system = app.store.messages().find_one(mongodb::bson::doc! {"groupId": &g, "messageType": "system"}).await;
    let system = system.unwrap().expect("the member_added system message").id.to_hex();
    wa.request("add_reaction", json!({"messageId": system, "emoji": "👋"})).await;
    let r = wa.request("send_message", json!({"groupId": g, "content": "welcome", "replyTo": system})).await;
    assert_eq!(r["type"], "ack", "{r}");
    for i in 0..5 {
        wa.request("send_message", json!({"groupId": g, "content": format!("g{i}")})).await;
    }
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}/members/{}", c.hex()), &admin, None).await;
    assert_eq!(s, 200);
    let (s, _) = app.call(Method::POST, e, &format!("/api/chat/groups/{g}/leave"), &app.token(d, &[]), None).await;
    assert_eq!(s, 201);
    let (s, _) =
        app.call(Method::PATCH, e, &format!("/api/chat/groups/{g}"), &admin, Some(json!({"name": "renamed"}))).await;
    assert_eq!(s, 200);
    let r = wa.request("send_message", json!({"groupId": g, "content": "last"})).await;
    let last = r["data"]["messageId"].as_str().unwrap().to_string();
    wa.request("pin_message", json!({"messageId": last})).await;
    wa.request("add_reaction", json!({"messageId": last, "emoji": "✅"})).await;
    wa.request("edit_message", json!({"messageId": last, "content": "the last"})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_the_same_state() {
    let mut app = TestApp::new().await;
    app.with_s3();
    // Two messages workers share the partitions live.
    app.start_worker();
    app.start_worker();
    app.start_attachments_worker();
    app.start_audit_worker();
    scenario(&mut app).await;
    let live = natter_tests::state::settled(&app).await;
    let (js, subjects) = nats(&app).await;
    let letters = natterctl::dlq::entries(&js, &subjects).await.unwrap();
    assert!(
        letters.is_empty(),
        "nothing was dead-lettered: {:?}",
        letters.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    assert_eq!(live.counts.get("attachments"), Some(&2), "one upload to the room, one outside any");
    for coll in ["messages", "conversations", "groupchats", "attachments", "audit_trail"] {
        assert!(live.counts.get(coll).copied().unwrap_or(0) > 0, "{coll} is part of the scenario: {:?}", live.counts);
    }
    // Receipts are part of the state the rebuild must reproduce.
    let conv = app.store.conversations().find_one(mongodb::bson::doc! {}).await.unwrap().unwrap();
    assert!(!conv.read_cursors.is_empty() && !conv.delivered_cursors.is_empty(), "{conv:?}");
    assert!(conv.unread_counts.values().any(|n| *n > 0), "{conv:?}");
    // So are edits, reactions and pins: ids[0] pinned (ids[4] was, until
    // its delete); three messages edited, three with reactions.
    assert_eq!(conv.pins.len(), 1, "{conv:?}");
    let messages: Vec<natter_shared::model::MessageDoc> =
        app.store.messages().find(mongodb::bson::doc! {}).await.unwrap().try_collect().await.unwrap();
    assert_eq!(messages.iter().filter(|m| !m.edits.is_empty()).count(), 3);
    assert_eq!(messages.iter().filter(|m| !m.reactions.is_empty()).count(), 3, "two messages and a system one");
    let threads: Vec<(i64, usize)> = messages
        .iter()
        .filter(|m| m.reply_count > 0)
        .map(|root| (root.reply_count, messages.iter().filter(|m| m.reply_to == Some(root.id)).count()))
        .collect();
    assert_eq!(threads, [(2, 3), (1, 1)], "the conversation's thread (a reply deleted) and the system message's");
    assert_eq!(messages.iter().filter(|m| !m.mentions.is_empty()).count(), 2);
    assert!(conv.mention_counts.values().any(|n| *n > 0), "{conv:?}");

    // Wipe the database and rebuild it with one command.
    app.store.db().drop().await.unwrap();
    let dir = std::env::temp_dir().join(format!("{}-replay", app.name));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("live.json").display().to_string();
    let said = app.natterctl(&["replay", "--quiet", "--state", &state]).await;
    assert!(said.contains("replayed commands"), "{said}");
    let rebuilt = canonical(app.store.db()).await;
    assert_eq!(rebuilt.counts, live.counts);
    assert_eq!(rebuilt.hash, live.hash, "the same state; {}", live.first_difference(&rebuilt).unwrap_or_default());

    // Again, on top of it: nothing changes, nothing is doubled.
    app.natterctl(&["replay", "--quiet", "--restart", "--state", &state]).await;
    assert_eq!(canonical(app.store.db()).await, live);
    // Resuming a finished replay has nothing left to do.
    let said = app.natterctl(&["replay", "--quiet", "--state", &state]).await;
    assert!(said.contains("0 applied"), "{said}");

    // Into a fresh database, two tasks in parallel, another batch size.
    let fresh = format!("{}_rebuild", app.db);
    let state2 = dir.join("fresh.json").display().to_string();
    app.natterctl(&["replay", "--quiet", "--into-db", &fresh, "--workers", "2", "--batch", "7", "--state", &state2])
        .await;
    let other = mongodb::Client::with_uri_str(&app.mongodb_uri).await.unwrap().database(&fresh);
    assert_eq!(canonical(&other).await, live, "a rebuild elsewhere is the same");
    other.drop().await.unwrap();
    // Written as for a server without `bulkWrite` (one command per
    // collection): the same state.
    let state6 = dir.join("per-collection.json").display().to_string();
    app.natterctl(&["replay", "--quiet", "--into-db", &fresh, "--no-bulk-write", "--state", &state6]).await;
    assert_eq!(canonical(&other).await, live, "a rebuild written per collection is the same");
    // A fresh database must be empty to start a rebuild.
    let out = tokio::process::Command::new(procs::workspace_bin("natterctl"))
        .args(["replay", "--quiet", "--into-db", &fresh, "--state", &dir.join("x.json").display().to_string()])
        .envs(app.env())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    other.drop().await.unwrap();

    // Killed with -9 halfway through a rebuild, then resumed with its state
    // file: the same state.
    let killed = format!("{}_killed", app.db);
    let state5 = dir.join("killed.json");
    let _ = std::fs::remove_file(&state5);
    let mut child = tokio::process::Command::new(procs::workspace_bin("natterctl"))
        .args(["replay", "--quiet", "--into-db", &killed, "--batch", "1", "--state", &state5.display().to_string()])
        .envs(app.env())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let applied_up_to = |path: &std::path::Path| -> u64 {
        let Ok(body) = std::fs::read(path) else { return 0 };
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        v["commands"].as_object().map(|m| m.values().filter_map(Value::as_u64).max().unwrap_or(0)).unwrap_or(0)
    };
    let last_cmd = live_last_cmd(&app).await;
    for _ in 0..20_000 {
        if applied_up_to(&state5) > last_cmd / 2 || child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    let at_kill = applied_up_to(&state5);
    assert!(!status.success() && at_kill > 0 && at_kill < last_cmd, "killed at seq {at_kill} of {last_cmd}: {status}");
    let said =
        app.natterctl(&["replay", "--quiet", "--into-db", &killed, "--state", &state5.display().to_string()]).await;
    assert!(said.contains("replayed commands"), "{said}");
    let other = mongodb::Client::with_uri_str(&app.mongodb_uri).await.unwrap().database(&killed);
    let resumed = canonical(&other).await;
    assert_eq!(
        resumed.hash,
        live.hash,
        "resumed after seq {at_kill}; {}",
        live.first_difference(&resumed).unwrap_or_default()
    );
    other.drop().await.unwrap();

    // Only one room: its conversation and messages, nothing of the group.
    let conv = live.docs["conversations"][0].clone();
    let conv_id = serde_json::from_str::<Value>(&conv).unwrap()["_id"]["$oid"].as_str().unwrap().to_string();
    let one = format!("{}_room", app.db);
    let state3 = dir.join("room.json").display().to_string();
    let room = format!("conversation:{conv_id}");
    let said = app.natterctl(&["replay", "--quiet", "--into-db", &one, "--room", &room, "--state", &state3]).await;
    assert!(said.contains("audit trail not replayed"), "{said}");
    let only = mongodb::Client::with_uri_str(&app.mongodb_uri).await.unwrap().database(&one);
    let st = canonical(&only).await;
    assert_eq!(st.docs["conversations"], live.docs["conversations"]);
    assert_eq!(st.counts.get("groupchats").copied().unwrap_or(0), 0, "{:?}", st.counts);
    let conv_messages = live.docs["messages"].iter().filter(|m| m.contains(&conv_id)).count();
    assert_eq!(st.counts["messages"], conv_messages);
    only.drop().await.unwrap();

    // Resuming: a state file that says the first half was applied makes
    // replay apply only the rest.
    app.store.db().drop().await.unwrap();
    let subjects = natter_nats::Subjects::new(&app.name);
    let key: Vec<String> = (0..natter_nats::DEFAULT_PARTITIONS).map(|p| subjects.partition(p)).collect();
    let last = live_last_cmd(&app).await;
    let half = last / 2;
    let partial = json!({"database": app.db, "commands": {key.join(","): half}, "outcomes": 0});
    let state4 = dir.join("resume.json");
    std::fs::write(&state4, partial.to_string()).unwrap();
    let said = app.natterctl(&["replay", "--quiet", "--no-audit", "--state", &state4.display().to_string()]).await;
    let applied: u64 = said.split(": ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(applied < last - half + 1 && applied > 0, "resumed after seq {half} of {last}: {said}");
    let resumed = canonical(app.store.db()).await;
    assert!(
        resumed.counts.get("messages").copied().unwrap_or(0) < live.counts["messages"],
        "the first half was skipped"
    );
}

/// The command stream's last sequence.
async fn live_last_cmd(app: &TestApp) -> u64 {
    let subjects = natter_nats::Subjects::new(&app.name);
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
    js.get_stream(subjects.cmd_stream()).await.unwrap().info().await.unwrap().state.last_sequence
}

/// A send to a conversation that does not exist (yet): dead-lettered with
/// its reason at once, later commands go on; `dlq retry` applies it once
/// the conversation exists; `dlq drop` discards another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_commands_are_dead_lettered_and_retried() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let live_conv = app.open_conversation(e, a, c).await;
    // The conversation a and b would have; nobody created it.
    let missing = natter_shared::ids::conversation_id_for(a, b).to_hex();
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
    let subjects = natter_nats::Subjects::new(&app.name);
    let poison = |n: u32, room: &str| {
        let id = natter_shared::ids::message_id_for(a, &format!("poison-{n}")).to_hex();
        let env = json!({"v": 1, "actor": a.hex(), "command": {"type": "send_message", "messageId": id,
            "conversationId": room, "content": format!("poison {n}"), "messageType": "text", "clientMsgId": format!("poison-{n}")}});
        (id, serde_json::to_vec(&env).unwrap())
    };
    let (first, body) = poison(1, &missing);
    let subject = subjects.command(natter_nats::RoomKind::Conversation, &missing, "send_message");
    natter_nats::publish::command(&js, subject.clone(), "poison-1", body.into()).await.unwrap();
    let (_, body) = poison(2, &missing);
    natter_nats::publish::command(&js, subject, "poison-2", body.into()).await.unwrap();
    // Commands after them are applied.
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let ok = wa.request("send_message", json!({"conversationId": live_conv, "content": "after poison"})).await;
    assert_eq!(ok["type"], "ack");

    let list: Vec<Value> = natter_tests::eventually("two dead letters", WAIT, || async {
        let v: Vec<Value> = serde_json::from_str(&app.natterctl(&["dlq", "list", "--json"]).await).unwrap();
        (v.len() == 2).then_some(v)
    })
    .await;
    assert!(list.iter().all(|l| l["reason"] == "conversation not found" && l["role"] == "messages"), "{list:?}");
    assert!(list.iter().all(|l| l["action"] == "send_message" && l["originalSeq"].as_u64().is_some()));
    let status: Value = serde_json::from_str(&app.natterctl(&["status", "--json"]).await).unwrap();
    assert_eq!(status["deadLetters"]["total"], 2, "{status}");
    let shown = app.natterctl(&["dlq", "show", &list[0]["id"].to_string()]).await;
    assert!(shown.contains("poison 1") && shown.contains("conversation not found"), "{shown}");
    natter_tests::eventually("the later message applied", WAIT, || async {
        let (_, h) = app.get(e, &format!("/api/chat/conversations/{live_conv}/messages"), a).await;
        (h["total"] == 1).then_some(())
    })
    .await;

    // Fix the cause: the conversation now exists. Retry one, drop the other.
    assert_eq!(app.open_conversation(e, a, b).await, missing);
    let said = app.natterctl(&["dlq", "retry", &list[0]["id"].to_string()]).await;
    assert!(said.contains("stored again at seq"), "{said}");
    app.natterctl(&["dlq", "drop", &list[1]["id"].to_string()]).await;
    natter_tests::eventually("the retried message applied", WAIT, || async {
        let (_, h) = app.get(e, &format!("/api/chat/conversations/{missing}/messages"), a).await;
        (h["total"] == 1).then_some(h)
    })
    .await;
    let (_, h) = app.get(e, &format!("/api/chat/conversations/{missing}/messages"), b).await;
    assert_eq!(h["messages"][0]["_id"], first, "{h}");
    let left: Vec<Value> = serde_json::from_str(&app.natterctl(&["dlq", "list", "--json"]).await).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// MongoDB refuses one message (here a validator the operator added):
/// retried, then dead-lettered with MongoDB's reason, while the messages
/// before and after it in the same room are applied and delivered. Once
/// the cause is removed, `dlq retry` applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_mongodb_keeps_refusing_is_dead_lettered_after_its_retries() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let Pair { conv, mut wa, mut wb, .. } = app.chatting_pair(e).await;
    let db = app.store.db();
    let validator = |v: mongodb::bson::Document| mongodb::bson::doc! {"collMod": "messages", "validator": v};
    db.run_command(validator(mongodb::bson::doc! {"content": {"$not": {"$regex": "^poison"}}})).await.unwrap();

    let mut sent = Vec::new();
    for text in ["before", "poison pill", "after 1", "after 2"] {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": text})).await;
        assert_eq!(r["type"], "ack", "{r}");
        sent.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    // Events go out before the write: the refused message reached the
    // socket, and is withdrawn once it is dead-lettered.
    let mut received = Vec::new();
    let mut withdrawn = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    // Both are waited for: which comes first depends on when the worker
    // fetched the later sends.
    while (withdrawn.is_empty() || received.len() < sent.len()) && tokio::time::Instant::now() < deadline {
        match wb.next(Duration::from_millis(200)).await {
            Some(natter_tests::ws::In::Json(v)) if v["type"] == "message_received" => {
                received.push(v["data"]["content"].as_str().unwrap_or("?").to_string())
            }
            Some(natter_tests::ws::In::Json(v)) if v["type"] == "message_deleted" => withdrawn.push(v),
            _ => {}
        }
    }
    assert_eq!(received, ["before", "poison pill", "after 1", "after 2"], "the room goes on past the refused message");
    assert_eq!(withdrawn.len(), 1, "the refused message is withdrawn");
    assert_eq!(withdrawn[0]["data"]["messageId"], json!(sent[1]));
    assert_eq!(withdrawn[0]["data"]["retracted"], true);
    let letters: Vec<Value> = serde_json::from_str(&app.natterctl(&["dlq", "list", "--json"]).await).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("MongoDB refused the write (121)"), "{reason}");
    assert!(wb.events("message_received", 1, Duration::from_millis(300)).await.is_empty());

    // The cause removed, the letter is retried and applied.
    db.run_command(validator(mongodb::bson::doc! {})).await.unwrap();
    let said = app.natterctl(&["dlq", "retry", &letters[0]["id"].to_string()]).await;
    assert!(said.contains("retried"), "{said}");
    let got = wb.events("message_received", 1, WAIT).await;
    assert_eq!(got.first().map(|m| &m["data"]["_id"]), Some(&json!(sent[1])), "{got:?}");
    let stored = natter_tests::eventually("the retried message written", WAIT, || async {
        let n = app.store.messages().count_documents(mongodb::bson::doc! {"conversationId": &conv}).await.ok()?;
        (n == 4).then_some(n)
    })
    .await;
    assert_eq!(stored, 4);
    let left: Vec<Value> = serde_json::from_str(&app.natterctl(&["dlq", "list", "--json"]).await).unwrap();
    assert!(left.is_empty(), "{left:?}");
}
