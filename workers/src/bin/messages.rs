//! `natter-worker-messages`: the messages role. Start more copies to scale;
//! they share the partitions between them.

use anyhow::Context;
use natter_shared::config::{CoreConfig, Env};
use natter_workers::RunnerConfig;
use natter_workers::main_support::{config_or_exit, run_role};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_shared::telemetry::init("info");
    let core = config_or_exit(CoreConfig::load(&Env));
    run_role(|stop| async move { natter_workers::messages::serve(&core, RunnerConfig::default(), stop).await })
        .await
        .context("messages worker")
}
