//! The `audit` role: one tamper-evident record per command. It consumes the
//! outcomes stream (one partition, so one worker at a time extends the one
//! chain, in that stream's order) and appends a record per fact whose hash
//! covers the previous record's. A fact seen again (redelivery, or a
//! duplicate publish) finds its record and adds nothing.

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

impl Handler for AuditHandler {
    const ROLE: Role = Role::Audit;
    type Msg = AuditFact;

    async fn apply(&self, batch: &[Incoming<AuditFact>], done: &mut Done) -> Result<(), ApplyError> {
        let coll = self.store.audit();
        let seqs: Vec<i64> = batch.iter().map(|i| i.msg.seq as i64).collect();
        let mut known: HashSet<i64> = coll
            .find(doc! {"_id": {"$in": &seqs}})
            .await?
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .map(|r| r.seq)
            .collect();
        let head = coll.find_one(doc! {}).sort(doc! {"chainSeq": -1}).await?;
        let (mut head_seq, mut head_hash) = head.map(|r| (r.chain_seq, r.hash)).unwrap_or((0, GENESIS.to_string()));
        for inc in batch {
            if done.contains_key(&inc.seq) {
                continue;
            }
            let fact = &inc.msg;
            if known.contains(&(fact.seq as i64)) || inc.seq as i64 <= head_seq {
                done.insert(inc.seq, Disposition::Applied(vec![]));
                continue;
            }
            let record = AuditRecord::from_fact(fact, inc.seq, &head_hash);
            if let Err(e) = coll.insert_one(&record).await {
                // Another writer extended the chain (or wrote this record):
                // retry the batch against the new head.
                return Err(ApplyError::transient(format!("audit chain moved: {e}")));
            }
            head_seq = record.chain_seq;
            head_hash = record.hash.clone();
            known.insert(record.seq);
            done.insert(inc.seq, Disposition::Applied(vec![]));
        }
        if let (true, Some(heads)) = (head_seq > 0, &self.heads) {
            let head = natter_shared::audit::Head { chain_seq: head_seq, hash: head_hash };
            let body = serde_json::to_vec(&head).map_err(|e| ApplyError::transient(e.to_string()))?;
            heads.put(HEAD_KEY, body.into()).await.map_err(|e| ApplyError::transient(format!("audit head: {e}")))?;
        }
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
