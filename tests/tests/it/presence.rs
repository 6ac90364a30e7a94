//! Presence across devices and edges: online while any device is connected,
//! offline once when the last goes or its edge dies, seen only by contacts.

use natter_tests::procs::{self, Owned};
use natter_tests::ws::In;
use natter_tests::{TestApp, WsClient};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// Time for an edge's presence to take in a group event a socket has seen.
const SETTLE: Duration = Duration::from_secs(1);

/// Presence frames about `user` that arrive within `wait`.
async fn presence_of(ws: &mut WsClient, user: &str, wait: Duration) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Some(In::Json(v)) => {
                let t = v["type"].as_str().unwrap_or("");
                if (t == "user_online" || t == "user_offline") && v["data"]["userId"] == user {
                    out.push(t.to_string());
                }
            }
            Some(_) => {}
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_two_edges_and_a_dead_edge() {
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (u, contact, stranger) = (app.user(), app.user(), app.user());
    app.make_contacts(e1, u, contact).await;
    let uh = u.hex();

    let mut c = WsClient::connect(e1, &app.token(contact, &[])).await;
    let mut s = WsClient::connect(e2, &app.token(stranger, &[])).await;

    // First device: online, once.
    let d1 = WsClient::connect(e1, &app.token(u, &[])).await;
    assert_eq!(presence_of(&mut c, &uh, Duration::from_secs(3)).await, ["user_online"]);
    // Second device on the other edge: nothing new.
    let d2 = WsClient::connect(e2, &app.token(u, &[])).await;
    assert!(presence_of(&mut c, &uh, Duration::from_secs(2)).await.is_empty());
    let (_, v) = app.get(e2, &format!("/api/chat/presence?userIds={uh},{}", stranger.hex()), contact).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "strangers are left out: {v}");
    assert_eq!(v[0]["isOnline"], true);
    // Closing one keeps the user online; closing both: offline, once.
    drop(d1);
    assert!(presence_of(&mut c, &uh, Duration::from_secs(2)).await.is_empty(), "still online on the other device");
    drop(d2);
    assert_eq!(presence_of(&mut c, &uh, Duration::from_secs(3)).await, ["user_offline"]);
    let (_, v) = app.get(e1, &format!("/api/chat/presence?userIds={uh}"), contact).await;
    assert_eq!(v[0]["isOnline"], false);
    assert!(v[0]["lastSeen"].is_string(), "{v}");
    // A stranger saw none of it.
    assert!(presence_of(&mut s, &uh, Duration::from_millis(300)).await.is_empty());

    // An edge killed with -9: its users go offline within the bound.
    let port = procs::free_port();
    let mut env = app.env();
    env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
    let log = std::env::temp_dir().join(format!("{}-edge3.log", app.name)).display().to_string();
    let mut e3 = Owned::spawn(&procs::workspace_bin("natter-edge"), &[], &env, &log);
    procs::wait_for_port(port, Duration::from_secs(30)).await;
    let e3_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _d3 = WsClient::connect(e3_addr, &app.token(u, &[])).await;
    assert_eq!(presence_of(&mut c, &uh, Duration::from_secs(3)).await, ["user_online"]);
    e3.kill9().await;
    let started = std::time::Instant::now();
    let bound = natter_edge::realtime::presence::OFFLINE_BOUND;
    let first = loop {
        match c.next(bound.saturating_sub(started.elapsed())).await {
            Some(In::Json(v)) if v["data"]["userId"] == uh.as_str() => break Some(v),
            Some(_) => {}
            None => break None,
        }
    };
    let first = first.unwrap_or_else(|| panic!("no presence frame within {bound:?}"));
    assert_eq!(first["type"], "user_offline", "{first}");
    let took = started.elapsed();
    assert!(took > Duration::from_secs(1), "offline only by expiry ({took:?})");
    assert!(presence_of(&mut c, &uh, Duration::from_secs(1)).await.is_empty(), "offline once");
    let (_, v): (u16, Value) = app.get(e1, &format!("/api/chat/presence?userIds={uh}"), contact).await;
    assert_eq!(v[0]["isOnline"], false);
}

/// A group over `PRESENCE_MAX_GROUP` pushes no presence to its members,
/// who still see each other over REST; a conversation's peers still get
/// pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_the_limit_pushes_no_presence() {
    let mut app = TestApp::new().await;
    app.edge_env.insert("PRESENCE_MAX_GROUP".into(), "2".into());
    let e = app.start_edge().await;
    app.start_worker();
    let (admin, m1, m2, peer) = (app.user(), app.user(), app.user(), app.user());
    app.create_group(e, admin, &[m1, m2]).await;
    app.make_contacts(e, m1, peer).await;
    let mut w1 = WsClient::connect(e, &app.token(m1, &[])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _d2 = WsClient::connect(e, &app.token(m2, &[])).await;
    let _dp = WsClient::connect(e, &app.token(peer, &[])).await;
    // Every presence frame w1 gets: the peer's, none of the member's.
    let mut heard = Vec::new();
    while let Some(f) = w1.next(Duration::from_secs(2)).await {
        if let In::Json(v) = f
            && v["type"].as_str().is_some_and(|t| t.starts_with("user_o"))
        {
            heard.push((v["type"].as_str().unwrap().to_string(), v["data"]["userId"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(heard, [("user_online".to_string(), peer.hex())], "no push from the big group");
    let (_, v) = app.get(e, &format!("/api/chat/presence?userIds={},{}", m2.hex(), peer.hex()), m1).await;
    let online: Vec<bool> = v.as_array().unwrap().iter().map(|p| p["isOnline"] == true).collect();
    assert_eq!(online, [true, true], "both seen over REST: {v}");
}

/// The first presence frame about `user` within `wait`.
async fn first_presence(ws: &mut WsClient, user: &str, wait: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await {
            Some(In::Json(v)) if v["data"]["userId"] == user => return v["type"].as_str().map(str::to_string),
            Some(_) => {}
            None => return None,
        }
    }
}

/// The presence bucket's keys that start with `prefix`.
async fn presence_keys(app: &TestApp, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    let (_, kv) = app.presence_bucket().await;
    let keys: Vec<String> = kv.keys().await.expect("keys").try_collect().await.expect("keys");
    keys.into_iter().filter(|k| k.starts_with(prefix)).collect()
}

/// A heartbeat is one write per edge however many users it holds. An edge
/// that stalls past the TTL (as a dead one) has its users taken offline
/// and their keys deleted by another edge, and puts them back when it
/// resumes; a key lost otherwise is put back, and a stray one deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_cost_a_write_per_edge_and_a_stalled_edge_comes_back() {
    use natter_edge::realtime::presence::{HEARTBEAT, OFFLINE_BOUND};
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    app.start_worker();
    let (u, contact) = (app.user(), app.user());
    app.make_contacts(e1, u, contact).await;
    let uh = u.hex();
    let mut c = WsClient::connect(e1, &app.token(contact, &[])).await;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(WsClient::connect(e1, &app.token(app.user(), &[])).await);
    }
    assert_eq!(presence_keys(&app, "user.").await.len(), 41, "a key per user");
    let before = app.presence_writes().await;
    tokio::time::sleep(HEARTBEAT * 3 + Duration::from_millis(500)).await;
    let heartbeats = app.presence_writes().await - before;
    assert!((2..=4).contains(&heartbeats), "{heartbeats} writes in three heartbeats of 41 users");

    // u on an edge of its own, which stalls (SIGSTOP) past the TTL.
    let port = procs::free_port();
    let mut env = app.env();
    env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{port}")));
    let log = std::env::temp_dir().join(format!("{}-edge-stalled.log", app.name)).display().to_string();
    let e2 = Owned::spawn(&procs::workspace_bin("natter-edge"), &[], &env, &log);
    procs::wait_for_port(port, Duration::from_secs(30)).await;
    let e2_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _d = WsClient::connect(e2_addr, &app.token(u, &[])).await;
    assert_eq!(presence_of(&mut c, &uh, Duration::from_secs(3)).await, ["user_online"]);
    let u_keys = format!("user.{uh}.");
    assert_eq!(presence_keys(&app, &u_keys).await.len(), 1);
    e2.signal("STOP");
    assert_eq!(first_presence(&mut c, &uh, OFFLINE_BOUND).await.as_deref(), Some("user_offline"));
    // The live edge deletes the stalled edge's keys.
    natter_tests::eventually("the stalled edge's keys deleted", OFFLINE_BOUND + HEARTBEAT, || async {
        presence_keys(&app, &u_keys).await.is_empty().then_some(())
    })
    .await;
    // Resumed: its next heartbeat finds its key gone and puts all back.
    e2.signal("CONT");
    assert_eq!(first_presence(&mut c, &uh, HEARTBEAT * 3).await.as_deref(), Some("user_online"));
    assert_eq!(presence_keys(&app, &u_keys).await.len(), 1, "put back");
    assert!(presence_of(&mut c, &uh, HEARTBEAT + Duration::from_secs(1)).await.is_empty(), "and stays online");
    let (_, v) = app.get(e1, &format!("/api/chat/presence?userIds={uh}"), contact).await;
    assert_eq!(v[0]["isOnline"], true, "{v}");

    // The live edge's users were never touched.
    assert_eq!(presence_keys(&app, "user.").await.len(), 42);

    // A key lost (a write that failed, or raced a reconnect) is put back
    // within a heartbeat or two, and a key of a user not there is deleted.
    let (js, kv) = app.presence_bucket().await;
    let u_key = presence_keys(&app, &u_keys).await.remove(0);
    let e2_id = u_key.rsplit('.').next().unwrap().to_string();
    let ghost = format!("user.{}.{e2_id}", app.user().hex());
    kv.delete(&u_key).await.unwrap();
    // As an edge puts it, never expiring: only the mending removes it.
    let mut never = async_nats::HeaderMap::new();
    never.insert(async_nats::header::NATS_MESSAGE_TTL, "never");
    let subject = format!("{}{ghost}", kv.prefix);
    js.publish_with_headers(subject, never, "1".into()).await.unwrap().await.unwrap();
    natter_tests::eventually("the edge mends its keys", HEARTBEAT * 3, || async {
        let keys = presence_keys(&app, "user.").await;
        (keys.contains(&u_key) && !keys.contains(&ghost)).then_some(())
    })
    .await;
}

/// A group's members see each other come and go; the edge holds the group
/// once for everyone in it and follows its membership: a member added
/// later is seen, a removed one and an outsider are not, and the REST
/// answer (for a user with a socket here, and for one without) agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_see_each_other_as_membership_changes() {
    use reqwest::Method;
    let mut app = TestApp::new().await;
    let e1 = app.start_edge().await;
    let e2 = app.start_edge().await;
    app.start_worker();
    let (admin, m1, m2, newcomer, outsider) = (app.user(), app.user(), app.user(), app.user(), app.user());
    let g = app.create_group(e1, admin, &[m1, m2]).await;
    let t_admin = app.token(admin, &["Admin"]);

    let mut w1 = WsClient::connect(e1, &app.token(m1, &[])).await;
    // Joined: e1 follows the group's room, and so its membership changes.
    assert_eq!(w1.request("join_group", serde_json::json!({"groupId": g})).await["type"], "ack");
    let mut wo = WsClient::connect(e1, &app.token(outsider, &[])).await;
    // Both users' contacts load in the background after the connect.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let d2 = WsClient::connect(e2, &app.token(m2, &[])).await;
    assert_eq!(presence_of(&mut w1, &m2.hex(), Duration::from_secs(3)).await, ["user_online"]);
    assert!(presence_of(&mut wo, &m2.hex(), Duration::from_millis(300)).await.is_empty(), "not the outsider's");

    // Added later: seen when they connect.
    let path = format!("/api/chat/groups/{g}/members");
    let (s, v) = app.call(Method::POST, e2, &path, &t_admin, Some(serde_json::json!({"userId": newcomer.hex()}))).await;
    assert_eq!(s, 201, "{v}");
    let _ = w1.events("member_added", 1, Duration::from_secs(5)).await;
    let dn = WsClient::connect(e2, &app.token(newcomer, &[])).await;
    assert_eq!(presence_of(&mut w1, &newcomer.hex(), Duration::from_secs(3)).await, ["user_online"]);
    assert!(presence_of(&mut wo, &newcomer.hex(), Duration::from_millis(300)).await.is_empty());
    let (_, v) = app.get(e2, "/api/chat/groups", newcomer).await;
    assert_eq!(v.as_array().map(|a| a.iter().filter(|x| x["_id"] == g.as_str()).count()), Some(1), "{v}");

    // Removed: no longer seen, and no longer listed.
    let (s, v) = app.call(Method::DELETE, e2, &format!("{path}/{}", m2.hex()), &t_admin, None).await;
    assert_eq!(s, 200, "{v}");
    let _ = w1.events("member_removed", 1, Duration::from_secs(5)).await;
    // The member's socket hears the removal on its own subject too, maybe
    // before the room's copy reaches presence: let the edge take it in.
    tokio::time::sleep(SETTLE).await;
    drop(d2);
    assert!(presence_of(&mut w1, &m2.hex(), Duration::from_secs(2)).await.is_empty(), "a removed member is not seen");
    let (_, v) = app.get(e2, "/api/chat/groups", m2).await;
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");

    let ask = format!("/api/chat/presence?userIds={},{},{}", m2.hex(), newcomer.hex(), outsider.hex());
    // m1 has a socket on e1 (its lists are held there), none on e2.
    for edge in [e1, e2] {
        let (_, v) = app.get(edge, &ask, m1).await;
        let seen: Vec<&str> = v.as_array().unwrap().iter().filter_map(|p| p["userId"].as_str()).collect();
        assert_eq!(seen, [newcomer.hex()], "{v}");
    }

    // Deleted: nobody in it is anyone's contact through it.
    let (s, v) = app.call(Method::DELETE, e2, &format!("/api/chat/groups/{g}"), &t_admin, None).await;
    assert_eq!(s, 200, "{v}");
    let _ = w1.events("group_deleted", 1, Duration::from_secs(5)).await;
    tokio::time::sleep(SETTLE).await;
    drop(dn);
    assert!(presence_of(&mut w1, &newcomer.hex(), Duration::from_secs(2)).await.is_empty());
    let (_, v) = app.get(e2, &ask, m1).await;
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
    let (_, v) = app.get(e1, "/api/chat/groups", newcomer).await;
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
}
