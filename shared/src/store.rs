//! The MongoDB store: connection, indexes and the read queries the edge
//! serves. Writes belong to the workers (they use the typed collections).

use crate::ids::{RoomKind, RoomRef};
use crate::model::{
    ATTACHMENTS, AttachmentDoc, AttachmentStatus, CONVERSATIONS, ConversationDoc, GROUPS, GroupDoc, MEMBERSHIPS,
    MESSAGES, MembershipDoc, MessageDoc, PerUser, Pin, PinView, Receipts,
};
use futures::TryStreamExt;
use mongodb::bson::{Document, doc, oid::ObjectId};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use std::collections::HashMap;
use std::time::Duration;

pub type StoreError = mongodb::error::Error;

#[derive(Clone)]
pub struct Store {
    db: Database,
}

/// How a history page is selected.
#[derive(Clone, Copy, Debug)]
pub enum PageBy {
    /// Page `page` (1-based) counted from the newest message.
    Page { page: u64, limit: u64 },
    /// The newest `limit` messages with `seq` below `before`.
    Before { before: i64, limit: u64 },
}

/// A room's receipt cursors (see `model::Receipts`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursors {
    #[serde(default)]
    pub read_cursors: PerUser,
    #[serde(default)]
    pub delivered_cursors: PerUser,
}

impl Cursors {
    pub fn receipts(&self) -> Receipts<'_> {
        Receipts { read: &self.read_cursors, delivered: &self.delivered_cursors }
    }
}

/// One page of messages, oldest first, with the totals the module returned.
pub struct Page {
    pub messages: Vec<MessageDoc>,
    pub total: u64,
    pub has_more: bool,
}

/// Counts one database round trip made for `op`
/// (`natter_db_round_trips_total`), where the workers write and read.
pub fn round_trip(op: &'static str) {
    metrics::counter!("natter_db_round_trips_total", "op" => op).increment(1);
}

/// What [`Store::contact_lists`] reads.
#[derive(Debug, Default)]
pub struct ContactLists {
    /// The other side of each conversation in which both have written.
    pub peers: std::collections::HashSet<ObjectId>,
    /// The groups they are in.
    pub groups: Vec<ObjectId>,
}

/// A group's members and what says whether they count.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupMembers {
    #[serde(rename = "_id")]
    id: ObjectId,
    #[serde(default)]
    members: Vec<ObjectId>,
    #[serde(default)]
    deleted: bool,
    #[serde(default)]
    last_seq: i64,
    updated_at: Option<mongodb::bson::DateTime>,
}

impl GroupMembers {
    fn projection() -> Document {
        doc! {"members": 1, "deleted": 1, "lastSeq": 1, "updatedAt": 1}
    }
}

/// The `_id` of the marker that memberships were written for every group.
const BACKFILLED: &str = "~written-for-every-group";

/// Drops an index an earlier version made, if it is there.
async fn drop_retired<T: Send + Sync>(coll: &Collection<T>, name: &str) -> Result<(), StoreError> {
    match coll.drop_index(name).await {
        // 27: no such index; 26: no such collection.
        Err(e) if !matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == 27 || c.code == 26) => {
            Err(e)
        }
        _ => Ok(()),
    }
}

impl Store {
    /// Connects (lazily: the driver dials on first use) with short timeouts
    /// so that an unreachable server is reported rather than waited on.
    pub async fn connect(uri: &str, db: &str) -> Result<Store, StoreError> {
        let mut opts = ClientOptions::parse(uri).await?;
        opts.server_selection_timeout = Some(Duration::from_secs(5));
        opts.connect_timeout = Some(Duration::from_secs(5));
        opts.app_name = Some("natter".into());
        let client = Client::with_options(opts)?;
        Ok(Store { db: client.database(db) })
    }

    pub fn db(&self) -> &Database {
        &self.db
    }

    pub fn messages(&self) -> Collection<MessageDoc> {
        self.db.collection(MESSAGES)
    }

    pub fn conversations(&self) -> Collection<ConversationDoc> {
        self.db.collection(CONVERSATIONS)
    }

    pub fn groups(&self) -> Collection<GroupDoc> {
        self.db.collection(GROUPS)
    }

    pub fn attachments(&self) -> Collection<AttachmentDoc> {
        self.db.collection(ATTACHMENTS)
    }

    pub fn audit(&self) -> Collection<crate::audit::AuditPage> {
        self.db.collection(crate::audit::AUDIT)
    }

    /// Closes the connections; a short-lived process (`natterctl`) calls it
    /// before it ends, since the driver cannot end its sessions once the
    /// runtime is gone.
    pub async fn close(self) {
        self.db.client().clone().shutdown().await;
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! {"ping": 1}).await.map(|_| ())
    }

    /// Creates the indexes the queries need; idempotent.
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let idx = |keys: Document, name: &str| {
            IndexModel::builder().keys(keys).options(IndexOptions::builder().name(name.to_string()).build()).build()
        };
        self.messages()
            .create_indexes([
                // A room's messages in order (`RoomRef::messages`).
                idx(doc! {"conversationId": 1, "groupId": 1, "seq": -1}, "room_seq"),
                // Who may download an upload made outside any room.
                idx(doc! {"attachments.id": 1}, "attachment_id"),
                // A thread's replies in order (`replies`).
                idx(doc! {"replyTo": 1, "seq": -1}, "reply_seq"),
                // Search: the messages holding a word, newest first (`search`).
                idx(doc! {"terms": 1, "seq": -1}, "search_terms"),
            ])
            .await?;
        // Indexes earlier versions made, replaced by the ones above.
        for retired in ["conversation_seq", "group_seq"] {
            drop_retired(&self.messages(), retired).await?;
        }
        // The sweep of unsent uploads, oldest first, and of expired ones.
        self.attachments().create_indexes([idx(doc! {"status": 1, "uploadedAt": 1}, "status_age")]).await?;
        self.conversations()
            .create_indexes([idx(doc! {"participantIds": 1, "updatedAt": -1}, "participant_activity")])
            .await?;
        // A user's groups: their memberships, kept beside the groups so that
        // a group's document has no index over its members.
        self.db.collection::<Document>(MEMBERSHIPS).create_indexes([idx(doc! {"userId": 1}, "user_groups")]).await?;
        drop_retired(&self.groups(), "member_activity").await?;
        self.backfill_memberships().await?;
        // The audit trail's pages: by filter key, and by end time (for time
        // ranges); `_id` is the chain position (see `audit::trail`).
        self.audit().create_indexes([idx(doc! {"keys": 1, "_id": -1}, "keys"), idx(doc! {"to": 1}, "to")]).await?;
        Ok(())
    }

    /// The receipt cursors of a room (none if it does not exist).
    pub async fn cursors(&self, room: &RoomRef) -> Result<Cursors, StoreError> {
        let coll = room.kind.collection();
        let Ok(id) = room.id.parse::<ObjectId>() else { return Ok(Cursors::default()) };
        Ok(self
            .db
            .collection::<Cursors>(coll)
            .find_one(doc! {"_id": id})
            .projection(doc! {"readCursors": 1, "deliveredCursors": 1})
            .await?
            .unwrap_or_default())
    }

    /// A room's pinned messages, newest pin first, as members see them.
    pub async fn pins(&self, room: &RoomRef) -> Result<Vec<PinView>, StoreError> {
        #[derive(Default, serde::Deserialize)]
        struct Pinned {
            #[serde(flatten)]
            cursors: Cursors,
            #[serde(default)]
            pins: Vec<Pin>,
        }
        let Ok(id) = room.id.parse::<ObjectId>() else { return Ok(vec![]) };
        let pinned = self
            .db
            .collection::<Pinned>(room.kind.collection())
            .find_one(doc! {"_id": id})
            .projection(doc! {"readCursors": 1, "deliveredCursors": 1, "pins": 1})
            .await?
            .unwrap_or_default();
        if pinned.pins.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<ObjectId> = pinned.pins.iter().map(|p| p.message_id).collect();
        let mut messages: std::collections::HashMap<ObjectId, MessageDoc> = std::collections::HashMap::new();
        let mut cur = self.messages().find(doc! {"_id": {"$in": ids}, "deleted": {"$ne": true}}).await?;
        while let Some(m) = cur.try_next().await? {
            messages.insert(m.id, m);
        }
        let receipts = pinned.cursors.receipts();
        Ok(pinned
            .pins
            .iter()
            .rev()
            .filter_map(|p| {
                let m = messages.get(&p.message_id)?;
                Some(PinView {
                    message: receipts.view(m),
                    pinned_by: p.pinned_by.to_hex(),
                    pinned_at: crate::timefmt::iso(p.pinned_at),
                })
            })
            .collect())
    }

    /// The rooms `user` is in: conversations they take part in and groups
    /// (not deleted) they are a member of, at most `max` of each.
    pub async fn rooms_of(&self, user: ObjectId, max: i64) -> Result<Vec<RoomRef>, StoreError> {
        let mut out = Vec::new();
        let coll = self.db.collection::<Document>(CONVERSATIONS);
        let mut cur = coll.find(doc! {"participantIds": user}).projection(doc! {"_id": 1}).limit(max).await?;
        while let Some(d) = cur.try_next().await? {
            if let Ok(id) = d.get_object_id("_id") {
                out.push(RoomRef::new(RoomKind::Conversation, id.to_hex()));
            }
        }
        let groups = self.groups_of(user).await?;
        out.extend(groups.into_iter().take(max as usize).map(|g| RoomRef::new(RoomKind::Group, g.to_hex())));
        Ok(out)
    }

    /// The receipt cursors of each of `rooms` (one query per kind).
    pub async fn cursors_of(&self, rooms: &[RoomRef]) -> Result<HashMap<RoomRef, Cursors>, StoreError> {
        #[derive(serde::Deserialize)]
        struct WithId {
            #[serde(rename = "_id")]
            id: ObjectId,
            #[serde(flatten)]
            cursors: Cursors,
        }
        let mut out = HashMap::new();
        for kind in [RoomKind::Conversation, RoomKind::Group] {
            let ids: Vec<ObjectId> =
                rooms.iter().filter(|r| r.kind == kind).filter_map(|r| r.id.parse().ok()).collect();
            if ids.is_empty() {
                continue;
            }
            let mut cur = self
                .db
                .collection::<WithId>(kind.collection())
                .find(doc! {"_id": {"$in": ids}})
                .projection(doc! {"readCursors": 1, "deliveredCursors": 1})
                .await?;
            while let Some(w) = cur.try_next().await? {
                out.insert(RoomRef::new(kind, w.id.to_hex()), w.cursors);
            }
        }
        Ok(out)
    }

    pub async fn conversation(&self, id: ObjectId) -> Result<Option<ConversationDoc>, StoreError> {
        self.conversations().find_one(doc! {"_id": id}).await
    }

    /// A group, deleted or not.
    pub async fn group(&self, id: ObjectId) -> Result<Option<GroupDoc>, StoreError> {
        self.groups().find_one(doc! {"_id": id}).await
    }

    /// A group that is not deleted.
    pub async fn live_group(&self, id: ObjectId) -> Result<Option<GroupDoc>, StoreError> {
        self.groups().find_one(doc! {"_id": id, "deleted": {"$ne": true}}).await
    }

    /// A message, deleted (a tombstone) or not.
    pub async fn message(&self, id: ObjectId) -> Result<Option<MessageDoc>, StoreError> {
        self.messages().find_one(doc! {"_id": id}).await
    }

    /// A message that is not deleted.
    pub async fn live_message(&self, id: ObjectId) -> Result<Option<MessageDoc>, StoreError> {
        self.messages().find_one(doc! {"_id": id, "deleted": {"$ne": true}}).await
    }

    /// An attachment record, whatever its status.
    pub async fn attachment(&self, id: ObjectId) -> Result<Option<AttachmentDoc>, StoreError> {
        self.attachments().find_one(doc! {"_id": id}).await
    }

    /// An attachment the worker accepted (and has not expired).
    pub async fn accepted_attachment(&self, id: ObjectId) -> Result<Option<AttachmentDoc>, StoreError> {
        self.attachments().find_one(doc! {"_id": id, "status": AttachmentStatus::Accepted.as_str()}).await
    }

    /// The rooms of a kind (by id) whose messages, deleted ones included,
    /// carry the attachment `id`.
    pub async fn rooms_carrying(&self, kind: RoomKind, id: &str) -> Result<Vec<String>, StoreError> {
        let field = kind.field();
        let found = self.messages().distinct(field, doc! {"attachments.id": id, field: {"$exists": true}}).await?;
        Ok(found.into_iter().filter_map(|r| r.as_str().map(str::to_string)).collect())
    }

    /// Whose presence `user` may see, as two lists: the other participant
    /// of each conversation in which both have written (`writers` holds
    /// only participants: two of them means both wrote), and the groups
    /// (not deleted) they are in. Only ids are read: a group's members are
    /// read once per edge ([`Store::group_members`]), not once per member.
    /// Conditions beside the indexed one are checked here, not in the
    /// filter (the embedded server scans the collection for them).
    pub async fn contact_lists(&self, user: ObjectId) -> Result<ContactLists, StoreError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Conv {
            participant_ids: Vec<ObjectId>,
            #[serde(default)]
            writers: Vec<ObjectId>,
        }
        let mut out = ContactLists::default();
        let convs = self.db.collection::<Conv>(CONVERSATIONS);
        let mut cur =
            convs.find(doc! {"participantIds": user}).projection(doc! {"participantIds": 1, "writers": 1}).await?;
        while let Some(c) = cur.try_next().await? {
            if c.participant_ids.iter().all(|p| c.writers.contains(p)) {
                out.peers.extend(c.participant_ids.into_iter().filter(|p| *p != user));
            }
        }
        out.groups = self.member_groups(user).await?;
        Ok(out)
    }

    /// The members of each of `ids` that exists and is not deleted, and
    /// the seq of the last command the copy has (`lastSeq`).
    pub async fn group_members(&self, ids: &[ObjectId]) -> Result<Vec<(ObjectId, Vec<ObjectId>, u64)>, StoreError> {
        let groups = self.db.collection::<GroupMembers>(GROUPS);
        let mut cur = groups.find(doc! {"_id": {"$in": ids}}).projection(GroupMembers::projection()).await?;
        let mut out = Vec::new();
        while let Some(g) = cur.try_next().await? {
            if !g.deleted {
                out.push((g.id, g.members, g.last_seq.max(0) as u64));
            }
        }
        Ok(out)
    }

    /// The groups `user` is in as the memberships the messages worker
    /// writes say (a deleted group's are removed with it); a reader that
    /// shows or grants anything checks the groups too ([`Store::groups_of`]).
    pub async fn member_groups(&self, user: ObjectId) -> Result<Vec<ObjectId>, StoreError> {
        let coll = self.db.collection::<MembershipDoc>(MEMBERSHIPS);
        let mut cur = coll.find(doc! {"userId": user}).await?;
        let mut out = Vec::new();
        while let Some(m) = cur.try_next().await? {
            if m.is_member() {
                out.push(m.group_id);
            }
        }
        Ok(out)
    }

    /// Writes the memberships of every group, once per database (a marker
    /// says it was done): a deployment from before they were kept has
    /// none. Each is raised to the group's `lastSeq` only (`$max`), so a
    /// worker writing meanwhile is never undone, and a start that stopped
    /// half way is taken up again by the next.
    async fn backfill_memberships(&self) -> Result<(), StoreError> {
        let memberships = self.db.collection::<Document>(MEMBERSHIPS);
        if memberships.find_one(doc! {"_id": BACKFILLED}).await?.is_some() {
            return Ok(());
        }
        let groups = self.db.collection::<GroupMembers>(GROUPS);
        let mut cur = groups.find(doc! {}).projection(GroupMembers::projection()).await?;
        while let Some(g) = cur.try_next().await? {
            if g.deleted || g.members.is_empty() {
                continue;
            }
            let updates: Vec<Document> = g
                .members
                .iter()
                .map(|u| {
                    let (q, u) = MembershipDoc::upsert(g.id, *u, true, g.last_seq);
                    doc! {"q": q, "u": u, "upsert": true}
                })
                .collect();
            let reply = self.db.run_command(doc! {"update": MEMBERSHIPS, "updates": updates, "ordered": false}).await?;
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(e) = errors.first().and_then(|e| e.as_document())
            {
                return Err(mongodb::error::Error::custom(format!("memberships not written: {e}")));
            }
        }
        memberships.update_one(doc! {"_id": BACKFILLED}, doc! {"$set": {"done": true}}).upsert(true).await?;
        Ok(())
    }

    /// The user's groups (not deleted), most recent activity first.
    pub async fn groups_for(&self, user: ObjectId, page: u64, limit: u64) -> Result<Vec<GroupDoc>, StoreError> {
        let skip = page.saturating_sub(1).saturating_mul(limit) as usize;
        let ids: Vec<ObjectId> = self.groups_of(user).await?.into_iter().skip(skip).take(limit as usize).collect();
        let mut found: Vec<GroupDoc> = self.groups().find(doc! {"_id": {"$in": &ids}}).await?.try_collect().await?;
        found.sort_by_key(|g| ids.iter().position(|id| *id == g.id));
        Ok(found)
    }

    /// The groups (not deleted) `user` is in, most recent activity first.
    /// The memberships say which groups to
    /// look at, the groups themselves whether the user is in them: a
    /// membership a stale worker wrote (its group write refused) shows
    /// nothing. Checked here, not in the filter (the embedded server scans
    /// the collection for conditions beside `_id`).
    pub async fn groups_of(&self, user: ObjectId) -> Result<Vec<ObjectId>, StoreError> {
        let ids = self.member_groups(user).await?;
        if ids.is_empty() {
            return Ok(vec![]);
        }
        let groups = self.db.collection::<GroupMembers>(GROUPS);
        let mut cur = groups.find(doc! {"_id": {"$in": ids}}).projection(GroupMembers::projection()).await?;
        let mut out = Vec::new();
        while let Some(g) = cur.try_next().await? {
            if !g.deleted && g.members.contains(&user) {
                out.push((g.id, g.updated_at.unwrap_or(mongodb::bson::DateTime::MIN)));
            }
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        Ok(out.into_iter().map(|(id, _)| id).collect())
    }

    /// The user's conversations, most recent activity first.
    pub async fn conversations_for(
        &self,
        user: ObjectId,
        page: u64,
        limit: u64,
    ) -> Result<Vec<ConversationDoc>, StoreError> {
        self.conversations()
            .find(doc! {"participantIds": user})
            .sort(doc! {"updatedAt": -1, "_id": -1})
            .skip(page.saturating_sub(1).saturating_mul(limit))
            .limit(limit as i64)
            .await?
            .try_collect()
            .await
    }

    /// The messages with these ids, by id (for populating `lastMessageId`).
    pub async fn messages_by_id(
        &self,
        ids: impl IntoIterator<Item = ObjectId>,
    ) -> Result<std::collections::HashMap<ObjectId, MessageDoc>, StoreError> {
        let ids: Vec<ObjectId> = ids.into_iter().collect();
        if ids.is_empty() {
            return Ok(Default::default());
        }
        let found: Vec<MessageDoc> = self.messages().find(doc! {"_id": {"$in": ids}}).await?.try_collect().await?;
        Ok(found.into_iter().map(|m| (m.id, m)).collect())
    }

    /// A page of a conversation's history, oldest first within the page.
    /// Counted and read up to the newest `seq` seen when the call starts, so
    /// `total`, `hasMore` and the page agree even while messages arrive.
    /// Deleted messages are left out (their content is gone).
    pub async fn room_messages(&self, room: &RoomRef, by: PageBy) -> Result<Page, StoreError> {
        self.page_of(room.live_messages(), by).await
    }

    /// A page of the replies in the thread that message `root` starts (not
    /// deleted), oldest first within the page.
    pub async fn replies(&self, root: ObjectId, by: PageBy) -> Result<Page, StoreError> {
        self.page_of(doc! {"replyTo": root, "deleted": {"$ne": true}}, by).await
    }

    /// A page of the messages `filter` matches, by seq, newest page first.
    async fn page_of(&self, room: Document, by: PageBy) -> Result<Page, StoreError> {
        let Some(newest) = self.messages().find_one(room.clone()).sort(doc! {"seq": -1}).await? else {
            return Ok(Page { messages: vec![], total: 0, has_more: false });
        };
        let upto = |bound: &str, seq: i64| {
            let mut q = room.clone();
            q.insert("seq", doc! {bound: seq});
            q
        };
        let total = self.messages().count_documents(upto("$lte", newest.seq)).await?;
        let (query, skip, limit) = match by {
            PageBy::Page { page, limit } => {
                (upto("$lte", newest.seq), page.saturating_sub(1).saturating_mul(limit), limit)
            }
            PageBy::Before { before, limit } => (upto("$lt", before.min(newest.seq + 1)), 0, limit),
        };
        let mut messages: Vec<MessageDoc> = self
            .messages()
            .find(query)
            .sort(doc! {"seq": -1})
            .skip(skip)
            .limit(limit as i64)
            .await?
            .try_collect()
            .await?;
        messages.reverse();
        let has_more = match (by, messages.first()) {
            (PageBy::Page { .. }, _) => skip + limit < total,
            (PageBy::Before { .. }, Some(oldest)) => {
                self.messages().count_documents(upto("$lt", oldest.seq)).limit(1).await? > 0
            }
            (PageBy::Before { .. }, None) => false,
        };
        Ok(Page { messages, total, has_more })
    }
}
