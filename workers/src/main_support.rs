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

/// Runs a role as the process's work, under the shutdown mechanism every
/// binary shares (`shutdown::Tasks`): `role` is given a token cancelled on
/// SIGINT or SIGTERM, and then the grace period to finish its batches. Its
/// error, should it end on its own, is the binary's.
pub async fn run_role<E, F>(role: impl FnOnce(CancellationToken) -> F) -> Result<(), E>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: Send + 'static,
{
    let tasks = shutdown::Tasks::new(shutdown::signal_token());
    let mut work = tasks.spawn(role(tasks.shutdown().child_token()));
    tokio::select! {
        r = &mut work => return joined(r),
        _ = tasks.shutdown().cancelled() => {}
    }
    if tasks.drain(shutdown::GRACE_PERIOD).await { joined(work.await) } else { Ok(()) }
}

/// The role's own result; its panic goes on as the binary's.
fn joined<E>(r: Result<Result<(), E>, tokio::task::JoinError>) -> Result<(), E> {
    match r {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()),
    }
}
