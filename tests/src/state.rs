//! The canonical state of a database, to compare a live one with a rebuild:
//! every collection's documents in `_id` order (the audit trail's records
//! in chain order), keys sorted, hashed.

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// SHA-256 over every collection's name and documents.
    pub hash: String,
    /// Documents per collection.
    pub counts: BTreeMap<String, usize>,
    /// Each collection's documents as canonical extended JSON, for showing
    /// where two states differ.
    pub docs: BTreeMap<String, Vec<String>>,
}

impl State {
    /// The first document that differs between two states, if any.
    pub fn first_difference(&self, other: &State) -> Option<String> {
        for (name, mine) in &self.docs {
            let theirs = other.docs.get(name).cloned().unwrap_or_default();
            for (i, d) in mine.iter().enumerate() {
                if theirs.get(i) != Some(d) {
                    return Some(format!("{name}[{i}]:\n  {d}\n  {}", theirs.get(i).map_or("(none)", |s| s.as_str())));
                }
            }
        }
        None
    }
}

/// JSON with every object's keys in order: the order in which a map's keys
/// were first written is not part of the state.
fn sorted(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), sorted(&m[k.as_str()]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(sorted).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// The trail's records (pages are write batches: a replay batches facts
/// differently, and the records, their chain and hashes are the state).
fn audit_records(pages: Vec<Document>) -> Vec<Document> {
    let mut records: Vec<Document> = pages
        .into_iter()
        .flat_map(|p| p.get_array("records").cloned().unwrap_or_default())
        .filter_map(|r| r.as_document().cloned())
        .collect();
    records.sort_by_key(|r| r.get_i64("chainSeq").unwrap_or_default());
    records
}

pub async fn canonical(db: &mongodb::Database) -> State {
    let mut names = db.list_collection_names().await.expect("collections");
    names.sort();
    let mut h = Sha256::new();
    let mut counts = BTreeMap::new();
    let mut all = BTreeMap::new();
    for name in names {
        let docs: Vec<Document> = db
            .collection::<Document>(&name)
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .expect("find")
            .try_collect()
            .await
            .expect("documents");
        let docs = if name == natter_shared::audit::AUDIT { audit_records(docs) } else { docs };
        h.update(name.as_bytes());
        let mut texts = Vec::with_capacity(docs.len());
        for d in &docs {
            let json = sorted(&Bson::Document(d.clone()).into_canonical_extjson());
            h.update(json.as_bytes());
            h.update(b"\n");
            texts.push(json);
        }
        counts.insert(name.clone(), docs.len());
        all.insert(name, texts);
    }
    State { hash: format!("{:x}", h.finalize()), counts, docs: all }
}

/// Waits until every consumer has nothing pending and the state stops
/// changing (natterctl's `status`, in process).
pub async fn settled(app: &crate::TestApp) -> State {
    use std::time::Duration;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = None;
    let js = async_nats::jetstream::new(async_nats::connect(&app.nats_url).await.expect("nats"));
    let subjects = natter_nats::Subjects::new(&app.name);
    natterctl::partitions::load(&js, &subjects).await.expect("partition count");
    loop {
        let status: serde_json::Value = natterctl::status::collect(&js, &subjects).await.unwrap();
        let busy = status["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["pending"].as_u64() != Some(0) || c["ackPending"].as_u64() != Some(0));
        let now = canonical(app.store.db()).await;
        if !busy && last.as_ref() == Some(&now) {
            return now;
        }
        assert!(tokio::time::Instant::now() < deadline, "the pipeline did not settle: {status}");
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}
