//! A partition's batches between being applied and being acked. Applied
//! batches' writes gather (`Handler::WRITE_BEHIND`) and are written in the
//! background, one write at a time, while later batches are applied and
//! announced; a write that ends well finishes its batches (acks), one that
//! fails has them, and everything applied since, applied again from what
//! the database holds. Under load the writes grow by themselves: while one
//! is in flight, the next gathers everything that arrives.

use super::batch::{Batch, backoff};
use super::partition::Partition;
use crate::handler::{ApplyError, Handler, Incoming, settle};
use async_nats::jetstream::{AckKind, Message};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Most commands applied but not yet taken: a write starts at once past it.
const GATHER_AT: usize = natter_nats::topology::MAX_BATCH;
/// Most commands in hand (applied, not yet acked): past it the loop waits
/// for the write in flight before fetching more, well below the consumer's
/// `max_ack_pending` (at which the server stops delivering, and pulls
/// stall until deliveries time out).
const IN_HAND_AT: usize = natter_nats::topology::MAX_ACK_PENDING / 4;
/// How often messages in hand are kept from redelivery while they are
/// applied again (well inside the first ack wait).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// While a write is in flight, how long a fetch waits for messages (the
/// loop notices the write's end between fetches).
const WHILE_WRITING: Duration = Duration::from_millis(10);

/// The shortest wait for a fetch.
const SOON: Duration = Duration::from_millis(1);

/// When writes opened at `since` fall due: the first multiple of `every`
/// after it, counted from one moment for the whole process, so that all
/// partitions' writes fall due together and a role can send them as one.
fn due_at(since: Instant, every: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    if every.is_zero() || since < epoch {
        return since + every;
    }
    let n = (since - epoch).as_nanos() / every.as_nanos() + 1;
    epoch + Duration::from_nanos(u64::try_from(n * every.as_nanos()).unwrap_or(u64::MAX))
}

type Write = JoinHandle<Result<(), ApplyError>>;

/// Withdrawals of dead-lettered commands are published as parts of the
/// last recovered command's seq from here on (past any event's own parts).
const WITHDRAWAL_PART: u32 = 1000;

pub(super) struct Flow<H: Handler> {
    handler: Arc<H>,
    /// Applied and announced, writes staged in the state, not yet taken.
    open: Vec<Batch<H::Msg>>,
    /// When the open batches' writes fall due (see `due_at`).
    due: Option<Instant>,
    /// The write in flight and the batches it finishes.
    writing: Option<(Vec<Batch<H::Msg>>, Write)>,
    /// When the messages in hand were last kept from redelivery.
    kept: Instant,
}

impl<H: Handler> Flow<H> {
    pub fn new(handler: Arc<H>) -> Self {
        Flow { handler, open: Vec::new(), due: None, writing: None, kept: Instant::now() }
    }

    /// How long the next fetch may wait for messages.
    pub fn fetch_wait(&self, idle: Duration) -> Duration {
        if self.writing.is_some() {
            return WHILE_WRITING;
        }
        match self.due {
            Some(due) => due.saturating_duration_since(Instant::now()).clamp(SOON, idle),
            None => idle,
        }
    }

    /// Applies a fetched batch and announces its events.
    pub async fn apply(
        &mut self,
        state: &mut H::State,
        part: &Partition,
        msgs: Vec<Message>,
        cancel: &CancellationToken,
    ) {
        let role = H::ROLE.name();
        metrics::histogram!("natter_batch_size", "role" => role).record(msgs.len() as f64);
        let started = std::time::Instant::now();
        let mut batch = Batch::<H::Msg>::decode(msgs);
        let applied = if batch.incoming.is_empty() {
            Ok(())
        } else {
            crate::handler::apply_own(&*self.handler, state, &batch.incoming, &mut batch.done).await
        };
        metrics::histogram!("natter_apply_seconds", "role" => role).record(started.elapsed().as_secs_f64());
        match applied {
            Ok(()) => {
                batch.announce(part).await;
                if self.due.is_none() {
                    self.due = Some(due_at(Instant::now(), self.handler.write_behind(state)));
                }
                self.open.push(batch);
            }
            Err(e) => {
                warn!(error = %e, "apply failed; applying again from the database");
                // What is in flight ends first: its outcome says what the
                // database holds.
                self.open.push(batch);
                let again = self.land(state, part).await;
                self.retry_everything(state, part, again, cancel).await;
            }
        }
        if H::WRITE_BEHIND.is_zero() {
            self.flush(state, part, cancel).await;
        }
    }

    /// Finishes the write in flight if it has ended, and starts the next
    /// when one is due.
    pub async fn advance(&mut self, state: &mut H::State, part: &Partition, cancel: &CancellationToken) {
        // Applied but not yet written: still ours (the database may be
        // slower than the stream for a while).
        if self.kept.elapsed() >= PROGRESS_EVERY {
            self.kept = Instant::now();
            let writing = self.writing.iter().flat_map(|(b, _)| b.iter());
            for m in writing.chain(self.open.iter()).flat_map(|b| b.msgs.iter()) {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        }
        if self.writing.as_ref().is_some_and(|(_, w)| w.is_finished()) || self.in_hand() >= IN_HAND_AT {
            self.land_or_retry(state, part, cancel).await;
        }
        if self.writing.is_none() && self.due() {
            let writes = self.handler.take(state);
            let handler = self.handler.clone();
            let write = tokio::spawn(async move { handler.write(writes).await });
            self.writing = Some((std::mem::take(&mut self.open), write));
            self.due = None;
        }
    }

    /// Writes and finishes everything in hand (on shutdown, or at once for
    /// roles without write-behind).
    pub async fn flush(&mut self, state: &mut H::State, part: &Partition, cancel: &CancellationToken) {
        self.land_or_retry(state, part, cancel).await;
        if self.open.is_empty() {
            return;
        }
        let result = self.handler.write(self.handler.take(state)).await;
        self.handler.written(state, result.is_ok());
        let batches = std::mem::take(&mut self.open);
        self.due = None;
        match result {
            Ok(()) => {
                for b in batches {
                    b.finish(H::ROLE.name(), part).await;
                }
            }
            Err(e) => {
                warn!(error = %e, "write failed; applying again from the database");
                self.recover(state, part, batches, cancel).await;
            }
        }
    }

    /// Commands applied and not yet acked.
    fn in_hand(&self) -> usize {
        let writing = self.writing.iter().flat_map(|(b, _)| b.iter());
        writing.chain(self.open.iter()).map(|b| b.msgs.len()).sum()
    }

    fn due(&self) -> bool {
        !self.open.is_empty()
            && (self.due.is_some_and(|due| Instant::now() >= due)
                || self.open.iter().map(|b| b.msgs.len()).sum::<usize>() >= GATHER_AT
                || self.open.iter().any(Batch::awaited))
    }

    /// Waits for the write in flight and tells the state how it went;
    /// finishes its batches if it went through, else returns them.
    async fn land(&mut self, state: &mut H::State, part: &Partition) -> Vec<Batch<H::Msg>> {
        let Some((batches, write)) = self.writing.take() else { return Vec::new() };
        let result = match write.await {
            Ok(r) => r,
            Err(e) => Err(ApplyError::transient(format!("write task: {e}"))),
        };
        self.handler.written(state, result.is_ok());
        match result {
            Ok(()) => {
                for b in batches {
                    b.finish(H::ROLE.name(), part).await;
                }
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, "write failed; applying again from the database");
                batches
            }
        }
    }

    /// Waits for the write in flight; if it failed, it and everything
    /// applied since are applied again.
    async fn land_or_retry(&mut self, state: &mut H::State, part: &Partition, cancel: &CancellationToken) {
        let again = self.land(state, part).await;
        if !again.is_empty() {
            self.retry_everything(state, part, again, cancel).await;
        }
    }

    /// After a failed write: it and everything applied since are applied
    /// again (the state forgot them).
    async fn retry_everything(
        &mut self,
        state: &mut H::State,
        part: &Partition,
        mut again: Vec<Batch<H::Msg>>,
        cancel: &CancellationToken,
    ) {
        self.handler.written(state, false);
        again.append(&mut self.open);
        self.due = None;
        self.recover(state, part, again, cancel).await;
    }

    /// Applies and writes `batches` together until they go through (nothing
    /// else in flight), then finishes them; on shutdown gives them back.
    async fn recover(
        &mut self,
        state: &mut H::State,
        part: &Partition,
        mut batches: Vec<Batch<H::Msg>>,
        cancel: &CancellationToken,
    ) {
        let commands: Vec<Incoming<H::Msg>> = batches.iter().flat_map(|b| b.incoming.iter().cloned()).collect();
        let msgs: Vec<&Message> = batches.iter().flat_map(|b| b.msgs.iter()).collect();
        let progress = async || {
            for m in &msgs {
                let _ = m.ack_with(AckKind::Progress).await;
            }
        };
        let settled = {
            let work = settle(&*self.handler, state, &commands, |attempt| async move {
                progress().await;
                tokio::select! {
                    _ = cancel.cancelled() => false,
                    _ = tokio::time::sleep(backoff(attempt)) => true,
                }
            });
            tokio::pin!(work);
            let mut beat = tokio::time::interval_at(Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                tokio::select! {
                    settled = &mut work => break settled,
                    _ = beat.tick() => progress().await,
                }
            }
        };
        match settled {
            Some(mut done) => {
                // Withdrawals follow every event clients may have got.
                let last = commands.iter().map(|c| c.seq).max().unwrap_or(0);
                let mut withdrawn = Vec::new();
                for b in &mut batches {
                    for inc in b.reset(&mut done) {
                        let part = WITHDRAWAL_PART + withdrawn.len() as u32;
                        withdrawn.extend(self.handler.withdraw(inc, last, part));
                    }
                }
                for b in batches {
                    b.finish(H::ROLE.name(), part).await;
                }
                if !withdrawn.is_empty() {
                    warn!(count = withdrawn.len(), "withdrawing commands clients saw that were dead-lettered");
                    super::publish::store(&part.js, "withdrawal", withdrawn.into_iter().map(Into::into).collect())
                        .await;
                }
            }
            None => {
                for b in batches {
                    b.nak().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_opened_at_different_moments_fall_due_together() {
        let every = Duration::from_millis(250);
        due_at(Instant::now(), every);
        let a = Instant::now();
        let due = due_at(a, every);
        assert!(due > a && due - a <= every);
        // Opened later in the same step of the clock: due at the same moment.
        let b = due - Duration::from_millis(1);
        assert_eq!(due_at(b.max(a), every), due);
        // Opened on the next step of the clock: due one step later.
        assert_eq!(due_at(due, every), due + every);
    }
}
