//! Partition leases in a KV bucket with a TTL. A worker instance claims
//! partitions up to its fair share (partitions / live instances), renews them
//! while alive, and hands extras back when more instances join. A dead
//! instance's leases expire and are taken over.

use async_nats::jetstream::kv::Store;
use futures::TryStreamExt;
use natter_nats::Subjects;
use std::collections::BTreeMap;

/// How often leases are renewed and rebalanced.
pub const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a lease is kept through failed renewals (the bucket electing a
/// leader, a NATS node restarting): well inside the lease TTL, counted from
/// the last renewal that succeeded, so nobody else can have taken it yet.
const KEEP_THROUGH_FAILURES: std::time::Duration =
    natter_nats::topology::LEASE_TTL.saturating_sub(std::time::Duration::from_secs(4));

pub struct Leases {
    kv: Store,
    subjects: Subjects,
    role: &'static str,
    instance: String,
    partitions: u32,
    /// Partition → revision of our lease entry and when it was last renewed.
    owned: BTreeMap<u32, (u64, std::time::Instant)>,
}

/// What changed in one tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub gained: Vec<u32>,
    pub lost: Vec<u32>,
    /// Partitions to stop and then `release`.
    pub surplus: Vec<u32>,
}

impl Leases {
    pub fn new(kv: Store, subjects: Subjects, role: &'static str, instance: String, partitions: u32) -> Self {
        Leases { kv, subjects, role, instance, partitions, owned: BTreeMap::new() }
    }

    pub fn owned(&self) -> impl Iterator<Item = u32> + '_ {
        self.owned.keys().copied()
    }

    /// Renews what we hold, then claims or gives back to reach the fair share.
    pub async fn tick(&mut self) -> Changes {
        let mut changes = Changes::default();
        let me = self.subjects.member_key(self.role, &self.instance);
        if let Err(e) = self.kv.put(&me, self.instance.clone().into()).await {
            tracing::warn!(error = %e, "cannot announce worker liveness");
        }
        let live = self.live_members().await.max(1);
        let target = self.partitions.div_ceil(live as u32) as usize;

        for (p, (rev, renewed)) in std::mem::take(&mut self.owned) {
            let key = self.subjects.lease_key(self.role, p);
            match self.kv.update(&key, self.instance.clone().into(), rev).await {
                Ok(new_rev) => {
                    self.owned.insert(p, (new_rev, std::time::Instant::now()));
                }
                // Someone else's now (ours expired and was taken).
                Err(e) if e.kind() == async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision => {
                    tracing::warn!(partition = p, error = %e, "lease lost");
                    changes.lost.push(p);
                }
                // The bucket cannot answer now: ours for a while yet.
                Err(e) if renewed.elapsed() < KEEP_THROUGH_FAILURES => {
                    tracing::warn!(partition = p, error = %e, "lease not renewed; keeping it for now");
                    self.owned.insert(p, (rev, renewed));
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "lease not renewed in time; giving it up");
                    changes.lost.push(p);
                }
            }
        }
        if self.owned.len() > target {
            changes.surplus = self.owned.keys().rev().take(self.owned.len() - target).copied().collect();
        } else {
            for p in 0..self.partitions {
                if self.owned.len() >= target {
                    break;
                }
                if self.owned.contains_key(&p) {
                    continue;
                }
                let key = self.subjects.lease_key(self.role, p);
                if let Ok(rev) = self.kv.create(&key, self.instance.clone().into()).await {
                    self.owned.insert(p, (rev, std::time::Instant::now()));
                    changes.gained.push(p);
                }
            }
        }
        changes
    }

    /// Gives a partition back (after its task has stopped).
    pub async fn release(&mut self, p: u32) {
        if let Some((rev, _)) = self.owned.remove(&p) {
            let key = self.subjects.lease_key(self.role, p);
            if let Err(e) = self.kv.purge_expect_revision(&key, Some(rev)).await {
                tracing::warn!(partition = p, error = %e, "cannot release lease; it will expire");
            }
        }
    }

    /// Gives everything back, on shutdown.
    pub async fn release_all(&mut self) {
        let parts: Vec<u32> = self.owned.keys().copied().collect();
        for p in parts {
            self.release(p).await;
        }
        let me = self.subjects.member_key(self.role, &self.instance);
        let _ = self.kv.purge(&me).await;
    }

    async fn live_members(&self) -> usize {
        let prefix = self.subjects.member_prefix(self.role);
        match self.kv.keys().await {
            Ok(keys) => keys
                .try_filter(|k| futures::future::ready(k.starts_with(&prefix)))
                .try_collect::<Vec<_>>()
                .await
                .map(|v| v.len())
                .unwrap_or(1),
            Err(_) => 1,
        }
    }
}
