//! `natterctl partitions`: the deployment's partition count, and moving a
//! running deployment to another (drain, switch, resume: the procedure is
//! `natter_nats::partitioning`'s, and docs/operations.md's).

use anyhow::Context;
use async_nats::jetstream;
use natter_nats::partitioning::{self, PartitionState};
use natter_nats::topology::{Input, Role};
use natter_nats::{DEFAULT_PARTITIONS, Subjects};
use std::time::{Duration, Instant};

/// The state (the default for a deployment that never wrote one), with
/// `s` set to its count.
pub async fn load(js: &jetstream::Context, s: &Subjects) -> anyhow::Result<PartitionState> {
    let kv = js
        .get_key_value(s.topology_bucket())
        .await
        .with_context(|| format!("topology bucket {}: run `natterctl topology apply` first", s.topology_bucket()))?;
    let state = partitioning::read(&kv).await?.map(|(st, _)| st).unwrap_or_else(PartitionState::legacy);
    s.set_partitions(state.count);
    Ok(state)
}

/// How `set` paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// How long after marking the drain nothing more can be published
    /// under the old count (`partitioning::SETTLE`).
    pub settle: Duration,
    /// How long the old partitions may take to drain before the move is
    /// called off.
    pub drain_timeout: Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace { settle: partitioning::SETTLE, drain_timeout: Duration::from_secs(60) }
    }
}

/// What a move did.
#[derive(Debug)]
pub struct Moved {
    pub from: u32,
    pub to: u32,
    /// The command stream's last seq when the old partitions were drained:
    /// the new partitions' consumers start after it.
    pub drained_at: u64,
    /// How long commands were held.
    pub held: Duration,
}

/// The roles whose consumers follow the count.
fn partitioned_roles() -> impl Iterator<Item = Role> {
    Role::ALL.into_iter().filter(|r| r.input == Input::Commands)
}

/// Moves the deployment to `to` partitions: marks the drain, waits until
/// every command published under the old count is applied, declares the
/// new partitions' consumers, writes the new count, and deletes the
/// consumers beyond it. Called off (the old count written back) if the
/// drain does not finish within `pace.drain_timeout`. `progress` is told
/// each step.
pub async fn set(
    js: &jetstream::Context,
    s: &Subjects,
    to: u32,
    pace: Pace,
    progress: impl Fn(&str),
) -> anyhow::Result<Moved> {
    let to = partitioning::validate(to).map_err(anyhow::Error::msg)?;
    let kv = js.get_key_value(s.topology_bucket()).await.context("topology bucket")?;
    if partitioning::read(&kv).await?.is_none() {
        partitioning::init(&kv, DEFAULT_PARTITIONS).await?;
    }
    let (state, rev) = partitioning::read(&kv).await?.context("the partition state vanished")?;
    match state.draining_to {
        // An interrupted move to the same count: go on with it.
        Some(n) if n == to => {}
        Some(n) => anyhow::bail!("a move to {n} partitions is under way (or was interrupted: finish it first)"),
        None if state.count == to => {
            return Ok(Moved { from: to, to, drained_at: 0, held: Duration::ZERO });
        }
        None => {}
    }
    let from = state.count;
    s.set_partitions(from);
    let started = Instant::now();
    let draining = PartitionState { draining_to: Some(to), ..state.clone() };
    let rev = if state.draining_to.is_none() { partitioning::write(&kv, &draining, rev).await? } else { rev };
    progress(&format!("draining {from} partitions: edges hold new commands"));
    tokio::time::sleep(pace.settle).await;
    let drained_at = match drained(js, s, from, started + pace.settle + pace.drain_timeout).await {
        Ok(seq) => seq,
        Err(e) => {
            let back = PartitionState { draining_to: None, ..state };
            partitioning::write(&kv, &back, rev).await.context("writing the old count back")?;
            return Err(e.context(format!("the move to {to} partitions is called off; {from} stay")));
        }
    };
    progress(&format!("drained at command seq {drained_at}"));
    if to > from {
        for role in partitioned_roles() {
            natter_nats::topology::apply_partition_consumers(js, s, role, from..to, Some(drained_at + 1)).await?;
        }
    }
    let mut history = state.history.clone();
    if history.last() != Some(&to) {
        history.push(to);
    }
    let next = PartitionState { count: to, draining_to: None, history };
    partitioning::write(&kv, &next, rev).await.context("writing the new count")?;
    let held = started.elapsed();
    progress(&format!("{to} partitions: edges publish again, workers lease the new partitions"));
    s.set_partitions(to);
    for role in partitioned_roles() {
        for p in to..from {
            let name = s.consumer(role.name(), p);
            js.delete_consumer_from_stream(&name, role.stream(s))
                .await
                .with_context(|| format!("deleting consumer {name}"))?;
        }
    }
    Ok(Moved { from, to, drained_at, held })
}

/// Waits until every command consumer of the `count` partitions has
/// nothing pending or unacknowledged and the command stream has not grown
/// meanwhile; its last seq then.
async fn drained(js: &jetstream::Context, s: &Subjects, count: u32, deadline: Instant) -> anyhow::Result<u64> {
    let mut left = String::new();
    loop {
        let before = js.get_stream(s.cmd_stream()).await?.info().await?.state.last_sequence;
        left.clear();
        'roles: for role in partitioned_roles() {
            let stream = js.get_stream(role.stream(s)).await?;
            for p in 0..count {
                let name = s.consumer(role.name(), p);
                let info = stream.consumer_info(&name).await.with_context(|| format!("consumer {name}"))?;
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    left = format!("{name}: {} pending, {} unacknowledged", info.num_pending, info.num_ack_pending);
                    break 'roles;
                }
            }
        }
        let after = js.get_stream(s.cmd_stream()).await?.info().await?.state.last_sequence;
        if left.is_empty() && after == before {
            return Ok(after);
        }
        if Instant::now() > deadline {
            anyhow::bail!("not drained in time ({})", if left.is_empty() { "commands still arriving" } else { &left });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
