//! One fetched batch on its way through: decoded, applied (its events go
//! out as soon as it is), then, once what it staged is written, finished:
//! audit facts stored, waiting REST calls answered, poison dead-lettered,
//! every message acked. A crash anywhere before the acks leaves the batch
//! for redelivery, where applying it again is a no-op.

use super::partition::Partition;
use super::publish::{ToStore, dead_letter, max_payload, store};
use crate::handler::{Disposition, Done, Incoming, Input, Publication};
use async_nats::jetstream::{AckKind, Message};
use natter_nats::topology;
use natter_shared::audit::{AuditFact, FactStatus};
use natter_shared::timefmt::from_offset;
use natter_shared::v1::command::{CommandEnvelope, Outcome, OutcomeStatus};
use std::time::Duration;
use tracing::{info, warn};

/// The pause before retry `attempt`: doubling from 200 ms, at most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5))
}

pub(super) struct Batch<M> {
    pub msgs: Vec<Message>,
    pub incoming: Vec<Incoming<M>>,
    /// Per message: its index in `incoming`, or why it is poison.
    slots: Vec<Result<usize, String>>,
    pub done: Done,
    /// Whether its events went out.
    announced: bool,
    /// Commands applied whose events could not be published (over the
    /// server's `max_payload`), with why: dead-lettered for the record.
    unpublishable: std::collections::BTreeMap<u64, String>,
}

impl<M: Input> Batch<M> {
    /// Decodes the batch; what cannot be decoded, or keeps coming back, is
    /// poison.
    pub fn decode(msgs: Vec<Message>) -> Batch<M> {
        let mut incoming: Vec<Incoming<M>> = Vec::with_capacity(msgs.len());
        let mut slots: Vec<Result<usize, String>> = Vec::with_capacity(msgs.len());
        for m in &msgs {
            if let Ok(info) = m.info()
                && info.delivered >= topology::MAX_DELIVER
            {
                slots.push(Err(format!("delivered {} times without being applied", info.delivered)));
                continue;
            }
            match Incoming::decode(m) {
                Ok(inc) => {
                    slots.push(Ok(incoming.len()));
                    incoming.push(inc);
                }
                Err(reason) => slots.push(Err(reason)),
            }
        }
        Batch { msgs, incoming, slots, done: Done::new(), announced: false, unpublishable: Default::default() }
    }

    /// Whether a REST call waits on one of its commands (it is written
    /// without waiting for others to gather).
    pub fn awaited(&self) -> bool {
        self.incoming.iter().any(|i| i.msg.reply().is_some())
    }

    /// Takes its dispositions out of `done` (after its commands were
    /// applied again together with others); its events are to go out
    /// again. Returns the commands whose events went out before and that
    /// turned out to be poison.
    pub fn reset(&mut self, done: &mut Done) -> Vec<&Incoming<M>> {
        let announced = |d: Option<&Disposition>| match d {
            Some(Disposition::Applied(p)) => !p.is_empty(),
            Some(Disposition::Refused { events, .. }) => !events.is_empty(),
            _ => false,
        };
        let before: Vec<bool> =
            self.incoming.iter().map(|i| self.announced && announced(self.done.get(&i.seq))).collect();
        self.done = self.incoming.iter().filter_map(|i| done.remove(&i.seq).map(|d| (i.seq, d))).collect();
        self.announced = false;
        self.incoming
            .iter()
            .zip(before)
            .filter(|(i, was)| *was && matches!(self.done.get(&i.seq), Some(Disposition::Poison(_))))
            .map(|(i, _)| i)
            .collect()
    }

    /// Stores its events (PubAck) so that clients get them before the
    /// batch is written: applying again gives the same events (edges drop
    /// repeats by `seq`), so a crash before the write changes nothing they
    /// saw. A NATS node dying loses none: reconnecting clients catch up
    /// from the events stream.
    pub async fn announce(&mut self, part: &Partition) {
        if self.announced {
            return;
        }
        let limit = max_payload(&part.js);
        let mut events = Vec::new();
        for (seq, e) in self.events() {
            if e.payload.len() > limit {
                let reason = format!(
                    "applied, but its {} event of {} bytes is over the {limit} bytes NATS takes: not announced",
                    e.subject,
                    e.payload.len()
                );
                self.unpublishable.insert(seq, reason);
            } else {
                events.push(e);
            }
        }
        let (stored, plain): (Vec<ToStore>, Vec<ToStore>) =
            events.into_iter().partition(|e| part.subjects.is_stored_event(&e.subject));
        store(&part.js, "event", stored).await;
        for p in plain {
            if let Err(e) = part.client.publish(p.subject, p.payload).await {
                warn!(error = %e, "publish failed");
            }
        }
        self.announced = true;
    }

    /// Its events in stream order (then in each command's order), each
    /// with the seq of its command.
    fn events(&self) -> Vec<(u64, ToStore)> {
        let mut out = Vec::new();
        for inc in &self.incoming {
            let pubs: &[Publication] = match self.done.get(&inc.seq) {
                Some(Disposition::Applied(pubs)) => pubs,
                Some(Disposition::Refused { events, .. }) => events,
                _ => &[],
            };
            out.extend(pubs.iter().cloned().map(|p| (inc.seq, ToStore::from(p))));
        }
        out
    }

    /// After its writes: audit facts stored, replies sent, poison
    /// dead-lettered, then every message acked.
    pub async fn finish(mut self, role: &str, part: &Partition) {
        self.announce(part).await;
        let mut replies: Vec<Publication> = Vec::new();
        let mut facts: Vec<ToStore> = Vec::new();
        let mut terminal: Vec<bool> = vec![false; self.msgs.len()];
        for (i, (m, slot)) in self.msgs.iter().zip(&self.slots).enumerate() {
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let inc = slot.as_ref().ok().map(|k| &self.incoming[*k]);
            // The request's trace id, on this command's log lines.
            let trace_id = inc
                .and_then(|i| i.msg.command())
                .and_then(|e| e.meta.as_ref())
                .and_then(|m| m.trace_id.as_deref())
                .unwrap_or("");
            let disposition = match slot {
                Err(reason) => Disposition::Poison(reason.clone()),
                Ok(_) => inc
                    .and_then(|inc| self.done.remove(&inc.seq))
                    .unwrap_or_else(|| Disposition::Poison("not handled by this role".into())),
            };
            let (status, reason, code) = match disposition {
                Disposition::Applied(_) => {
                    if let Some(why) = self.unpublishable.get(&seq) {
                        // Kept where operators look, though it is applied
                        // (and acked): a retry applies nothing new.
                        dead_letter(&part.js, &part.subjects, role, m, why).await;
                    }
                    (FactStatus::Applied, None, None)
                }
                Disposition::Refused { code, reason, .. } => {
                    info!(seq, %trace_id, %reason, "command refused");
                    (FactStatus::Refused, Some(reason), Some(code))
                }
                Disposition::Poison(reason) => {
                    dead_letter(&part.js, &part.subjects, role, m, &reason).await;
                    terminal[i] = true;
                    (FactStatus::DeadLettered, Some(reason), None)
                }
                Disposition::NotMine => continue,
            };
            metrics::counter!("natter_commands_total", "role" => role.to_string(), "outcome" => status.as_str())
                .increment(1);
            tracing::debug!(seq, %trace_id, status = status.as_str(), "command finished");
            // Answers go to a requester's inbox only: a command naming any
            // other subject must not make the worker publish there.
            if let Some(r) = inc.and_then(|inc| inc.msg.reply()).filter(|r| r.starts_with("_INBOX.")) {
                let o = Outcome {
                    status: if status == FactStatus::Applied { OutcomeStatus::Applied } else { OutcomeStatus::Refused },
                    seq,
                    reason: reason.clone(),
                    code,
                };
                if let Ok(body) = serde_json::to_vec(&o) {
                    replies.push(Publication { subject: r.to_string(), payload: body.into() });
                }
            }
            if M::AUDITED {
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
                        msg_id: Some(fact.msg_id()),
                    });
                }
            }
        }
        // Facts are stored (PubAck) before the commands are acked. Replies
        // to waiting REST calls are plain core messages.
        store(&part.js, "audit fact", facts).await;
        for p in replies {
            if let Err(e) = part.client.publish(p.subject, p.payload).await {
                warn!(error = %e, "reply publish failed");
            }
        }
        for (m, term) in self.msgs.iter().zip(terminal) {
            let kind = if term { AckKind::Term } else { AckKind::Ack };
            if let Err(e) = m.ack_with(kind).await {
                warn!(error = %e, "ack failed; the command will be redelivered and found applied");
            }
        }
        let _ = part.client.flush().await;
    }

    /// Gives the messages back for redelivery (on shutdown, unapplied).
    pub async fn nak(self) {
        for m in &self.msgs {
            let _ = m.ack_with(AckKind::Nak(None)).await;
        }
    }
}
