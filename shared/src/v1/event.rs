//! Events: facts the workers publish after applying a command (and a few
//! ephemeral frames the edges publish themselves), fanned out by the edges.
//! The frame a client receives is exactly the published bytes:
//!
//! `{"type": <event>, "seq": <stream seq>, "part": <n>, "data": {...}}`
//!
//! plus routing fields the edge reads: `from` (the actor), `revoke` (after
//! this frame, stop sending the room to this user, or `*` for everyone) and
//! `grant` (a group id the receiving user's sockets start following).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MessageReceived,
    MessageStatusUpdated,
    MessageRead,
    MessageDeleted,
    ConversationCreated,
    GroupCreated,
    GroupUpdated,
    GroupDeleted,
    MemberAdded,
    MemberRemoved,
    /// Both participants of a conversation have written in it: from now on
    /// each sees the other's presence. To both participants.
    ContactAdded,
    /// A command the worker refused after the edge accepted it (a race with
    /// a membership change); sent to the actor only.
    CommandRefused,
    /// The outcome of an upload, to the uploader: the attachment, or why
    /// it was refused.
    FileUploadResponse,
    UserTyping,
    UserOnline,
    UserOffline,
    /// A reconnecting client missed more than can be sent again (or events
    /// it missed have expired): it should refetch the room's history over
    /// REST. Live events follow.
    ResyncRequired,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EventFrame<T> {
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Stream sequence of the command this event results from; absent on
    /// ephemeral frames (typing, presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Index of this event among those of one command on one subject.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    pub data: T,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl<T> EventFrame<T> {
    pub fn new(kind: EventKind, seq: u64, data: T) -> Self {
        EventFrame { kind, seq: Some(seq), part: 0, from: None, revoke: None, grant: None, data }
    }

    pub fn ephemeral(kind: EventKind, data: T) -> Self {
        EventFrame { kind, seq: None, part: 0, from: None, revoke: None, grant: None, data }
    }

    pub fn part(mut self, part: u32) -> Self {
        self.part = part;
        self
    }

    pub fn from(mut self, user: impl Into<String>) -> Self {
        self.from = Some(user.into());
        self
    }

    pub fn revoke(mut self, user: impl Into<String>) -> Self {
        self.revoke = Some(user.into());
        self
    }

    pub fn grant(mut self, group: impl Into<String>) -> Self {
        self.grant = Some(group.into());
        self
    }
}

/// The `data` of an event frame, read as `T` (the fields the reader needs);
/// `None` when the frame has no such data.
pub fn data_of<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Option<T> {
    #[derive(Deserialize)]
    struct Frame<T> {
        data: T,
    }
    serde_json::from_slice::<Frame<T>>(frame).ok().map(|f| f.data)
}

/// The part of an event frame the edge reads before forwarding it untouched.
#[derive(Debug, Deserialize)]
pub struct EventHead {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub part: u32,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub revoke: Option<String>,
    #[serde(default)]
    pub grant: Option<String>,
}
