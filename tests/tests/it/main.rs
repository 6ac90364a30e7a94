//! The integration suite: one test binary, a module per feature. Each test
//! starts its own namespace on the servers the binary shares (nats-server,
//! the MongoDB server and the S3 server start on first use, see
//! `natter_tests::stack`), so the tests run in parallel without seeing each
//! other. One binary links the workspace once instead of once per feature.
//!
//! Run one feature with `cargo test -p natter-tests --test it attachments::`.

mod attachments;
mod audit;
mod authorization;
mod bad_input;
mod catchup;
mod cluster;
mod fuzz;
mod groups;
mod hardening;
mod lifecycle;
mod nats_permissions;
mod pipeline;
mod presence;
mod receipts;
mod recovery;
mod replay;
mod roles;
mod socketio;
mod wire;
