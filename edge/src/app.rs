//! Building and running an edge: `Edge::build` connects to NATS and MongoDB,
//! applies (or, with `NATS_TOPOLOGY=verify`, checks) the topology and
//! applies the indexes; `Edge::run` serves until the token is
//! cancelled, then closes sockets with "going away" and drains them within
//! the grace period: everything the edge spawns is a task of its
//! `shutdown::Tasks`, connections first, then the services they fed (the
//! delivery flusher, presence, the hub's fan-outs), so the last receipts
//! and presence's going-away deletions are stored before it exits. Tests
//! build edges on port 0.

use crate::core::Core;
use crate::core::membership::Membership;
use crate::realtime::EdgeState;
use crate::realtime::delivery::Deliveries;
use crate::realtime::hub::Hub;
use crate::realtime::presence::Presence;
use crate::{health, rest, sio, ws};
use axum::Router;
use axum::routing::get;
use natter_nats::{Partitioning, Subjects};
use natter_shared::auth::Jwt;
use natter_shared::config::{EdgeConfig, NatsTopology};
use natter_shared::shutdown::{GRACE_PERIOD, Tasks};
use natter_shared::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot connect to NATS at {url}: {reason}")]
    Nats { url: String, reason: String },
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("NATS topology: {0}")]
    Topology(#[from] natter_nats::TopologyError),
    #[error("S3: {0}")]
    S3(String),
    #[error("presence: {0}")]
    Presence(String),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

pub struct Edge {
    listener: TcpListener,
    state: Arc<EdgeState>,
}

impl Edge {
    pub async fn build(
        config: EdgeConfig,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Edge, StartError> {
        // Recorded from the start, served at `/metrics`.
        natter_shared::telemetry::metrics();
        // Printed without its credentials.
        let url = natter_nats::connect::redacted(&config.core.nats_url);
        let nats = tokio::time::timeout(
            Duration::from_secs(10),
            natter_nats::connect::connect(&config.core.nats_url, "natter-edge"),
        )
        .await
        .map_err(|_| StartError::Nats { url: url.clone(), reason: "timed out".into() })?
        .map_err(|e| StartError::Nats { url: url.clone(), reason: e.to_string() })?;
        let js = async_nats::jetstream::new(nats.clone());
        let subjects = Subjects::new(&config.core.nats_namespace);
        match config.core.nats_topology {
            NatsTopology::Apply => natter_nats::apply(&js, &subjects, (&config.core).into()).await?,
            NatsTopology::Verify => natter_nats::verify(&js, &subjects).await?,
        }
        let partitioning = Partitioning::follow(&js, &subjects)
            .await
            .map_err(|e| StartError::Nats { url: url.clone(), reason: e.to_string() })?;
        let store = Store::connect(&config.core.mongodb_uri, &config.core.mongodb_db).await?;
        store.ensure_indexes().await?;
        let tasks = Tasks::new(shutdown);
        let recent = Arc::new(crate::core::recent::Recent::default());
        let membership = Arc::new(Membership::default());
        let (hub, contacts_changed) =
            Hub::new(nats.clone(), subjects.clone(), recent.clone(), membership.clone(), tasks.clone());
        let max_group = config.presence_max_group;
        let presence = Presence::start(&js, &subjects, store.clone(), contacts_changed, max_group, &tasks)
            .await
            .map_err(StartError::Presence)?;
        let staging = js
            .get_object_store(subjects.staging_bucket())
            .await
            .map_err(|e| StartError::Nats { url: url.clone(), reason: e.to_string() })?;
        let s3 = match &config.s3 {
            Some(c) => {
                let client = natter_s3::client(c);
                natter_s3::ensure_bucket(&client, &c.bucket).await.map_err(StartError::S3)?;
                Some((client, c.bucket.clone()))
            }
            None => None,
        };
        let uploads = crate::core::uploads::UploadBudgets::new(config.uploads_per_min, config.upload_bytes_per_min);
        let quota_kv = js
            .get_key_value(subjects.quota_bucket())
            .await
            .map_err(|e| StartError::Nats { url: url.clone(), reason: e.to_string() })?;
        let quota = crate::core::quota::Quota::new(
            quota_kv,
            config.user_sends_per_sec,
            config.uploads_per_min,
            config.user_groups_per_day,
        );
        let deliveries = Deliveries::spawn(js.clone(), subjects.clone(), partitioning.clone(), &tasks);
        let state = Arc::new(EdgeState {
            jwt: Jwt::new(&config.jwt),
            hub,
            presence,
            deliveries,
            lifecycle: tasks,
            typing: Default::default(),
            core: Core {
                staging,
                s3,
                membership,
                recent,
                config,
                store,
                nats,
                js,
                subjects,
                partitioning,
                uploads,
                quota,
            },
        });
        Ok(Edge { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn state(&self) -> Arc<EdgeState> {
        self.state.clone()
    }

    pub fn router(state: Arc<EdgeState>) -> Router {
        let cors = cors(&state.config.frontend_urls);
        Router::new()
            .route("/ws", get(ws::handle))
            .merge(sio::router())
            .route("/healthz", get(health::healthz))
            .route("/readyz", get(health::readyz))
            .route("/metrics", get(health::metrics))
            .merge(rest::router(state.clone()))
            .merge(crate::web::router(&state))
            .layer(cors)
            .with_state(state)
    }

    /// Serves until the shutdown token fires, then drains connections.
    pub async fn run(self) -> std::io::Result<()> {
        let st = self.state;
        let shutdown = st.lifecycle.shutdown().clone();
        tracing::info!(addr = %self.listener.local_addr()?, "edge listening");
        // Connections carry the client's address (per-address limits).
        let app = Self::router(st.clone()).into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(self.listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
        // Connections first, then what they fed (receipts, presence).
        st.lifecycle.drain(GRACE_PERIOD).await;
        let _ = st.nats.flush().await;
        tracing::info!("edge stopped");
        Ok(())
    }
}

/// Browsers on the configured front-end origins may call the REST API and
/// long-poll Socket.IO with credentials, as they could the NestJS module.
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderValue, Method, header};
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    tower_http::cors::CorsLayer::new()
        .allow_origin(origins)
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600))
}
