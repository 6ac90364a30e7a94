//! One authenticated client on `/ws`: turns frames into chat operations and
//! answers each with an `ack` or an `error` carrying its `requestId`.

use super::limits::{Bucket, MAX_STRIKES};
use crate::chat;
use crate::error::ChatError;
use crate::hub::{ConnId, Outbound, Sink};
use crate::state::EdgeState;
use natter_nats::RoomKind;
use natter_shared::auth::Identity;
use natter_shared::v1::client::{self, ClientRequest};
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::server::{RoomAck, SendAck, error_text, to_text};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

pub struct Session {
    pub st: Arc<EdgeState>,
    pub who: Identity,
    pub conn: ConnId,
    pub sink: Sink,
    /// Subjects this connection follows; shared so the connection can
    /// unfollow them even if the session task was aborted.
    pub followed: Arc<Mutex<HashSet<String>>>,
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
        conn: ConnId,
        sink: Sink,
        followed: Arc<Mutex<HashSet<String>>>,
    ) -> Self {
        let bucket = Bucket::new(st.config.ws_rate_per_sec);
        Session { st, who, conn, sink, followed, bucket, strikes: 0 }
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

    /// A binary frame: protocol v1 is text only.
    pub async fn binary(&mut self) -> Next {
        self.refuse(None, ErrorCode::InvalidFrame, "protocol v1 uses text frames").await
    }

    pub async fn text(&mut self, text: &str) -> Next {
        if !self.bucket.take() {
            return self.refuse(None, ErrorCode::RateLimited, "too many requests").await;
        }
        let (rid, req) = match client::parse(text) {
            Ok(x) => x,
            Err(e) => {
                return self.refuse(e.request_id.as_deref(), e.code, e.message).await;
            }
        };
        match self.dispatch(rid.as_deref(), req).await {
            Ok(()) => Next::Continue,
            Err(e) => {
                let msg = e.public_message();
                self.refuse(rid.as_deref(), e.code(), msg).await
            }
        }
    }

    async fn dispatch(&mut self, rid: Option<&str>, req: ClientRequest) -> Result<(), ChatError> {
        match req {
            ClientRequest::SendMessage(m) => {
                let sent = chat::send_message(&self.st, &self.who, m).await?;
                let ack = SendAck {
                    message_id: &sent.message_id,
                    conversation_id: &sent.conversation_id,
                    client_msg_id: &sent.client_msg_id,
                    seq: sent.seq,
                    duplicate: sent.duplicate,
                };
                self.reply(to_text("ack", rid, ack)).await;
            }
            ClientRequest::JoinConversation(r) => {
                let conv = chat::conversation_oid(&r.conversation_id)?;
                chat::require_participant(&self.st, &self.who, conv).await?;
                let subject = self.st.subjects.room_events(RoomKind::Conversation, &conv.to_hex());
                self.st.hub.follow(&subject, self.conn, self.sink.clone()).await.map_err(ChatError::unavailable)?;
                self.followed.lock().unwrap_or_else(|e| e.into_inner()).insert(subject);
                self.reply(to_text("ack", rid, RoomAck { conversation_id: &conv.to_hex() })).await;
            }
            ClientRequest::LeaveConversation(r) => {
                let conv = chat::conversation_oid(&r.conversation_id)?;
                let subject = self.st.subjects.room_events(RoomKind::Conversation, &conv.to_hex());
                let was = self.followed.lock().unwrap_or_else(|e| e.into_inner()).remove(&subject);
                if was {
                    self.st.hub.unfollow(&subject, self.conn).await;
                }
                self.reply(to_text("ack", rid, RoomAck { conversation_id: &conv.to_hex() })).await;
            }
        }
        Ok(())
    }
}
