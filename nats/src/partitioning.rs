//! The deployment's partition count, kept in the topology bucket (key
//! `partitions`), and how a running deployment moves to another count.
//!
//! Every edge and worker follows the key (`Partitioning::follow`): the edge
//! publishes commands under the current count, a worker leases and consumes
//! that many partitions. `natterctl partitions set N` moves a deployment:
//!
//! 1. **drain**: it marks the state `drainingTo: N`. Edges hold new commands
//!    (up to `HOLD`, then refuse them as `unavailable`, which clients
//!    retry); the workers go on applying what is in the stream.
//! 2. It waits out `SETTLE` (a publish the edge began before it saw the
//!    mark lands or fails within it), then until every command consumer of
//!    the old count has nothing pending or unacknowledged, and the stream
//!    has stopped growing. So every command published under the old count
//!    is applied, and its events published, before any under the new one.
//! 3. **switch**: it declares the new partitions' consumers, starting after
//!    the stream's last message, and deletes the consumers beyond the new
//!    count.
//! 4. **resume**: it writes `count: N`. Edges publish the held commands
//!    under it; workers stop their partition loops, give their leases back
//!    and lease the new partitions.
//!
//! A room's commands are thus never applied out of order: all of those
//! under the old count are applied before the first under the new one is
//! published. If the drain does not finish in time the old count is
//! written back and nothing changes.
//!
//! The state keeps every count the stream was partitioned by (`history`),
//! so that `natterctl replay` can split its work so that each room's
//! commands, under whichever count, fall to one replay worker.

use crate::subjects::{DEFAULT_PARTITIONS, MAX_PARTITIONS, Subjects};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;

/// The key of the state in the topology bucket.
pub const KEY: &str = "partitions";
/// How long an edge holds a command while a repartition drains.
pub const HOLD: Duration = Duration::from_secs(20);
/// How long `natterctl partitions set` waits after marking the drain before
/// it trusts that nothing more is published under the old count: more than
/// an edge's PubAck wait.
pub const SETTLE: Duration = Duration::from_secs(6);

/// What the topology bucket holds under `KEY`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionState {
    /// The count commands are published and consumed by.
    pub count: u32,
    /// Set while a move to another count drains the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_to: Option<u32>,
    /// Every count the stream has been partitioned by, oldest first.
    #[serde(default)]
    pub history: Vec<u32>,
}

impl PartitionState {
    pub fn new(count: u32) -> Self {
        PartitionState { count, draining_to: None, history: vec![count] }
    }

    /// What a deployment that never wrote the key has.
    pub fn legacy() -> Self {
        Self::new(DEFAULT_PARTITIONS)
    }

    /// The counts the stream may hold subjects of: the history, or the
    /// count alone.
    fn counts(&self) -> impl Iterator<Item = u32> + '_ {
        self.history.iter().copied().chain(std::iter::once(self.count))
    }

    /// The highest partition number any command in the stream can have, plus one.
    pub fn widest(&self) -> u32 {
        self.counts().max().unwrap_or(self.count)
    }

    /// The most workers, at most `wanted`, that the partitions can be split
    /// among (`p mod n`) with every room's commands, under every count of
    /// the history, going to one of them: `n` must divide every count.
    pub fn replay_split(&self, wanted: u32) -> u32 {
        let g = self.counts().fold(0, gcd);
        (1..=wanted.clamp(1, g.max(1))).rev().find(|n| g.is_multiple_of(*n)).unwrap_or(1)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Checks a partition count a user asked for.
pub fn validate(count: u32) -> Result<u32, String> {
    if (1..=MAX_PARTITIONS).contains(&count) {
        Ok(count)
    } else {
        Err(format!("a partition count is 1 to {MAX_PARTITIONS}, not {count}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PartitioningError {
    #[error("topology bucket: {0}")]
    Bucket(String),
    #[error("the partition state in the topology bucket is not valid: {0}")]
    Corrupt(#[from] serde_json::Error),
}

fn bucket_err(e: impl std::fmt::Display) -> PartitioningError {
    PartitioningError::Bucket(e.to_string())
}

/// The state and its revision; `None` when the key was never written (a
/// deployment with `DEFAULT_PARTITIONS`).
pub async fn read(kv: &kv::Store) -> Result<Option<(PartitionState, u64)>, PartitioningError> {
    match kv.entry(KEY).await.map_err(bucket_err)? {
        Some(e) if e.operation == kv::Operation::Put => Ok(Some((serde_json::from_slice(&e.value)?, e.revision))),
        _ => Ok(None),
    }
}

/// Writes `count` as the state if there is none yet (a new deployment, or
/// one from before the count was a setting, which had the default); the
/// state that holds.
pub async fn init(kv: &kv::Store, count: u32) -> Result<PartitionState, PartitioningError> {
    if let Some((s, _)) = read(kv).await? {
        return Ok(s);
    }
    let state = PartitionState::new(count);
    match kv.create(KEY, serde_json::to_vec(&state)?.into()).await {
        Ok(_) => Ok(state),
        // Another process wrote it first.
        Err(_) => read(kv).await?.map(|(s, _)| s).ok_or_else(|| bucket_err("the partition state vanished")),
    }
}

/// Replaces the state at `revision` (compare and set).
pub async fn write(kv: &kv::Store, state: &PartitionState, revision: u64) -> Result<u64, PartitioningError> {
    kv.update(KEY, serde_json::to_vec(state)?.into(), revision).await.map_err(bucket_err)
}

/// The partition state as this process follows it.
#[derive(Clone, Debug)]
pub struct Partitioning {
    rx: watch::Receiver<PartitionState>,
}

impl Partitioning {
    /// A state that never changes (tools that read the stream once).
    pub fn fixed(state: PartitionState, subjects: &Subjects) -> Self {
        subjects.set_partitions(state.count);
        Partitioning { rx: watch::channel(state).1 }
    }

    /// Reads the state, sets `subjects`' count to it, and follows the key
    /// until the process ends, setting the count before anyone waiting
    /// (`ready`, `changed`) learns of a change.
    pub async fn follow(js: &jetstream::Context, subjects: &Subjects) -> Result<Self, PartitioningError> {
        let kv = js.get_key_value(subjects.topology_bucket()).await.map_err(bucket_err)?;
        let state = read(&kv).await?.map(|(s, _)| s).unwrap_or_else(PartitionState::legacy);
        subjects.set_partitions(state.count);
        let (tx, rx) = watch::channel(state);
        let subjects = subjects.clone();
        tokio::spawn(async move {
            loop {
                let mut w = match kv.watch_with_history(KEY).await {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot follow the partition count; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(entry) = w.next().await {
                    let Ok(entry) = entry else { break };
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    match serde_json::from_slice::<PartitionState>(&entry.value) {
                        Ok(s) => {
                            subjects.set_partitions(s.count);
                            tx.send_if_modified(|old| {
                                let changed = *old != s;
                                *old = s;
                                changed
                            });
                        }
                        Err(e) => tracing::error!(error = %e, "partition state not valid; keeping the last one"),
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Ok(Partitioning { rx })
    }

    pub fn state(&self) -> PartitionState {
        self.rx.borrow().clone()
    }

    /// Whether a move to another count is draining the current one.
    pub fn draining(&self) -> bool {
        self.rx.borrow().draining_to.is_some()
    }

    /// Waits, at most `patience`, until no move to another count is
    /// draining; whether none is.
    pub async fn ready(&self, patience: Duration) -> bool {
        if !self.draining() {
            return true;
        }
        let mut rx = self.rx.clone();
        tokio::time::timeout(patience, rx.wait_for(|s| s.draining_to.is_none())).await.is_ok_and(|r| r.is_ok())
    }

    /// Waits until the count differs from `count`; the new count.
    pub async fn count_changed(&mut self, count: u32) -> u32 {
        let changed = self.rx.wait_for(|s| s.count != count).await.map(|s| s.count);
        match changed {
            Ok(n) => n,
            // The follower ended with the process: never.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_splits_by_a_divisor_of_every_count() {
        let s = PartitionState { count: 32, draining_to: None, history: vec![8, 32] };
        assert_eq!(s.replay_split(4), 4);
        assert_eq!(s.replay_split(16), 8, "8 divides both 8 and 32");
        assert_eq!(s.widest(), 32);
        let odd = PartitionState { count: 12, draining_to: None, history: vec![8, 12] };
        assert_eq!(odd.replay_split(8), 4);
        assert_eq!(odd.replay_split(3), 2);
        let coprime = PartitionState { count: 5, draining_to: None, history: vec![8, 5] };
        assert_eq!(coprime.replay_split(8), 1);
        // p mod n is the same for a room under each count when n divides both.
        for room in 0..500 {
            let r = format!("room{room}");
            let (p8, p32) = (crate::subjects::partition_of(&r, 8), crate::subjects::partition_of(&r, 32));
            assert_eq!(p8 % 8, p32 % 8);
        }
    }

    #[test]
    fn counts_are_bounded_and_the_state_reads_back() {
        assert!(validate(0).is_err());
        assert!(validate(MAX_PARTITIONS + 1).is_err());
        assert_eq!(validate(256), Ok(256));
        let s = PartitionState { count: 8, draining_to: Some(32), history: vec![8] };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"count":8,"drainingTo":32,"history":[8]}"#);
        assert_eq!(serde_json::from_str::<PartitionState>(&json).unwrap(), s);
        assert_eq!(serde_json::from_str::<PartitionState>(r#"{"count":4}"#).unwrap().widest(), 4);
    }
}
