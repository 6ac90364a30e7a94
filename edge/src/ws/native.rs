//! The native protocol v1 on top of a [`Session`]: frames in, `ack` or
//! `error` (with the frame's `requestId`) out.

use crate::error::ChatError;
use crate::realtime::session::{Next, Session};
use crate::transport::{self, Message};
use natter_shared::v1::client;
use natter_shared::v1::error::ErrorCode;
use natter_shared::v1::server::{error_text, to_text};

pub struct Native(pub Session);

impl Native {
    async fn refuse(&mut self, rid: Option<&str>, code: ErrorCode, msg: impl Into<String>) -> Next {
        self.0.reply(error_text(rid, code, msg));
        self.0.strike()
    }

    async fn answer(&mut self, rid: Option<&str>, result: Result<natter_shared::v1::server::Ack, ChatError>) -> Next {
        match result {
            Ok(data) => {
                self.0.reply(to_text("ack", rid, data));
                Next::Continue
            }
            Err(e) => {
                let msg = e.public_message();
                self.refuse(rid, e.code(), msg).await
            }
        }
    }

    /// A binary message: a `file_upload` (`[u32 header length][JSON
    /// header][file bytes]`).
    pub async fn binary(&mut self, msg: Vec<u8>) -> Next {
        if !self.0.admit() {
            return self.refuse(None, ErrorCode::RateLimited, "too many requests").await;
        }
        let (rid, up, bytes) = match client::parse_upload(&msg) {
            Ok((rid, up, bytes)) => (rid, up, bytes::Bytes::copy_from_slice(bytes)),
            Err(e) => return self.refuse(e.request_id.as_deref(), e.code, e.message).await,
        };
        let result = self.0.upload(rid.as_deref(), up, bytes).await;
        self.answer(rid.as_deref(), result).await
    }

    pub async fn text(&mut self, text: &str) -> Next {
        if !self.0.admit() {
            return self.refuse(None, ErrorCode::RateLimited, "too many requests").await;
        }
        let (rid, req) = match client::parse(text) {
            Ok(x) => x,
            Err(e) => return self.refuse(e.request_id.as_deref(), e.code, e.message).await,
        };
        let result = self.0.request(rid.as_deref(), req).await;
        self.answer(rid.as_deref(), result).await
    }
}

impl transport::Handler for Native {
    async fn on(&mut self, m: Message) -> Next {
        match m {
            Message::Text(t) => self.text(&t).await,
            Message::Binary(b) => self.binary(b).await,
        }
    }
}
