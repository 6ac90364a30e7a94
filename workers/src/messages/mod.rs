//! The `messages` role: conversations and messages. Applies
//! `create_conversation` and `send_message`, keeps each conversation's
//! `lastMessageId`, `updatedAt` and `unreadCounts`, and publishes
//! `message_received` to the room.

mod conversation;
mod send;

use crate::handler::{ApplyError, Disposition, Handler, Incoming};
use crate::runner::{self, RunnerConfig};
use natter_nats::Subjects;
use natter_nats::topology::Role;
use natter_shared::config::CoreConfig;
use natter_shared::store::Store;
use natter_shared::v1::command::Command;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct MessagesHandler {
    store: Store,
    subjects: Subjects,
}

impl MessagesHandler {
    pub fn new(store: Store, subjects: Subjects) -> Self {
        MessagesHandler { store, subjects }
    }
}

impl Handler for MessagesHandler {
    const ROLE: Role = Role::Messages;

    async fn apply(&self, batch: &[Incoming]) -> Result<Vec<Disposition>, ApplyError> {
        let mut out: Vec<Option<Disposition>> = vec![None; batch.len()];
        // Conversations first: in a valid stream a room's creation precedes
        // its messages, and a batch holds a prefix of the partition.
        for (i, inc) in batch.iter().enumerate() {
            if let Command::CreateConversation(c) = &inc.envelope.command {
                out[i] = Some(conversation::apply(&self.store, &self.subjects, inc, c).await?);
            }
        }
        let sends: Vec<(usize, &Incoming)> = batch
            .iter()
            .enumerate()
            .filter(|(_, inc)| matches!(inc.envelope.command, Command::SendMessage(_)))
            .collect();
        for (i, d) in send::apply(&self.store, &self.subjects, &sends).await? {
            out[i] = Some(d);
        }
        Ok(out
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| {
                    Disposition::Poison("command not handled by the messages role".into())
                })
            })
            .collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("topology: {0}")]
    Topology(#[from] natter_nats::TopologyError),
    #[error(transparent)]
    Runner(#[from] runner::RunnerError),
}

/// Connects, applies indexes and topology, and runs the role until `cancel`.
pub async fn serve(
    core: &CoreConfig,
    cfg: RunnerConfig,
    cancel: CancellationToken,
) -> Result<(), StartError> {
    let client = async_nats::ConnectOptions::new()
        .name(format!("natter-worker-messages-{}", cfg.instance))
        .connect(core.nats_url.as_str())
        .await
        .map_err(|e| StartError::Nats(e.to_string()))?;
    let subjects = Subjects::new(&core.nats_namespace);
    natter_nats::apply(&async_nats::jetstream::new(client.clone()), &subjects, 1).await?;
    let store = Store::connect(&core.mongodb_uri, &core.mongodb_db).await?;
    store.ensure_indexes().await?;
    let handler = Arc::new(MessagesHandler::new(store, subjects.clone()));
    runner::run(handler, client, subjects, cfg, cancel).await?;
    Ok(())
}
