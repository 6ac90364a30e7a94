//! Search: whole words, every word of the query, in the caller's rooms
//! only (or one of them), newest first, paged; edits and deletes are
//! honoured; a room the caller is not in is refused.

use natter_tests::{TestApp, WsClient};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_words_in_the_callers_rooms_newest_first() {
    let mut app = TestApp::new().await;
    let e = app.start_edge().await;
    app.start_worker();
    let (a, b, c) = (app.user(), app.user(), app.user());
    let conv = app.open_conversation(e, a, b).await;
    let g = app.create_group(e, a, &[c]).await;
    let h = app.create_group(e, b, &[c]).await; // a is not in h
    let mut wa = WsClient::connect(e, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(e, &app.token(b, &[])).await;
    let mut wc = WsClient::connect(e, &app.token(c, &[])).await;
    let send = async |w: &mut WsClient, room: (&str, &str), content: &str| {
        let r = w.request("send_message", json!({room.0: room.1, "content": content})).await;
        assert_eq!(r["type"], "ack", "{r}");
        r["data"]["messageId"].as_str().unwrap().to_string()
    };
    let m1 = send(&mut wa, ("conversationId", &conv), "Deploy the release on Friday").await;
    let m2 = send(&mut wb, ("conversationId", &conv), "friday works for me").await;
    let m3 = send(&mut wa, ("groupId", &g), "Release notes, due FRIDAY.").await;
    let secret = send(&mut wc, ("groupId", &h), "the friday surprise").await;
    let moved = send(&mut wa, ("groupId", &g), "standup friday").await;
    let gone = send(&mut wa, ("conversationId", &conv), "friday, to be deleted").await;
    wa.request("edit_message", json!({"messageId": moved, "content": "standup monday"})).await;
    wa.request("delete_message", json!({"messageId": gone})).await;

    let ta = app.token(a, &[]);
    let find =
        async |q: &str| -> (u16, Value) { app.call(Method::GET, e, &format!("/api/chat/search?{q}"), &ta, None).await };
    let ids = |v: &Value| -> Vec<String> {
        v["messages"].as_array().unwrap().iter().map(|m| m["_id"].as_str().unwrap().to_string()).collect()
    };
    // Written behind the events: the results follow within moments.
    natter_tests::eventually("the messages written", WAIT, || async {
        // The last of them (the edit) is in when monday finds it.
        let (_, v) = find("q=friday").await;
        let (_, edited) = find("q=monday").await;
        (ids(&v) == [m3.clone(), m2.clone(), m1.clone()] && !ids(&edited).is_empty()).then_some(())
    })
    .await;
    let (s, v) = find("q=friday").await;
    assert_eq!((s, v["hasMore"].as_bool()), (200, Some(false)), "{v}");
    assert!(!ids(&v).contains(&secret), "not a's room");
    assert_eq!(v["messages"][0]["content"], "Release notes, due FRIDAY.");
    // Every word; any case; edits found by their new words only.
    assert_eq!(ids(&find("q=RELEASE+friday").await.1), [m3.clone(), m1.clone()]);
    assert_eq!(ids(&find("q=monday").await.1), [moved.as_str()]);
    assert_eq!(ids(&find("q=standup+friday").await.1), Vec::<String>::new());
    // One room; one the caller is not in.
    assert_eq!(ids(&find(&format!("q=friday&room={g}")).await.1), [m3.as_str()]);
    let (s, v) = find(&format!("q=friday&room={h}")).await;
    assert_eq!((s, v["error"]["code"].as_str()), (403, Some("not_a_member")), "{v}");
    // Paged newest first: nextBefore goes on where the page ended.
    let (_, p1) = find("q=friday&limit=2").await;
    assert_eq!((ids(&p1), p1["hasMore"].as_bool()), (vec![m3.clone(), m2.clone()], Some(true)), "{p1}");
    let before = p1["nextBefore"].as_i64().unwrap();
    let (_, p2) = find(&format!("q=friday&limit=2&before={before}")).await;
    assert_eq!((ids(&p2), p2["hasMore"].as_bool()), (vec![m1.clone()], Some(false)), "{p2}");
    // Bad queries get their code.
    for q in ["", "q=", "q=a", "q=!!", "q=friday&limit=0", "q=friday&before=x", "q=friday&room=nope"] {
        let (s, v) = find(q).await;
        assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_payload")), "{q}: {v}");
    }
    let long = format!("q={}", "word ".repeat(60));
    assert_eq!(find(&long).await.0, 400);
    // b sees the conversation's messages and h's, not g's.
    let (_, v) = app.get(e, "/api/chat/search?q=friday", b).await;
    assert_eq!(ids(&v), [secret.clone(), m2.clone(), m1.clone()]);
    drop((wb, wc));
}
