//! A three-node nats-server cluster with JetStream, owned by one test, whose
//! nodes can be killed (`kill -9`) and restarted on the same ports and store
//! directories, to prove what survives a broker node's death.

use crate::procs::{self, Owned};
use async_nats::jetstream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many nodes the cluster has.
pub const NODES: usize = 3;

struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    process: Option<Owned>,
    /// Times started, for log file names.
    starts: u32,
}

/// Three nats-server processes routed to each other; killed on drop.
pub struct NatsCluster {
    dir: PathBuf,
    cluster_name: String,
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Starts three nodes with their data and logs under `dir`, and waits
    /// until JetStream in the cluster has a meta leader and can place an R3
    /// stream (so every node has joined).
    pub async fn start(dir: impl AsRef<Path>) -> NatsCluster {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let nodes = (0..NODES)
            .map(|i| Node {
                name: format!("n{}", i + 1),
                port: procs::free_port(),
                cluster_port: procs::free_port(),
                process: None,
                starts: 0,
            })
            .collect();
        let mut c = NatsCluster { dir, cluster_name: format!("natter-test-{}", std::process::id()), nodes };
        for i in 0..NODES {
            c.spawn(i);
        }
        for n in &c.nodes {
            procs::wait_for_port(n.port, Duration::from_secs(30)).await;
        }
        c.wait_ready(Duration::from_secs(60)).await;
        c
    }

    /// Every node's client URL, comma-separated (the `NATS_URL` form).
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect()
    }

    /// Node `i`'s server name (`n1`, `n2`, `n3`), as stream cluster info names it.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node with server name `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// A client of the whole cluster (it follows the cluster through a
    /// node's death like any other).
    pub async fn client(&self) -> async_nats::Client {
        async_nats::ConnectOptions::new().connect(self.urls()).await.expect("connect to the cluster")
    }

    /// `kill -9` node `i`.
    pub async fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.kill9().await;
        }
    }

    /// Starts node `i` again on the same ports and store directory, and
    /// waits until it accepts clients.
    pub async fn restart(&mut self, i: usize) {
        self.kill9(i).await;
        self.spawn(i);
        procs::wait_for_port(self.nodes[i].port, Duration::from_secs(30)).await;
    }

    /// Kills every node (`kill -9`) and deletes their data and logs.
    pub async fn stop(mut self) {
        for i in 0..NODES {
            self.kill9(i).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Where the nodes keep their data (`<dir>/n<i>`) and logs (`<dir>/n<i>-<start>.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let n = &mut self.nodes[i];
        let args: Vec<String> = vec![
            "-js".into(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            n.port.to_string(),
            "--server_name".into(),
            n.name.clone(),
            "-sd".into(),
            self.dir.join(&n.name).display().to_string(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{}", n.cluster_port),
            "--routes".into(),
            routes.join(","),
            "--cluster_name".into(),
            self.cluster_name.clone(),
        ];
        let log = self.dir.join(format!("{}-{}.log", n.name, n.starts));
        n.starts += 1;
        let bin = procs::tool("NATTER_NATS_SERVER", "nats-server");
        n.process = Some(Owned::spawn(&bin, &args, &[], &log.display().to_string()));
    }

    /// Waits until an R3 stream can be created, i.e. JetStream has a meta
    /// leader and all three peers.
    async fn wait_ready(&self, timeout: Duration) {
        let client = self.client().await;
        let mut js = jetstream::new(client.clone());
        // A request made before the meta leader is elected gets no answer:
        // retry soon rather than after the default five seconds.
        js.set_timeout(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + timeout;
        let cfg = jetstream::stream::Config {
            name: "CLUSTER_READY".into(),
            subjects: vec!["cluster.ready".into()],
            num_replicas: NODES,
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        };
        loop {
            match js.create_stream(cfg.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "NATS cluster not ready: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let _ = js.delete_stream("CLUSTER_READY").await;
        let _ = client.flush().await;
    }
}
