//! Chat operations independent of the client protocol: authorization,
//! id assignment, publishing commands and waiting for their outcome. The
//! WebSocket protocols and the REST routes call these; none of them
//! re-implements a rule.

use crate::error::ChatError;
use crate::state::EdgeState;
use bytes::Bytes;
use futures::StreamExt;
use mongodb::bson::oid::ObjectId;
use natter_nats::RoomKind;
use natter_nats::publish::{self, Stored};
use natter_shared::auth::Identity;
use natter_shared::ids::{UserId, conversation_id_for, message_id_for, parse_oid};
use natter_shared::model::ConversationDoc;
use natter_shared::v1::client::SendMessage;
use natter_shared::v1::command::{
    Command, CommandEnvelope, CreateConversationCmd, Outcome, OutcomeStatus, SendMessageCmd,
};
use std::time::Duration;

/// How long a REST write waits for a worker to apply its command.
pub const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The ack of a stored `send_message`.
#[derive(Debug, Clone)]
pub struct Sent {
    pub message_id: String,
    pub conversation_id: String,
    pub client_msg_id: String,
    pub seq: u64,
    pub duplicate: bool,
}

pub fn conversation_oid(id: &str) -> Result<ObjectId, ChatError> {
    parse_oid(id).ok_or_else(|| ChatError::InvalidPayload("conversationId is not a valid id".into()))
}

/// Fails unless `who` is a participant. A missing conversation answers the
/// same as a foreign one, so ids cannot be probed.
pub async fn require_participant(st: &EdgeState, who: &Identity, conv: ObjectId) -> Result<(), ChatError> {
    if st.membership.is_participant(&st.store, conv, who.user).await? { Ok(()) } else { Err(ChatError::NotAMember) }
}

fn envelope(who: &Identity, command: Command) -> CommandEnvelope {
    CommandEnvelope { v: natter_shared::v1::VERSION, actor: who.user, roles: who.roles.clone(), reply: None, command }
}

async fn store_command(st: &EdgeState, env: &CommandEnvelope, msg_id: &str) -> Result<Stored, ChatError> {
    let subject = st.subjects.command(RoomKind::Conversation, env.command.room(), env.command.action());
    let payload: Bytes = serde_json::to_vec(env).map_err(|e| ChatError::InvalidPayload(e.to_string()))?.into();
    publish::command(&st.js, subject, msg_id, payload).await.map_err(ChatError::unavailable)
}

/// `send_message`: checks membership, assigns the id, stores the command.
pub async fn send_message(st: &EdgeState, who: &Identity, req: SendMessage) -> Result<Sent, ChatError> {
    let conv = conversation_oid(&req.conversation_id)?;
    require_participant(st, who, conv).await?;
    let client_msg_id = req.client_msg_id.unwrap_or_else(|| ObjectId::new().to_hex());
    let message_id = message_id_for(who.user, &client_msg_id).to_hex();
    let conversation_id = conv.to_hex();
    let env = envelope(
        who,
        Command::SendMessage(SendMessageCmd {
            message_id: message_id.clone(),
            conversation_id: conversation_id.clone(),
            content: req.content,
            message_type: req.message_type.as_str().to_string(),
            client_msg_id: client_msg_id.clone(),
        }),
    );
    let stored = store_command(st, &env, &format!("msg:{}:{client_msg_id}", who.user)).await?;
    Ok(Sent { message_id, conversation_id, client_msg_id, seq: stored.seq, duplicate: stored.duplicate })
}

/// `POST /conversations/with-user`: returns the conversation between the
/// caller and `other`, creating it through the pipeline if needed.
pub async fn conversation_with(st: &EdgeState, who: &Identity, other: UserId) -> Result<ConversationDoc, ChatError> {
    if other == who.user {
        return Err(ChatError::InvalidPayload("cannot open a conversation with yourself".into()));
    }
    let id = conversation_id_for(who.user, other);
    if let Some(c) = st.store.conversation(id).await? {
        return Ok(c);
    }
    let env = envelope(
        who,
        Command::CreateConversation(CreateConversationCmd {
            conversation_id: id.to_hex(),
            participant_ids: [who.user, other],
        }),
    );
    let seq = apply_and_wait(st, env, &format!("conv:{}", id.to_hex())).await?;
    // Applied by us, or stored by a concurrent request and applied soon.
    let deadline = tokio::time::Instant::now() + APPLY_WAIT;
    loop {
        if let Some(c) = st.store.conversation(id).await? {
            return Ok(c);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ChatError::Pending { seq });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Stores a command and waits until a worker reports it applied. When the
/// store says it is a duplicate (another request stored it first), the
/// worker will not report to us, so the result is read back instead.
async fn apply_and_wait(st: &EdgeState, mut env: CommandEnvelope, msg_id: &str) -> Result<u64, ChatError> {
    let inbox = st.nats.new_inbox();
    let mut sub = st.nats.subscribe(inbox.clone()).await.map_err(ChatError::unavailable)?;
    env.reply = Some(inbox);
    let stored = store_command(st, &env, msg_id).await?;
    if stored.duplicate {
        return Ok(stored.seq);
    }
    let outcome = tokio::time::timeout(APPLY_WAIT, sub.next()).await;
    let _ = sub.unsubscribe().await;
    match outcome {
        Ok(Some(msg)) => match serde_json::from_slice::<Outcome>(&msg.payload) {
            Ok(Outcome { status: OutcomeStatus::Applied, seq, .. }) => Ok(seq),
            Ok(Outcome { status: OutcomeStatus::Refused, reason, .. }) => {
                Err(ChatError::Refused(reason.unwrap_or_else(|| "refused".into())))
            }
            Err(e) => Err(ChatError::unavailable(format!("bad outcome: {e}"))),
        },
        _ => Err(ChatError::Pending { seq: stored.seq }),
    }
}
