//! One authenticated client on `/ws`: turns frames into chat operations and
//! answers each with an `ack` or an `error` carrying its `requestId`.

use super::limits::{Bucket, MAX_STRIKES};
use crate::chat;
use crate::error::ChatError;
use crate::hub::{Outbound, Sink};
use crate::state::EdgeState;
use crate::typing::TypingState;
use natter_shared::auth::Identity;
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::v1::client::{self, ClientRequest};
use natter_shared::v1::command::RoomFields;
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::server::{SendAck, error_text, to_text};
use serde_json::json;
use std::sync::Arc;

pub struct Session {
    pub st: Arc<EdgeState>,
    pub who: Identity,
    pub sink: Sink,
    pub typing: Arc<TypingState>,
    /// The handshake's metadata; each request adds its id.
    meta: natter_shared::v1::command::RequestMeta,
    bucket: Bucket,
    strikes: u32,
}

/// What the reader should do after a frame.
pub enum Next {
    Continue,
    /// Too much abuse: close with policy violation.
    Close(&'static str),
}

impl Session {
    pub fn new(
        st: Arc<EdgeState>,
        who: Identity,
        sink: Sink,
        typing: Arc<TypingState>,
        meta: natter_shared::v1::command::RequestMeta,
    ) -> Self {
        let bucket = Bucket::new(st.config.ws_rate_per_sec);
        Session { st, who, sink, typing, meta, bucket, strikes: 0 }
    }

    async fn reply(&self, text: String) {
        let _ = self.sink.tx.send(Outbound::Text(text)).await;
    }

    async fn refuse(&mut self, rid: Option<&str>, code: ErrorCode, msg: impl Into<String>) -> Next {
        self.reply(error_text(rid, code, msg)).await;
        self.strikes += 1;
        if self.strikes > MAX_STRIKES {
            Next::Close("too many invalid or rate-limited requests")
        } else {
            Next::Continue
        }
    }

    /// A binary message: a `file_upload` (`[u32 header length][JSON
    /// header][file bytes]`). Acked once staged; the worker's verdict comes
    /// as `file_upload_response`.
    pub async fn binary(&mut self, msg: Vec<u8>) -> Next {
        if !self.bucket.take() {
            return self.refuse(None, ErrorCode::RateLimited, "too many requests").await;
        }
        let (rid, up, bytes) = match client::parse_upload(&msg) {
            Ok(x) => x,
            Err(e) => return self.refuse(e.request_id.as_deref(), e.code, e.message).await,
        };
        let meta = natter_shared::v1::command::RequestMeta { request_id: rid.clone(), ..self.meta.clone() };
        let result = crate::meta::scope(meta, async {
            let raw = RoomRef::from_fields(up.conversation_id.as_deref(), up.group_id.as_deref())
                .map_err(|e| ChatError::InvalidPayload(e.into()))?;
            let (room, _) = chat::room(raw.kind, &raw.id)?;
            let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes::Bytes::copy_from_slice(bytes))]);
            let staged =
                crate::attachments::upload(&self.st, &self.who, room.clone(), &up.filename, &up.kind, body, false)
                    .await?;
            let mut data = json!({"attachmentId": staged.id, "seq": staged.seq});
            RoomFields::of(&room).merge_into(&mut data);
            Ok::<_, ChatError>(data)
        })
        .await;
        match result {
            Ok(data) => {
                self.reply(to_text("ack", rid.as_deref(), data)).await;
                Next::Continue
            }
            Err(e) => {
                let msg = e.public_message();
                self.refuse(rid.as_deref(), e.code(), msg).await
            }
        }
    }

    pub async fn text(&mut self, text: &str) -> Next {
        if !self.bucket.take() {
            return self.refuse(None, ErrorCode::RateLimited, "too many requests").await;
        }
        let (rid, req) = match client::parse(text) {
            Ok(x) => x,
            Err(e) => return self.refuse(e.request_id.as_deref(), e.code, e.message).await,
        };
        let meta = natter_shared::v1::command::RequestMeta { request_id: rid.clone(), ..self.meta.clone() };
        match crate::meta::scope(meta, self.dispatch(rid.as_deref(), req)).await {
            Ok(()) => Next::Continue,
            Err(e) => {
                let msg = e.public_message();
                self.refuse(rid.as_deref(), e.code(), msg).await
            }
        }
    }

    fn ack_room(rid: Option<&str>, room: &RoomRef) -> String {
        to_text("ack", rid, RoomFields::of(room))
    }

    async fn join(&mut self, rid: Option<&str>, kind: RoomKind, id: &str) -> Result<(), ChatError> {
        let (room, _) = chat::room(kind, id)?;
        chat::require_member(&self.st, &self.who, &room).await?;
        let subject = self.st.hub.room_subject(&room);
        self.st.hub.follow(&subject, self.sink.clone()).await.map_err(ChatError::unavailable)?;
        self.reply(Self::ack_room(rid, &room)).await;
        Ok(())
    }

    async fn leave(&mut self, rid: Option<&str>, kind: RoomKind, id: &str) -> Result<(), ChatError> {
        let (room, _) = chat::room(kind, id)?;
        let subject = self.st.hub.room_subject(&room);
        self.st.hub.unfollow(&subject, self.sink.conn).await;
        self.typing.stop(&self.st, &self.who, &room).await;
        self.reply(Self::ack_room(rid, &room)).await;
        Ok(())
    }

    async fn dispatch(&mut self, rid: Option<&str>, req: ClientRequest) -> Result<(), ChatError> {
        match req {
            ClientRequest::SendMessage(m) => {
                let sent = chat::send_message(&self.st, &self.who, m).await?;
                let fields = RoomFields::of(&sent.room);
                let ack = SendAck {
                    message_id: &sent.message_id,
                    conversation_id: fields.conversation_id.as_deref(),
                    group_id: fields.group_id.as_deref(),
                    client_msg_id: &sent.client_msg_id,
                    seq: sent.seq,
                    duplicate: sent.duplicate,
                };
                self.reply(to_text("ack", rid, ack)).await;
            }
            ClientRequest::JoinConversation(r) => self.join(rid, RoomKind::Conversation, &r.conversation_id).await?,
            ClientRequest::LeaveConversation(r) => self.leave(rid, RoomKind::Conversation, &r.conversation_id).await?,
            ClientRequest::JoinGroup(r) => self.join(rid, RoomKind::Group, &r.group_id).await?,
            ClientRequest::LeaveGroup(r) => self.leave(rid, RoomKind::Group, &r.group_id).await?,
            ClientRequest::Typing(t) => {
                let raw = RoomRef::from_fields(t.conversation_id.as_deref(), t.group_id.as_deref())
                    .map_err(|e| ChatError::InvalidPayload(e.into()))?;
                let (room, _) = chat::room(raw.kind, &raw.id)?;
                // A socket following the room was checked when it joined
                // (and is cut off when removed); others are checked now.
                let following = self.sink.followed.lock().is_ok_and(|f| f.contains(&self.st.hub.room_subject(&room)));
                if !following {
                    chat::require_member(&self.st, &self.who, &room).await?;
                }
                if t.is_typing {
                    self.typing.start(&self.st, &self.who, &room).await;
                } else {
                    self.typing.stop(&self.st, &self.who, &room).await;
                }
                self.reply(Self::ack_room(rid, &room)).await;
            }
            ClientRequest::MarkAsRead(r) => {
                let (room, seq) = chat::mark_read(&self.st, &self.who, &r.message_id, false).await?;
                let mut data = json!({"messageId": r.message_id, "seq": seq});
                RoomFields::of(&room).merge_into(&mut data);
                self.reply(to_text("ack", rid, data)).await;
            }
            ClientRequest::DeleteMessage(r) => {
                let (room, seq) = chat::delete_message(&self.st, &self.who, &r.message_id, false).await?;
                let mut data = json!({"messageId": r.message_id, "seq": seq});
                RoomFields::of(&room).merge_into(&mut data);
                self.reply(to_text("ack", rid, data)).await;
            }
        }
        Ok(())
    }
}
