//! One leased partition's loop: pull, keep stream order across lost
//! deliveries, apply the batch through the role, settle it. The role's
//! state for the partition lives as long as the loop, that is, as long as
//! this worker holds the lease.

use super::RunnerConfig;
use super::fetch::{Pull, fetch};
use super::flow::Flow;
use crate::handler::Handler;
use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use natter_nats::{Subjects, topology};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How long fetched messages are held back waiting for earlier deliveries
/// to come back: twice the first ack wait, after which they are redelivered.
const OUTSTANDING_WAIT: Duration = Duration::from_secs(topology::BACKOFF[0].as_secs() * 2);

/// What a partition's loop needs besides the role.
pub(super) struct Partition {
    pub js: jetstream::Context,
    pub client: async_nats::Client,
    pub subjects: Subjects,
    pub p: u32,
    pub cfg: RunnerConfig,
}

pub(super) async fn run<H: Handler>(handler: Arc<H>, part: Partition, cancel: CancellationToken) {
    let name = part.subjects.consumer(H::ROLE.name(), part.p);
    let mut consumer: PullConsumer = loop {
        match part.js.get_consumer_from_stream(&name, H::ROLE.stream(&part.subjects)).await {
            Ok(c) => break c,
            Err(e) => {
                warn!(consumer = %name, error = %e, "consumer unavailable; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let mut state = H::State::default();
    let mut order = Order::default();
    let mut flow = Flow::new(handler);
    let lag = metrics::gauge!("natter_consumer_lag", "role" => H::ROLE.name(), "partition" => part.p.to_string());
    while !cancel.is_cancelled() {
        // Not raced with `cancel`: an abandoned pull request could still be
        // handed a message, which would then wait out its ack deadline while
        // later ones are applied. `fetch_wait` bounds the delay.
        let pull = Pull { max: part.cfg.batch, wait: flow.fetch_wait(part.cfg.fetch_wait), linger: H::LINGER };
        match fetch(&consumer, pull).await {
            Ok(msgs) => {
                // What is left after the newest fetched: the partition's lag.
                lag.set(msgs.last().and_then(|m| m.info().ok()).map_or(0, |i| i.pending) as f64);
                order.held.extend(msgs)
            }
            Err(e) => {
                warn!(error = %e, "fetch failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if let Some(msgs) = order.ready(&mut consumer).await {
            flow.apply(&mut state, &part, msgs, &cancel).await;
        }
        flow.advance(&mut state, &part, &cancel).await;
    }
    // Stopping: what was applied is written and acked; what was fetched
    // and not applied goes back.
    flow.flush(&mut state, &part, &cancel).await;
    for m in &order.held {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}

/// Keeps a partition's batches in stream order. Deliveries this loop did
/// not see (a pull reply lost with a NATS node, or the batch a crashed
/// worker had in hand) come back only after the ack wait; applying the later
/// commands first would send their events ahead of the earlier ones', and
/// sockets drop events older than the last they got. So unless the
/// deliveries follow on from the last one, they wait (a while at most) until
/// nothing but them is pending, then all go in stream order.
#[derive(Default)]
struct Order {
    /// The delivery (consumer) sequence of the last message applied.
    last_delivery: Option<u64>,
    /// Fetched, not applied yet.
    held: Vec<Message>,
    held_since: Option<Instant>,
    checked_at: Option<Instant>,
}

impl Order {
    /// The held messages, in stream order, once they may be applied. The
    /// consumer is asked (and the held messages kept with progress acks)
    /// once a second at most, however fast new ones arrive.
    async fn ready(&mut self, consumer: &mut PullConsumer) -> Option<Vec<Message>> {
        if self.held.is_empty() {
            return None;
        }
        if !follows_on(self.last_delivery, &self.held) {
            let now = Instant::now();
            let since = *self.held_since.get_or_insert(now);
            if now - since < OUTSTANDING_WAIT {
                let due = self.checked_at.is_none_or(|t| now - t >= Duration::from_secs(1));
                if !due {
                    return None;
                }
                self.checked_at = Some(now);
                if outstanding(consumer, &self.held).await {
                    for m in &self.held {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                    return None;
                }
            } else {
                warn!("earlier deliveries still pending after {OUTSTANDING_WAIT:?}; applying what is in hand");
            }
        }
        (self.held_since, self.checked_at) = (None, None);
        let batch = in_stream_order(std::mem::take(&mut self.held));
        self.last_delivery = batch.iter().filter_map(|m| m.info().ok().map(|i| i.consumer_sequence)).max();
        Some(batch)
    }
}

/// Whether `msgs` are the deliveries right after `last` and nothing else.
fn follows_on(last: Option<u64>, msgs: &[Message]) -> bool {
    let Some(next) = last.map(|l| l + 1) else { return false };
    let seqs: Option<Vec<u64>> = msgs.iter().map(|m| m.info().ok().map(|i| i.consumer_sequence)).collect();
    seqs.is_some_and(|s| consecutive_from(next, s))
}

/// Whether `seqs`, sorted, are `next, next + 1, ...`.
fn consecutive_from(next: u64, mut seqs: Vec<u64>) -> bool {
    seqs.sort_unstable();
    seqs.iter().enumerate().all(|(i, s)| *s == next + i as u64)
}

/// Whether the consumer has deliveries pending besides `held` (when it
/// cannot tell, it is assumed to).
async fn outstanding(consumer: &mut PullConsumer, held: &[Message]) -> bool {
    let mut distinct: Vec<u64> = held.iter().filter_map(|m| m.info().ok().map(|i| i.stream_sequence)).collect();
    distinct.sort_unstable();
    distinct.dedup();
    match consumer.info().await {
        Ok(info) => info.num_ack_pending > distinct.len(),
        Err(e) => {
            warn!(error = %e, "consumer info unavailable");
            true
        }
    }
}

/// Sorts messages by stream sequence, keeping the latest delivery of each.
fn in_stream_order(mut msgs: Vec<Message>) -> Vec<Message> {
    let key = |m: &Message| m.info().map(|i| (i.stream_sequence, i.consumer_sequence)).unwrap_or((0, 0));
    msgs.sort_by_key(|m| std::cmp::Reverse(key(m)));
    msgs.dedup_by(|a, b| key(a).0 != 0 && key(a).0 == key(b).0);
    msgs.reverse();
    msgs
}

#[cfg(test)]
mod tests {
    use super::consecutive_from;

    #[test]
    fn deliveries_follow_on_only_without_gaps() {
        assert!(consecutive_from(5, vec![6, 5, 7]));
        assert!(!consecutive_from(5, vec![5, 7]));
        assert!(!consecutive_from(5, vec![6]));
        assert!(!consecutive_from(5, vec![5, 5]));
        assert!(consecutive_from(1, vec![]));
    }
}
