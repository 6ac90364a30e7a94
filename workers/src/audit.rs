//! The `audit` role: one tamper-evident record per command. It consumes the
//! outcomes stream (one partition, so one worker at a time extends the one
//! chain, in that stream's order) and appends a record per fact whose hash
//! covers the previous record's. The worker holding the chain keeps its
//! head in memory and appends a batch as one page (`audit::trail`); pages
//! are keyed by the chain position they start at, so a second writer's
//! append collides and it reads the head again. A fact seen again (a
//! redelivery: its position is at or below the head; or a command's fact
//! published twice) adds nothing.

use crate::handler::{ApplyError, Disposition, Done, Handler, Incoming};
use crate::runner::RunnerConfig;
use crate::start::{self, StartError};
use natter_nats::topology::Role;
use natter_shared::audit::{self, AuditFact, AuditPage, AuditRecord, GENESIS};
use natter_shared::config::CoreConfig;
use natter_shared::store::Store;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub struct AuditHandler {
    store: Store,
    /// Where the chain's head is recorded, outside MongoDB (not when
    /// replaying into another database).
    heads: Option<async_nats::jetstream::kv::Store>,
}

/// The key of the head in the bucket.
pub const HEAD_KEY: &str = "head";

impl AuditHandler {
    pub fn new(store: Store, heads: Option<async_nats::jetstream::kv::Store>) -> Self {
        AuditHandler { store, heads }
    }

    /// Records the head after `page` in the bucket, unless the bucket holds
    /// a later one (a racing writer's): the recorded head only moves on.
    async fn advance_head(&self, page: &AuditPage) -> Result<(), ApplyError> {
        let Some(heads) = &self.heads else { return Ok(()) };
        let Some(last) = page.records.last() else { return Ok(()) };
        let head = audit::Head { chain_seq: last.chain_seq, hash: last.hash.clone(), covered: page.last };
        let body: bytes::Bytes = serde_json::to_vec(&head).map_err(|e| ApplyError::transient(e.to_string()))?.into();
        let err = |e: &dyn std::fmt::Display| ApplyError::transient(format!("audit head: {e}"));
        for _ in 0..5 {
            let current = heads.entry(HEAD_KEY).await.map_err(|e| err(&e))?;
            let written = match current {
                Some(c) if c.operation == async_nats::jetstream::kv::Operation::Put => {
                    let known = serde_json::from_slice::<audit::Head>(&c.value).ok();
                    if known.is_some_and(|k| k.position() >= head.position()) {
                        return Ok(());
                    }
                    heads.update(HEAD_KEY, body.clone(), c.revision).await.is_ok()
                }
                _ => heads.create(HEAD_KEY, body.clone()).await.is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        Err(err(&"the recorded head keeps changing"))
    }

    /// After an append collided at `first`: if the page there follows the
    /// head this worker holds (its own earlier append, or a racing
    /// writer's), the recorded head moves past it. One that does not follow
    /// was not written by an audit worker; it is reported, not adopted.
    async fn adopt(
        &self,
        coll: &mongodb::Collection<AuditPage>,
        first: i64,
        head_hash: &str,
    ) -> Result<(), ApplyError> {
        let Some(page) = coll.find_one(mongodb::bson::doc! {"_id": first}).await? else { return Ok(()) };
        let mut prev = head_hash.to_string();
        for r in &page.records {
            if r.prev_hash != prev || r.compute_hash() != r.hash {
                tracing::error!(position = first, "a page in the audit trail does not follow the recorded head");
                return Ok(());
            }
            prev.clone_from(&r.hash);
        }
        self.advance_head(&page).await
    }

    /// Where the chain goes on from: the head recorded outside MongoDB, so
    /// that a page slipped into the trail (say, one far ahead) neither
    /// moves the chain nor makes it skip facts; MongoDB's newest page only
    /// when no head is recorded (a replay into another database, or a
    /// trail from before heads were recorded).
    async fn recorded_head(&self, coll: &mongodb::Collection<AuditPage>) -> Result<(i64, String), ApplyError> {
        if let Some(heads) = &self.heads {
            let entry = heads.get(HEAD_KEY).await.map_err(|e| ApplyError::transient(format!("audit head: {e}")))?;
            if let Some(h) = entry.and_then(|b| serde_json::from_slice::<audit::Head>(&b).ok()) {
                return Ok((h.position(), h.hash));
            }
        }
        Ok(audit::head(coll).await?.unwrap_or((0, GENESIS.to_string())))
    }
}

/// The chain as the worker holding it knows it.
#[derive(Default)]
pub struct Chain {
    /// The last chain position and the hash of the last record; read from
    /// MongoDB when the worker takes the chain and after a failed append.
    head: Option<(i64, String)>,
    /// Commands recorded lately, newest last: a command's fact published
    /// twice (beyond the outcomes stream's dedupe window) gets one record.
    recent: VecDeque<i64>,
    recorded: HashSet<i64>,
}

/// Commands whose records the chain remembers, to skip a repeated fact.
const RECENT: usize = 100_000;

impl Chain {
    fn remember(&mut self, seq: i64) {
        if self.recorded.insert(seq) {
            self.recent.push_back(seq);
        }
        while self.recent.len() > RECENT {
            if let Some(old) = self.recent.pop_front() {
                self.recorded.remove(&old);
            }
        }
    }
}

impl Handler for AuditHandler {
    const ROLE: Role = Role::AUDIT;
    type Msg = AuditFact;
    type State = Chain;
    /// A page is written as it is applied.
    type Writes = ();
    /// Nobody waits on the trail: collect facts for a while, append them
    /// as one page.
    const LINGER: Duration = Duration::from_millis(250);

    async fn apply(&self, chain: &mut Chain, batch: &[Incoming<AuditFact>], done: &mut Done) -> Result<(), ApplyError> {
        let coll = self.store.audit();
        let (head_pos, head_hash) = match chain.head.take() {
            Some(h) => h,
            None => self.recorded_head(&coll).await?,
        };
        let (mut pos, mut hash) = (head_pos, head_hash.clone());
        let mut records: Vec<AuditRecord> = Vec::new();
        let mut commands: HashSet<i64> = HashSet::new();
        let mut attempt = Done::new();
        for inc in batch {
            if done.contains_key(&inc.seq) {
                continue;
            }
            // Positions up to the head are recorded (a redelivery).
            if inc.seq as i64 > pos {
                pos = inc.seq as i64;
                let command = inc.msg.seq as i64;
                // A read the edge audited names no command: nothing to repeat.
                let fresh = command == 0 || (!chain.recorded.contains(&command) && commands.insert(command));
                if fresh {
                    let record = AuditRecord::from_fact(&inc.msg, inc.seq, &hash);
                    hash.clone_from(&record.hash);
                    records.push(record);
                }
            }
            attempt.insert(inc.seq, Disposition::Applied(vec![]));
        }
        // Without a record to store, the next page starts where this one
        // would have: pages stay contiguous.
        let wrote = !records.is_empty();
        if wrote {
            let page = AuditPage::new(head_pos + 1, pos, records);
            natter_shared::store::round_trip("audit_insert");
            if let Err(e) = coll.insert_one(&page).await {
                if !crate::handler::is_duplicate(&e) {
                    return Err(e.into());
                }
                // Another writer extended the chain from this head, or this
                // worker did before its head reached the bucket: the head
                // moves past that page (when it follows), and is read again
                // (its facts are then found recorded).
                self.adopt(&coll, head_pos + 1, &head_hash).await?;
                return Err(ApplyError::transient(format!("audit chain moved: {e}")));
            }
            for r in page.records.iter().filter(|r| r.seq > 0) {
                chain.remember(r.seq);
            }
            self.advance_head(&page).await?;
        }
        chain.head = Some(if wrote { (pos, hash) } else { (head_pos, head_hash) });
        done.extend(attempt);
        Ok(())
    }

    fn take(&self, _: &mut Chain) {}

    async fn write(&self, _: ()) -> Result<(), ApplyError> {
        Ok(())
    }

    fn written(&self, chain: &mut Chain, ok: bool) {
        if !ok {
            chain.head = None;
        }
    }
}

/// Connects, applies topology and indexes, and runs the role until `cancel`.
pub async fn serve(core: &CoreConfig, cfg: RunnerConfig, cancel: CancellationToken) -> Result<(), StartError> {
    start::serve(core, cfg, cancel, async |c| {
        let heads =
            c.js.get_key_value(c.subjects.audit_head_bucket()).await.map_err(|e| StartError::Nats(e.to_string()))?;
        Ok(AuditHandler::new(c.store.clone(), Some(heads)))
    })
    .await
}
