//! Frames sent by clients on `/ws`: `{"type": <event>, "requestId": <string>,
//! "data": {...}}`. The envelope is parsed first so that an unknown event or a
//! bad payload can still be answered with the request id.

use super::error::ErrorCode;
use super::{MAX_CLIENT_MSG_ID, MAX_CONTENT_BYTES, MAX_EMOJI_BYTES, MAX_REQUEST_ID};
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

/// `send_message`: to a conversation or a group (exactly one).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendMessage {
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub group_id: Option<String>,
    pub content: String,
    #[serde(default = "default_type")]
    pub message_type: ClientMessageType,
    #[serde(default)]
    pub client_msg_id: Option<String>,
    /// Ids of accepted uploads (strings, or the `file_upload_response`
    /// objects, of which `id` is used).
    #[serde(default)]
    pub attachments: Vec<AttachmentRef>,
    /// A message of the same room this replies to (its thread).
    #[serde(default)]
    pub reply_to: Option<String>,
    /// User ids the message mentions, besides the `<@userId>` in its
    /// content.
    #[serde(default)]
    pub mentions: Vec<String>,
}

/// Most distinct users one message mentions.
pub const MAX_MENTIONS: usize = 50;

/// The users a message mentions: `mentions`, then each `<@userId>` in its
/// content, each once, in order. An id in `mentions` that is not one is an
/// error; a `<@...>` in the text that is not one is just text.
pub fn mentioned(content: &str, listed: &[String]) -> Result<Vec<crate::ids::UserId>, String> {
    let mut out: Vec<crate::ids::UserId> = Vec::new();
    for id in listed {
        let u = id
            .parse()
            .map_err(|_| format!("mentions: `{}` is not a user id", id.chars().take(32).collect::<String>()))?;
        if !out.contains(&u) {
            out.push(u);
        }
    }
    let mut rest = content;
    while let Some(at) = rest.find("<@") {
        rest = &rest[at + 2..];
        let Some(end) = rest.find('>') else { break };
        if let Ok(u) = rest[..end].parse::<crate::ids::UserId>()
            && !out.contains(&u)
        {
            out.push(u);
        }
        rest = &rest[end..];
    }
    if out.len() > MAX_MENTIONS {
        return Err(format!("at most {MAX_MENTIONS} users may be mentioned"));
    }
    Ok(out)
}

/// An attachment named in `send_message`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AttachmentRef {
    Id(String),
    Object { id: String },
}

impl AttachmentRef {
    pub fn id(&self) -> &str {
        match self {
            AttachmentRef::Id(s) | AttachmentRef::Object { id: s } => s,
        }
    }
}

/// Most attachments one message may carry.
pub const MAX_ATTACHMENTS: usize = 10;

/// The JSON header of a binary `file_upload` message:
/// `[u32 big-endian header length][header][file bytes]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileUpload {
    pub filename: String,
    /// The declared content type (`type`).
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub group_id: Option<String>,
}

impl FileUpload {
    /// At most one room (without one, the upload is the uploader's until
    /// they send it in a message), a file name and a declared type of sane
    /// lengths.
    pub fn validate(&self) -> Result<(), String> {
        crate::ids::RoomRef::optional(self.conversation_id.as_deref(), self.group_id.as_deref())
            .map_err(String::from)?;
        if self.filename.is_empty() || self.filename.len() > 1000 || self.kind.is_empty() || self.kind.len() > 200 {
            return Err("filename and type are required".into());
        }
        Ok(())
    }
}

/// Whether `json` is an object (or, if it is not JSON at all, could only be
/// one): frames and payloads are objects, never arrays read field by field.
fn is_object(json: &str) -> bool {
    json.trim_start().starts_with('{')
}

/// Whether a client's key (`requestId`, `clientMsgId`) fits in `max` bytes
/// and has no control characters: keys are echoed, stored, and go into
/// headers.
fn plain_key(key: &str, max: usize) -> bool {
    key.len() <= max && !key.chars().any(char::is_control)
}

/// The frame's request id, unless it is too long (then not echoed either).
fn request_id(raw: &RawFrame<'_>) -> Result<Option<String>, FrameError> {
    match &raw.request_id {
        Some(r) if !plain_key(r, MAX_REQUEST_ID) => Err(FrameError {
            code: ErrorCode::InvalidFrame,
            message: format!("requestId must be at most {MAX_REQUEST_ID} bytes without control characters"),
            request_id: None,
        }),
        r => Ok(r.clone()),
    }
}

/// Largest header of a binary message.
pub const MAX_UPLOAD_HEADER: usize = 16 * 1024;

/// Splits a binary `file_upload` message into its request id, header and
/// file bytes.
pub fn parse_upload(msg: &[u8]) -> Result<(Option<String>, FileUpload, &[u8]), FrameError> {
    let bad = |code, message: &str| FrameError { code, message: message.into(), request_id: None };
    if msg.len() < 4 {
        return Err(bad(ErrorCode::InvalidFrame, "a binary message starts with a 4-byte header length"));
    }
    let len = u32::from_be_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize;
    if len > MAX_UPLOAD_HEADER || 4 + len > msg.len() {
        return Err(bad(ErrorCode::InvalidFrame, "bad header length"));
    }
    let header =
        std::str::from_utf8(&msg[4..4 + len]).map_err(|_| bad(ErrorCode::InvalidFrame, "header is not UTF-8"))?;
    let raw: RawFrame<'_> = serde_json::from_str(header).map_err(|e| {
        let code = if e.is_data() { ErrorCode::InvalidFrame } else { ErrorCode::InvalidJson };
        FrameError { code, message: e.to_string(), request_id: None }
    })?;
    let rid = request_id(&raw)?;
    let err = |code, message: String| FrameError { code, message, request_id: rid.clone() };
    if raw.kind != "file_upload" {
        return Err(err(ErrorCode::UnknownEvent, "binary messages carry `file_upload` only".into()));
    }
    let up: FileUpload = serde_json::from_str(raw.data.map(|d| d.get()).unwrap_or("{}"))
        .map_err(|e| err(ErrorCode::InvalidPayload, e.to_string()))?;
    up.validate().map_err(|m| err(ErrorCode::InvalidPayload, m))?;
    Ok((rid, up, &msg[4 + len..]))
}

fn default_type() -> ClientMessageType {
    ClientMessageType::Text
}

/// `join_conversation` / `leave_conversation`. `lastSeq`, on a join: the
/// last `seq` the client saw in the room; what it missed is sent first.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationRef {
    pub conversation_id: String,
    #[serde(default)]
    pub last_seq: Option<u64>,
}

/// `join_group` / `leave_group`, with `lastSeq` as for conversations.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRef {
    pub group_id: String,
    #[serde(default)]
    pub last_seq: Option<u64>,
}

/// `typing`: the user id and name come from the token; payload fields of
/// that name (the module's front end sends them) are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Typing {
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub group_id: Option<String>,
    pub is_typing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRef {
    pub message_id: String,
}

/// `edit_message`: new content for a message of the caller's.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditMessage {
    pub message_id: String,
    pub content: String,
}

/// `add_reaction` / `remove_reaction`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReactionRef {
    pub message_id: String,
    pub emoji: String,
}

/// Message content a client may send or edit to: not blank, at most
/// `MAX_CONTENT_BYTES`.
pub fn check_content(content: &str) -> Result<(), String> {
    if content.trim().is_empty() {
        return Err("content must not be empty".into());
    }
    if content.len() > MAX_CONTENT_BYTES {
        return Err(format!("content is longer than {MAX_CONTENT_BYTES} bytes"));
    }
    Ok(())
}

/// A reaction: 1..=`MAX_EMOJI_BYTES` bytes with no whitespace or control
/// characters (an emoji sequence, or a short name like `:ship:`).
pub fn check_emoji(emoji: &str) -> Result<(), String> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES || emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("emoji must be 1..={MAX_EMOJI_BYTES} bytes without spaces or control characters"));
    }
    Ok(())
}

/// A parsed client request.
#[derive(Debug)]
pub enum ClientRequest {
    SendMessage(SendMessage),
    JoinConversation(ConversationRef),
    LeaveConversation(ConversationRef),
    JoinGroup(GroupRef),
    LeaveGroup(GroupRef),
    Typing(Typing),
    MarkAsRead(MessageRef),
    DeleteMessage(MessageRef),
    EditMessage(EditMessage),
    AddReaction(ReactionRef),
    RemoveReaction(ReactionRef),
    PinMessage(MessageRef),
    UnpinMessage(MessageRef),
}

impl ClientRequest {
    /// The event name the request came as.
    pub fn name(&self) -> &'static str {
        match self {
            ClientRequest::SendMessage(_) => "send_message",
            ClientRequest::JoinConversation(_) => "join_conversation",
            ClientRequest::LeaveConversation(_) => "leave_conversation",
            ClientRequest::JoinGroup(_) => "join_group",
            ClientRequest::LeaveGroup(_) => "leave_group",
            ClientRequest::Typing(_) => "typing",
            ClientRequest::MarkAsRead(_) => "mark_as_read",
            ClientRequest::DeleteMessage(_) => "delete_message",
            ClientRequest::EditMessage(_) => "edit_message",
            ClientRequest::AddReaction(_) => "add_reaction",
            ClientRequest::RemoveReaction(_) => "remove_reaction",
            ClientRequest::PinMessage(_) => "pin_message",
            ClientRequest::UnpinMessage(_) => "unpin_message",
        }
    }
}

/// Why a frame could not be turned into a request.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub request_id: Option<String>,
}

/// Event names the server accepts on `/ws`: what `parse_request` matches,
/// named in its refusal of any other (the fuzz suites hold the two together).
pub const CLIENT_EVENTS: &[&str] = &[
    "send_message",
    "join_conversation",
    "leave_conversation",
    "join_group",
    "leave_group",
    "typing",
    "mark_as_read",
    "delete_message",
    "edit_message",
    "add_reaction",
    "remove_reaction",
    "pin_message",
    "unpin_message",
    "file_upload",
];

/// Parses one text frame into a request (with its id) or an error carrying
/// whatever request id could be read.
pub fn parse(text: &str) -> Result<(Option<String>, ClientRequest), FrameError> {
    // serde would read an array as the struct's fields in order.
    if !is_object(text) {
        let code = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => ErrorCode::InvalidFrame,
            Err(_) => ErrorCode::InvalidJson,
        };
        return Err(FrameError { code, message: "a frame is a JSON object".into(), request_id: None });
    }
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() { ErrorCode::InvalidFrame } else { ErrorCode::InvalidJson };
        FrameError { code, message: e.to_string(), request_id: None }
    })?;
    let rid = request_id(&raw)?;
    let err = |code, message: String| FrameError { code, message, request_id: rid.clone() };
    let data = raw.data.map(|d| d.get()).unwrap_or("{}");
    let req = parse_request(&raw.kind, data).map_err(|(code, message)| err(code, message))?;
    Ok((rid, req))
}

/// Interprets the payload `data` (JSON text) of the event `kind`: the same
/// rules for every client protocol. The error is a code and a message.
pub fn parse_request(kind: &str, data: &str) -> Result<ClientRequest, (ErrorCode, String)> {
    fn payload<'de, T: Deserialize<'de>>(data: &'de str) -> Result<T, String> {
        if !is_object(data) {
            return Err("data must be a JSON object".into());
        }
        serde_json::from_str(data).map_err(|e| e.to_string())
    }
    let bad = |m: String| (ErrorCode::InvalidPayload, m);
    let req = match kind {
        "send_message" => {
            let m: SendMessage = payload(data).map_err(|m| (ErrorCode::InvalidPayload, m))?;
            check_content(&m.content).map_err(bad)?;
            mentioned(&m.content, &m.mentions).map_err(bad)?;
            if let Some(c) = &m.client_msg_id
                && (c.is_empty() || !plain_key(c, MAX_CLIENT_MSG_ID))
            {
                return Err((
                    ErrorCode::InvalidPayload,
                    format!("clientMsgId must be 1..={MAX_CLIENT_MSG_ID} bytes without control characters"),
                ));
            }
            if let Err(e) = crate::ids::RoomRef::from_fields(m.conversation_id.as_deref(), m.group_id.as_deref()) {
                return Err((ErrorCode::InvalidPayload, e.into()));
            }
            if m.attachments.len() > MAX_ATTACHMENTS {
                return Err((ErrorCode::InvalidPayload, format!("at most {MAX_ATTACHMENTS} attachments")));
            }
            ClientRequest::SendMessage(m)
        }
        "join_conversation" => ClientRequest::JoinConversation(payload(data).map_err(bad)?),
        "leave_conversation" => ClientRequest::LeaveConversation(payload(data).map_err(bad)?),
        "join_group" => ClientRequest::JoinGroup(payload(data).map_err(bad)?),
        "leave_group" => ClientRequest::LeaveGroup(payload(data).map_err(bad)?),
        "typing" => {
            let t: Typing = payload(data).map_err(bad)?;
            crate::ids::RoomRef::from_fields(t.conversation_id.as_deref(), t.group_id.as_deref())
                .map_err(|e| bad(e.into()))?;
            ClientRequest::Typing(t)
        }
        "mark_as_read" => ClientRequest::MarkAsRead(payload(data).map_err(bad)?),
        "file_upload" => {
            return Err(bad(
                "file_upload carries a file: on /ws a binary message, on Socket.IO a binary argument".into()
            ));
        }
        "delete_message" => ClientRequest::DeleteMessage(payload(data).map_err(bad)?),
        "edit_message" => {
            let e: EditMessage = payload(data).map_err(bad)?;
            check_content(&e.content).map_err(bad)?;
            ClientRequest::EditMessage(e)
        }
        "add_reaction" | "remove_reaction" => {
            let r: ReactionRef = payload(data).map_err(bad)?;
            check_emoji(&r.emoji).map_err(bad)?;
            if kind == "add_reaction" { ClientRequest::AddReaction(r) } else { ClientRequest::RemoveReaction(r) }
        }
        "pin_message" => ClientRequest::PinMessage(payload(data).map_err(bad)?),
        "unpin_message" => ClientRequest::UnpinMessage(payload(data).map_err(bad)?),
        other => {
            let shown: String = other.chars().take(64).collect();
            return Err((
                ErrorCode::UnknownEvent,
                format!("unknown event `{shown}`; one of {}", CLIENT_EVENTS.join(", ")),
            ));
        }
    };
    Ok(req)
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
    fn parses_the_other_events() {
        let ok = |t: &str| parse(t).map(|(_, r)| format!("{r:?}")).unwrap();
        assert!(ok(r#"{"type":"send_message","data":{"groupId":"g","content":"hi"}}"#).contains("group_id: Some"));
        assert!(
            ok(r#"{"type":"typing","data":{"groupId":"g","isTyping":true,"userId":"ignored"}}"#).starts_with("Typing")
        );
        assert!(ok(r#"{"type":"mark_as_read","data":{"messageId":"m"}}"#).starts_with("MarkAsRead"));
        assert!(ok(r#"{"type":"delete_message","data":{"messageId":"m"}}"#).starts_with("DeleteMessage"));
        assert!(ok(r#"{"type":"join_group","data":{"groupId":"g"}}"#).starts_with("JoinGroup"));
        assert!(ok(r#"{"type":"edit_message","data":{"messageId":"m","content":"x"}}"#).starts_with("EditMessage"));
        assert!(ok(r#"{"type":"add_reaction","data":{"messageId":"m","emoji":"👍🏽"}}"#).starts_with("AddReaction"));
        assert!(
            ok(r#"{"type":"remove_reaction","data":{"messageId":"m","emoji":":ok:"}}"#).starts_with("RemoveReaction")
        );
        assert!(ok(r#"{"type":"pin_message","data":{"messageId":"m"}}"#).starts_with("PinMessage"));
        assert!(ok(r#"{"type":"unpin_message","data":{"messageId":"m"}}"#).starts_with("UnpinMessage"));
        for bad in [
            r#"{"type":"edit_message","data":{"messageId":"m","content":" "}}"#,
            r#"{"type":"add_reaction","data":{"messageId":"m","emoji":""}}"#,
            r#"{"type":"add_reaction","data":{"messageId":"m","emoji":"a b"}}"#,
            r#"{"type":"remove_reaction","data":{"messageId":"m"}}"#,
        ] {
            assert_eq!(parse(bad).unwrap_err().code, ErrorCode::InvalidPayload, "{bad}");
        }
        let long = format!(r#"{{"type":"add_reaction","data":{{"messageId":"m","emoji":"{}"}}}}"#, "x".repeat(65));
        assert_eq!(parse(&long).unwrap_err().code, ErrorCode::InvalidPayload);
        assert!(ok(r#"{"type":"leave_group","data":{"groupId":"g"}}"#).starts_with("LeaveGroup"));
        let both = r#"{"type":"send_message","data":{"groupId":"g","conversationId":"c","content":"hi"}}"#;
        assert_eq!(parse(both).unwrap_err().code, ErrorCode::InvalidPayload);
        assert_eq!(parse(r#"{"type":"typing","data":{"isTyping":true}}"#).unwrap_err().code, ErrorCode::InvalidPayload);
        assert_eq!(parse(r#"{"type":"typing","data":{"groupId":"g"}}"#).unwrap_err().code, ErrorCode::InvalidPayload);
    }

    #[test]
    fn mentions_come_from_the_list_and_the_text_each_once() {
        let (a, b) = ("64b7f0c2a1b2c3d4e5f60718", "64b7f0c2a1b2c3d4e5f60719");
        let text = format!("hi <@{b}> and <@{a}>, <@{b}> again; <@nobody> <@{a}");
        let got: Vec<String> = mentioned(&text, &[a.to_string()]).unwrap().iter().map(|u| u.hex()).collect();
        assert_eq!(got, [a, b]);
        assert!(mentioned("x", &["nope".into()]).is_err());
        let many: String = (0..51).map(|i| format!("<@{i:024x}>")).collect();
        assert!(mentioned(&many, &[]).is_err());
        assert_eq!(mentioned("<@", &[]).unwrap(), vec![]);
    }

    #[test]
    fn parses_binary_uploads() {
        let header =
            br#"{"type":"file_upload","requestId":"u1","data":{"filename":"a.png","type":"image/png","groupId":"g"}}"#;
        let mut msg = (header.len() as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(header);
        msg.extend_from_slice(b"BYTES");
        let (rid, up, bytes) = parse_upload(&msg).unwrap();
        assert_eq!((rid.as_deref(), up.filename.as_str(), bytes), (Some("u1"), "a.png", &b"BYTES"[..]));
        assert_eq!(parse_upload(&[0, 0]).unwrap_err().code, ErrorCode::InvalidFrame);
        assert_eq!(parse_upload(&[0, 0, 0, 200, b'{']).unwrap_err().code, ErrorCode::InvalidFrame);
        let mut truncated = 9u32.to_be_bytes().to_vec();
        truncated.extend_from_slice(br#"{"type":1"#);
        assert!(parse_upload(&truncated).is_err());
        let with = |data: &str| {
            let header = format!(r#"{{"type":"file_upload","data":{data}}}"#);
            let mut msg = (header.len() as u32).to_be_bytes().to_vec();
            msg.extend_from_slice(header.as_bytes());
            msg.push(1);
            parse_upload(&msg).map(|(_, up, _)| up)
        };
        // Without a room (as the module's front end sends it): the uploader's.
        let up = with(r#"{"filename":"a.png","type":"image/png"}"#).unwrap();
        assert_eq!((up.conversation_id, up.group_id), (None, None));
        let both = with(r#"{"filename":"a.png","type":"image/png","conversationId":"c","groupId":"g"}"#);
        assert_eq!(both.unwrap_err().code, ErrorCode::InvalidPayload);
        assert_eq!(with(r#"{"filename":"","type":"image/png"}"#).unwrap_err().code, ErrorCode::InvalidPayload);
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
