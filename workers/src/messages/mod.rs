//! The `messages` role: conversations, groups, messages, receipts and
//! deletions. A batch is split by room; each room's commands are applied in
//! stream order against the room's state (consecutive sends in one bulk
//! write), so every check and counter sees the room exactly as it was at the
//! command's `seq`, whichever worker applies it and however often.

mod conversation;
mod delete;
mod events;
pub mod group;
mod receipts;
mod room;
mod send;

use crate::handler::{ApplyError, Disposition, Done, Handler, Incoming};
use crate::runner::{self, RunnerConfig};
use crate::start::{self, StartError};
use natter_nats::Subjects;
use natter_nats::topology::Role;
use natter_shared::config::CoreConfig;
use natter_shared::ids::{RoomKind, RoomRef, parse_oid};
use natter_shared::store::Store;
use natter_shared::v1::command::{Command, Route};
use room::Room;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every command handler of the role needs.
pub(crate) struct Ctx {
    pub store: Store,
    pub subjects: Subjects,
}

pub struct MessagesHandler {
    ctx: Ctx,
}

impl MessagesHandler {
    pub fn new(store: Store, subjects: Subjects) -> Self {
        MessagesHandler { ctx: Ctx { store, subjects } }
    }
}

pub(crate) fn is_duplicate(e: &mongodb::error::Error) -> bool {
    matches!(*e.kind, mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(ref w)) if w.code == 11000)
}

impl Handler for MessagesHandler {
    const ROLE: Role = Role::Messages;
    type Msg = natter_shared::v1::command::CommandEnvelope;

    async fn apply(&self, batch: &[Incoming], done: &mut Done) -> Result<(), ApplyError> {
        let mut rooms: BTreeMap<RoomRef, Vec<&Incoming>> = BTreeMap::new();
        for inc in batch {
            if done.contains_key(&inc.seq) {
                continue;
            }
            // Uploads belong to the attachments role.
            if matches!(inc.msg.command, Command::UploadAttachment(_)) {
                done.insert(inc.seq, Disposition::NotMine);
                continue;
            }
            match inc.msg.route() {
                Ok(Route::Room(r)) => rooms.entry(r).or_default().push(inc),
                // An upload made outside any room needs no room to record.
                Ok(Route::User(_)) => match &inc.msg.command {
                    Command::RecordAttachment(c) => {
                        done.insert(inc.seq, record_attachment(&self.ctx, inc, c).await?);
                    }
                    _ => {
                        done.insert(inc.seq, Disposition::Poison("a room is required".into()));
                    }
                },
                Err(reason) => {
                    done.insert(inc.seq, Disposition::Poison(reason.into()));
                }
            }
        }
        for (key, cmds) in rooms {
            self.apply_room(&key, &cmds, done).await?;
        }
        Ok(())
    }
}

impl MessagesHandler {
    async fn apply_room(&self, key: &RoomRef, cmds: &[&Incoming], done: &mut Done) -> Result<(), ApplyError> {
        let ctx = &self.ctx;
        let Some(id) = parse_oid(&key.id) else {
            for c in cmds {
                done.insert(c.seq, Disposition::Poison(format!("room id `{}` is not an ObjectId", key.id)));
            }
            return Ok(());
        };
        let mut room = Room::load(&ctx.store, key, id).await?;
        let mut i = 0;
        while i < cmds.len() {
            let inc = cmds[i];
            // Creations make the room; everything else needs it.
            match &inc.msg.command {
                Command::CreateConversation(c) => {
                    let d = conversation::apply(ctx, inc, c).await?;
                    done.insert(inc.seq, d);
                    room = Room::load(&ctx.store, key, id).await?;
                    i += 1;
                    continue;
                }
                Command::CreateGroup(c) => {
                    let d = group::create(ctx, inc, c).await?;
                    done.insert(inc.seq, d);
                    room = Room::load(&ctx.store, key, id).await?;
                    i += 1;
                    continue;
                }
                Command::RecordAttachment(c) => {
                    done.insert(inc.seq, record_attachment(ctx, inc, c).await?);
                    i += 1;
                    continue;
                }
                _ => {}
            }
            let Some(r) = room.as_mut() else {
                let what = if key.kind == RoomKind::Group { "group" } else { "conversation" };
                done.insert(inc.seq, Disposition::Poison(format!("{what} not found")));
                i += 1;
                continue;
            };
            match &inc.msg.command {
                Command::SendMessage(_) => {
                    let end = cmds[i..]
                        .iter()
                        .position(|c| !matches!(c.msg.command, Command::SendMessage(_)))
                        .map_or(cmds.len(), |n| i + n);
                    send::apply_run(ctx, r, &cmds[i..end], done).await?;
                    i = end;
                    continue;
                }
                Command::MarkRead(c) => {
                    let d = receipts::read(ctx, r, inc, c).await?;
                    done.insert(inc.seq, d);
                }
                Command::MarkDelivered(c) => {
                    let d = receipts::delivered(ctx, r, inc, c).await?;
                    done.insert(inc.seq, d);
                }
                Command::DeleteMessage(c) => {
                    let d = delete::apply(ctx, r, inc, c).await?;
                    done.insert(inc.seq, d);
                }
                Command::UpdateGroup(_)
                | Command::DeleteGroup(_)
                | Command::AddMember(_)
                | Command::RemoveMember(_)
                | Command::LeaveGroup(_) => {
                    let d = group::apply(ctx, r, inc).await?;
                    done.insert(inc.seq, d);
                }
                Command::CreateConversation(_)
                | Command::CreateGroup(_)
                | Command::UploadAttachment(_)
                | Command::RecordAttachment(_) => {}
            }
            i += 1;
        }
        Ok(())
    }
}

/// Records an attachment from the attachments worker's fact (which usually
/// recorded it already, the same way).
async fn record_attachment(
    ctx: &Ctx,
    inc: &Incoming,
    c: &natter_shared::v1::command::RecordAttachmentCmd,
) -> Result<Disposition, ApplyError> {
    let Some(doc) = natter_shared::model::AttachmentDoc::from_fact(inc.msg.actor.oid(), c) else {
        return Ok(Disposition::Poison("attachmentId is not an ObjectId".into()));
    };
    insert_attachment(&ctx.store, &doc).await?;
    Ok(Disposition::Applied(vec![]))
}

/// Inserts an attachment record once (a second insert finds it).
pub(crate) async fn insert_attachment(
    store: &Store,
    doc: &natter_shared::model::AttachmentDoc,
) -> Result<(), mongodb::error::Error> {
    match store.attachments().insert_one(doc).await {
        Err(e) if !is_duplicate(&e) => Err(e),
        _ => Ok(()),
    }
}

/// Connects, applies indexes and topology, and runs the role until `cancel`.
pub async fn serve(core: &CoreConfig, cfg: RunnerConfig, cancel: CancellationToken) -> Result<(), StartError> {
    let c = start::connect(core, "messages", &cfg).await?;
    let handler = Arc::new(MessagesHandler::new(c.store, c.subjects.clone()));
    runner::run(handler, c.client, c.subjects, cfg, cancel).await?;
    Ok(())
}
