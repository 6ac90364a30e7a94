//! The audit trail: one record per command with the right actor and target,
//! also across a killed audit worker and redelivery; tampering detected.

use async_nats::jetstream;
use mongodb::bson::doc;
use natter_nats::Subjects;
use natter_shared::audit::{AuditRecord, Verdict, verify};
use natter_tests::procs;
use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

async fn commands_in_stream(app: &TestApp) -> u64 {
    let nats = async_nats::connect(&app.nats_url).await.unwrap();
    let js = jetstream::new(nats);
    let mut s = js.get_stream(Subjects::new(&app.name).cmd_stream()).await.unwrap();
    s.info().await.unwrap().state.messages
}

async fn records(app: &TestApp) -> Vec<AuditRecord> {
    use futures::TryStreamExt;
    app.store.audit().find(doc! {}).sort(doc! {"chainSeq": 1}).await.unwrap().try_collect().await.unwrap()
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
        let n = app.store.audit().count_documents(doc! {}).await.ok()?;
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
    assert_eq!(deleted.status, "applied");
    let removed = recs.iter().find(|r| r.action == "member_removed").unwrap();
    assert_eq!((removed.actor.as_deref(), removed.targets.get("userId")), (Some(admin.hex().as_str()), Some(&b.hex())));
    assert_eq!(removed.roles, vec!["Admin".to_string()]);
    let read = recs.iter().find(|r| r.action == "message_read").unwrap();
    assert_eq!(read.actor.as_deref(), Some(b.hex().as_str()));
    let unique: std::collections::HashSet<i64> = recs.iter().map(|r| r.seq).collect();
    assert_eq!(unique.len(), recs.len(), "one record per command seq");
    assert!(matches!(verify(&app.store.audit()).await.unwrap(), Verdict::Intact { .. }));
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
        (app.store.audit().count_documents(doc! {}).await.ok()? >= 11).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let coll = app.store.audit();
    let recs = records(&app).await;
    match verify(&coll).await.unwrap() {
        Verdict::Intact { records, head } => {
            assert_eq!(records as usize, recs.len());
            assert_eq!(head, recs.last().unwrap().hash);
        }
        other => panic!("untouched log must verify: {other:?}"),
    }
    // The CLI agrees, with exit codes.
    let ctl = |app: &TestApp| {
        std::process::Command::new(procs::workspace_bin("natterctl"))
            .args(["audit", "verify"])
            .envs(app.env())
            .output()
            .unwrap()
    };
    assert!(ctl(&app).status.success());

    // Edit: the record itself is reported.
    let victim = &recs[4];
    coll.update_one(doc! {"_id": victim.seq}, doc! {"$set": {"actor": b.hex()}}).await.unwrap();
    match verify(&coll).await.unwrap() {
        Verdict::Broken(x) => assert_eq!((x.seq, x.reason), (victim.seq, "was changed")),
        other => panic!("{other:?}"),
    }
    let out = ctl(&app);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("seq {}", victim.seq)));
    coll.update_one(doc! {"_id": victim.seq}, doc! {"$set": {"actor": a.hex()}}).await.unwrap();
    assert!(matches!(verify(&coll).await.unwrap(), Verdict::Intact { .. }), "restored");

    // Delete: the record after the gap is reported.
    coll.delete_one(doc! {"_id": recs[6].seq}).await.unwrap();
    match verify(&coll).await.unwrap() {
        Verdict::Broken(x) => assert_eq!(x.seq, recs[7].seq),
        other => panic!("{other:?}"),
    }
    coll.insert_one(&recs[6]).await.unwrap();
    assert!(matches!(verify(&coll).await.unwrap(), Verdict::Intact { .. }), "restored");

    // Swap two records' places: the first moved one is reported.
    let (x, y) = (&recs[2], &recs[3]);
    coll.update_one(doc! {"_id": x.seq}, doc! {"$set": {"chainSeq": -1_i64}}).await.unwrap();
    coll.update_one(doc! {"_id": y.seq}, doc! {"$set": {"chainSeq": x.chain_seq}}).await.unwrap();
    coll.update_one(doc! {"_id": x.seq}, doc! {"$set": {"chainSeq": y.chain_seq}}).await.unwrap();
    match verify(&coll).await.unwrap() {
        Verdict::Broken(v) => assert_eq!(v.seq, y.seq, "{v:?}"),
        other => panic!("{other:?}"),
    }
}
