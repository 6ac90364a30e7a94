//! The edge: a stateless server that authenticates clients, checks what they
//! may do, publishes their commands to JetStream and fans the workers' events
//! out to the sockets allowed to see them. Serves the native WebSocket
//! protocol at `/ws`, the REST API at `/api/chat`, `/healthz` and `/readyz`.

pub mod access;
pub mod app;
pub mod attachments;
pub mod catchup;
pub mod chat;
pub mod delivery;
pub mod error;
pub mod health;
pub mod hub;
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
pub mod typing;
pub mod uploads;
pub mod ws;
pub mod wsconn;

pub use app::{Edge, StartError};
