//! The one runner every role uses: leases partitions, runs one fetch loop per
//! leased partition, applies batches through the role's `Handler`, publishes
//! events, dead-letters poison, then acks. Transient failures are retried in
//! place (with progress acks) so a room's commands are never applied out of
//! order; a crash leaves the batch unacked for redelivery.

use crate::handler::Input;
use crate::handler::{Disposition, Done, Handler, Incoming, Publication};
use crate::lease::{Leases, RENEW_EVERY};
use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use futures::StreamExt;
use natter_nats::{Subjects, topology};
use natter_shared::audit::AuditFact;
use natter_shared::timefmt::from_offset;
use natter_shared::v1::command::{CommandEnvelope, Outcome, OutcomeStatus, RoomFields};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

pub use natter_nats::topology::{DLQ_REASON, DLQ_SEQ, DLQ_SUBJECT};

#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Most commands applied in one batch.
    pub batch: usize,
    /// How long one pull request waits for the first message.
    pub fetch_wait: Duration,
    /// This instance's name in the lease bucket.
    pub instance: String,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            batch: topology::MAX_BATCH,
            fetch_wait: Duration::from_secs(1),
            instance: format!("{}-{}", std::process::id(), mongodb::bson::oid::ObjectId::new().to_hex()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("lease bucket unavailable: {0}")]
    Bucket(String),
}

/// How long a tick waits for a surplus partition's loop to stop.
const HANDOFF_WAIT: Duration = Duration::from_millis(1500);

struct PartitionTask {
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

/// Runs `handler` until `cancel` fires, then finishes the batches in hand and
/// gives the leases back.
pub async fn run<H: Handler>(
    handler: Arc<H>,
    client: async_nats::Client,
    subjects: Subjects,
    cfg: RunnerConfig,
    cancel: CancellationToken,
) -> Result<(), RunnerError> {
    let js = jetstream::new(client.clone());
    let kv = js.get_key_value(subjects.leases_bucket()).await.map_err(|e| RunnerError::Bucket(e.to_string()))?;
    let role = H::ROLE.name();
    let mut leases = Leases::new(kv, subjects.clone(), role, cfg.instance.clone(), H::ROLE.partitions());
    let mut tasks: HashMap<u32, PartitionTask> = HashMap::new();
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(role, instance = %cfg.instance, "worker running");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let changes = leases.tick().await;
        for p in changes.lost {
            if let Some(t) = tasks.remove(&p) {
                t.cancel.cancel();
            }
        }
        for p in changes.surplus {
            // Stop the loop (it finishes the batch in hand), then hand the
            // partition back at once so the other worker can take it on its
            // next tick. A loop still busy (MongoDB down) keeps the lease
            // and is asked again next tick.
            let done = match tasks.get_mut(&p) {
                Some(t) => {
                    t.cancel.cancel();
                    tokio::time::timeout(HANDOFF_WAIT, &mut t.handle).await.is_ok()
                }
                None => true,
            };
            if done {
                tasks.remove(&p);
                leases.release(p).await;
                info!(role, partition = p, "partition handed back");
            }
        }
        // Start gained partitions, and restart any loop that ended on its own
        // (a panic in a handler must not leave a partition unserved).
        let owned: Vec<u32> = leases.owned().collect();
        for p in owned {
            let restart = match tasks.get(&p) {
                None => true,
                Some(t) => t.handle.is_finished() && !t.cancel.is_cancelled(),
            };
            if restart {
                let token = cancel.child_token();
                let fut = partition_loop(
                    handler.clone(),
                    js.clone(),
                    client.clone(),
                    subjects.clone(),
                    p,
                    cfg.clone(),
                    token.clone(),
                )
                .instrument(info_span!("partition", role, p));
                tasks.insert(p, PartitionTask { cancel: token, handle: tokio::spawn(fut) });
                info!(role, partition = p, "partition taken");
            }
        }
    }
    for t in tasks.values() {
        t.cancel.cancel();
    }
    for (_, t) in tasks.drain() {
        let _ = t.handle.await;
    }
    leases.release_all().await;
    info!(role, "worker stopped");
    Ok(())
}

async fn partition_loop<H: Handler>(
    handler: Arc<H>,
    js: jetstream::Context,
    client: async_nats::Client,
    subjects: Subjects,
    p: u32,
    cfg: RunnerConfig,
    cancel: CancellationToken,
) {
    let name = subjects.consumer(H::ROLE.name(), p);
    let consumer: PullConsumer = loop {
        match js.get_consumer_from_stream(&name, H::ROLE.stream(&subjects)).await {
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
    let mut consumer = consumer;
    // The delivery (consumer) sequence of the last message applied here, and
    // messages fetched but held back until what was delivered before them
    // and went astray comes back.
    let mut last_delivery: Option<u64> = None;
    let mut held: Vec<Message> = Vec::new();
    let mut held_since: Option<tokio::time::Instant> = None;
    let mut checked_at: Option<tokio::time::Instant> = None;
    while !cancel.is_cancelled() {
        // Not raced with `cancel`: an abandoned pull request could still be
        // handed a message, which would then wait out its ack deadline while
        // later ones are applied. `fetch_wait` bounds the delay.
        match fetch(&consumer, cfg.batch, cfg.fetch_wait).await {
            Ok(msgs) => held.extend(msgs),
            Err(e) => {
                warn!(error = %e, "fetch failed");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if held.is_empty() {
            continue;
        }
        // Deliveries this loop did not see (a pull reply lost with a NATS
        // node, or the batch a crashed worker had in hand) come back only
        // after the ack wait; applying the later commands first would send
        // their events ahead of the earlier ones', and sockets drop events
        // older than the last they got. So unless the deliveries follow on
        // from the last one, wait (a while at most) until nothing but the
        // held messages is pending, then apply all in stream order.
        // The consumer is asked (and the held messages kept with progress
        // acks) once a second at most, however fast new ones arrive.
        if !follows_on(last_delivery, &held) {
            let now = tokio::time::Instant::now();
            let since = *held_since.get_or_insert(now);
            if now - since < OUTSTANDING_WAIT {
                let due = checked_at.is_none_or(|t| now - t >= Duration::from_secs(1));
                if !due {
                    continue;
                }
                checked_at = Some(now);
                if outstanding(&mut consumer, &held).await {
                    for m in &held {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                    continue;
                }
            } else {
                warn!("earlier deliveries still pending after {OUTSTANDING_WAIT:?}; applying what is in hand");
            }
        }
        (held_since, checked_at) = (None, None);
        let batch = in_stream_order(std::mem::take(&mut held));
        last_delivery = batch.iter().filter_map(|m| m.info().ok().map(|i| i.consumer_sequence)).max();
        process(&*handler, &js, &client, &subjects, batch, &cancel).await;
    }
    for m in &held {
        let _ = m.ack_with(AckKind::Nak(None)).await;
    }
}

/// How long fetched messages are held back waiting for earlier deliveries
/// to come back: twice the first ack wait, after which they are redelivered.
const OUTSTANDING_WAIT: Duration = Duration::from_secs(topology::BACKOFF[0].as_secs() * 2);

/// Whether `msgs` are the deliveries right after `last` and nothing else.
fn follows_on(last: Option<u64>, msgs: &[Message]) -> bool {
    let Some(mut next) = last.map(|l| l + 1) else { return false };
    let mut seqs: Vec<u64> = msgs.iter().filter_map(|m| m.info().ok().map(|i| i.consumer_sequence)).collect();
    if seqs.len() != msgs.len() {
        return false;
    }
    seqs.sort_unstable();
    for s in seqs {
        if s != next {
            return false;
        }
        next += 1;
    }
    true
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

/// How long after its expiry a pull request's reply may still come. A no-wait
/// pull gets its reply at once from a healthy server; one sent through a
/// node that died has none coming (the reply went down with the route), and
/// async-nats waits for a no-wait pull without a deadline of its own.
const PULL_REPLY_GRACE: Duration = Duration::from_secs(5);

/// Takes what is available now, up to `max`; if nothing is, waits up to
/// `wait` for one message and then takes what followed it. Each pull request
/// is complete when this returns, so no message is left delivered to a
/// subscription nobody reads (which would reorder it behind later ones),
/// unless its reply was lost with a NATS node: then it ends `PULL_REPLY_GRACE`
/// later with what arrived, and what went astray is redelivered after the
/// ack wait (applying it late is safe: every write is guarded by seq).
async fn fetch(consumer: &PullConsumer, max: usize, wait: Duration) -> Result<Vec<Message>, String> {
    let now = consumer.fetch().max_messages(max).messages().await.map_err(|e| e.to_string())?;
    let mut out = drain(now, PULL_REPLY_GRACE).await?;
    if out.is_empty() {
        let first = consumer.batch().max_messages(1).expires(wait).messages().await.map_err(|e| e.to_string())?;
        out = drain(first, wait + PULL_REPLY_GRACE).await?;
        if !out.is_empty() && max > 1 {
            let more = consumer.fetch().max_messages(max - 1).messages().await.map_err(|e| e.to_string())?;
            out.extend(drain(more, PULL_REPLY_GRACE).await?);
        }
    }
    Ok(out)
}

/// Collects one pull request's messages until it ends, or until `limit`
/// passes without its end (what arrived is kept; with nothing, an error).
async fn drain<S, E>(mut s: S, limit: Duration) -> Result<Vec<Message>, String>
where
    S: futures::Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut v = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(m))) => v.push(m),
            Ok(Some(Err(e))) if v.is_empty() => return Err(e.to_string()),
            Ok(Some(Err(_)) | None) => break,
            Err(_) if v.is_empty() => return Err(format!("no reply to the pull request in {limit:?}")),
            Err(_) => {
                warn!(received = v.len(), "pull request unfinished after {limit:?}; keeping what arrived");
                break;
            }
        }
    }
    Ok(v)
}

/// Applies one fetched batch and settles every message in it: events and
/// outcome replies published, audit facts stored, poison dead-lettered,
/// then acks.
async fn process<H: Handler>(
    handler: &H,
    js: &jetstream::Context,
    client: &async_nats::Client,
    subjects: &Subjects,
    msgs: Vec<Message>,
    cancel: &CancellationToken,
) {
    let span = info_span!("batch", size = msgs.len());
    async {
        // Decode; what cannot be decoded, or keeps coming back, is poison.
        let mut incoming: Vec<Incoming<H::Msg>> = Vec::with_capacity(msgs.len());
        let mut slots: Vec<Result<usize, String>> = Vec::with_capacity(msgs.len());
        for m in &msgs {
            let Ok(info) = m.info() else {
                slots.push(Err("message without JetStream metadata".into()));
                continue;
            };
            if info.delivered >= topology::MAX_DELIVER {
                slots.push(Err(format!("delivered {} times without being applied", info.delivered)));
                continue;
            }
            match serde_json::from_slice::<H::Msg>(&m.payload) {
                Ok(msg) => match msg.check_version() {
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
                },
                Err(e) => slots.push(Err(format!("undecodable: {e}"))),
            }
        }

        let mut done = Done::new();
        let settled = incoming.is_empty()
            || crate::handler::settle(handler, &incoming, &mut done, |attempt| {
                let msgs = &msgs;
                async move {
                    for m in msgs {
                        let _ = m.ack_with(AckKind::Progress).await;
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => false,
                        _ = tokio::time::sleep(backoff(attempt)) => true,
                    }
                }
            })
            .await;
        if !settled {
            for m in &msgs {
                let _ = m.ack_with(AckKind::Nak(None)).await;
            }
            return;
        }

        let mut publications: Vec<Publication> = Vec::new();
        let mut facts: Vec<ToStore> = Vec::new();
        let mut terminal: Vec<bool> = vec![false; msgs.len()];
        for (i, (m, slot)) in msgs.iter().zip(&slots).enumerate() {
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let (status, reason, code, inc) = match slot {
                Err(reason) => {
                    dead_letter(js, subjects, H::ROLE.name(), m, reason).await;
                    terminal[i] = true;
                    ("dead_lettered", Some(reason.clone()), None, None)
                }
                Ok(k) => {
                    let inc = &incoming[*k];
                    match done.remove(&inc.seq).unwrap_or(Disposition::Poison("not handled by this role".into())) {
                        Disposition::Applied(pubs) => {
                            publications.extend(pubs);
                            ("applied", None, None, Some(inc))
                        }
                        Disposition::Refused { code, reason, events } => {
                            info!(seq = inc.seq, %reason, "command refused");
                            publications.extend(events);
                            ("refused", Some(reason), Some(code), Some(inc))
                        }
                        Disposition::Poison(reason) => {
                            dead_letter(js, subjects, H::ROLE.name(), m, &reason).await;
                            terminal[i] = true;
                            ("dead_lettered", Some(reason), None, Some(inc))
                        }
                        Disposition::NotMine => continue,
                    }
                }
            };
            if let Some(r) = inc.and_then(|inc| inc.msg.reply()) {
                let o = Outcome {
                    status: if status == "applied" { OutcomeStatus::Applied } else { OutcomeStatus::Refused },
                    seq,
                    reason: reason.clone(),
                    code,
                };
                if let Ok(body) = serde_json::to_vec(&o) {
                    publications.push(Publication { subject: r.to_string(), payload: body.into() });
                }
            }
            if <H::Msg as crate::handler::Input>::AUDITED {
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
                let fact = audit_fact(H::ROLE.name(), seq, time, env, status, reason, code);
                if let Ok(body) = serde_json::to_vec(&fact) {
                    facts.push(ToStore {
                        subject: subjects.outcome(H::ROLE.name()),
                        payload: body.into(),
                        msg_id: Some(format!("out:{seq}")),
                    });
                }
            }
        }
        store(js, "audit fact", facts).await;
        // Events are stored (PubAck) before the commands are acked, so a
        // NATS node dying now loses none: live sockets get them through the
        // publish, reconnecting ones from the events stream. Replies to
        // waiting REST calls are plain core messages.
        let (events, replies): (Vec<Publication>, Vec<Publication>) =
            publications.into_iter().partition(|p| subjects.is_stored_event(&p.subject));
        let events = events.into_iter().map(|p| ToStore { subject: p.subject, payload: p.payload, msg_id: None });
        store(js, "event", events.collect()).await;
        for p in replies {
            if let Err(e) = client.publish(p.subject, p.payload).await {
                warn!(error = %e, "reply publish failed");
            }
        }
        let _ = client.flush().await;
        for (m, term) in msgs.iter().zip(terminal) {
            let kind = if term { AckKind::Term } else { AckKind::Ack };
            if let Err(e) = m.ack_with(kind).await {
                warn!(error = %e, "ack failed; the command will be redelivered and found applied");
            }
        }
        let _ = client.flush().await;
    }
    .instrument(span)
    .await
}

/// The pause before retry `attempt`: doubling from 200 ms, at most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64 << attempt.min(6)).min(Duration::from_secs(5))
}

fn audit_fact(
    role: &str,
    seq: u64,
    time_ms: i64,
    env: Option<&CommandEnvelope>,
    status: &str,
    reason: Option<String>,
    code: Option<natter_shared::v1::error::ErrorCode>,
) -> AuditFact {
    AuditFact {
        v: 1,
        seq,
        time_ms,
        role: role.to_string(),
        action: env.map(|e| e.command.action()).unwrap_or("unknown").to_string(),
        actor: env.map(|e| e.actor),
        roles: env.map(|e| e.roles.clone()).unwrap_or_default(),
        room: env.and_then(|e| e.command.room().ok()).map(|r| RoomFields::of(&r)).unwrap_or_default(),
        targets: env.map(|e| e.command.targets()).unwrap_or_default(),
        status: status.to_string(),
        reason,
        code,
        meta: env.and_then(|e| e.meta.as_ref()).map(|m| m.to_map()).unwrap_or_default(),
    }
}

/// A message for a stream, with its `Nats-Msg-Id` when it has one.
struct ToStore {
    subject: String,
    payload: bytes::Bytes,
    msg_id: Option<String>,
}

/// Stores messages in their streams before the batch is acked: publishes
/// them pipelined and waits for every PubAck; from the first that fails on,
/// they are published again one by one, in order (a subject's events must
/// stay in seq order; edges drop repeated events by `seq`, and a repeated
/// audit fact is deduplicated by its id).
async fn store(js: &jetstream::Context, what: &str, items: Vec<ToStore>) {
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

/// Copies a command to the dead-letter stream with its reason, waiting for
/// the PubAck so nothing is terminated before it is kept.
async fn dead_letter(js: &jetstream::Context, subjects: &Subjects, role: &str, m: &Message, reason: &str) {
    let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
    warn!(seq, %reason, "dead-lettering command");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DLQ_REASON, reason);
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
