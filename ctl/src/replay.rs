//! `natterctl replay`: reads the command stream (all of it, from a sequence
//! or a time, up to the end it has when replay starts or a time; optionally
//! some subjects or rooms) with ephemeral ordered consumers, so the live
//! workers' durable consumers are never touched, and applies it through the
//! workers' own `MessagesHandler` to the live database (where what is
//! applied already is a no-op) or to a fresh one. Then the outcome facts
//! through the `AuditHandler`, which rebuilds the audit chain record for
//! record. Events are not published: nobody is told twice.
//!
//! Progress is kept in a state file after every batch, so an interrupted
//! replay resumes where it stopped (and applying a command twice is a no-op
//! anyway).

use crate::out;
use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use natter_nats::{PartitionState, RoomKind, Subjects};
use natter_shared::config::{CoreConfig, Env};
use natter_shared::store::Store;
use natter_workers::audit::AuditHandler;
use natter_workers::handler::{Disposition, Done, Handler, Incoming};
use natter_workers::messages::{MessagesHandler, Rooms};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Start at this command sequence (default: the first).
    #[arg(long)]
    from_seq: Option<u64>,
    /// Start with the commands stored at this time (RFC 3339).
    #[arg(long, conflicts_with = "from_seq")]
    since: Option<String>,
    /// Stop before the first command stored after this time (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// Only commands on these subjects (NATS wildcards allowed).
    #[arg(long = "subject")]
    subjects: Vec<String>,
    /// Only these rooms: `conversation:<id>` or `group:<id>`.
    #[arg(long = "room")]
    rooms: Vec<String>,
    /// Rebuild into this (empty) database on the same server instead of
    /// the live one.
    #[arg(long)]
    into_db: Option<String>,
    /// Commands applied per batch.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Replay the partitions with this many tasks in parallel (rooms are
    /// independent; each task keeps its rooms' order).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Where progress is kept (default `natter-replay.<database>.json`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Ignore the saved progress and start over.
    #[arg(long)]
    restart: bool,
    /// Skip the audit trail (it is skipped anyway when subjects, rooms or a
    /// time range select only part of the commands).
    #[arg(long)]
    no_audit: bool,
    /// No progress bar (for scripts and tests).
    #[arg(long)]
    quiet: bool,
    /// Write with one command per collection, as for servers before
    /// MongoDB 8.0 (those are found out and written to so anyway).
    #[arg(long)]
    no_bulk_write: bool,
}

/// Progress: the last sequence applied per consumer filter, and of the
/// outcomes stream.
#[derive(Default, Serialize, Deserialize)]
struct Progress {
    database: String,
    commands: BTreeMap<String, u64>,
    outcomes: u64,
}

struct StateFile {
    path: PathBuf,
    progress: Mutex<Progress>,
}

impl StateFile {
    /// Writes the progress (under its lock: replay tasks save concurrently,
    /// and each save replaces the file through the same temporary one).
    fn save(&self) -> anyhow::Result<()> {
        let p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
        let body = serde_json::to_vec_pretty(&*p)?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    fn command_seq(&self, key: &str) -> u64 {
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).commands.get(key).copied().unwrap_or(0)
    }
}

/// What a replay did.
#[derive(Default, Debug)]
struct Counts {
    applied: u64,
    refused: u64,
    poison: u64,
    skipped: u64,
    /// The first few commands that cannot be applied, and why.
    reasons: Vec<(u64, String)>,
}

impl Counts {
    fn poison(&mut self, seq: u64, reason: String) {
        self.poison += 1;
        if self.reasons.len() < 20 {
            self.reasons.push((seq, reason));
        }
    }
}

fn time_arg(v: &Option<String>, name: &str) -> anyhow::Result<Option<time::OffsetDateTime>> {
    v.as_deref()
        .map(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--{name} is not an RFC 3339 date-time"))
        })
        .transpose()
}

/// The consumer filters: the partitions split among the workers, or the
/// subjects and rooms asked for. The stream may hold commands published
/// under every count of the deployment's history, so the split is by a
/// number of workers that divides each (a room's commands then all go to
/// one worker), over every partition any of them had.
fn filters(a: &ReplayArgs, s: &Subjects, parts: &PartitionState) -> anyhow::Result<Vec<Vec<String>>> {
    let mut chosen = a.subjects.clone();
    for r in &a.rooms {
        let (kind, id) = r.split_once(':').context("--room is conversation:<id> or group:<id>")?;
        let kind = match kind {
            "conversation" => RoomKind::Conversation,
            "group" => RoomKind::Group,
            _ => anyhow::bail!("--room is conversation:<id> or group:<id>"),
        };
        chosen.push(s.room_commands(kind, id));
    }
    if !chosen.is_empty() {
        return Ok(vec![chosen]);
    }
    let n = parts.replay_split(u32::try_from(a.workers).unwrap_or(u32::MAX));
    Ok((0..n).map(|k| (0..parts.widest()).filter(|p| p % n == k).map(|p| s.partition(p)).collect()).collect())
}

pub async fn run(a: ReplayArgs) -> anyhow::Result<()> {
    let core = CoreConfig::load(&Env)?;
    let js = crate::connect(&core).await?;
    let s = Subjects::new(&core.nats_namespace);
    let parts = crate::partitions::load(&js, &s).await?;
    let db = a.into_db.clone().unwrap_or_else(|| core.mongodb_db.clone());
    let store = Store::connect(&core.mongodb_uri, &db).await?;
    store.ensure_indexes().await?;
    let path = a.state.clone().unwrap_or_else(|| PathBuf::from(format!("natter-replay.{db}.json")));
    let saved: Option<Progress> = match (a.restart, std::fs::read(&path)) {
        (false, Ok(b)) => Some(serde_json::from_slice(&b).with_context(|| format!("{}", path.display()))?),
        _ => None,
    };
    if let Some(p) = &saved {
        anyhow::ensure!(p.database == db, "{} is the progress of a replay into `{}`", path.display(), p.database);
    }
    if a.into_db.is_some() && saved.is_none() && !empty(&store).await? {
        anyhow::bail!("database `{db}` is not empty: rebuild into a new one, or resume with its state file");
    }
    let state = Arc::new(StateFile {
        path,
        progress: Mutex::new(saved.unwrap_or_else(|| Progress { database: db.clone(), ..Default::default() })),
    });
    // Written before anything is applied: a replay interrupted at any point
    // resumes with it (a non-empty database without it is refused).
    state.save()?;

    let since = time_arg(&a.since, "since")?;
    let until = time_arg(&a.until, "until")?;
    let partial =
        !a.subjects.is_empty() || !a.rooms.is_empty() || a.from_seq.is_some() || since.is_some() || until.is_some();

    let mut cmd_stream = js.get_stream(s.cmd_stream()).await.context("the command stream")?;
    let end = cmd_stream.info().await?.state.last_sequence;
    let handler = MessagesHandler::new(store.clone(), s.clone());
    let handler = Arc::new(if a.no_bulk_write { handler.per_collection_writes() } else { handler });
    let mut tasks = Vec::new();
    let mut total = 0;
    let mut plans = Vec::new();
    for f in filters(&a, &s, &parts)? {
        let key = f.join(",");
        let resume = state.command_seq(&key);
        let deliver = if resume > 0 {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: resume + 1 }
        } else if let Some(seq) = a.from_seq {
            consumer::DeliverPolicy::ByStartSequence { start_sequence: seq.max(1) }
        } else if let Some(t) = since {
            consumer::DeliverPolicy::ByStartTime { start_time: t }
        } else {
            consumer::DeliverPolicy::All
        };
        let mut c = cmd_stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subjects: f.clone(),
                deliver_policy: deliver,
                description: Some("natterctl replay".into()),
                ..Default::default()
            })
            .await
            .context("creating a replay consumer")?;
        let pending = c.info().await?.num_pending;
        total += pending;
        plans.push((key, c, pending));
    }
    let bar = progress_bar(total, "commands", a.quiet);
    for (key, c, pending) in plans {
        let ctx = Replay {
            handler: handler.clone(),
            state: state.clone(),
            bar: bar.clone(),
            batch: a.batch.max(1),
            end,
            until,
        };
        tasks.push(tokio::spawn(async move { ctx.commands(key, c, pending).await }));
    }
    let mut counts = Counts::default();
    for t in tasks {
        let c = t.await.context("replay task")??;
        counts.applied += c.applied;
        counts.refused += c.refused;
        counts.poison += c.poison;
        counts.skipped += c.skipped;
        counts.reasons.extend(c.reasons);
    }
    bar.finish_and_clear();
    out(&format!(
        "replayed commands into `{db}` up to seq {end}: {} applied (or already applied), {} refused, {} dead letters, {} for other roles",
        counts.applied, counts.refused, counts.poison, counts.skipped
    ));
    counts.reasons.sort();
    for (seq, reason) in &counts.reasons {
        out(&format!("  not applicable: seq {seq}: {reason}"));
    }

    if a.no_audit || partial {
        out("audit trail not replayed");
        return Ok(());
    }
    let n = audit(&js, &s, &store, &state, a.batch.max(1), a.quiet).await?;
    out(&format!("replayed {n} outcome facts into the audit trail of `{db}`"));
    Ok(())
}

async fn empty(store: &Store) -> anyhow::Result<bool> {
    use mongodb::bson::doc;
    Ok(store.messages().count_documents(doc! {}).await? == 0
        && store.conversations().count_documents(doc! {}).await? == 0
        && store.groups().count_documents(doc! {}).await? == 0
        && store.audit().count_documents(doc! {}).await? == 0)
}

fn progress_bar(total: u64, what: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let template = format!("{{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}");
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

struct Replay {
    handler: Arc<MessagesHandler>,
    state: Arc<StateFile>,
    bar: indicatif::ProgressBar,
    batch: usize,
    end: u64,
    until: Option<time::OffsetDateTime>,
}

impl Replay {
    async fn commands(
        &self,
        key: String,
        c: consumer::Consumer<consumer::pull::OrderedConfig>,
        pending: u64,
    ) -> anyhow::Result<Counts> {
        let mut counts = Counts::default();
        if pending == 0 {
            return Ok(counts);
        }
        let mut rooms = Rooms::default();
        let mut msgs = c.messages().await.context("reading the command stream")?;
        let mut batch: Vec<Incoming> = Vec::with_capacity(self.batch);
        let mut last = 0;
        loop {
            let Some(m) = msgs.next().await else { break };
            let m = m.map_err(|e| anyhow::anyhow!("reading the command stream: {e}"))?;
            let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
            let (seq, remaining, published) = (info.stream_sequence, info.pending, info.published);
            if seq > self.end || self.until.is_some_and(|u| published > u) {
                break;
            }
            last = seq;
            // A command this version cannot read was dead-lettered live too.
            match Incoming::decode(&m) {
                Ok(inc) => batch.push(inc),
                Err(reason) => counts.poison(seq, reason),
            }
            self.bar.inc(1);
            let done = remaining == 0 || seq >= self.end;
            if batch.len() >= self.batch || done {
                self.apply(&mut rooms, &mut batch, &mut counts).await;
                self.mark(&key, last)?;
            }
            if done {
                break;
            }
        }
        if !batch.is_empty() {
            self.apply(&mut rooms, &mut batch, &mut counts).await;
            self.mark(&key, last)?;
        }
        Ok(counts)
    }

    fn mark(&self, key: &str, seq: u64) -> anyhow::Result<()> {
        self.state.progress.lock().unwrap_or_else(|e| e.into_inner()).commands.insert(key.to_string(), seq);
        self.state.save()
    }

    /// Applies a batch and counts what became of each command.
    async fn apply(&self, rooms: &mut Rooms, batch: &mut Vec<Incoming>, counts: &mut Counts) {
        let mut done = apply_retrying(&*self.handler, rooms, batch).await;
        for inc in batch.drain(..) {
            match done.remove(&inc.seq) {
                Some(Disposition::Applied(_)) => counts.applied += 1,
                Some(Disposition::Refused { .. }) => counts.refused += 1,
                Some(Disposition::Poison(reason)) => counts.poison(inc.seq, reason),
                Some(Disposition::NotMine) | None => counts.skipped += 1,
            }
        }
    }
}

/// Applies a batch as a worker would (`settle`: transient failures retried
/// until they pass, a command MongoDB keeps refusing is not applicable);
/// what became of each message.
async fn apply_retrying<H: Handler>(handler: &H, state: &mut H::State, batch: &[Incoming<H::Msg>]) -> Done {
    natter_workers::handler::settle(handler, state, batch, |attempt| async move {
        tokio::time::sleep(natter_workers::runner::backoff(attempt)).await;
        true
    })
    .await
    .unwrap_or_default()
}

/// Replays the outcome facts through the audit role, resuming after the
/// last one applied.
async fn audit(
    js: &jetstream::Context,
    s: &Subjects,
    store: &Store,
    state: &StateFile,
    size: usize,
    quiet: bool,
) -> anyhow::Result<u64> {
    let mut stream = js.get_stream(s.outcomes_stream()).await.context("the outcomes stream")?;
    let end = stream.info().await?.state.last_sequence;
    let from = state.progress.lock().unwrap_or_else(|e| e.into_inner()).outcomes;
    if from >= end {
        return Ok(0);
    }
    let deliver = if from > 0 {
        consumer::DeliverPolicy::ByStartSequence { start_sequence: from + 1 }
    } else {
        consumer::DeliverPolicy::All
    };
    let c = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: deliver,
            description: Some("natterctl replay (audit)".into()),
            ..Default::default()
        })
        .await?;
    let bar = progress_bar(end - from, "outcome facts", quiet);
    let handler = AuditHandler::new(store.clone(), None);
    let mut msgs = c.messages().await?;
    let mut batch: Vec<Incoming<natter_shared::audit::AuditFact>> = Vec::new();
    let mut n = 0;
    let mut chain = natter_workers::audit::Chain::default();
    let mut flush = async |batch: &mut Vec<Incoming<natter_shared::audit::AuditFact>>| -> anyhow::Result<()> {
        apply_retrying(&handler, &mut chain, batch).await;
        if let Some(last) = batch.last() {
            state.progress.lock().unwrap_or_else(|e| e.into_inner()).outcomes = last.seq;
            state.save()?;
        }
        batch.clear();
        Ok(())
    };
    while let Some(m) = msgs.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("reading the outcomes stream: {e}"))?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, remaining) = (info.stream_sequence, info.pending);
        if seq > end {
            break;
        }
        // A fact this version cannot read was dead-lettered live: it is
        // not in the chain there either.
        if let Ok(fact) = Incoming::decode(&m) {
            batch.push(fact);
        }
        n += 1;
        bar.inc(1);
        let done = remaining == 0 || seq >= end;
        if batch.len() >= size || done {
            flush(&mut batch).await?;
        }
        if done {
            break;
        }
    }
    flush(&mut batch).await?;
    bar.finish_and_clear();
    Ok(n)
}
