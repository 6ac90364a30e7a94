//! `natter-bench`: natter's figures on this machine, with real servers
//! (started like the integration tests; the database on disk unless
//! `NATTER_DB_STORAGE` says otherwise) and the edge and workers as
//! processes from the same build. Compare runs made in one sitting.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/natter-bench load --pairs 5 --rate 10           # paced, 50 msg/s
//! target/release/natter-bench load --pairs 5 --window 16 --runs 5
//! target/release/natter-bench conns --count 19500 --protocol socketio
//! target/release/natter-bench fanout --members 2000 --edges 2 --rates 5,10,25,50,100,200
//! target/release/natter-bench failover
//! target/release/natter-bench audit --records 1000000
//! target/release/natter-bench replay --commands 100000
//! target/release/natter-bench search --messages 100000
//! ```

mod audit;
mod conns;
mod dbstats;
mod failover;
mod fanout;
mod load;
mod replay;
mod search;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Pairs of users chatting: throughput, latency, database work per message.
    Load(load::LoadArgs),
    /// One big group over several edges, at increasing send rates:
    /// deliveries per second per edge, latency, order, nothing missing.
    Fanout(fanout::FanoutArgs),
    /// A busy room while the worker holding it is killed with -9.
    Failover(failover::FailoverArgs),
    /// Idle authenticated connections: memory per connection (edge and
    /// nats-server) and how fast they open.
    Conns(conns::ConnsArgs),
    /// Appending to and filtering the audit trail at 1,000 and at many records.
    Audit(audit::AuditArgs),
    /// `natterctl replay --into-db` against `insert_many` of what it produces.
    Replay(replay::ReplayArgs),
    /// Search latency over many messages.
    Search(search::SearchArgs),
}

fn main() {
    let args = Args::parse();
    // The database on disk, as a deployment has it (unless told otherwise).
    let dir = std::env::temp_dir().join(format!("natter-bench-{}", std::process::id()));
    if std::env::var("NATTER_DB_STORAGE").is_err() {
        std::fs::create_dir_all(&dir).expect("storage dir");
        natter_tests::stack::use_db_storage(&dir.display().to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        match args.bench {
            Bench::Load(a) => load::run(a).await,
            Bench::Failover(a) => failover::run(a).await,
            Bench::Audit(a) => audit::run(a).await,
            Bench::Conns(a) => conns::run(a).await,
            Bench::Fanout(a) => fanout::run(a).await,
            Bench::Replay(a) => replay::run(a).await,
            Bench::Search(a) => search::run(a).await,
        }
    });
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
