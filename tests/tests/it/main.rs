//! The integration suite: one test binary, a module per feature. Each test
//! starts its own namespace on the servers the binary shares (nats-server,
//! the MongoDB server and the S3 server start on first use, see
//! `natter_tests::stack`), so the tests run in parallel without seeing each
//! other. One binary links the workspace once instead of once per feature.
//!
//! Run one feature with `cargo test -p natter-tests --test it attachments::`.
//! The NATS cluster failover test is a binary of its own (`--test
//! cluster`): it kills a node and times the recovery, which the rest of the
//! suite running beside it on two cores would distort.

mod attachments;
mod audit;
mod authorization;
mod bad_input;
mod browser;
mod catchup;
mod deploy;
mod fuzz;
mod groups;
mod hardening;
mod lifecycle;
mod limits;
mod metrics;
mod mutations;
mod nats_permissions;
mod partitions;
mod pipeline;
mod presence;
mod receipts;
mod recovery;
mod replay;
mod roles;
mod search;
mod socketio;
mod wire;
