//! `natter-worker-audit`: the audit role. More copies stand by; one at a
//! time extends the chain.

use anyhow::Context;
use natter_shared::config::{CoreConfig, Env};
use natter_shared::shutdown;
use natter_workers::RunnerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_shared::telemetry::init("info");
    let core = match CoreConfig::load(&Env) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("configuration: {e}");
            std::process::exit(2);
        }
    };
    let cancel = shutdown::signal_token();
    let work = natter_workers::audit::serve(&core, RunnerConfig::default(), cancel.clone());
    tokio::select! {
        r = work => r.context("audit worker"),
        _ = async { cancel.cancelled().await; tokio::time::sleep(shutdown::GRACE_PERIOD).await } => {
            tracing::warn!("grace period over");
            Ok(())
        }
    }
}
