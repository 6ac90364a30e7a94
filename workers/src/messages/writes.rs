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
use mongodb::error::ErrorKind;
use mongodb::options::{InsertOneModel, UpdateOneModel, WriteModel};
use natter_shared::ids::RoomKind;
use natter_shared::model::{ATTACHMENTS, AttachmentDoc, CONVERSATIONS, GROUPS, MESSAGES, MessageDoc};
use natter_shared::store::Store;

/// The duplicate key error.
pub const DUPLICATE_KEY: i32 = 11000;
/// From how many new messages a batch inserts them with their own command.
const SEPARATE_INSERT_FROM: usize = 8;
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
}

#[derive(Clone, Debug)]
enum Op {
    Message(Box<MessageDoc>),
    Tombstone(Tombstone),
    Attachment(Box<AttachmentDoc>),
    Room(RoomKind, ObjectId, RoomWrite),
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

    /// Records an attachment (unless recorded already: the attachments
    /// worker usually has).
    pub(super) fn attachment(&mut self, a: AttachmentDoc) {
        self.ops.push(Op::Attachment(Box::new(a)));
    }

    pub(super) fn room(&mut self, kind: RoomKind, id: ObjectId, w: RoomWrite) {
        self.ops.push(Op::Room(kind, id, w));
    }

    /// Appends `more`, in order.
    pub(super) fn append(&mut self, mut more: Writes) {
        self.ops.append(&mut more.ops);
    }

    /// Sends everything, in order, in as few round trips as the server
    /// allows. Many new messages go first as one `insert` (a server stores
    /// a plain insert of many documents for less than the same documents
    /// in a `bulkWrite`), the rest in one `bulkWrite`.
    pub(super) async fn execute(mut self, store: &Store, bulk: bool) -> Result<(), WriteError> {
        if !bulk {
            return self.per_collection(store).await;
        }
        let messages = self.ops.iter().filter(|op| matches!(op, Op::Message(_))).count();
        if messages >= SEPARATE_INSERT_FROM {
            let (inserts, rest): (Vec<Op>, Vec<Op>) = self.ops.into_iter().partition(|op| matches!(op, Op::Message(_)));
            Writes { ops: inserts }.per_collection(store).await?;
            self.ops = rest;
        }
        if self.ops.is_empty() { Ok(()) } else { self.bulk_write(store).await }
    }

    async fn bulk_write(self, store: &Store) -> Result<(), WriteError> {
        let db = store.db();
        let ns = |name: &str| db.collection::<Document>(name).namespace();
        let mut models: Vec<WriteModel> = Vec::with_capacity(self.ops.len());
        let mut guarded: Vec<usize> = Vec::new();
        for op in &self.ops {
            let (coll, model) = op.model()?;
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
        let result = db.client().bulk_write(models).ordered(true).verbose_results().await;
        match result {
            Ok(r) => {
                for i in guarded {
                    if r.update_results.get(&i).is_none_or(|u| u.matched_count != 1) {
                        return Err(WriteError::Conflict("a room changed under this worker".into()));
                    }
                }
                Ok(())
            }
            Err(e) => Err(match *e.kind {
                ErrorKind::BulkWrite(ref bw) if bw.write_concern_errors.is_empty() => {
                    let mut errors: Vec<_> = bw.write_errors.iter().collect();
                    errors.sort_by_key(|(i, _)| **i);
                    match errors.first() {
                        Some((_, we)) if we.code == DUPLICATE_KEY => WriteError::Conflict(we.message.clone()),
                        Some((_, we)) => WriteError::Apply(ApplyError::write(we.code, &we.message)),
                        None => WriteError::Apply(ApplyError::transient(e.to_string())),
                    }
                }
                _ => WriteError::Apply(e.into()),
            }),
        }
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
            let reply = store.db().run_command(cmd).await?;
            if let Ok(errors) = reply.get_array("writeErrors")
                && let Some(we) = errors.first().and_then(|e| e.as_document())
            {
                let code = we.get_i32("code").unwrap_or(0);
                let message = we.get_str("errmsg").unwrap_or("write error");
                return Err(if code == DUPLICATE_KEY {
                    WriteError::Conflict(message.to_string())
                } else {
                    WriteError::Apply(ApplyError::write(code, message))
                });
            }
            if guards > 0 && reply_count(&reply, "n") < guards as i64 {
                return Err(WriteError::Conflict("a room changed under this worker".into()));
            }
        }
        Ok(())
    }
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
                    update: doc! {"$set": {
                        "deleted": true, "content": "", "attachments": [],
                        "deletedAt": t.at, "deletedBy": t.by, "updatedAt": t.at,
                    }},
                    upsert: false,
                },
            ),
            Op::Attachment(a) => (
                ATTACHMENTS,
                Model::Update {
                    filter: doc! {"_id": a.id},
                    update: doc! {"$setOnInsert": to_document(a.as_ref()).map_err(ser)?},
                    upsert: true,
                },
            ),
            Op::Room(kind, id, w) => {
                let coll = match kind {
                    RoomKind::Conversation => CONVERSATIONS,
                    RoomKind::Group => GROUPS,
                };
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
