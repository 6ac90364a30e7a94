//! What every role does before running: connect to NATS and MongoDB, apply
//! the topology (or, with `NATS_TOPOLOGY=verify`, check that it is there)
//! and the indexes. Errors name what failed.

use crate::runner::{self, RunnerConfig};
use natter_nats::{Role, Subjects};
use natter_shared::config::{CoreConfig, NatsTopology};
use natter_shared::store::Store;

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
}

/// Connections a role runs with.
pub struct Connected {
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub store: Store,
}

pub async fn connect(core: &CoreConfig, role: &str, cfg: &RunnerConfig) -> Result<Connected, StartError> {
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
    let store = Store::connect(&core.mongodb_uri, &core.mongodb_db).await?;
    store.ensure_indexes().await?;
    Ok(Connected { client, js, subjects, store })
}
