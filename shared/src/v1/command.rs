//! Commands: what the edge publishes to JetStream and the workers apply.
//! A command carries everything its application needs (ids are assigned by
//! the edge); the worker adds only the stream sequence and timestamp, so
//! replaying the stream rebuilds the same state.

use crate::ids::UserId;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// Wire version, `1`.
    pub v: u32,
    /// Who issued the command (from the token, never from a payload).
    pub actor: UserId,
    /// The actor's roles at the time of the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// A core NATS subject where the worker reports the outcome, for REST
    /// writes that answer once the change is applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    pub command: Command,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    SendMessage(SendMessageCmd),
    CreateConversation(CreateConversationCmd),
}

impl Command {
    /// The action name used in logs, audit and subjects.
    pub fn action(&self) -> &'static str {
        match self {
            Command::SendMessage(_) => "send_message",
            Command::CreateConversation(_) => "create_conversation",
        }
    }

    /// The room the command belongs to (its ordering and partition key).
    pub fn room(&self) -> &str {
        match self {
            Command::SendMessage(c) => &c.conversation_id,
            Command::CreateConversation(c) => &c.conversation_id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessageCmd {
    /// Assigned by the edge from the sender and `clientMsgId`.
    pub message_id: String,
    pub conversation_id: String,
    pub content: String,
    pub message_type: String,
    pub client_msg_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateConversationCmd {
    /// Derived from the two participants, so concurrent creates agree.
    pub conversation_id: String,
    pub participant_ids: [UserId; 2],
}

/// What a worker reports on `reply` after handling a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub status: OutcomeStatus,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    Applied,
    Refused,
}
