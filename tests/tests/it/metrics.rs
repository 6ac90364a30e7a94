//! Prometheus metrics, scraped from a running edge (`/metrics`) and a
//! messages worker (`METRICS_ADDR`), both their own processes: the numbers
//! move with the traffic and say what happened.

use natter_tests::{TestApp, WsClient, procs};
use serde_json::json;
use std::time::Duration;

/// The sum of the samples of `name` whose labels include every `labels`
/// pair (`name{...} value` lines of the Prometheus text format).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, set) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        if labels.iter().all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\""))) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

async fn scrape(url: &str) -> String {
    reqwest::get(url).await.expect("scrape").text().await.expect("metrics text")
}

#[tokio::test]
async fn metrics_move_with_the_pipeline() {
    let mut app = TestApp::new().await;
    let edge = app.start_edge_process().await;
    let port = procs::free_port();
    app.edge_env.insert("METRICS_ADDR".into(), format!("127.0.0.1:{port}"));
    app.start_worker_process();
    procs::wait_for_port(port, Duration::from_secs(60)).await;
    let worker = format!("http://127.0.0.1:{port}/metrics");
    let edge_url = format!("http://{edge}/metrics");

    let (a, b) = (app.user(), app.user());
    let conv = app.open_conversation(edge, a, b).await;
    let mut wa = WsClient::connect(edge, &app.token(a, &[])).await;
    let mut wb = WsClient::connect(edge, &app.token(b, &[])).await;
    wb.request("join_conversation", json!({"conversationId": conv})).await;
    let text = scrape(&edge_url).await;
    assert_eq!(sample(&text, "natter_connections", &[("protocol", "ws")]), Some(2.0), "{text}");
    for i in 0..5 {
        let r = wa.request("send_message", json!({"conversationId": conv, "content": format!("m{i}")})).await;
        assert_eq!(r["type"], "ack");
    }
    assert_eq!(wb.events("message_received", 5, Duration::from_secs(10)).await.len(), 5);
    let r = wa.request("join_group", json!({"groupId": "650000000000000000000099"})).await;
    assert_eq!(r["type"], "error");

    let text = scrape(&edge_url).await;
    let sent = [("request", "send_message"), ("outcome", "ok")];
    assert_eq!(sample(&text, "natter_requests_total", &sent), Some(5.0), "{text}");
    assert!(
        sample(&text, "natter_requests_total", &[("request", "join_group"), ("outcome", "not_a_member")]) == Some(1.0)
    );
    let stored = [("action", "send_message"), ("outcome", "stored")];
    assert_eq!(sample(&text, "natter_commands_published_total", &stored), Some(5.0));
    assert!(sample(&text, "natter_puback_seconds_count", &[]).unwrap_or(0.0) >= 6.0, "5 sends and the conversation");
    assert!(sample(&text, "natter_puback_seconds_bucket", &[("le", "+Inf")]).unwrap_or(0.0) >= 6.0);
    assert!(sample(&text, "natter_events_delivered_total", &[]).unwrap_or(0.0) >= 5.0);

    // The worker's, once it has written what it applied.
    let text = natter_tests::eventually("the worker's metrics", Duration::from_secs(10), || async {
        let t = scrape(&worker).await;
        let applied = sample(&t, "natter_commands_total", &[("role", "messages"), ("outcome", "applied")])?;
        (applied >= 6.0 && sample(&t, "natter_db_round_trips_total", &[("op", "insert")])? >= 1.0).then_some(t)
    })
    .await;
    assert!(sample(&text, "natter_batch_size_count", &[("role", "messages")]).unwrap_or(0.0) >= 1.0, "{text}");
    assert!(sample(&text, "natter_apply_seconds_count", &[("role", "messages")]).unwrap_or(0.0) >= 1.0);
    assert_eq!(sample(&text, "natter_consumer_lag", &[("role", "messages")]), Some(0.0), "nothing left behind");
    assert_eq!(sample(&text, "natter_dead_letters_total", &[]), None, "nothing dead-lettered");

    drop((wa, wb));
    let text = natter_tests::eventually("connections closed", Duration::from_secs(10), || async {
        let t = scrape(&edge_url).await;
        (sample(&t, "natter_connections", &[("protocol", "ws")]) == Some(0.0)).then_some(t)
    })
    .await;
    assert!(text.contains("# TYPE natter_puback_seconds histogram"), "latencies are histograms");
}

/// The last command stored in the app's command stream, as JSON.
async fn last_command(app: &TestApp) -> serde_json::Value {
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.unwrap());
    let subjects = natter_nats::Subjects::new(&app.name);
    let mut stream = js.get_stream(subjects.cmd_stream()).await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let m = stream.get_raw_message(last).await.unwrap();
    serde_json::from_slice(&m.payload).unwrap()
}

/// A trace id follows a request into the command the edge stores (and so
/// into the worker's log lines of it): the caller's W3C `traceparent`, or
/// a new one per socket request; REST answers say which.
#[tokio::test]
async fn a_trace_id_follows_a_request_into_its_command() {
    let mut app = TestApp::new().await;
    let edge = app.start_edge().await;
    app.start_worker();
    let (a, b) = (app.user(), app.user());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = app
        .http()
        .post(format!("http://{edge}/api/chat/conversations/with-user"))
        .bearer_auth(app.token(a, &[]))
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .json(&json!({"userId": b.hex()}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.headers()["x-trace-id"], trace);
    let conv = resp.json::<serde_json::Value>().await.unwrap()["_id"].as_str().unwrap().to_string();
    let cmd = last_command(&app).await;
    assert_eq!(
        (cmd["command"]["type"].as_str(), cmd["meta"]["traceId"].as_str()),
        (Some("create_conversation"), Some(trace))
    );
    // Without one, the edge makes one.
    let resp = app
        .http()
        .get(format!("http://{edge}/api/chat/conversations"))
        .bearer_auth(app.token(a, &[]))
        .send()
        .await
        .unwrap();
    let made = resp.headers()["x-trace-id"].to_str().unwrap().to_string();
    assert!(made.len() == 32 && made != trace, "{made}");

    // A socket request: a new id each.
    let mut ws = WsClient::connect(edge, &app.token(a, &[])).await;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..2 {
        let r = ws.request("send_message", json!({"conversationId": conv, "content": format!("t{i}")})).await;
        assert_eq!(r["type"], "ack");
        let cmd = last_command(&app).await;
        assert_eq!(cmd["command"]["content"], format!("t{i}"));
        let id = cmd["meta"]["traceId"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 32);
        seen.insert(id);
    }
    assert_eq!(seen.len(), 2, "one trace per request");
    // Not part of the audit record's request metadata.
    let meta = natter_shared::v1::command::RequestMeta { trace_id: Some("x".into()), ..Default::default() };
    assert!(!meta.to_map().contains_key("traceId"));
}
