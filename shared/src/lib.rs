//! Shared pieces of natter: wire types (versioned), the domain model, typed
//! configuration, JWT auth, telemetry, shutdown and the MongoDB store.
//!
//! Everything here is used by more than one binary; nothing here talks to NATS
//! (that is `natter-nats`), and what only some binaries need has a crate of
//! its own: exports (`natter-export`), the S3 client (`natter-s3`).

pub mod audit;
pub mod auth;
pub mod config;
pub mod ids;
pub mod model;
pub mod search;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod timefmt;
pub mod v1;
