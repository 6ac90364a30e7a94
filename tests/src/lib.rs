//! Integration test harness. Starts real servers (nats-server with
//! JetStream, the SecantusDB MongoDB wire server) once per test binary, and
//! gives each test its own namespace (subjects, streams) and database, plus
//! helpers to run edges and workers in-process or as processes, mint tokens,
//! and drive the WebSocket protocol and a real socket.io-client.

pub mod cluster;
pub mod procs;
pub mod sio;
pub mod stack;
pub mod state;
pub mod ws;

pub use sio::SioClient;
pub use stack::{TestApp, servers};
pub use ws::WsClient;

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
