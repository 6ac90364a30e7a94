//! Uploads and downloads. An upload is streamed into the staging object
//! store (never more than `MAX_FILE_SIZE` read, in chunks) and announced to
//! the attachments worker as an `upload_attachment` command; the worker
//! checks and stores it. Downloads are for members of the room only, as a
//! redirect to a short-lived presigned URL or streamed through the edge.

use crate::core::Core;
use crate::core::chat;
use crate::error::ChatError;
use async_nats::jetstream::object_store::ObjectMetadata;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use mongodb::bson::oid::ObjectId;
use natter_shared::auth::Identity;
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::model::AttachmentDoc;
use natter_shared::v1::command::{Command, RoomFields, UploadAttachmentCmd};
use natter_shared::v1::error::ErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// What the edge knows after staging: the id and the command's seq; and,
/// when it waited for the worker, the record.
pub struct Staged {
    pub id: String,
    pub seq: u64,
    pub record: Option<AttachmentDoc>,
}

fn unconfigured() -> ChatError {
    ChatError::Upload(ErrorCode::Unavailable, "attachments are not configured on this server (S3_*)".into())
}

/// Streams `body` into staging and stores the upload command. With `wait`,
/// answers once the worker has accepted or refused the file.
pub async fn upload<S, E>(
    st: &Core,
    who: &Identity,
    room: Option<RoomRef>,
    filename: &str,
    declared: &str,
    body: S,
    wait: bool,
) -> Result<Staged, ChatError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let staged = async {
        if st.s3.is_none() {
            return Err(unconfigured());
        }
        if let Some(room) = &room {
            chat::require_member(st, who, room).await?;
        }
        if filename.is_empty() || filename.len() > 1000 || declared.is_empty() || declared.len() > 200 {
            return Err(ChatError::InvalidPayload("filename and type are required".into()));
        }
        if !st.uploads.admit(who.user) {
            return Err(ChatError::RateLimited);
        }
        st.quota.take(who.user, crate::core::quota::Limit::Upload).await?;
        let limit = st.config.max_file_size;
        let oid = ObjectId::new();
        let id = oid.to_hex();
        let seen = Arc::new(AtomicU64::new(0));
        let over = Arc::new(AtomicBool::new(false));
        let (s2, o2) = (seen.clone(), over.clone());
        // Counts as it goes and fails the stream past the limit, so the staging
        // put stops reading there.
        let client_failed = Arc::new(AtomicBool::new(false));
        let c2 = client_failed.clone();
        let limited = body.map(move |chunk| {
            let chunk = chunk.map_err(|e| {
                c2.store(true, Ordering::Relaxed);
                std::io::Error::other(e.to_string())
            })?;
            if s2.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64 > limit {
                o2.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("file too large"));
            }
            Ok::<Bytes, std::io::Error>(chunk)
        });
        let mut reader = tokio_util::io::StreamReader::new(limited);
        let meta = ObjectMetadata { name: id.clone(), ..Default::default() };
        let put = st.staging.put(meta, &mut reader).await;
        if over.load(Ordering::Relaxed) {
            let _ = st.staging.delete(&id).await;
            return Err(ChatError::Upload(ErrorCode::FileTooLarge, format!("files are limited to {limit} bytes")));
        }
        st.uploads.charge(who.user, seen.load(Ordering::Relaxed));
        let info = match put {
            Ok(i) => i,
            Err(e) => {
                let _ = st.staging.delete(&id).await;
                if client_failed.load(Ordering::Relaxed) {
                    return Err(ChatError::InvalidPayload(format!("upload interrupted: {e}")));
                }
                // The staging store is full (or NATS is away): nothing the
                // client did; it may try again later.
                tracing::warn!(error = %e, "upload not staged");
                return Err(ChatError::Upload(
                    ErrorCode::Unavailable,
                    "uploads cannot be taken now; retry later".into(),
                ));
            }
        };
        if info.size == 0 {
            let _ = st.staging.delete(&id).await;
            return Err(ChatError::Upload(ErrorCode::EmptyFile, "the file is empty".into()));
        }
        let cmd = Command::UploadAttachment(UploadAttachmentCmd {
            attachment_id: oid.into(),
            room: RoomFields::of_optional(room.as_ref()),
            filename: filename.to_string(),
            declared_type: declared.to_string(),
            size: info.size as u64,
        });
        let msg_id = format!("upl:{id}");
        if !wait {
            let seq = chat::submit(st, who, cmd, &msg_id).await?;
            return Ok(Staged { id, seq, record: None });
        }
        let seq = chat::submit_and_wait(st, who, cmd, &msg_id).await?;
        let oid = chat::oid(&id, "attachmentId")?;
        let record = st.store.attachment(oid).await?.ok_or(ChatError::Pending { seq })?;
        if !record.accepted() {
            let code = record.code.as_deref().and_then(ErrorCode::parse).unwrap_or(ErrorCode::Refused);
            return Err(ChatError::Upload(code, record.reason.clone().unwrap_or_default()));
        }
        Ok(Staged { id, seq, record: Some(record) })
    }
    .await;
    let outcome = match &staged {
        Ok(_) => "staged",
        Err(e) => e.code().as_str(),
    };
    if matches!(staged, Err(ChatError::RateLimited)) {
        metrics::counter!("natter_rate_limited_total", "scope" => "upload").increment(1);
    }
    metrics::counter!("natter_uploads_total", "outcome" => outcome).increment(1);
    staged
}

/// An accepted attachment that `who` may download: a member of the room
/// it was uploaded to; for an upload made outside any room, its uploader or
/// a member of a room where a message carries it.
pub async fn downloadable(st: &Core, who: &Identity, id: &str) -> Result<AttachmentDoc, ChatError> {
    let oid = chat::oid(id, "attachmentId")?;
    let a = st.store.accepted_attachment(oid).await?.ok_or(ChatError::NotFound("attachment"))?;
    // Someone who may not download it is told it does not exist, as for
    // an id that does not: the answer tells nothing about what exists.
    let hidden = |e: ChatError| match e {
        ChatError::NotAMember => ChatError::NotFound("attachment"),
        e => e,
    };
    if let Some(room) = a.room() {
        chat::require_member(st, who, &room).await.map_err(hidden)?;
        return Ok(a);
    }
    if a.uploader_id == who.user.oid() {
        return Ok(a);
    }
    // The rooms whose messages carry it (deleted ones included: their
    // members saw it), each checked until one lets `who` in; a message
    // just received may not be written yet.
    let allowed = chat::written(|| async {
        for kind in [RoomKind::Conversation, RoomKind::Group] {
            for room_id in st.store.rooms_carrying(kind, id).await? {
                match chat::require_member(st, who, &RoomRef::new(kind, room_id)).await {
                    Ok(()) => return Ok(Some(())),
                    Err(ChatError::NotAMember) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(None)
    })
    .await?;
    allowed.map(|()| a).ok_or(ChatError::NotFound("attachment"))
}

/// A presigned GET for `key`, valid for the configured time.
/// The object is served as a download named `name` (never rendered inline
/// by the browser: uploads are user content).
pub async fn presigned(st: &Core, key: &str, name: &str) -> Result<String, ChatError> {
    let (client, bucket) = st.s3.as_ref().ok_or_else(unconfigured)?;
    let ttl = std::time::Duration::from_secs(st.config.attachment_url_ttl);
    let conf =
        aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl).map_err(|e| ChatError::unavailable(e.to_string()))?;
    let req = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .response_content_disposition(content_disposition(name))
        .presigned(conf)
        .await
        .map_err(ChatError::unavailable)?;
    Ok(req.uri().to_string())
}

/// `Content-Disposition` of a download: an attachment, named `name`
/// (RFC 5987 encoded).
pub fn content_disposition(name: &str) -> String {
    format!(
        "attachment; filename*=UTF-8''{}",
        url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
    )
}

/// The object's bytes as a stream, for proxied downloads.
pub async fn fetch(st: &Core, key: &str) -> Result<(Option<i64>, aws_sdk_s3::primitives::ByteStream), ChatError> {
    let (client, bucket) = st.s3.as_ref().ok_or_else(unconfigured)?;
    let out = client.get_object().bucket(bucket).key(key).send().await.map_err(ChatError::unavailable)?;
    Ok((out.content_length(), out.body))
}
