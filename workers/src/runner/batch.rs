//! Settling one fetched batch: decode, apply through the role (retrying in
//! place), then store the audit facts and the events, answer waiting REST
//! calls, dead-letter poison, and ack. A crash anywhere before the acks
//! leaves the batch for redelivery, where applying it again is a no-op.

use super::partition::Partition;
use super::publish::{ToStore, dead_letter, store};
use crate::handler::{Disposition, Done, Handler, Incoming, Input, Publication, settle};
use async_nats::jetstream::{AckKind, Message};
use natter_nats::topology;
use natter_shared::audit::{AuditFact, FactStatus};
use natter_shared::timefmt::from_offset;
use natter_shared::v1::command::{CommandEnvelope, Outcome, OutcomeStatus};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

/// How often messages in hand are kept from redelivery while their batch
/// is applied (well inside the first ack wait).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The pause before retry `attempt`: doubling from 200 ms, at most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5))
}

/// Applies one fetched batch and settles every message in it.
pub(super) async fn process<H: Handler>(
    handler: &H,
    state: &mut H::State,
    part: &Partition,
    msgs: Vec<Message>,
    cancel: &CancellationToken,
) {
    let span = info_span!("batch", size = msgs.len());
    async {
        let (incoming, slots) = decode::<H::Msg>(&msgs);
        let mut done = Done::new();
        if !incoming.is_empty() && !apply(handler, state, &incoming, &mut done, &msgs, cancel).await {
            for m in &msgs {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
            return;
        }
        let role = H::ROLE.name();
        let mut publications: Vec<Publication> = Vec::new();
        let mut facts: Vec<ToStore> = Vec::new();
        let mut terminal: Vec<bool> = vec![false; msgs.len()];
        for (i, (m, slot)) in msgs.iter().zip(&slots).enumerate() {
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let inc = slot.as_ref().ok().map(|k| &incoming[*k]);
            let disposition = match slot {
                Err(reason) => Disposition::Poison(reason.clone()),
                Ok(_) => inc
                    .and_then(|inc| done.remove(&inc.seq))
                    .unwrap_or_else(|| Disposition::Poison("not handled by this role".into())),
            };
            let (status, reason, code) = match disposition {
                Disposition::Applied(pubs) => {
                    publications.extend(pubs);
                    (FactStatus::Applied, None, None)
                }
                Disposition::Refused { code, reason, events } => {
                    info!(seq, %reason, "command refused");
                    publications.extend(events);
                    (FactStatus::Refused, Some(reason), Some(code))
                }
                Disposition::Poison(reason) => {
                    dead_letter(&part.js, &part.subjects, role, m, &reason).await;
                    terminal[i] = true;
                    (FactStatus::DeadLettered, Some(reason), None)
                }
                Disposition::NotMine => continue,
            };
            if let Some(r) = inc.and_then(|inc| inc.msg.reply()) {
                let o = Outcome {
                    status: if status == FactStatus::Applied { OutcomeStatus::Applied } else { OutcomeStatus::Refused },
                    seq,
                    reason: reason.clone(),
                    code,
                };
                if let Ok(body) = serde_json::to_vec(&o) {
                    publications.push(Publication { subject: r.to_string(), payload: body.into() });
                }
            }
            if <H::Msg as Input>::AUDITED {
                // Decoded already, except what was dead-lettered before decoding.
                let reparsed;
                let env = match inc.and_then(|i| i.msg.command()) {
                    Some(e) => Some(e),
                    None => {
                        reparsed = serde_json::from_slice::<CommandEnvelope>(&m.payload).ok();
                        reparsed.as_ref()
                    }
                };
                let time = match inc {
                    Some(i) => i.time.timestamp_millis(),
                    None => m.info().map(|i| from_offset(i.published).timestamp_millis()).unwrap_or(0),
                };
                let fact = AuditFact::of(role, seq, time, env, status, reason, code);
                if let Ok(body) = serde_json::to_vec(&fact) {
                    facts.push(ToStore {
                        subject: part.subjects.outcome(role),
                        payload: body.into(),
                        msg_id: Some(format!("out:{seq}")),
                    });
                }
            }
        }
        // Events and facts are stored (PubAck) before the commands are
        // acked, so a NATS node dying now loses none: live sockets get the
        // events through the publish, reconnecting ones from the events
        // stream. Events go first: a client waits on them, nobody on facts.
        // Replies to waiting REST calls are plain core messages.
        let (events, replies): (Vec<Publication>, Vec<Publication>) =
            publications.into_iter().partition(|p| part.subjects.is_stored_event(&p.subject));
        let events = events.into_iter().map(|p| ToStore { subject: p.subject, payload: p.payload, msg_id: None });
        store(&part.js, "event", events.collect()).await;
        store(&part.js, "audit fact", facts).await;
        for p in replies {
            if let Err(e) = part.client.publish(p.subject, p.payload).await {
                warn!(error = %e, "reply publish failed");
            }
        }
        for (m, term) in msgs.iter().zip(terminal) {
            let kind = if term { AckKind::Term } else { AckKind::Ack };
            if let Err(e) = m.ack_with(kind).await {
                warn!(error = %e, "ack failed; the command will be redelivered and found applied");
            }
        }
        let _ = part.client.flush().await;
    }
    .instrument(span)
    .await
}

/// Decodes the batch; what cannot be decoded, or keeps coming back, is
/// poison. Each message's slot is its index in the decoded list, or why
/// it is poison.
fn decode<M: Input>(msgs: &[Message]) -> (Vec<Incoming<M>>, Vec<Result<usize, String>>) {
    let mut incoming: Vec<Incoming<M>> = Vec::with_capacity(msgs.len());
    let mut slots: Vec<Result<usize, String>> = Vec::with_capacity(msgs.len());
    for m in msgs {
        let Ok(info) = m.info() else {
            slots.push(Err("message without JetStream metadata".into()));
            continue;
        };
        if info.delivered >= topology::MAX_DELIVER {
            slots.push(Err(format!("delivered {} times without being applied", info.delivered)));
            continue;
        }
        let msg = match serde_json::from_slice::<M>(&m.payload) {
            Ok(msg) => msg,
            Err(e) => {
                slots.push(Err(format!("undecodable: {e}")));
                continue;
            }
        };
        match msg.check_version() {
            Ok(()) => {
                slots.push(Ok(incoming.len()));
                incoming.push(Incoming {
                    seq: info.stream_sequence,
                    time: from_offset(info.published),
                    subject: m.subject.to_string(),
                    msg,
                });
            }
            Err(reason) => slots.push(Err(reason)),
        }
    }
    (incoming, slots)
}

/// Applies until every command has a disposition, keeping the messages in
/// hand from redelivery meanwhile; `false` if cancelled first.
async fn apply<H: Handler>(
    handler: &H,
    state: &mut H::State,
    incoming: &[Incoming<H::Msg>],
    done: &mut Done,
    msgs: &[Message],
    cancel: &CancellationToken,
) -> bool {
    let progress = async || {
        for m in msgs {
            let _ = m.ack_with(AckKind::Progress).await;
        }
    };
    let work = settle(handler, state, incoming, done, |attempt| async move {
        progress().await;
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(backoff(attempt)) => true,
        }
    });
    tokio::pin!(work);
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            settled = &mut work => return settled,
            _ = beat.tick() => progress().await,
        }
    }
}
