//! Everything a batch writes, collected while its commands are applied in
//! memory and sent in one round trip: MongoDB 8's client-level `bulkWrite`,
//! ordered, across every room of the batch. Messages, tombstones and
//! attachment records come first and the room documents last, so a room's
//! `lastSeq` never moves past a message that is not stored. Servers before
//! 8.0 get one command per collection instead, in the same order.
//!
//! A write that finds something it did not expect (a message id already
//! stored, a room changed under it) is a `Conflict`: the batch's rooms are
//! read again and it is applied once more.

use super::room::RoomWrite;
use crate::handler::ApplyError;
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId, to_document};
use mongodb::error::{ErrorKind, PartialBulkWriteResult};
use mongodb::options::{InsertOneModel, UpdateOneModel, WriteModel};
use natter_shared::ids::RoomKind;
use natter_shared::model::AttachmentStatus;
use natter_shared::model::{ATTACHMENTS, AttachmentDoc, MEMBERSHIPS, MESSAGES, MembershipDoc, MessageDoc};
use natter_shared::store::Store;
use natter_shared::store::round_trip;

/// From how many new messages a batch inserts them with their own command.
const SEPARATE_INSERT_FROM: usize = 2;
/// The first wire version of MongoDB 8.0, which has `bulkWrite`.
const BULK_WRITE_WIRE_VERSION: i32 = 25;

/// A staged tombstone.
#[derive(Clone, Debug)]
pub(super) struct Tombstone {
    pub id: ObjectId,
    pub seq: i64,
    pub sender: ObjectId,
    pub counts: bool,
    pub at: DateTime,
    pub by: ObjectId,
    /// The members the message mentioned.
    pub mentions: Vec<ObjectId>,
}

#[derive(Clone, Debug)]
enum Op {
    Message(Box<MessageDoc>),
    Tombstone(Tombstone),
    /// Fields of a stored (or earlier staged) message set to what memory
    /// holds: an edit, a reaction.
    MessageSet(ObjectId, Document),
    Attachment(Box<AttachmentDoc>),
    /// An unsent upload outside any room, collected.
    Expire(ObjectId),
    Room(RoomKind, ObjectId, RoomWrite),
    /// A user added to (`member`) or removed from a group by the command
    /// at `seq`.
    Membership {
        group: ObjectId,
        user: ObjectId,
        member: bool,
        seq: i64,
    },
}

/// What a batch (or several) writes, in order.
#[derive(Default, Debug)]
pub struct Writes {
    ops: Vec<Op>,
}

/// Why a batch's write did not go through.
#[derive(Debug)]
pub(super) enum WriteError {
    /// Something was not as memory had it: read the rooms again, retry.
    Conflict(String),
    Apply(ApplyError),
}

impl From<mongodb::error::Error> for WriteError {
    fn from(e: mongodb::error::Error) -> Self {
        WriteError::Apply(e.into())
    }
}

impl Writes {
    pub(super) fn message(&mut self, m: MessageDoc) {
        self.ops.push(Op::Message(Box::new(m)));
    }

    pub(super) fn tombstone(&mut self, t: Tombstone) {
        self.ops.push(Op::Tombstone(t));
    }

    /// Sets `fields` of message `id` (absolute values: applying twice is
    /// applying once).
    pub(super) fn message_set(&mut self, id: ObjectId, fields: Document) {
        self.ops.push(Op::MessageSet(id, fields));
    }

    /// Records an attachment (unless recorded already: the attachments
    /// worker usually has).
    pub(super) fn attachment(&mut self, a: AttachmentDoc) {
        self.ops.push(Op::Attachment(Box::new(a)));
    }

    /// Marks an unsent upload made outside any room `expired`.
    pub(super) fn expire(&mut self, id: ObjectId) {
        self.ops.push(Op::Expire(id));
    }

    /// Notes `user` added to or removed from `group` by the command at `seq`.
    pub(super) fn membership(&mut self, group: ObjectId, user: ObjectId, member: bool, seq: u64) {
        self.ops.push(Op::Membership { group, user, member, seq: seq as i64 });
    }

    pub(super) fn room(&mut self, kind: RoomKind, id: ObjectId, w: RoomWrite) {
        self.ops.push(Op::Room(kind, id, w));
    }

    /// Appends `more`, in order.
    pub(super) fn append(&mut self, mut more: Writes) {
        self.ops.append(&mut more.ops);
    }

    /// One `insert` or `update` command per run of operations on one
    /// collection, for servers without `bulkWrite`.
    async fn per_collection(self, store: &Store) -> Result<(), WriteError> {
        let mut runs: Vec<(&'static str, bool, Vec<Model>, usize)> = Vec::new();
        for op in &self.ops {
            let (coll, model) = op.model()?;
            let insert = matches!(model, Model::Insert(_));
            let guard = usize::from(matches!(op, Op::Room(_, _, RoomWrite::Update { .. })));
            match runs.last_mut() {
                Some((c, i, models, guards)) if *c == coll && *i == insert => {
                    models.push(model);
                    *guards += guard;
                }
                _ => runs.push((coll, insert, vec![model], guard)),
            }
        }
        for (coll, insert, models, guards) in runs {
            let cmd = if insert {
                let docs: Vec<Document> = models.into_iter().filter_map(Model::into_document).collect();
                doc! {"insert": coll, "documents": docs, "ordered": true}
            } else {
                let updates: Vec<Document> = models.into_iter().filter_map(Model::into_statement).collect();
                doc! {"update": coll, "updates": updates, "ordered": true}
            };
            round_trip("write");
            let reply = store.db().run_command(cmd).await?;
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(we) = errors.first().and_then(|e| e.as_document())
            {
                return Err(command_write_error(we));
            }
            if guards > 0 && reply_count(&reply, "n") < guards as i64 {
                return Err(room_changed());
            }
        }
        Ok(())
    }
}

/// Sends the writes of several partitions together: their rooms are
/// disjoint, so one part's failure is its own, the others go through.
///
/// Many new messages go first as one unordered `insert` (a server stores a
/// plain insert of many documents for less than the same documents inside
/// a `bulkWrite`); a part whose message could not be stored gets its error
/// and writes nothing else. The rest goes in one ordered `bulkWrite`, part
/// after part, each part's messages before its rooms, so a room's
/// `lastSeq` never moves past something not stored. A failure stops the
/// `bulkWrite` where it happened: the parts before it went through, its
/// own part gets the error, and the parts after it are sent again. Servers
/// before 8.0 get one command per collection, part by part.
pub(super) async fn execute_all(parts: Vec<Writes>, store: &Store, bulk: bool) -> Vec<Result<(), WriteError>> {
    let mut results: Vec<Result<(), WriteError>> = parts.iter().map(|_| Ok(())).collect();
    if !bulk {
        for (i, w) in parts.into_iter().enumerate() {
            results[i] = w.per_collection(store).await;
        }
        return results;
    }
    let mut parts = parts;
    let messages = parts.iter().flat_map(|w| &w.ops).filter(|op| matches!(op, Op::Message(_))).count();
    if messages >= SEPARATE_INSERT_FROM {
        insert_messages(store, &mut parts, &mut results).await;
    }
    let mut pending: Vec<usize> =
        (0..parts.len()).filter(|i| results[*i].is_ok() && !parts[*i].ops.is_empty()).collect();
    while !pending.is_empty() {
        pending = bulk_write(store, &parts, pending, &mut results).await;
    }
    results
}

/// Takes every part's new messages out of it and inserts them with one
/// unordered `insert`, noting each failure against its part.
async fn insert_messages(store: &Store, parts: &mut [Writes], results: &mut [Result<(), WriteError>]) {
    let mut docs: Vec<Document> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    for (i, w) in parts.iter_mut().enumerate() {
        let (inserts, rest): (Vec<Op>, Vec<Op>) =
            std::mem::take(&mut w.ops).into_iter().partition(|op| matches!(op, Op::Message(_)));
        w.ops = rest;
        for op in inserts {
            match op.model() {
                Ok((_, model)) => {
                    docs.extend(model.into_document());
                    owner.push(i);
                }
                Err(e) => results[i] = Err(e),
            }
        }
    }
    round_trip("insert");
    let reply = store.db().run_command(doc! {"insert": MESSAGES, "documents": docs, "ordered": false}).await;
    let errors = match reply {
        Ok(reply) => reply.get_array("writeErrors").cloned().unwrap_or_default(),
        Err(e) => {
            for i in owner {
                results[i] = Err(WriteError::Apply(e.clone().into()));
            }
            return;
        }
    };
    for we in errors.iter().filter_map(|e| e.as_document()) {
        let index = reply_count(we, "index") as usize;
        let Some(&i) = owner.get(index) else { continue };
        if results[i].is_ok() {
            results[i] = Err(command_write_error(we));
        }
    }
}

/// One ordered `bulkWrite` of the `pending` parts, in order; notes how each
/// part went and returns the parts to send again (those after a failure).
async fn bulk_write(
    store: &Store,
    parts: &[Writes],
    pending: Vec<usize>,
    results: &mut [Result<(), WriteError>],
) -> Vec<usize> {
    let db = store.db();
    let ns = |name: &str| db.collection::<Document>(name).namespace();
    let mut models: Vec<WriteModel> = Vec::new();
    // Per pending part: its models' range and its guarded room updates.
    let mut spans: Vec<(usize, std::ops::Range<usize>, Vec<usize>)> = Vec::new();
    for &i in &pending {
        let mut guarded = Vec::new();
        let start = models.len();
        for op in &parts[i].ops {
            let (coll, model) = match op.model() {
                Ok(m) => m,
                Err(e) => {
                    results[i] = Err(e);
                    break;
                }
            };
            if matches!(op, Op::Room(_, _, RoomWrite::Update { .. })) {
                guarded.push(models.len());
            }
            models.push(match model {
                Model::Insert(document) => {
                    WriteModel::InsertOne(InsertOneModel::builder().namespace(ns(coll)).document(document).build())
                }
                Model::Update { filter, update, upsert } => WriteModel::UpdateOne(
                    UpdateOneModel::builder()
                        .namespace(ns(coll))
                        .filter(filter)
                        .update(update)
                        .upsert(upsert.then_some(true))
                        .build(),
                ),
            });
        }
        if results[i].is_err() {
            models.truncate(start);
            continue;
        }
        spans.push((i, start..models.len(), guarded));
    }
    if models.is_empty() {
        return Vec::new();
    }
    let matched = |updates: &std::collections::HashMap<usize, mongodb::results::UpdateResult>, at: &usize| {
        updates.get(at).is_some_and(|u| u.matched_count == 1)
    };
    round_trip("bulk_write");
    match db.client().bulk_write(models).ordered(true).verbose_results().await {
        Ok(r) => {
            for (i, _, guarded) in spans {
                if !guarded.iter().all(|g| matched(&r.update_results, g)) {
                    results[i] = Err(room_changed());
                }
            }
            Vec::new()
        }
        Err(e) => {
            let ErrorKind::BulkWrite(ref bw) = *e.kind else {
                for (i, _, _) in spans {
                    results[i] = Err(WriteError::Apply(e.clone().into()));
                }
                return Vec::new();
            };
            let Some((&at, we)) = bw.write_errors.iter().min_by_key(|(at, _)| **at) else {
                // A write concern error: what went through is unknown.
                for (i, _, _) in spans {
                    results[i] = Err(WriteError::Apply(ApplyError::transient(e.to_string())));
                }
                return Vec::new();
            };
            let updates = match &bw.partial_result {
                Some(PartialBulkWriteResult::Verbose(v)) => Some(&v.update_results),
                _ => None,
            };
            let mut again = Vec::new();
            for (i, range, guarded) in spans {
                if range.end <= at {
                    if !updates.is_some_and(|u| guarded.iter().all(|g| matched(u, g))) {
                        results[i] = Err(room_changed());
                    }
                } else if range.contains(&at) {
                    results[i] = Err(write_error(we.code, &we.message));
                } else {
                    again.push(i);
                }
            }
            again
        }
    }
}

/// A write MongoDB refused: a message id already stored means memory was
/// behind the database (read again, apply again); anything else is the
/// server's verdict on the write.
fn write_error(code: i32, message: &str) -> WriteError {
    if code == crate::handler::DUPLICATE_KEY {
        WriteError::Conflict(message.to_string())
    } else {
        WriteError::Apply(ApplyError::write(code, message))
    }
}

/// One entry of a command's `writeErrors`.
fn command_write_error(we: &Document) -> WriteError {
    write_error(we.get_i32("code").unwrap_or(0), we.get_str("errmsg").unwrap_or("write error"))
}

/// A guarded room update that matched nothing: the room's `lastSeq` is not
/// what this worker wrote last.
fn room_changed() -> WriteError {
    WriteError::Conflict("a room changed under this worker".into())
}

fn reply_count(reply: &Document, field: &str) -> i64 {
    reply.get_i32(field).map(i64::from).or_else(|_| reply.get_i64(field)).unwrap_or(0)
}

/// Whether the server has the client-level `bulkWrite` (MongoDB 8.0+).
pub(super) async fn has_bulk_write(store: &Store) -> Result<bool, mongodb::error::Error> {
    let hello = store.db().run_command(doc! {"hello": 1}).await?;
    Ok(reply_count(&hello, "maxWireVersion") >= i64::from(BULK_WRITE_WIRE_VERSION))
}

/// One operation as a collection and an insert or update.
enum Model {
    Insert(Document),
    Update { filter: Document, update: Document, upsert: bool },
}

impl Model {
    fn into_document(self) -> Option<Document> {
        match self {
            Model::Insert(d) => Some(d),
            Model::Update { .. } => None,
        }
    }

    fn into_statement(self) -> Option<Document> {
        match self {
            Model::Update { filter, update, upsert } => Some(doc! {"q": filter, "u": update, "upsert": upsert}),
            Model::Insert(_) => None,
        }
    }
}

impl Op {
    fn model(&self) -> Result<(&'static str, Model), WriteError> {
        let ser =
            |e: mongodb::bson::ser::Error| WriteError::Apply(ApplyError { reason: e.to_string(), permanent: true });
        Ok(match self {
            Op::Message(m) => (MESSAGES, Model::Insert(to_document(m.as_ref()).map_err(ser)?)),
            Op::Tombstone(t) => (
                MESSAGES,
                Model::Update {
                    filter: doc! {"_id": t.id, "deleted": {"$ne": true}},
                    update: doc! {
                        "$set": {
                            "deleted": true, "content": "", "attachments": [],
                            "deletedAt": t.at, "deletedBy": t.by, "updatedAt": t.at,
                        },
                        "$unset": {"edits": "", "reactions": "", "editedAt": "", "editCount": "", "terms": ""},
                    },
                    upsert: false,
                },
            ),
            Op::MessageSet(id, fields) => (
                MESSAGES,
                Model::Update { filter: doc! {"_id": id}, update: doc! {"$set": fields.clone()}, upsert: false },
            ),
            Op::Attachment(a) => (
                ATTACHMENTS,
                Model::Update {
                    filter: doc! {"_id": a.id},
                    update: doc! {"$setOnInsert": to_document(a.as_ref()).map_err(ser)?},
                    upsert: true,
                },
            ),
            Op::Expire(id) => (
                ATTACHMENTS,
                Model::Update {
                    filter: doc! {
                        "_id": id, "status": AttachmentStatus::Accepted.as_str(),
                        "conversationId": {"$exists": false}, "groupId": {"$exists": false},
                    },
                    update: doc! {"$set": {
                        "status": AttachmentStatus::Expired.as_str(), "code": "expired",
                        "reason": "uploaded outside any room and never sent; collected",
                    }},
                    upsert: false,
                },
            ),
            Op::Membership { group, user, member, seq } => {
                let (filter, update) = MembershipDoc::upsert(*group, *user, *member, *seq);
                (MEMBERSHIPS, Model::Update { filter, update, upsert: true })
            }
            Op::Room(kind, id, w) => {
                let coll = kind.collection();
                match w {
                    RoomWrite::Insert(d) => (coll, Model::Insert(d.to_document().map_err(ser)?)),
                    RoomWrite::Update { expect, update } => (
                        coll,
                        Model::Update {
                            filter: doc! {"_id": id, "lastSeq": expect},
                            update: update.clone(),
                            upsert: false,
                        },
                    ),
                }
            }
        })
    }
}
