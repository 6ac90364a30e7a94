//! The edge: a stateless server that authenticates clients, checks what they
//! may do, publishes their commands to JetStream and fans the workers' events
//! out to the sockets allowed to see them. Serves the native WebSocket
//! protocol at `/ws`, Socket.IO at `/socket.io`, the REST API at
//! `/api/chat`, `/healthz` and `/readyz`.
//!
//! The layers, from the bottom up (each uses only those before it; no
//! import cycle spans more than a module and its children):
//! - plumbing: `error`, `meta` (request metadata, the origin check),
//!   `query`, `rate` (token buckets per key);
//! - `core/`: the protocol-independent core (authorization, commands,
//!   messages, groups, attachments) on a narrow state, [`core::Core`];
//! - `realtime/`: the per-connection layer (hub, presence, delivery,
//!   typing, catch-up, the session, a connection's limits) and
//!   `EdgeState`, the core's state and the realtime layer's;
//! - `token` (verifying a request's JWT);
//! - `transport`: the WebSocket transport both socket protocols share;
//! - the protocols, each owning its state: `ws/` (native), `sio/`
//!   (Socket.IO, its sessions), `rest/` (its request-rate buckets), and
//!   `web` (the web client's files, development tokens); then `health`
//!   and `app`, which builds and runs the edge.

pub mod app;
pub mod core;
pub mod error;
pub mod health;
pub mod meta;
pub mod query;
pub mod rate;
pub mod realtime;
pub mod rest;
pub mod sio;
pub mod token;
pub mod transport;
pub mod web;
pub mod ws;

pub use app::{Edge, StartError};
