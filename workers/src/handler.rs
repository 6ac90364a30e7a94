//! The contract between the runner and a worker role.

use mongodb::bson::DateTime;
use natter_nats::topology::Role;
use natter_shared::v1::command::CommandEnvelope;
use std::future::Future;

/// One command as fetched from the stream.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// Stream sequence: the command's position and the room's order.
    pub seq: u64,
    /// When the stream stored the command: the only clock a worker uses.
    pub time: DateTime,
    pub subject: String,
    pub envelope: CommandEnvelope,
}

/// A message to publish on core NATS once the batch is written.
#[derive(Clone, Debug)]
pub struct Publication {
    pub subject: String,
    pub payload: bytes::Bytes,
}

/// What became of one command.
#[derive(Clone, Debug)]
pub enum Disposition {
    /// Applied (or found already applied); these events follow.
    Applied(Vec<Publication>),
    /// Valid but not allowed or not possible; acked, reported to the sender.
    Refused(String),
    /// Can never be applied; dead-lettered with this reason.
    Poison(String),
}

/// A failure of the whole batch that may pass (MongoDB unreachable, a
/// timeout): the runner retries the batch in place, keeping the room order.
#[derive(Debug, thiserror::Error)]
#[error("transient: {0}")]
pub struct ApplyError(pub String);

impl From<mongodb::error::Error> for ApplyError {
    fn from(e: mongodb::error::Error) -> Self {
        ApplyError(e.to_string())
    }
}

/// A worker role. `apply` must be idempotent and depend only on the
/// commands (with their seq and time): redelivery, replay and a parallel
/// worker all converge to the same state.
pub trait Handler: Send + Sync + 'static {
    const ROLE: Role;

    /// Applies a batch (in stream order, all from one partition) and returns
    /// one disposition per command, in the same order.
    fn apply(
        &self,
        batch: &[Incoming],
    ) -> impl Future<Output = Result<Vec<Disposition>, ApplyError>> + Send;
}
