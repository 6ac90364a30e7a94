//! One shutdown mechanism for every binary: SIGINT or SIGTERM cancels a root
//! `CancellationToken`; servers and consumers hold child tokens and a
//! `TaskTracker`, and the binary waits for the tracker with a grace period.

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

/// Closes the tracker and waits for its tasks, at most `grace`. Returns false
/// when the grace period ran out with tasks still running.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    match tokio::time::timeout(grace, tracker.wait()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(remaining = tracker.len(), "grace period over; exiting with tasks still running");
            false
        }
    }
}
