//! Storing what a batch produced in JetStream before the batch is acked:
//! events, audit facts and dead letters, each waited on (PubAck).

use async_nats::jetstream::{self, Message};
use natter_nats::Subjects;
use natter_nats::topology::{DLQ_REASON, DLQ_SEQ, DLQ_SUBJECT};
use std::time::Duration;
use tracing::warn;

/// A message for a stream, with its `Nats-Msg-Id` when it has one.
pub(super) struct ToStore {
    pub subject: String,
    pub payload: bytes::Bytes,
    pub msg_id: Option<String>,
}

impl From<crate::handler::Publication> for ToStore {
    fn from(p: crate::handler::Publication) -> Self {
        ToStore { subject: p.subject, payload: p.payload, msg_id: None }
    }
}

/// Publishes `items` pipelined and waits for every PubAck; from the first
/// that fails on, they are published again one by one, in order (a
/// subject's events must stay in seq order; edges drop repeated events by
/// `seq`, and a repeated audit fact is deduplicated by its id).
pub(super) async fn store(js: &jetstream::Context, what: &str, items: Vec<ToStore>) {
    // A message over the server's limit would be refused however often it
    // is sent (the caller dead-letters its command; see `Batch::announce`).
    let limit = max_payload(js);
    let items: Vec<ToStore> = items
        .into_iter()
        .filter(|t| {
            let fits = t.payload.len() <= limit;
            if !fits {
                tracing::error!(subject = %t.subject, bytes = t.payload.len(), limit, "{what} too large to publish; dropped");
            }
            fits
        })
        .collect();
    let publish = |t: &ToStore| {
        let mut m = jetstream::message::PublishMessage::build().payload(t.payload.clone());
        if let Some(id) = &t.msg_id {
            m = m.message_id(id);
        }
        js.send_publish(t.subject.clone(), m)
    };
    let mut acks = Vec::with_capacity(items.len());
    for t in &items {
        match publish(t).await {
            Ok(ack) => acks.push(Some(ack)),
            Err(_) => {
                acks.push(None);
                break;
            }
        }
    }
    let mut from = items.len();
    for (i, ack) in acks.into_iter().enumerate() {
        let ok = match ack {
            Some(a) => a.await.is_ok(),
            None => false,
        };
        if !ok {
            from = i;
            break;
        }
    }
    for t in &items[from..] {
        loop {
            match publish(t).await {
                Ok(ack) => match ack.await {
                    Ok(_) => break,
                    Err(e) => warn!(error = %e, "{what} not acknowledged; retrying"),
                },
                Err(e) => warn!(error = %e, "{what} not published; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The largest message the server takes (`max_payload`, less room for
/// headers).
pub(super) fn max_payload(js: &jetstream::Context) -> usize {
    let info = js.client().server_info().max_payload;
    let max = if info == 0 { 1024 * 1024 } else { info };
    max.saturating_sub(HEADROOM)
}

/// Room kept for headers (a `Nats-Msg-Id`) under the server's limit.
const HEADROOM: usize = 1024;

/// Copies a command to the dead-letter stream with its reason, waiting for
/// the PubAck so nothing is terminated before it is kept.
pub(super) async fn dead_letter(js: &jetstream::Context, subjects: &Subjects, role: &str, m: &Message, reason: &str) {
    let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    #[derive(serde::Deserialize)]
    struct Traced {
        #[serde(default)]
        meta: Option<natter_shared::v1::command::RequestMeta>,
    }
    let trace_id = serde_json::from_slice::<Traced>(&m.payload).ok().and_then(|t| t.meta?.trace_id).unwrap_or_default();
    warn!(seq, %trace_id, %reason, "dead-lettering command");
    metrics::counter!("natter_dead_letters_total", "role" => role.to_string()).increment(1);
    let mut headers = async_nats::HeaderMap::new();
    // A header value cannot hold a line break.
    let reason: String = reason.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    headers.insert(DLQ_REASON, reason.as_str());
    headers.insert(DLQ_SEQ, seq.to_string().as_str());
    headers.insert(DLQ_SUBJECT, m.subject.as_str());
    loop {
        match js.publish_with_headers(subjects.dlq(role), headers.clone(), m.payload.clone()).await {
            Ok(ack) => match ack.await {
                Ok(_) => return,
                Err(e) => warn!(error = %e, "dead letter not acknowledged; retrying"),
            },
            Err(e) => warn!(error = %e, "dead letter publish failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
