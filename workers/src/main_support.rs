//! What every worker binary's `main` does around its role: a bad
//! configuration is reported by name with exit status 2 before anything
//! connects, and after a shutdown signal the role gets the grace period to
//! finish its batch.

use natter_shared::config::ConfigError;
use natter_shared::shutdown;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// The configuration, or exit 2 naming what is wrong.
pub fn config_or_exit<T>(loaded: Result<T, ConfigError>) -> T {
    match loaded {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("configuration: {e}");
            std::process::exit(2);
        }
    }
}

/// Runs `work` until it ends, or until the grace period after `cancel`.
pub async fn until_drained<E>(work: impl Future<Output = Result<(), E>>, cancel: &CancellationToken) -> Result<(), E> {
    tokio::select! {
        r = work => r,
        _ = async { cancel.cancelled().await; tokio::time::sleep(shutdown::GRACE_PERIOD).await } => {
            tracing::warn!("grace period over");
            Ok(())
        }
    }
}
