//! Publishing commands with deduplication. `Nats-Msg-Id` makes a retried
//! publish inside the duplicate window a no-op that returns the original
//! sequence.

use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publish to JetStream failed: {0}")]
    Publish(#[source] jetstream::context::PublishError),
    #[error("no PubAck from JetStream: {0}")]
    Ack(#[source] jetstream::context::PublishError),
}

/// The stored position of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub seq: u64,
    pub duplicate: bool,
}

/// `msg_id` as it can go in a header: as given when it is visible ASCII,
/// else its SHA-256 (a header value cannot hold line breaks or other
/// control characters, and async-nats panics on one). Ids come partly from
/// clients, so nothing a client sends may reach the header unchecked.
pub fn header_safe(msg_id: &str) -> std::borrow::Cow<'_, str> {
    if !msg_id.is_empty() && msg_id.bytes().all(|b| b.is_ascii_graphic()) {
        return msg_id.into();
    }
    format!("sha256:{}", natter_shared::ids::sha256_hex(msg_id.as_bytes())).into()
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
        .send_publish(subject, PublishMessage::build().payload(payload).message_id(header_safe(msg_id).as_ref()))
        .await
        .map_err(PublishError::Publish)?;
    let ack = fut.await.map_err(PublishError::Ack)?;
    Ok(Stored { seq: ack.sequence, duplicate: ack.duplicate })
}

#[cfg(test)]
mod tests {
    use super::header_safe;

    #[test]
    fn ids_a_header_cannot_hold_are_replaced_by_their_digest() {
        assert_eq!(header_safe("msg:abc:k-1"), "msg:abc:k-1");
        let crlf = header_safe("msg:abc:a\r\nb");
        assert!(crlf.starts_with("sha256:") && crlf.bytes().all(|b| b.is_ascii_graphic()));
        // Distinct ids stay distinct, the same id maps to the same value.
        assert_ne!(crlf, header_safe("msg:abc:a\nb"));
        assert_eq!(crlf, header_safe("msg:abc:a\r\nb"));
        assert!(header_safe("a b").starts_with("sha256:"));
        assert!(header_safe("").starts_with("sha256:"));
    }
}
