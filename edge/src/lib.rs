//! The edge: a stateless server that authenticates clients, checks what they
//! may do, publishes their commands to JetStream and fans the workers' events
//! out to the sockets allowed to see them. Serves the native WebSocket
//! protocol at `/ws`, Socket.IO at `/socket.io`, the REST API at
//! `/api/chat`, `/healthz` and `/readyz`.
//!
//! The modules, from the bottom up (each uses only those before it; no
//! import cycle spans more than a module and its children):
//! - plumbing: `error`, `meta` (request metadata, the origin check),
//!   `query`, `limits` (per connection and per caller), `recent`,
//!   `membership`, `delivery`, `uploads`, `hub`, `presence`, `state` (what
//!   every handler shares), `token`;
//! - the protocol-independent core: `catchup` (reading a room's events),
//!   `chat` (authorization, commands, messages, groups; `submit` publishes
//!   a command to JetStream), `attachments`, `access` (audited reads);
//! - the realtime connection: `typing`, `session` (one client's requests,
//!   whatever the protocol);
//! - the WebSocket transport both socket protocols share: `transport`;
//! - the protocols: `ws` (native), `sio` (Socket.IO, owning its sessions),
//!   `rest`; then `health` and `app`, which builds and runs the edge.

pub mod access;
pub mod app;
pub mod attachments;
pub mod catchup;
pub mod chat;
pub mod delivery;
pub mod error;
pub mod health;
pub mod hub;
pub mod limits;
pub mod membership;
pub mod meta;
pub mod presence;
pub mod query;
pub mod recent;
pub mod rest;
pub mod session;
pub mod sio;
pub mod state;
pub mod token;
pub mod transport;
pub mod typing;
pub mod uploads;
pub mod ws;

pub use app::{Edge, StartError};
