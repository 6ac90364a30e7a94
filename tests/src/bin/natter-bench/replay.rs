//! Replay speed: `natterctl replay --into-db` of `--commands` commands
//! (conversations, then sends with some delivery and read receipts), timed
//! against `insert_many` of the documents the replay produced, into another
//! database on the same server, in the same run.

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use natter_nats::Subjects;
use natter_shared::ids::{UserId, conversation_id_for, message_id_for};
use natter_shared::v1::command::{
    Command, CommandEnvelope, CreateConversationCmd, MarkDeliveredCmd, MarkReadCmd, RoomFields, SendMessageCmd,
};
use natter_shared::{ids::RoomRef, store::Store};
use natter_tests::{TestApp, procs};
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct ReplayArgs {
    /// Commands in the stream.
    #[arg(long, default_value_t = 100_000)]
    pub commands: u64,
    /// Conversations they spread over.
    #[arg(long, default_value_t = 200)]
    pub rooms: u64,
    /// Commands per replay batch (`natterctl replay --batch`).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

fn envelope(actor: UserId, command: Command) -> Vec<u8> {
    let env = CommandEnvelope { v: natter_shared::v1::VERSION, actor, roles: vec![], reply: None, meta: None, command };
    serde_json::to_vec(&env).expect("encode")
}

/// Publishes the commands, pipelined; how many.
async fn publish(app: &TestApp, args: &ReplayArgs) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    let s = Subjects::new(&app.name);
    let users: Vec<(UserId, UserId)> = (0..args.rooms).map(|_| (app.user(), app.user())).collect();
    let room = |i: usize| {
        let (a, b) = users[i];
        RoomRef::new(natter_shared::ids::RoomKind::Conversation, conversation_id_for(a, b).to_hex())
    };
    let mut acks = Vec::new();
    let mut n = 0u64;
    let mut last_sent: Vec<Option<natter_shared::ids::MessageId>> = vec![None; users.len()];
    let mut last_seq: Vec<u64> = vec![0; users.len()];
    while n < args.commands {
        let i = (n as usize) % users.len();
        let (a, b) = users[i];
        let r = room(i);
        let k = n / users.len() as u64;
        let (actor, command) = if k == 0 {
            (
                a,
                Command::CreateConversation(CreateConversationCmd {
                    conversation_id: r.id.parse().expect("a conversation id"),
                    participant_ids: [a, b],
                }),
            )
        } else if k.is_multiple_of(10) && last_sent[i].is_some() {
            (
                b,
                Command::MarkDelivered(MarkDeliveredCmd {
                    room: RoomFields::of(&r),
                    seqs: vec![last_seq[i]],
                    more: vec![],
                }),
            )
        } else if k.is_multiple_of(25)
            && let Some(message_id) = last_sent[i]
        {
            (b, Command::MarkRead(MarkReadCmd { room: RoomFields::of(&r), message_id }))
        } else {
            let client_msg_id = format!("m{n}");
            let message_id = message_id_for(a, &client_msg_id).into();
            last_sent[i] = Some(message_id);
            let cmd = SendMessageCmd {
                message_id,
                room: RoomFields::of(&r),
                content: format!("message {n} of the replay benchmark"),
                message_type: natter_shared::model::MessageType::Text,
                client_msg_id,
                attachments: vec![],
                reply_to: None,
                mentions: vec![],
            };
            (a, Command::SendMessage(cmd))
        };
        let subject = s.command(r.kind, &r.id, command.action());
        let body = envelope(actor, command);
        acks.push((i, js.publish(subject, body.into()).await.expect("publish")));
        n += 1;
        if acks.len() >= 2000 || n == args.commands {
            for (i, ack) in acks.drain(..) {
                let seq = ack.await.expect("pub ack").sequence;
                last_seq[i] = last_seq[i].max(seq);
            }
        }
    }
    n
}

/// Every document of `from`'s collections.
async fn documents(db: &mongodb::Database) -> Vec<(String, Vec<Document>)> {
    let mut out = Vec::new();
    for name in ["conversations", "groupchats", "messages"] {
        let docs: Vec<Document> =
            db.collection::<Document>(name).find(doc! {}).await.expect("find").try_collect().await.expect("docs");
        out.push((name.to_string(), docs));
    }
    out
}

#[allow(clippy::print_stdout)]
pub async fn run(args: ReplayArgs) {
    let mut app = TestApp::new().await;
    app.start_edge_process().await; // declares the topology
    let started = Instant::now();
    let n = publish(&app, &args).await;
    eprintln!("published {n} commands in {:.1} s", started.elapsed().as_secs_f64());

    let target = format!("{}_replay", app.db);
    let bin = procs::workspace_bin("natterctl");
    let state = std::env::temp_dir().join(format!("{target}.json"));
    let batch = args.batch.to_string();
    let started = Instant::now();
    let out = tokio::process::Command::new(bin)
        .args(["replay", "--quiet", "--no-audit", "--into-db", &target, "--batch", &batch, "--state"])
        .arg(&state)
        .envs(app.env())
        .output()
        .await
        .expect("natterctl");
    let replay_took = started.elapsed();
    assert!(out.status.success(), "replay: {}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_file(&state);

    let client = mongodb::Client::with_uri_str(&natter_tests::servers().mongodb_base).await.expect("client");
    let docs = documents(&client.database(&target)).await;
    let total: usize = docs.iter().map(|(_, d)| d.len()).sum();
    let copy = format!("{}_insert", app.db);
    let copy_store =
        Store::connect(&format!("{}/{copy}", natter_tests::servers().mongodb_base), &copy).await.expect("store");
    copy_store.ensure_indexes().await.expect("indexes");
    let started = Instant::now();
    for (name, d) in &docs {
        for chunk in d.chunks(args.batch.max(1)) {
            copy_store.db().collection::<Document>(name).insert_many(chunk).await.expect("insert_many");
        }
    }
    let insert_took = started.elapsed();
    let rate = |k: f64, t: Duration| k / t.as_secs_f64().max(1e-9);
    println!(
        "natter-bench replay: {n} commands replayed in {:.2} s ({:.0} commands/s) into {total} documents ({})",
        replay_took.as_secs_f64(),
        rate(n as f64, replay_took),
        docs.iter().map(|(c, d)| format!("{c} {}", d.len())).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  insert_many of those documents (batches of {}): {:.2} s ({:.0} documents/s): the replay goes at {:.0} % of insert_many's pace",
        args.batch,
        insert_took.as_secs_f64(),
        rate(total as f64, insert_took),
        100.0 * insert_took.as_secs_f64() / replay_took.as_secs_f64().max(1e-9),
    );
    client.database(&target).drop().await.expect("drop");
    client.database(&copy).drop().await.expect("drop");
}
