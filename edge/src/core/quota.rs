//! Per-user limits across connections and edges: how many messages a user
//! sends (`USER_SENDS_PER_SEC`), files they upload (`UPLOADS_PER_MIN`) and
//! groups they create (`USER_GROUPS_PER_DAY`), wherever the requests come
//! from. Each limit counts in fixed windows (two seconds, a minute, a UTC
//! day). The counts live in the `<ns>_quota` key-value bucket, one key per
//! limit and user (`send.<user>`) holding the window and its count.
//!
//! An edge does not ask the bucket on every request: it takes a share of
//! the user's budget at a time (a lease, one compare-and-set that adds the
//! share to the count) and spends it locally, so a user sending steadily
//! costs the bucket one write per share. What a lease holds unspent when
//! its window ends is not given back: with several edges a user may be
//! refused a little early, never let past the limit. A refusal is
//! remembered until the window ends, so a flood is refused without a
//! round trip. If the bucket cannot be reached the request goes through
//! (logged): a limit must not take the chat down with it.

use crate::error::ChatError;
use crate::rate::Keyed;
use async_nats::jetstream::kv;
use natter_shared::ids::UserId;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What is limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    Send,
    Upload,
    CreateGroup,
}

impl Limit {
    fn key(self) -> &'static str {
        match self {
            Limit::Send => "send",
            Limit::Upload => "upload",
            Limit::CreateGroup => "group",
        }
    }
}

/// How much of `Limit` one window allows.
#[derive(Clone, Copy, Debug)]
struct Window {
    secs: u64,
    max: u64,
}

impl Window {
    /// The share an edge leases at a time: a tenth of a large budget, one
    /// at a time of a small one (a lease left unspent is lost to the user).
    fn share(self) -> u64 {
        if self.max >= 200 { self.max / 10 } else { 1 }
    }
}

/// A share of a user's budget this edge holds for one window.
#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    window: u64,
    left: u64,
    refused: bool,
}

/// Users whose leases are kept; the idle ones go first.
const MAX_USERS: usize = 100_000;
/// Compare-and-set attempts before a lease is given up on (and the
/// request refused).
const ATTEMPTS: usize = 8;
/// Held while a lease for one user and limit is asked for.
type LeaseLock = tokio::sync::Mutex<()>;

/// Lease locks kept before the unused ones are swept.
const SWEEP_LOCKS_FROM: usize = 1024;

pub struct Quota {
    kv: kv::Store,
    send: Window,
    upload: Window,
    group: Window,
    leases: Keyed<(UserId, Limit), Lease>,
    /// Held while a lease is asked for: a user's requests on this edge
    /// wait for the one lease in flight and spend it, instead of racing
    /// each other for the count (a burst of one user's sends on one
    /// socket was refused as contended, short of the limit).
    leasing: std::sync::Mutex<HashMap<(UserId, Limit), Weak<LeaseLock>>>,
}

impl Quota {
    pub fn new(kv: kv::Store, sends_per_sec: u32, uploads_per_min: u32, groups_per_day: u32) -> Self {
        Quota {
            kv,
            send: Window { secs: 2, max: 2 * u64::from(sends_per_sec) },
            upload: Window { secs: 60, max: u64::from(uploads_per_min) },
            group: Window { secs: 86_400, max: u64::from(groups_per_day) },
            // Forgetting a lease idle a minute loses at most its unspent
            // share (a send window is two seconds; uploads and groups
            // lease one at a time) and a remembered refusal.
            leases: Keyed::new(MAX_USERS, Duration::from_secs(60)),
            leasing: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn window(&self, limit: Limit) -> Window {
        match limit {
            Limit::Send => self.send,
            Limit::Upload => self.upload,
            Limit::CreateGroup => self.group,
        }
    }

    /// Takes one `limit` from `user`'s budget, or `rate_limited`.
    pub async fn take(&self, user: UserId, limit: Limit) -> Result<(), ChatError> {
        let w = self.window(limit);
        let window_now = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / w.secs;
        let key = (user, limit);
        if let Some(r) = self.spend_local(key, window_now()) {
            return r;
        }
        let lock = self.lease_lock(key);
        let _leasing = lock.lock().await;
        // The lease this request waited for may have room for it (in the
        // window it is now).
        let window = window_now();
        if let Some(r) = self.spend_local(key, window) {
            return r;
        }
        match self.lease(&format!("{}.{}", limit.key(), user.hex()), window, w).await {
            Ok(Leased::Got(got)) => {
                self.leases.with(key, Lease::default, |l| {
                    if l.window != window {
                        *l = Lease { window, ..Lease::default() };
                    }
                    l.left += got - 1;
                });
                Ok(())
            }
            Ok(Leased::Spent) => {
                self.leases.with(key, Lease::default, |l| *l = Lease { window, left: 0, refused: true });
                metrics::counter!("natter_user_limit_refusals_total", "limit" => limit.key()).increment(1);
                Err(ChatError::RateLimited)
            }
            // Many requests of the user racing for the count: this one is
            // refused (not remembered: the budget may have room).
            Ok(Leased::Contended) => {
                metrics::counter!("natter_user_limit_refusals_total", "limit" => limit.key()).increment(1);
                Err(ChatError::RateLimited)
            }
            Err(e) => {
                tracing::warn!(error = %e, limit = limit.key(), "per-user limit not checked: the quota bucket is unavailable");
                Ok(())
            }
        }
    }

    /// The lock a lease for `key` is asked for under.
    fn lease_lock(&self, key: (UserId, Limit)) -> Arc<LeaseLock> {
        let mut locks = self.leasing.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = locks.get(&key).and_then(Weak::upgrade) {
            return l;
        }
        if locks.len() >= SWEEP_LOCKS_FROM {
            locks.retain(|_, l| l.strong_count() > 0);
        }
        let l = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&l));
        l
    }

    /// Spends one of this edge's lease for `key` in `window`: `None` when
    /// it holds nothing for the window, else whether the request passes.
    fn spend_local(&self, key: (UserId, Limit), window: u64) -> Option<Result<(), ChatError>> {
        self.leases.with(key, Lease::default, |l| {
            if l.window != window {
                return None;
            }
            if l.refused {
                return Some(Err(ChatError::RateLimited));
            }
            if l.left > 0 {
                l.left -= 1;
                return Some(Ok(()));
            }
            None
        })
    }

    /// Adds a share of the budget of `window` to the count under `key`.
    /// A count stored for a later window (an edge whose clock is ahead) is
    /// counted against, never reset. Only an unreachable bucket is an
    /// error.
    async fn lease(&self, key: &str, window: u64, w: Window) -> Result<Leased, String> {
        for attempt in 0..ATTEMPTS {
            let entry = self.kv.entry(key).await.map_err(|e| e.to_string())?;
            let stored = match &entry {
                Some(e) if e.operation == kv::Operation::Put => stored_count(&e.value),
                _ => None,
            };
            let revision = entry.as_ref().map(|e| e.revision);
            let (at, count) = match stored {
                Some((sw, n)) if sw >= window => (sw, n),
                _ => (window, 0),
            };
            if count >= w.max {
                return Ok(Leased::Spent);
            }
            let got = w.share().min(w.max - count);
            let value = format!("{at} {}", count + got).into_bytes().into();
            let written = match revision {
                Some(r) => self.kv.update(key, value, r).await.map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(e.to_string()),
                }),
                None => self.kv.create(key, value).await.map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(e.to_string()),
                }),
            };
            match written {
                Ok(_) => return Ok(Leased::Got(got)),
                // Another request moved the count first: read it again,
                // after a pause that spreads the racers out.
                Err(None) => {
                    let jitter = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos() % 4);
                    tokio::time::sleep(Duration::from_millis(attempt as u64 + 1 + u64::from(jitter))).await;
                }
                Err(Some(e)) => return Err(e),
            }
        }
        Ok(Leased::Contended)
    }
}

/// What a lease got.
enum Leased {
    Got(u64),
    /// The window's budget is spent.
    Spent,
    /// The count kept changing under every attempt.
    Contended,
}

/// The window and count a stored value (`"<window> <count>"`) holds.
fn stored_count(value: &[u8]) -> Option<(u64, u64)> {
    let (w, n) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    Some((w.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_count_reads_back() {
        assert_eq!(stored_count(b"41 7"), Some((41, 7)));
        assert_eq!(stored_count(b"garbage"), None);
        assert_eq!(stored_count(b"41 x"), None);
        assert_eq!(stored_count(b""), None);
    }

    #[test]
    fn large_budgets_lease_a_tenth_small_ones_one_at_a_time() {
        assert_eq!(Window { secs: 2, max: 200 }.share(), 20);
        assert_eq!(Window { secs: 60, max: 30 }.share(), 1);
        assert_eq!(Window { secs: 86_400, max: 100 }.share(), 1);
    }
}
