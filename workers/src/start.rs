//! What every role does before running: connect to NATS and MongoDB, apply
//! the topology (or, with `NATS_TOPOLOGY=verify`, check that it is there)
//! and the indexes. Errors name what failed.

use crate::handler::Handler;
use crate::runner::{self, RunnerConfig};
use natter_nats::{Partitioning, Role, Subjects};
use natter_shared::config::{CoreConfig, NatsTopology};
use natter_shared::store::Store;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("topology: {0}")]
    Topology(#[from] natter_nats::TopologyError),
    #[error("S3: {0}")]
    S3(String),
    #[error(transparent)]
    Runner(#[from] runner::RunnerError),
    #[error("metrics listener on METRICS_ADDR: {0}")]
    Metrics(std::io::Error),
}

/// Boots a role: connects as `H::ROLE`, applies (or verifies) the
/// topology and the indexes, builds the handler with `make`, and runs it
/// until `cancel`. A role's `serve` is this one call.
pub async fn serve<H: Handler>(
    core: &CoreConfig,
    cfg: RunnerConfig,
    cancel: CancellationToken,
    make: impl AsyncFnOnce(&Connected) -> Result<H, StartError>,
) -> Result<(), StartError> {
    let c = connect(core, H::ROLE.name(), &cfg).await?;
    let handler = Arc::new(make(&c).await?);
    runner::run(handler, c.client, c.subjects, c.partitioning, cfg, cancel).await?;
    Ok(())
}

/// Connections a role runs with.
pub struct Connected {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    /// The partition count, followed as it changes.
    pub partitioning: Partitioning,
    pub store: Store,
}

pub async fn connect(core: &CoreConfig, role: &str, cfg: &RunnerConfig) -> Result<Connected, StartError> {
    if let Some(addr) = core.metrics_addr {
        natter_shared::telemetry::serve_metrics(addr).await.map_err(StartError::Metrics)?;
    }
    let name = format!("natter-worker-{role}-{}", cfg.instance);
    let client = natter_nats::connect::connect(&core.nats_url, &name)
        .await
        .map_err(|e| StartError::Nats(format!("{}: {e}", natter_nats::connect::redacted(&core.nats_url))))?;
    let subjects = Subjects::new(&core.nats_namespace);
    let js = async_nats::jetstream::new(client.clone());
    match core.nats_topology {
        NatsTopology::Apply => natter_nats::apply(&js, &subjects, core.into()).await?,
        NatsTopology::Verify => {
            natter_nats::verify(&js, &subjects).await?;
            // The role's own consumers too (consumer info, which its user
            // may ask for): one missing would otherwise only show as a
            // partition retrying forever.
            if let Some(r) = Role::ALL.into_iter().find(|r| r.name() == role) {
                natter_nats::verify_consumers(&js, &subjects, r).await?;
            }
        }
    }
    let partitioning = Partitioning::follow(&js, &subjects).await.map_err(|e| StartError::Nats(e.to_string()))?;
    let store = Store::connect(&core.mongodb_uri, &core.mongodb_db).await?;
    store.ensure_indexes().await?;
    Ok(Connected { client, js, subjects, partitioning, store })
}
