//! Search at scale: `--messages` messages (8 words each from a vocabulary
//! where a few words are very common and most are rare) over `--rooms`
//! conversations, applied by a messages worker process from the command
//! stream as in production; then `GET /api/chat/search` through the edge,
//! as a user in `--member-of` of the rooms: latency per kind of query.

use natter_nats::Subjects;
use natter_shared::ids::{RoomKind, RoomRef, UserId, conversation_id_for, message_id_for};
use natter_shared::v1::command::{Command, CommandEnvelope, CreateConversationCmd, RoomFields, SendMessageCmd};
use natter_tests::TestApp;
use std::time::{Duration, Instant};

#[derive(clap::Args, Clone, Debug)]
pub struct SearchArgs {
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 200)]
    pub rooms: usize,
    /// Rooms the searching user is in.
    #[arg(long, default_value_t = 20)]
    pub member_of: usize,
    /// Distinct words.
    #[arg(long, default_value_t = 20_000)]
    pub vocabulary: u64,
    /// Queries of each kind.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
}

/// A small deterministic generator (xorshift64*): the same data each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A word rank, log-uniform over the vocabulary: rank 1 is as likely
    /// as ranks 1,000 to 10,000 together.
    fn rank(&mut self, vocabulary: u64) -> u64 {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((vocabulary as f64).powf(u) as u64).clamp(1, vocabulary)
    }
}

/// Makes one query string of a kind.
type Query = Box<dyn Fn(&mut Rng) -> String>;

fn word(rank: u64) -> String {
    format!("w{rank}")
}

async fn publish(app: &TestApp, args: &SearchArgs, me: UserId) -> Vec<RoomRef> {
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    let s = Subjects::new(&app.name);
    let pairs: Vec<(UserId, UserId)> =
        (0..args.rooms).map(|i| (if i < args.member_of { me } else { app.user() }, app.user())).collect();
    let rooms: Vec<RoomRef> =
        pairs.iter().map(|(a, b)| RoomRef::new(RoomKind::Conversation, conversation_id_for(*a, *b).to_hex())).collect();
    let send = |actor: UserId, r: &RoomRef, command: Command| {
        let env =
            CommandEnvelope { v: natter_shared::v1::VERSION, actor, roles: vec![], reply: None, meta: None, command };
        (s.command(r.kind, &r.id, env.command.action()), serde_json::to_vec(&env).expect("encode"))
    };
    let mut acks = Vec::new();
    for (i, (a, b)) in pairs.iter().enumerate() {
        let c = CreateConversationCmd { conversation_id: rooms[i].id.parse().expect("id"), participant_ids: [*a, *b] };
        let (subject, body) = send(*a, &rooms[i], Command::CreateConversation(c));
        acks.push(js.publish(subject, body.into()).await.expect("publish"));
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for n in 0..args.messages {
        let i = (n as usize) % rooms.len();
        let (a, _) = pairs[i];
        let content: Vec<String> = (0..8).map(|_| word(rng.rank(args.vocabulary))).collect();
        let client_msg_id = format!("s{n}");
        let cmd = SendMessageCmd {
            message_id: message_id_for(a, &client_msg_id).into(),
            room: RoomFields::of(&rooms[i]),
            content: content.join(" "),
            message_type: natter_shared::model::MessageType::Text,
            client_msg_id,
            attachments: vec![],
            reply_to: None,
            mentions: vec![],
        };
        let (subject, body) = send(a, &rooms[i], Command::SendMessage(cmd));
        acks.push(js.publish(subject, body.into()).await.expect("publish"));
        if acks.len() >= 2000 {
            for ack in acks.drain(..) {
                ack.await.expect("pub ack");
            }
        }
    }
    for ack in acks {
        ack.await.expect("pub ack");
    }
    rooms
}

#[allow(clippy::print_stdout)]
pub async fn run(args: SearchArgs) {
    let mut app = TestApp::new().await;
    // The bench measures search, not the per-user REST limit.
    app.edge_env.insert("REST_RATE_PER_SEC".into(), "100000".into());
    let edge = app.start_edge_process().await;
    app.start_worker_process();
    let me = app.user();
    let started = Instant::now();
    let rooms = publish(&app, &args, me).await;
    eprintln!("published {} messages in {:.1} s", args.messages, started.elapsed().as_secs_f64());
    loop {
        let n = app.store.messages().estimated_document_count().await.unwrap_or(0);
        if n >= args.messages {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("applied and indexed in {:.1} s", started.elapsed().as_secs_f64());
    // Let the last writes settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let token = app.token(me, &[]);
    let http = app.http();
    let mut rng = Rng(42);
    let kinds: Vec<(&str, Query)> = vec![
        ("common word (rank 1-3)", Box::new(|r: &mut Rng| format!("q={}", word(1 + r.next() % 3)))),
        ("mid word (rank 50-150)", Box::new(|r: &mut Rng| format!("q={}", word(50 + r.next() % 100)))),
        ("rare word (rank 5000+)", Box::new(move |r: &mut Rng| format!("q={}", word(5000 + r.next() % 10_000)))),
        (
            "two words (mid + common)",
            Box::new(|r: &mut Rng| format!("q={}+{}", word(50 + r.next() % 100), word(1 + r.next() % 3))),
        ),
        (
            "mid word, one room",
            Box::new({
                let room = rooms[0].id.clone();
                move |r: &mut Rng| format!("q={}&room={room}", word(50 + r.next() % 100))
            }),
        ),
    ];
    println!("search over {} messages in {} rooms, the user in {}:", args.messages, args.rooms, args.member_of);
    for (name, query) in kinds {
        let mut lat = Vec::with_capacity(args.queries);
        let mut hits = 0usize;
        for _ in 0..args.queries {
            let q = query(&mut rng);
            let t = Instant::now();
            let resp = http
                .get(format!("http://{edge}/api/chat/search?{q}&limit=20"))
                .bearer_auth(&token)
                .send()
                .await
                .expect("search");
            assert_eq!(resp.status().as_u16(), 200, "{q}");
            let v: serde_json::Value = resp.json().await.expect("json");
            lat.push(t.elapsed().as_micros() as u64);
            hits += v["messages"].as_array().map_or(0, Vec::len);
        }
        lat.sort_unstable();
        println!(
            "  {name:<28} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  results/query {:.1}",
            crate::load::pct(&lat, 0.5),
            crate::load::pct(&lat, 0.99),
            *lat.last().unwrap_or(&0) as f64 / 1000.0,
            hits as f64 / args.queries as f64
        );
    }
}
