//! `natter-worker-messages`: the messages role. Start more copies to scale;
//! they share the partitions between them.

use anyhow::Context;
use natter_shared::config::{CoreConfig, Env};
use natter_workers::RunnerConfig;
use natter_workers::main_support::{config_or_exit, until_drained};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_shared::telemetry::init("info");
    let core = config_or_exit(CoreConfig::load(&Env));
    let cancel = natter_shared::shutdown::signal_token();
    let work = natter_workers::messages::serve(&core, RunnerConfig::default(), cancel.clone());
    until_drained(work, &cancel).await.context("messages worker")
}
