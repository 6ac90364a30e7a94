//! `natter-worker-attachments`: the attachments role. Needs the S3 settings.

use anyhow::Context;
use natter_shared::config::{CoreConfig, Env, S3Config};
use natter_shared::shutdown;
use natter_workers::RunnerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_shared::telemetry::init("info");
    let (core, s3) = match CoreConfig::load(&Env).and_then(|c| {
        S3Config::load(&Env)?.map(|s| (c, s)).ok_or(natter_shared::config::ConfigError::Missing("S3_ENDPOINT"))
    }) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!("configuration: {e}");
            std::process::exit(2);
        }
    };
    let cancel = shutdown::signal_token();
    let work = natter_workers::attachments::serve(&core, &s3, RunnerConfig::default(), cancel.clone());
    tokio::select! {
        r = work => r.context("attachments worker"),
        _ = async { cancel.cancelled().await; tokio::time::sleep(shutdown::GRACE_PERIOD).await } => {
            tracing::warn!("grace period over");
            Ok(())
        }
    }
}
