//! A broker node's death loses nothing: on a three-node NATS cluster with R3
//! streams, two clients on two edges send steadily while the command
//! stream's leader is killed with `kill -9` and later restarted. A send
//! that fails or times out meanwhile is retried with the same `clientMsgId`
//! (as a real client does). Every acknowledged message must end up in
//! MongoDB exactly once, and nothing that was never acknowledged.
//! Run with `--nocapture` to see the figures (leaders, retries, timings).
#![allow(clippy::print_stdout, reason = "the figures of the failover are the test's report")]

use async_nats::jetstream;
use mongodb::bson::{Document, doc, oid::ObjectId};
use natter_nats::{RoomKind, Subjects};
use natter_tests::cluster::NatsCluster;
use natter_tests::ws::In;
use natter_tests::{TestApp, WsClient, servers};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Sends per client.
const N: usize = 300;
/// Spacing of one client's sends: N of them take fifteen seconds, so the
/// traffic outlasts a leader election (4 to 9 s in NATS) and the restart.
const EVERY: Duration = Duration::from_millis(50);
/// How long a client waits for the reply to one attempt before resending.
const REPLY_WAIT: Duration = Duration::from_secs(3);

/// What one client saw.
#[derive(Default)]
struct Tally {
    /// clientMsgId → (messageId, seq) from its first ack.
    acked: HashMap<String, (String, u64)>,
    /// Attempts after the first, over all sends.
    retries: usize,
    /// Attempts answered with an error frame, by code.
    errors: HashMap<String, usize>,
    /// Attempts that got no reply within `REPLY_WAIT`.
    timeouts: usize,
    /// Acks that said `duplicate: true` (a resend the edge deduplicated).
    duplicates: usize,
    /// Acks of an abandoned attempt that arrived after its resend was made.
    late_acks: usize,
    /// Errors answering an abandoned attempt, after its resend was made.
    late_errors: usize,
    /// Later acks of the same clientMsgId that gave another seq.
    seq_changes: usize,
    /// Later acks of the same clientMsgId that gave another messageId.
    id_changes: usize,
    /// Longest time from a send's first attempt to its ack.
    slowest: Duration,
    /// `message_received` events seen.
    events: usize,
    /// When each send was first acknowledged.
    ack_times: Vec<Instant>,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} acked, {} retries ({} timeouts, errors {:?}), {} duplicate acks, {} late acks, {} late errors, \
             {} seq changes, {} id changes, slowest ack {:?}, {} message_received events",
            self.acked.len(),
            self.retries,
            self.timeouts,
            self.errors,
            self.duplicates,
            self.late_acks,
            self.late_errors,
            self.seq_changes,
            self.id_changes,
            self.slowest,
            self.events
        )
    }
}

impl Tally {
    fn record(&mut self, cmid: &str, v: &Value) {
        let id = v["data"]["messageId"].as_str().unwrap_or_default().to_string();
        let seq = v["data"]["seq"].as_u64().unwrap_or_default();
        if v["data"]["duplicate"] == true {
            self.duplicates += 1;
        }
        match self.acked.get(cmid) {
            Some((id0, seq0)) => {
                self.id_changes += usize::from(*id0 != id);
                self.seq_changes += usize::from(*seq0 != seq);
            }
            None => {
                self.acked.insert(cmid.to_string(), (id, seq));
                self.ack_times.push(Instant::now());
            }
        }
    }
}

/// Waits for the reply to `rid`; acks of earlier, abandoned attempts that
/// arrive meanwhile are recorded too. `None` after `timeout`.
async fn reply(ws: &mut WsClient, rid: &str, attempts: &HashMap<String, String>, t: &mut Tally) -> Option<Value> {
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next(left).await? {
            In::Json(v) if v["requestId"] == rid => return Some(v),
            In::Json(v) if v["type"] == "ack" => {
                if let Some(cmid) = v["requestId"].as_str().and_then(|r| attempts.get(r)) {
                    t.late_acks += 1;
                    t.record(cmid, &v);
                }
            }
            In::Json(v)
                if v["type"] == "error" && v["requestId"].as_str().is_some_and(|r| attempts.contains_key(r)) =>
            {
                t.late_errors += 1
            }
            In::Json(v) if v["type"] == "message_received" => t.events += 1,
            In::Close(code) => panic!("the edge closed the socket ({code})"),
            _ => {}
        }
    }
}

/// Sends `N` messages, one every `EVERY` from `start` (sooner when behind),
/// each retried with its clientMsgId until acknowledged.
async fn traffic(mut ws: WsClient, conv: String, tag: &'static str, start: Instant) -> Tally {
    let mut t = Tally::default();
    let mut attempts: HashMap<String, String> = HashMap::new();
    for i in 0..N {
        tokio::time::sleep_until(start + EVERY * i as u32).await;
        let cmid = format!("{tag}-{i}");
        let data = json!({"conversationId": conv, "content": format!("{tag} message {i}"), "clientMsgId": cmid});
        let first = Instant::now();
        loop {
            assert!(first.elapsed() < Duration::from_secs(30), "{cmid}: no ack in 30 s ({t})");
            let rid = ws.send("send_message", data.clone()).await;
            attempts.insert(rid.clone(), cmid.clone());
            match reply(&mut ws, &rid, &attempts, &mut t).await {
                Some(v) if v["type"] == "ack" => {
                    t.record(&cmid, &v);
                    break;
                }
                Some(v) => {
                    let code = v["data"]["code"].as_str().unwrap_or("?").to_string();
                    *t.errors.entry(code).or_default() += 1;
                }
                None => t.timeouts += 1,
            }
            t.retries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        t.slowest = t.slowest.max(first.elapsed());
    }
    // Replies to abandoned attempts still on their way.
    let _ = reply(&mut ws, "none", &attempts, &mut t).await;
    t
}

/// The server name of `stream`'s leader, if the cluster answers.
async fn leader(js: &jetstream::Context, stream: &str) -> Option<String> {
    let mut s = js.get_stream(stream).await.ok()?;
    let info = s.info().await.ok()?;
    info.cluster.as_ref()?.leader.clone()
}

/// A leader of `stream` other than `not`, polled for: its name, when the
/// server says it took over (ms since the epoch) and when we saw it.
async fn new_leader(
    js: &jetstream::Context,
    stream: &str,
    not: &str,
    timeout: Duration,
) -> Option<(String, Option<i64>, Instant)> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(mut st) = js.get_stream(stream).await
            && let Ok(info) = st.info().await
            && let Some(c) = info.cluster.as_ref()
            && let Some(l) = c.leader.as_ref().filter(|l| l.as_str() != not)
        {
            let since = c.leader_since.map(|t| natter_shared::timefmt::from_offset(t).timestamp_millis());
            return Some((l.clone(), since, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Asserts `stream` is R3 with a leader and two replicas; the leader.
async fn assert_r3(js: &jetstream::Context, stream: &str) -> String {
    let mut s = js.get_stream(stream).await.unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let info = s.info().await.unwrap_or_else(|e| panic!("stream {stream} info: {e}"));
    assert_eq!(info.config.num_replicas, 3, "{stream} replicas");
    let cluster = info.cluster.as_ref().unwrap_or_else(|| panic!("{stream}: no cluster info"));
    assert_eq!(cluster.replicas.len(), 2, "{stream}: replicas besides the leader: {cluster:?}");
    cluster.leader.clone().unwrap_or_else(|| panic!("{stream}: no leader"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_nats_node_loses_no_acknowledged_message() {
    let began = Instant::now();
    let dir = std::env::temp_dir().join(format!("natter-cluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cluster = NatsCluster::start(&dir).await;
    println!("cluster ready at {} after {:?}; logs in {}", cluster.url(), began.elapsed(), dir.display());

    let mut app = TestApp::with_mongo(servers().mongodb_base.clone()).await;
    app.nats_url = cluster.url();
    app.nats_replicas = 3;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    println!("edges and workers up after {:?}", began.elapsed());

    let s = Subjects::new(&app.name);
    let mut js = jetstream::new(cluster.client().await);
    js.set_timeout(Duration::from_secs(2));
    let cmds = s.cmd_stream();
    for stream in
        [cmds.clone(), s.evt_stream(), s.outcomes_stream(), s.dlq_stream(), format!("KV_{}", s.leases_bucket())]
    {
        let l = assert_r3(&js, &stream).await;
        println!("{stream}: R3, leader {l}");
    }
    let p = natter_nats::subjects::partition_of(&conv, natter_nats::DEFAULT_PARTITIONS);
    let mut consumer: jetstream::consumer::PullConsumer =
        js.get_consumer_from_stream(s.consumer("messages", p), &cmds).await.expect("messages consumer");
    let ci = consumer.info().await.expect("consumer info");
    let cc = ci.cluster.as_ref().expect("consumer cluster info");
    assert_eq!(cc.replicas.len(), 2, "the messages consumer of partition {p} is R3: {cc:?}");
    println!("consumer {}: R3, leader {:?}", ci.name, cc.leader);

    let mut wa = WsClient::connect(e1, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    for ws in [&mut wa, &mut wb] {
        let r = ws.request("join_conversation", json!({"conversationId": conv})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }

    let start = Instant::now();
    let ta = tokio::spawn(traffic(wa, conv.clone(), "a", start));
    let tb = tokio::spawn(traffic(wb, conv.clone(), "b", start));

    // Three seconds in, kill the command stream's leader; once another
    // leader is elected (and no sooner than five seconds later), start it
    // again while the traffic goes on.
    tokio::time::sleep_until(start + Duration::from_secs(3)).await;
    let old = leader(&js, &cmds).await.expect("command stream leader");
    let victim = cluster.index_of(&old).expect("leader is a node");
    let killed_ms = mongodb::bson::DateTime::now().timestamp_millis();
    let killed_at = Instant::now();
    cluster.kill9(victim).await;
    println!("{:?} into traffic: kill -9 {old} (the {cmds} leader)", killed_at - start);
    let elected = new_leader(&js, &cmds, &old, Duration::from_secs(20)).await;
    match &elected {
        Some((l, since, seen)) => println!(
            "new {cmds} leader {l}: took over {} ms after the kill (seen after {:?})",
            since.map(|t| (t - killed_ms).to_string()).unwrap_or_else(|| "?".into()),
            *seen - killed_at
        ),
        None => println!("no new {cmds} leader within 20 s"),
    }
    tokio::time::sleep_until(killed_at + Duration::from_secs(5)).await;
    cluster.restart(victim).await;
    let restarted_at = Instant::now();
    println!("{:?} into traffic: {old} restarted", start.elapsed());

    let ta = ta.await.expect("client a");
    let tb = tb.await.expect("client b");
    println!("traffic done after {:?}", start.elapsed());
    println!("client a (edge 1): {ta}");
    println!("client b (edge 2): {tb}");
    let mut times: Vec<Instant> = ta.ack_times.iter().chain(&tb.ack_times).copied().collect();
    times.sort();
    let between = |from: Instant, to: Instant| times.iter().filter(|t| **t >= from && **t < to).count();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    println!(
        "acks: {} before the kill, {} between the kill and the restart, {} after it; longest time without an ack {gap:?}",
        between(start, killed_at),
        between(killed_at, restarted_at),
        between(restarted_at, start + Duration::from_secs(3600)),
    );
    assert!(elected.is_some(), "the command stream elected no new leader");

    // Every send was acknowledged, each clientMsgId with one messageId.
    let acked: HashMap<String, (String, u64)> = ta
        .acked
        .iter()
        .map(|(c, v)| (format!("a:{c}"), v.clone()))
        .chain(tb.acked.iter().map(|(c, v)| (format!("b:{c}"), v.clone())))
        .collect();
    assert_eq!(acked.len(), 2 * N, "every send acknowledged");
    let ids: HashSet<&str> = acked.values().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 2 * N, "distinct message ids");
    assert_eq!(ta.id_changes + tb.id_changes, 0, "a resend got another messageId");

    // The workers store them all (they may still be catching up). A
    // delivery lost with the dead node more than once comes back only
    // after the ack waits of the redelivery schedule (3 s, then 10, then
    // 30), and the partition holds later commands behind it: the bound
    // covers three losses.
    let docs = app.store.messages().clone_with_type::<Document>();
    let filter = doc! {"conversationId": &conv};
    let redelivery: Duration = natter_nats::topology::BACKOFF[..3].iter().sum();
    let stored =
        natter_tests::eventually("every acked message stored", redelivery + Duration::from_secs(20), || async {
            let n = docs.count_documents(filter.clone()).await.ok()? as usize;
            (n >= 2 * N).then_some(n)
        })
        .await;
    println!("{stored} messages stored {:?} after the traffic began", start.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let oids: Vec<ObjectId> = ids.iter().map(|id| ObjectId::parse_str(id).expect("messageId")).collect();
    let found = docs.count_documents(doc! {"_id": {"$in": &oids}}).await.expect("count") as usize;
    assert_eq!(found, 2 * N, "acked messages in MongoDB");
    let mut cursor = docs.find(filter.clone()).await.expect("find");
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut by_content: HashMap<String, usize> = HashMap::new();
    let mut seq_of: HashMap<String, u64> = HashMap::new();
    use futures::TryStreamExt;
    while let Some(d) = cursor.try_next().await.expect("cursor") {
        let id = d.get_object_id("_id").expect("_id").to_hex();
        *by_content.entry(d.get_str("content").unwrap_or_default().to_string()).or_default() += 1;
        seq_of.insert(id.clone(), d.get_i64("seq").unwrap_or_default() as u64);
        *by_id.entry(id).or_default() += 1;
    }
    let stored_total: usize = by_id.values().sum();
    // Delivery receipts that could not be stored during the election are
    // retried: every message whose event reached the other side's socket
    // ends up delivered. (An event published on core NATS through the node
    // that died can be lost; a client recovers those by joining with its
    // last seq, see tests/tests/it/catchup.rs.)
    let missed = (2 * N).saturating_sub(ta.events) + (2 * N).saturating_sub(tb.events);
    // Receipts are cursors: a message is delivered once the other
    // participant's delivery (or read) cursor has passed it.
    let undelivered =
        natter_tests::eventually("receipts for what reached a device", Duration::from_secs(30), || async {
            let c = app.store.conversation(conv.parse().ok()?).await.ok()??;
            let seen = |u: &ObjectId| {
                let h = u.to_hex();
                c.delivered_cursors.get(&h).copied().unwrap_or(0).max(c.read_cursors.get(&h).copied().unwrap_or(0))
            };
            let mut n = 0;
            for (sender, reader) in [(a.oid(), b.oid()), (b.oid(), a.oid())] {
                let f = doc! {"conversationId": &conv, "senderId": sender, "seq": {"$gt": seen(&reader)}};
                n += docs.count_documents(f).await.ok()? as usize;
            }
            (n <= missed).then_some(n)
        })
        .await;
    println!("{undelivered} messages not marked delivered; {missed} message_received events missed by the sockets");
    let twice: Vec<_> = by_content.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let unacked: Vec<_> = by_id.keys().filter(|id| !ids.contains(id.as_str())).collect();
    assert!(unacked.is_empty(), "stored but never acknowledged: {unacked:?}");
    assert_eq!(stored_total, ids.len(), "stored messages = distinct acked ids");
    let seq_mismatch = acked.values().filter(|(id, seq)| seq_of.get(id) != Some(seq)).count();
    assert_eq!(seq_mismatch, 0, "stored seq differs from the acked seq");

    // JetStream kept one send_message command per message: the resends
    // were deduplicated by Nats-Msg-Id across the new leader.
    let subject = s.command(RoomKind::Conversation, &conv, "send_message");
    let stream = js.get_stream(&cmds).await.expect("stream");
    let mut per_subject = stream.info_with_subjects(&subject).await.expect("subjects");
    let mut in_stream = 0usize;
    while let Some((_, n)) = per_subject.try_next().await.expect("subject counts") {
        in_stream += n;
    }
    println!("{in_stream} send_message commands in {cmds}");
    assert_eq!(in_stream, 2 * N, "send_message commands in the stream");

    // The restarted node caught up.
    let after = natter_tests::eventually("all replicas current", Duration::from_secs(20), || async {
        let mut st = js.get_stream(&cmds).await.ok()?;
        let info = st.info().await.ok()?;
        let c = info.cluster.as_ref()?;
        (c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current && !r.offline)).then(|| c.leader.clone())
    })
    .await;
    println!("{cmds} leader at the end: {after:?}; whole test {:?}", began.elapsed());
    // Let the edges and workers wind down before their NATS nodes go.
    drop(app);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.stop().await;
}
