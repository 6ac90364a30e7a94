//! `natterctl`: operator CLI. `topology apply` declares streams, consumers
//! and buckets; `token` mints a development JWT; `status` shows the
//! pipeline's health; `dlq` handles dead letters; `replay` rebuilds state
//! from the command stream; `audit` verifies and exports the trail.

mod dlq;
mod replay;
mod status;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mongodb::bson::oid::ObjectId;
use natter_nats::Subjects;
use natter_shared::auth::{Identity, Jwt};
use natter_shared::config::{CoreConfig, Env, JwtConfig};

#[derive(Parser)]
#[command(name = "natterctl", about = "natter operator CLI")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
enum DlqCmd {
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
enum AuditCmd {
    /// Walk the hash chain; exit 1 at the first record changed, removed or moved.
    Verify,
    /// Export the trail (newest first) to a file, with a progress bar.
    Export(Box<ExportArgs>),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// pdf, csv or json.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Output file.
    #[arg(long)]
    out: std::path::PathBuf,
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    conversation_id: Option<String>,
    #[arg(long)]
    group_id: Option<String>,
    #[arg(long)]
    target: Option<String>,
    /// ISO 8601 date-time.
    #[arg(long)]
    from: Option<String>,
    /// ISO 8601 date-time.
    #[arg(long)]
    to: Option<String>,
}

#[derive(Subcommand)]
enum TopologyCmd {
    /// Create or update streams, consumers and buckets (idempotent).
    Apply {
        /// Stream replicas (3 on a three-node cluster); default `NATS_REPLICAS`, else 1.
        /// The staging bucket's bound is `STAGING_MAX_BYTES`.
        #[arg(long)]
        replicas: Option<usize>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Warnings only (on stderr, `RUST_LOG` to see more): retries while a
    // cluster elects its leaders, records verify cannot read.
    natter_shared::telemetry::init("warn");
    let cli = Cli::parse();
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
        Cmd::Audit { cmd: AuditCmd::Export(args) } => audit_export(*args).await?,
        Cmd::Audit { cmd: AuditCmd::Verify } => {
            let core = CoreConfig::load(&Env)?;
            let store = natter_shared::store::Store::connect(&core.mongodb_uri, &core.mongodb_db).await?;
            let js = connect(&core).await?;
            let kv = js.get_key_value(Subjects::new(&core.nats_namespace).audit_head_bucket()).await?;
            let read_head = || async {
                anyhow::Ok(match kv.get("head").await? {
                    Some(v) => Some(
                        serde_json::from_slice::<natter_shared::audit::Head>(&v).context("the recorded audit head")?,
                    ),
                    None => None,
                })
            };
            // The worker may append while the trail is read: a record past
            // the head counts only if the head has not moved past it since.
            let mut verdict;
            let mut tries = 0;
            loop {
                let head = read_head().await?;
                verdict = natter_shared::audit::verify(&store.audit(), head.as_ref()).await?;
                tries += 1;
                let moved = read_head().await? != head;
                if !(moved && matches!(verdict, natter_shared::audit::Verdict::Broken(_))) || tries >= 5 {
                    break;
                }
            }
            match verdict {
                natter_shared::audit::Verdict::Intact { records, head } => {
                    out(&format!("audit chain intact: {records} records, head {head}"));
                    store.close().await;
                }
                natter_shared::audit::Verdict::Broken(b) => {
                    out(&format!(
                        "audit chain broken at record seq {} (chain position {}): it {}",
                        b.seq, b.chain_seq, b.reason
                    ));
                    std::process::exit(1);
                }
            }
        }
    }
    Ok(())
}

pub(crate) async fn connect(core: &CoreConfig) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = natter_nats::connect::connect(&core.nats_url, "natterctl")
        .await
        .with_context(|| format!("connecting to NATS at {}", natter_nats::connect::redacted(&core.nats_url)))?;
    Ok(async_nats::jetstream::new(client))
}

/// NATS (from the environment) and the namespace's names.
async fn nats() -> anyhow::Result<(async_nats::jetstream::Context, Subjects)> {
    let core = CoreConfig::load(&Env)?;
    let js = connect(&core).await?;
    Ok((js, Subjects::new(&core.nats_namespace)))
}

async fn audit_export(a: ExportArgs) -> anyhow::Result<()> {
    let ExportArgs { format, out: path, action, actor, conversation_id, group_id, target, from, to } = a;
    use natter_export::{self as export, Format};
    use std::io::Write;
    let fmt = Format::parse(&format).ok_or_else(|| anyhow::anyhow!("--format must be pdf, csv or json"))?;
    let date = |v: Option<String>, name: &str| -> anyhow::Result<Option<mongodb::bson::DateTime>> {
        v.map(|s| {
            mongodb::bson::DateTime::parse_rfc3339_str(&s).with_context(|| format!("--{name} is not a date-time"))
        })
        .transpose()
    };
    let filter = natter_shared::audit::Filter {
        action,
        actor,
        conversation_id,
        group_id,
        target,
        from: date(from, "from")?,
        to: date(to, "to")?,
    };
    let core = CoreConfig::load(&Env)?;
    let store = natter_shared::store::Store::connect(&core.mongodb_uri, &core.mongodb_db).await?;
    // The whole trail's length bounds what a filter can match.
    let total = natter_shared::audit::head(&store.audit()).await?.map_or(0, |(last, _)| last.max(0) as u64);
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let rows = export::audit_rows(&store, &filter).await?;
    let counted = {
        let bar = bar.clone();
        futures::StreamExt::inspect(rows, move |_| bar.inc(1))
    };
    let mut file =
        std::io::BufWriter::new(std::fs::File::create(&path).with_context(|| format!("{}", path.display()))?);
    let mut failed: Option<std::io::Error> = None;
    let sink = |b: bytes::Bytes| {
        let ok = match file.write_all(&b) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        };
        async move { ok }
    };
    let n = match fmt {
        Format::Pdf => {
            let subtitle = format!("Filters: {}", filter.describe());
            natter_export::pdf::write("natter audit trail", &subtitle, counted, sink).await
        }
        _ => export::write(fmt, counted, sink).await,
    };
    if let Some(e) = failed {
        return Err(e).context("writing the export");
    }
    let n = n?;
    file.flush()?;
    bar.finish_and_clear();
    out(&format!("exported {n} records to {}", path.display()));
    store.close().await;
    Ok(())
}

/// The CLI's output goes to stdout, for scripts.
#[allow(clippy::print_stdout)]
pub(crate) fn out(s: &str) {
    println!("{s}");
}
