//! Groups: roles and permissions for every route and event, membership
//! changes cutting a member's feed at the removal's `seq`, and a 20-member
//! group spread over two edges.

use mongodb::bson::doc;
use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(600);

async fn count_messages(app: &TestApp, group: &str) -> u64 {
    app.store.messages().count_documents(mongodb::bson::doc! {"groupId": group}).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_routes_and_events_follow_roles_and_membership() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (admin, sup, member, other, outsider, moder) =
        (app.user(), app.user(), app.user(), app.user(), app.user(), app.user());
    let t_admin = app.token(admin, &["Admin"]);
    let t_sup = app.token(sup, &["Supervisor"]);
    let t_member = app.token(member, &[]);
    let t_other = app.token(other, &[]);
    let t_out = app.token(outsider, &["Supervisor"]);
    let t_mod = app.token(moder, &["Moderator"]);

    // Create: Admin only.
    let (s, v) =
        app.call(Method::POST, e, "/api/chat/groups", &t_member, Some(json!({"name": "x", "memberIds": []}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) =
        app.call(Method::POST, e, "/api/chat/groups", &t_admin, Some(json!({"name": "", "memberIds": []}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_payload")));
    let (s, v) =
        app.call(Method::POST, e, "/api/chat/groups", &t_admin, Some(json!({"name": "x", "type": "weird"}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_payload")));
    let g = app.create_group(e, admin, &[sup, member, moder]).await;
    assert_eq!(
        app.store.groups().count_documents(mongodb::bson::doc! {}).await.unwrap(),
        1,
        "only the Admin's group exists"
    );

    let (s, v) = app.get(e, &format!("/api/chat/groups/{g}"), member).await;
    assert_eq!(s, 200);
    assert_eq!(v["admin"], admin.hex());
    assert_eq!(v["type"], "operational");
    assert_eq!(v["members"].as_array().unwrap().len(), 4);
    assert_eq!(v["permissions"]["canDeleteMessages"], json!(["Admin"]));
    let (_, v) = app.get(e, "/api/chat/groups", member).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (_, v) = app.get(e, "/api/chat/groups", outsider).await;
    assert_eq!(v, json!([]));
    let (s, v) = app.get(e, &format!("/api/chat/groups/{g}"), outsider).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_a_member")));

    // A listener in the group sees what members do, and nothing of refusals.
    let mut listen = WsClient::connect(e, &t_member).await;
    assert_eq!(listen.request("join_group", json!({"groupId": g})).await["type"], "ack");

    // Update: Admin only; a rename leaves a system message.
    let (s, _) =
        app.call(Method::PATCH, e, &format!("/api/chat/groups/{g}"), &t_sup, Some(json!({"name": "nope"}))).await;
    assert_eq!(s, 403);
    let perms =
        json!({"canAddMembers": ["Admin"], "canRemoveMembers": ["Admin"], "canDeleteMessages": ["Admin", "Moderator"]});
    let (s, v) = app
        .call(
            Method::PATCH,
            e,
            &format!("/api/chat/groups/{g}"),
            &t_admin,
            Some(json!({"name": "ops", "permissions": perms})),
        )
        .await;
    assert_eq!((s, v["name"].as_str()), (200, Some("ops")), "{v}");
    let ev = listen.events("group_updated", 1, Duration::from_secs(5)).await;
    assert_eq!(ev[0]["data"]["name"], "ops");
    let sys = listen.events("message_received", 1, Duration::from_secs(5)).await;
    assert_eq!(sys[0]["data"]["messageType"], "system");
    assert_eq!(sys[0]["data"]["system"]["action"], "group_renamed");

    // Add: a plain member may not; a Supervisor member may; a Supervisor
    // outside the group may not.
    let path = format!("/api/chat/groups/{g}/members");
    let (s, v) = app.call(Method::POST, e, &path, &t_member, Some(json!({"userId": other.hex()}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, v) = app.call(Method::POST, e, &path, &t_out, Some(json!({"userId": other.hex()}))).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_a_member")));
    assert!(listen.events("member_added", 1, QUIET).await.is_empty(), "refused adds publish nothing");
    let (s, v) = app.call(Method::POST, e, &path, &t_sup, Some(json!({"userId": other.hex()}))).await;
    assert_eq!(s, 201, "{v}");
    assert!(v["members"].as_array().unwrap().contains(&json!(other.hex())));
    let ev = listen.events("member_added", 1, Duration::from_secs(5)).await;
    assert_eq!(ev[0]["data"]["userId"], other.hex());

    // Messages: members send; an outsider cannot send, join, type or read.
    let mut w_other = WsClient::connect(e, &t_other).await;
    let r = w_other
        .request("send_message", json!({"groupId": g, "content": "hello from other", "clientMsgId": "o1"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let from_other = r["data"]["messageId"].as_str().unwrap().to_string();
    // Applied once the listener has it (a system message may come first).
    loop {
        let got = listen.events("message_received", 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "{from_other} never applied");
        if got[0]["data"]["_id"] == from_other {
            break;
        }
    }
    let mut w_out = WsClient::connect(e, &t_out).await;
    for (kind, data) in [
        ("join_group", json!({"groupId": g})),
        ("send_message", json!({"groupId": g, "content": "intrude"})),
        ("typing", json!({"groupId": g, "isTyping": true})),
        ("mark_as_read", json!({"messageId": from_other})),
        ("delete_message", json!({"messageId": from_other})),
    ] {
        let r = w_out.request(kind, data).await;
        assert_eq!(r["type"], "error", "{kind}: {r}");
        let code = r["data"]["code"].as_str().unwrap();
        assert!(code == "not_a_member" || code == "not_found", "{kind}: {r}");
    }
    let (s, _) = app.get(e, &format!("/api/chat/groups/{g}/messages"), outsider).await;
    assert_eq!(s, 403);
    let (s, _) = app.call(Method::PATCH, e, &format!("/api/chat/messages/{from_other}/read"), &t_out, None).await;
    assert_eq!(s, 404);

    // Delete: another plain member may not; the sender, a Moderator (per
    // canDeleteMessages) and an Admin may.
    let mut w_member = WsClient::connect(e, &t_member).await;
    let r = w_member.request("delete_message", json!({"messageId": from_other})).await;
    assert_eq!(r["data"]["code"], "forbidden", "{r}");
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/messages/{from_other}"), &t_sup, None).await;
    assert_eq!(s, 403);
    let mut ids = Vec::new();
    for i in 0..3 {
        let r = w_other.request("send_message", json!({"groupId": g, "content": format!("m{i}")})).await;
        ids.push(r["data"]["messageId"].as_str().unwrap().to_string());
    }
    // Deleting needs the messages applied: the listener has them then.
    let mut seen = Vec::new();
    while !ids.iter().all(|id| seen.contains(id)) {
        let got = listen.events("message_received", 1, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "{ids:?} applied; seen {seen:?}");
        seen.push(got[0]["data"]["_id"].as_str().unwrap_or_default().to_string());
    }
    let r = w_other.request("delete_message", json!({"messageId": ids[0]})).await;
    assert_eq!(r["type"], "ack", "sender deletes: {r}");
    let (s, v) = app.call(Method::DELETE, e, &format!("/api/chat/messages/{}", ids[1]), &t_mod, None).await;
    assert_eq!((s, v["deleted"].as_bool()), (200, Some(true)), "moderator deletes: {v}");
    assert_eq!(v["content"], "");
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/messages/{}", ids[2]), &t_admin, None).await;
    assert_eq!(s, 200, "admin deletes");
    let deleted = listen.events("message_deleted", 3, Duration::from_secs(5)).await;
    assert_eq!(deleted.len(), 3);
    let (_, hist) = app.get(e, &format!("/api/chat/groups/{g}/messages"), member).await;
    let contents: Vec<&str> =
        hist["messages"].as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert!(!contents.iter().any(|c| c.starts_with('m')), "deleted content is gone: {contents:?}");
    assert!(contents.contains(&"hello from other"));

    // Remove: a Supervisor may not (canRemoveMembers is Admin); an Admin may.
    let del = format!("/api/chat/groups/{g}/members/{}", other.hex());
    let (s, _) = app.call(Method::DELETE, e, &del, &t_sup, None).await;
    assert_eq!(s, 403);
    let (s, v) = app.call(Method::DELETE, e, &del, &t_admin, None).await;
    assert_eq!(s, 200, "{v}");
    assert!(!v["members"].as_array().unwrap().contains(&json!(other.hex())));
    // The removed member is refused everything, and hears nothing more.
    let before = count_messages(&app, &g).await;
    let r = w_other.request("send_message", json!({"groupId": g, "content": "after removal"})).await;
    assert_eq!(r["data"]["code"], "not_a_member", "{r}");
    let r = w_other.request("join_group", json!({"groupId": g})).await;
    assert_eq!(r["data"]["code"], "not_a_member", "{r}");
    let (s, _) = app.get(e, &format!("/api/chat/groups/{g}/messages"), other).await;
    assert_eq!(s, 403);
    let (s, _) = app.call(Method::POST, e, &format!("/api/chat/groups/{g}/leave"), &t_other, None).await;
    assert_eq!(s, 403);
    assert_eq!(count_messages(&app, &g).await, before, "refusals wrote nothing");

    // Leave: a member leaves by themself.
    let (s, v) = app.call(Method::POST, e, &format!("/api/chat/groups/{g}/leave"), &t_mod, None).await;
    assert_eq!(s, 201, "{v}");
    assert!(!v["members"].as_array().unwrap().contains(&json!(moder.hex())));
    let left = listen.events("member_removed", 2, Duration::from_secs(5)).await;
    assert_eq!(left.len(), 2, "removal and leave announced to the room");
    assert_eq!(left[1]["data"]["left"], true);

    // Delete the group: Admin only; then it is gone for everyone.
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}"), &t_sup, None).await;
    assert_eq!(s, 403);
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}"), &t_admin, None).await;
    assert_eq!(s, 200);
    assert_eq!(listen.events("group_deleted", 1, Duration::from_secs(5)).await.len(), 1);
    let (_, v) = app.get(e, "/api/chat/groups", member).await;
    assert_eq!(v, json!([]));
    let r = w_member.request("send_message", json!({"groupId": g, "content": "into the void"})).await;
    assert_eq!(r["data"]["code"], "not_a_member", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_members_on_two_edges_see_exactly_their_groups_events() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    app.start_worker();
    let admin = app.user();
    let members: Vec<_> = (0..19).map(|_| app.user()).collect();
    let g = app.create_group(e1, admin, &members).await;
    let everyone: Vec<_> = std::iter::once(admin).chain(members.iter().copied()).collect();
    let mut socks = Vec::new();
    for (i, u) in everyone.iter().enumerate() {
        let edge = if i % 2 == 0 { e1 } else { e2 };
        let mut ws = WsClient::connect(edge, &app.token(*u, &[])).await;
        assert_eq!(ws.request("join_group", json!({"groupId": g})).await["type"], "ack");
        socks.push(ws);
    }
    let outsiders: Vec<WsClient> = {
        let mut v = Vec::new();
        for edge in [e1, e2] {
            let u = app.user();
            v.push(WsClient::connect(edge, &app.token(u, &[])).await);
        }
        v
    };

    // Messages from three members; typing from one; a read and a delete.
    let mut sent = Vec::new();
    for (k, ws) in socks.iter_mut().enumerate().take(3) {
        for i in 0..5 {
            let r = ws.request("send_message", json!({"groupId": g, "content": format!("{k}-{i}")})).await;
            sent.push(r["data"]["messageId"].as_str().unwrap().to_string());
        }
    }
    for (i, ws) in socks.iter_mut().enumerate() {
        let ev = ws.events("message_received", 15, Duration::from_secs(10)).await;
        let ids: Vec<String> = ev.iter().map(|e| e["data"]["_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, sent, "member {i} got the group's messages in order");
    }
    socks[3].request("typing", json!({"groupId": g, "isTyping": true})).await;
    for (i, ws) in socks.iter_mut().enumerate() {
        let typing = ws.events("user_typing", 1, if i == 3 { QUIET } else { Duration::from_secs(5) }).await;
        if i == 3 {
            assert!(typing.is_empty(), "typing is not echoed to the typist");
        } else {
            assert_eq!(typing.len(), 1, "member {i} sees typing");
            assert_eq!(typing[0]["data"]["userId"], everyone[3].hex());
            assert_eq!(typing[0]["data"]["isTyping"], true);
        }
    }
    let r = socks[4].request("mark_as_read", json!({"messageId": sent[14]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = socks[0].request("delete_message", json!({"messageId": sent[0]})).await;
    assert_eq!(r["type"], "ack", "{r}");
    for (i, ws) in socks.iter_mut().enumerate() {
        let read = ws.events("message_read", 1, Duration::from_secs(5)).await;
        assert_eq!(read.len(), 1, "member {i} sees the read");
        assert_eq!(read[0]["data"]["userId"], everyone[4].hex());
        let del = ws.events("message_deleted", 1, Duration::from_secs(5)).await;
        assert_eq!(del.len(), 1, "member {i} sees the delete");
    }
    for mut o in outsiders {
        let mut got = Vec::new();
        while let Some(natter_tests::ws::In::Json(v)) = o.next(QUIET).await {
            got.push(v["type"].as_str().unwrap_or("").to_string());
        }
        assert!(got.is_empty(), "an outsider received {got:?}");
    }

    // Remove member 7 while member 1 keeps sending: 7 receives exactly the
    // messages stored before the removal's seq, then the removal, then nothing.
    let victim = 7;
    let sender = tokio::spawn({
        let mut s1 = socks.remove(1);
        let g = g.clone();
        async move {
            let mut acks = Vec::new();
            for i in 0..60 {
                let r = s1.request("send_message", json!({"groupId": g, "content": format!("live {i}")})).await;
                acks.push(r["data"]["seq"].as_u64().unwrap());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acks
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _) = app
        .call(
            Method::DELETE,
            e1,
            &format!("/api/chat/groups/{g}/members/{}", everyone[victim].hex()),
            &app.token(admin, &["Admin"]),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let acks = sender.await.unwrap();
    let ws = &mut socks[victim - 1];
    let mut received = Vec::new();
    let mut all_seqs = Vec::new();
    let mut removal_seq = None;
    while let Some(natter_tests::ws::In::Json(v)) = ws.next(Duration::from_secs(2)).await {
        if let Some(seq) = v["seq"].as_u64() {
            all_seqs.push(seq);
        }
        match v["type"].as_str() {
            Some("message_received") if v["data"]["messageType"] == "text" => received.push(v["seq"].as_u64().unwrap()),
            Some("member_removed") => removal_seq = v["seq"].as_u64(),
            _ => {}
        }
    }
    let removal_seq = removal_seq.expect("the victim is told of the removal");
    assert!(all_seqs.iter().all(|s| *s <= removal_seq), "frames after the removal: {all_seqs:?} > {removal_seq}");
    let expected: Vec<u64> = acks.iter().copied().filter(|s| *s < removal_seq).collect();
    assert_eq!(received, expected, "exactly the messages before the removal");
    assert!(acks.iter().any(|s| *s > removal_seq), "traffic continued after the removal");
    // The others got all 60.
    let ev = socks[0].events("message_received", 62, Duration::from_secs(10)).await;
    let texts = ev.iter().filter(|e| e["data"]["messageType"] == "text").count();
    assert_eq!(texts, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_expires_when_the_client_goes_quiet_or_leaves() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e1, a, b).await;
    let mut wa = WsClient::connect(e1, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e2, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    // The module's front end puts a user id and name in the payload: ignored.
    let r = wa
        .request("typing", json!({"conversationId": conv, "isTyping": true, "userId": b.hex(), "username": "forged"}))
        .await;
    assert_eq!(r["type"], "ack", "{r}");
    let t = wb.events("user_typing", 1, Duration::from_secs(3)).await;
    assert_eq!(t[0]["data"]["userId"], a.hex(), "identity from the token");
    assert_eq!(t[0]["data"]["username"], format!("user-{a}"));
    assert_eq!(t[0]["data"]["isTyping"], true);
    assert_eq!(t[0]["data"]["conversationId"], conv);
    // Quiet: it expires by itself.
    let started = std::time::Instant::now();
    let t = wb.events("user_typing", 1, natter_edge::realtime::typing::TYPING_TTL + Duration::from_secs(2)).await;
    assert_eq!(t[0]["data"]["isTyping"], false);
    assert!(started.elapsed() >= natter_edge::realtime::typing::TYPING_TTL - Duration::from_millis(500));
    // Typing, then gone: stops at once.
    wa.request("typing", json!({"conversationId": conv, "isTyping": true})).await;
    assert_eq!(wb.events("user_typing", 1, Duration::from_secs(3)).await[0]["data"]["isTyping"], true);
    drop(wa);
    let t = wb.events("user_typing", 1, Duration::from_secs(3)).await;
    assert_eq!(t[0]["data"]["isTyping"], false, "disconnect ends typing");
    // Nothing was stored.
    assert_eq!(app.store.messages().count_documents(mongodb::bson::doc! {}).await.unwrap(), 0);
}

/// The edge keeps a group it follows in memory: a flood of sends reads the
/// group once, not per message; a removal racing sends stops the removed
/// member's sends at the edge soon after and at the worker at once (no
/// message of theirs is stored after the removal), and adding them back
/// lets them send again. Counted on an edge process's own metrics.
#[tokio::test]
async fn a_followed_group_is_checked_from_memory_and_kept_exact() {
    let mut app = TestApp::new().await;
    let e = app.start_edge_process().await;
    app.start_worker();
    let (admin, a, b) = (app.user(), app.user(), app.user());
    let group = app.create_group(e, admin, &[a, b]).await;
    let reads = async || {
        let text = reqwest::get(format!("http://{e}/metrics")).await.unwrap().text().await.unwrap();
        text.lines()
            .find(|l| l.starts_with("natter_db_round_trips_total{op=\"edge_group\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    for ws in [&mut wa, &mut wb] {
        assert_eq!(ws.request("join_group", json!({"groupId": group})).await["type"], "ack");
    }
    let before = reads().await;
    for i in 0..30 {
        let r = wa.request("send_message", json!({"groupId": group, "content": format!("a{i}")})).await;
        assert_eq!(r["type"], "ack", "{r}");
    }
    assert_eq!(reads().await - before, 0.0, "30 sends, no read of the group");

    // b sends while the admin removes b.
    let g2 = group.clone();
    let sender = tokio::spawn(async move {
        let group = g2;
        let mut refused_at = None;
        for i in 0..400 {
            let r = wb.request("send_message", json!({"groupId": group, "content": format!("b{i}")})).await;
            if r["type"] == "error" {
                assert_eq!(r["data"]["code"], "not_a_member", "{r}");
                let first = *refused_at.get_or_insert(i);
                // Refusals count as strikes: stop well before the edge
                // closes the connection for them.
                if i - first >= 20 {
                    break;
                }
            } else if refused_at.is_some() {
                panic!("b{i} accepted after b{} was refused", refused_at.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (wb, refused_at)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let path = format!("/api/chat/groups/{group}/members/{}", b.hex());
    let (status, _) = app.call(Method::DELETE, e, &path, &app.token(admin, &["Admin"]), None).await;
    assert_eq!(status, 200);
    let (mut wb, refused_at) = sender.await.unwrap();
    assert!(refused_at.is_some(), "the edge refuses b's sends once the removal is relayed");
    // The worker's word: nothing of b's is stored after the removal.
    let gid = mongodb::bson::oid::ObjectId::parse_str(&group).unwrap();
    let removal = natter_tests::eventually("the removal written", Duration::from_secs(10), || async {
        let g = app.store.group(gid).await.ok()??;
        (!g.members.contains(&b.oid())).then_some(g.last_seq)
    })
    .await;
    let late = natter_tests::eventually("b's sends settled", Duration::from_secs(10), || async {
        let f = || doc! {"groupId": &group, "senderId": b.oid(), "seq": {"$gt": removal}};
        let n = app.store.messages().count_documents(f()).await.ok()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let again = app.store.messages().count_documents(f()).await.ok()?;
        (n == again).then_some(n)
    })
    .await;
    assert_eq!(late, 0, "no message of b's stored after the removal");

    // Added back: b's sends are taken again (the group in memory says so).
    let (status, _) = app
        .call(
            Method::POST,
            e,
            &format!("/api/chat/groups/{group}/members"),
            &app.token(admin, &["Admin"]),
            Some(json!({"userId": b.hex()})),
        )
        .await;
    assert_eq!(status, 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = wb.request("send_message", json!({"groupId": group, "content": "back"})).await;
        if r["type"] == "ack" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "b may not send again: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deployment from before memberships were kept beside the groups gets
/// them written when a process starts (`ensure_indexes`): every member of
/// each live group, none of a deleted one, once; a removal written after
/// (a higher seq) stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_of_an_older_deployment_are_written_at_start() {
    let app = TestApp::new().await;
    let (a, b) = (app.user().oid(), app.user().oid());
    let (g1, g2) = (mongodb::bson::oid::ObjectId::new(), mongodb::bson::oid::ObjectId::new());
    let groups = app.store.db().collection::<mongodb::bson::Document>(natter_shared::model::GROUPS);
    groups.insert_one(doc! {"_id": g1, "name": "live", "members": [a, b], "lastSeq": 5_i64}).await.unwrap();
    groups
        .insert_one(doc! {"_id": g2, "name": "gone", "members": [a], "lastSeq": 3_i64, "deleted": true})
        .await
        .unwrap();
    let memberships = app.store.db().collection::<mongodb::bson::Document>(natter_shared::model::MEMBERSHIPS);
    // As an older version left it: no memberships, and no marker.
    memberships.drop().await.unwrap();

    app.store.ensure_indexes().await.unwrap();
    assert_eq!(app.store.member_groups(a).await.unwrap(), [g1]);
    assert_eq!(app.store.member_groups(b).await.unwrap(), [g1]);
    assert_eq!(memberships.count_documents(doc! {"userId": {"$exists": true}}).await.unwrap(), 2);

    // The messages worker removes b at seq 9: a later start leaves that be.
    let key = natter_shared::model::MembershipDoc::key(g1, b);
    memberships.update_one(doc! {"_id": &key}, doc! {"$max": {"removedSeq": 9_i64}}).await.unwrap();
    app.store.ensure_indexes().await.unwrap();
    assert!(app.store.member_groups(b).await.unwrap().is_empty());
    assert_eq!(app.store.member_groups(a).await.unwrap(), [g1]);
    assert_eq!(memberships.count_documents(doc! {"userId": {"$exists": true}}).await.unwrap(), 2);

    // A start that stopped half way (no marker, a's membership missing) is
    // taken up again by the next.
    memberships.delete_many(doc! {"userId": {"$exists": false}}).await.unwrap();
    memberships.delete_one(doc! {"userId": a}).await.unwrap();
    app.store.ensure_indexes().await.unwrap();
    assert_eq!(app.store.member_groups(a).await.unwrap(), [g1]);
    assert!(app.store.member_groups(b).await.unwrap().is_empty(), "the later removal stands");
}
