//! The contract between the runner and a worker role.

use mongodb::bson::DateTime;
use natter_nats::topology::Role;
use natter_shared::audit::AuditFact;
use natter_shared::v1::command::CommandEnvelope;
use natter_shared::v1::error::ErrorCode;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;

/// One message as fetched from the role's stream.
#[derive(Clone, Debug)]
pub struct Incoming<M = CommandEnvelope> {
    /// Stream sequence: the message's position (for commands, the room's order).
    pub seq: u64,
    /// When the stream stored it: the only clock a worker uses.
    pub time: DateTime,
    pub subject: String,
    pub msg: M,
}

/// What a role consumes. Commands have a version, may want their outcome
/// reported, and are audited; audit facts are none of that.
pub trait Input: DeserializeOwned + Send + Sync + 'static {
    /// `Err` with the reason when this worker cannot read this version.
    fn check_version(&self) -> Result<(), String>;
    /// Where a waiting REST call hears the outcome.
    fn reply(&self) -> Option<&str>;
    /// Whether the runner records an `AuditFact` for it.
    const AUDITED: bool;
    /// The command itself, when the input is one.
    fn command(&self) -> Option<&CommandEnvelope>;
}

impl Input for CommandEnvelope {
    fn check_version(&self) -> Result<(), String> {
        if self.v == natter_shared::v1::VERSION {
            Ok(())
        } else {
            Err(format!("unsupported command version {}", self.v))
        }
    }
    fn reply(&self) -> Option<&str> {
        self.reply.as_deref()
    }
    const AUDITED: bool = true;
    fn command(&self) -> Option<&CommandEnvelope> {
        Some(self)
    }
}

impl Input for AuditFact {
    fn check_version(&self) -> Result<(), String> {
        if self.v == 1 { Ok(()) } else { Err(format!("unsupported fact version {}", self.v)) }
    }
    fn reply(&self) -> Option<&str> {
        None
    }
    const AUDITED: bool = false;
    fn command(&self) -> Option<&CommandEnvelope> {
        None
    }
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
    /// Valid but not allowed or not possible (a membership change raced
    /// it): nothing is written; acked, and reported to the actor.
    Refused { code: ErrorCode, reason: String, events: Vec<Publication> },
    /// Can never be applied; dead-lettered with this reason.
    Poison(String),
    /// Another role's command (a partition carries every role's): acked,
    /// and no outcome reported, which is the owner's to give.
    NotMine,
}

/// Dispositions by stream sequence, filled as commands complete. It lives
/// across the in-place retries of one batch, so a retry neither re-applies
/// nor forgets the events of what the failed attempt already committed.
pub type Done = HashMap<u64, Disposition>;

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
    type Msg: Input;

    /// Applies a batch (in stream order, all from one partition), recording
    /// a disposition per command in `done` and skipping those already there.
    fn apply(
        &self,
        batch: &[Incoming<Self::Msg>],
        done: &mut Done,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;
}
