//! The S3 client for attachments, built from `S3Config`: path-style
//! addressing and an explicit region, so it works against AWS, MinIO or a
//! local s3s-fs alike.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use natter_shared::config::S3Config;

pub fn client(cfg: &S3Config) -> Client {
    let creds = Credentials::new(cfg.access_key.clone(), cfg.secret_key.expose().to_string(), None, None, "natter");
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(cfg.endpoint.clone())
        .region(Region::new(cfg.region.clone()))
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    Client::from_conf(conf)
}

/// Creates the bucket unless it exists.
pub async fn ensure_bucket(client: &Client, bucket: &str) -> Result<(), String> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            // A concurrent creator may have won.
            if client.head_bucket().bucket(bucket).send().await.is_ok() {
                Ok(())
            } else {
                Err(format!("cannot create bucket {bucket}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
            }
        }
    }
}
