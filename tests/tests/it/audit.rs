//! The audit trail: one record per command with the right actor and target,
//! also across a killed audit worker and redelivery; tampering detected.

use async_nats::jetstream;
use mongodb::bson::doc;
use natter_nats::Subjects;
use natter_shared::audit::{AuditPage, AuditRecord, Verdict, verify};
use natter_tests::procs;
use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

async fn commands_in_stream(app: &TestApp) -> u64 {
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let js = jetstream::new(nats);
    let mut s = js.get_stream(Subjects::new(&app.name).cmd_stream()).await.unwrap();
    s.info().await.unwrap().state.messages
}

async fn pages(app: &TestApp) -> Vec<AuditPage> {
    use futures::TryStreamExt;
    app.store.audit().find(doc! {}).sort(doc! {"_id": 1}).await.unwrap().try_collect().await.unwrap()
}

/// Every record, in chain order.
async fn records(app: &TestApp) -> Vec<AuditRecord> {
    pages(app).await.into_iter().flat_map(|p| p.records).collect()
}

async fn record_count(app: &TestApp) -> u64 {
    records(app).await.len() as u64
}

/// Rewrites the stored trail through `f`, which gets every record in chain
/// order with the page it is stored in (as an attacker with write access
/// to the database could).
async fn tamper(app: &TestApp, f: impl FnOnce(&mut Vec<(usize, AuditRecord)>)) {
    let mut pages = pages(app).await;
    let mut flat: Vec<(usize, AuditRecord)> = pages
        .iter_mut()
        .enumerate()
        .flat_map(|(i, p)| std::mem::take(&mut p.records).into_iter().map(move |r| (i, r)))
        .collect();
    f(&mut flat);
    for (i, r) in flat {
        pages[i].records.push(r);
    }
    for p in pages {
        app.store.audit().replace_one(doc! {"_id": p.first}, &p).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_record_per_command_through_a_killed_audit_worker() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let first = app.start_role_process("audit");
    let (admin, a, b, out) = (app.user(), app.user(), app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let g = app.create_group(e, admin, &[a]).await;
    let t_admin = app.token(admin, &["Admin"]);
    app.call(Method::PATCH, e, &format!("/api/chat/groups/{g}"), &t_admin, Some(json!({"name": "renamed"}))).await;
    app.call(Method::POST, e, &format!("/api/chat/groups/{g}/members"), &t_admin, Some(json!({"userId": b.hex()})))
        .await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        if i == 20 {
            app.processes[first].kill9().await;
            app.start_role_process("audit");
        }
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        ids.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    let r = wa.request("send_message", json!({"groupId": g, "content": "to the group"})).await;
    assert_eq!(r["type"], "ack");
    // Remove B from the group (B stays in the 1:1 conversation).
    app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}/members/{}", b.hex()), &t_admin, None).await;
    natter_tests::eventually("40 messages stored", Duration::from_secs(30), || async {
        let n = app.store.messages().count_documents(doc! {"conversationId": &conv}).await.ok()?;
        (n == 40).then_some(())
    })
    .await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    let r = wb.request("mark_as_read", json!({"messageId": ids[39]})).await;
    assert_eq!(r["type"], "ack");
    let r = wa.request("delete_message", json!({"messageId": ids[0]})).await;
    assert_eq!(r["type"], "ack");
    // An outsider's refused REST call never becomes a command: nothing audited.
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}"), &app.token(out, &[]), None).await;
    assert_eq!(s, 403);
    app.call(Method::POST, e, &format!("/api/chat/groups/{g}/leave"), &app.token(a, &[]), None).await;

    // Every command in the stream has exactly one record, whatever the
    // kill and the redelivery did.
    let total = natter_tests::eventually("every command audited", Duration::from_secs(60), || async {
        let cmds = commands_in_stream(&app).await;
        let n = record_count(&app).await;
        (n == cmds).then_some(n)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recs = records(&app).await;
    assert_eq!(recs.len() as u64, total, "no extra records after settling");
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for r in &recs {
        *by_action.entry(r.action.clone()).or_default() += 1;
    }
    assert_eq!(by_action.get("message_sent"), Some(&41));
    assert_eq!(by_action.get("conversation_created"), Some(&1));
    assert_eq!(by_action.get("group_created"), Some(&1));
    assert_eq!(by_action.get("group_updated"), Some(&1));
    assert_eq!(by_action.get("member_added"), Some(&1));
    assert_eq!(by_action.get("member_removed"), Some(&1));
    assert_eq!(by_action.get("member_left"), Some(&1));
    assert_eq!(by_action.get("message_read"), Some(&1));
    assert_eq!(by_action.get("message_deleted"), Some(&1));
    assert!(!by_action.contains_key("group_deleted"), "a refused REST call stores no command");
    let deleted = recs.iter().find(|r| r.action == "message_deleted").unwrap();
    assert_eq!(deleted.actor.as_deref(), Some(a.hex().as_str()));
    assert_eq!(deleted.targets.get("messageId"), Some(&ids[0]));
    assert_eq!(deleted.conversation_id.as_deref(), Some(conv.as_str()));
    assert_eq!(deleted.status, natter_shared::audit::FactStatus::Applied);
    assert_eq!(deleted.meta.get("via").map(String::as_str), Some("ws"), "{:?}", deleted.meta);
    assert!(deleted.meta.contains_key("requestId"));
    let removed = recs.iter().find(|r| r.action == "member_removed").unwrap();
    assert_eq!((removed.actor.as_deref(), removed.targets.get("userId")), (Some(admin.hex().as_str()), Some(&b.hex())));
    assert_eq!(removed.roles, vec!["Admin".to_string()]);
    assert_eq!(removed.meta.get("via").map(String::as_str), Some("rest"));
    assert_eq!(removed.meta.get("route").map(String::as_str), Some("DELETE /api/chat/groups/{id}/members/{user_id}"));
    assert!(recs.iter().all(|r| r.meta.values().all(|v| !v.contains("eyJ"))), "no token in the trail");
    let read = recs.iter().find(|r| r.action == "message_read").unwrap();
    assert_eq!(read.actor.as_deref(), Some(b.hex().as_str()));
    let unique: std::collections::HashSet<i64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(unique.len(), recs.len(), "one record per command seq");
    assert!(matches!(verify(&app.store.audit(), None).await.unwrap(), Verdict::Intact { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_breaks_the_chain_where_it_happened() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    app.start_audit_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    for i in 0..10 {
        wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
    }
    natter_tests::eventually("11 records", Duration::from_secs(30), || async {
        (record_count(&app).await >= 11).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let coll = app.store.audit();
    let recs = records(&app).await;
    match verify(&coll, None).await.unwrap() {
        Verdict::Intact { records, head } => {
            assert_eq!(records as usize, recs.len());
            assert_eq!(head, recs.last().unwrap().hash);
        }
        other => panic!("untouched log must verify: {other:?}"),
    }
    // natterctl agrees: its library in process, reading the recorded head
    // too; the binary's exit status once, when broken.
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let (js, subjects) = (jetstream::new(nats), Subjects::new(&app.name));
    let ctl_intact =
        async || matches!(natterctl::audit::verify(&app.store, &js, &subjects).await.unwrap(), Verdict::Intact { .. });
    assert!(ctl_intact().await);

    // Edit: the record itself is reported.
    let victim = recs[4].clone();
    tamper(&app, |r| r[4].1.actor = Some(b.hex())).await;
    match verify(&coll, None).await.unwrap() {
        Verdict::Broken(x) => assert_eq!((x.seq, x.reason), (victim.seq, "was changed")),
        other => panic!("{other:?}"),
    }
    match natterctl::audit::verify(&app.store, &js, &subjects).await.unwrap() {
        Verdict::Broken(x) => assert_eq!(x.seq, victim.seq),
        other => panic!("{other:?}"),
    }
    let out = std::process::Command::new(procs::workspace_bin("natterctl"))
        .args(["audit", "verify"])
        .envs(app.env())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("seq {}", victim.seq)));
    tamper(&app, |r| r[4].1.actor = Some(a.hex())).await;
    assert!(matches!(verify(&coll, None).await.unwrap(), Verdict::Intact { .. }), "restored");

    // Delete: the record after the gap is reported.
    let mut removed = None;
    tamper(&app, |r| removed = Some(r.remove(6))).await;
    match verify(&coll, None).await.unwrap() {
        Verdict::Broken(x) => assert_eq!(x.seq, recs[7].seq),
        other => panic!("{other:?}"),
    }
    tamper(&app, |r| r.insert(6, removed.take().unwrap())).await;
    assert!(matches!(verify(&coll, None).await.unwrap(), Verdict::Intact { .. }), "restored");

    // Cut the last record off: only the recorded head shows it.
    let head = {
        let nats = async_nats::connect(&app.nats_url).await.unwrap();
        let kv = jetstream::new(nats).get_key_value(Subjects::new(&app.name).audit_head_bucket()).await.unwrap();
        let v = kv.get("head").await.unwrap().expect("the audit worker records its head");
        serde_json::from_slice::<natter_shared::audit::Head>(&v).unwrap()
    };
    let last = recs.last().unwrap();
    assert_eq!((head.chain_seq, head.hash.as_str()), (last.chain_seq, last.hash.as_str()));
    assert!(matches!(verify(&coll, Some(&head)).await.unwrap(), Verdict::Intact { .. }));
    let mut cut = None;
    tamper(&app, |r| cut = r.pop()).await;
    match verify(&coll, Some(&head)).await.unwrap() {
        Verdict::Broken(x) => assert_eq!(x.seq, recs[recs.len() - 2].seq, "{x:?}"),
        other => panic!("a cut tail must be reported: {other:?}"),
    }
    assert!(!ctl_intact().await, "natterctl reads the head too");
    tamper(&app, |r| r.push(cut.take().unwrap())).await;
    assert!(ctl_intact().await);

    // Swap two records' places: the first moved one is reported.
    let y = recs[3].clone();
    tamper(&app, |r| {
        let (x, y) = (r[2].1.clone(), r[3].1.clone());
        (r[2].1, r[3].1) = (y, x);
    })
    .await;
    match verify(&coll, None).await.unwrap() {
        Verdict::Broken(v) => assert_eq!(v.seq, y.seq, "{v:?}"),
        other => panic!("{other:?}"),
    }
}

fn pdf_text(bytes: &[u8]) -> (usize, String) {
    let mut warnings = Vec::new();
    let doc = printpdf::PdfDocument::parse(bytes, &printpdf::PdfParseOptions::default(), &mut warnings).expect("a PDF");
    let pages = doc.extract_text();
    (pages.len(), pages.into_iter().flatten().collect::<Vec<_>>().join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_api_filters_and_exports_agree() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    // Two audit workers at once still make one chain.
    let auditors = [app.start_audit_worker(), app.start_audit_worker()];
    let (admin, a, b) = (app.user(), app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let texts = ["Привет, мир", "Γειά σου κόσμε", "مرحبا بالعالم", "שלום עולם", "plain ascii"];
    let mut first_id = String::new();
    for i in 0..120 {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": texts[i % texts.len()]})).await;
        if i == 0 {
            first_id = r["data"]["messageId"].as_str().unwrap().to_string();
        }
    }
    let total = natter_tests::eventually("all audited", Duration::from_secs(60), || async {
        let cmds = commands_in_stream(&app).await;
        let n = record_count(&app).await;
        (n == cmds && n >= 121).then_some(n)
    })
    .await;
    // Reading the trail is audited too: held back (no audit worker) while
    // this test counts, recorded once one runs again (at the end).
    for w in &auditors {
        w.cancel();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t_admin = app.token(admin, &["Admin"]);
    let t_user = app.token(a, &["Supervisor"]);

    // Admins only.
    for path in [
        "/api/chat/audit/logs",
        "/api/chat/audit/export?format=csv",
        &format!("/api/chat/conversations/{conv}/export?format=json"),
    ] {
        let (s, v) = app.call(Method::GET, e, path, &t_user, None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")), "{path}");
    }

    // All pages of the logs API, newest first.
    let mut all: Vec<Value> = Vec::new();
    for page in 1.. {
        let (s, v) =
            app.call(Method::GET, e, &format!("/api/chat/audit/logs?page={page}&limit=100"), &t_admin, None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["total"], total);
        all.extend(v["logs"].as_array().unwrap().iter().cloned());
        if v["hasMore"] == false {
            break;
        }
    }
    assert_eq!(all.len() as u64, total);
    let seqs: Vec<i64> = all.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");

    // Filters.
    let count = |q: String| {
        let app = &app;
        let t = t_admin.clone();
        async move {
            app.call(Method::GET, e, &format!("/api/chat/audit/logs?{q}"), &t, None).await.1["total"].as_u64().unwrap()
        }
    };
    assert_eq!(count("action=message_sent".into()).await, 120);
    assert_eq!(count(format!("actor={}&action=message_sent", a.hex())).await, 120);
    assert_eq!(count(format!("actor={}&action=message_sent", b.hex())).await, 0);
    assert_eq!(count(format!("target={first_id}")).await, 1);
    assert_eq!(count(format!("conversationId={conv}&action=conversation_created")).await, 1);
    assert_eq!(count("from=2999-01-01T00:00:00Z".into()).await, 0);
    assert_eq!(count("to=2999-01-01T00:00:00Z".into()).await, total);
    let (s, _) = app.call(Method::GET, e, "/api/chat/audit/logs?from=yesterday", &t_admin, None).await;
    assert_eq!(s, 400);

    // CSV and JSON exports parse back to the same records.
    let get = |path: String| {
        let http = app.http();
        let t = t_admin.clone();
        async move {
            let r = http.get(format!("http://{e}{path}")).bearer_auth(t).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "{path}");
            r.bytes().await.unwrap().to_vec()
        }
    };
    let csv_bytes = get("/api/chat/audit/export?format=csv".into()).await;
    let mut rd = csv::Reader::from_reader(csv_bytes.as_slice());
    let headers = rd.headers().unwrap().clone();
    let hash_col = headers.iter().position(|h| h == "hash").unwrap();
    let rows: Vec<csv::StringRecord> = rd.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len() as u64, total);
    let csv_hashes: Vec<&str> = rows.iter().map(|r| r.get(hash_col).unwrap()).collect();
    let api_hashes: Vec<&str> = all.iter().map(|r| r["hash"].as_str().unwrap()).collect();
    assert_eq!(csv_hashes, api_hashes);
    let json_bytes = get("/api/chat/audit/export?format=json".into()).await;
    let parsed: Vec<Value> = serde_json::from_slice(&json_bytes).unwrap();
    assert_eq!(parsed, all, "JSON export equals the logs API");
    let filtered: Vec<Value> =
        serde_json::from_slice(&get(format!("/api/chat/audit/export?format=json&target={first_id}")).await).unwrap();
    assert_eq!(filtered.len(), 1);

    // PDF (the module's default format): a real document across pages.
    let pdf = get("/api/chat/audit/export".into()).await;
    assert!(pdf.starts_with(b"%PDF"));
    let (pages, text) = pdf_text(&pdf);
    assert!(pages >= 2, "the table continues across pages ({pages})");
    assert!(text.contains("natter audit trail"), "{text:.300}");
    assert!(text.contains("message_sent"));
    assert!(
        matches!(verify(&app.store.audit(), None).await.unwrap(), Verdict::Intact { records, .. } if records == total)
    );
    // History export of the conversation, in all three formats, with
    // non-Latin text rendered from the embedded font.
    let hist: Vec<Value> =
        serde_json::from_slice(&get(format!("/api/chat/conversations/{conv}/export?format=json")).await).unwrap();
    assert_eq!(hist.len(), 120);
    assert_eq!(hist[0]["content"], texts[0]);
    let hcsv = get(format!("/api/chat/conversations/{conv}/export?format=csv")).await;
    assert_eq!(csv::Reader::from_reader(hcsv.as_slice()).records().count(), 120);
    let (hpages, htext) = pdf_text(&get(format!("/api/chat/conversations/{conv}/export?format=pdf")).await);
    assert!(hpages >= 2);
    for t in &texts[..4] {
        assert!(htext.contains(t), "PDF text lacks {t}");
    }
    // natterctl exports the same, to a file.
    let out = std::env::temp_dir().join(format!("{}-audit.csv", app.name));
    let status = std::process::Command::new(procs::workspace_bin("natterctl"))
        .args(["audit", "export", "--format", "csv", "--out"])
        .arg(&out)
        .envs(app.env())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&out).unwrap(), csv_bytes);

    // The Admin's reads, chained after the commands once an audit worker runs.
    app.start_audit_worker();
    let reads = natter_tests::eventually("the reads audited", Duration::from_secs(30), || async {
        let (_, v) =
            app.call(Method::GET, e, &format!("/api/chat/audit/logs?actor={}", admin.hex()), &t_admin, None).await;
        let actions: Vec<String> =
            v["logs"].as_array()?.iter().filter_map(|r| r["action"].as_str().map(str::to_string)).collect();
        (actions.iter().any(|a| a == "history_exported") && actions.iter().any(|a| a == "audit_exported"))
            .then_some(actions)
    })
    .await;
    assert!(reads.iter().any(|a| a == "audit_logs_read"), "{reads:?}");
    assert!(
        matches!(verify(&app.store.audit(), None).await.unwrap(), Verdict::Intact { records, .. } if records > total)
    );
}

/// The fact of an applied `send_message` by `actor` at command `seq`, its
/// message and time numbered by `n`.
fn sent_fact(seq: u64, n: u64, actor: natter_shared::ids::UserId) -> natter_shared::audit::AuditFact {
    natter_shared::audit::AuditFact {
        v: 1,
        seq,
        time_ms: 1_700_000_000_000 + n as i64,
        role: "messages".into(),
        action: "send_message".into(),
        actor: Some(actor),
        roles: vec![],
        room: Default::default(),
        targets: BTreeMap::from([("messageId".to_string(), format!("{n:024x}"))]),
        status: natter_shared::audit::FactStatus::Applied,
        reason: None,
        code: None,
        meta: BTreeMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporting_100k_records_streams_with_bounded_memory() {
    let mut app = TestApp::new().await;
    // Its own process: what it holds is measured apart from the tests
    // running beside this one.
    let e = app.start_edge_process().await;
    let pid = app.processes.last().and_then(|p| p.child.id()).expect("edge pid");
    let rss_kib = || procs::rss_kib(pid);
    const N: i64 = 100_000;
    let actor = app.user();
    let mut batch = Vec::with_capacity(5000);
    let mut prev = natter_shared::audit::GENESIS.to_string();
    for seq in 1..=N {
        let fact = sent_fact(seq as u64, seq as u64, actor);
        let r = AuditRecord::from_fact(&fact, seq as u64, &prev);
        prev = r.hash.clone();
        batch.push(r);
        if batch.len() == 5000 {
            // Pages of 256 records, as the audit role writes them.
            let pages: Vec<AuditPage> = std::mem::take(&mut batch)
                .chunks(256)
                .map(|c| AuditPage::new(c[0].chain_seq, c[c.len() - 1].chain_seq, c.to_vec()))
                .collect();
            app.store.audit().insert_many(pages).await.unwrap();
        }
    }
    let before = rss_kib();
    let started = std::time::Instant::now();
    let mut resp = app
        .http()
        .get(format!("http://{e}/api/chat/audit/export?format=csv"))
        .bearer_auth(app.token(app.user(), &["Admin"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (mut bytes, mut lines, mut peak) = (0usize, 0usize, 0u64);
    while let Some(chunk) = resp.chunk().await.unwrap() {
        bytes += chunk.len();
        lines += chunk.iter().filter(|b| **b == b'\n').count();
        peak = peak.max(rss_kib());
    }
    assert_eq!(lines as i64, N + 1, "header and every record");
    let grew = peak.saturating_sub(before);
    assert!(grew < 150 * 1024, "memory grew {grew} KiB while exporting {bytes} bytes");
    tracing::info!(bytes, secs = started.elapsed().as_secs_f64(), grew_kib = grew, "100k export");
    assert!(
        matches!(verify(&app.store.audit(), None).await.unwrap(), Verdict::Intact { records, .. } if records == N as u64)
    );
}

/// Two workers that both believe they hold the chain (a lease changing
/// hands) append the same facts at once, in different batches: the trail is
/// one chain with every fact once and positions without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chain_writers_racing_make_one_chain() {
    use natter_workers::audit::{AuditHandler, Chain};
    use natter_workers::handler::{Incoming, settle};
    let app = TestApp::new().await;
    app.store.ensure_indexes().await.unwrap();
    let actor = app.user();
    const N: u64 = 60;
    let facts: Vec<Incoming<natter_shared::audit::AuditFact>> = (1..=N)
        .map(|seq| Incoming {
            seq,
            time: mongodb::bson::DateTime::from_millis(1_700_000_000_000 + seq as i64),
            subject: "x.out.messages".into(),
            msg: sent_fact(1000 + seq, seq, actor),
        })
        .collect();
    let writer = |size: usize| {
        let (store, facts) = (app.store.clone(), facts.clone());
        async move {
            let handler = AuditHandler::new(store, None);
            let mut chain = Chain::default();
            for batch in facts.chunks(size) {
                let done = settle(&handler, &mut chain, batch, |_| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    true
                })
                .await;
                assert_eq!(done.map(|d| d.len()), Some(batch.len()));
            }
        }
    };
    tokio::join!(writer(7), writer(10), writer(3));
    let recs = records(&app).await;
    let positions: Vec<i64> = recs.iter().map(|r| r.chain_seq).collect();
    assert_eq!(positions, (1..=N as i64).collect::<Vec<_>>(), "one record per position, no gap");
    let commands: std::collections::HashSet<i64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(commands.len() as u64, N, "every fact once");
    assert!(matches!(verify(&app.store.audit(), None).await.unwrap(), Verdict::Intact { records, .. } if records == N));
}

/// The head the audit worker recorded outside MongoDB.
async fn recorded_head(app: &TestApp) -> Option<natter_shared::audit::Head> {
    let js = jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
    let kv = js.get_key_value(Subjects::new(&app.name).audit_head_bucket()).await.unwrap();
    kv.get("head").await.unwrap().map(|v| serde_json::from_slice(&v).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_slipped_in_ahead_is_caught_and_does_not_stop_the_chain() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let auditor = app.start_audit_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    for i in 0..5 {
        wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
    }
    natter_tests::eventually("6 records", Duration::from_secs(30), || async {
        (record_count(&app).await == commands_in_stream(&app).await).then_some(())
    })
    .await;
    let recs = records(&app).await;
    let last = recs.last().unwrap().clone();
    // A well-formed record far ahead, chained to the real head.
    let fact = natter_shared::audit::AuditFact {
        v: 1,
        seq: 999_999,
        time_ms: 0,
        role: "messages".into(),
        action: "send_message".into(),
        actor: Some(b),
        roles: vec![],
        room: Default::default(),
        targets: BTreeMap::new(),
        status: natter_shared::audit::FactStatus::Applied,
        reason: None,
        code: None,
        meta: BTreeMap::new(),
    };
    let forged = AuditRecord::from_fact(&fact, 1_000_000, &last.hash);
    app.store.audit().insert_one(AuditPage::new(1_000_000, 1_000_000, vec![forged])).await.unwrap();
    let head = recorded_head(&app).await.expect("a recorded head");
    match verify(&app.store.audit(), Some(&head)).await.unwrap() {
        Verdict::Broken(x) => assert_eq!(x.chain_seq, 1_000_000, "{x:?}"),
        other => panic!("a record past the head must not verify: {other:?}"),
    }
    // A worker taking the chain over goes on from the recorded head, not
    // from the slipped-in page: later commands are all recorded.
    auditor.cancel();
    app.start_audit_worker();
    for i in 0..5 {
        wa.request("send_message", json!({"conversationId": conv, "content": format!("n{i}")})).await;
    }
    natter_tests::eventually("the later commands recorded", Duration::from_secs(30), || async {
        let genuine = records(&app).await.iter().filter(|r| r.chain_seq < 1_000_000).count() as u64;
        (genuine == commands_in_stream(&app).await).then_some(())
    })
    .await;
    app.store.audit().delete_one(doc! {"_id": 1_000_000i64}).await.unwrap();
    let head = recorded_head(&app).await.unwrap();
    assert!(matches!(verify(&app.store.audit(), Some(&head)).await.unwrap(), Verdict::Intact { .. }));
}

/// REST uploads and downloads are recorded with the request's metadata
/// (the routes sit inside the metadata layer, as every other REST route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_uploads_and_downloads_carry_their_request_metadata() {
    let mut app = TestApp::new().await;
    app.with_s3();
    let e = app.start_edge().await;
    app.start_worker();
    app.start_attachments_worker();
    app.start_audit_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let r = app
        .http()
        .post(format!("http://{e}/api/chat/attachments"))
        .query(&[("conversationId", conv.as_str()), ("filename", "notes.txt"), ("type", "text/plain")])
        .bearer_auth(app.token(a, &[]))
        .header("user-agent", "audit-test/1")
        .body(b"minutes of the meeting".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().expect("attachment id").to_string();
    let ok = natter_tests::eventually("the upload stored", Duration::from_secs(30), || async {
        let (s, _) = app.get(e, &format!("/api/chat/attachments/{id}"), a).await;
        matches!(s, 200 | 302).then_some(())
    });
    ok.await;
    let (up, down) = natter_tests::eventually("both audited", Duration::from_secs(30), || async {
        let recs = records(&app).await;
        let up = recs.iter().find(|r| r.action == "attachment_uploaded").cloned()?;
        let down = recs.iter().find(|r| r.action == "attachment_downloaded").cloned()?;
        Some((up, down))
    })
    .await;
    assert_eq!(up.meta.get("via").map(String::as_str), Some("rest"), "{:?}", up.meta);
    assert_eq!(up.meta.get("route").map(String::as_str), Some("POST /api/chat/attachments"));
    assert_eq!(up.meta.get("userAgent").map(String::as_str), Some("audit-test/1"));
    assert_eq!(up.targets.get("attachmentId"), Some(&id));
    assert_eq!(down.meta.get("via").map(String::as_str), Some("rest"), "{:?}", down.meta);
    assert_eq!(down.meta.get("route").map(String::as_str), Some("GET /api/chat/attachments/{id}"));
    assert_eq!(down.actor.as_deref(), Some(a.hex().as_str()));
}
