//! The shared servers and the per-test application.

use crate::procs::{self, Owned};
use mongodb::bson::oid::ObjectId;
use natter_edge::Edge;
use natter_shared::auth::{Identity, Jwt};
use natter_shared::config::{CoreConfig, EdgeConfig, JwtConfig};
use natter_shared::ids::UserId;
use natter_shared::store::Store;
use natter_workers::RunnerConfig;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const JWT_SECRET: &str = "integration-test-secret-0123456789";

/// URLs of the servers shared by one test binary.
pub struct Servers {
    pub nats_url: String,
    pub mongodb_base: String,
    _reapers: Vec<std::process::Child>,
    _dir: std::path::PathBuf,
}

static SERVERS: OnceLock<Servers> = OnceLock::new();
static DB_STORAGE: OnceLock<String> = OnceLock::new();

/// Keeps the MongoDB server's data in `dir` instead of memory (the
/// benchmark does, as a deployment would); call before `servers()`.
/// `NATTER_DB_STORAGE` does the same from the environment.
pub fn use_db_storage(dir: &str) {
    let _ = DB_STORAGE.set(dir.to_string());
}

/// The staging bucket's bound in tests unless one sets `STAGING_MAX_BYTES`:
/// room for the largest `MAX_FILE_SIZE` a test uses (20 MiB), small enough
/// that the buckets of a whole test binary fit a small disk.
pub const TEST_STAGING_MAX_BYTES: u64 = 64 << 20;

/// Starts nats-server and the MongoDB server on first use. `NATS_URL` and
/// `MONGODB_URI` in the environment point the tests at existing servers
/// instead (e.g. a real MongoDB replica set).
pub fn servers() -> &'static Servers {
    SERVERS.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("natter-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut reapers = Vec::new();
        let nats_url = match std::env::var("NATS_URL") {
            Ok(u) => u,
            Err(_) => {
                let port = procs::free_port();
                // JetStream reserves each namespace's staging bound in its
                // file store, which by default is 75% of the free disk; the
                // whole suite declares over a hundred namespaces but stores
                // little, so the store's size is set rather than guessed.
                let args = procs::nats_args(&dir, port, "1TB");
                let nats = procs::tool("NATTER_NATS_SERVER", "nats-server");
                reapers.push(procs::spawn_reaped(&nats, &args, &dir.join("nats.log").display().to_string()));
                block_on_port(port);
                format!("nats://127.0.0.1:{port}")
            }
        };
        let mongodb_base = match std::env::var("MONGODB_URI") {
            Ok(u) => u.trim_end_matches('/').to_string(),
            Err(_) => {
                let port = procs::free_port();
                let args = vec![
                    "--host".into(),
                    "127.0.0.1".into(),
                    "--port".into(),
                    port.to_string(),
                    "--storage-path".into(),
                    DB_STORAGE
                        .get()
                        .cloned()
                        .or_else(|| std::env::var("NATTER_DB_STORAGE").ok())
                        .unwrap_or_else(|| ":memory:".into()),
                    "--log-level".into(),
                    "WARNING".into(),
                ];
                let db = procs::tool("NATTER_SECANTUSD", "secantusd-py");
                reapers.push(procs::spawn_reaped(&db, &args, &dir.join("mongo.log").display().to_string()));
                block_on_port(port);
                format!("mongodb://127.0.0.1:{port}")
            }
        };
        Servers { nats_url, mongodb_base, _reapers: reapers, _dir: dir }
    })
}

fn block_on_port(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The S3 server (s3s-fs) shared by a test binary, started on first use.
pub struct S3Server {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    _reaper: std::process::Child,
}

static S3: OnceLock<S3Server> = OnceLock::new();

pub fn s3_server() -> &'static S3Server {
    S3.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("natter-test-{}", std::process::id())).join("s3");
        std::fs::create_dir_all(&dir).expect("s3 dir");
        let port = procs::free_port();
        let (access_key, secret_key) = ("natter-test".to_string(), "natter-test-secret".to_string());
        let args = vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--access-key".into(),
            access_key.clone(),
            "--secret-key".into(),
            secret_key.clone(),
            dir.display().to_string(),
        ];
        let bin = procs::cargo_tool("NATTER_S3S_FS", "s3s-fs");
        let log = dir.parent().unwrap().join("s3.log").display().to_string();
        let reaper = procs::spawn_reaped(&bin, &args, &log);
        block_on_port(port);
        S3Server { endpoint: format!("http://127.0.0.1:{port}"), access_key, secret_key, _reaper: reaper }
    })
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One test's world: its own NATS namespace and database on the shared
/// servers, and the edges and workers it started (stopped on drop).
pub struct TestApp {
    pub name: String,
    pub nats_url: String,
    pub mongodb_uri: String,
    pub db: String,
    pub jwt: Jwt,
    pub cancel: CancellationToken,
    pub edges: Vec<SocketAddr>,
    pub store: Store,
    pub processes: Vec<Owned>,
    pub edge_env: HashMap<String, String>,
    /// Stream replicas the edges and workers declare (3 on a cluster).
    pub nats_replicas: usize,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub fn init_tracing() {
    if std::env::var("RUST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

impl TestApp {
    pub async fn new() -> TestApp {
        let s = servers();
        Self::with_mongo(s.mongodb_base.clone()).await
    }

    /// A test app whose MongoDB is at `mongodb_base` (a server the test owns).
    pub async fn with_mongo(mongodb_base: String) -> TestApp {
        init_tracing();
        let s = servers();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}x{n}", std::process::id());
        let db = format!("natter_{name}");
        let mongodb_uri = format!("{mongodb_base}/{db}");
        let store = Store::connect(&mongodb_uri, &db).await.expect("store");
        TestApp {
            name,
            nats_url: s.nats_url.clone(),
            mongodb_uri,
            db,
            jwt: Jwt::new(&JwtConfig::with_secret(JWT_SECRET)),
            cancel: CancellationToken::new(),
            edges: vec![],
            store,
            processes: vec![],
            edge_env: HashMap::new(),
            nats_replicas: 1,
        }
    }

    pub fn core(&self) -> CoreConfig {
        CoreConfig {
            nats_url: self.nats_url.clone(),
            nats_namespace: self.name.clone(),
            mongodb_uri: self.mongodb_uri.clone(),
            mongodb_db: self.db.clone(),
            nats_replicas: self.nats_replicas,
            staging_max_bytes: self.staging_max_bytes(),
            partitions: self
                .edge_env
                .get("PARTITIONS")
                .and_then(|v| v.parse().ok())
                .unwrap_or(natter_shared::config::PARTITIONS_DEFAULT),
            // As the binaries are told (`NATS_TOPOLOGY` in `edge_env`).
            nats_topology: natter_shared::config::nats_topology(&self.edge_env).expect("NATS_TOPOLOGY"),
            metrics_addr: None,
        }
    }

    /// The staging bucket's bound: `STAGING_MAX_BYTES` in `edge_env`, else
    /// `TEST_STAGING_MAX_BYTES`. JetStream reserves it in its file store
    /// for every namespace's bucket, and one test binary declares dozens.
    fn staging_max_bytes(&self) -> u64 {
        self.edge_env.get("STAGING_MAX_BYTES").and_then(|v| v.parse().ok()).unwrap_or(TEST_STAGING_MAX_BYTES)
    }

    /// Environment for the binaries.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("NATS_URL".to_string(), self.nats_url.clone()),
            ("NATS_NAMESPACE".to_string(), self.name.clone()),
            ("MONGODB_URI".to_string(), self.mongodb_uri.clone()),
            ("JWT_SECRET".to_string(), JWT_SECRET.to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
            ("NATS_REPLICAS".to_string(), self.nats_replicas.to_string()),
            ("STAGING_MAX_BYTES".to_string(), self.staging_max_bytes().to_string()),
        ];
        v.extend(self.edge_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        v
    }

    pub fn edge_config(&self) -> EdgeConfig {
        let mut src: HashMap<String, String> = self.env().into_iter().collect();
        src.insert("LISTEN_ADDR".into(), "127.0.0.1:0".into());
        src.insert("FRONTEND_URL".into(), "http://localhost:3000".into());
        // Tests and benches send far faster than a person: the rate limits
        // are tested where they are set lower.
        for limit in ["WS_RATE_PER_SEC", "USER_SENDS_PER_SEC", "USER_GROUPS_PER_DAY"] {
            src.entry(limit.into()).or_insert_with(|| "100000".into());
        }
        EdgeConfig::load(&src).expect("edge config")
    }

    /// Starts an edge in this process; returns its address.
    pub async fn start_edge(&mut self) -> SocketAddr {
        self.start_edge_at("127.0.0.1:0", self.cancel.child_token()).await.0
    }

    /// Starts an edge on `listen` that stops when `shutdown` is cancelled;
    /// its address and its run (ends once it has drained).
    pub async fn start_edge_at(
        &mut self,
        listen: &str,
        shutdown: CancellationToken,
    ) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        let edge = Edge::build(self.edge_config(), listener, shutdown).await.expect("edge");
        let addr = edge.local_addr().expect("addr");
        let run = tokio::spawn(edge.run());
        self.edges.push(addr);
        (addr, run)
    }

    /// Starts a messages worker in this process; cancel the token to stop it.
    pub fn start_worker(&self) -> CancellationToken {
        let token = self.cancel.child_token();
        let core = self.core();
        let t = token.clone();
        let cfg = RunnerConfig { fetch_wait: Duration::from_millis(500), ..RunnerConfig::default() };
        tokio::spawn(async move {
            if let Err(e) = natter_workers::messages::serve(&core, cfg, t).await {
                panic!("worker failed: {e}");
            }
        });
        token
    }

    /// Points this app's edges and workers at the S3 server, with a bucket
    /// of its own.
    pub fn with_s3(&mut self) -> &mut Self {
        let s3 = s3_server();
        for (k, v) in [
            ("S3_ENDPOINT", s3.endpoint.clone()),
            ("S3_BUCKET", self.name.to_lowercase()),
            ("S3_ACCESS_KEY", s3.access_key.clone()),
            ("S3_SECRET_KEY", s3.secret_key.clone()),
        ] {
            self.edge_env.insert(k.into(), v);
        }
        self
    }

    pub fn s3_config(&self) -> natter_shared::config::S3Config {
        let src: HashMap<String, String> = self.env().into_iter().collect();
        natter_shared::config::S3Config::load(&src).expect("s3 config").expect("with_s3 first")
    }

    /// Starts an attachments worker in this process.
    pub fn start_attachments_worker(&self) -> CancellationToken {
        let token = self.cancel.child_token();
        let (core, s3) = (self.core(), self.s3_config());
        let t = token.clone();
        let cfg = RunnerConfig { fetch_wait: Duration::from_millis(500), ..RunnerConfig::default() };
        // As the edge is told (`UNSENT_UPLOAD_TTL` in `edge_env`).
        let ttl = natter_shared::config::unsent_upload_ttl(&self.edge_env).expect("UNSENT_UPLOAD_TTL");
        let after = natter_shared::config::collect_after(ttl);
        tokio::spawn(async move {
            if let Err(e) = natter_workers::attachments::serve_with(&core, &s3, after, cfg, t).await {
                panic!("attachments worker failed: {e}");
            }
        });
        token
    }

    /// Starts an audit worker in this process.
    pub fn start_audit_worker(&self) -> CancellationToken {
        let token = self.cancel.child_token();
        let core = self.core();
        let t = token.clone();
        let cfg = RunnerConfig { fetch_wait: Duration::from_millis(500), ..RunnerConfig::default() };
        tokio::spawn(async move {
            if let Err(e) = natter_workers::audit::serve(&core, cfg, t).await {
                panic!("audit worker failed: {e}");
            }
        });
        token
    }

    /// Starts a worker binary (`natter-worker-<role>`); its index in `processes`.
    pub fn start_role_process(&mut self, role: &str) -> usize {
        let bin = procs::workspace_bin(&format!("natter-worker-{role}"));
        let log = std::env::temp_dir().join(format!("{}-{role}-{}.log", self.name, self.processes.len()));
        self.processes.push(Owned::spawn(&bin, &[], &self.env(), &log.display().to_string()));
        self.processes.len() - 1
    }

    /// Starts the `natter-edge` binary on a free port; its address.
    pub async fn start_edge_process(&mut self) -> SocketAddr {
        let port = procs::free_port();
        let mut env = self.env();
        env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
        env.push(("FRONTEND_URL".into(), "http://localhost:3000".into()));
        for limit in ["WS_RATE_PER_SEC", "USER_SENDS_PER_SEC", "USER_GROUPS_PER_DAY"] {
            if !self.edge_env.contains_key(limit) {
                env.push((limit.into(), "100000".into()));
            }
        }
        let bin = procs::workspace_bin("natter-edge");
        let log = std::env::temp_dir().join(format!("{}-edge-{}.log", self.name, self.processes.len()));
        self.processes.push(Owned::spawn(&bin, &[], &env, &log.display().to_string()));
        procs::wait_for_port(port, Duration::from_secs(60)).await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        self.edges.push(addr);
        addr
    }

    /// Starts the `natter-worker-messages` binary; returns its index in
    /// `processes`.
    pub fn start_worker_process(&mut self) -> usize {
        let bin = procs::workspace_bin("natter-worker-messages");
        let log = std::env::temp_dir().join(format!("{}-worker-{}.log", self.name, self.processes.len()));
        self.processes.push(Owned::spawn(&bin, &[], &self.env(), &log.display().to_string()));
        self.processes.len() - 1
    }

    /// The pid of the worker process holding the lease of `role`'s
    /// partition `p` (instances are named `<pid>-...`), if any holds it.
    pub async fn lease_holder(&self, role: &str, p: u32) -> Option<u32> {
        let s = natter_nats::Subjects::new(&self.name);
        let js = async_nats::jetstream::new(async_nats::connect(&self.nats_url).await.expect("nats"));
        let kv = js.get_key_value(s.leases_bucket()).await.expect("leases");
        let v = kv.get(s.lease_key(role, p)).await.ok().flatten()?;
        String::from_utf8_lossy(&v).split('-').next().and_then(|pid| pid.parse().ok())
    }

    /// The app's presence bucket, and the JetStream context it is opened
    /// from (to write to it as an edge does).
    pub async fn presence_bucket(&self) -> (async_nats::jetstream::Context, async_nats::jetstream::kv::Store) {
        let s = natter_nats::Subjects::new(&self.name);
        let js = async_nats::jetstream::new(async_nats::connect(&self.nats_url).await.expect("nats"));
        let kv = js.get_key_value(s.presence_bucket()).await.expect("presence bucket");
        (js, kv)
    }

    /// Writes to the app's presence bucket so far (its stream's last
    /// sequence).
    pub async fn presence_writes(&self) -> u64 {
        let (_, mut kv) = self.presence_bucket().await;
        kv.stream.info().await.expect("stream info").state.last_sequence
    }

    /// Runs `natterctl args` with the app's environment; its stdout.
    pub async fn natterctl(&self, args: &[&str]) -> String {
        let bin = procs::workspace_bin("natterctl");
        let out = tokio::process::Command::new(bin).args(args).envs(self.env()).output().await.expect("natterctl");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "natterctl {args:?}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    }

    /// Which of `candidates` (indexes in `processes`) runs as `pid`.
    pub fn process_with_pid(&self, candidates: &[usize], pid: u32) -> Option<usize> {
        candidates.iter().copied().find(|i| self.processes[*i].child.id() == Some(pid))
    }

    pub fn user(&self) -> UserId {
        UserId(ObjectId::new())
    }

    pub fn token(&self, user: UserId, roles: &[&str]) -> String {
        self.jwt.issue(
            &Identity {
                user,
                roles: roles.iter().map(|r| r.to_string()).collect(),
                name: Some(format!("user-{user}")),
            },
            3600,
        )
    }

    /// A well-signed token of `user` that expired ten minutes ago.
    pub fn expired_token(&self, user: UserId) -> String {
        self.signed(serde_json::json!({"id": user.hex(), "exp": now_secs() - 600}))
    }

    /// A token of `user` valid for `secs` seconds from now.
    pub fn short_token(&self, user: UserId, secs: u64) -> String {
        self.signed(serde_json::json!({"id": user.hex(), "iat": now_secs(), "exp": now_secs() + secs}))
    }

    /// `claims` signed with the test secret, whatever they say.
    pub fn signed(&self, claims: serde_json::Value) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).expect("sign")
    }

    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::new()
    }

    /// `POST /api/chat/conversations/with-user` as `a` with `b`; the id.
    pub async fn open_conversation(&self, edge: SocketAddr, a: UserId, b: UserId) -> String {
        let resp = self
            .http()
            .post(format!("http://{edge}/api/chat/conversations/with-user"))
            .bearer_auth(self.token(a, &[]))
            .json(&serde_json::json!({"userId": b.hex()}))
            .send()
            .await
            .expect("with-user");
        assert_eq!(resp.status().as_u16(), 201, "with-user status");
        let v: serde_json::Value = resp.json().await.expect("json");
        v["_id"].as_str().expect("_id").to_string()
    }

    /// A conversation in which `a` and `b` have both written, so that each
    /// sees the other's presence; returns once that is stored and their
    /// short visits have gone offline on every edge.
    pub async fn make_contacts(&self, edge: SocketAddr, a: UserId, b: UserId) -> String {
        let conv = self.open_conversation(edge, a, b).await;
        for u in [a, b] {
            let mut ws = crate::WsClient::connect(edge, &self.token(u, &[])).await;
            let r = ws.request("send_message", serde_json::json!({"conversationId": conv, "content": "hello"})).await;
            assert_eq!(r["type"], "ack", "send: {r}");
        }
        let id = mongodb::bson::oid::ObjectId::parse_str(&conv).expect("id");
        crate::eventually("both have written", Duration::from_secs(10), || async {
            self.store.conversation(id).await.ok().flatten().filter(|c| c.established()).map(|_| ())
        })
        .await;
        for e in &self.edges {
            crate::eventually("the visits are over", Duration::from_secs(10), || async {
                let (_, v) = self.get(*e, &format!("/api/chat/presence?userIds={},{}", a.hex(), b.hex()), a).await;
                let all_off = v.as_array().is_some_and(|l| l.len() == 2 && l.iter().all(|p| p["isOnline"] == false));
                all_off.then_some(())
            })
            .await;
        }
        conv
    }

    /// Two new users in a conversation, each with a socket on `edge` that
    /// has joined it.
    pub async fn chatting_pair(&self, edge: SocketAddr) -> Pair {
        let (a, b) = (self.user(), self.user());
        let conv = self.open_conversation(edge, a, b).await;
        let mut wa = crate::WsClient::connect(edge, &self.token(a, &[])).await;
        let mut wb = crate::WsClient::connect(edge, &self.token(b, &[])).await;
        for ws in [&mut wa, &mut wb] {
            let r = ws.request("join_conversation", serde_json::json!({"conversationId": conv})).await;
            assert_eq!(r["type"], "ack", "join: {r}");
        }
        Pair { a, b, conv, wa, wb }
    }
}

/// See `TestApp::chatting_pair`.
pub struct Pair {
    pub a: UserId,
    pub b: UserId,
    pub conv: String,
    pub wa: crate::WsClient,
    pub wb: crate::WsClient,
}

impl TestApp {
    /// `GET path` on `edge` as `user`: status and JSON body.
    pub async fn get(&self, edge: SocketAddr, path: &str, user: UserId) -> (u16, serde_json::Value) {
        let resp = self
            .http()
            .get(format!("http://{edge}{path}"))
            .bearer_auth(self.token(user, &[]))
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }
}

impl TestApp {
    /// Any REST call with a token; status and JSON body (Null when none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        edge: SocketAddr,
        path: &str,
        token: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self.http().request(method, format!("http://{edge}{path}")).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// `POST /api/chat/groups` as an Admin; the group id.
    pub async fn create_group(&self, edge: SocketAddr, admin: UserId, members: &[UserId]) -> String {
        let ids: Vec<String> = members.iter().map(|m| m.hex()).collect();
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                edge,
                "/api/chat/groups",
                &self.token(admin, &["Admin"]),
                Some(serde_json::json!({"name": "team", "type": "operational", "memberIds": ids})),
            )
            .await;
        assert_eq!(status, 201, "create group: {v}");
        v["_id"].as_str().expect("_id").to_string()
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}
