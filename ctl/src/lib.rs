//! `natterctl`'s library: every command as a function the binary (a thin
//! `main`) and the tests call. `topology apply` declares streams,
//! consumers and buckets; `token` mints a development JWT; `status` shows
//! the pipeline's health; `partitions` shows and changes the partition
//! count; `dlq` handles dead letters; `replay` rebuilds
//! state from the command stream; `audit` verifies and exports the trail.

pub mod audit;
pub mod dlq;
pub mod partitions;
pub mod replay;
pub mod status;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mongodb::bson::oid::ObjectId;
use natter_nats::Subjects;
use natter_shared::audit::Verdict;
use natter_shared::auth::{Identity, Jwt};
use natter_shared::config::{CoreConfig, Env, JwtConfig};

#[derive(Parser)]
#[command(name = "natterctl", about = "natter operator CLI")]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// NATS topology.
    Topology {
        #[command(subcommand)]
        cmd: TopologyCmd,
    },
    /// Mint a JWT for development (signed with JWT_SECRET).
    Token {
        /// User id (24-hex ObjectId); a new one when omitted.
        #[arg(long)]
        user: Option<String>,
        /// Roles, comma-separated (e.g. Admin,Supervisor).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        ttl: u64,
        /// Print JSON with the user id and the token instead of the token alone.
        #[arg(long)]
        json: bool,
    },
    /// The command stream's partition count.
    Partitions {
        #[command(subcommand)]
        cmd: PartitionsCmd,
    },
    /// Streams, consumers and dead letters at a glance.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rebuild state from the command stream through the workers' apply
    /// code: into the live database (a no-op for what is applied) or a
    /// fresh one.
    Replay(Box<replay::ReplayArgs>),
    /// Dead-lettered commands.
    Dlq {
        #[command(subcommand)]
        cmd: DlqCmd,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// Every dead letter with its role, action, original seq and reason.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its payload.
    Show { id: u64 },
    /// Publish dead letters again on their original subjects (after fixing
    /// the cause) and remove them from the dead letters.
    Retry {
        ids: Vec<u64>,
        #[arg(long)]
        all: bool,
    },
    /// Discard dead letters.
    Drop {
        ids: Vec<u64>,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Walk the hash chain; exit 1 at the first record changed, removed or moved.
    Verify,
    /// Export the trail (newest first) to a file, with a progress bar.
    Export(Box<ExportArgs>),
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// pdf, csv or json.
    #[arg(long, default_value = "csv")]
    pub format: String,
    /// Output file.
    #[arg(long)]
    pub out: std::path::PathBuf,
    #[arg(long)]
    pub action: Option<String>,
    #[arg(long)]
    pub actor: Option<String>,
    #[arg(long)]
    pub conversation_id: Option<String>,
    #[arg(long)]
    pub group_id: Option<String>,
    #[arg(long)]
    pub target: Option<String>,
    /// ISO 8601 date-time.
    #[arg(long)]
    pub from: Option<String>,
    /// ISO 8601 date-time.
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Subcommand)]
pub enum PartitionsCmd {
    /// The count, every count the stream was partitioned by, and whether a
    /// move is draining.
    Show,
    /// Move the running deployment to COUNT partitions: drain the current
    /// ones (edges hold new commands meanwhile), switch, resume. Called off,
    /// with nothing changed, if the drain does not finish in time.
    Set {
        count: u32,
        /// Seconds the current partitions may take to drain.
        #[arg(long, default_value_t = 60)]
        drain_timeout: u64,
    },
}

#[derive(Subcommand)]
pub enum TopologyCmd {
    /// Create or update streams, consumers and buckets (idempotent).
    Apply {
        /// Stream replicas (3 on a three-node cluster); default `NATS_REPLICAS`, else 1.
        /// The staging bucket's bound is `STAGING_MAX_BYTES`.
        #[arg(long)]
        replicas: Option<usize>,
    },
}

/// Runs one command; its exit status (1: the audit chain is broken).
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.cmd {
        Cmd::Token { user, roles, name, ttl, json } => {
            let jwt = JwtConfig::load(&Env)?;
            let user = match user {
                Some(u) => u.parse().map_err(anyhow::Error::msg).context("--user")?,
                None => natter_shared::ids::UserId(ObjectId::new()),
            };
            let token = Jwt::new(&jwt).issue(&Identity { user, roles, name }, ttl);
            if json {
                out(&serde_json::json!({"userId": user.hex(), "token": token}).to_string());
            } else {
                out(&token);
            }
        }
        Cmd::Topology { cmd: TopologyCmd::Apply { replicas } } => {
            let core = CoreConfig::load(&Env)?;
            let js = connect(&core).await?;
            let subjects = Subjects::new(&core.nats_namespace);
            let mut sizing = natter_nats::Sizing::from(&core);
            sizing.replicas = replicas.unwrap_or(sizing.replicas);
            natter_nats::apply(&js, &subjects, sizing).await?;
            out(&format!(
                "topology applied in namespace `{}`: {}",
                core.nats_namespace,
                natter_nats::topology::summary(&subjects, sizing)
            ));
        }
        Cmd::Partitions { cmd: PartitionsCmd::Show } => {
            let (js, s) = nats().await?;
            out(&serde_json::to_string(&partitions::load(&js, &s).await?)?);
        }
        Cmd::Partitions { cmd: PartitionsCmd::Set { count, drain_timeout } } => {
            let (js, s) = nats().await?;
            let pace =
                partitions::Pace { drain_timeout: std::time::Duration::from_secs(drain_timeout), ..Default::default() };
            let moved = partitions::set(&js, &s, count, pace, out).await?;
            out(&format!(
                "{} partitions (from {}); commands held {:.1} s",
                moved.to,
                moved.from,
                moved.held.as_secs_f64()
            ));
        }
        Cmd::Status { json } => {
            let (js, s) = nats().await?;
            status::run(&js, &s, json).await?
        }
        Cmd::Replay(args) => replay::run(*args).await?,
        Cmd::Dlq { cmd } => {
            let (js, s) = nats().await?;
            match cmd {
                DlqCmd::List { json } => dlq::list(&js, &s, json).await?,
                DlqCmd::Show { id } => dlq::show(&js, &s, id).await?,
                DlqCmd::Retry { ids, all } => dlq::retry(&js, &s, dlq::select(&js, &s, &ids, all).await?).await?,
                DlqCmd::Drop { ids, all } => dlq::drop(&js, &s, dlq::select(&js, &s, &ids, all).await?).await?,
            }
        }
        Cmd::Audit { cmd: AuditCmd::Export(args) } => audit::export(*args).await?,
        Cmd::Audit { cmd: AuditCmd::Verify } => {
            let core = CoreConfig::load(&Env)?;
            let store = natter_shared::store::Store::connect(&core.mongodb_uri, &core.mongodb_db).await?;
            let js = connect(&core).await?;
            let subjects = Subjects::new(&core.nats_namespace);
            match audit::verify(&store, &js, &subjects).await? {
                Verdict::Intact { records, head } => {
                    out(&format!("audit chain intact: {records} records, head {head}"));
                    store.close().await;
                }
                Verdict::Broken(b) => {
                    out(&format!(
                        "audit chain broken at record seq {} (chain position {}): it {}",
                        b.seq, b.chain_seq, b.reason
                    ));
                    return Ok(std::process::ExitCode::from(1));
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

pub async fn connect(core: &CoreConfig) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = natter_nats::connect::connect(&core.nats_url, "natterctl")
        .await
        .with_context(|| format!("connecting to NATS at {}", natter_nats::connect::redacted(&core.nats_url)))?;
    Ok(async_nats::jetstream::new(client))
}

/// NATS (from the environment) and the namespace's names, with the
/// deployment's partition count.
pub async fn nats() -> anyhow::Result<(async_nats::jetstream::Context, Subjects)> {
    let core = CoreConfig::load(&Env)?;
    let js = connect(&core).await?;
    let s = Subjects::new(&core.nats_namespace);
    partitions::load(&js, &s).await?;
    Ok((js, s))
}

/// The CLI's output goes to stdout, for scripts.
#[allow(clippy::print_stdout)]
pub fn out(s: &str) {
    println!("{s}");
}
