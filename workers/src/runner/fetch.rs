//! Pulling a batch from a partition's durable consumer. Every pull request
//! is complete when a fetch returns, so no message is left delivered to a
//! subscription nobody reads (which would reorder it behind later ones).

use async_nats::jetstream::{Message, consumer::PullConsumer};
use futures::StreamExt;
use std::time::Duration;
use tracing::warn;

/// How long after its expiry a pull request's reply may still come. A no-wait
/// pull gets its reply at once from a healthy server; one sent through a
/// node that died has none coming (the reply went down with the route), and
/// async-nats waits for a no-wait pull without a deadline of its own.
const PULL_REPLY_GRACE: Duration = Duration::from_secs(5);

/// A pull request that failed or never finished.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("pull request refused: {0}")]
    Request(String),
    #[error("pull request failed: {0}")]
    Stream(String),
    #[error("no reply to the pull request in {0:?}")]
    NoReply(Duration),
}

/// How a partition's loop pulls.
#[derive(Clone, Copy, Debug)]
pub struct Pull {
    /// Most messages in one batch.
    pub max: usize,
    /// How long to wait for the first message.
    pub wait: Duration,
    /// After the first message of an idle spell, how long to wait for more
    /// to join it (zero: take what is there). Roles nobody waits on (the
    /// audit trail) trade this latency for fewer, larger writes.
    pub linger: Duration,
}

/// Takes what is available now, up to `max`; if nothing is, waits up to
/// `wait` for one message and then takes what followed it (within
/// `linger`). A pull whose reply was lost with a NATS node ends
/// `PULL_REPLY_GRACE` later with what arrived; what went astray is
/// redelivered after the ack wait (applying it late is safe: every write is
/// guarded by seq, and the partition loop holds later ones back).
pub async fn fetch(consumer: &PullConsumer, pull: Pull) -> Result<Vec<Message>, FetchError> {
    let now = consumer.fetch().max_messages(pull.max).messages().await.map_err(request)?;
    let mut out = drain(now, PULL_REPLY_GRACE).await?;
    if out.is_empty() {
        let first = consumer.batch().max_messages(1).expires(pull.wait).messages().await.map_err(request)?;
        out = drain(first, pull.wait + PULL_REPLY_GRACE).await?;
        if !out.is_empty() && pull.max > 1 {
            let more = if pull.linger.is_zero() {
                consumer.fetch().max_messages(pull.max - 1).messages().await.map_err(request)?
            } else {
                consumer.batch().max_messages(pull.max - 1).expires(pull.linger).messages().await.map_err(request)?
            };
            out.extend(drain(more, pull.linger + PULL_REPLY_GRACE).await?);
        }
    }
    Ok(out)
}

fn request(e: impl std::fmt::Display) -> FetchError {
    FetchError::Request(e.to_string())
}

/// Collects one pull request's messages until it ends, or until `limit`
/// passes without its end (what arrived is kept; with nothing, an error).
async fn drain<S, E>(mut s: S, limit: Duration) -> Result<Vec<Message>, FetchError>
where
    S: futures::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut v = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(m))) => v.push(m),
            Ok(Some(Err(e))) if v.is_empty() => return Err(FetchError::Stream(e.to_string())),
            Ok(Some(Err(_)) | None) => break,
            Err(_) if v.is_empty() => return Err(FetchError::NoReply(limit)),
            Err(_) => {
                warn!(received = v.len(), "pull request unfinished after {limit:?}; keeping what arrived");
                break;
            }
        }
    }
    Ok(v)
}
