//! Error policy of the edge: every failure a client can cause or see is a
//! `ChatError`, which maps to exactly one wire code and one HTTP status, here
//! and nowhere else. Causes are logged, not sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use natter_shared::auth::AuthError;
use natter_shared::v1::error::{ErrorBody, ErrorCode};
use natter_shared::v1::server::{ErrorReply, PendingReply, PendingStatus};

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{0}")]
    InvalidPayload(String),
    #[error("you are not a participant of this conversation")]
    NotAMember,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Unauthorized(AuthError),
    #[error("origin not allowed")]
    OriginNotAllowed,
    /// A dependency failed; the cause is kept (and logged), not shown.
    #[error("service unavailable: {0}")]
    Unavailable(#[source] Cause),
    #[error("stored at seq {seq}, not applied yet")]
    Pending { seq: u64 },
    #[error("{0}")]
    Refused(String),
    /// An upload refused, with its stable code.
    #[error("{1}")]
    Upload(ErrorCode, String),
    #[error("too many requests; slow down")]
    RateLimited,
    /// A bound of the room or message was reached.
    #[error("{0}")]
    LimitExceeded(String),
}

/// Why a dependency failed: the error itself, or what was seen.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl ChatError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::InvalidPayload(_) => ErrorCode::InvalidPayload,
            ChatError::NotAMember => ErrorCode::NotAMember,
            ChatError::Forbidden(_) => ErrorCode::Forbidden,
            ChatError::NotFound(_) => ErrorCode::NotFound,
            ChatError::Unauthorized(e) => e.code(),
            ChatError::OriginNotAllowed => ErrorCode::OriginNotAllowed,
            ChatError::Unavailable(_) => ErrorCode::Unavailable,
            ChatError::Pending { .. } => ErrorCode::Pending,
            ChatError::Refused(_) => ErrorCode::Refused,
            ChatError::Upload(code, _) => *code,
            ChatError::RateLimited => ErrorCode::RateLimited,
            ChatError::LimitExceeded(_) => ErrorCode::LimitExceeded,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ChatError::InvalidPayload(_) => StatusCode::BAD_REQUEST,
            ChatError::NotAMember | ChatError::Forbidden(_) | ChatError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ChatError::NotFound(_) => StatusCode::NOT_FOUND,
            ChatError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ChatError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ChatError::Pending { .. } => StatusCode::ACCEPTED,
            ChatError::Refused(_) | ChatError::LimitExceeded(_) => StatusCode::CONFLICT,
            ChatError::Upload(ErrorCode::FileTooLarge, _) => StatusCode::PAYLOAD_TOO_LARGE,
            ChatError::Upload(ErrorCode::Unavailable, _) => StatusCode::SERVICE_UNAVAILABLE,
            ChatError::Upload(ErrorCode::InvalidPayload | ErrorCode::EmptyFile, _) => StatusCode::BAD_REQUEST,
            ChatError::Upload(_, _) => StatusCode::UNPROCESSABLE_ENTITY,
            ChatError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The message shown to the client; dependency failures are not detailed.
    pub fn public_message(&self) -> String {
        match self {
            ChatError::Unavailable(_) => "a dependency is unavailable; retry later".into(),
            other => other.to_string(),
        }
    }

    pub fn unavailable(e: impl Into<Cause>) -> Self {
        let e = e.into();
        tracing::warn!(error = %e, "dependency failure");
        ChatError::Unavailable(e)
    }
}

impl From<AuthError> for ChatError {
    fn from(e: AuthError) -> Self {
        ChatError::Unauthorized(e)
    }
}

impl From<mongodb::error::Error> for ChatError {
    fn from(e: mongodb::error::Error) -> Self {
        ChatError::unavailable(e)
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ChatError::Pending { seq } = self {
            return (status, Json(PendingReply { status: PendingStatus::Pending, seq })).into_response();
        }
        let mut resp =
            (status, Json(ErrorReply { error: ErrorBody { code: self.code(), message: self.public_message() } }))
                .into_response();
        if let ChatError::Unauthorized(_) = self {
            resp.headers_mut()
                .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
