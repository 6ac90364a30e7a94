//! The `messages` role: conversations, groups, messages, receipts and
//! deletions. The worker holding a partition is the only writer of its
//! rooms, so it keeps them in memory (`rooms`): a batch is applied command
//! by command, in stream order, against each room as it is at the
//! command's `seq`, and everything the batch changes goes to MongoDB in one
//! round trip (`writes`), guarded by each room's `lastSeq`. MongoDB is read
//! only for rooms not in memory yet (one query per collection for a whole
//! batch) and for what is older than a room's tail (a read or delete of an
//! old message).

mod committer;
mod conversation;
mod delete;
mod events;
pub mod group;
mod mutate;
mod receipts;
mod room;
mod rooms;
mod send;
mod tail;
mod thread;
mod writes;

use crate::handler::{ApplyError, Disposition, Done, Handler, Incoming};
use crate::runner::RunnerConfig;
use crate::start::{self, StartError};
use committer::Committer;
use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId};
use natter_nats::Subjects;
use natter_nats::topology::Role;
use natter_shared::config::CoreConfig;
use natter_shared::ids::{RoomKind, RoomRef, parse_oid};
use natter_shared::model::{AttachmentDoc, MessageDoc, MessageType};
use natter_shared::store::Store;
use natter_shared::store::round_trip;
use natter_shared::v1::command::{Command, ExpireUploadCmd, RecordAttachmentCmd, Route};
use room::Room;
pub use rooms::Rooms;
use std::collections::{BTreeSet, HashMap};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use writes::WriteError;
pub use writes::Writes;

/// How long applied batches' writes gather before they are written: a
/// write costs the database per room it touches, so under load fewer,
/// larger writes cost less per message; clients do not wait on it (events
/// go out once a batch is applied).
const WRITE_BEHIND: std::time::Duration = std::time::Duration::from_millis(250);

/// Members of a room per `WRITE_BEHIND` its writes wait, up to
/// `MAX_WRITE_BEHIND`. A room's write carries its per-user maps whole once
/// many entries change (`Room::take_write`), and in a big group every
/// message changes every member's unread count and every flush of the
/// edges' receipts their delivery cursors: a group of 2,000 cost the
/// embedded database about 100 ms of CPU per write, half a core at four
/// writes a second whatever the message rate. Its writes now gather for
/// 2 s. Clients do not wait on them (events go out once applied); what
/// waits is the commands' acks, and the database's copy of the counts.
const MEMBERS_PER_WRITE_BEHIND: usize = 250;
const MAX_WRITE_BEHIND: std::time::Duration = std::time::Duration::from_secs(2);

/// How long writes gather when the biggest room among them has `members`.
fn write_behind(members: usize) -> std::time::Duration {
    let steps = (members / MEMBERS_PER_WRITE_BEHIND).max(1) as u32;
    (WRITE_BEHIND * steps).min(MAX_WRITE_BEHIND)
}

/// What every command handler of the role needs.
pub(crate) struct Ctx {
    pub store: Store,
    pub subjects: Subjects,
}

pub struct MessagesHandler {
    ctx: Ctx,
    /// `Some(false)`: write per collection whatever the server; `None`:
    /// ask the server whether it has `bulkWrite`.
    bulk: Option<bool>,
    /// The writer all partitions share (started by the first write, which
    /// also learns whether the server has `bulkWrite`).
    committer: OnceCell<Committer>,
}

impl MessagesHandler {
    pub fn new(store: Store, subjects: Subjects) -> Self {
        MessagesHandler { ctx: Ctx { store, subjects }, bulk: None, committer: OnceCell::new() }
    }

    /// Writes with one command per collection, as on servers before 8.0
    /// (which lack `bulkWrite`), whatever the server.
    pub fn per_collection_writes(self) -> Self {
        MessagesHandler { bulk: Some(false), ..self }
    }
}

/// A message as read from the database for a batch (older than the tails).
#[derive(Clone, Debug)]
struct Known {
    pub room: RoomRef,
    pub seq: i64,
    pub sender: ObjectId,
    /// Counts toward unread (not a `system` message).
    pub counts: bool,
    pub deleted: bool,
}

impl Known {
    fn of(m: &MessageDoc) -> Known {
        Known {
            room: m.room(),
            seq: m.seq,
            sender: m.sender_id,
            counts: m.message_type != MessageType::System,
            deleted: m.deleted,
        }
    }
}

/// What the commands of one batch share while they are applied.
struct Batch<'a> {
    pub ctx: &'a Ctx,
    pub writes: Writes,
    /// Messages read from the database for this batch, by id.
    pub known: HashMap<ObjectId, Known>,
    /// Whole messages read for this batch's edits and reactions.
    pub docs: HashMap<ObjectId, MessageDoc>,
    /// The take its writes go out with.
    pub generation: u64,
}

impl Batch<'_> {
    /// A message of `room`: from its tail, or as read for this batch.
    pub fn lookup(&self, room: &Room, id: ObjectId) -> Option<Known> {
        if let Some(e) = room.tail.get(id) {
            return Some(Known {
                room: room.key.clone(),
                seq: e.seq,
                sender: e.sender,
                counts: e.counts,
                deleted: e.deleted,
            });
        }
        if let Some(m) = room.unwritten_message(id) {
            return Some(Known::of(m));
        }
        self.known.get(&id).filter(|k| k.room == room.key).cloned()
    }

    /// The whole message, as changed in memory or as read for this batch.
    pub fn message(&self, room: &Room, id: ObjectId) -> Option<MessageDoc> {
        match room.unwritten_message(id) {
            Some(m) => Some(m.clone()),
            None => self.docs.get(&id).filter(|m| m.room() == room.key).cloned(),
        }
    }

    /// Notes that the message was deleted by this batch.
    pub fn deleted(&mut self, room: &mut Room, id: ObjectId) {
        if let Some(e) = room.tail.get_mut(id) {
            e.deleted = true;
        }
        if let Some(k) = self.known.get_mut(&id) {
            k.deleted = true;
        }
        // Held again under this take: the copy stays until the tombstone
        // is written, not only until the send's own take is.
        if let Some(mut m) = room.unwritten_message(id).cloned() {
            m.deleted = true;
            m.terms.clear();
            room.changed(self.generation, m);
        }
        self.docs.remove(&id);
    }
}

impl Handler for MessagesHandler {
    const ROLE: Role = Role::MESSAGES;
    type Msg = natter_shared::v1::command::CommandEnvelope;
    type State = Rooms;
    type Writes = Writes;
    const WRITE_BEHIND: std::time::Duration = WRITE_BEHIND;

    async fn apply(&self, rooms: &mut Rooms, batch: &[Incoming], done: &mut Done) -> Result<(), ApplyError> {
        let generation = rooms.generation();
        let mut b = Batch {
            ctx: &self.ctx,
            writes: Writes::default(),
            known: HashMap::new(),
            docs: HashMap::new(),
            generation,
        };
        let mut attempt = Done::new();
        let mut order: Vec<RoomRef> = Vec::new();
        let mut by_room: HashMap<RoomRef, Vec<&Incoming>> = HashMap::new();
        for inc in batch {
            if done.contains_key(&inc.seq) {
                continue;
            }
            match inc.msg.route() {
                Ok(Route::Room(r)) => {
                    let cmds = by_room.entry(r.clone()).or_default();
                    if cmds.is_empty() {
                        order.push(r);
                    }
                    cmds.push(inc);
                }
                // An upload made outside any room needs no room to record.
                Ok(Route::User(_)) => {
                    let d = match &inc.msg.command {
                        Command::RecordAttachment(c) => record_attachment(&mut b, inc, c),
                        Command::ExpireUpload(c) => expire_upload(&mut b, c),
                        _ => Disposition::Poison("a room is required".into()),
                    };
                    attempt.insert(inc.seq, d);
                }
                Err(reason) => {
                    attempt.insert(inc.seq, Disposition::Poison(reason.into()));
                }
            }
        }
        let keys: BTreeSet<RoomRef> = order.iter().cloned().collect();
        let applied = async {
            rooms.load(&self.ctx.store, &keys).await?;
            (b.known, b.docs) = prefetch(&self.ctx.store, rooms, &order, &by_room).await?;
            for key in &order {
                apply_room(&mut b, rooms, key, &by_room[key], &mut attempt).await?;
            }
            Ok::<(), ApplyError>(())
        }
        .await;
        match applied {
            Ok(()) => {
                rooms.stage(b.writes, &order);
                done.extend(attempt);
                Ok(())
            }
            Err(e) => {
                // Half applied: these rooms are read again.
                rooms.forget(&keys);
                Err(e)
            }
        }
    }

    fn write_behind(&self, rooms: &Rooms) -> std::time::Duration {
        write_behind(rooms.most_members_dirty())
    }

    fn take(&self, rooms: &mut Rooms) -> Writes {
        rooms.take()
    }

    async fn write(&self, writes: Writes) -> Result<(), ApplyError> {
        let committer = self
            .committer
            .get_or_try_init(|| async {
                let bulk = match self.bulk {
                    Some(b) => b,
                    None => writes::has_bulk_write(&self.ctx.store).await?,
                };
                Ok::<_, ApplyError>(Committer::start(self.ctx.store.clone(), bulk))
            })
            .await?;
        committer.write(writes).await.map_err(|e| match e {
            WriteError::Conflict(why) => ApplyError::transient(format!("applying again from the database: {why}")),
            WriteError::Apply(e) => e,
        })
    }

    fn written(&self, rooms: &mut Rooms, ok: bool) {
        rooms.written(ok);
    }

    /// A message clients got that was never stored is withdrawn as deleted
    /// (`retracted`); anything else is told to its actor as refused.
    fn withdraw(&self, inc: &Incoming, seq: u64, part: u32) -> Option<crate::handler::Publication> {
        events::withdrawal(&self.ctx.subjects, inc, seq, part).ok()
    }
}

/// Applies one room's commands of the batch, in stream order.
async fn apply_room(
    b: &mut Batch<'_>,
    rooms: &mut Rooms,
    key: &RoomRef,
    cmds: &[&Incoming],
    attempt: &mut Done,
) -> Result<(), ApplyError> {
    if parse_oid(&key.id).is_none() {
        for inc in cmds {
            attempt.insert(inc.seq, Disposition::Poison(format!("room id `{}` is not an ObjectId", key.id)));
        }
        return Ok(());
    }
    for inc in cmds {
        let d = match &inc.msg.command {
            // Creations make the room; everything else needs it.
            Command::CreateConversation(c) => conversation::create(b, rooms, key, inc, c)?,
            Command::CreateGroup(c) => group::create(b, rooms, key, inc, c)?,
            Command::RecordAttachment(c) => record_attachment(b, inc, c),
            command => match rooms.get_mut(key) {
                None => {
                    let what = if key.kind == RoomKind::Group { "group" } else { "conversation" };
                    Disposition::Poison(format!("{what} not found"))
                }
                Some(room) => match command {
                    Command::SendMessage(c) => send::apply(b, room, inc, c)?,
                    Command::MarkRead(c) => receipts::read(b, room, inc, c).await?,
                    Command::MarkDelivered(c) => receipts::delivered(b, room, inc, c).await?,
                    Command::DeleteMessage(c) => delete::apply(b, room, inc, c)?,
                    Command::EditMessage(c) => mutate::edit(b, room, inc, c)?,
                    Command::AddReaction(c) => mutate::react(b, room, inc, c, true)?,
                    Command::RemoveReaction(c) => mutate::react(b, room, inc, c, false)?,
                    Command::PinMessage(c) => mutate::pin(b, room, inc, c, true)?,
                    Command::UnpinMessage(c) => mutate::pin(b, room, inc, c, false)?,
                    Command::UpdateGroup(_)
                    | Command::DeleteGroup(_)
                    | Command::AddMember(_)
                    | Command::RemoveMember(_)
                    | Command::LeaveGroup(_) => group::apply(b, room, inc)?,
                    Command::CreateConversation(_)
                    | Command::CreateGroup(_)
                    | Command::UploadAttachment(_)
                    | Command::RecordAttachment(_)
                    | Command::ExpireUpload(_) => Disposition::NotMine,
                },
            },
        };
        attempt.insert(inc.seq, d);
    }
    Ok(())
}

/// Reads the messages the batch needs that no room's tail holds: the
/// targets of reads and pins, and the sends of rooms just read from the
/// database (a dead worker may have stored them without moving the room's
/// `lastSeq`); and whole, the targets of edits, reactions and deletes and
/// the messages replies answer, that memory does not hold. Then, in a
/// second query only if needed, the first messages of the threads those
/// belong to. A message whose tombstone is not written yet counts as
/// deleted.
async fn prefetch(
    store: &Store,
    rooms: &mut Rooms,
    order: &[RoomRef],
    by_room: &HashMap<RoomRef, Vec<&Incoming>>,
) -> Result<(HashMap<ObjectId, Known>, HashMap<ObjectId, MessageDoc>), mongodb::error::Error> {
    let mut ids: Vec<ObjectId> = Vec::new();
    let mut whole: BTreeSet<ObjectId> = BTreeSet::new();
    let mut tombstoned: BTreeSet<ObjectId> = BTreeSet::new();
    // Messages whose thread's first message the batch may change.
    let mut threaded: Vec<(RoomRef, ObjectId)> = Vec::new();
    for key in order {
        let Some(room) = rooms.get_mut(key) else { continue };
        let held = |id: &ObjectId| room.tail.get(*id).is_none() && room.unwritten_message(*id).is_none();
        let unheld = |id: &ObjectId| room.unwritten_message(*id).is_none();
        for inc in &by_room[key] {
            let (id, read_whole) = match &inc.msg.command {
                Command::MarkRead(c) => (Some(c.message_id.oid()).filter(held), false),
                Command::PinMessage(c) | Command::UnpinMessage(c) => (Some(c.message_id.oid()).filter(held), false),
                Command::SendMessage(c) => {
                    if let Some(parent) = &c.reply_to {
                        threaded.push((key.clone(), parent.oid()));
                        if unheld(&parent.oid()) {
                            ids.push(parent.oid());
                            whole.insert(parent.oid());
                        }
                    }
                    (Some(c.message_id.oid()).filter(|_| room.fresh), false)
                }
                Command::DeleteMessage(c) => {
                    threaded.push((key.clone(), c.message_id.oid()));
                    (Some(c.message_id.oid()).filter(unheld), true)
                }
                Command::EditMessage(c) => (Some(c.message_id.oid()).filter(unheld), true),
                Command::AddReaction(c) | Command::RemoveReaction(c) => (Some(c.message_id.oid()).filter(unheld), true),
                _ => (None, false),
            };
            if let Some(id) = id {
                ids.push(id);
                if read_whole {
                    whole.insert(id);
                }
            }
        }
        tombstoned.extend(room.unwritten().map(|t| t.id));
    }
    let mut known = HashMap::new();
    let mut docs = HashMap::new();
    read_messages(store, ids, &whole, &tombstoned, &mut known, &mut docs).await?;
    // The threads' first messages, where memory does not hold them.
    let mut roots: Vec<ObjectId> = Vec::new();
    for (key, id) in threaded {
        let Some(room) = rooms.get_mut(&key) else { continue };
        let root = room.unwritten_message(id).or(docs.get(&id)).and_then(|m| m.reply_to);
        if let Some(root) = root
            && room.unwritten_message(root).is_none()
            && !docs.contains_key(&root)
        {
            roots.push(root);
        }
    }
    let whole: BTreeSet<ObjectId> = roots.iter().copied().collect();
    read_messages(store, roots, &whole, &tombstoned, &mut known, &mut docs).await?;
    Ok((known, docs))
}

/// One query for `ids`: each as `Known`, and those in `whole` (not
/// deleted) as documents too.
async fn read_messages(
    store: &Store,
    ids: Vec<ObjectId>,
    whole: &BTreeSet<ObjectId>,
    tombstoned: &BTreeSet<ObjectId>,
    known: &mut HashMap<ObjectId, Known>,
    docs: &mut HashMap<ObjectId, MessageDoc>,
) -> Result<(), mongodb::error::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let raw = store.db().collection::<mongodb::bson::Document>(natter_shared::model::MESSAGES);
    round_trip("find_messages");
    let mut find = raw.find(doc! {"_id": {"$in": ids}});
    if whole.is_empty() {
        find = find.projection(
            doc! {"seq": 1, "senderId": 1, "conversationId": 1, "groupId": 1, "messageType": 1, "deleted": 1},
        );
    }
    let mut cur = find.await?;
    while let Some(m) = cur.try_next().await? {
        let (Ok(id), Ok(sender)) = (m.get_object_id("_id"), m.get_object_id("senderId")) else { continue };
        let Ok(room) = RoomRef::from_fields(m.get_str("conversationId").ok(), m.get_str("groupId").ok()) else {
            continue;
        };
        let deleted = m.get_bool("deleted").unwrap_or(false) || tombstoned.contains(&id);
        known.insert(
            id,
            Known {
                room,
                seq: m.get_i64("seq").unwrap_or(0),
                sender,
                counts: m.get_str("messageType").is_ok_and(|t| t != "system"),
                deleted,
            },
        );
        if whole.contains(&id)
            && !deleted
            && let Ok(doc) = mongodb::bson::from_document::<MessageDoc>(m)
        {
            docs.insert(id, doc);
        }
    }
    Ok(())
}

/// Records an attachment from the attachments worker's fact (which usually
/// recorded it already, the same way).
fn record_attachment(b: &mut Batch<'_>, inc: &Incoming, c: &RecordAttachmentCmd) -> Disposition {
    let Some(doc) = AttachmentDoc::from_fact(inc.msg.actor.oid(), c) else {
        return Disposition::Poison("attachmentId is not an ObjectId".into());
    };
    b.writes.attachment(doc);
    Disposition::Applied(vec![])
}

/// Collects an upload made outside any room. The sweep that published the
/// command found no message carrying it, long after the edge stopped
/// letting it be sent: the command decides, so applying it depends on
/// nothing another partition writes (a replay gives the same record). The
/// write changes only an accepted record outside any room: applying
/// again, or for a record in a room, does nothing.
fn expire_upload(b: &mut Batch<'_>, c: &ExpireUploadCmd) -> Disposition {
    b.writes.expire(c.attachment_id.oid());
    Disposition::Applied(vec![])
}

/// Inserts an attachment record once (a second insert finds it).
pub(crate) async fn insert_attachment(store: &Store, doc: &AttachmentDoc) -> Result<(), mongodb::error::Error> {
    match store.attachments().insert_one(doc).await {
        Err(e) if !crate::handler::is_duplicate(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Connects, applies indexes and topology, and runs the role until `cancel`.
pub async fn serve(core: &CoreConfig, cfg: RunnerConfig, cancel: CancellationToken) -> Result<(), StartError> {
    start::serve(core, cfg, cancel, async |c| Ok(MessagesHandler::new(c.store.clone(), c.subjects.clone()))).await
}

#[cfg(test)]
mod tests {
    use super::{MAX_WRITE_BEHIND, WRITE_BEHIND, write_behind};
    use std::time::Duration;

    #[test]
    fn big_rooms_writes_gather_longer_up_to_a_bound() {
        assert_eq!(write_behind(0), WRITE_BEHIND, "no room changed");
        assert_eq!(write_behind(2), WRITE_BEHIND, "a conversation");
        assert_eq!(write_behind(499), WRITE_BEHIND);
        assert_eq!(write_behind(500), Duration::from_millis(500));
        assert_eq!(write_behind(1_000), Duration::from_secs(1));
        assert_eq!(write_behind(2_000), MAX_WRITE_BEHIND);
        assert_eq!(write_behind(100_000), MAX_WRITE_BEHIND, "bounded well inside the ack wait");
    }
}
