//! Writing an attachment to S3: one `PutObject` for small files, a
//! multipart upload (aborted on failure) for large ones. Reads the staged
//! bytes once, in parts, so memory stays bounded by the part size (images
//! are kept whole for their thumbnail; they are small).

use crate::handler::ApplyError;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Files above this go multipart.
pub const MULTIPART_ABOVE: u64 = 8 * 1024 * 1024;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
pub const PART: usize = 5 * 1024 * 1024;

pub struct Stored {
    pub size: u64,
    /// The whole file, when asked to keep it (images, for the thumbnail).
    pub image: Option<Vec<u8>>,
}

fn s3err<E: std::error::Error>(what: &str, e: E) -> ApplyError {
    ApplyError::transient(format!("S3 {what}: {}", DisplayErrorContext(e)))
}

pub async fn put(
    client: &Client,
    bucket: &str,
    key: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(), ApplyError> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| s3err("put", e))?;
    Ok(())
}

/// Reads up to `PART` bytes.
async fn part<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ApplyError> {
    let mut buf = Vec::with_capacity(PART);
    r.take(PART as u64).read_to_end(&mut buf).await.map_err(|e| ApplyError::transient(format!("staging read: {e}")))?;
    Ok(buf)
}

pub async fn upload<R: AsyncRead + Unpin>(
    client: &Client,
    bucket: &str,
    key: &str,
    content_type: &str,
    size: u64,
    mut body: R,
    keep: bool,
) -> Result<Stored, ApplyError> {
    if size <= MULTIPART_ABOVE {
        let mut all = Vec::with_capacity(size as usize);
        body.read_to_end(&mut all).await.map_err(|e| ApplyError::transient(format!("staging read: {e}")))?;
        let n = all.len() as u64;
        let image = keep.then(|| all.clone());
        put(client, bucket, key, content_type, all).await?;
        return Ok(Stored { size: n, image });
    }
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type(content_type)
        .send()
        .await
        .map_err(|e| s3err("create multipart", e))?;
    let upload_id = created.upload_id().unwrap_or_default().to_string();
    let result = async {
        let mut parts = Vec::new();
        let mut total = 0u64;
        let mut kept = keep.then(Vec::new);
        for number in 1.. {
            let chunk = part(&mut body).await?;
            if chunk.is_empty() {
                break;
            }
            total += chunk.len() as u64;
            if let Some(k) = kept.as_mut() {
                k.extend_from_slice(&chunk);
            }
            let done = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .part_number(number)
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| s3err("upload part", e))?;
            parts.push(CompletedPart::builder().part_number(number).set_e_tag(done.e_tag().map(String::from)).build());
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| s3err("complete multipart", e))?;
        Ok(Stored { size: total, image: kept })
    }
    .await;
    if result.is_err() {
        let _ = client.abort_multipart_upload().bucket(bucket).key(key).upload_id(&upload_id).send().await;
    }
    result
}
