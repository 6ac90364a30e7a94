//! The audit trail at scale: how long appending a batch takes (the audit
//! role's apply, with the head read from the database as when a worker
//! takes the chain, and with the head in memory) and how long each filter
//! of the logs API answers, with 1,000 records and then with `--records`.

use natter_shared::audit::{AuditFact, AuditPage, AuditRecord, FactStatus, GENESIS};
use natter_shared::v1::command::RoomFields;
use natter_tests::TestApp;
use natter_workers::Handler;
use natter_workers::audit::{AuditHandler, Chain};
use natter_workers::handler::{Done, Incoming};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct AuditArgs {
    /// Records in the trail for the second measurement.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Facts appended per batch.
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Times each measurement is repeated (the median is printed).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

const USERS: u64 = 1000;
const CONVERSATIONS: u64 = 500;
const GROUPS: u64 = 50;
/// Milliseconds between records.
const STEP_MS: i64 = 10;
const EPOCH_MS: i64 = 1_767_225_600_000;

fn id(kind: u64, n: u64) -> String {
    format!("{:08x}{:016x}", kind, n)
}

/// The fact for command `seq`: mostly sends, some receipts, a few group
/// changes, spread over users and rooms.
fn fact(seq: u64) -> AuditFact {
    let (action, room) = match seq % 100 {
        0..=79 => ("send_message", seq % (CONVERSATIONS + GROUPS)),
        80..=94 => ("mark_delivered", seq % CONVERSATIONS),
        95..=98 => ("mark_read", seq % CONVERSATIONS),
        _ => ("add_member", CONVERSATIONS + seq % GROUPS),
    };
    let room = if room < CONVERSATIONS {
        RoomFields { conversation_id: Some(id(1, room)), group_id: None }
    } else {
        RoomFields { conversation_id: None, group_id: Some(id(2, room)) }
    };
    AuditFact {
        v: 1,
        seq,
        time_ms: EPOCH_MS + seq as i64 * STEP_MS,
        role: "messages".into(),
        action: action.into(),
        actor: Some(id(3, seq % USERS).parse().expect("user id")),
        roles: vec![],
        room,
        targets: BTreeMap::from([("messageId".to_string(), id(4, seq))]),
        status: FactStatus::Applied,
        reason: None,
        code: None,
        meta: BTreeMap::from([("via".to_string(), "socketio".to_string())]),
    }
}

/// Appends records `from..=to` straight to the trail (a valid chain, in
/// pages of `page` records as the audit role would have written them).
async fn fill(app: &TestApp, from: u64, to: u64, page: usize, prev: &mut String) {
    let mut records = Vec::with_capacity(page);
    let mut pages = Vec::new();
    let mut first = from as i64;
    let started = Instant::now();
    for seq in from..=to {
        let r = AuditRecord::from_fact(&fact(seq), seq, prev);
        prev.clone_from(&r.hash);
        records.push(r);
        if records.len() == page || seq == to {
            pages.push(AuditPage::new(first, seq as i64, std::mem::take(&mut records)));
            first = seq as i64 + 1;
        }
        if pages.len() == 20 || seq == to {
            app.store.audit().insert_many(std::mem::take(&mut pages)).await.expect("insert pages");
        }
        if seq % 100_000 == 0 {
            eprintln!("  {seq} records ({:.0} s)", started.elapsed().as_secs_f64());
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Appending `batch` facts after record `last`, as the audit role does.
async fn append(app: &TestApp, last: &mut u64, batch: usize, fresh: bool, chain: &mut Chain) -> Duration {
    let handler = AuditHandler::new(app.store.clone(), None);
    if fresh {
        *chain = Chain::default();
    }
    let incoming: Vec<Incoming<AuditFact>> = (1..=batch as u64)
        .map(|i| {
            let seq = *last + i;
            let f = fact(seq);
            Incoming {
                seq,
                time: mongodb::bson::DateTime::from_millis(f.time_ms),
                subject: "bench.out.messages".into(),
                msg: f,
            }
        })
        .collect();
    let started = Instant::now();
    let mut done = Done::new();
    handler.apply(chain, &incoming, &mut done).await.expect("append");
    let took = started.elapsed();
    assert_eq!(done.len(), batch);
    *last += batch as u64;
    took
}

/// The logs API's filters, each with a value that matches some records.
fn filters(records: u64) -> Vec<(&'static str, String)> {
    let mid = EPOCH_MS + (records / 2) as i64 * STEP_MS;
    let iso = |ms: i64| natter_shared::timefmt::iso(mongodb::bson::DateTime::from_millis(ms));
    vec![
        ("none", String::new()),
        ("action (common)", "action=message_sent".into()),
        ("action (rare)", "action=member_added".into()),
        ("actor", format!("actor={}", id(3, 7))),
        ("conversationId", format!("conversationId={}", id(1, 7))),
        ("groupId", format!("groupId={}", id(2, CONVERSATIONS + 7))),
        ("target", format!("target={}", id(4, records / 3))),
        ("from/to (one minute)", format!("from={}&to={}", iso(mid), iso(mid + 60_000))),
    ]
}

async fn logs(app: &TestApp, edge: SocketAddr, query: &str, token: &str) -> (Duration, usize) {
    let started = Instant::now();
    let resp = app
        .http()
        .get(format!("http://{edge}/api/chat/audit/logs?limit=50&{query}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("logs");
    assert_eq!(resp.status().as_u16(), 200, "{query}");
    let body: serde_json::Value = resp.json().await.expect("json");
    (started.elapsed(), body["logs"].as_array().map_or(0, |l| l.len()))
}

/// Every figure at the trail's current size.
async fn measure(app: &TestApp, edge: SocketAddr, args: &AuditArgs, last: &mut u64) -> Vec<(String, Duration)> {
    let mut out = Vec::new();
    let mut chain = Chain::default();
    let mut fresh = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..args.repeat {
        fresh.push(append(app, last, args.batch, true, &mut chain).await);
        warm.push(append(app, last, args.batch, false, &mut chain).await);
    }
    out.push((format!("append {} (head read)", args.batch), median(fresh)));
    out.push((format!("append {} (head in memory)", args.batch), median(warm)));
    let token = app.token(app.user(), &["Admin"]);
    for (name, q) in filters(*last) {
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..args.repeat {
            let (t, n) = logs(app, edge, &q, &token).await;
            times.push(t);
            found = n;
        }
        out.push((format!("logs {name} ({found} on the page)"), median(times)));
    }
    out
}

#[allow(clippy::print_stdout)]
pub async fn run(args: AuditArgs) {
    let mut app = TestApp::new().await;
    let edge = app.start_edge_process().await;
    let mut prev = GENESIS.to_string();
    fill(&app, 1, 1000, args.batch, &mut prev).await;
    let mut last = 1000u64;
    let small = measure(&app, edge, &args, &mut last).await;
    // The measurement appended through the chain: continue from its head.
    let (pos, hash) = natter_shared::audit::head(&app.store.audit()).await.expect("head").expect("records");
    (last, prev) = (pos as u64, hash);
    let target = args.records.max(last + 1);
    eprintln!("filling the trail to {target} records");
    fill(&app, last + 1, target, args.batch, &mut prev).await;
    last = target;
    let large = measure(&app, edge, &args, &mut last).await;
    println!("natter-bench audit: median of {} (ms)", args.repeat);
    println!("  {:<44} {:>12} {:>14}", "", "1,000 records", format!("{} records", args.records));
    for ((name, a), (_, b)) in small.iter().zip(&large) {
        println!("  {name:<44} {:>12.2} {:>14.2}", a.as_secs_f64() * 1000.0, b.as_secs_f64() * 1000.0);
    }
}
