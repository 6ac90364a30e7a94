//! Frames the edge sends on `/ws` besides events: `ready`, `ack`, `error`.

use super::command::RoomFields;
use super::error::{ErrorBody, ErrorCode};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize)]
pub struct Frame<'a, T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    pub data: T,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready<'a> {
    pub user_id: &'a str,
    pub protocol: u32,
}

/// Ack of `send_message`: the command is durably stored at `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendAck {
    pub message_id: String,
    #[serde(flatten)]
    pub room: RoomFields,
    pub client_msg_id: String,
    pub seq: u64,
    /// True when this was a retry of an already stored send.
    pub duplicate: bool,
}

/// Ack of `file_upload`: the bytes are staged and the upload stored at
/// `seq`; the worker's verdict follows as `file_upload_response`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadAck {
    pub attachment_id: String,
    pub seq: u64,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// Ack of `mark_as_read` and `delete_message`: stored at `seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptAck {
    pub message_id: String,
    pub seq: u64,
    #[serde(flatten)]
    pub room: RoomFields,
}

/// Ack of `join_conversation` / `join_group`; `catchUp` when the client
/// gave `lastSeq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinAck {
    #[serde(flatten)]
    pub room: RoomFields,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUpReport>,
}

/// How a join's catch-up went: `complete` with the number of `events`
/// sent again, or not (`reason`; a `resync_required` event says the same).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatchUpReport {
    pub last_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    pub complete: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The data of an `ack`, whatever the request: `leave_*` and `typing`
/// answer with the room's fields alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Ack {
    Sent(SendAck),
    Staged(UploadAck),
    Receipt(ReceiptAck),
    Joined(JoinAck),
    Room(RoomFields),
}

/// A REST error body, and a Socket.IO acknowledgement of a refused event:
/// `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorReply {
    pub error: ErrorBody,
}

/// The Socket.IO `error` event the NestJS module emitted on a refusal:
/// the code, the message and the name of the event refused (empty when
/// it is not about one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub code: ErrorCode,
    pub message: String,
    pub event: String,
}

/// A Socket.IO `CONNECT_ERROR`'s body: the message, and the code under
/// `data` (read by the client as `err.data.code`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectError {
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<CodeOnly>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeOnly {
    pub code: ErrorCode,
}

/// REST's 202 answer to a command stored but not applied within the
/// wait: `{"status": "pending", "seq"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PendingReply {
    pub status: PendingStatus,
    pub seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PendingStatus {
    Pending,
}

pub fn to_text<T: Serialize>(kind: &str, request_id: Option<&str>, data: T) -> String {
    serde_json::to_string(&Frame { kind, request_id, data }).unwrap_or_else(|_| {
        r#"{"type":"error","data":{"code":"internal","message":"serialization failed"}}"#.to_string()
    })
}

pub fn error_text(request_id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> String {
    to_text("error", request_id, ErrorBody { code, message: message.into() })
}
