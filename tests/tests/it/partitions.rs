//! The partition count as a setting, and moving a running deployment to
//! another count with `natterctl partitions set` (drain, switch, resume)
//! while messages flow: nothing lost, nothing twice, every room in order;
//! then 32 partitions served by five workers through one killed with -9.

use natter_nats::Subjects;
use natter_tests::{TestApp, WsClient};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Sends until `stop`, `pause` apart (at least `min`); each ack's seq.
/// A send refused while a move drains (held past the edge's patience) is
/// sent again with the same `clientMsgId`, as a client does.
async fn send_until(
    mut ws: WsClient,
    conv: String,
    prefix: String,
    min: usize,
    pause: Duration,
    stop: CancellationToken,
) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut i = 0;
    while i < min || !stop.is_cancelled() {
        let r = ws
            .request(
                "send_message",
                json!({"conversationId": conv, "content": format!("{prefix} {i}"), "clientMsgId": format!("{prefix}-{i}")}),
            )
            .await;
        if r["type"] != "ack" {
            assert_eq!(r["data"]["code"], "unavailable", "send {i}: {r}");
            continue;
        }
        seqs.push(r["data"]["seq"].as_u64().expect("seq"));
        i += 1;
        tokio::time::sleep(pause).await;
    }
    seqs
}

/// Holders (worker pids) of the messages role's partitions `0..count`.
async fn holders(app: &TestApp, count: u32) -> Vec<Option<u32>> {
    let mut out = Vec::new();
    for p in 0..count {
        out.push(app.lease_holder("messages", p).await);
    }
    out
}

/// The partition numbers of the commands stored in the command stream.
async fn partitions_used(js: &async_nats::jetstream::Context, s: &Subjects) -> BTreeSet<u32> {
    let stream = js.get_stream(s.cmd_stream()).await.expect("stream");
    let info = stream.info_with_subjects(format!("{}.cmd.>", s.namespace())).await.expect("subjects");
    use futures::TryStreamExt;
    let subjects: Vec<(String, usize)> = info.try_collect().await.expect("subjects");
    subjects.iter().filter_map(|(subj, _)| subj.split('.').nth(2)?.strip_prefix('p')?.parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_deployment_moves_to_32_partitions_and_five_workers_serve_them_through_a_kill() {
    let mut app = TestApp::new().await;
    let edge = app.start_edge().await;
    let mut workers: Vec<usize> = (0..2).map(|_| app.start_worker_process()).collect();
    // The audit chain has one partition whatever the count.
    app.start_audit_worker();
    let s = Subjects::new(&app.name);
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    assert_eq!(natterctl::partitions::load(&js, &s).await.expect("state").count, 8, "the default");
    // Wait for both workers to hold the 8 partitions between them.
    natter_tests::eventually("8 partitions served", Duration::from_secs(60), || async {
        holders(&app, 8).await.iter().all(Option::is_some).then_some(())
    })
    .await;

    // Six rooms, each with a sender and a recipient on the edge.
    let stop = CancellationToken::new();
    let mut rooms = Vec::new();
    for k in 0..6 {
        let pair = app.chatting_pair(edge).await;
        let tx = tokio::spawn(send_until(
            pair.wa,
            pair.conv.clone(),
            format!("r{k}"),
            40,
            Duration::from_millis(25),
            stop.clone(),
        ));
        rooms.push((pair.conv, tx, pair.wb));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    // The move, while the senders go on.
    let pace = natterctl::partitions::Pace { settle: Duration::from_secs(2), drain_timeout: Duration::from_secs(30) };
    let steps = std::sync::Mutex::new(Vec::new());
    let moved = natterctl::partitions::set(&js, &s, 32, pace, |m| steps.lock().unwrap().push(m.to_string()))
        .await
        .expect("moved to 32");
    assert_eq!((moved.from, moved.to), (8, 32));
    assert!(moved.held < Duration::from_secs(15), "commands held {:?}", moved.held);
    let state = natterctl::partitions::load(&js, &s).await.expect("state");
    assert_eq!((state.count, state.draining_to, state.history.clone()), (32, None, vec![8, 32]));
    for p in [8, 31] {
        let name = s.consumer("messages", p);
        js.get_stream(s.cmd_stream())
            .await
            .unwrap()
            .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
            .await
            .unwrap_or_else(|e| panic!("{name} declared: {e}"));
    }

    // Five workers; every one of the 32 partitions is served, by all five.
    for _ in 0..3 {
        workers.push(app.start_worker_process());
    }
    let pids: Vec<u32> = workers.iter().map(|w| app.processes[*w].child.id().expect("pid")).collect();
    natter_tests::eventually("32 partitions spread over 5 workers", Duration::from_secs(60), || async {
        let h = holders(&app, 32).await;
        let by: BTreeSet<u32> = h.iter().flatten().copied().collect();
        (h.iter().all(Option::is_some) && by.len() == 5).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // One killed with -9 while messages flow: its partitions move to the others.
    app.processes[workers[0]].kill9().await;
    natter_tests::eventually("the survivors serve all 32", Duration::from_secs(30), || async {
        let h = holders(&app, 32).await;
        h.iter().all(|x| x.is_some_and(|pid| pid != pids[0])).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.cancel();

    let mut total = 0;
    for (k, (conv, tx, mut wb)) in rooms.into_iter().enumerate() {
        let acked = tx.await.expect("sender");
        assert!(acked.len() >= 40, "room {k}: {} sent", acked.len());
        assert!(acked.windows(2).all(|w| w[0] < w[1]), "room {k}: acks out of order");
        let got = wb.events("message_received", acked.len(), Duration::from_secs(60)).await;
        let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().expect("seq")).collect();
        assert_eq!(seqs, acked, "room {k} ({conv}): every message once, in the order sent");
        let contents: Vec<String> = got.iter().map(|e| e["data"]["content"].as_str().unwrap().to_string()).collect();
        let sent: Vec<String> = (0..acked.len()).map(|i| format!("r{k} {i}")).collect();
        assert_eq!(contents, sent, "room {k}: in the order sent");
        assert!(
            wb.events("message_received", 1, Duration::from_millis(300)).await.is_empty(),
            "room {k}: a message twice"
        );
        total += acked.len();
    }
    let stored = natter_tests::eventually("every message written", Duration::from_secs(30), || async {
        let n = app.store.messages().count_documents(mongodb::bson::doc! {}).await.ok()? as usize;
        (n == total).then_some(n)
    })
    .await;
    assert_eq!(stored, total, "each message stored once");
    // Commands went out under both counts.
    let used = partitions_used(&js, &s).await;
    assert!(used.iter().any(|p| *p >= 8), "no command under the new count: {used:?}");
    let steps = steps.into_inner().unwrap();
    assert!(steps.first().is_some_and(|m| m.starts_with("draining 8 partitions")), "{steps:?}");

    // A replay of the stream, which holds commands under both counts, in
    // four parallel tasks (4 divides 8 and 32, so each room is one task's),
    // rebuilds the same state.
    let live = natter_tests::state::settled(&app).await;
    let fresh = format!("{}_rebuild", app.db);
    let state = std::env::temp_dir().join(format!("{}-replay.json", app.name)).display().to_string();
    app.natterctl(&["replay", "--quiet", "--no-audit", "--into-db", &fresh, "--workers", "4", "--state", &state]).await;
    let other = mongodb::Client::with_uri_str(&app.mongodb_uri).await.unwrap().database(&fresh);
    let rebuilt = natter_tests::state::canonical(&other).await;
    assert_eq!(rebuilt.counts.get("messages"), live.counts.get("messages"));
    assert_eq!(rebuilt.docs["messages"], live.docs["messages"], "the same messages, seqs and all");
    assert_eq!(rebuilt.docs["conversations"], live.docs["conversations"], "the same rooms, cursors and counts");
    other.drop().await.unwrap();
}

/// A move whose drain cannot finish (no worker applies what is pending) is
/// called off: the old count stays, edges publish again, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_that_cannot_drain_is_called_off_and_changes_nothing() {
    let mut app = TestApp::new().await;
    let edge = app.start_edge().await;
    let s = Subjects::new(&app.name);
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    let worker = app.start_worker();
    let mut pair = app.chatting_pair(edge).await;
    // No worker from here on.
    worker.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = pair.wa.request("send_message", json!({"conversationId": pair.conv, "content": "before"})).await;
    assert_eq!(r["type"], "ack", "{r}");

    let pace =
        natterctl::partitions::Pace { settle: Duration::from_millis(200), drain_timeout: Duration::from_millis(1500) };
    let err = natterctl::partitions::set(&js, &s, 16, pace, |_| ()).await.expect_err("not drained");
    assert!(format!("{err:#}").contains("called off"), "{err:#}");
    assert!(format!("{err:#}").contains("messages-p"), "names what is pending: {err:#}");
    let state = natterctl::partitions::load(&js, &s).await.expect("state");
    assert_eq!((state.count, state.draining_to), (8, None));
    // No consumer of the count that was not taken.
    let cmds = js.get_stream(s.cmd_stream()).await.unwrap();
    assert!(cmds.consumer_info(s.consumer("messages", 8)).await.is_err(), "messages-p8 declared");

    // Commands flow again, under the old count; a worker applies both.
    let r = pair.wa.request("send_message", json!({"conversationId": pair.conv, "content": "after"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    app.start_worker();
    let got = pair.wb.events("message_received", 2, Duration::from_secs(30)).await;
    let contents: Vec<&str> = got.iter().map(|e| e["data"]["content"].as_str().unwrap()).collect();
    assert_eq!(contents, ["before", "after"]);
    let used = partitions_used(&js, &s).await;
    assert!(used.contains(&natter_nats::subjects::partition_of(&pair.conv, 8)), "{used:?}");
    assert!(used.iter().all(|p| *p < 8), "a command under the count not taken: {used:?}");
}

/// A new deployment takes its count from `PARTITIONS`; one that has a
/// count keeps it whatever `PARTITIONS` says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_deployment_starts_with_partitions_and_keeps_its_count() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("PARTITIONS".into(), "32".into());
    let edge = app.start_edge().await;
    let s = Subjects::new(&app.name);
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    assert_eq!(natterctl::partitions::load(&js, &s).await.unwrap().count, 32);
    let cmds = js.get_stream(s.cmd_stream()).await.unwrap();
    cmds.consumer_info(s.consumer("messages", 31)).await.expect("messages-p31");
    assert!(cmds.consumer_info(s.consumer("messages", 32)).await.is_err());
    app.start_worker();
    let mut pair = app.chatting_pair(edge).await;
    let r = pair.wa.request("send_message", json!({"conversationId": pair.conv, "content": "hi"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(pair.wb.events("message_received", 1, Duration::from_secs(30)).await.len(), 1);
    let used = partitions_used(&js, &s).await;
    assert!(used.contains(&natter_nats::subjects::partition_of(&pair.conv, 32)), "{used:?}");

    // Another process told 8 keeps the deployment's 32.
    app.edge_env.insert("PARTITIONS".into(), "8".into());
    app.start_edge().await;
    assert_eq!(natterctl::partitions::load(&js, &s).await.unwrap().count, 32);
}
