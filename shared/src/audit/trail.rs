//! How the trail is stored and read. An append (one batch of facts) is one
//! document, a page: the records of the chain positions `_id..=last`, the
//! filter keys of its records (each once) and its time span. Pages
//! partition the chain, each starting right after the one before, so a
//! second writer appending from the same head (or from any stale head)
//! collides on `_id`: the chain cannot fork. One multikey index finds the
//! pages holding a filter's key, one on the pages' end times bounds a time
//! range; records are filtered within the pages. Storing a page costs one
//! document and one index entry per distinct key, where a document per
//! record cost one document and an entry in every index per record.

use super::{AuditRecord, GENESIS};
use crate::timefmt::iso;
use futures::{Stream, StreamExt, TryStreamExt};
use mongodb::Collection;
use mongodb::bson::{DateTime, Document, doc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Most matching records a listing counts for its `total`.
pub const TOTAL_CAP: u64 = 1000;
/// Records a listing looks at past its own to count its `total`: however
/// long the trail, a listing reads a bounded part of it.
pub const LOOKAHEAD: u64 = 5000;

/// Target ids that are not filter keys (a client's token, a seq range).
const NOT_TARGETS: [&str; 2] = ["clientMsgId", "seqs"];

/// Consecutive records of the chain, as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// The first chain position the page covers.
    #[serde(rename = "_id")]
    pub first: i64,
    /// The last chain position it covers (positions of facts found
    /// recorded already have no record).
    pub last: i64,
    /// Times of its first and last record.
    pub from: DateTime,
    pub to: DateTime,
    /// The filter keys of its records (`AuditRecord::keys`), each once.
    pub keys: Vec<String>,
    /// In chain order.
    pub records: Vec<AuditRecord>,
}

impl AuditPage {
    /// The page of `records` (in chain order, not empty) covering
    /// `first..=last`.
    pub fn new(first: i64, last: i64, records: Vec<AuditRecord>) -> AuditPage {
        let keys: BTreeSet<String> = records.iter().flat_map(AuditRecord::keys).collect();
        let time = |r: Option<&AuditRecord>| r.map_or(DateTime::from_millis(0), |r| r.time);
        AuditPage {
            first,
            last,
            from: time(records.first()),
            to: time(records.last()),
            keys: keys.into_iter().collect(),
            records,
        }
    }
}

impl AuditRecord {
    /// What the logs filters look a record up by: its action, actor, room
    /// and the ids it acted on.
    pub fn keys(&self) -> Vec<String> {
        let mut k = vec![key(ACTION, &self.action)];
        k.extend(self.actor.iter().map(|a| key(ACTOR, a)));
        k.extend(self.conversation_id.iter().map(|c| key(CONVERSATION, c)));
        k.extend(self.group_id.iter().map(|g| key(GROUP, g)));
        k.extend(self.target_ids().map(|id| key(TARGET, id)));
        k
    }

    /// The ids it acted on.
    fn target_ids(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().filter(|(name, _)| !NOT_TARGETS.contains(&name.as_str())).map(|(_, id)| id.as_str())
    }
}

/// The kinds of filter key, as prefixes: `a:<action>`, `u:<actor>`, ...
const ACTION: char = 'a';
const ACTOR: char = 'u';
const CONVERSATION: char = 'c';
const GROUP: char = 'g';
const TARGET: char = 't';

fn key(kind: char, value: &str) -> String {
    format!("{kind}:{value}")
}

/// Filters of the logs API and exports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub conversation_id: Option<String>,
    pub group_id: Option<String>,
    pub target: Option<String>,
    pub from: Option<DateTime>,
    pub to: Option<DateTime>,
}

impl Filter {
    /// The keys a matching record has.
    fn keys(&self) -> Vec<String> {
        let mut k = Vec::new();
        k.extend(self.action.iter().map(|a| key(ACTION, a)));
        k.extend(self.actor.iter().map(|a| key(ACTOR, a)));
        k.extend(self.conversation_id.iter().map(|c| key(CONVERSATION, c)));
        k.extend(self.group_id.iter().map(|g| key(GROUP, g)));
        k.extend(self.target.iter().map(|t| key(TARGET, t)));
        k
    }

    /// Whether `r` has every key of the filter (compared field by field:
    /// a listing checks thousands of records) and lies in its time range.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
        is(&self.action, Some(&r.action))
            && is(&self.actor, r.actor.as_deref())
            && is(&self.conversation_id, r.conversation_id.as_deref())
            && is(&self.group_id, r.group_id.as_deref())
            && self.target.as_deref().is_none_or(|t| r.target_ids().any(|id| id == t))
            && self.from.is_none_or(|f| r.time >= f)
            && self.to.is_none_or(|t| r.time <= t)
    }

    /// As `key=value` pairs, for the title block of exports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("action", &self.action),
            ("actor", &self.actor),
            ("conversationId", &self.conversation_id),
            ("groupId", &self.group_id),
            ("target", &self.target),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        }
        if let Some(f) = self.from {
            parts.push(format!("from={}", iso(f)));
        }
        if let Some(t) = self.to {
            parts.push(format!("to={}", iso(t)));
        }
        if parts.is_empty() { "none".into() } else { parts.join(", ") }
    }
}

/// What a listing reads: the records a filter matches, newest first, and
/// optionally only those before a chain position (a cursor).
#[derive(Clone, Debug, Default)]
pub struct Window {
    pub filter: Filter,
    pub before: Option<i64>,
}

impl Window {
    fn keeps(&self, r: &AuditRecord) -> bool {
        self.before.is_none_or(|b| r.chain_seq < b) && self.filter.matches(r)
    }

    /// The query for the pages that may hold the window's records, or
    /// `None` if none can.
    async fn pages(&self, coll: &Collection<AuditPage>) -> Result<Option<Document>, mongodb::error::Error> {
        let mut q = doc! {};
        let keys = self.filter.keys();
        if !keys.is_empty() {
            q.insert("keys", doc! {"$all": keys});
        }
        let mut id = doc! {};
        // Records are in time order along the chain: a time bound is the
        // first page that ends at or after it.
        let ending_after = |t: DateTime| async move {
            coll.find_one(doc! {"to": {"$gte": t}}).sort(doc! {"to": 1}).projection(doc! {"_id": 1}).await
        };
        if let Some(from) = self.filter.from {
            match ending_after(from).await? {
                Some(p) => id.insert("$gte", p.first),
                None => return Ok(None),
            };
        }
        if let Some(to) = self.filter.to
            && let Some(p) = ending_after(to).await?
        {
            id.insert("$lte", p.first);
        }
        if let Some(b) = self.before {
            let upto = id.get_i64("$lte").map_or(b - 1, |l| l.min(b - 1));
            id.insert("$lte", upto);
        }
        if !id.is_empty() {
            q.insert("_id", id);
        }
        Ok(Some(q))
    }
}

/// The window's pages, newest first.
async fn newest_pages(
    coll: &Collection<AuditPage>,
    w: &Window,
) -> Result<Option<mongodb::Cursor<AuditPage>>, mongodb::error::Error> {
    match w.pages(coll).await? {
        Some(q) => Ok(Some(coll.find(q).sort(doc! {"_id": -1}).batch_size(4).await?)),
        None => Ok(None),
    }
}

/// Every record of the window, newest first, read a page at a time.
pub async fn records(
    coll: &Collection<AuditPage>,
    w: Window,
) -> Result<impl Stream<Item = Result<AuditRecord, mongodb::error::Error>> + Unpin + Send + use<>, mongodb::error::Error>
{
    let pages = newest_pages(coll, &w).await?;
    let pages = futures::stream::iter(pages).flatten();
    Ok(pages
        .map_ok(move |p| {
            let w = w.clone();
            futures::stream::iter(p.records.into_iter().rev().filter(move |r| w.keeps(r)).map(Ok))
        })
        .try_flatten()
        .boxed())
}

/// One page of a listing: `limit` records after skipping `skip`, newest
/// first; how many match (counted up to `TOTAL_CAP`, looking at most at
/// `LOOKAHEAD` records past the listing's own), whether that count stopped
/// short, and whether more follow.
pub struct Listing {
    pub records: Vec<AuditRecord>,
    pub total: u64,
    pub capped: bool,
    pub has_more: bool,
}

pub async fn page(
    coll: &Collection<AuditPage>,
    w: &Window,
    skip: u64,
    limit: u64,
) -> Result<Listing, mongodb::error::Error> {
    let mut out = Listing { records: Vec::new(), total: 0, capped: false, has_more: false };
    let Some(mut cur) = newest_pages(coll, w).await? else { return Ok(out) };
    let (mut seen, mut full_at) = (0u64, None);
    while let Some(p) = cur.try_next().await? {
        if full_at.is_some_and(|at| seen > at + LOOKAHEAD) || out.total >= TOTAL_CAP {
            // Stopped with a page of candidates in hand: more may match.
            (out.capped, out.has_more) = (true, true);
            out.total = out.total.min(TOTAL_CAP);
            return Ok(out);
        }
        seen += p.records.len() as u64;
        for r in p.records.into_iter().rev().filter(|r| w.keeps(r)) {
            out.total += 1;
            if out.total > skip && (out.records.len() as u64) < limit {
                out.records.push(r);
            } else if out.total > skip + limit {
                out.has_more = true;
            }
        }
        if full_at.is_none() && out.records.len() as u64 >= limit {
            full_at = Some(seen);
        }
    }
    out.capped = out.total > TOTAL_CAP;
    out.total = out.total.min(TOTAL_CAP);
    Ok(out)
}

/// The last chain position and the hash of the last record.
pub async fn head(coll: &Collection<AuditPage>) -> Result<Option<(i64, String)>, mongodb::error::Error> {
    let last = coll.find_one(doc! {}).sort(doc! {"_id": -1}).await?;
    Ok(last.map(|p| (p.last, p.records.last().map_or_else(|| GENESIS.to_string(), |r| r.hash.clone()))))
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub chain_seq: i64,
    pub seq: i64,
    pub reason: &'static str,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Intact { records: u64, head: String },
    Broken(Broken),
}

/// The chain's head as the audit worker last recorded it (outside MongoDB),
/// so that cutting records off the end is noticed too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Head {
    /// The last record's position.
    pub chain_seq: i64,
    pub hash: String,
    /// The last position (outcome fact) the chain covers: at or after the
    /// last record's (facts of commands already recorded add no record).
    #[serde(default)]
    pub covered: i64,
}

impl Head {
    /// Where the next page starts after.
    pub fn position(&self) -> i64 {
        self.covered.max(self.chain_seq)
    }
}

/// Walks the chain in order and reports the first record that was changed,
/// or that does not follow its predecessor (one before it was removed,
/// changed or moved), and the first page that does not start where the one
/// before it ended; with the recorded `head` (kept outside MongoDB), also
/// records removed from the end and anything added past it.
pub async fn verify(coll: &Collection<AuditPage>, head: Option<&Head>) -> Result<Verdict, mongodb::error::Error> {
    let mut cur = coll.find(doc! {}).sort(doc! {"_id": 1}).await?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    let mut last = (0i64, 0i64);
    let broken = |r: &AuditRecord, reason| Ok(Verdict::Broken(Broken { chain_seq: r.chain_seq, seq: r.seq, reason }));
    let mut covered: Option<i64> = None;
    while let Some(p) = cur.try_next().await? {
        if let Some(c) = covered
            && p.first != c + 1
            && let Some(r) = p.records.first()
        {
            return broken(
                r,
                "starts a page that does not follow the one before it (positions are missing or repeated)",
            );
        }
        covered = Some(p.last);
        for r in &p.records {
            if let Some(h) = head
                && r.chain_seq > h.chain_seq
            {
                return broken(r, "is past the recorded head of the chain (added behind the audit worker's back)");
            }
            if let Some(h) = head
                && r.chain_seq == h.chain_seq
                && r.hash != h.hash
            {
                return broken(r, "differs from the recorded head of the chain");
            }
            if r.prev_hash != prev {
                return broken(r, "does not follow the record before it (a record was removed, changed or moved)");
            }
            if r.compute_hash() != r.hash {
                return broken(r, "was changed");
            }
            if r.chain_seq <= last.0 || r.chain_seq < p.first || r.chain_seq > p.last {
                return broken(r, "is out of place in the chain");
            }
            last = (r.chain_seq, r.seq);
            prev.clone_from(&r.hash);
            n += 1;
        }
    }
    if let Some(h) = head
        && h.chain_seq > last.0
    {
        return Ok(Verdict::Broken(Broken {
            chain_seq: h.chain_seq,
            seq: last.1,
            reason: "ends early: records after this one were removed (the recorded head is later)",
        }));
    }
    Ok(Verdict::Intact { records: n, head: prev })
}
