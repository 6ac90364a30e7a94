//! The `attachments` role: takes a staged upload from the object store,
//! checks what it really is, stores it in S3 under a server-generated key
//! (multipart when large; a thumbnail for images), records it, drops the
//! staged copy, and tells the uploader (`file_upload_response`). Applying
//! an upload again finds its record and only repeats the answer.

pub mod check;
mod s3put;
mod sweep;
mod thumb;

use crate::handler::{ApplyError, Disposition, Done, Handler, Incoming, Publication};
use crate::runner::{self, RunnerConfig};
use crate::start::{self, StartError};
use async_nats::jetstream::object_store::{GetErrorKind, ObjectStore};
use mongodb::bson::doc;
use natter_nats::Subjects;
use natter_nats::topology::Role;
use natter_shared::config::{CoreConfig, S3Config};
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::model::{AttachmentDoc, AttachmentStatus, AttachmentView};
use natter_shared::store::Store;
use natter_shared::v1::command::{Command, CommandEnvelope, RequestMeta, UploadAttachmentCmd};
use natter_shared::v1::event::{EventFrame, EventKind, UploadRefused};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Bytes read to recognise a file.
const HEAD: usize = 8192;

pub struct AttachmentsHandler {
    store: Store,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    staging: ObjectStore,
    s3: aws_sdk_s3::Client,
    bucket: String,
}

impl AttachmentsHandler {
    pub fn new(
        store: Store,
        js: async_nats::jetstream::Context,
        subjects: Subjects,
        staging: ObjectStore,
        s3: aws_sdk_s3::Client,
        bucket: String,
    ) -> Self {
        AttachmentsHandler { store, js, subjects, staging, s3, bucket }
    }

    fn respond<T: serde::Serialize>(&self, inc: &Incoming, data: T) -> Result<Publication, ApplyError> {
        let frame = EventFrame::new(EventKind::FileUploadResponse, inc.seq, data);
        let payload = serde_json::to_vec(&frame).map_err(|e| ApplyError::transient(e.to_string()))?;
        Ok(Publication { subject: self.subjects.user_events(&inc.msg.actor.hex()), payload: payload.into() })
    }

    fn answer(&self, inc: &Incoming, doc: &AttachmentDoc) -> Result<Disposition, ApplyError> {
        let answer = if doc.accepted() {
            self.respond(inc, AttachmentView::from(doc))?
        } else {
            self.respond(inc, UploadRefused { id: doc.id.to_hex(), error: doc.reason.clone(), code: doc.code.clone() })?
        };
        Ok(Disposition::Applied(vec![answer]))
    }

    /// Publishes the fact on the upload's own route (its room, or its
    /// uploader), so it is ordered after the upload.
    async fn record_fact(&self, inc: &Incoming, record: &AttachmentDoc) -> Result<(), ApplyError> {
        let env = CommandEnvelope {
            v: natter_shared::v1::VERSION,
            actor: inc.msg.actor,
            roles: vec![],
            reply: None,
            meta: Some(RequestMeta { via: "worker".into(), ..Default::default() }),
            command: Command::RecordAttachment(record.to_fact()),
        };
        let route = env.route().map_err(ApplyError::transient)?;
        let body = serde_json::to_vec(&env).map_err(|e| ApplyError::transient(e.to_string()))?;
        let subject = self.subjects.routed_command(&route, "record_attachment");
        natter_nats::publish::command(&self.js, subject, &format!("att:{}", record.id.to_hex()), body.into())
            .await
            .map_err(|e| ApplyError::transient(format!("attachment fact: {e}")))?;
        Ok(())
    }

    async fn drop_staged(&self, name: &str) {
        if let Err(e) = self.staging.delete(name).await {
            tracing::debug!(error = %e, "staged copy already gone");
        }
    }

    async fn process(&self, inc: &Incoming, c: &UploadAttachmentCmd) -> Result<Disposition, ApplyError> {
        let id = c.attachment_id.oid();
        let room = match RoomRef::optional(c.room.conversation_id.as_deref(), c.room.group_id.as_deref()) {
            Ok(r) => r,
            Err(e) => return Ok(Disposition::Poison(e.into())),
        };
        let name = id.to_hex();
        if let Some(existing) = self.store.attachments().find_one(doc! {"_id": id}).await? {
            self.drop_staged(&name).await;
            return self.answer(inc, &existing);
        }
        let mut record = AttachmentDoc {
            id,
            conversation_id: c.room.conversation_id.clone(),
            group_id: c.room.group_id.clone(),
            uploader_id: inc.msg.actor.oid(),
            name: check::sanitize(&c.filename),
            kind: String::new(),
            declared_type: check::normalize(&c.declared_type),
            category: String::new(),
            size: c.size as i64,
            uploaded_at: inc.time,
            status: AttachmentStatus::Rejected,
            code: None,
            reason: None,
            key: None,
            thumbnail_key: None,
            seq: inc.seq as i64,
        };
        match self.staging.get(&name).await {
            Err(e) if e.kind() == GetErrorKind::NotFound => {
                record.code = Some("staging_expired".into());
                record.reason = Some("the staged upload expired before it was processed".into());
            }
            Err(e) => return Err(ApplyError::transient(format!("staging: {e}"))),
            Ok(mut obj) => {
                let mut head = Vec::with_capacity(HEAD);
                (&mut obj)
                    .take(HEAD as u64)
                    .read_to_end(&mut head)
                    .await
                    .map_err(|e| ApplyError::transient(e.to_string()))?;
                match check::inspect(&head, c.size, &c.declared_type) {
                    Err(r) => {
                        record.code = Some(r.code.into());
                        record.reason = Some(r.reason);
                    }
                    Ok((kind, category)) => {
                        let key = object_key(room.as_ref(), &inc.msg.actor.hex(), &name);
                        let rest = std::io::Cursor::new(head).chain(obj);
                        let stored =
                            s3put::upload(&self.s3, &self.bucket, &key, &kind, c.size, rest, category == "image")
                                .await?;
                        if stored.size != c.size {
                            return Err(ApplyError::transient(format!(
                                "staged {} bytes, announced {}",
                                stored.size, c.size
                            )));
                        }
                        if let Some(image) = stored.image {
                            // Decoding and scaling is CPU work: off the async threads.
                            let made = tokio::task::spawn_blocking(move || thumb::make(&image))
                                .await
                                .unwrap_or_else(|e| Err(format!("thumbnail task failed: {e}")));
                            match made {
                                Ok(png) => {
                                    let tkey = format!("{key}.thumb.png");
                                    s3put::put(&self.s3, &self.bucket, &tkey, "image/png", png).await?;
                                    record.thumbnail_key = Some(tkey);
                                }
                                Err(e) => tracing::info!(attachment = %name, error = %e, "no thumbnail"),
                            }
                        }
                        record.kind = kind;
                        record.category = category.into();
                        record.status = AttachmentStatus::Accepted;
                        record.key = Some(key);
                    }
                }
            }
        }
        // What was learned here goes on the stream first: a rebuild
        // replays it instead of the upload.
        self.record_fact(inc, &record).await?;
        crate::messages::insert_attachment(&self.store, &record).await?;
        self.drop_staged(&name).await;
        tracing::info!(attachment = %name, status = record.status.as_str(), code = ?record.code, "upload processed");
        self.answer(inc, &record)
    }
}

/// Where an attachment's bytes live: generated from ids only (the room's,
/// or the uploader's for an upload made outside any room).
pub fn object_key(room: Option<&RoomRef>, uploader: &str, id: &str) -> String {
    let (kind, owner) = match room {
        Some(r) if r.kind == RoomKind::Conversation => ("conversations", r.id.as_str()),
        Some(r) => ("groups", r.id.as_str()),
        None => ("users", uploader),
    };
    format!("attachments/{kind}/{owner}/{id}")
}

impl Handler for AttachmentsHandler {
    /// Each upload stands alone, written as it is applied.
    type State = ();
    type Writes = ();

    fn take(&self, _: &mut ()) {}

    async fn write(&self, _: ()) -> Result<(), ApplyError> {
        Ok(())
    }

    fn written(&self, _: &mut (), _: bool) {}

    const ROLE: Role = Role::ATTACHMENTS;
    type Msg = natter_shared::v1::command::CommandEnvelope;

    async fn apply(&self, _: &mut (), batch: &[Incoming], done: &mut Done) -> Result<(), ApplyError> {
        for inc in batch {
            if done.contains_key(&inc.seq) {
                continue;
            }
            let d = match &inc.msg.command {
                Command::UploadAttachment(c) => self.process(inc, c).await?,
                _ => Disposition::NotMine,
            };
            done.insert(inc.seq, d);
        }
        Ok(())
    }
}

/// Connects, applies topology and indexes, ensures the bucket, and runs the
/// role until `cancel`.
/// Connects, applies topology and indexes, ensures the bucket, and runs the
/// role (and the sweep of unsent uploads older than `collect_after`) until
/// `cancel`.
pub async fn serve_with(
    core: &CoreConfig,
    s3: &S3Config,
    collect_after: std::time::Duration,
    cfg: RunnerConfig,
    cancel: CancellationToken,
) -> Result<(), StartError> {
    let c = start::connect(core, Role::ATTACHMENTS.name(), &cfg).await?;
    let staging =
        c.js.get_object_store(c.subjects.staging_bucket()).await.map_err(|e| StartError::Nats(e.to_string()))?;
    let s3c = natter_s3::client(s3);
    natter_s3::ensure_bucket(&s3c, &s3.bucket).await.map_err(StartError::S3)?;
    let sweep = sweep::Sweep {
        store: c.store.clone(),
        js: c.js.clone(),
        subjects: c.subjects.clone(),
        partitioning: c.partitioning.clone(),
        s3: s3c.clone(),
        bucket: s3.bucket.clone(),
        after: collect_after,
    };
    let sweeping = tokio::spawn(sweep.run(cancel.clone()));
    let handler =
        Arc::new(AttachmentsHandler::new(c.store, c.js.clone(), c.subjects.clone(), staging, s3c, s3.bucket.clone()));
    let ran = runner::run(handler, c.client, c.subjects, c.partitioning, cfg, cancel.clone()).await;
    cancel.cancel();
    let _ = sweeping.await;
    ran?;
    Ok(())
}

/// [`serve_with`] with the default `UNSENT_UPLOAD_TTL`.
pub async fn serve(
    core: &CoreConfig,
    s3: &S3Config,
    cfg: RunnerConfig,
    cancel: CancellationToken,
) -> Result<(), StartError> {
    let after = natter_shared::config::collect_after(std::time::Duration::from_secs(86_400));
    serve_with(core, s3, after, cfg, cancel).await
}
