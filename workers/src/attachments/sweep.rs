//! Collecting uploads made outside any room that were never sent. Once
//! such an upload is older than `collect_after(UNSENT_UPLOAD_TTL)` and no
//! message carries it, the sweep publishes an `expire_upload` command (as
//! its uploader, so it is ordered with their uploads); the messages role
//! marks the record `expired`, and a later sweep deletes the bytes from S3
//! and forgets the keys. Every attachments worker sweeps; the commands are
//! deduplicated by id and applying one again changes nothing.

use futures::TryStreamExt;
use mongodb::bson::{DateTime, doc};
use natter_nats::Subjects;
use natter_shared::ids::UserId;
use natter_shared::model::AttachmentDoc;
use natter_shared::model::AttachmentStatus;
use natter_shared::store::Store;
use natter_shared::v1::command::{Command, CommandEnvelope, ExpireUploadCmd, RequestMeta};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Records looked at per sweep and kind (the rest wait for the next).
const PER_SWEEP: i64 = 100;

pub struct Sweep {
    pub store: Store,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    /// Nothing is collected while a move to another partition count drains.
    pub partitioning: natter_nats::Partitioning,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    /// How old an unsent upload is when it is collected.
    pub after: Duration,
}

impl Sweep {
    /// Sweeps every `after / 4` (at least once a second, at most every ten
    /// minutes) until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let every = (self.after / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if self.partitioning.draining() {
                continue;
            }
            if let Err(e) = self.expire().await {
                tracing::warn!(error = %e, "sweep of unsent uploads failed; next time");
            }
            if let Err(e) = self.purge().await {
                tracing::warn!(error = %e, "purge of expired uploads failed; next time");
            }
        }
    }

    /// Asks for the collection of unsent uploads past their time.
    async fn expire(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let before = DateTime::from_millis(DateTime::now().timestamp_millis() - self.after.as_millis() as i64);
        // Those found sent are marked, so they never fill a sweep again.
        let filter = doc! {
            "status": AttachmentStatus::Accepted.as_str(), "uploadedAt": {"$lt": before}, "sent": {"$ne": true},
            "conversationId": {"$exists": false}, "groupId": {"$exists": false},
        };
        let old: Vec<AttachmentDoc> = self
            .store
            .attachments()
            .find(filter)
            .sort(doc! {"uploadedAt": 1})
            .limit(PER_SWEEP)
            .await?
            .try_collect()
            .await?;
        for a in old {
            let id = a.id.to_hex();
            if self.carried(&id).await? {
                self.store.attachments().update_one(doc! {"_id": a.id}, doc! {"$set": {"sent": true}}).await?;
                continue;
            }
            let env = CommandEnvelope {
                v: natter_shared::v1::VERSION,
                actor: UserId(a.uploader_id),
                roles: vec![],
                reply: None,
                meta: Some(RequestMeta { via: "worker".into(), ..Default::default() }),
                command: Command::ExpireUpload(ExpireUploadCmd { attachment_id: a.id.into() }),
            };
            let route = env.route()?;
            let subject = self.subjects.routed_command(&route, env.command.action());
            let body = serde_json::to_vec(&env)?;
            natter_nats::publish::command(&self.js, subject, &format!("expire:{id}"), body.into()).await?;
            tracing::info!(attachment = %id, "unsent upload collected");
        }
        Ok(())
    }

    /// Whether a message carries the attachment `id`.
    async fn carried(&self, id: &str) -> Result<bool, mongodb::error::Error> {
        Ok(self.store.messages().find_one(doc! {"attachments.id": id}).await?.is_some())
    }

    /// Deletes the bytes of expired uploads, then forgets their keys.
    async fn purge(&self) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let filter = doc! {"status": AttachmentStatus::Expired.as_str(), "key": {"$exists": true}};
        let expired: Vec<AttachmentDoc> =
            self.store.attachments().find(filter).limit(PER_SWEEP).await?.try_collect().await?;
        for a in expired {
            if self.carried(&a.id.to_hex()).await? {
                // Sent after all (a room's partition far behind): the bytes
                // stay, for an operator to look at.
                tracing::error!(attachment = %a.id, "an expired upload is carried by a message; bytes kept");
                continue;
            }
            for key in a.key.iter().chain(a.thumbnail_key.iter()) {
                self.s3.delete_object().bucket(&self.bucket).key(key).send().await?;
            }
            self.store
                .attachments()
                .update_one(
                    doc! {"_id": a.id, "status": AttachmentStatus::Expired.as_str()},
                    doc! {"$unset": {"key": "", "thumbnailKey": ""}},
                )
                .await?;
        }
        Ok(())
    }
}
