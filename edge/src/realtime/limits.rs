//! A connection's limits: frame size, queue length, request rate, how much
//! abuse is tolerated before the connection is closed. (Per caller across
//! connections: REST requests in `rest::limit`, typing starts in
//! `realtime::typing`, uploads in `core::uploads`.)

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
