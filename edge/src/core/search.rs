//! Search over the caller's rooms. The messages worker stores each
//! message's words (`search::terms`) with it, and the multikey index
//! `{terms: 1, seq: -1}` finds the messages holding a word newest first
//! (seqs are the command stream's, so they order messages across rooms).
//! A query reads that index for its longest word (likely the rarest) and
//! checks the rest here, with the caller's rooms: a read scans at most
//! `MAX_SCAN` messages and says where to go on (`nextBefore`), so no query
//! costs more than that, whatever the data. It reads in windows of seqs,
//! newest first: a server that sorts what it fetched (the embedded one
//! does, for a multikey index) then never fetches every message holding a
//! common word.

use crate::core::Core;
use crate::core::chat;
use crate::error::ChatError;
use futures::TryStreamExt;
use mongodb::bson::doc;
use natter_shared::auth::Identity;
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::model::{MessageDoc, MessageView};
use natter_shared::search::terms;
use natter_shared::store::round_trip;
use std::collections::HashSet;

/// Most messages one search reads.
pub const MAX_SCAN: usize = 2000;
/// Most words a query may have.
pub const MAX_WORDS: usize = 8;
/// Longest query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Most rooms of each kind a search covers (a user in more should name one).
const MAX_ROOMS: i64 = 10_000;
/// Seqs the first window of a search covers, the widest one, and how many
/// candidates a window should yield.
const FIRST_WINDOW: i64 = 2048;
const MAX_WINDOW: i64 = 1 << 24;
const WINDOW_YIELD: usize = 400;

/// A page of results, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Found {
    pub messages: Vec<MessageView>,
    /// More may match before `nextBefore`.
    pub has_more: bool,
    /// Ask again with `before` set to this for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// The messages of the caller's rooms (or of `room`, which they must be in)
/// holding every word of `q`, newest first, older than `before`.
pub async fn search(
    st: &Core,
    who: &Identity,
    q: &str,
    room: Option<&str>,
    before: Option<i64>,
    limit: usize,
) -> Result<Found, ChatError> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(ChatError::InvalidPayload(format!("q is longer than {MAX_QUERY_BYTES} bytes")));
    }
    let words = terms(q);
    if words.is_empty() || words.len() > MAX_WORDS {
        return Err(ChatError::InvalidPayload(format!("q needs 1 to {MAX_WORDS} words of two letters or more")));
    }
    let rooms: HashSet<RoomRef> = match room {
        Some(id) => HashSet::from([member_room(st, who, id).await?]),
        None => st.store.rooms_of(who.user.oid(), MAX_ROOMS).await?.into_iter().collect(),
    };
    // The longest word leads; ties go to the first.
    let lead = words.iter().rev().max_by_key(|w| w.chars().count()).cloned().unwrap_or_default();
    let top = match before {
        Some(b) => b,
        None => newest_seq(st).await? + 1,
    };
    let mut found: Vec<MessageDoc> = Vec::new();
    let (mut scanned, mut hi, mut width) = (0usize, top, FIRST_WINDOW);
    let mut more = false;
    let mut next_before = None;
    // Windows of seqs, newest first: each query reads the index for the
    // lead word within its window only (the server sorts what it fetched,
    // so a window bounds the work); a window that yields little widens the
    // next, one that yields much narrows it.
    'windows: while hi > 0 {
        let lo = hi.saturating_sub(width).max(0);
        // Only the word and the window: a deleted message has no words,
        // and another condition (`deleted`, the rooms) makes the embedded
        // server scan the collection instead of the index.
        let filter = doc! {"terms": &lead, "seq": {"$gte": lo, "$lt": hi}};
        round_trip("search");
        let mut cur = st.store.messages().find(filter).sort(doc! {"seq": -1}).await?;
        let mut in_window = 0usize;
        while let Some(m) = cur.try_next().await? {
            scanned += 1;
            in_window += 1;
            if !m.deleted && rooms.contains(&m.room()) && words.iter().all(|w| m.terms.contains(w)) {
                if found.len() == limit {
                    more = true;
                    next_before = found.last().map(|m| m.seq);
                    break 'windows;
                }
                found.push(m);
            } else if scanned >= MAX_SCAN {
                more = true;
                next_before = Some(m.seq);
                break 'windows;
            }
        }
        hi = lo;
        width = if in_window < WINDOW_YIELD / 4 {
            (width * 4).min(MAX_WINDOW)
        } else if in_window > WINDOW_YIELD * 2 {
            (width / 2).max(FIRST_WINDOW / 8)
        } else {
            width
        };
    }
    let in_rooms: Vec<RoomRef> = found.iter().map(MessageDoc::room).collect::<HashSet<_>>().into_iter().collect();
    let cursors = st.store.cursors_of(&in_rooms).await?;
    let messages = found
        .iter()
        .map(|m| match cursors.get(&m.room()) {
            Some(c) => c.receipts().view(m),
            None => MessageView::from(m),
        })
        .collect();
    Ok(Found { messages, has_more: more, next_before })
}

/// The newest seq of the command stream: no message is newer.
async fn newest_seq(st: &Core) -> Result<i64, ChatError> {
    let stream = st.js.get_stream(st.subjects.cmd_stream()).await.map_err(ChatError::unavailable)?;
    Ok(stream.cached_info().state.last_sequence as i64)
}

/// The room `id` names, a group or a conversation the caller is in.
async fn member_room(st: &Core, who: &Identity, id: &str) -> Result<RoomRef, ChatError> {
    let (group, _) = chat::room(RoomKind::Group, id)?;
    if chat::require_member(st, who, &group).await.is_ok() {
        return Ok(group);
    }
    let (conv, _) = chat::room(RoomKind::Conversation, id)?;
    chat::require_member(st, who, &conv).await?;
    Ok(conv)
}
