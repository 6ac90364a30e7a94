//! Delivered and read receipts, unread counts (exact under a killed worker
//! and redelivery), and deletion tombstones that replay cannot undo.

use async_nats::jetstream;
use mongodb::bson::doc;
use natter_nats::{RoomKind, Subjects};
use natter_shared::model::MessageStatus;
use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_when_a_device_gets_it_and_read_up_to_a_message() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    let mut wa = WsClient::connect(e1, &app.token(a, &[])).await;
    wa.request("join_conversation", json!({"conversationId": conv})).await;

    // B is offline: the message stays `sent` (no timer pretends otherwise).
    let r = wa.request("send_message", json!({"conversationId": conv, "content": "while away"})).await;
    let first = r["data"]["messageId"].as_str().unwrap().to_string();
    let echoed = wa.events("message_received", 1, Duration::from_secs(10)).await;
    assert_eq!(echoed.first().map(|m| &m["data"]["_id"]), Some(&serde_json::json!(first)), "applied");
    assert!(wa.events("message_status_updated", 1, Duration::from_millis(1500)).await.is_empty());
    let m = app
        .store
        .messages()
        .find_one(doc! {"_id": first.parse::<mongodb::bson::oid::ObjectId>().unwrap()})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, MessageStatus::Sent);

    // B's device gets the next ones: A hears `delivered` for each, and for
    // the one before them (delivery is a cursor: a device that got a
    // message has the room up to it, the earlier ones from the history).
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        ids.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    let ev = wa.events("message_status_updated", 4, Duration::from_secs(10)).await;
    let mut got: Vec<String> = ev.iter().map(|e| e["data"]["messageId"].as_str().unwrap().to_string()).collect();
    got.sort();
    let mut want = ids.clone();
    want.push(first.clone());
    want.sort();
    assert_eq!(got, want, "delivered: every message up to the newest B's device got, each once");
    assert!(ev.iter().all(|e| e["data"]["status"] == "delivered" && e["data"]["conversationId"] == conv));
    assert!(
        wb.events("message_status_updated", 1, Duration::from_millis(500)).await.is_empty(),
        "only the sender hears it"
    );
    assert!(wa.events("message_status_updated", 1, Duration::from_millis(1500)).await.is_empty(), "no status twice");
    let (_, h) = app.get(e1, &format!("/api/chat/conversations/{conv}/messages"), a).await;
    let statuses: Vec<&str> = h["messages"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["delivered"; 4], "the history derives the status from B's cursor");
    let m = app
        .store
        .messages()
        .find_one(doc! {"_id": first.parse::<mongodb::bson::oid::ObjectId>().unwrap()})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.status, MessageStatus::Sent, "receipts move cursors; no message document is rewritten");

    // Unread before reading: 4 for B, 0 for A.
    let (_, c) = app.get(e1, &format!("/api/chat/conversations/{conv}"), b).await;
    assert_eq!((c["unreadCounts"][b.hex()].as_i64(), c["unreadCounts"][a.hex()].as_i64()), (Some(4), None));

    // B reads up to the second of the three: it and everything before.
    let r = wb.request("mark_as_read", json!({"messageId": ids[1]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let read = wa.events("message_read", 1, Duration::from_secs(5)).await;
    assert_eq!(read[0]["data"]["userId"], b.hex());
    assert_eq!(read[0]["data"]["messageId"], ids[1]);
    assert_eq!(read[0]["data"]["conversationId"], conv);
    natter_tests::eventually("read applied", Duration::from_secs(5), || async {
        let (_, c) = app.get(e1, &format!("/api/chat/conversations/{conv}"), b).await;
        (c["unreadCounts"][b.hex()] == 1).then_some(())
    })
    .await;
    let (_, h) = app.get(e1, &format!("/api/chat/conversations/{conv}/messages"), a).await;
    let msgs = h["messages"].as_array().unwrap();
    for m in &msgs[..3] {
        assert_eq!(m["status"], "read", "{m}");
        assert!(m["readBy"].as_array().unwrap().contains(&json!(b.hex())), "{m}");
    }
    assert_eq!(msgs[3]["status"], "delivered");
    assert!(!msgs[3]["readBy"].as_array().unwrap().contains(&json!(b.hex())));

    // REST read of the last one: back to zero; returns the message.
    let (s, v) =
        app.call(Method::PATCH, e2, &format!("/api/chat/messages/{}/read", ids[2]), &app.token(b, &[]), None).await;
    assert_eq!((s, v["status"].as_str()), (200, Some("read")), "{v}");
    let (_, c) = app.get(e1, "/api/chat/conversations", b).await;
    assert_eq!(c[0]["unreadCounts"][b.hex()], 0);
    // Reading an older message later does not move the cursor back.
    wb.request("mark_as_read", json!({"messageId": first})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, c) = app.get(e1, &format!("/api/chat/conversations/{conv}"), b).await;
    assert_eq!(c["unreadCounts"][b.hex()], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_stay_exact_when_a_worker_dies_mid_stream() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let w1 = app.start_worker_process();
    app.start_worker_process();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let g = app.create_group(e, a, &[b, c]).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut wc = WsClient::connect(e, &app.token(c, &[])).await;
    const N: usize = 600;
    let mut read_at = None;
    let mut last_conv_seq = 0;
    for i in 0..N {
        if i == N / 2 {
            app.processes[w1].kill9().await;
            app.start_worker_process();
        }
        let r = wa
            .request(
                "send_message",
                json!({"conversationId": conv, "content": format!("c{i}"), "clientMsgId": format!("c{i}")}),
            )
            .await;
        assert_eq!(r["type"], "ack");
        last_conv_seq = r["data"]["seq"].as_u64().unwrap();
        let r = wa
            .request("send_message", json!({"groupId": g, "content": format!("g{i}"), "clientMsgId": format!("g{i}")}))
            .await;
        assert_eq!(r["type"], "ack");
        if i % 7 == 0 {
            let r = wc.request("send_message", json!({"groupId": g, "content": format!("from c {i}")})).await;
            assert_eq!(r["type"], "ack");
        }
        if i == 400 {
            read_at = Some(r["data"]["messageId"].as_str().unwrap().to_string());
        }
    }
    // C reads the group up to A's message 400 (a read cursor mid-stream).
    let read_at = read_at.unwrap();
    natter_tests::eventually("message 400 stored", Duration::from_secs(60), || async {
        let (s, _) = app.get(e, &format!("/api/chat/groups/{g}"), c).await;
        let n = app
            .store
            .messages()
            .count_documents(doc! {"_id": read_at.parse::<mongodb::bson::oid::ObjectId>().unwrap()})
            .await
            .ok()?;
        (s == 200 && n == 1).then_some(())
    })
    .await;
    let r = wc.request("mark_as_read", json!({"messageId": read_at})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let from_c = (0..N).filter(|i| i % 7 == 0).count();
    natter_tests::eventually("every command applied", Duration::from_secs(90), || async {
        let total = app.store.messages().count_documents(doc! {"groupId": &g, "messageType": "text"}).await.ok()?;
        let read = app
            .store
            .groups()
            .find_one(doc! {"_id": g.parse::<mongodb::bson::oid::ObjectId>().unwrap()})
            .await
            .ok()??;
        (total as usize == N + from_c && read.read_cursors.get(&c.hex()).copied().unwrap_or(0) > 0).then_some(())
    })
    .await;
    // Partitions progress independently (the killed worker's resume once its
    // leases expire): wait for the conversation's too.
    let conv_doc = natter_tests::eventually("conversation applied", Duration::from_secs(90), || async {
        let c = app.store.conversation(conv.parse().unwrap()).await.ok()??;
        let n = app.store.messages().count_documents(doc! {"conversationId": &conv}).await.ok()?;
        (n as usize == N && c.last_seq >= last_conv_seq as i64).then_some(c)
    })
    .await;
    assert_eq!(conv_doc.unread_counts.get(&b.hex()).copied(), Some(N as i64), "B's unread in the conversation");
    assert_eq!(conv_doc.unread_counts.get(&a.hex()).copied().unwrap_or(0), 0);
    let group = app
        .store
        .groups()
        .find_one(doc! {"_id": g.parse::<mongodb::bson::oid::ObjectId>().unwrap()})
        .await
        .unwrap()
        .unwrap();
    // B has read nothing: every message from A and C.
    assert_eq!(group.unread_counts.get(&b.hex()).copied(), Some((N + from_c) as i64), "B's unread in the group");
    // A has read nothing from C.
    assert_eq!(group.unread_counts.get(&a.hex()).copied(), Some(from_c as i64), "A's unread in the group");
    // C: A's messages after the cursor; C's own never count.
    let cursor = group.read_cursors[&c.hex()];
    let after = app
        .store
        .messages()
        .count_documents(doc! {"groupId": &g, "seq": {"$gt": cursor}, "senderId": a.oid(), "messageType": "text"})
        .await
        .unwrap();
    assert_eq!(group.unread_counts.get(&c.hex()).copied(), Some(after as i64), "C's unread after reading");
    let distinct = app.store.messages().distinct("_id", doc! {"groupId": &g}).await.unwrap().len();
    let total = app.store.messages().count_documents(doc! {"groupId": &g}).await.unwrap() as usize;
    assert_eq!(distinct, total, "no duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_message_stays_deleted_when_its_send_is_replayed() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    let r = wa.request("send_message", json!({"conversationId": conv, "content": "regret", "clientMsgId": "k1"})).await;
    let id = r["data"]["messageId"].as_str().unwrap().to_string();
    let seq = r["data"]["seq"].as_u64().unwrap();
    assert_eq!(wb.events("message_received", 1, Duration::from_secs(5)).await.len(), 1);
    let r = wa.request("delete_message", json!({"messageId": id})).await;
    assert_eq!(r["type"], "ack");
    let del = wb.events("message_deleted", 1, Duration::from_secs(5)).await;
    assert_eq!(del[0]["data"]["messageId"], id);

    // Replay the original send command (same payload, a new stream entry).
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let js = jetstream::new(nats);
    let subjects = Subjects::new(&app.name);
    let stream = js.get_stream(subjects.cmd_stream()).await.unwrap();
    let original = stream.get_raw_message(seq).await.unwrap();
    js.publish(subjects.command(RoomKind::Conversation, &conv, "send_message"), original.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let r = wa.request("send_message", json!({"conversationId": conv, "content": "after"})).await;
    assert_eq!(r["type"], "ack");
    let later = wb.events("message_received", 1, Duration::from_secs(5)).await;
    assert_eq!(later[0]["data"]["content"], "after", "the replay published nothing");
    // Written behind the events: wait for "after" and the tombstone to be
    // stored (one flush inserts new messages before it updates others).
    // A replay that brought the message back leaves it undeleted: this
    // waits in vain and fails.
    let oid = id.parse::<mongodb::bson::oid::ObjectId>().unwrap();
    let m = natter_tests::eventually("written, still a tombstone", Duration::from_secs(5), || async {
        let after =
            app.store.messages().count_documents(doc! {"conversationId": &conv, "content": "after"}).await.ok()?;
        let m = app.store.messages().find_one(doc! {"_id": oid}).await.ok()??;
        (after == 1 && m.deleted).then_some(m)
    })
    .await;
    assert!(m.deleted, "still a tombstone");
    assert_eq!(m.content, "");
    let (_, h) = app.get(e, &format!("/api/chat/conversations/{conv}/messages"), b).await;
    assert_eq!(h["total"], 1);
    assert_eq!(h["messages"][0]["content"], "after");
    let (_, c) = app.get(e, &format!("/api/chat/conversations/{conv}"), b).await;
    assert_eq!(c["unreadCounts"][b.hex()], 1, "the deleted message is not unread, and the replay did not count");
}

/// The worker holding a room keeps it in memory between batches. When it
/// is killed with -9 mid-stream, the worker that takes the room over reads
/// it back: the recipient's events stay in order without gaps or repeats,
/// and unread counts, read and delivery cursors come out exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_moving_to_another_worker_keeps_counts_cursors_and_order() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let workers = [app.start_worker_process(), app.start_worker_process()];
    tokio::time::sleep(Duration::from_secs(3)).await;
    let natter_tests::stack::Pair { a, b, conv, mut wa, mut wb } = app.chatting_pair(e).await;
    let pid = app
        .lease_holder("messages", natter_nats::subjects::partition_of(&conv, natter_nats::DEFAULT_PARTITIONS))
        .await
        .expect("a holder");
    let victim = app.process_with_pid(&workers, pid).expect("ours");

    const N: usize = 200;
    let mut sent = Vec::new();
    for i in 0..N {
        if i == N / 2 {
            app.processes[victim].kill9().await;
        }
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        assert_eq!(r["type"], "ack", "{r}");
        sent.push((r["data"]["messageId"].as_str().unwrap().to_string(), r["data"]["seq"].as_u64().unwrap()));
    }
    let got = wb.events("message_received", N, Duration::from_secs(60)).await;
    let ids: Vec<&str> = got.iter().map(|e| e["data"]["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, sent.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), "every message once, in order");
    assert!(wb.events("message_received", 1, Duration::from_millis(500)).await.is_empty(), "no repeat");

    // B reads up to message 150 (of A's 200).
    let r = wb.request("mark_as_read", json!({"messageId": sent[150].0})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let (last_seq, read_seq) = (sent[N - 1].1 as i64, sent[150].1 as i64);
    let c = natter_tests::eventually("receipts applied and written", Duration::from_secs(30), || async {
        let c = app.store.conversation(conv.parse().ok()?).await.ok()??;
        let delivered = c.delivered_cursors.get(&b.hex()).copied().unwrap_or(0);
        (c.read_cursors.get(&b.hex()).copied() == Some(read_seq) && delivered == last_seq).then_some(c)
    })
    .await;
    assert_eq!(c.unread_counts.get(&b.hex()).copied(), Some((N - 151) as i64), "B's unread after the read");
    assert_eq!(c.unread_counts.get(&a.hex()).copied().unwrap_or(0), 0, "A's own messages are never unread");
    assert_eq!(c.last_message_id.map(|m| m.to_hex()), Some(sent[N - 1].0.clone()));
    let (_, h) = app.get(e, &format!("/api/chat/conversations/{conv}/messages?limit=100"), a).await;
    let statuses: Vec<&str> = h["messages"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "read").count(), 51, "messages 100..=150 of this page are read");
    assert!(statuses[51..].iter().all(|s| *s == "delivered"), "the rest reached B's device");
}

/// A group past the size at which the worker writes a per-user map whole:
/// unread counts stay exact, and a worker that read the group from the
/// database (its tail empty) sends each message's `delivered` once, when
/// the first member's device gets it, however many members' receipts pass
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_group_keeps_exact_counts_and_sends_each_delivered_once() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let first = app.start_worker_process();
    let users: Vec<_> = (0..60).map(|_| app.user()).collect();
    let (a, members) = (users[0], &users[1..]);
    let group = app.create_group(e, a, members).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    assert_eq!(wa.request("join_group", json!({"groupId": group})).await["type"], "ack");
    let mut sent = Vec::new();
    for i in 0..3 {
        let r = wa.request("send_message", json!({"groupId": group, "content": format!("m{i}")})).await;
        sent.push(r["data"]["messageId"].as_str().expect("id").to_string());
    }
    let gid: mongodb::bson::oid::ObjectId = group.parse().unwrap();
    let unread = |want: i64| {
        let app = &app;
        async move {
            natter_tests::eventually("unread counts written", Duration::from_secs(30), || async {
                let g = app.store.group(gid).await.ok()??;
                members.iter().all(|m| g.unread_counts.get(&m.hex()) == Some(&want)).then_some(g)
            })
            .await
        }
    };
    let g = unread(3).await;
    assert_eq!(g.unread_counts.get(&a.hex()).copied().unwrap_or(0), 0, "the sender's own messages");
    assert_eq!(g.unread_counts.len(), 60);

    // Another worker takes the room over and reads it from the database.
    app.processes[first].kill9().await;
    app.start_worker_process();
    let mut sockets = Vec::new();
    for m in &members[..40] {
        let mut w = WsClient::connect(e, &app.token(*m, &[])).await;
        assert_eq!(w.request("join_group", json!({"groupId": group})).await["type"], "ack");
        sockets.push(w);
    }
    let r = wa.request("send_message", json!({"groupId": group, "content": "m3"})).await;
    sent.push(r["data"]["messageId"].as_str().expect("id").to_string());
    for w in &mut sockets {
        assert_eq!(w.events("message_received", 1, Duration::from_secs(20)).await.len(), 1);
    }
    // Forty devices report; each message is `delivered` once.
    let ev = wa.events("message_status_updated", 5, Duration::from_secs(10)).await;
    let mut got: Vec<&str> = ev.iter().map(|e| e["data"]["messageId"].as_str().unwrap()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = sent.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(got, want, "every message once");
    assert!(ev.iter().all(|e| e["data"]["status"] == "delivered" && e["data"]["groupId"] == group));

    // One member reads everything: its count is 0, the others' 4.
    let r = sockets[0].request("mark_as_read", json!({"messageId": sent[3]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let g = natter_tests::eventually("the read written", Duration::from_secs(30), || async {
        let g = app.store.group(gid).await.ok()??;
        (g.unread_counts.get(&members[0].hex()) == Some(&0)).then_some(g)
    })
    .await;
    assert!(members[1..].iter().all(|m| g.unread_counts.get(&m.hex()) == Some(&4)), "{:?}", g.unread_counts);
    assert_eq!(g.delivered_cursors.len(), 40, "the forty devices' cursors");
    let m3: mongodb::bson::oid::ObjectId = sent[3].parse().unwrap();
    let newest = app.store.messages().find_one(doc! {"_id": m3}).await.unwrap().expect("m3 stored").seq;
    assert!(g.delivered_cursors.values().all(|c| *c == newest), "each at m3: {:?}", g.delivered_cursors);

    // The edge reported the forty in one command per flush, not one each.
    let s = Subjects::new(&app.name);
    let js = jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    let stream = js.get_stream(s.cmd_stream()).await.expect("stream");
    let subject = s.command(RoomKind::Group, &group, "mark_delivered");
    use futures::TryStreamExt;
    let stored: Vec<(String, usize)> = stream.info_with_subjects(&subject).await.unwrap().try_collect().await.unwrap();
    let receipts: usize = stored.iter().map(|(_, n)| n).sum();
    assert!((1..=2).contains(&receipts), "{receipts} receipt commands for forty devices");
}
