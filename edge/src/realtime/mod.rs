//! The realtime layer: what a connected client has, whatever protocol it
//! speaks. Built on the core; knows nothing of WebSocket framing or of the
//! protocols' encodings.
//!
//! - `hub`: one NATS subscription per followed subject, fanned out to the
//!   connections' queues, with the event gate (no event twice, none
//!   revoked);
//! - `presence` (with `contacts`: whose presence each user may see),
//!   `delivery` (delivered receipts), `typing`, `catchup`
//!   (reconnect catch-up from the events stream);
//! - `session`: one client's requests turned into core calls and acks;
//! - `limits`: a connection's limits and close codes;
//! - `state`: [`EdgeState`], what every handler above shares.

pub mod catchup;
pub mod contacts;
pub mod delivery;
pub mod hub;
pub mod limits;
pub mod online;
pub mod presence;
pub mod session;
pub mod state;
pub mod typing;

pub use state::EdgeState;
