//! Partition leases in a KV bucket with a TTL. A worker instance announces
//! itself with a liveness key, claims partitions up to its fair share
//! (partitions / live instances), renews what it holds, and hands extras
//! back when more instances join. It watches the bucket, so a joining
//! worker, a handed-back partition or an expired lease (the server leaves a
//! marker when a key expires) is acted on at once, not at the next tick.

use async_nats::jetstream::kv::{Operation, Store, UpdateErrorKind, Watch};
use futures::StreamExt;
use natter_nats::{LeaseKey, Subjects};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How often leases and the liveness key are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long a lease is kept through failed renewals (the bucket electing a
/// leader, a NATS node restarting): inside the lease TTL, counted from the
/// last renewal that succeeded, so nobody else can have taken it yet.
const KEEP_THROUGH_FAILURES: Duration = natter_nats::topology::LEASE_TTL.saturating_sub(Duration::from_secs(1));

pub struct Leases {
    kv: Store,
    subjects: Subjects,
    role: &'static str,
    instance: String,
    partitions: u32,
    /// Partition → revision of our lease entry and when it was last renewed.
    owned: BTreeMap<u32, (u64, Instant)>,
    view: View,
    watch: Option<Watch>,
}

/// The bucket as the watch last showed it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View {
    /// Live instances of the role.
    pub members: BTreeSet<String>,
    /// Who holds each held partition.
    pub holders: BTreeMap<u32, String>,
}

/// What changed in one tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub lost: Vec<u32>,
    /// Partitions to stop and then `release`.
    pub surplus: Vec<u32>,
}

/// The partitions `me` should claim (free ones, up to its fair share) and
/// those it should give back, given what it owns and what the bucket shows.
/// Claims start at an offset derived from the instance, so workers starting
/// together do not all race for the same partitions.
pub fn rebalance(view: &View, owned: &BTreeSet<u32>, me: &str, partitions: u32) -> (Vec<u32>, Vec<u32>) {
    let live = view.members.len() + usize::from(!view.members.contains(me));
    let target = partitions.div_ceil(live.max(1) as u32) as usize;
    if owned.len() > target {
        let surplus = owned.iter().rev().take(owned.len() - target).copied().collect();
        return (vec![], surplus);
    }
    let start = crc32fast::hash(me.as_bytes()) % partitions.max(1);
    let claim = (0..partitions)
        .map(|i| (start + i) % partitions)
        .filter(|p| !owned.contains(p) && !view.holders.contains_key(p))
        .take(target - owned.len())
        .collect();
    (claim, vec![])
}

impl Leases {
    pub fn new(kv: Store, subjects: Subjects, role: &'static str, instance: String, partitions: u32) -> Self {
        Leases { kv, subjects, role, instance, partitions, owned: BTreeMap::new(), view: View::default(), watch: None }
    }

    pub fn owned(&self) -> impl Iterator<Item = u32> + '_ {
        self.owned.keys().copied()
    }

    /// Waits for the bucket to change (or for the watch to need restarting);
    /// never returns while the watch is quiet.
    pub async fn changed(&mut self) {
        if self.watch.is_none() {
            match self.kv.watch_with_history(self.subjects.lease_keys(self.role)).await {
                Ok(w) => {
                    self.view = View::default();
                    self.watch = Some(w);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the lease bucket; retrying");
                    tokio::time::sleep(RENEW_EVERY).await;
                    return;
                }
            }
        }
        // Renewals put what the bucket already shows: only a change to who
        // is live or who holds what is worth waking the runner for.
        loop {
            let Some(w) = self.watch.as_mut() else { return };
            match w.next().await {
                Some(Ok(entry)) => {
                    let put = entry.operation == Operation::Put;
                    let changed = match self.subjects.parse_lease_key(self.role, &entry.key) {
                        Some(LeaseKey::Member(i)) if put => self.view.members.insert(i),
                        Some(LeaseKey::Member(i)) => self.view.members.remove(&i),
                        Some(LeaseKey::Partition(p)) if put => {
                            let holder = String::from_utf8_lossy(&entry.value).into_owned();
                            self.view.holders.insert(p, holder.clone()).as_ref() != Some(&holder)
                        }
                        Some(LeaseKey::Partition(p)) => self.view.holders.remove(&p).is_some(),
                        None => false,
                    };
                    if changed {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "lease watch error");
                    return;
                }
                None => {
                    tracing::warn!("lease watch ended; restarting it");
                    self.watch = None;
                    return;
                }
            }
        }
    }

    /// Renews what we hold (when `renew`: on the runner's `RENEW_EVERY`
    /// clock, not when the bucket changed), then claims or gives back to
    /// reach the fair share.
    pub async fn tick(&mut self, renew: bool) -> Changes {
        let mut changes = Changes::default();
        if renew {
            self.renew(&mut changes).await;
        }
        let owned: BTreeSet<u32> = self.owned.keys().copied().collect();
        let (claim, surplus) = rebalance(&self.view, &owned, &self.instance, self.partitions);
        changes.surplus = surplus;
        for p in claim {
            let key = self.subjects.lease_key(self.role, p);
            if let Ok(rev) = self.kv.create(&key, self.instance.clone().into()).await {
                self.owned.insert(p, (rev, Instant::now()));
                self.view.holders.insert(p, self.instance.clone());
            }
        }
        changes
    }

    async fn renew(&mut self, changes: &mut Changes) {
        let me = self.subjects.member_key(self.role, &self.instance);
        match self.kv.put(&me, self.instance.clone().into()).await {
            Ok(_) => {
                self.view.members.insert(self.instance.clone());
            }
            Err(e) => tracing::warn!(error = %e, "cannot announce worker liveness"),
        }
        for (p, (rev, renewed)) in std::mem::take(&mut self.owned) {
            let key = self.subjects.lease_key(self.role, p);
            match self.kv.update(&key, self.instance.clone().into(), rev).await {
                Ok(new_rev) => {
                    self.owned.insert(p, (new_rev, Instant::now()));
                }
                // Someone else's now (ours expired and was taken).
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
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
    }

    /// Gives a partition back (after its task has stopped).
    pub async fn release(&mut self, p: u32) {
        if let Some((rev, _)) = self.owned.remove(&p) {
            self.view.holders.remove(&p);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(members: &[&str], holders: &[(u32, &str)]) -> View {
        View {
            members: members.iter().map(|m| m.to_string()).collect(),
            holders: holders.iter().map(|(p, h)| (*p, h.to_string())).collect(),
        }
    }

    #[test]
    fn a_lone_worker_claims_every_partition() {
        let (claim, surplus) = rebalance(&View::default(), &BTreeSet::new(), "a", 8);
        assert_eq!(claim.len(), 8);
        assert!(surplus.is_empty());
    }

    #[test]
    fn a_joining_worker_makes_the_holder_give_back_half() {
        let all: Vec<(u32, &str)> = (0..8).map(|p| (p, "a")).collect();
        let owned: BTreeSet<u32> = (0..8).collect();
        let (claim, surplus) = rebalance(&view(&["a", "b"], &all), &owned, "a", 8);
        assert!(claim.is_empty());
        assert_eq!(surplus, vec![7, 6, 5, 4]);
        // The newcomer claims only what is free.
        let held: Vec<(u32, &str)> = (0..4).map(|p| (p, "a")).collect();
        let (claim, _) = rebalance(&view(&["a", "b"], &held), &BTreeSet::new(), "b", 8);
        let mut claim = claim;
        claim.sort();
        assert_eq!(claim, vec![4, 5, 6, 7]);
    }

    #[test]
    fn a_dead_workers_partitions_are_shared_by_the_rest() {
        // c died: its member key and leases expired; a and b hold 3 each.
        let held: Vec<(u32, &str)> = vec![(0, "a"), (1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "b")];
        let a: BTreeSet<u32> = [0, 1, 2].into();
        let (claim, _) = rebalance(&view(&["a", "b"], &held), &a, "a", 8);
        assert_eq!(claim.len(), 1, "target is 4 each");
        assert!(claim.iter().all(|p| *p >= 6));
    }

    #[test]
    fn the_fair_share_rounds_up_and_never_exceeds_the_partitions() {
        let (claim, _) = rebalance(&view(&["a", "b", "c"], &[]), &BTreeSet::new(), "a", 8);
        assert_eq!(claim.len(), 3);
        let (claim, _) = rebalance(&view(&["a"], &[]), &BTreeSet::new(), "b", 1);
        assert_eq!(claim, vec![0], "an unannounced self still counts");
        let (claim, _) = rebalance(&view(&["a", "b"], &[(0, "a")]), &BTreeSet::new(), "b", 1);
        assert!(claim.is_empty(), "the one partition is held");
    }
}
