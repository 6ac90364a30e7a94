//! `natterctl dlq list|show|retry|drop`: dead-lettered commands with the
//! reason they were set aside; `retry` publishes one again on its original
//! subject (once its cause is fixed) and removes it from the dead letters,
//! `drop` discards it.

use crate::out;
use anyhow::Context;
use async_nats::jetstream;
use natter_nats::Subjects;
use natter_nats::topology::{DLQ_REASON, DLQ_SEQ, DLQ_SUBJECT};
use serde::Serialize;
use serde_json::Value;

/// One dead letter.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Its sequence in the dead-letter stream: what `show`, `retry` and
    /// `drop` take.
    pub id: u64,
    pub role: String,
    pub reason: String,
    /// Where it was: stream sequence and subject.
    pub original_seq: Option<u64>,
    pub original_subject: String,
    /// The command's action, when its payload can be read.
    pub action: Option<String>,
    pub time: String,
    pub bytes: usize,
    #[serde(skip)]
    pub payload: bytes::Bytes,
}

fn header(m: &jetstream::message::StreamMessage, name: &str) -> Option<String> {
    m.headers.get(name).map(|v| v.as_str().to_string())
}

fn entry(s: &Subjects, m: jetstream::message::StreamMessage) -> Entry {
    let prefix = s.dlq("");
    let action = serde_json::from_slice::<Value>(&m.payload)
        .ok()
        .and_then(|v| v["command"]["type"].as_str().or(v["action"].as_str()).map(str::to_string));
    Entry {
        id: m.sequence,
        role: m.subject.as_str().strip_prefix(&prefix).unwrap_or(m.subject.as_str()).to_string(),
        reason: header(&m, DLQ_REASON).unwrap_or_default(),
        original_seq: header(&m, DLQ_SEQ).and_then(|v| v.parse().ok()),
        original_subject: header(&m, DLQ_SUBJECT).unwrap_or_default(),
        action,
        time: m.time.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        bytes: m.payload.len(),
        payload: m.payload,
    }
}

/// Every dead letter, oldest first.
pub async fn entries(js: &jetstream::Context, s: &Subjects) -> anyhow::Result<Vec<Entry>> {
    let mut stream = js.get_stream(s.dlq_stream()).await.context("the dead-letter stream")?;
    let state = stream.info().await?.state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        // Gaps are letters already retried or dropped.
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(entry(s, m));
        }
    }
    Ok(out)
}

async fn one(js: &jetstream::Context, s: &Subjects, id: u64) -> anyhow::Result<Entry> {
    let stream = js.get_stream(s.dlq_stream()).await?;
    let m = stream.get_raw_message(id).await.with_context(|| format!("no dead letter {id}"))?;
    Ok(entry(s, m))
}

pub async fn list(js: &jetstream::Context, s: &Subjects, as_json: bool) -> anyhow::Result<()> {
    let all = entries(js, s).await?;
    if as_json {
        out(&serde_json::to_string(&all)?);
        return Ok(());
    }
    if all.is_empty() {
        out("no dead letters");
    }
    for e in &all {
        out(&format!(
            "{:>6}  {}  {:<12} {:<18} seq {:>8}  {}",
            e.id,
            e.time,
            e.role,
            e.action.as_deref().unwrap_or("?"),
            e.original_seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into()),
            e.reason
        ));
    }
    Ok(())
}

pub async fn show(js: &jetstream::Context, s: &Subjects, id: u64) -> anyhow::Result<()> {
    let e = one(js, s, id).await?;
    let payload: Value = serde_json::from_slice(&e.payload)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&e.payload).into_owned()));
    let mut v = serde_json::to_value(&e)?;
    v["payload"] = payload;
    out(&serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Which letters a `retry` or `drop` is about.
pub async fn select(js: &jetstream::Context, s: &Subjects, ids: &[u64], all: bool) -> anyhow::Result<Vec<Entry>> {
    if all {
        return entries(js, s).await;
    }
    anyhow::ensure!(!ids.is_empty(), "name the dead letters (their ids from `dlq list`) or pass --all");
    let mut v = Vec::new();
    for id in ids {
        v.push(one(js, s, *id).await?);
    }
    Ok(v)
}

/// Publishes each letter again on its original subject (deduplicated by
/// the letter's id, so running `retry` twice stores it once), then removes
/// it from the dead letters.
pub async fn retry(js: &jetstream::Context, s: &Subjects, letters: Vec<Entry>) -> anyhow::Result<()> {
    let stream = js.get_stream(s.dlq_stream()).await?;
    for e in letters {
        anyhow::ensure!(!e.original_subject.is_empty(), "dead letter {} has no original subject", e.id);
        let stored = natter_nats::publish::command(
            js,
            e.original_subject.clone(),
            &format!("dlq-retry:{}:{}", s.dlq_stream(), e.id),
            e.payload.clone(),
        )
        .await?;
        stream.delete_message(e.id).await.with_context(|| format!("removing dead letter {}", e.id))?;
        out(&format!("retried {} ({}): stored again at seq {}", e.id, e.action.as_deref().unwrap_or("?"), stored.seq));
    }
    Ok(())
}

pub async fn drop(js: &jetstream::Context, s: &Subjects, letters: Vec<Entry>) -> anyhow::Result<()> {
    let stream = js.get_stream(s.dlq_stream()).await?;
    for e in letters {
        stream.delete_message(e.id).await.with_context(|| format!("dropping dead letter {}", e.id))?;
        out(&format!("dropped {} ({}): {}", e.id, e.action.as_deref().unwrap_or("?"), e.reason));
    }
    Ok(())
}
