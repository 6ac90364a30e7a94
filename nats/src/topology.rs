//! Streams, consumers and buckets, applied idempotently by
//! `natterctl topology apply` and on start of every edge and worker
//! (`NATS_TOPOLOGY=apply`), or only verified there (`NATS_TOPOLOGY=verify`:
//! their NATS users may not declare it).

use crate::partitioning::{self, PartitionState};
use crate::subjects::Subjects;
use async_nats::jetstream::{self, consumer, kv, stream};
use std::time::Duration;

/// What a worker role consumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// Client commands, one consumer per partition (room order). The role
    /// receives the actions `natter_shared::v1::command::owner_of` gives
    /// it, or, the default owner, the whole partition.
    Commands,
    /// The outcome facts of every role, in one chain (one partition,
    /// applied by one worker at a time).
    Outcomes,
}

/// A worker role: its name and what it consumes. The topology declares a
/// durable consumer per partition for every role in `Role::ALL`; a role's
/// handler names its `Role`, and `start::serve` boots any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Role {
    pub name: &'static str,
    pub input: Input,
}

impl Role {
    pub const MESSAGES: Role = Role { name: "messages", input: Input::Commands };
    pub const ATTACHMENTS: Role = Role { name: "attachments", input: Input::Commands };
    pub const AUDIT: Role = Role { name: "audit", input: Input::Outcomes };

    /// Every role: a new one is one more entry here.
    pub const ALL: [Role; 3] = [Role::MESSAGES, Role::ATTACHMENTS, Role::AUDIT];

    pub fn name(self) -> &'static str {
        self.name
    }

    /// How many partitions the role's input has (commands: the count
    /// `s` publishes and consumes by).
    pub fn partitions(self, s: &Subjects) -> u32 {
        match self.input {
            Input::Commands => s.partitions(),
            Input::Outcomes => 1,
        }
    }

    /// The stream the role consumes.
    pub fn stream(self, s: &Subjects) -> String {
        match self.input {
            Input::Commands => s.cmd_stream(),
            Input::Outcomes => s.outcomes_stream(),
        }
    }

    /// The actions this role owns, when it owns only some (`None`: the
    /// default owner, which receives the whole partition).
    pub fn actions(self) -> Option<&'static [&'static str]> {
        match self.input {
            Input::Commands => natter_shared::v1::command::actions_of(self.name),
            Input::Outcomes => None,
        }
    }

    /// What the role's consumer on partition `p` receives.
    pub fn filters(self, s: &Subjects, p: u32) -> Vec<String> {
        match (self.input, self.actions()) {
            (Input::Commands, Some(actions)) => actions.iter().map(|a| s.partition_action(p, a)).collect(),
            (Input::Commands, None) => vec![s.partition(p)],
            (Input::Outcomes, _) => vec![s.outcomes_all()],
        }
    }
}

/// Headers of a dead letter: why it was dead-lettered, and the sequence and
/// subject it had in its stream.
pub const DLQ_REASON: &str = "Natter-Reason";
pub const DLQ_SEQ: &str = "Natter-Seq";
pub const DLQ_SUBJECT: &str = "Natter-Subject";

/// How long staged uploads wait for the attachments worker.
pub const STAGING_TTL: Duration = Duration::from_secs(3600);

/// Redelivery delays after a worker died holding a message (the worker
/// retries transient failures itself, in place, to keep room order, and
/// keeps what it holds from redelivery with progress acks). The first is
/// about the lease TTL, so that a dead worker's batch comes back by the
/// time its partitions have moved.
pub const BACKOFF: [Duration; 4] =
    [Duration::from_secs(3), Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(60)];
/// Deliveries before a command is dead-lettered.
pub const MAX_DELIVER: i64 = 6;
/// Largest batch a worker fetches.
pub const MAX_BATCH: usize = 256;
/// Deliveries of a partition's consumer in hand at once. One worker holds
/// a partition; it applies batches while earlier ones are being written
/// and keeps what it holds to a quarter of this (the server stops
/// delivering at the limit, and pull requests made then can lose their
/// deliveries until the ack wait brings them back).
pub const MAX_ACK_PENDING: usize = 4096;
/// How long a partition lease lives without renewal: how long a dead
/// worker's partitions wait before another takes them.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How long the marker an expired lease leaves is kept (watchers learn of
/// the expiry from it).
pub const LEASE_MARKER_TTL: Duration = Duration::from_secs(60);
/// How long an edge's presence key lives without a heartbeat.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);
/// How long the marker left by an expired presence key is kept.
pub const PRESENCE_MARKER_TTL: Duration = Duration::from_secs(60);
/// How long the server remembers `Nats-Msg-Id`s: the client retry horizon.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long events are kept for reconnect catch-up.
pub const EVENTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long dead letters are kept.
pub const DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("stream {name}: {source}")]
    Stream { name: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("consumer {name}: {source}")]
    Consumer { name: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("bucket {name}: {source}")]
    Bucket { name: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// JetStream cannot reserve the staging bucket's bound: not retried.
    #[error(
        "bucket {name} needs {bytes} bytes of JetStream file storage, more than nats-server has left: \
         lower STAGING_MAX_BYTES, or raise its max_file_store (or free disk; by default it takes 75% of what is free)"
    )]
    StagingTooLarge { name: String, bytes: u64 },
    /// Found missing by `verify`: not retried.
    #[error("{what} {name} does not exist: run `natterctl topology apply` (as ctl) first")]
    Missing { what: &'static str, name: String },
}

pub fn cmd_stream_config(s: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: s.cmd_stream(),
        description: Some("natter commands: every state change, kept for replay".into()),
        subjects: vec![s.cmd_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::ZERO,
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    }
}

pub fn outcomes_stream_config(s: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: s.outcomes_stream(),
        description: Some("natter outcome facts: what became of each command, for the audit trail".into()),
        subjects: vec![s.outcomes_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: DUPLICATE_WINDOW,
        max_age: Duration::ZERO,
        num_replicas: replicas,
        ..Default::default()
    }
}

pub fn evt_stream_config(s: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: s.evt_stream(),
        description: Some("natter events, kept for reconnect catch-up".into()),
        subjects: vec![s.evt_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: EVENTS_MAX_AGE,
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    }
}

pub fn dlq_stream_config(s: &Subjects, replicas: usize) -> stream::Config {
    stream::Config {
        name: s.dlq_stream(),
        description: Some("natter dead-lettered commands with their reason".into()),
        subjects: vec![s.dlq_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: DLQ_MAX_AGE,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The consumer of `role` on partition `p`, delivering the stream from its
/// start (or from `start`, for a partition added to a running deployment).
pub fn consumer_config(s: &Subjects, role: Role, p: u32) -> consumer::pull::Config {
    consumer_config_from(s, role, p, None)
}

pub fn consumer_config_from(s: &Subjects, role: Role, p: u32, start: Option<u64>) -> consumer::pull::Config {
    let filters = role.filters(s, p);
    consumer::pull::Config {
        durable_name: Some(s.consumer(role.name(), p)),
        description: Some(format!("{} worker, partition {p}", role.name())),
        // One filter as `filter_subject`, as consumers declared before
        // roles could own several actions have it.
        filter_subject: match filters.as_slice() {
            [one] => one.clone(),
            _ => String::new(),
        },
        filter_subjects: if filters.len() > 1 { filters } else { vec![] },
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: BACKOFF[0],
        max_deliver: MAX_DELIVER,
        backoff: BACKOFF.to_vec(),
        max_ack_pending: MAX_ACK_PENDING as i64,
        deliver_policy: match start {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => consumer::DeliverPolicy::All,
        },
        ..Default::default()
    }
}

pub fn leases_config(s: &Subjects, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: s.leases_bucket(),
        description: "natter worker partition leases".into(),
        history: 1,
        max_age: LEASE_TTL,
        storage: stream::StorageType::Memory,
        num_replicas: replicas,
        limit_markers: Some(LEASE_MARKER_TTL),
        ..Default::default()
    }
}

/// The bucket holding the partition count (`partitioning`).
pub fn topology_config(s: &Subjects, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: s.topology_bucket(),
        description: "natter topology: the partition count and its history".into(),
        history: 16,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// What `apply` declares beyond the names: how many copies of each stream
/// and bucket, how much the staging bucket may hold, and how many
/// partitions a new deployment starts with.
#[derive(Clone, Copy, Debug)]
pub struct Sizing {
    /// Replicas of every stream and bucket (`NATS_REPLICAS`).
    pub replicas: usize,
    /// Most bytes staged uploads may hold at once (`STAGING_MAX_BYTES`).
    /// Past it an upload is refused (503, `unavailable`) instead of
    /// filling the JetStream storage that the command stream needs; each
    /// user's share is bounded by the edge's upload budget, and staged
    /// files expire after `STAGING_TTL`. JetStream reserves this much of
    /// its file store when the bucket is declared, so it must fit there.
    pub staging_max_bytes: u64,
    /// Partitions of a new deployment (`PARTITIONS`); a deployment that
    /// has a count keeps it (`natterctl partitions set` changes it).
    pub partitions: u32,
}

impl From<&natter_shared::config::CoreConfig> for Sizing {
    fn from(c: &natter_shared::config::CoreConfig) -> Self {
        Sizing { replicas: c.nats_replicas, staging_max_bytes: c.staging_max_bytes, partitions: c.partitions }
    }
}

impl Sizing {
    /// One replica, `natter_shared::config::STAGING_MAX_BYTES_DEFAULT`
    /// and `DEFAULT_PARTITIONS`.
    pub fn single() -> Self {
        Sizing {
            replicas: 1,
            staging_max_bytes: natter_shared::config::STAGING_MAX_BYTES_DEFAULT,
            partitions: crate::subjects::DEFAULT_PARTITIONS,
        }
    }
}

pub fn staging_config(s: &Subjects, sizing: Sizing) -> async_nats::jetstream::object_store::Config {
    async_nats::jetstream::object_store::Config {
        bucket: s.staging_bucket(),
        description: Some("natter uploads staged for the attachments worker".into()),
        max_age: STAGING_TTL,
        max_bytes: i64::try_from(sizing.staging_max_bytes).unwrap_or(i64::MAX),
        storage: stream::StorageType::File,
        num_replicas: sizing.replicas,
        ..Default::default()
    }
}

pub fn presence_config(s: &Subjects, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: s.presence_bucket(),
        description: "natter presence: edge.<edge> while the edge lives, user.<user>.<edge> (never expiring) while the user has sockets on it".into(),
        history: 1,
        max_age: PRESENCE_TTL,
        storage: stream::StorageType::Memory,
        num_replicas: replicas,
        limit_markers: Some(PRESENCE_MARKER_TTL),
        ..Default::default()
    }
}

pub fn audit_head_config(s: &Subjects, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: s.audit_head_bucket(),
        description: "natter audit chain head (chainSeq and hash of the last record)".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

pub fn last_seen_config(s: &Subjects, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: s.last_seen_bucket(),
        description: "natter presence: when each user was last seen".into(),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Per-user limits' counts (`edge::core::quota`): in memory, each key kept
/// a day and an hour after its last change (the longest window is a day).
pub fn quota_config(s: &Subjects, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: s.quota_bucket(),
        description: "natter per-user limits: <limit>.<user> -> the window and its count".into(),
        history: 1,
        max_age: std::time::Duration::from_secs(25 * 3600),
        storage: stream::StorageType::Memory,
        num_replicas: replicas,
        ..Default::default()
    }
}

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// How long `apply` keeps trying: a cluster that has just formed (or lost
/// its meta leader) times out or refuses JetStream requests for a while.
const APPLY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Creates or updates every stream, consumer and bucket. Safe to run any
/// number of times, from any number of processes at once. A failure is
/// retried for `APPLY_PATIENCE` before it is returned.
pub async fn apply(js: &jetstream::Context, s: &Subjects, sizing: Sizing) -> Result<(), TopologyError> {
    patiently("topology not applied yet; retrying", || apply_once(js, s, sizing)).await
}

/// Whether `e`, or an error under it, is JetStream refusing to reserve
/// storage (10047).
fn storage_exceeded(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let code = match err.downcast_ref::<jetstream::context::CreateStreamError>().map(|c| c.kind()) {
            Some(jetstream::context::CreateStreamErrorKind::JetStream(j)) => Some(j.error_code()),
            _ => err.downcast_ref::<jetstream::Error>().map(|j| j.error_code()),
        };
        if code == Some(jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// What `apply` declares, named for operators: streams, consumers per
/// role, the staging object store and the key-value buckets.
pub fn summary(s: &Subjects, sizing: Sizing) -> String {
    let declared = declared_streams(s);
    let named = |kind: &str| {
        declared
            .iter()
            .filter(|(k, _, _)| *k == kind)
            .map(|(_, name, stream)| {
                if stream.starts_with("OBJ_") {
                    format!("{name} (object store, at most {} bytes)", sizing.staging_max_bytes)
                } else {
                    name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let consumers = Role::ALL
        .iter()
        .map(|r| match r.partitions(s) {
            1 => format!("{} on {}", s.consumer(r.name(), 0), r.stream(s)),
            n => format!("{}..{} on {}", s.consumer(r.name(), 0), s.consumer(r.name(), n - 1), r.stream(s)),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "streams {}; consumers {consumers}; buckets {}; {} replica(s)",
        named("stream"),
        named("bucket"),
        sizing.replicas
    )
}

/// Runs `once` until it succeeds, finds something missing, or
/// `APPLY_PATIENCE` is over.
async fn patiently<F, Fut>(what: &str, mut once: F) -> Result<(), TopologyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), TopologyError>>,
{
    let deadline = tokio::time::Instant::now() + APPLY_PATIENCE;
    let mut pause = std::time::Duration::from_millis(250);
    loop {
        match once().await {
            Ok(()) => return Ok(()),
            Err(e @ (TopologyError::Missing { .. } | TopologyError::StagingTooLarge { .. })) => return Err(e),
            Err(e) if tokio::time::Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, "{what}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The names of the streams `apply` declares, its own and those holding
/// its buckets (`KV_<bucket>`, `OBJ_<bucket>`), each with what to call it
/// in an error: `("stream", CHAT_CMDS, CHAT_CMDS)`,
/// `("bucket", chat_leases, KV_chat_leases)`.
fn declared_streams(s: &Subjects) -> Vec<(&'static str, String, String)> {
    // Names do not depend on the replicas.
    let mut all: Vec<(&'static str, String, String)> =
        [cmd_stream_config(s, 1), evt_stream_config(s, 1), dlq_stream_config(s, 1), outcomes_stream_config(s, 1)]
            .into_iter()
            .map(|c| ("stream", c.name.clone(), c.name))
            .collect();
    let staging = staging_config(s, Sizing::single()).bucket;
    all.push(("bucket", staging.clone(), format!("OBJ_{staging}")));
    for cfg in [
        leases_config(s, 1),
        presence_config(s, 1),
        last_seen_config(s, 1),
        audit_head_config(s, 1),
        topology_config(s, 1),
        quota_config(s, 1),
    ] {
        all.push(("bucket", cfg.bucket.clone(), format!("KV_{}", cfg.bucket)));
    }
    all
}

/// Checks that every stream and bucket `apply` declares exists, with
/// stream info requests only (`$JS.API.STREAM.INFO.<name>`, which the
/// edge and worker users of `infra/nats/permissions.conf` may make): what
/// an edge or worker does on start instead of `apply` when its NATS user
/// may not declare the topology. A missing one is
/// `TopologyError::Missing`, returned at once; other failures (a cluster
/// without a meta leader yet) are retried for `APPLY_PATIENCE`. It does
/// not compare configurations: `natterctl topology apply` owns them.
pub async fn verify(js: &jetstream::Context, s: &Subjects) -> Result<(), TopologyError> {
    patiently("topology not verified yet; retrying", || verify_once(js, s)).await
}

async fn verify_once(js: &jetstream::Context, s: &Subjects) -> Result<(), TopologyError> {
    for (what, name, stream) in declared_streams(s) {
        match js.get_stream(&stream).await {
            Ok(_) => {}
            Err(e) => {
                if let jetstream::context::GetStreamErrorKind::JetStream(j) = e.kind()
                    && j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
                {
                    return Err(TopologyError::Missing { what, name });
                }
                return Err(match what {
                    "bucket" => TopologyError::Bucket { name, source: boxed(e) },
                    _ => TopologyError::Stream { name, source: boxed(e) },
                });
            }
        }
    }
    Ok(())
}

/// Creates or updates `role`'s durable consumers, one per partition of the
/// count `s` has (its stream must exist). `apply` does it for every role of
/// `Role::ALL`. A consumer that exists keeps where it starts (a partition
/// added by `natterctl partitions set` starts where the stream was then).
pub async fn apply_consumers(js: &jetstream::Context, s: &Subjects, role: Role) -> Result<(), TopologyError> {
    apply_partition_consumers(js, s, role, 0..role.partitions(s), None).await
}

/// Creates or updates `role`'s consumers on partitions `ps`; those created
/// start at `start` (`None`: the stream's start).
pub async fn apply_partition_consumers(
    js: &jetstream::Context,
    s: &Subjects,
    role: Role,
    ps: std::ops::Range<u32>,
    start: Option<u64>,
) -> Result<(), TopologyError> {
    let stream = role.stream(s);
    for p in ps {
        let mut cfg = consumer_config_from(s, role, p, start);
        let name = s.consumer(role.name(), p);
        let err = |e| TopologyError::Consumer { name: name.clone(), source: e };
        match js.get_consumer_from_stream::<consumer::pull::Config, _, _>(&name, &stream).await {
            Ok(mut c) => {
                let info = c.info().await.map_err(|e| err(boxed(e)))?;
                cfg.deliver_policy = info.config.deliver_policy;
                js.update_consumer_on_stream(cfg, &stream).await.map_err(|e| err(boxed(e)))?;
            }
            Err(_) => {
                if let Err(e) = js.create_consumer_on_stream(cfg, &stream).await {
                    // Declared by another process meanwhile, or not at all.
                    js.get_consumer_from_stream::<consumer::pull::Config, _, _>(&name, &stream)
                        .await
                        .map_err(|_| err(boxed(e)))?;
                }
            }
        }
    }
    Ok(())
}

/// Checks that `role`'s durable consumers (one per partition) exist, with
/// consumer info requests (`$JS.API.CONSUMER.INFO.<stream>.<consumer>`,
/// which the worker user may make on the streams it consumes). As
/// `verify`: a missing one is `TopologyError::Missing`, at once.
pub async fn verify_consumers(js: &jetstream::Context, s: &Subjects, role: Role) -> Result<(), TopologyError> {
    patiently("consumers not verified yet; retrying", || verify_consumers_once(js, s, role)).await
}

async fn verify_consumers_once(js: &jetstream::Context, s: &Subjects, role: Role) -> Result<(), TopologyError> {
    let stream = role.stream(s);
    for p in 0..role.partitions(s) {
        let name = s.consumer(role.name(), p);
        let Err(e) = js.get_consumer_from_stream::<consumer::pull::Config, _, _>(&name, &stream).await else {
            continue;
        };
        if let jetstream::stream::ConsumerErrorKind::JetStream(j) = e.kind() {
            if j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND {
                return Err(TopologyError::Missing { what: "consumer", name });
            }
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND {
                return Err(TopologyError::Missing { what: "stream", name: stream });
            }
        }
        return Err(TopologyError::Consumer { name, source: boxed(e) });
    }
    Ok(())
}

async fn apply_once(js: &jetstream::Context, s: &Subjects, sizing: Sizing) -> Result<(), TopologyError> {
    let replicas = sizing.replicas;
    for cfg in [
        cmd_stream_config(s, replicas),
        evt_stream_config(s, replicas),
        dlq_stream_config(s, replicas),
        outcomes_stream_config(s, replicas),
    ] {
        let name = cfg.name.clone();
        js.create_or_update_stream(cfg).await.map_err(|e| TopologyError::Stream { name, source: boxed(e) })?;
    }
    let topo = topology_config(s, replicas);
    let name = topo.bucket.clone();
    let bucket = js
        .create_or_update_key_value(topo)
        .await
        .map_err(|e| TopologyError::Bucket { name: name.clone(), source: boxed(e) })?;
    let state: PartitionState = partitioning::init(&bucket, sizing.partitions)
        .await
        .map_err(|e| TopologyError::Bucket { name, source: boxed(e) })?;
    if state.count != sizing.partitions && sizing.partitions != crate::subjects::DEFAULT_PARTITIONS {
        tracing::warn!(
            deployment = state.count,
            setting = sizing.partitions,
            "PARTITIONS differs from the deployment's partition count, which stays: `natterctl partitions set` changes it"
        );
    }
    s.set_partitions(state.count);
    for role in Role::ALL {
        apply_consumers(js, s, role).await?;
    }
    let staging = staging_config(s, sizing);
    let max_bytes = staging.max_bytes;
    let name = staging.bucket.clone();
    if js.get_object_store(&name).await.is_err() {
        if let Err(e) = js.create_object_store(staging).await
            && js.get_object_store(&name).await.is_err()
        {
            if storage_exceeded(&e) {
                return Err(TopologyError::StagingTooLarge { name, bytes: sizing.staging_max_bytes });
            }
            return Err(TopologyError::Bucket { name, source: boxed(e) });
        }
    } else {
        // A bucket made before it was bounded, or with another bound, gets this one.
        let stream_name = format!("OBJ_{name}");
        let bucket_err =
            |e: Box<dyn std::error::Error + Send + Sync>| TopologyError::Bucket { name: name.clone(), source: e };
        let mut st = js.get_stream(&stream_name).await.map_err(|e| bucket_err(boxed(e)))?;
        let cfg = st.info().await.map_err(|e| bucket_err(boxed(e)))?.config.clone();
        if cfg.max_bytes != max_bytes {
            js.update_stream(stream::Config { max_bytes, ..cfg }).await.map_err(|e| {
                if storage_exceeded(&e) {
                    TopologyError::StagingTooLarge { name: name.clone(), bytes: sizing.staging_max_bytes }
                } else {
                    bucket_err(boxed(e))
                }
            })?;
        }
    }
    for cfg in [
        leases_config(s, replicas),
        presence_config(s, replicas),
        last_seen_config(s, replicas),
        audit_head_config(s, replicas),
        quota_config(s, replicas),
    ] {
        let name = cfg.bucket.clone();
        js.create_or_update_key_value(cfg).await.map_err(|e| TopologyError::Bucket { name, source: boxed(e) })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_everything_declared() {
        let s = Subjects::new("chat");
        let text = summary(&s, Sizing::single());
        for (_, name, _) in declared_streams(&s) {
            assert!(text.contains(&name), "{name} missing from {text}");
        }
        for role in Role::ALL {
            assert!(text.contains(&s.consumer(role.name(), 0)), "{text}");
        }
        assert!(text.contains("chat_staging (object store, at most 1073741824 bytes)"), "{text}");
    }
}
