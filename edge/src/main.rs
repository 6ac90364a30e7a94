//! `natter-edge`: config, telemetry, bind, build, run until SIGINT/SIGTERM.

use anyhow::Context;
use natter_edge::Edge;
use natter_shared::config::{EdgeConfig, Env};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    natter_shared::telemetry::init("info");
    let config = match EdgeConfig::load(&Env) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("configuration: {e}");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let shutdown = natter_shared::shutdown::signal_token();
    let edge = Edge::build(config, listener, shutdown).await.context("starting the edge")?;
    edge.run().await.context("serving")?;
    Ok(())
}
