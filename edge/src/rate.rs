//! Rate limiting: a token bucket, and a bounded map of per-key state (a
//! caller's buckets) that forgets the keys idle longest when it fills.
//! Used per connection (`realtime::session`), per REST caller
//! (`rest::limit`), per user and room for typing (`realtime::typing`) and
//! per user for uploads (`core::uploads`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, capacity `burst` (twice the
/// rate unless said otherwise).
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate_per_sec: u32) -> Self {
        let rate = f64::from(rate_per_sec);
        Bucket::with_burst(rate, 2.0 * rate)
    }

    pub fn with_burst(rate_per_sec: f64, burst: f64) -> Self {
        Bucket { rate: rate_per_sec, burst, tokens: burst, at: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
    }

    /// Tokens left now (negative after spending more than there was).
    pub fn available(&mut self) -> f64 {
        self.refill();
        self.tokens
    }

    /// Spends `n` tokens, into debt if need be (a cost known only after).
    pub fn spend(&mut self, n: f64) {
        self.refill();
        self.tokens -= n;
    }

    pub fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// State per key (a caller, a user and room), for at most `max` keys: when
/// full, the keys untouched for `idle` are forgotten. `idle` is chosen so
/// that forgetting changes nothing (a bucket idle that long is full again).
pub struct Keyed<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    max: usize,
    idle: Duration,
}

impl<K: Hash + Eq, V> Keyed<K, V> {
    pub fn new(max: usize, idle: Duration) -> Self {
        Keyed { entries: Mutex::new(HashMap::new()), max, idle }
    }

    /// Runs `f` on `key`'s state, made by `init` when the key is new.
    pub fn with<T>(&self, key: K, init: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> T) -> T {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max {
            entries.retain(|_, (_, at)| now.duration_since(*at) < self.idle);
        }
        let (v, at) = entries.entry(key).or_insert_with(|| (init(), now));
        *at = now;
        f(v)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let mut b = Bucket::new(100);
        let allowed = (0..250).filter(|_| b.take()).count();
        assert!((200..250).contains(&allowed), "allowed {allowed}");
        let mut c = Bucket::with_burst(1.0 / 3.0, 20.0);
        assert_eq!((0..100).filter(|_| c.take()).count(), 20);
    }

    #[test]
    fn keyed_state_is_per_key_and_idle_keys_go_when_full() {
        let k: Keyed<u32, Bucket> = Keyed::new(2, Duration::ZERO);
        assert!((0..2).all(|_| k.with(1, || Bucket::with_burst(0.0, 2.0), Bucket::take)));
        assert!(!k.with(1, || Bucket::with_burst(0.0, 2.0), Bucket::take), "key 1 spent");
        assert!(k.with(2, || Bucket::with_burst(0.0, 2.0), Bucket::take), "key 2 has its own");
        assert_eq!(k.len(), 2);
        // Full: the idle keys are forgotten before a third is added.
        assert!(k.with(3, || Bucket::with_burst(0.0, 2.0), Bucket::take));
        assert_eq!(k.len(), 1);
    }
}
