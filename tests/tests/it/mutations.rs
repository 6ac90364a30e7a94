//! Changing a message after it was sent: edits (its sender only; earlier
//! versions kept for the audit trail, never shown), reactions (one per user
//! per emoji, bounded) and pins (bounded, per room), over `/ws`, REST and
//! the stock socket.io-client; members see the events, outsiders and
//! removed members neither see nor make them.

use natter_tests::sio::{Transports, WAIT};
use natter_tests::{SioClient, TestApp, WsClient};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(700);

/// The next event of `kind` on `w` whose data satisfies `pred` (others of
/// the kind are passed over).
async fn event_where(w: &mut WsClient, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let got = w.events(kind, 1, WAIT).await;
        assert_eq!(got.len(), 1, "no {kind} came");
        if pred(&got[0]["data"]) {
            return got[0]["data"].clone();
        }
    }
}

/// Sends `content` to group `g` and waits until `listen` has it.
async fn send(w: &mut WsClient, listen: &mut WsClient, g: &str, content: &str) -> String {
    let r = w.request("send_message", json!({"groupId": g, "content": content})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let id = r["data"]["messageId"].as_str().unwrap().to_string();
    event_where(listen, "message_received", |d| d["_id"] == id).await;
    id
}

/// The message `id` in the group's history, as a member reads it.
async fn in_history(
    app: &TestApp,
    e: std::net::SocketAddr,
    g: &str,
    id: &str,
    as_user: natter_shared::ids::UserId,
) -> Value {
    let (s, h) = app.get(e, &format!("/api/chat/groups/{g}/messages?limit=100"), as_user).await;
    assert_eq!(s, 200, "{h}");
    h["messages"].as_array().unwrap().iter().find(|m| m["_id"] == id).cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reactions_and_pins_reach_members_only() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    app.start_audit_worker();
    // c created the group (its admin); a and b are members, r is removed
    // later, `out` never was a member.
    let (a, b, c, r, out) = (app.user(), app.user(), app.user(), app.user(), app.user());
    let g = app.create_group(e, c, &[a, b, r]).await;
    let (ta, tb, tc, tr, tout) =
        (app.token(a, &[]), app.token(b, &[]), app.token(c, &[]), app.token(r, &[]), app.token(out, &[]));
    // b with the Admin role; and an Admin who is not a member.
    let b_admin = app.token(b, &["Admin"]);
    let admin = app.token(app.user(), &["Admin"]);
    let mut wa = WsClient::connect(e, &ta).await;
    let mut wb = WsClient::connect(e, &tb).await;
    let mut wc = WsClient::connect(e, &tc).await;
    let mut wr = WsClient::connect(e, &tr).await;
    let mut wout = WsClient::connect(e, &tout).await;
    for w in [&mut wa, &mut wb, &mut wc, &mut wr] {
        assert_eq!(w.request("join_group", json!({"groupId": g})).await["type"], "ack");
    }
    let m1 = send(&mut wa, &mut wb, &g, "first").await;
    let m2 = send(&mut wa, &mut wb, &g, "second").await;
    let from_r = send(&mut wr, &mut wb, &g, "r was here").await;

    // Edit: the sender only, over /ws and REST; every member hears it.
    let ack = wa.request("edit_message", json!({"messageId": m1, "content": "v2"})).await;
    assert_eq!((ack["type"].as_str(), ack["data"]["messageId"].as_str()), (Some("ack"), Some(m1.as_str())), "{ack}");
    for w in [&mut wa, &mut wb, &mut wc, &mut wr] {
        let ed = event_where(w, "message_edited", |d| d["messageId"] == m1).await;
        assert_eq!(
            (ed["content"].as_str(), ed["editCount"].as_i64(), ed["groupId"].as_str()),
            (Some("v2"), Some(1), Some(g.as_str())),
            "{ed}"
        );
        assert!(ed["editedAt"].as_str().is_some_and(|t| t.ends_with('Z')), "{ed}");
    }
    let (s, v) =
        app.call(Method::PATCH, e, &format!("/api/chat/messages/{m1}"), &ta, Some(json!({"content": "v3"}))).await;
    assert_eq!((s, v["content"].as_str(), v["editCount"].as_i64()), (200, Some("v3"), Some(2)), "{v}");
    assert!(v.get("edits").is_none(), "earlier versions are not shown: {v}");
    for (who, token, want) in [
        ("a member", &tb, 403),
        ("an Admin member", &b_admin, 403),
        ("the group's admin", &tc, 403),
        ("an outside Admin", &admin, 404),
    ] {
        let (s, v) =
            app.call(Method::PATCH, e, &format!("/api/chat/messages/{m1}"), token, Some(json!({"content": "x"}))).await;
        assert_eq!(s, want, "{who} may not rewrite a's words: {v}");
    }
    let r_ = wb.request("edit_message", json!({"messageId": m1, "content": "mine now"})).await;
    assert_eq!(r_["data"]["code"], "forbidden", "{r_}");
    for bad in [
        json!({"messageId": m1, "content": "  "}),
        json!({"messageId": m1}),
        json!({"messageId": "nope", "content": "x"}),
    ] {
        let r_ = wa.request("edit_message", bad.clone()).await;
        assert_eq!(r_["data"]["code"], "invalid_payload", "{bad}: {r_}");
    }
    // Sent and edited twice before the worker wrote it: the edits start
    // from the unwritten message.
    let r_ = wa.request("send_message", json!({"groupId": g, "content": "typo", "clientMsgId": "t1"})).await;
    let quick = r_["data"]["messageId"].as_str().unwrap().to_string();
    wa.request("edit_message", json!({"messageId": quick, "content": "typo fixed"})).await;
    wa.request("edit_message", json!({"messageId": quick, "content": "typo fixed twice"})).await;
    let ed = event_where(&mut wb, "message_edited", |d| d["messageId"] == quick && d["editCount"] == 2).await;
    assert_eq!(ed["content"], "typo fixed twice");
    // The same content again changes nothing.
    wa.request("edit_message", json!({"messageId": quick, "content": "typo fixed twice"})).await;
    natter_tests::eventually("the edits written", WAIT, || async {
        let m = in_history(&app, e, &g, &quick, b).await;
        (m["content"] == "typo fixed twice" && m["editCount"] == 2).then_some(())
    })
    .await;
    // Earlier versions are in the stored document, oldest first.
    let stored = app.store.message(quick.parse().unwrap()).await.unwrap().unwrap();
    let versions: Vec<&str> = stored.edits.iter().map(|v| v.content.as_str()).collect();
    assert_eq!(versions, ["typo", "typo fixed"]);
    assert!(stored.edits[0].replaced_seq < stored.edits[1].replaced_seq);
    // An Admin's export shows them; members' history does not.
    let (s, rows) = app.call(Method::GET, e, &format!("/api/chat/groups/{g}/export?format=json"), &admin, None).await;
    assert_eq!(s, 200, "{rows}");
    let row = rows.as_array().unwrap().iter().find(|m| m["_id"] == quick).unwrap();
    let earlier: Vec<&str> =
        row["earlierVersions"].as_array().unwrap().iter().map(|v| v["content"].as_str().unwrap()).collect();
    assert_eq!((row["content"].as_str(), earlier), (Some("typo fixed twice"), vec!["typo", "typo fixed"]));
    let seen = in_history(&app, e, &g, &quick, b).await;
    assert!(seen.get("earlierVersions").is_none() && seen.get("edits").is_none(), "{seen}");

    // Reactions: one per user per emoji; counts and who in the view.
    for (by_a, emoji) in [(false, "👍"), (true, "👍"), (false, "🎉🏽"), (false, "👍")] {
        let w = if by_a { &mut wa } else { &mut wb };
        assert_eq!(w.request("add_reaction", json!({"messageId": m1, "emoji": emoji})).await["type"], "ack");
    }
    let mut counts = Vec::new();
    for _ in 0..3 {
        let ev = wc.events("reaction_added", 1, WAIT).await;
        counts.push((ev[0]["data"]["emoji"].as_str().unwrap().to_string(), ev[0]["data"]["count"].as_u64().unwrap()));
    }
    assert_eq!(counts, [("👍".to_string(), 1), ("👍".to_string(), 2), ("🎉🏽".to_string(), 1)]);
    assert!(wc.events("reaction_added", 1, QUIET).await.is_empty(), "a second 👍 by b is no change");
    let want = json!([{"emoji": "👍", "userIds": [b.hex(), a.hex()]}, {"emoji": "🎉🏽", "userIds": [b.hex()]}]);
    natter_tests::eventually("the reactions written", WAIT, || async {
        (in_history(&app, e, &g, &m1, c).await["reactions"] == want).then_some(())
    })
    .await;
    let (s, v) =
        app.call(Method::DELETE, e, &format!("/api/chat/messages/{m1}/reactions/%F0%9F%91%8D"), &tb, None).await;
    assert_eq!(
        (s, &v["reactions"]),
        (200, &json!([{"emoji": "👍", "userIds": [a.hex()]}, {"emoji": "🎉🏽", "userIds": [b.hex()]}])),
        "{v}"
    );
    let ev = event_where(&mut wa, "reaction_removed", |d| d["messageId"] == m1).await;
    assert_eq!(
        (ev["emoji"].as_str(), ev["userId"].as_str(), ev["count"].as_u64()),
        (Some("👍"), Some(b.hex().as_str()), Some(1))
    );
    // At most 32 different reactions on a message.
    for i in 0..32 {
        let r_ = wb.request("add_reaction", json!({"messageId": m2, "emoji": format!(":e{i}:")})).await;
        assert_eq!(r_["type"], "ack", "{r_}");
    }
    assert_eq!(wa.events("reaction_added", 32, WAIT).await.len(), 32);
    let (s, v) = app
        .call(Method::POST, e, &format!("/api/chat/messages/{m2}/reactions"), &ta, Some(json!({"emoji": ":one-more:"})))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("limit_exceeded")), "{v}");
    wa.request("add_reaction", json!({"messageId": m2, "emoji": ":again:"})).await;
    let refused = event_where(&mut wa, "command_refused", |d| d["action"] == "add_reaction").await;
    assert_eq!((refused["code"].as_str(), refused["messageId"].as_str()), (Some("limit_exceeded"), Some(m2.as_str())));
    let (s, v) = app
        .call(Method::POST, e, &format!("/api/chat/messages/{m2}/reactions"), &ta, Some(json!({"emoji": "two words"})))
        .await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_payload")), "{v}");

    // Pins: the group's admin or an Admin; not a plain member.
    let r_ = wb.request("pin_message", json!({"messageId": m1})).await;
    assert_eq!(r_["data"]["code"], "forbidden", "{r_}");
    assert_eq!(wc.request("pin_message", json!({"messageId": m1})).await["type"], "ack");
    let p = event_where(&mut wb, "message_pinned", |d| d["messageId"] == m1).await;
    assert_eq!(p["userId"], c.hex());
    let (s, _) = app.call(Method::POST, e, &format!("/api/chat/messages/{m2}/pin"), &b_admin, None).await;
    assert_eq!(s, 201, "an Admin pins");
    let (s, pins) = app.get(e, &format!("/api/chat/groups/{g}/pins"), b).await;
    let ids: Vec<&str> = pins.as_array().unwrap().iter().map(|p| p["message"]["_id"].as_str().unwrap()).collect();
    assert_eq!((s, ids), (200, vec![m2.as_str(), m1.as_str()]), "newest pin first: {pins}");
    assert_eq!(pins[1]["message"]["content"], "v3");
    assert_eq!(pins[1]["pinnedBy"], c.hex());
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/messages/{m2}/pin"), &tc, None).await;
    assert_eq!(s, 200);
    event_where(&mut wb, "message_unpinned", |d| d["messageId"] == m2).await;

    // An outsider: nothing to see, nothing to change.
    for (kind, data) in [
        ("edit_message", json!({"messageId": m1, "content": "hi"})),
        ("add_reaction", json!({"messageId": m1, "emoji": "👀"})),
        ("remove_reaction", json!({"messageId": m1, "emoji": "👍"})),
        ("pin_message", json!({"messageId": m1})),
        ("unpin_message", json!({"messageId": m1})),
    ] {
        let r_ = wout.request(kind, data).await;
        assert_eq!(r_["data"]["code"], "not_found", "{kind}: {r_}");
    }
    let (s, _) = app.get(e, &format!("/api/chat/groups/{g}/pins"), out).await;
    assert_eq!(s, 403);
    let (s, _) = app
        .call(Method::POST, e, &format!("/api/chat/messages/{m1}/reactions"), &tout, Some(json!({"emoji": "👀"})))
        .await;
    assert_eq!(s, 404);

    // A removed member: may no longer edit their own words or react, and
    // hears nothing more.
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}/members/{}", r.hex()), &admin, None).await;
    assert_eq!(s, 200);
    event_where(&mut wb, "member_removed", |d| d["userId"] == r.hex()).await;
    let r_ = wr.request("edit_message", json!({"messageId": from_r, "content": "rewritten after leaving"})).await;
    assert_eq!(r_["data"]["code"], "not_found", "{r_}");
    let r_ = wr.request("add_reaction", json!({"messageId": m1, "emoji": "👋"})).await;
    assert_eq!(r_["data"]["code"], "not_found", "{r_}");
    let (s, _) = app.get(e, &format!("/api/chat/groups/{g}/pins"), r).await;
    assert_eq!(s, 403);
    wa.request("edit_message", json!({"messageId": m1, "content": "v4"})).await;
    event_where(&mut wb, "message_edited", |d| d["content"] == "v4").await;
    let heard = wr.events("message_edited", 100, QUIET).await;
    assert!(heard.iter().all(|f| f["data"]["content"] != "v4"), "r no longer hears the room: {heard:?}");

    // Deleting a pinned, edited, reacted-to message: unpinned, its earlier
    // versions and reactions gone; it can no longer be changed.
    assert_eq!(wa.request("delete_message", json!({"messageId": m1})).await["type"], "ack");
    event_where(&mut wb, "message_deleted", |d| d["messageId"] == m1).await;
    let r_ = wa.request("edit_message", json!({"messageId": m1, "content": "back"})).await;
    // The edge remembers m1 and publishes; the worker refuses. (An edge
    // that had to read it finds it deleted and refuses itself.)
    let published_edits = if r_["type"] == "ack" { 7 } else { 6 };
    if r_["type"] == "ack" {
        let refused = event_where(&mut wa, "command_refused", |d| d["action"] == "edit_message").await;
        assert_eq!(refused["code"], "not_found", "{refused}");
    } else {
        assert_eq!(r_["data"]["code"], "not_found", "{r_}");
    }
    natter_tests::eventually("the delete written", WAIT, || async {
        let (_, pins) = app.get(e, &format!("/api/chat/groups/{g}/pins"), a).await;
        let stored = app.store.message(m1.parse().unwrap()).await.unwrap()?;
        (pins == json!([]) && stored.deleted && stored.edits.is_empty() && stored.reactions.is_empty()).then_some(())
    })
    .await;

    // The audit trail has each change, refused ones as refused.
    let count = |q: String| {
        let (app, admin) = (&app, admin.clone());
        async move {
            app.call(Method::GET, e, &format!("/api/chat/audit/logs?{q}"), &admin, None).await.1["total"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    natter_tests::eventually("the audit trail", WAIT, || async {
        let edits = count("action=message_edited".into()).await;
        let pins = count("action=message_pinned".into()).await;
        let unpins = count("action=message_unpinned".into()).await;
        let removed = count("action=reaction_removed".into()).await;
        let added = count(format!("action=reaction_added&target={m2}")).await;
        // The edits published (one a no-op, maybe one refused by the
        // worker), 2 pins, 1 unpin, 1 removal, and on m2 32 reactions and
        // 2 refused by the worker (over the bound).
        (edits == published_edits && pins == 2 && unpins == 1 && removed == 1 && added == 34).then_some(())
    })
    .await;
}

/// The stock socket.io-client edits, reacts and pins in a conversation;
/// the other participant hears each change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_clients_edit_react_and_pin() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let mut ca = SioClient::connect(e, &app.token(a, &[]), Transports::WebsocketOnly).await;
    let mut cb = SioClient::connect(e, &app.token(b, &[]), Transports::PollingOnly).await;
    for cl in [&mut ca, &mut cb] {
        cl.request("join_conversation", json!({"conversationId": conv})).await;
    }
    let m = ca.request("send_message", json!({"conversationId": conv, "content": "helo"})).await;
    let id = m["messageId"].as_str().unwrap().to_string();
    cb.events("message_received", 1, WAIT).await;

    let ack = ca.request("edit_message", json!({"messageId": id, "content": "hello"})).await;
    assert_eq!(ack["messageId"], id, "{ack}");
    let ed = cb.events("message_edited", 1, WAIT).await;
    assert_eq!((ed[0]["content"].as_str(), ed[0]["editCount"].as_i64()), (Some("hello"), Some(1)), "{ed:?}");
    let r = cb.request("edit_message", json!({"messageId": id, "content": "not mine"})).await;
    assert_eq!(r["error"]["code"], "forbidden", "{r}");

    cb.request("add_reaction", json!({"messageId": id, "emoji": "❤️"})).await;
    let re = ca.events("reaction_added", 1, WAIT).await;
    assert_eq!(
        (re[0]["emoji"].as_str(), re[0]["userId"].as_str(), re[0]["count"].as_u64()),
        (Some("❤️"), Some(b.hex().as_str()), Some(1))
    );
    cb.request("remove_reaction", json!({"messageId": id, "emoji": "❤️"})).await;
    assert_eq!(ca.events("reaction_removed", 1, WAIT).await[0]["count"], 0);

    // In a conversation either participant pins.
    cb.request("pin_message", json!({"messageId": id})).await;
    assert_eq!(ca.events("message_pinned", 1, WAIT).await[0]["userId"], b.hex());
    // Written behind the event: the list shows it soon after.
    let pins = natter_tests::eventually("the pin written", WAIT, || async {
        let (s, pins) = app.get(e, &format!("/api/chat/conversations/{conv}/pins"), a).await;
        (s == 200 && pins.as_array().is_some_and(|p| !p.is_empty())).then_some(pins)
    })
    .await;
    assert_eq!(pins[0]["message"]["content"], "hello", "{pins}");
    ca.request("unpin_message", json!({"messageId": id})).await;
    assert_eq!(cb.events("message_unpinned", 1, WAIT).await[0]["messageId"], id);
    // A mention, over Socket.IO.
    ca.request("send_message", json!({"conversationId": conv, "content": "look", "mentions": [b.hex()]})).await;
    assert_eq!(cb.events("mentioned", 1, WAIT).await[0]["content"], "look");
    // A reply: its sender's thread partner hears it as a thread reply.
    let r = cb.request("send_message", json!({"conversationId": conv, "content": "hi!", "replyTo": id})).await;
    let tr = ca.events("thread_reply", 1, WAIT).await;
    assert_eq!((tr[0]["_id"].as_str(), tr[0]["replyTo"].as_str()), (r["messageId"].as_str(), Some(id.as_str())));
    let r = ca.request("add_reaction", json!({"messageId": id, "emoji": ""})).await;
    assert_eq!(r["error"]["code"], "invalid_payload", "{r}");
    // An outsider on Socket.IO changes nothing and hears nothing.
    let out = app.user();
    let mut co = SioClient::connect(e, &app.token(out, &[]), Transports::WebsocketOnly).await;
    for (event, data) in [
        ("edit_message", json!({"messageId": id, "content": "mine"})),
        ("add_reaction", json!({"messageId": id, "emoji": "👀"})),
        ("pin_message", json!({"messageId": id})),
        ("send_message", json!({"conversationId": conv, "content": "hi", "replyTo": id})),
    ] {
        let r = co.request(event, data).await;
        let code = r["error"]["code"].as_str().unwrap_or_default().to_string();
        assert!(code == "not_found" || code == "not_a_member", "{event}: {r}");
    }
    assert!(ca.no_more("reaction_added", QUIET).await.is_empty(), "the outsider's reaction went nowhere");
    // A member removed from a group, on Socket.IO: refused, and deaf to
    // the group's changes.
    let g = app.create_group(e, a, &[b]).await;
    for cl in [&mut ca, &mut cb] {
        cl.request("join_group", json!({"groupId": g})).await;
    }
    let gm = ca.request("send_message", json!({"groupId": g, "content": "in the group"})).await;
    let gid = gm["messageId"].as_str().unwrap().to_string();
    cb.events("message_received", 1, WAIT).await;
    let admin = app.token(app.user(), &["Admin"]);
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}/members/{}", b.hex()), &admin, None).await;
    assert_eq!(s, 200);
    cb.events("member_removed", 1, WAIT).await;
    for (event, data) in [
        ("add_reaction", json!({"messageId": gid, "emoji": "👋"})),
        ("send_message", json!({"groupId": g, "content": "still here", "replyTo": gid})),
    ] {
        let r = cb.request(event, data).await;
        let code = r["error"]["code"].as_str().unwrap_or_default().to_string();
        assert!(code == "not_found" || code == "not_a_member", "{event}: {r}");
    }
    ca.request("edit_message", json!({"messageId": gid, "content": "in the group, edited"})).await;
    assert_eq!(ca.events("message_edited", 2, WAIT).await.len(), 2, "a hears both edits (conversation and group)");
    assert!(cb.no_more("message_edited", QUIET).await.iter().all(|e| e["content"] != "in the group, edited"));

    // The conversation's edit and the group's: nothing more.
    assert!(ca.no_more("message_edited", QUIET).await.is_empty());
}

/// Replies form threads: a reply to a reply joins its parent's thread; the
/// first message counts its replies; participants hear of each reply on
/// their own sockets without following the room; removed members and
/// outsiders neither reply nor hear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_form_threads_that_their_participants_hear() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b, c, d, m, out) = (app.user(), app.user(), app.user(), app.user(), app.user(), app.user());
    let g = app.create_group(e, a, &[b, c, d, m]).await;
    let other = app.create_group(e, a, &[b]).await;
    let tokens: Vec<String> = [a, b, c, d, m, out].iter().map(|u| app.token(*u, &[])).collect();
    // Only m follows the room; the others are connected, not joined.
    let mut socks = Vec::new();
    for t in &tokens {
        socks.push(WsClient::connect(e, t).await);
    }
    let [wa, wb, wc, wd, wm, wout] = &mut socks[..] else { unreachable!() };
    wm.request("join_group", json!({"groupId": g})).await;
    let root = send(wa, wm, &g, "what do we ship?").await;
    let elsewhere = wa.request("send_message", json!({"groupId": other, "content": "other room"})).await;
    let elsewhere = elsewhere["data"]["messageId"].as_str().unwrap().to_string();

    // b replies at once; c replies to b's reply (same thread); d too.
    let reply = |content: &str, to: &str| json!({"groupId": g, "content": content, "replyTo": to});
    let rb = wb.request("send_message", reply("the app", &root)).await;
    let rb = rb["data"]["messageId"].as_str().unwrap().to_string();
    let rc = wc.request("send_message", reply("and the docs", &rb)).await;
    let rc = rc["data"]["messageId"].as_str().unwrap().to_string();
    let rd = wd.request("send_message", reply("+1", &root)).await;
    let rd = rd["data"]["messageId"].as_str().unwrap().to_string();
    let got = wm.events("message_received", 3, WAIT).await;
    let threads: Vec<(&str, &str)> =
        got.iter().map(|f| (f["data"]["_id"].as_str().unwrap(), f["data"]["replyTo"].as_str().unwrap())).collect();
    assert_eq!(threads, [(rb.as_str(), root.as_str()), (rc.as_str(), root.as_str()), (rd.as_str(), root.as_str())]);
    // Each participant hears the replies after they joined the thread,
    // but their own; nobody else does.
    let heard = |frames: Vec<Value>| -> Vec<String> {
        frames.iter().map(|f| f["data"]["_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(heard(wa.events("thread_reply", 4, QUIET).await), [rb.clone(), rc.clone(), rd.clone()]);
    assert_eq!(heard(wb.events("thread_reply", 3, QUIET).await), [rc.clone(), rd.clone()]);
    assert_eq!(heard(wc.events("thread_reply", 2, QUIET).await), vec![rd.as_str()]);
    assert!(wd.events("thread_reply", 1, QUIET).await.is_empty());
    assert!(wm.events("thread_reply", 1, QUIET).await.is_empty(), "m follows the room but is not in the thread");

    // The first message counts them; the thread reads back in order.
    let counted = natter_tests::eventually("the replies written", WAIT, || async {
        let r = in_history(&app, e, &g, &root, m).await;
        (r["replyCount"] == 3).then_some(r)
    })
    .await;
    assert!(counted["lastReplyAt"].is_string(), "{counted}");
    let (s, page) = app.get(e, &format!("/api/chat/messages/{root}/replies?limit=2"), m).await;
    assert_eq!((s, page["total"].as_u64(), page["hasMore"].as_bool()), (200, Some(3), Some(true)), "{page}");
    let ids: Vec<&str> = page["messages"].as_array().unwrap().iter().map(|r| r["_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [rc.as_str(), rd.as_str()], "the newest page, oldest first");

    // Refused: a reply to another room's message, an outsider's reply, an
    // outsider reading the thread.
    let r_ = wb.request("send_message", reply("wrong room", &elsewhere)).await;
    assert_eq!(r_["data"]["code"], "not_found", "{r_}");
    let r_ = wout.request("send_message", reply("me too", &root)).await;
    assert_eq!(r_["data"]["code"], "not_a_member", "{r_}");
    let (s, _) = app.get(e, &format!("/api/chat/messages/{root}/replies"), out).await;
    assert_eq!(s, 404);

    // A removed participant hears no more and may not reply.
    let admin = app.token(app.user(), &["Admin"]);
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}/members/{}", d.hex()), &admin, None).await;
    assert_eq!(s, 200);
    let r_ = wd.request("send_message", reply("still here?", &root)).await;
    assert_eq!(r_["data"]["code"], "not_a_member", "{r_}");
    let last = wc.request("send_message", reply("shipping friday", &root)).await;
    let last = last["data"]["messageId"].as_str().unwrap().to_string();
    assert_eq!(heard(wa.events("thread_reply", 1, WAIT).await), vec![last.as_str()]);
    assert!(wd.events("thread_reply", 1, QUIET).await.is_empty(), "d was removed");

    // A deleted reply leaves the thread and its count.
    assert_eq!(wc.request("delete_message", json!({"messageId": rc})).await["type"], "ack");
    natter_tests::eventually("the delete counted", WAIT, || async {
        let r = in_history(&app, e, &g, &root, m).await;
        let (_, page) = app.get(e, &format!("/api/chat/messages/{root}/replies"), m).await;
        (r["replyCount"] == 3 && page["total"] == 3).then_some(())
    })
    .await;
}

/// Mentions: `<@userId>` in the text and `mentions` resolve to members (an
/// outsider's, a removed member's and the sender's own are dropped); each
/// mentioned member hears it on their own sockets and counts it until they
/// read past it or it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_reach_members_and_count_until_read() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b, c, m, out) = (app.user(), app.user(), app.user(), app.user(), app.user());
    let g = app.create_group(e, a, &[b, c, m]).await;
    let mut socks = Vec::new();
    for u in [a, b, c, m, out] {
        socks.push(WsClient::connect(e, &app.token(u, &[])).await);
    }
    let [wa, wb, wc, wm, wout] = &mut socks[..] else { unreachable!() };
    wm.request("join_group", json!({"groupId": g})).await;
    let text = format!("<@{}> <@{}> and <@{}>, see this", b.hex(), out.hex(), a.hex());
    let r = wa.request("send_message", json!({"groupId": g, "content": text, "mentions": [c.hex()]})).await;
    let first = r["data"]["messageId"].as_str().unwrap().to_string();
    let got = wm.events("message_received", 1, WAIT).await;
    assert_eq!(got[0]["data"]["mentions"], json!([c.hex(), b.hex()]), "members only, each once");
    for w in [&mut *wb, &mut *wc] {
        let ev = w.events("mentioned", 1, WAIT).await;
        assert_eq!(ev.first().map(|f| f["data"]["_id"].clone()), Some(json!(first)), "{ev:?}");
    }
    for w in [&mut *wa, &mut *wm, &mut *wout] {
        assert!(w.events("mentioned", 1, QUIET).await.is_empty());
    }
    let r = wa.request("send_message", json!({"groupId": g, "content": "x", "mentions": ["nobody"]})).await;
    assert_eq!(r["data"]["code"], "invalid_payload", "{r}");

    // Counted per member next to the unread counts.
    let second = send(wa, wm, &g, &format!("again <@{}>", b.hex())).await;
    let counts = |want: Value| {
        let app = &app;
        let g = g.clone();
        async move {
            natter_tests::eventually("mention counts", WAIT, || async {
                let (_, v) = app.get(e, &format!("/api/chat/groups/{g}"), b).await;
                (v["mentionCounts"] == want).then_some(())
            })
            .await
        }
    };
    counts(json!({b.hex(): 2, c.hex(): 1})).await;
    // b reads the first: the second still counts; its delete takes it off.
    wb.request("mark_as_read", json!({"messageId": first})).await;
    counts(json!({b.hex(): 1, c.hex(): 1})).await;
    wa.request("delete_message", json!({"messageId": second})).await;
    counts(json!({b.hex(): 0, c.hex(): 1})).await;

    // A removed member is no longer counted nor mentioned.
    let admin = app.token(app.user(), &["Admin"]);
    let (s, _) = app.call(Method::DELETE, e, &format!("/api/chat/groups/{g}/members/{}", c.hex()), &admin, None).await;
    assert_eq!(s, 200);
    counts(json!({b.hex(): 0})).await;
    let third = send(wa, wm, &g, &format!("<@{}> <@{}>", c.hex(), m.hex())).await;
    let stored = natter_tests::eventually("the message written", WAIT, || async {
        Some(in_history(&app, e, &g, &third, m).await).filter(|v| !v.is_null())
    })
    .await;
    assert_eq!(stored["mentions"], json!([m.hex()]), "{stored}");
    assert!(wc.events("mentioned", 1, QUIET).await.is_empty());
}

/// A system message (a member added) is reacted to and replied to before
/// the worker wrote it: both are applied, and the room goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_message_just_posted_takes_reactions_and_replies() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let g = app.create_group(e, a, &[b]).await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    wb.request("join_group", json!({"groupId": g})).await;
    let admin = app.token(a, &["Admin"]);
    let (s, _) = app
        .call(Method::POST, e, &format!("/api/chat/groups/{g}/members"), &admin, Some(json!({"userId": c.hex()})))
        .await;
    assert_eq!(s, 201);
    let system = event_where(&mut wb, "message_received", |d| d["messageType"] == "system").await;
    let id = system["_id"].as_str().unwrap().to_string();
    let r = wb.request("add_reaction", json!({"messageId": id, "emoji": "👋"})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let r = wb.request("send_message", json!({"groupId": g, "content": "welcome", "replyTo": id})).await;
    assert_eq!(r["type"], "ack", "{r}");
    let reaction = event_where(&mut wb, "reaction_added", |d| d["messageId"] == id).await;
    assert_eq!(reaction["count"], 1);
    let reply = event_where(&mut wb, "message_received", |d| d["content"] == "welcome").await;
    assert_eq!(reply["replyTo"], id);
    let r = wb.request("edit_message", json!({"messageId": id, "content": "rewritten"})).await;
    assert_eq!(r["data"]["code"], "forbidden", "a system message is not b's: {r}");
}
