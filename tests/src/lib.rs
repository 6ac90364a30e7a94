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

/// The fixed window of `secs` seconds of Unix time that holds now (per-user
/// limits count in such windows).
pub fn window(secs: u64) -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() / secs
}

/// Waits, if less than `need` is left of the current window of `secs`
/// seconds, until the next one starts: what a test counts against a
/// per-user limit then falls in one window.
pub async fn room_in_window(secs: u64, need: std::time::Duration) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
    let into = std::time::Duration::from_millis((now.as_millis() % (u128::from(secs) * 1000)) as u64);
    let left = std::time::Duration::from_secs(secs).saturating_sub(into);
    if left < need {
        tokio::time::sleep(left + std::time::Duration::from_millis(20)).await;
    }
}
