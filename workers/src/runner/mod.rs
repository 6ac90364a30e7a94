//! The one runner every role uses: leases partitions (`lease`), runs one
//! loop per leased partition (`partition`: pulling with `fetch`, keeping
//! stream order), applies each batch through the role's `Handler` and
//! announces its events, writes behind (`flow`: one write in flight while
//! later batches are applied), then finishes each batch (`batch`: audit
//! facts stored with `publish`, poison dead-lettered, acks). Failures are
//! retried in place (with progress acks) so a room's commands are never
//! applied out of order; a crash leaves the batches unacked for
//! redelivery.

mod batch;
mod fetch;
mod flow;
mod partition;
mod publish;

pub use batch::backoff;
pub use natter_nats::topology::{DLQ_REASON, DLQ_SEQ, DLQ_SUBJECT};

use crate::handler::Handler;
use crate::lease::{Leases, RENEW_EVERY};
use async_nats::jetstream;
use natter_nats::{Partitioning, Subjects, topology};
use partition::Partition;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Most commands applied in one batch.
    pub batch: usize,
    /// How long one pull request waits for the first message.
    pub fetch_wait: Duration,
    /// This instance's name in the lease bucket.
    pub instance: String,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch: topology::MAX_BATCH,
            fetch_wait: Duration::from_secs(1),
            instance: format!("{}-{}", std::process::id(), mongodb::bson::oid::ObjectId::new().to_hex()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("lease bucket unavailable: {0}")]
    Bucket(#[source] async_nats::jetstream::context::KeyValueError),
}

/// How long a tick waits for a surplus partition's loop to stop.
const HANDOFF_WAIT: Duration = Duration::from_millis(1500);

struct PartitionTask {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Runs `handler` until `cancel` fires, then finishes the batches in hand and
/// gives the leases back. When the partition count changes (after
/// `natterctl partitions set` has drained the old partitions) it stops
/// every partition loop, gives its leases back and leases the new count's.
pub async fn run<H: Handler>(
    handler: Arc<H>,
    client: async_nats::Client,
    subjects: Subjects,
    mut partitioning: Partitioning,
    cfg: RunnerConfig,
    cancel: CancellationToken,
) -> Result<(), RunnerError> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(subjects.leases_bucket()).await.map_err(RunnerError::Bucket)?;
    let role = H::ROLE.name();
    let follows_count = H::ROLE.input == topology::Input::Commands;
    let mut count = H::ROLE.partitions(&subjects);
    let mut leases = Leases::new(kv.clone(), subjects.clone(), role, cfg.instance.clone(), count);
    let mut tasks: HashMap<u32, PartitionTask> = HashMap::new();
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(role, instance = %cfg.instance, partitions = count, "worker running");
    loop {
        let renew = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => true,
            _ = leases.changed() => false,
            n = partitioning.count_changed(count), if follows_count => {
                stop_all(&mut tasks).await;
                leases.release_all().await;
                info!(role, from = count, to = n, "partition count changed; leasing anew");
                count = n;
                leases = Leases::new(kv.clone(), subjects.clone(), role, cfg.instance.clone(), count);
                true
            }
        };
        let changes = leases.tick(renew).await;
        for p in changes.lost {
            if let Some(t) = tasks.remove(&p) {
                t.cancel.cancel();
            }
        }
        // Stop the surplus loops (each writes and acks what it has in hand),
        // all at once, then hand their partitions back so another worker can
        // take them. A loop still busy (MongoDB down) keeps its lease and is
        // asked again.
        let mut stopping: Vec<(u32, PartitionTask)> =
            changes.surplus.iter().filter_map(|p| tasks.remove(p).map(|t| (*p, t))).collect();
        for (_, t) in &stopping {
            t.cancel.cancel();
        }
        let stopped = futures::future::join_all(
            stopping.iter_mut().map(|(_, t)| tokio::time::timeout(HANDOFF_WAIT, &mut t.handle)),
        )
        .await;
        for ((p, t), stopped) in stopping.into_iter().zip(stopped) {
            if stopped.is_ok() {
                leases.release(p).await;
                info!(role, partition = p, "partition handed back");
            } else {
                tasks.insert(p, t);
            }
        }
        for p in changes.surplus.iter().filter(|p| !tasks.contains_key(p)) {
            leases.release(*p).await;
        }
        // Start gained partitions, and restart any loop that ended on its own
        // (a panic in a handler must not leave a partition unserved).
        let owned: Vec<u32> = leases.owned().collect();
        for p in owned {
            let restart = match tasks.get(&p) {
                None => true,
                Some(t) => t.handle.is_finished() && !t.cancel.is_cancelled(),
            };
            if restart {
                let token = cancel.child_token();
                let part = Partition {
                    js: js.clone(),
                    client: client.clone(),
                    subjects: subjects.clone(),
                    p,
                    cfg: cfg.clone(),
                };
                let fut =
                    partition::run(handler.clone(), part, token.clone()).instrument(info_span!("partition", role, p));
                tasks.insert(p, PartitionTask { cancel: token, handle: tokio::spawn(fut) });
                info!(role, partition = p, "partition taken");
            }
        }
    }
    stop_all(&mut tasks).await;
    leases.release_all().await;
    info!(role, "worker stopped");
    Ok(())
}

/// Stops every partition loop; each writes and acks what it has in hand.
async fn stop_all(tasks: &mut HashMap<u32, PartitionTask>) {
    for t in tasks.values() {
        t.cancel.cancel();
    }
    for (_, t) in tasks.drain() {
        let _ = t.handle.await;
    }
}
