//! Frames sent by clients on `/ws`: `{"type": <event>, "requestId": <string>,
//! "data": {...}}`. The envelope is parsed first so that an unknown event or a
//! bad payload can still be answered with the request id.

use super::error::ErrorCode;
use super::{MAX_CLIENT_MSG_ID, MAX_CONTENT_BYTES};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The outer frame, before the payload is interpreted.
#[derive(Debug, Deserialize)]
pub struct RawFrame<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "requestId", default)]
    pub request_id: Option<String>,
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// `messageType` a client may send; `system` is reserved for the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientMessageType {
    Text,
    Image,
    Document,
}

impl ClientMessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientMessageType::Text => "text",
            ClientMessageType::Image => "image",
            ClientMessageType::Document => "document",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SendMessage {
    pub conversation_id: String,
    pub content: String,
    #[serde(default = "default_type")]
    pub message_type: ClientMessageType,
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

fn default_type() -> ClientMessageType {
    ClientMessageType::Text
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoomRef {
    pub conversation_id: String,
}

/// A parsed client request.
#[derive(Debug)]
pub enum ClientRequest {
    SendMessage(SendMessage),
    JoinConversation(RoomRef),
    LeaveConversation(RoomRef),
}

/// Why a frame could not be turned into a request.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: Option<String>,
}

/// Event names the server accepts on `/ws`.
pub const CLIENT_EVENTS: &[&str] = &["send_message", "join_conversation", "leave_conversation"];

/// Parses one text frame into a request (with its id) or an error carrying
/// whatever request id could be read.
pub fn parse(text: &str) -> Result<(Option<String>, ClientRequest), FrameError> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() { ErrorCode::InvalidFrame } else { ErrorCode::InvalidJson };
        FrameError { code, message: e.to_string(), request_id: None }
    })?;
    let rid = raw.request_id.clone();
    let err = |code, message: String| FrameError { code, message, request_id: rid.clone() };
    let data = raw.data.map(|d| d.get()).unwrap_or("{}");
    fn payload<'de, T: Deserialize<'de>>(data: &'de str) -> Result<T, String> {
        serde_json::from_str(data).map_err(|e| e.to_string())
    }
    let req = match raw.kind.as_str() {
        "send_message" => {
            let m: SendMessage = payload(data).map_err(|m| err(ErrorCode::InvalidPayload, m))?;
            if m.content.trim().is_empty() {
                return Err(err(ErrorCode::InvalidPayload, "content must not be empty".into()));
            }
            if m.content.len() > MAX_CONTENT_BYTES {
                return Err(err(
                    ErrorCode::InvalidPayload,
                    format!("content is longer than {MAX_CONTENT_BYTES} bytes"),
                ));
            }
            if let Some(c) = &m.client_msg_id
                && (c.is_empty() || c.len() > MAX_CLIENT_MSG_ID)
            {
                return Err(err(
                    ErrorCode::InvalidPayload,
                    format!("clientMsgId must be 1..={MAX_CLIENT_MSG_ID} bytes"),
                ));
            }
            ClientRequest::SendMessage(m)
        }
        "join_conversation" => {
            ClientRequest::JoinConversation(payload(data).map_err(|m| err(ErrorCode::InvalidPayload, m))?)
        }
        "leave_conversation" => {
            ClientRequest::LeaveConversation(payload(data).map_err(|m| err(ErrorCode::InvalidPayload, m))?)
        }
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err(err(ErrorCode::UnknownEvent, format!("unknown event `{shown}`")));
        }
    };
    Ok((rid, req))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send_message() {
        let (rid, req) = parse(r#"{"type":"send_message","requestId":"r1","data":{"conversationId":"c","content":"hi","clientMsgId":"k"}}"#).unwrap();
        assert_eq!(rid.as_deref(), Some("r1"));
        match req {
            ClientRequest::SendMessage(m) => {
                assert_eq!(m.content, "hi");
                assert_eq!(m.message_type, ClientMessageType::Text);
                assert_eq!(m.client_msg_id.as_deref(), Some("k"));
            }
            other => panic!("wrong request {other:?}"),
        }
    }

    #[test]
    fn error_codes() {
        assert_eq!(parse("{nope").unwrap_err().code, ErrorCode::InvalidJson);
        assert_eq!(parse("[1,2]").unwrap_err().code, ErrorCode::InvalidFrame);
        assert_eq!(parse(r#"{"requestId":"x"}"#).unwrap_err().code, ErrorCode::InvalidFrame);
        let e = parse(r#"{"type":"fly","requestId":"r9"}"#).unwrap_err();
        assert_eq!((e.code, e.request_id.as_deref()), (ErrorCode::UnknownEvent, Some("r9")));
        let e = parse(r#"{"type":"send_message","requestId":"r2","data":{"content":"x"}}"#).unwrap_err();
        assert_eq!((e.code, e.request_id.as_deref()), (ErrorCode::InvalidPayload, Some("r2")));
        let e = parse(r#"{"type":"send_message","data":{"conversationId":"c","content":5}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload);
        let e = parse(r#"{"type":"send_message","data":{"conversationId":"c","content":"x","messageType":"system"}}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload);
        let e = parse(r#"{"type":"send_message","data":{"conversationId":"c","content":"  "}}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidPayload);
    }
}
