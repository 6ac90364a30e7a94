//! One shutdown mechanism for every binary: SIGINT or SIGTERM cancels a root
//! `CancellationToken`, and everything the process spawns is a tracked task
//! of [`Tasks`], which drains it in two rings within the grace period: first
//! the work (connections, requests, partitions), then the services the work
//! feeds (flushers, heartbeats, watchers, fan-outs), so that what the work
//! hands them while it winds down (the last delivery receipts, presence's
//! going-away deletions, the last writes) is finished before the process
//! exits.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a binary waits for in-flight work after a shutdown signal.
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Returns a token that is cancelled on the first SIGINT or SIGTERM.
pub fn signal_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The tasks of one process (or, in tests, one server), in two rings.
#[derive(Clone, Debug)]
pub struct Tasks {
    shutdown: CancellationToken,
    work: TaskTracker,
    services_stop: CancellationToken,
    services: TaskTracker,
}

impl Tasks {
    /// Tasks that begin to wind down when `shutdown` is cancelled.
    pub fn new(shutdown: CancellationToken) -> Tasks {
        Tasks {
            shutdown,
            work: TaskTracker::new(),
            services_stop: CancellationToken::new(),
            services: TaskTracker::new(),
        }
    }

    /// Cancelled when the process is asked to stop: the work winds down.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Spawns work: it ends on its own once `shutdown` fires (it watches a
    /// child token of it, or ends with what it serves).
    pub fn spawn<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.work.spawn(work)
    }

    /// Spawns a service, given the token that stops it: cancelled only
    /// once the work has drained, so it still serves the work's last calls.
    pub fn spawn_service<F>(&self, service: impl FnOnce(CancellationToken) -> F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.services.spawn(service(self.services_stop.clone()))
    }

    /// A token cancelled with the services, for a service's own parts.
    pub fn services_stop(&self) -> CancellationToken {
        self.services_stop.clone()
    }

    /// Waits for the work, then stops the services and waits for them, all
    /// within `grace`. Returns false when the grace period ran out first.
    pub async fn drain(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        self.work.close();
        let worked = tokio::time::timeout_at(deadline, self.work.wait()).await.is_ok();
        self.services_stop.cancel();
        self.services.close();
        let served = tokio::time::timeout_at(deadline, self.services.wait()).await.is_ok();
        if !(worked && served) {
            tracing::warn!(
                work = self.work.len(),
                services = self.services.len(),
                "grace period over; exiting with tasks still running"
            );
        }
        worked && served
    }
}
