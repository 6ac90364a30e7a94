//! `natter-worker-messages`: the messages role. Start more copies to scale;
//! they share the partitions between them.

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
    let work = natter_workers::messages::serve(&core, RunnerConfig::default(), cancel.clone());
    let result = tokio::select! {
        r = work => r.context("messages worker"),
        _ = async { cancel.cancelled().await; tokio::time::sleep(shutdown::GRACE_PERIOD).await } => {
            tracing::warn!("grace period over");
            Ok(())
        }
    };
    result
}
