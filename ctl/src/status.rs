//! `natterctl status`: the pipeline at a glance. Streams (messages, bytes,
//! sequences), every durable consumer (pending, ack-pending, redelivered)
//! and the dead letters by role.

use crate::out;
use natter_nats::{Role, Subjects};
use serde_json::{Value, json};

pub async fn run(js: &async_nats::jetstream::Context, s: &Subjects, as_json: bool) -> anyhow::Result<()> {
    let report = collect(js, s).await?;
    if as_json {
        out(&report.to_string());
        return Ok(());
    }
    for st in report["streams"].as_array().into_iter().flatten() {
        out(&format!(
            "stream   {:<22} messages {:>10}  bytes {:>12}  seq {}..{}  replicas {}",
            st["name"].as_str().unwrap_or(""),
            st["messages"],
            st["bytes"],
            st["firstSeq"],
            st["lastSeq"],
            st["replicas"]
        ));
    }
    for c in report["consumers"].as_array().into_iter().flatten() {
        out(&format!(
            "consumer {:<22} pending {:>8}  ack-pending {:>6}  redelivered {:>6}",
            c["name"].as_str().unwrap_or(""),
            c["pending"],
            c["ackPending"],
            c["redelivered"]
        ));
    }
    let dl = &report["deadLetters"];
    let by_role: Vec<String> =
        dl["byRole"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect()).unwrap_or_default();
    let detail = if by_role.is_empty() { String::new() } else { format!(" ({})", by_role.join(", ")) };
    out(&format!("dead letters {}{detail}", dl["total"]));
    Ok(())
}

/// The report `status --json` prints.
pub async fn collect(js: &async_nats::jetstream::Context, s: &Subjects) -> anyhow::Result<Value> {
    let mut streams = Vec::new();
    for name in [s.cmd_stream(), s.evt_stream(), s.outcomes_stream(), s.dlq_stream()] {
        let mut stream = js.get_stream(&name).await.map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
        let info = stream.info().await?;
        streams.push(json!({
            "name": name,
            "messages": info.state.messages,
            "bytes": info.state.bytes,
            "firstSeq": info.state.first_sequence,
            "lastSeq": info.state.last_sequence,
            "replicas": info.config.num_replicas,
        }));
    }
    let mut consumers = Vec::new();
    for role in Role::ALL {
        let stream = js.get_stream(role.stream(s)).await?;
        for p in 0..role.partitions(s) {
            let name = s.consumer(role.name(), p);
            let mut c: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer(&name).await.map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))?;
            let info = c.info().await?;
            consumers.push(json!({
                "name": name,
                "role": role.name(),
                "partition": p,
                "pending": info.num_pending,
                "ackPending": info.num_ack_pending,
                "redelivered": info.num_redelivered,
            }));
        }
    }
    let mut by_role = serde_json::Map::new();
    let letters = crate::dlq::entries(js, s).await?;
    for e in &letters {
        let n = by_role.entry(e.role.clone()).or_insert(json!(0));
        *n = json!(n.as_u64().unwrap_or(0) + 1);
    }
    let total = letters.len();
    Ok(
        json!({"partitions": s.partitions(), "streams": streams, "consumers": consumers, "deadLetters": {"total": total, "byRole": by_role}}),
    )
}
