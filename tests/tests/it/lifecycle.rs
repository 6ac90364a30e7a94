//! Shutdown and poison: SIGTERM drains edges and workers within the grace
//! period; a command that can never apply is dead-lettered with its reason
//! and does not block the commands after it.

use async_nats::jetstream;
use futures::StreamExt;
use natter_nats::{RoomKind, Subjects};
use natter_tests::procs::{self, Owned};
use natter_tests::{TestApp, WsClient};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigterm_closes_sockets_going_away_and_exits() {
    let app = TestApp::new().await;
    app.start_worker();
    let port = procs::free_port();
    let mut env = app.env();
    env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
    let log = std::env::temp_dir().join(format!("{}-edge.log", app.name)).display().to_string();
    let mut edge = Owned::spawn(&procs::workspace_bin("natter-edge"), &[], &env, &log);
    procs::wait_for_port(port, Duration::from_secs(30)).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(addr, a, b).await;
    let mut ws = WsClient::connect(addr, &app.token(a, &[])).await;
    let r = ws.request("send_message", json!({"conversationId": conv, "content": "before shutdown"})).await;
    assert_eq!(r["type"], "ack");

    let started = Instant::now();
    let status = edge.terminate().await.expect("edge exited");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(12), "exited within the grace period");
    assert_eq!(ws.closed(Duration::from_secs(2)).await, Some(1001), "going away");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

/// Frames written while an edge drains (what was queued for a socket when
/// SIGTERM came) are delivery receipts like any other: the edge stores
/// them before it exits, so the sender sees every message it delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_of_frames_written_during_the_drain_are_stored() {
    let mut app = TestApp::new().await;
    app.start_worker();
    let e1 = app.start_edge().await;
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    let e2 = app.start_edge_process().await;
    let mut reader = WsClient::connect(e2, &app.token(b, &[])).await;
    let r = reader.request("join_conversation", json!({"conversationId": conv})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let mut sender = WsClient::connect(e1, &app.token(a, &[])).await;
    for i in 0..400 {
        sender.send("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
    }
    let first = reader.events("message_received", 1, Duration::from_secs(10)).await;
    let mut newest = first[0]["data"]["seq"].as_u64().expect("seq");
    // SIGTERM while the rest are on their way: the edge writes what is
    // queued, then closes.
    let edge = app.processes.last_mut().expect("the edge process");
    let status = edge.terminate().await.expect("edge exited");
    assert!(status.success(), "exit status {status:?}");
    while let Some(got) = reader.next(Duration::from_secs(2)).await {
        match got {
            natter_tests::ws::In::Json(v) if v["type"] == "message_received" => {
                newest = newest.max(v["data"]["seq"].as_u64().expect("seq"));
            }
            natter_tests::ws::In::Close(_) => break,
            _ => {}
        }
    }
    let oid = mongodb::bson::oid::ObjectId::parse_str(&conv).unwrap();
    let stored = natter_tests::eventually("the receipts stored", Duration::from_secs(10), || async {
        let c = app.store.conversations().find_one(mongodb::bson::doc! {"_id": oid}).await.ok()??;
        let at = c.delivered_cursors.get(&b.hex()).copied().unwrap_or(0) as u64;
        (at >= newest).then_some(at)
    })
    .await;
    assert_eq!(stored, newest, "the newest message written to the socket is the newest delivered");
}

/// The delivery flusher outlives the connections: a receipt a connection
/// reports while the edge drains (here, one held open by a peer that never
/// answers the close) is stored before the edge's run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_reported_while_connections_drain_is_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut app = TestApp::new().await;
    app.start_worker();
    let e1 = app.start_edge().await;
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    let mut ws = WsClient::connect(e1, &app.token(a, &[])).await;
    let r = ws.request("send_message", json!({"conversationId": conv, "content": "hello"})).await;
    let seq = r["data"]["seq"].as_u64().unwrap_or_else(|| panic!("{r}"));

    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let edge = natter_edge::Edge::build(app.edge_config(), listener, shutdown.clone()).await.expect("edge");
    let (e2, st) = (edge.local_addr().unwrap(), edge.state());
    let run = tokio::spawn(edge.run());
    // A WebSocket peer that never reads: the edge's close goes unanswered
    // and its connection drains for a while.
    let mut peer = tokio::net::TcpStream::connect(e2).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {e2}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {}\r\n\r\n",
        fastwebsockets::handshake::generate_key(),
        app.token(b, &[])
    );
    peer.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    peer.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101", "upgraded");
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.is_finished(), "the connection is still draining");
    st.deliveries.report(b, natter_shared::ids::RoomRef::new(RoomKind::Conversation, &conv), seq);
    run.await.unwrap().unwrap();
    drop(peer);
    let oid = mongodb::bson::oid::ObjectId::parse_str(&conv).unwrap();
    natter_tests::eventually("the receipt stored", Duration::from_secs(10), || async {
        let c = app.store.conversations().find_one(mongodb::bson::doc! {"_id": oid}).await.ok()??;
        (c.delivered_cursors.get(&b.hex()).copied().unwrap_or(0) as u64 >= seq).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_sigterm_releases_its_partitions_and_exits() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await; // applies the topology
    let w = app.start_worker_process();
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let js = jetstream::new(nats);
    let subjects = Subjects::new(&app.name);
    let kv = js.get_key_value(subjects.leases_bucket()).await.unwrap();
    let lease_count = || async {
        let keys: Vec<String> = kv.keys().await.unwrap().filter_map(|k| async { k.ok() }).collect().await;
        keys.iter().filter(|k| k.starts_with("messages.p")).count()
    };
    natter_tests::eventually("worker holds all partitions", Duration::from_secs(20), || async {
        (lease_count().await == natter_nats::DEFAULT_PARTITIONS as usize).then_some(())
    })
    .await;
    // It works: a conversation gets created through it.
    let (a, b) = (app.user(), app.user());
    app.open_conversation(e, a, b).await;

    let started = Instant::now();
    let status = app.processes[w].terminate().await.expect("worker exited");
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_eq!(lease_count().await, 0, "leases handed back on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_commands_are_dead_lettered_and_do_not_block() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let js = jetstream::new(nats);
    let subjects = Subjects::new(&app.name);

    // Garbage on the conversation's own partition, then a well-formed send to
    // a conversation that does not exist.
    let subject = subjects.command(RoomKind::Conversation, &conv, "send_message");
    js.publish(subject, "this is not a command".into()).await.unwrap().await.unwrap();
    let ghost = mongodb::bson::oid::ObjectId::new().to_hex();
    let cmd = json!({"v": 1, "actor": a.hex(), "command": {"type": "send_message",
        "messageId": mongodb::bson::oid::ObjectId::new().to_hex(), "conversationId": ghost,
        "content": "to nowhere", "messageType": "text", "clientMsgId": "g1"}});
    js.publish(subjects.command(RoomKind::Conversation, &ghost, "send_message"), cmd.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();

    // A normal message after them is applied.
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    let r = ws.request("send_message", json!({"conversationId": conv, "content": "after poison"})).await;
    assert_eq!(r["type"], "ack");
    natter_tests::eventually("message after poison applied", Duration::from_secs(15), || async {
        let (_, v) = app.get(e, &format!("/api/chat/conversations/{conv}/messages"), a).await;
        (v["total"] == 1).then_some(())
    })
    .await;

    let dlq = js.get_stream(subjects.dlq_stream()).await.unwrap();
    let n = natter_tests::eventually("two dead letters", Duration::from_secs(10), || {
        let mut dlq = dlq.clone();
        async move {
            let n = dlq.info().await.ok()?.state.messages;
            (n >= 2).then_some(n)
        }
    })
    .await;
    assert_eq!(n, 2);
    let mut reasons = Vec::new();
    for seq in 1..=2 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let reason = m.headers.get("Natter-Reason").map(|v| v.to_string()).unwrap_or_default();
        reasons.push(reason);
    }
    reasons.sort();
    assert!(reasons[0].contains("conversation not found"), "{reasons:?}");
    assert!(reasons[1].starts_with("undecodable"), "{reasons:?}");
    assert_eq!(app.store.messages().count_documents(mongodb::bson::doc! {"conversationId": &ghost}).await.unwrap(), 0);
}
