//! Frames the edge sends on `/ws` besides events: `ready`, `ack`, `error`.

use super::error::{ErrorBody, ErrorCode};
use serde::Serialize;

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
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendAck<'a> {
    pub message_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<&'a str>,
    pub client_msg_id: &'a str,
    pub seq: u64,
    /// True when this was a retry of an already stored send.
    pub duplicate: bool,
}

pub fn to_text<T: Serialize>(kind: &str, request_id: Option<&str>, data: T) -> String {
    serde_json::to_string(&Frame { kind, request_id, data }).unwrap_or_else(|_| {
        r#"{"type":"error","data":{"code":"internal","message":"serialization failed"}}"#.to_string()
    })
}

pub fn error_text(request_id: Option<&str>, code: ErrorCode, message: impl Into<String>) -> String {
    to_text("error", request_id, ErrorBody { code, message: message.into() })
}
