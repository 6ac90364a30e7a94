//! Events: facts the workers publish after applying a command, fanned out by
//! the edges. The frame a client receives is exactly the published bytes:
//! `{"type": <event>, "seq": <stream seq>, "data": {...}}`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MessageReceived,
    ConversationCreated,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventFrame<T> {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Stream sequence of the command this event results from; per room it
    /// only grows, so receivers drop anything at or below the last seen.
    pub seq: u64,
    pub data: T,
}

/// The part of an event frame the edge reads before forwarding it untouched.
#[derive(Debug, Deserialize)]
pub struct EventHead {
    pub seq: u64,
}
