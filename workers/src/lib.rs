//! Worker roles. Each role is a `Handler` (one file) registered with the one
//! `runner`, which leases command partitions, fetches batches from the
//! role's durable pull consumers, applies them, publishes events, and acks.

pub mod attachments;
pub mod audit;
pub mod handler;
pub mod lease;
pub mod main_support;
pub mod messages;
pub mod runner;
pub mod start;

pub use handler::{ApplyError, Disposition, Done, Handler, Incoming};
pub use runner::{RunnerConfig, run};
