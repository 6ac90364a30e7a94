//! Publishing commands with deduplication. `Nats-Msg-Id` makes a retried
//! publish inside the duplicate window a no-op that returns the original
//! sequence.

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish to JetStream failed: {0}")]
    Publish(String),
    #[error("no PubAck from JetStream: {0}")]
    Ack(String),
}

/// The stored position of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub duplicate: bool,
}

/// Publishes `payload` on `subject` with `Nats-Msg-Id: msg_id` and waits for
/// the PubAck.
pub async fn command(
    js: &jetstream::Context,
    subject: String,
    msg_id: &str,
    payload: Bytes,
) -> Result<Stored, PublishError> {
    let fut = js
        .send_publish(subject, PublishMessage::build().payload(payload).message_id(msg_id))
        .await
        .map_err(|e| PublishError::Publish(e.to_string()))?;
    let ack = fut.await.map_err(|e| match e.kind() {
        PublishErrorKind::TimedOut => PublishError::Ack("timed out".into()),
        _ => PublishError::Ack(e.to_string()),
    })?;
    Ok(Stored { seq: ack.sequence, duplicate: ack.duplicate })
}
