//! The `audit` role: one tamper-evident record per command. It consumes the
//! outcomes stream (one partition, so one worker at a time extends the one
//! chain, in that stream's order) and appends a record per fact whose hash
//! covers the previous record's. The worker holding the chain keeps its
//! head in memory and appends a batch with one insert; a unique index on
//! `chainSeq` makes a fork impossible (a second writer's insert fails, it
//! reads the head again and finds the facts recorded). A fact seen again
//! (redelivery, or a duplicate publish) finds its record and adds nothing.

use crate::handler::{ApplyError, Disposition, Done, Handler, Incoming};
use crate::runner::{self, RunnerConfig};
use crate::start::{self, StartError};
use futures::TryStreamExt;
use mongodb::bson::doc;
use natter_nats::topology::Role;
use natter_shared::audit::{AuditFact, AuditRecord, GENESIS};
use natter_shared::config::CoreConfig;
use natter_shared::store::Store;
use std::collections::HashSet;
use std::sync::Arc;
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
}

/// The chain as the worker holding it knows it.
#[derive(Default)]
pub struct Chain {
    /// `chainSeq` and hash of the last record; read from MongoDB when the
    /// worker takes the chain and after a failed append.
    head: Option<(i64, String)>,
}

impl Handler for AuditHandler {
    const ROLE: Role = Role::Audit;
    type Msg = AuditFact;
    type State = Chain;
    /// Nobody waits on the trail: collect facts for a while, append them
    /// with one insert.
    const LINGER: Duration = Duration::from_millis(250);

    async fn apply(&self, chain: &mut Chain, batch: &[Incoming<AuditFact>], done: &mut Done) -> Result<(), ApplyError> {
        let coll = self.store.audit();
        // Taking the chain (or after a failure): where it ends, and which
        // of these facts are recorded already.
        let mut known: HashSet<i64> = HashSet::new();
        let (mut head_seq, mut head_hash) = match chain.head.take() {
            Some(h) => h,
            None => {
                let seqs: Vec<i64> = batch.iter().map(|i| i.msg.seq as i64).collect();
                let raw = coll.clone_with_type::<mongodb::bson::Document>();
                let mut cur = raw.find(doc! {"_id": {"$in": &seqs}}).projection(doc! {"_id": 1}).await?;
                while let Some(r) = cur.try_next().await? {
                    known.insert(r.get_i64("_id").unwrap_or_default());
                }
                let head = coll.find_one(doc! {}).sort(doc! {"chainSeq": -1}).await?;
                head.map(|r| (r.chain_seq, r.hash)).unwrap_or((0, GENESIS.to_string()))
            }
        };
        let mut records = Vec::new();
        let mut attempt = Done::new();
        for inc in batch {
            if done.contains_key(&inc.seq) {
                continue;
            }
            let fact = &inc.msg;
            if !known.contains(&(fact.seq as i64)) && inc.seq as i64 > head_seq {
                let record = AuditRecord::from_fact(fact, inc.seq, &head_hash);
                head_seq = record.chain_seq;
                head_hash = record.hash.clone();
                known.insert(record.seq);
                records.push(record);
            }
            attempt.insert(inc.seq, Disposition::Applied(vec![]));
        }
        if !records.is_empty() {
            // Ordered: what precedes a failure is stored, and the retry
            // reads the head again.
            if let Err(e) = coll.insert_many(&records).ordered(true).await {
                let duplicate = matches!(*e.kind, mongodb::error::ErrorKind::InsertMany(ref ime)
                    if ime.write_errors.iter().flatten().any(|w| w.code == 11000));
                return Err(if duplicate {
                    // Another writer extended the chain, or a fact was
                    // recorded under another outcome: read the head again.
                    ApplyError::transient(format!("audit chain moved: {e}"))
                } else {
                    e.into()
                });
            }
        }
        if let (true, Some(heads)) = (!records.is_empty(), &self.heads) {
            let head = natter_shared::audit::Head { chain_seq: head_seq, hash: head_hash.clone() };
            let body = serde_json::to_vec(&head).map_err(|e| ApplyError::transient(e.to_string()))?;
            heads.put(HEAD_KEY, body.into()).await.map_err(|e| ApplyError::transient(format!("audit head: {e}")))?;
        }
        chain.head = Some((head_seq, head_hash));
        done.extend(attempt);
        Ok(())
    }
}

/// Connects, applies topology and indexes, and runs the role until `cancel`.
pub async fn serve(core: &CoreConfig, cfg: RunnerConfig, cancel: CancellationToken) -> Result<(), StartError> {
    let c = start::connect(core, "audit", &cfg).await?;
    let heads =
        c.js.get_key_value(c.subjects.audit_head_bucket()).await.map_err(|e| StartError::Nats(e.to_string()))?;
    runner::run(Arc::new(AuditHandler::new(c.store, Some(heads))), c.client, c.subjects, cfg, cancel).await?;
    Ok(())
}
