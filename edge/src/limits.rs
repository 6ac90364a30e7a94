//! The edge's limits: per connection (frame size, queue length, request
//! rate, how much abuse is tolerated before the connection is closed) and
//! per caller across connections (REST requests, typing starts); uploads'
//! budgets are in `uploads`.

use natter_shared::ids::{RoomRef, UserId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Largest message (a frame, or all fragments of one) a client may send.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Frames queued for one socket before it counts as a slow consumer.
pub const QUEUE_LEN: usize = 1024;
/// Refused (invalid or rate-limited) requests tolerated before closing.
pub const MAX_STRIKES: u32 = 100;

/// WebSocket close codes used by the edge.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token that opened the connection expired: reconnect with a new one.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// Nothing came back from the client (not even a pong) for two ping intervals.
    pub const PING_TIMEOUT: u16 = 4002;
}

/// Joins with `lastSeq` (each reads the events stream) a connection may
/// make at once, and how fast that allowance comes back.
pub const CATCHUP_BURST: f64 = 20.0;
pub const CATCHUP_PER_SEC: f64 = 1.0 / 3.0;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses() {
        let mut b = Bucket::new(100);
        let allowed = (0..250).filter(|_| b.take()).count();
        assert!((200..250).contains(&allowed), "allowed {allowed}");
        let mut c = Bucket::with_burst(CATCHUP_PER_SEC, CATCHUP_BURST);
        assert_eq!((0..100).filter(|_| c.take()).count(), CATCHUP_BURST as usize);
    }
}

/// Callers remembered before the idle ones are forgotten.
const MAX_CALLERS: usize = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    User(UserId),
    Addr(IpAddr),
}

/// The buckets of the callers seen lately.
#[derive(Default)]
pub struct RestLimits {
    callers: Mutex<HashMap<Caller, (Bucket, Instant)>>,
}

impl RestLimits {
    pub fn admit(&self, caller: Caller, rate: u32) -> bool {
        let now = Instant::now();
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if callers.len() >= MAX_CALLERS {
            // A bucket idle this long is full again: forgetting it changes nothing.
            callers.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(2));
        }
        let (bucket, at) = callers.entry(caller).or_insert_with(|| (Bucket::new(rate), now));
        *at = now;
        bucket.take()
    }
}

/// How long `isTyping: true` lasts without being repeated.
pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// Starts of typing a user may publish per room and second.
pub const TYPING_STARTS_PER_SEC: u32 = 1;
/// A user still typing is announced again at most this often.
const REPEAT_EVERY: Duration = Duration::from_secs(3);
/// Users and rooms remembered before the idle ones are forgotten.
const GATE_SIZE: usize = 10_000;

/// Typing publishes per user and room on this edge.
#[derive(Default)]
pub struct TypingGate {
    seen: Mutex<HashMap<(UserId, RoomRef), Gate>>,
}

struct Gate {
    starts: Bucket,
    /// When `isTyping: true` was last published.
    announced: Instant,
}

impl TypingGate {
    /// Whether `isTyping: true` from `user` in `room` is published now;
    /// `typing` says their connection already shows them typing there.
    pub fn admit(&self, user: UserId, room: &RoomRef, typing: bool) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= GATE_SIZE {
            seen.retain(|_, g| now.duration_since(g.announced) < TYPING_TTL);
        }
        let g = seen
            .entry((user, room.clone()))
            .or_insert_with(|| Gate { starts: Bucket::new(TYPING_STARTS_PER_SEC), announced: now - REPEAT_EVERY });
        if typing && now.duration_since(g.announced) < REPEAT_EVERY {
            return false;
        }
        let ok = g.starts.take();
        if ok {
            g.announced = now;
        }
        ok
    }
}
