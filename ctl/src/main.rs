//! `natterctl`: the operator CLI, a thin binary over the `natterctl`
//! library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    // Warnings only (on stderr, `RUST_LOG` to see more): retries while a
    // cluster elects its leaders, records verify cannot read.
    natter_shared::telemetry::init("warn");
    natterctl::run(natterctl::Cli::parse()).await
}
