//! Failures under traffic: a worker killed with `kill -9`, MongoDB stopped
//! for a few seconds. Nothing acknowledged is lost or duplicated.

use mongodb::bson::doc;
use natter_tests::procs::{self, Owned};
use natter_tests::{TestApp, WsClient};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// Counts stored messages and distinct ids of a conversation.
async fn stored_now(app: &TestApp, conv: &str) -> (u64, usize) {
    let total = app.store.messages().count_documents(doc! {"conversationId": conv}).await.unwrap_or(0);
    let ids = app.store.messages().distinct("_id", doc! {"conversationId": conv}).await.map(|v| v.len()).unwrap_or(0);
    (total, ids)
}

/// Messages stored and distinct ids, once `want` are stored (writes follow
/// the events clients get) or after a while; a few more would show too.
async fn stored(app: &TestApp, conv: &str, want: u64) -> (u64, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (total, _) = stored_now(app, conv).await;
        if total >= want || tokio::time::Instant::now() >= deadline {
            // Settled: anything extra would have been written by now.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return stored_now(app, conv).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let first = app.start_worker_process();
    let (a, b) = (app.user(), app.user());
    // The conversation is created by the worker process.
    let conv = app.open_conversation(e, a, b).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    const N: usize = 2000;
    let mut acked = HashSet::new();
    for i in 0..N {
        if i == N / 3 {
            // Mid-stream: the worker dies without warning; a new one starts.
            app.processes[first].kill9().await;
            app.start_worker_process();
        }
        let r = ws
            .request(
                "send_message",
                json!({"conversationId": conv, "content": format!("m{i}"), "clientMsgId": format!("k{i}")}),
            )
            .await;
        assert_eq!(r["type"], "ack", "{r}");
        acked.insert(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    assert_eq!(acked.len(), N);
    natter_tests::eventually("all messages stored", Duration::from_secs(90), || async {
        let (total, _) = stored_now(&app, &conv).await;
        (total as usize >= N).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (total, distinct) = stored_now(&app, &conv).await;
    assert_eq!((total as usize, distinct), (N, N), "stored exactly once each");
    let c = app.store.conversation(conv.parse().unwrap()).await.unwrap().unwrap();
    assert_eq!(c.unread_counts.get(&b.hex()).copied(), Some(N as i64), "unread count exact after redelivery");
    assert_eq!(c.unread_counts.get(&a.hex()).copied().unwrap_or(0), 0, "own messages never unread");
    assert_eq!(c.last_seq, {
        let last = app
            .store
            .messages()
            .find_one(doc! {"conversationId": &conv})
            .sort(doc! {"seq": -1})
            .await
            .unwrap()
            .unwrap();
        last.seq
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_stopped_under_traffic_loses_nothing() {
    // This test owns its MongoDB server, on disk, so it can stop and restart it.
    let port = procs::free_port();
    let dir = std::env::temp_dir().join(format!("natter-mongo-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = procs::tool("NATTER_SECANTUSD", "secantusd-py");
    let args: Vec<String> = vec![
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        port.to_string(),
        "--storage-path".into(),
        dir.join("data").display().to_string(),
        "--log-level".into(),
        "WARNING".into(),
    ];
    let log = dir.join("mongo.log").display().to_string();
    let mut mongo = Owned::spawn(&bin, &args, &[], &log);
    procs::wait_for_port(port, Duration::from_secs(60)).await;

    let mut app = TestApp::with_mongo(format!("mongodb://127.0.0.1:{port}")).await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    let mut ws = WsClient::connect(e, &app.token(a, &[])).await;
    const N: usize = 300;
    let mut acked = Vec::new();
    for i in 0..N {
        if i == 100 {
            assert!(mongo.terminate().await.is_some(), "MongoDB did not stop");
        }
        if i == 200 {
            tokio::time::sleep(Duration::from_secs(3)).await;
            mongo = Owned::spawn(&bin, &args, &[], &log);
            procs::wait_for_port(port, Duration::from_secs(60)).await;
        }
        // Membership is cached, so sends keep being accepted while MongoDB is away.
        let r = ws
            .request(
                "send_message",
                json!({"conversationId": conv, "content": format!("m{i}"), "clientMsgId": format!("k{i}")}),
            )
            .await;
        assert_eq!(r["type"], "ack", "send {i}: {r}");
        acked.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    let ev = wb.events("message_received", N, Duration::from_secs(90)).await;
    assert_eq!(ev.len(), N, "b received every message once MongoDB was back");
    let got: Vec<&str> = ev.iter().map(|v| v["data"]["_id"].as_str().unwrap()).collect();
    assert_eq!(got, acked.iter().map(String::as_str).collect::<Vec<_>>(), "in order");
    let (total, distinct) = stored(&app, &conv, N as u64).await;
    assert_eq!((total as usize, distinct), (N, N));
    drop(mongo);
}

#[tokio::test]
async fn binaries_refuse_bad_config_before_binding() {
    for (bin, missing) in [("natter-edge", "JWT_SECRET"), ("natter-worker-messages", "MONGODB_URI")] {
        let mut env: Vec<(&str, &str)> = vec![
            ("NATS_URL", "nats://127.0.0.1:1"),
            ("MONGODB_URI", "mongodb://127.0.0.1:1/x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
        ];
        env.retain(|(k, _)| *k != missing);
        let out = std::process::Command::new(procs::workspace_bin(bin)).env_clear().envs(env).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bin}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(missing), "{bin} should name {missing}: {err}");
    }
    let out = std::process::Command::new(procs::workspace_bin("natter-edge"))
        .env_clear()
        .envs([
            ("NATS_URL", "nats://127.0.0.1:1"),
            ("MONGODB_URI", "mongodb://127.0.0.1:1/x"),
            ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("MAX_FILE_SIZE", "lots"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAX_FILE_SIZE"));
}

/// JetStream reserves the staging bucket's bound in its file store. A bound
/// that does not fit stops the edge at once, naming `STAGING_MAX_BYTES`;
/// one that fits is declared, and a later start with another bound moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_bound_nats_cannot_reserve_stops_the_edge_naming_it() {
    let dir = std::env::temp_dir().join(format!("natter-small-store-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = procs::free_port();
    let nats = procs::tool("NATTER_NATS_SERVER", "nats-server");
    let args = procs::nats_args(&dir, port, "256MB");
    let mut server = Owned::spawn(&nats, &args, &[], &dir.join("nats.log").display().to_string());
    procs::wait_for_port(port, Duration::from_secs(20)).await;
    let mut app = TestApp::new().await;
    app.nats_url = format!("nats://127.0.0.1:{port}");
    app.edge_env.insert("STAGING_MAX_BYTES".into(), (1u64 << 30).to_string());
    let started = std::time::Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = match natter_edge::Edge::build(app.edge_config(), listener, app.cancel.child_token()).await {
        Ok(_) => panic!("an edge started with 1 GiB staging on a 256 MB store"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("STAGING_MAX_BYTES") && err.contains("max_file_store"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused at once, not retried: {:?}", started.elapsed());
    for bound in [64u64 << 20, 32 << 20] {
        app.edge_env.insert("STAGING_MAX_BYTES".into(), bound.to_string());
        app.start_edge().await;
        let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
        let mut staging =
            js.get_stream(format!("OBJ_{}", natter_nats::Subjects::new(&app.name).staging_bucket())).await.unwrap();
        assert_eq!(staging.info().await.unwrap().config.max_bytes, bound as i64);
    }
    drop(app);
    server.terminate().await;
}

/// A worker that dies with a batch in hand leaves those commands pending
/// until their ack wait runs out. The worker that takes the partition over
/// must not apply the later commands first: the sockets would get the later
/// events first and drop the earlier ones as old. It holds them back until
/// the earlier ones come back, then applies all in stream order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_a_dead_worker_had_in_hand_are_applied_before_later_ones() {
    use async_nats::jetstream::{self, consumer::PullConsumer};
    use futures::StreamExt;
    use natter_nats::Subjects;

    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    let first = app.start_worker();
    let natter_tests::stack::Pair { conv, mut wa, mut wb, .. } = app.chatting_pair(e).await;
    first.cancel();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut seqs = Vec::new();
    let send = async |ws: &mut WsClient, i: usize| {
        let r = ws.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        assert_eq!(r["type"], "ack", "{r}");
        r["data"]["seq"].as_u64().expect("seq")
    };
    for i in 0..3 {
        seqs.push(send(&mut wa, i).await);
    }
    // Taken by a worker that dies before acking them.
    let s = Subjects::new(&app.name);
    let js = jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    let p = natter_nats::subjects::partition_of(&conv, natter_nats::DEFAULT_PARTITIONS);
    let consumer: PullConsumer =
        js.get_consumer_from_stream(s.consumer("messages", p), s.cmd_stream()).await.expect("consumer");
    let mut taken = consumer.fetch().max_messages(10).messages().await.expect("fetch");
    let mut in_hand = Vec::new();
    while let Some(m) = taken.next().await {
        in_hand.push(m.expect("message").info().expect("info").stream_sequence);
    }
    assert_eq!(in_hand, seqs, "the dead worker's batch");
    for i in 3..6 {
        seqs.push(send(&mut wa, i).await);
    }

    app.start_worker();
    let got = wb.events("message_received", 6, Duration::from_secs(30)).await;
    let order: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
    assert_eq!(order, seqs, "message_received events at the other socket, in order");
    let (total, ids) = stored(&app, &conv, 6).await;
    assert_eq!((total, ids), (6, 6), "stored messages");
    assert!(wb.events("message_received", 1, Duration::from_millis(500)).await.is_empty(), "a repeated event");
}

/// Which worker process holds each partition of the messages role, by the
/// pid in its instance name.
async fn holders(app: &TestApp) -> Vec<Option<u32>> {
    let mut out = Vec::new();
    for p in 0..natter_nats::DEFAULT_PARTITIONS {
        out.push(app.lease_holder("messages", p).await);
    }
    out
}

/// Two workers started together share the partitions within seconds; when
/// one is killed with -9 the other takes its partitions over within a few
/// seconds (the lease lives 3 s without renewal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_partitions_at_once_and_take_over_a_dead_ones_within_seconds() {
    let mut app = TestApp::new().await;
    app.start_edge().await;
    let (w1, w2) = (app.start_worker_process(), app.start_worker_process());
    let (p1, p2) = (app.processes[w1].child.id().unwrap(), app.processes[w2].child.id().unwrap());
    // From when both have announced themselves (starting a process, with
    // its topology and indexes, takes a while on a busy machine).
    let s = natter_nats::Subjects::new(&app.name);
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    let kv = js.get_key_value(s.leases_bucket()).await.expect("leases");
    natter_tests::eventually("both workers announced", Duration::from_secs(30), || async {
        use futures::TryStreamExt;
        let keys: Vec<String> = kv.keys().await.ok()?.try_collect().await.ok()?;
        let members = keys.iter().filter(|k| k.starts_with(&s.member_prefix("messages"))).count();
        (members == 2).then_some(())
    })
    .await;
    let started = tokio::time::Instant::now();
    natter_tests::eventually("partitions shared evenly", Duration::from_secs(10), || async {
        let h = holders(&app).await;
        let count = |pid| h.iter().filter(|x| **x == Some(pid)).count();
        (count(p1) == 4 && count(p2) == 4).then_some(())
    })
    .await;
    let shared = started.elapsed();
    assert!(shared < Duration::from_secs(3), "shared {shared:?} after both announced themselves");

    app.processes[w1].kill9().await;
    let killed = tokio::time::Instant::now();
    natter_tests::eventually("the survivor holds everything", Duration::from_secs(15), || async {
        let h = holders(&app).await;
        h.iter().all(|x| *x == Some(p2)).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(5), "taken over after {took:?}");
}
