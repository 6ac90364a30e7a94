//! `/api/chat/attachments`: upload (raw body or multipart, streamed, bound
//! by `MAX_FILE_SIZE`) and download (members of the room only).

use crate::core::attachments;
use crate::core::chat;
use crate::error::ChatError;
use crate::query::param;
use crate::realtime::EdgeState;
use crate::token::AuthUser;
use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use natter_shared::model::AttachmentView;
use natter_shared::v1::server::{ErrorReply, PendingReply};
use std::sync::Arc;

type St = State<Arc<EdgeState>>;

/// What a multipart upload may carry besides the file.
const MULTIPART_OVERHEAD: u64 = 64 * 1024;
/// Longest text field of a multipart upload (an id or a content type).
const MAX_FIELD_BYTES: usize = 1024;

/// A text field of a multipart upload, refused past `MAX_FIELD_BYTES`
/// before more of it is read.
async fn small_field(mut field: axum::extract::multipart::Field<'_>) -> Result<String, ChatError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        if buf.len() + chunk.len() > MAX_FIELD_BYTES {
            return Err(ChatError::InvalidPayload(format!("form fields are limited to {MAX_FIELD_BYTES} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| ChatError::InvalidPayload("a form field is not UTF-8".into()))
}

/// A multipart body that cannot be read: too large (past the file limit
/// plus `MULTIPART_OVERHEAD`) or malformed.
fn multipart_error(e: axum::extract::multipart::MultipartError) -> ChatError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ChatError::Upload(natter_shared::v1::error::ErrorCode::FileTooLarge, "the upload is too large".into())
    } else {
        ChatError::InvalidPayload(e.body_text())
    }
}

/// `POST /api/chat/attachments`. Raw body: `?conversationId=|groupId=`
/// (optional), `filename=`, and `type=` (or the `Content-Type`). Multipart:
/// the fields `conversationId`/`groupId` (optional) and `type` (optional)
/// before the `file` part, whose file name and content type are used.
#[utoipa::path(
    post,
    path = "/api/chat/attachments",
    tag = "attachments",
    summary = "Upload a file: multipart (fields conversationId or groupId, type, then file) or a raw body",
    params(("conversationId" = Option<String>, Query), ("groupId" = Option<String>, Query), ("filename" = Option<String>, Query, description = "raw body: required"), ("type" = Option<String>, Query)),
    request_body(content = Vec<u8>, content_type = "multipart/form-data"),
    responses((status = 201, body = AttachmentView), (status = 202, description = "staged, not checked yet", body = PendingReply), (status = 413, description = "file_too_large", body = ErrorReply), (status = 422, description = "the file was refused (its code)", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn upload(
    State(st): St,
    AuthUser(who): AuthUser,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<(StatusCode, Json<AttachmentView>), ChatError> {
    let limit = st.config.max_file_size;
    let declared_len =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let multipart = content_type.starts_with("multipart/form-data");
    // Refused before a byte is read when the length says it is too big
    // (a multipart envelope adds a little, allowed for).
    if let Some(n) = declared_len
        && n > limit + if multipart { MULTIPART_OVERHEAD } else { 0 }
    {
        return Err(ChatError::Upload(
            natter_shared::v1::error::ErrorCode::FileTooLarge,
            format!("files are limited to {limit} bytes"),
        ));
    }
    let staged = if multipart {
        // The whole body is bounded as it is read (a chunked body declares
        // no length): the file plus a little for the envelope and fields.
        let req = req.map(|b| Body::new(http_body_util::Limited::new(b, (limit + MULTIPART_OVERHEAD) as usize)));
        let mut form = Multipart::from_request(req, &st).await.map_err(|e| ChatError::InvalidPayload(e.body_text()))?;
        let (mut conv, mut group, mut kind) =
            (param(q.as_deref(), "conversationId"), param(q.as_deref(), "groupId"), None);
        loop {
            let field = form.next_field().await.map_err(multipart_error)?;
            let Some(field) = field else {
                return Err(ChatError::InvalidPayload("no `file` part".into()));
            };
            match field.name().unwrap_or("") {
                "conversationId" => conv = Some(small_field(field).await?),
                "groupId" => group = Some(small_field(field).await?),
                "type" => kind = Some(small_field(field).await?),
                "file" => {
                    let room = chat::optional_room(conv.as_deref(), group.as_deref())?;
                    let filename = field.file_name().unwrap_or("file").to_string();
                    let declared = kind
                        .clone()
                        .or_else(|| field.content_type().map(String::from))
                        .unwrap_or_else(|| "application/octet-stream".into());
                    break attachments::upload(&st, &who, room, &filename, &declared, field.boxed(), true).await?;
                }
                _ => {}
            }
        }
    } else {
        let room = chat::optional_room(
            param(q.as_deref(), "conversationId").as_deref(),
            param(q.as_deref(), "groupId").as_deref(),
        )?;
        let filename =
            param(q.as_deref(), "filename").ok_or_else(|| ChatError::InvalidPayload("filename is required".into()))?;
        let declared = param(q.as_deref(), "type").unwrap_or(content_type);
        let body = req.into_body().into_data_stream();
        attachments::upload(&st, &who, room, &filename, &declared, body, true).await?
    };
    let record = staged.record.ok_or(ChatError::Pending { seq: staged.seq })?;
    Ok((StatusCode::CREATED, Json(AttachmentView::from(&record))))
}

async fn serve(st: &EdgeState, key: &str, name: &str, kind: &str) -> Result<Response, ChatError> {
    if !st.config.attachment_proxy {
        let url = attachments::presigned(st, key, name).await?;
        let mut resp = StatusCode::FOUND.into_response();
        let h = resp.headers_mut();
        h.insert(header::LOCATION, HeaderValue::from_str(&url).map_err(|e| ChatError::unavailable(e.to_string()))?);
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(resp);
    }
    let (len, body) = attachments::fetch(st, key).await?;
    let stream = tokio_util::io::ReaderStream::new(body.into_async_read());
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(kind).unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Some(n) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let Ok(v) = HeaderValue::from_str(&attachments::content_disposition(name)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(resp)
}

/// `GET /api/chat/attachments/:id`
#[utoipa::path(
    get,
    path = "/api/chat/attachments/{id}",
    tag = "attachments",
    summary = "Download an attachment: a redirect to a short-lived URL, or the bytes (ATTACHMENT_DOWNLOAD=proxy)",
    params(("id" = String, Path, description = "attachment id (24 hex)")),
    responses((status = 302, description = "to a presigned URL"), (status = 200, description = "the file"), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn download(State(st): St, AuthUser(who): AuthUser, Path(id): Path<String>) -> Result<Response, ChatError> {
    let a = attachments::downloadable(&st, &who, &id).await?;
    let key = a.key.clone().ok_or(ChatError::NotFound("attachment"))?;
    let aid = a.id.to_hex();
    crate::core::access::record(&st, &who, "attachment_downloaded", a.room().as_ref(), &[("attachmentId", &aid)])
        .await?;
    serve(&st, &key, &a.name, &a.kind).await
}

/// `GET /api/chat/attachments/:id/thumbnail`
#[utoipa::path(
    get,
    path = "/api/chat/attachments/{id}/thumbnail",
    tag = "attachments",
    summary = "An image attachment's thumbnail (PNG)",
    params(("id" = String, Path, description = "attachment id (24 hex)")),
    responses((status = 302, description = "to a presigned URL"), (status = 200, description = "the thumbnail"), (status = 404, description = "not_found", body = ErrorReply), (status = 400, description = "invalid_payload", body = ErrorReply), (status = 401, description = "missing, invalid or expired token", body = ErrorReply), (status = 429, description = "rate_limited", body = ErrorReply), (status = 503, description = "unavailable", body = ErrorReply)),
    security(("bearer" = []))
)]
pub async fn thumbnail(State(st): St, AuthUser(who): AuthUser, Path(id): Path<String>) -> Result<Response, ChatError> {
    let a = attachments::downloadable(&st, &who, &id).await?;
    let key = a.thumbnail_key.clone().ok_or(ChatError::NotFound("thumbnail"))?;
    let aid = a.id.to_hex();
    crate::core::access::record(&st, &who, "thumbnail_downloaded", a.room().as_ref(), &[("attachmentId", &aid)])
        .await?;
    serve(&st, &key, &format!("{}.thumb.png", a.name), "image/png").await
}
