//! The NATS users and permissions shipped in `infra/nats/` (server.conf,
//! which includes permissions.conf), on a nats-server of the test's own:
//! the pipeline runs with natterctl, the edge and the workers each as their
//! own user (the topology applied by ctl, verified by the edge and the
//! workers: `NATS_TOPOLOGY=verify`), without one permission violation; the
//! edge and worker users are refused what they must not do (the edge
//! publishing events, the workers' outcomes, dead letters, lease writes,
//! the attachments fact, acks of the workers' commands; a worker
//! publishing client commands; either declaring, updating or deleting
//! streams and the workers' consumers); and an edge or worker that finds
//! the topology missing does not start, and says what is missing.

use async_nats::jetstream;
use mongodb::bson::doc;
use mongodb::bson::oid::ObjectId;
use natter_nats::{Role, Subjects};
use natter_tests::procs::{self, Owned};
use natter_tests::stack::Pair;
use natter_tests::ws::In;
use natter_tests::{TestApp, WsClient, eventually};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// The namespace permissions.conf is written for.
const NS: &str = "chat";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A nats-server started with `infra/nats/server.conf`, on a free port, with
/// a store directory and passwords of its own.
struct AuthNats {
    port: u16,
    passwords: [(&'static str, String); 3],
    log: PathBuf,
    _server: Owned,
}

impl AuthNats {
    async fn start() -> AuthNats {
        let dir = std::env::temp_dir().join(format!(
            "natter-nats-permissions-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = procs::free_port();
        let conf = procs::root().join("infra/nats/server.conf");
        let args: Vec<String> = vec![
            "-c".into(),
            conf.display().to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-sd".into(),
            dir.join("store").display().to_string(),
        ];
        let passwords = ["edge", "worker", "ctl"].map(|u| (u, ObjectId::new().to_hex()));
        // nats-server reads a variable's value as a configuration value (a
        // hex string may read as a number): quoted, as the docs say.
        let env: Vec<(String, String)> = passwords
            .iter()
            .map(|(u, p)| (format!("NATTER_NATS_{}_PASSWORD", u.to_uppercase()), format!("\"{p}\"")))
            .collect();
        let log = dir.join("nats.log");
        let server =
            Owned::spawn(&procs::tool("NATTER_NATS_SERVER", "nats-server"), &args, &env, &log.display().to_string());
        procs::wait_for_port(port, Duration::from_secs(30)).await;
        AuthNats { port, passwords, log, _server: server }
    }

    fn password(&self, user: &str) -> String {
        self.passwords.iter().find(|(u, _)| *u == user).map(|(_, p)| p.clone()).expect("a shipped user")
    }

    /// `nats://user:password@127.0.0.1:port`, the NATS_URL of a binary
    /// running as `user`.
    fn url(&self, user: &str) -> String {
        format!("nats://{user}:{}@127.0.0.1:{}", self.password(user), self.port)
    }

    fn address(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A client of the test's own, as `user` (async-nats takes credentials
    /// from its options, not from the URL).
    fn options(&self, user: &str) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(user.into(), self.password(user))
    }

    async fn connect(&self, user: &str) -> async_nats::Client {
        self.options(user).connect(self.address()).await.unwrap_or_else(|e| panic!("connect as {user}: {e}"))
    }

    /// A client of `user` and the server errors it is told about
    /// (permission violations among them).
    async fn connect_watched(&self, user: &str) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self
            .options(user)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(self.address())
            .await
            .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        (client, rx)
    }

    /// The permission violations the server logged.
    fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("Violation"))
            .map(str::to_string)
            .collect()
    }

    /// Applies the topology as `ctl`, as `natterctl topology apply` does.
    async fn apply_topology(&self) {
        let js = jetstream::new(self.connect("ctl").await);
        natter_nats::apply(&js, &Subjects::new(NS), natter_nats::Sizing::single())
            .await
            .expect("topology applied as ctl");
    }
}

/// Whether `told` holds the server's refusal of a publish to `subject`.
fn refused(told: &[String], subject: &str) -> bool {
    told.iter().any(|e| e.contains("Permissions Violation for Publish") && e.contains(&format!("\"{subject}\"")))
}

/// Publishes each of `denied`, then `allowed`, from `client`; asserts that a
/// `ctl` subscriber to all of them gets `allowed` alone (a connection's
/// messages arrive in order: had any denied one gone through, it would
/// have come first), and that the server told `client` each was refused.
async fn only_allowed_arrives(
    nats: &AuthNats,
    who: &str,
    client: &async_nats::Client,
    errors: &mut mpsc::UnboundedReceiver<String>,
    denied: &[String],
    allowed: &str,
) {
    let ctl = nats.connect("ctl").await;
    let mut all = ctl.subscribe(">").await.expect("ctl subscribes to everything");
    // The subscription is known to the server once ctl's own publish after
    // it comes back (a flush only writes it out).
    ctl.publish("natter.test.ready", "".into()).await.expect("publish");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut all))
            .await
            .expect("ctl's own publish came back")
            .expect("subscription open");
        if m.subject.as_str() == "natter.test.ready" {
            break;
        }
    }
    for s in denied {
        client.publish(s.clone(), "forged".into()).await.expect("publish");
    }
    client.publish(allowed.to_string(), "allowed".into()).await.expect("publish");
    client.flush().await.expect("flush");
    let first = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut all))
            .await
            .unwrap_or_else(|_| panic!("{who}: the allowed publish on {allowed} never arrived"))
            .expect("subscription open");
        // Ignore what the server or others publish on the side.
        if m.subject.as_str() == allowed || denied.iter().any(|d| d == m.subject.as_str()) {
            break m;
        }
    };
    assert_eq!(first.subject.as_str(), allowed, "{who} published on a subject it must not: {}", first.subject);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut told = Vec::new();
    while !denied.iter().all(|s| refused(&told, s)) {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(e)) => told.push(e),
            _ => break,
        }
    }
    for s in denied {
        assert!(refused(&told, s), "{who}: no refusal reported for {s}: {told:?}");
    }
    // And nothing denied straggles in after.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), futures::StreamExt::next(&mut all)).await {
        assert!(!denied.iter().any(|d| d == m.subject.as_str()), "{who}: {} went through", m.subject);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_with_each_binary_as_its_own_user() {
    let nats = AuthNats::start().await;
    nats.apply_topology().await;

    let mut app = TestApp::new().await;
    // permissions.conf is written for `chat`: this app's edges and workers
    // use it, on a server of this test's own.
    app.name = NS.into();
    app.with_s3();
    // The topology is ctl's: the edge and the workers only check it.
    app.edge_env.insert("NATS_TOPOLOGY".into(), "verify".into());
    // One group a day: the second is refused only if the edge may read and
    // write the per-user limits' bucket (without it, limits fail open).
    app.edge_env.insert("USER_GROUPS_PER_DAY".into(), "1".into());
    app.nats_url = nats.url("edge");
    let edge = app.start_edge().await;
    app.nats_url = nats.url("worker");
    app.start_worker();
    app.start_attachments_worker();
    app.start_audit_worker();

    // A conversation (REST, answered by the worker on the edge's inbox), two
    // sockets that joined it, a message each way, typing.
    let Pair { a, b, conv, mut wa, mut wb } = app.chatting_pair(edge).await;
    let r = wa.request("send_message", json!({"conversationId": conv, "content": "hello b"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let got = wb.events("message_received", 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "b received a's message");
    assert_eq!(got[0]["data"]["content"], "hello b", "{}", got[0]);
    let first_seq = got[0]["seq"].as_u64().expect("seq");
    let r = wb.request("send_message", json!({"conversationId": conv, "content": "hello a"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let got = wa.events("message_received", 2, Duration::from_secs(10)).await;
    assert!(got.iter().any(|e| e["data"]["content"] == "hello a"), "a received b's message: {got:?}");
    let r = wa.request("typing", json!({"conversationId": conv, "isTyping": true})).await;
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(wb.events("user_typing", 1, Duration::from_secs(5)).await.len(), 1, "b saw a typing");

    // A group (REST as an Admin): b joins it (the membership check reads
    // the room's last event) and gets a's message in it.
    let group = app.create_group(edge, a, &[b]).await;
    let body = json!({"name": "second", "memberIds": [b.hex()]});
    let (s, v) = app.call(reqwest::Method::POST, edge, "/api/chat/groups", &app.token(a, &["Admin"]), Some(body)).await;
    assert_eq!((s, v["error"]["code"].as_str()), (429, Some("rate_limited")), "the quota bucket is usable: {v}");
    let r = wb.request("join_group", json!({"groupId": group})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = wa.request("join_group", json!({"groupId": group})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = wa.request("send_message", json!({"groupId": group, "content": "hello group"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let got = wb.events("message_received", 1, Duration::from_secs(10)).await;
    assert_eq!(got.first().map(|e| e["data"]["content"].clone()), Some(json!("hello group")), "{got:?}");

    // Catch-up from a seq (direct get on the command stream, ordered
    // consumers on the events stream).
    let mut wb2 = WsClient::connect(edge, &app.token(b, &[])).await;
    let ack = wb2.request("join_conversation", json!({"conversationId": conv, "lastSeq": first_seq})).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["data"]["catchUp"]["complete"], true, "{ack}");
    assert!(ack["data"]["catchUp"]["events"].as_u64().unwrap_or(0) >= 1, "{ack}");
    drop(wb2);

    // An upload: staged by the edge, taken by the attachments worker, which
    // publishes its `record_attachment` fact.
    let resp = app
        .http()
        .post(format!("http://{edge}/api/chat/attachments"))
        .query(&[("conversationId", conv.as_str()), ("filename", "notes.txt"), ("type", "text/plain")])
        .bearer_auth(app.token(a, &[]))
        .body(b"plain text notes\n".to_vec())
        .send()
        .await
        .expect("upload");
    let status = resp.status().as_u16();
    let up: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 201, "upload: {up}");
    let id = ObjectId::parse_str(up["id"].as_str().expect("attachment id")).expect("ObjectId");
    eventually("the attachment recorded", Duration::from_secs(10), || async {
        app.store.attachments().find_one(doc! {"_id": id}).await.ok().flatten()
    })
    .await;

    // Presence: a is online; once a's socket is gone, offline with a last-seen.
    let (_, v) = app.get(edge, &format!("/api/chat/presence?userIds={}", a.hex()), b).await;
    assert_eq!(v[0]["isOnline"], true, "{v}");
    drop(wa);
    eventually("a offline with a last-seen time", Duration::from_secs(10), || async {
        let (_, v) = app.get(edge, &format!("/api/chat/presence?userIds={}", a.hex()), b).await;
        (v[0]["isOnline"] == false && v[0]["lastSeen"].is_string()).then_some(())
    })
    .await;

    // An audited read: the edge records its own fact before serving it.
    let (status, v) =
        app.call(reqwest::Method::GET, edge, "/api/chat/audit/logs", &app.token(a, &["Admin"]), None).await;
    assert_eq!(status, 200, "audit logs: {v}");

    // A command no worker can read (published as ctl): dead-lettered.
    let ctl = jetstream::new(nats.connect("ctl").await);
    let s = Subjects::new(NS);
    let poison = s.command(natter_shared::ids::RoomKind::Conversation, &conv, "send_message");
    ctl.publish(poison, "not a command".into()).await.expect("publish").await.expect("stored");
    eventually("the dead letter", Duration::from_secs(15), || async {
        let mut dlq = ctl.get_stream(s.dlq_stream()).await.ok()?;
        (dlq.info().await.ok()?.state.messages > 0).then_some(())
    })
    .await;

    // The audit worker (outcomes consumer, chain head bucket) kept up.
    eventually("audit records", Duration::from_secs(15), || async {
        let n = app.store.audit().count_documents(doc! {}).await.unwrap_or(0);
        (n > 0).then_some(())
    })
    .await;
    // The frames b had queued are b's business; what matters is that the
    // server refused nothing any binary did.
    while let Some(In::Json(_)) = wb.next(Duration::from_millis(100)).await {}
    let violations = nats.violations();
    assert!(
        violations.is_empty(),
        "the shipped permissions refused the pipeline something:\n{}",
        violations.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_and_worker_users_are_refused_what_they_must_not_do() {
    let nats = AuthNats::start().await;
    nats.apply_topology().await;
    let s = Subjects::new(NS);
    let user = ObjectId::new().to_hex();
    let room = ObjectId::new().to_hex();

    // Without credentials, or with a wrong password: no connection.
    let anonymous = async_nats::ConnectOptions::new();
    let wrong = async_nats::ConnectOptions::with_user_and_password("edge".into(), "wrong".into());
    for (what, options) in [("without credentials", anonymous), ("with a wrong password", wrong)] {
        let c = tokio::time::timeout(Duration::from_secs(10), options.connect(nats.address())).await;
        assert!(matches!(c, Ok(Err(_))), "connected {what}");
    }

    // The edge: no events, outcomes, dead letters, lease or audit-head
    // writes, no attachments fact, no acks of the workers' commands, no
    // deleting or purging streams, consumers or messages. Typing frames go
    // through. Nor declaring or updating streams, buckets or the workers'
    // consumers: the topology is ctl's.
    let (edge, mut edge_errors) = nats.connect_watched("edge").await;
    let conv = natter_shared::ids::RoomKind::Conversation;
    let denied = vec![
        s.room_events(conv, &room),
        s.user_events(&user),
        s.outcome("messages"),
        s.outcome("audit"),
        s.dlq("messages"),
        format!("$KV.{}.{}", s.leases_bucket(), s.lease_key("messages", 0)),
        format!("$KV.{}.head", s.audit_head_bucket()),
        s.routed_command(&natter_shared::v1::command::Route::User(user.parse().expect("user id")), "record_attachment"),
        format!("$JS.ACK.{}.{}.1.1.1.1700000000000000000.0", s.cmd_stream(), s.consumer("messages", 0)),
        format!("$JS.API.STREAM.CREATE.{}_SPY", s.cmd_stream()),
        format!("$JS.API.STREAM.DELETE.{}", s.cmd_stream()),
        format!("$JS.API.STREAM.PURGE.{}", s.evt_stream()),
        format!("$JS.API.STREAM.MSG.DELETE.{}", s.cmd_stream()),
        format!("$JS.API.CONSUMER.DELETE.{}.{}", s.cmd_stream(), s.consumer("messages", 0)),
    ];
    let denied = [denied, topology_changes(&s)].concat();
    only_allowed_arrives(&nats, "edge", &edge, &mut edge_errors, &denied, &s.room_ephemeral(conv, &room)).await;

    // A JetStream publish of an event by the edge is not stored either.
    let ctl = jetstream::new(nats.connect("ctl").await);
    for stream in [s.evt_stream(), s.outcomes_stream(), s.dlq_stream(), format!("KV_{}", s.leases_bucket())] {
        let mut st = ctl.get_stream(&stream).await.expect("stream");
        let info = st.info().await.expect("info");
        assert_eq!(info.state.messages, 0, "{stream} holds what the edge published");
    }
    // Nothing was deleted: the command stream and the workers' consumers
    // are there.
    let cmds = ctl.get_stream(s.cmd_stream()).await.expect("the command stream");
    for role in [Role::MESSAGES, Role::ATTACHMENTS] {
        cmds.get_consumer::<jetstream::consumer::pull::Config>(&s.consumer(role.name(), 0))
            .await
            .expect("the worker's consumer");
    }

    // A worker: no client commands (the attachments fact is its one
    // command), no typing frames. Events go through.
    let (worker, mut worker_errors) = nats.connect_watched("worker").await;
    let denied = vec![
        s.command(conv, &room, "send_message"),
        s.command(conv, &room, "delete_message"),
        s.command(natter_shared::ids::RoomKind::Group, &room, "add_member"),
        s.room_ephemeral(conv, &room),
    ];
    let denied = [denied, topology_changes(&s)].concat();
    only_allowed_arrives(&nats, "worker", &worker, &mut worker_errors, &denied, &s.room_events(conv, &room)).await;
    let mut st = ctl.get_stream(s.cmd_stream()).await.expect("stream");
    assert_eq!(st.info().await.expect("info").state.messages, 0, "a worker stored a client command");
}

/// Declaring, updating or deleting natter's streams, buckets and the
/// workers' consumers: `ctl`'s alone (`natterctl topology apply`), refused
/// to the edge and the worker.
fn topology_changes(s: &Subjects) -> Vec<String> {
    let mut v = Vec::new();
    let kv = |b: String| format!("KV_{b}");
    for stream in [
        s.cmd_stream(),
        s.evt_stream(),
        s.outcomes_stream(),
        kv(s.leases_bucket()),
        kv(s.presence_bucket()),
        format!("OBJ_{}", s.staging_bucket()),
    ] {
        v.push(format!("$JS.API.STREAM.CREATE.{stream}"));
        v.push(format!("$JS.API.STREAM.UPDATE.{stream}"));
    }
    v.push("$JS.API.STREAM.CREATE.X".to_string());
    v.push(format!("$JS.API.STREAM.DELETE.{}", kv(s.leases_bucket())));
    for (stream, role) in [(s.cmd_stream(), "messages"), (s.outcomes_stream(), "audit")] {
        v.push(format!("$JS.API.CONSUMER.CREATE.{stream}.x"));
        v.push(format!("$JS.API.CONSUMER.CREATE.{stream}.{}", s.consumer(role, 0)));
        v.push(format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.x"));
        v.push(format!("$JS.API.CONSUMER.DELETE.{stream}.{}", s.consumer(role, 0)));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_topology_edges_and_workers_do_not_start() {
    let nats = AuthNats::start().await;
    let mut app = TestApp::new().await;
    app.name = NS.into();
    app.edge_env.insert("NATS_TOPOLOGY".into(), "verify".into());
    let s = Subjects::new(NS);

    // Nothing applied yet: the edge stops at start, naming the first stream
    // it misses and what to do.
    app.nats_url = nats.url("edge");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let built = tokio::time::timeout(
        Duration::from_secs(60),
        natter_edge::Edge::build(app.edge_config(), listener, app.cancel.child_token()),
    )
    .await
    .expect("the edge gave up in time");
    let Err(e) = built else { panic!("an edge started without the topology") };
    let e = e.to_string();
    assert!(e.contains(&s.cmd_stream()) && e.contains("natterctl topology apply"), "{e}");

    // A worker too.
    app.nats_url = nats.url("worker");
    let e = worker_refused(&app, "the topology").await;
    assert!(e.contains(&s.cmd_stream()) && e.contains("natterctl topology apply"), "{e}");

    // Applied, but without one of the role's consumers: the worker names it.
    nats.apply_topology().await;
    let ctl = jetstream::new(nats.connect("ctl").await);
    let gone = s.consumer(Role::MESSAGES.name(), 3);
    ctl.delete_consumer_from_stream(&gone, s.cmd_stream()).await.expect("consumer deleted as ctl");
    let e = worker_refused(&app, "its consumer").await;
    assert!(e.contains(&gone) && e.contains("natterctl topology apply"), "{e}");

    // Checking asked for nothing the users may not do.
    let violations = nats.violations();
    assert!(violations.is_empty(), "verifying the topology was refused something:\n{}", violations.join("\n"));
}

/// Starts a messages worker that must refuse to start (without `what`);
/// its error.
async fn worker_refused(app: &TestApp, what: &str) -> String {
    let cfg = natter_workers::RunnerConfig::default();
    let started = tokio::time::timeout(
        Duration::from_secs(60),
        natter_workers::messages::serve(&app.core(), cfg, app.cancel.child_token()),
    )
    .await
    .expect("the worker gave up in time");
    started.expect_err(&format!("a worker started without {what}")).to_string()
}
