//! Stable error codes. The same code is used on WebSocket (`error` frames) and
//! REST (`{"error":{"code":..}}` bodies); `docs/protocol.md` lists them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    InvalidJson,
    /// Valid JSON, but not a frame: not an object, no `type`, binary frame.
    InvalidFrame,
    /// `type` names no event the server knows.
    UnknownEvent,
    /// A field is missing, has the wrong type or an invalid value.
    InvalidPayload,
    /// The caller is not a participant or member of the room.
    NotAMember,
    /// The caller lacks the role or permission.
    Forbidden,
    /// The thing asked for does not exist (or is not visible to the caller).
    NotFound,
    /// Too many requests; slow down.
    RateLimited,
    /// No token was given.
    MissingToken,
    /// The token is malformed, badly signed, uses another algorithm, or
    /// lacks `exp`.
    InvalidToken,
    /// The token has expired.
    TokenExpired,
    /// The token's `id`/`sub` is not a valid user id.
    InvalidUserId,
    /// The `Origin` of a WebSocket handshake is not an allowed front end.
    OriginNotAllowed,
    /// A dependency (NATS, MongoDB) is unavailable; retry later.
    Unavailable,
    /// The command was stored but not applied within the wait; it will be.
    Pending,
    /// A worker refused the command.
    Refused,
    /// The file is over `MAX_FILE_SIZE`.
    FileTooLarge,
    /// The file is empty.
    EmptyFile,
    /// The bytes are not what the declared type says.
    ContentMismatch,
    /// The content type is not on the allow-list.
    TypeNotAllowed,
    /// The content type cannot be recognised from the bytes.
    UnknownType,
    /// The staged upload expired before it was processed.
    StagingExpired,
    /// A bound was reached: distinct reactions on a message, pins in a
    /// room, edits of a message.
    LimitExceeded,
    /// A bug on our side.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::InvalidUserId => "invalid_user_id",
            ErrorCode::OriginNotAllowed => "origin_not_allowed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Pending => "pending",
            ErrorCode::Refused => "refused",
            ErrorCode::FileTooLarge => "file_too_large",
            ErrorCode::EmptyFile => "empty_file",
            ErrorCode::ContentMismatch => "content_mismatch",
            ErrorCode::TypeNotAllowed => "type_not_allowed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::StagingExpired => "staging_expired",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The body of an error, on any transport.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorCode {
    /// The code named by its wire string (for codes recorded as text).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}
