//! `natter-worker-attachments`: the attachments role. Needs the S3 settings.

use anyhow::Context;
use natter_shared::config::{ConfigError, CoreConfig, Env, S3Config};
use natter_workers::RunnerConfig;
use natter_workers::main_support::{config_or_exit, run_role};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_shared::telemetry::init("info");
    let (core, s3) = config_or_exit(
        CoreConfig::load(&Env)
            .and_then(|c| S3Config::load(&Env)?.map(|s| (c, s)).ok_or(ConfigError::Missing("S3_ENDPOINT"))),
    );
    let ttl = config_or_exit(natter_shared::config::unsent_upload_ttl(&Env));
    let after = natter_shared::config::collect_after(ttl);
    run_role(|stop| async move {
        natter_workers::attachments::serve_with(&core, &s3, after, RunnerConfig::default(), stop).await
    })
    .await
    .context("attachments worker")
}
