//! Wire format, version 1. Published shapes change only with a new version;
//! the snapshot tests in `snapshots.rs` fail when a shape drifts.
//!
//! - `client`: frames a WebSocket client sends on `/ws`.
//! - `server`: frames the edge sends to a client.
//! - `command`: the command envelope the edge publishes to JetStream.
//! - `event`: facts the workers publish for the edges to fan out.
//! - `error`: stable error codes shared by WebSocket and REST.

pub mod client;
pub mod command;
pub mod error;
pub mod event;
pub mod server;
#[cfg(test)]
mod snapshots;

/// The version number carried by commands and events.
pub const VERSION: u32 = 1;

/// Longest message `content`, in bytes.
pub const MAX_CONTENT_BYTES: usize = 16 * 1024;
/// Longest reaction (`emoji`), in bytes: an emoji with its modifiers and
/// joiners, or a short name such as `:ship:`.
pub const MAX_EMOJI_BYTES: usize = 64;
/// Most distinct reactions on one message.
pub const MAX_REACTIONS: usize = 32;
/// Most edits of one message (each earlier version is kept).
pub const MAX_EDITS: usize = 100;
/// Most pinned messages in one room.
pub const MAX_PINS: usize = 50;
/// Longest `clientMsgId`.
pub const MAX_CLIENT_MSG_ID: usize = 128;
/// Longest `requestId`: it is echoed in the reply and stored with the
/// command (`meta.requestId`).
pub const MAX_REQUEST_ID: usize = 128;
