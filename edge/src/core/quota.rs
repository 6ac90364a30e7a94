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
/// request let through).
const ATTEMPTS: usize = 8;

pub struct Quota {
    kv: kv::Store,
    send: Window,
    upload: Window,
    group: Window,
    leases: Keyed<(UserId, Limit), Lease>,
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
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let window = now / w.secs;
        let key = (user, limit);
        let local = self.leases.with(key, Lease::default, |l| {
            if l.window != window {
                return None;
            }
            if l.refused {
                return Some(false);
            }
            if l.left > 0 {
                l.left -= 1;
                return Some(true);
            }
            None
        });
        match local {
            Some(true) => return Ok(()),
            Some(false) => return Err(ChatError::RateLimited),
            None => {}
        }
        match self.lease(&format!("{}.{}", limit.key(), user.hex()), window, w).await {
            Ok(Some(got)) => {
                self.leases.with(key, Lease::default, |l| {
                    if l.window != window {
                        *l = Lease { window, ..Lease::default() };
                    }
                    l.left += got - 1;
                });
                Ok(())
            }
            Ok(None) => {
                self.leases.with(key, Lease::default, |l| *l = Lease { window, left: 0, refused: true });
                metrics::counter!("natter_user_limit_refusals_total", "limit" => limit.key()).increment(1);
                Err(ChatError::RateLimited)
            }
            Err(e) => {
                tracing::warn!(error = %e, limit = limit.key(), "per-user limit not checked: the quota bucket is unavailable");
                Ok(())
            }
        }
    }

    /// Adds a share of the budget of `window` to the count under `key`:
    /// how much was taken, or `None` when the window's budget is spent.
    async fn lease(&self, key: &str, window: u64, w: Window) -> Result<Option<u64>, String> {
        for _ in 0..ATTEMPTS {
            let entry = self.kv.entry(key).await.map_err(|e| e.to_string())?;
            let (count, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (count_in(&e.value, window), Some(e.revision)),
                Some(e) => (0, Some(e.revision)),
                None => (0, None),
            };
            if count >= w.max {
                return Ok(None);
            }
            let got = w.share().min(w.max - count);
            let value = format!("{window} {}", count + got).into_bytes().into();
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
                Ok(_) => return Ok(Some(got)),
                // Another edge moved the count first: read it again.
                Err(None) => continue,
                Err(Some(e)) => return Err(e),
            }
        }
        Err(format!("{key}: the count kept changing under {ATTEMPTS} attempts"))
    }
}

/// The count a stored value (`"<window> <count>"`) holds for `window`: 0
/// when it is another window's (or unreadable).
fn count_in(value: &[u8], window: u64) -> u64 {
    let text = std::str::from_utf8(value).unwrap_or("");
    match text.split_once(' ') {
        Some((w, n)) if w.parse() == Ok(window) => n.parse().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_belongs_to_its_window() {
        assert_eq!(count_in(b"41 7", 41), 7);
        assert_eq!(count_in(b"40 7", 41), 0, "last window's count is spent");
        assert_eq!(count_in(b"garbage", 41), 0);
        assert_eq!(count_in(b"", 41), 0);
    }

    #[test]
    fn large_budgets_lease_a_tenth_small_ones_one_at_a_time() {
        assert_eq!(Window { secs: 2, max: 200 }.share(), 20);
        assert_eq!(Window { secs: 60, max: 30 }.share(), 1);
        assert_eq!(Window { secs: 86_400, max: 100 }.share(), 1);
    }
}
