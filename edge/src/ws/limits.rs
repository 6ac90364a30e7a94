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
}

/// A token bucket: `rate` tokens per second, capacity twice that.
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(rate_per_sec: u32) -> Self {
        let rate = f64::from(rate_per_sec);
        Bucket { rate, tokens: 2.0 * rate, at: Instant::now() }
    }

    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(2.0 * self.rate);
        self.at = now;
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
    }
}
