//! Per-connection limits: frame size, queue length, request rate and how
//! much abuse is tolerated before the connection is closed.

use std::time::Instant;

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
