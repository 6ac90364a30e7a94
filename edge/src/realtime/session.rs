//! One authenticated client, whatever protocol it speaks (native `/ws` or
//! Socket.IO): opening (its own subject, presence), every client request
//! turned into the same chat operations and the data its ack carries, the
//! request rate and abuse limits, and closing. The protocols only decode
//! frames into [`ClientRequest`]s and encode answers.

use crate::core::chat;
use crate::error::ChatError;
use crate::rate::Bucket;
use crate::realtime::EdgeState;
use crate::realtime::hub::{ConnId, Outbound, Sink};
use crate::realtime::limits::{CATCHUP_BURST, CATCHUP_PER_SEC, MAX_STRIKES, close};
use crate::realtime::typing::TypingState;
use natter_shared::auth::Identity;
use natter_shared::ids::{RoomKind, RoomRef};
use natter_shared::v1::client::{ClientRequest, FileUpload, MessageRef, ReactionRef};
use natter_shared::v1::command::{RequestMeta, RoomFields};
use natter_shared::v1::server::{Ack, CatchUpReport, JoinAck, ReceiptAck, SendAck, UploadAck};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A new connection id, unique within this edge.
pub fn next_conn() -> ConnId {
    NEXT_CONN.fetch_add(1, Ordering::Relaxed)
}

/// What the reader should do after a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Close with this WebSocket close code and reason.
    Close(u16, &'static str),
}

/// Ends what a session started: typing, subscriptions, presence.
pub struct Closer {
    st: Arc<EdgeState>,
    who: Identity,
    conn: ConnId,
    followed: Arc<Mutex<HashSet<String>>>,
    typing: Arc<TypingState>,
    /// The protocol, for the connections gauge.
    via: String,
}

/// A session's cleanup that runs however the task holding it ends: by
/// `close`, or when it is dropped (the task panicked or was aborted), in a
/// task of its own. Presence, the hub's subscriptions and typing state are
/// never left behind by a connection that is gone.
pub struct CloseOnDrop(Option<Closer>);

impl CloseOnDrop {
    pub fn new(closer: Closer) -> Self {
        CloseOnDrop(Some(closer))
    }

    pub async fn close(mut self) {
        if let Some(c) = self.0.take() {
            c.close().await;
        }
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // Outside a runtime (the edge is gone) there is nothing to clean.
        if let Some(c) = self.0.take()
            && tokio::runtime::Handle::try_current().is_ok()
        {
            let tasks = c.st.lifecycle.clone();
            tasks.spawn(c.close());
        }
    }
}

impl Closer {
    pub async fn close(self) {
        self.typing.stop_all(&self.st, &self.who).await;
        let subjects: Vec<String> = self.followed.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect();
        for s in subjects {
            self.st.hub.unfollow(&s, self.conn).await;
        }
        self.st.presence.disconnect(self.who.user, self.conn).await;
        metrics::gauge!("natter_connections", "protocol" => self.via).decrement(1);
    }
}

pub struct Session {
    pub st: Arc<EdgeState>,
    pub who: Identity,
    pub sink: Sink,
    typing: Arc<TypingState>,
    /// The handshake's metadata; each request adds its id.
    meta: RequestMeta,
    bucket: Bucket,
    /// Joins with catch-up (each reads the events stream) left.
    catchups: Bucket,
    strikes: u32,
}

impl Session {
    /// Opens the session: the connection follows the user's own subject
    /// (receipts for their messages, membership changes, refusals) and
    /// counts for presence. Events and replies go to `tx`.
    pub async fn open(
        st: Arc<EdgeState>,
        who: Identity,
        meta: RequestMeta,
        conn: ConnId,
        tx: mpsc::Sender<Outbound>,
        overflow: CancellationToken,
    ) -> Session {
        let followed = Arc::new(Mutex::new(HashSet::new()));
        let sink = Sink { conn, user: who.user, tx, overflow, followed };
        let own = st.subjects.user_events(&who.user.hex());
        if let Err(e) = st.hub.follow(&own, sink.clone()).await {
            tracing::warn!(error = %e, "cannot follow the user's subject");
        }
        st.presence.connect(&sink).await;
        metrics::gauge!("natter_connections", "protocol" => meta.via.clone()).increment(1);
        let bucket = Bucket::new(st.config.ws_rate_per_sec);
        let catchups = Bucket::with_burst(CATCHUP_PER_SEC, CATCHUP_BURST);
        Session { st, who, sink, typing: Arc::new(TypingState::default()), meta, bucket, catchups, strikes: 0 }
    }

    /// What ends the session, held apart so that the session can be
    /// dropped with the task that reads for it.
    pub fn closer(&self) -> Closer {
        Closer {
            st: self.st.clone(),
            who: self.who.clone(),
            conn: self.sink.conn,
            followed: self.sink.followed.clone(),
            typing: self.typing.clone(),
            via: self.meta.via.clone(),
        }
    }

    /// Queues a reply, already encoded in the connection's protocol. Never
    /// waits: a client whose queue is full is not reading what it asked
    /// for, and is closed as a slow consumer (it reconnects and catches up).
    pub fn reply(&self, text: String) {
        self.sink.offer(Outbound::Reply(text));
    }

    /// Takes a token from the request rate bucket.
    pub fn admit(&mut self) -> bool {
        let ok = self.bucket.take();
        if !ok {
            metrics::counter!("natter_rate_limited_total", "scope" => "connection").increment(1);
        }
        ok
    }

    /// Counts a refused request; too many close the connection.
    pub fn strike(&mut self) -> Next {
        self.strikes += 1;
        if self.strikes > MAX_STRIKES {
            Next::Close(close::POLICY_VIOLATION, "too many invalid or rate-limited requests")
        } else {
            Next::Continue
        }
    }

    fn meta(&self, rid: Option<&str>) -> RequestMeta {
        let trace_id = Some(natter_shared::v1::command::new_trace_id());
        RequestMeta { request_id: rid.map(str::to_string), trace_id, ..self.meta.clone() }
    }

    /// Applies one request; the answer is the data its ack carries.
    pub async fn request(&mut self, rid: Option<&str>, req: ClientRequest) -> Result<Ack, ChatError> {
        let meta = self.meta(rid);
        let name = req.name();
        let span = tracing::info_span!("request", trace_id = meta.trace_id.as_deref().unwrap_or(""), request = name);
        // Boxed: a connection's reader holds this future only while a
        // request runs, not the space of the largest one all its life.
        let answer =
            Box::pin(tracing::Instrument::instrument(crate::meta::scope(meta, self.dispatch(req)), span)).await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        metrics::counter!("natter_requests_total", "request" => name, "outcome" => outcome).increment(1);
        answer
    }

    /// A `file_upload`: staged, then a command; acked once staged, the
    /// worker's verdict comes as `file_upload_response`.
    pub async fn upload(&mut self, rid: Option<&str>, up: FileUpload, bytes: bytes::Bytes) -> Result<Ack, ChatError> {
        let meta = self.meta(rid);
        // Boxed, as a request is.
        Box::pin(crate::meta::scope(meta, async {
            let room = chat::optional_room(up.conversation_id.as_deref(), up.group_id.as_deref())?;
            let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
            let staged = crate::core::attachments::upload(
                &self.st,
                &self.who,
                room.clone(),
                &up.filename,
                &up.kind,
                body,
                false,
            )
            .await?;
            Ok(Ack::Staged(UploadAck {
                attachment_id: staged.id,
                seq: staged.seq,
                room: RoomFields::of_optional(room.as_ref()),
            }))
        }))
        .await
    }

    /// Follows the room; with `last_seq`, first sends what the client
    /// missed after it (see `catchup`), and says how that went in the ack.
    /// Membership is checked, then confirmed once the room is followed
    /// (see [`chat::confirm_member`]), so that a removal racing the join
    /// cannot leave the socket following the room.
    async fn join(&mut self, kind: RoomKind, id: &str, last_seq: Option<u64>) -> Result<Ack, ChatError> {
        let (room, _) = chat::room(kind, id)?;
        let since = chat::require_member_as_of(&self.st, &self.who, &room).await?;
        let mut data = JoinAck { room: RoomFields::of(&room), catch_up: None };
        let confirm = chat::confirm_member(&self.st, self.who.user, &room, since);
        match last_seq {
            Some(seq) if self.catchups.take() => {
                let caught = crate::realtime::catchup::follow(&self.st, &self.sink, &room, seq, confirm).await?;
                data.catch_up = Some(match caught {
                    crate::realtime::catchup::CatchUp::Complete(n) => {
                        CatchUpReport { last_seq: seq, events: Some(n), complete: true, reason: None }
                    }
                    crate::realtime::catchup::CatchUp::Resync(reason) => {
                        CatchUpReport { last_seq: seq, events: None, complete: false, reason: Some(reason.into()) }
                    }
                });
            }
            _ => {
                let subject = self.st.hub.room_subject(&room);
                self.st.hub.follow(&subject, self.sink.clone()).await.map_err(ChatError::unavailable)?;
                match confirm.await {
                    Ok(()) => {}
                    Err(ChatError::NotAMember) => {
                        self.st.hub.unfollow(&subject, self.sink.conn).await;
                        return Err(ChatError::NotAMember);
                    }
                    // Not known now (a dependency away): the client asks again;
                    // a revoke still cuts the socket off in stream order.
                    Err(e) => return Err(e),
                }
                if let Some(seq) = last_seq {
                    // Over the connection's catch-up budget: live events
                    // only, and the client refetches over REST.
                    let reason = "too many catch-ups; refetch the history";
                    crate::realtime::catchup::resync_notice(&self.sink, &room, seq, reason);
                    data.catch_up = Some(CatchUpReport {
                        last_seq: seq,
                        events: None,
                        complete: false,
                        reason: Some(reason.into()),
                    });
                }
            }
        }
        Ok(Ack::Joined(data))
    }

    async fn leave(&mut self, kind: RoomKind, id: &str) -> Result<Ack, ChatError> {
        let (room, _) = chat::room(kind, id)?;
        let subject = self.st.hub.room_subject(&room);
        self.st.hub.unfollow(&subject, self.sink.conn).await;
        self.typing.stop(&self.st, &self.who, &room).await;
        Ok(Ack::Room(RoomFields::of(&room)))
    }

    async fn dispatch(&mut self, req: ClientRequest) -> Result<Ack, ChatError> {
        match req {
            ClientRequest::SendMessage(m) => {
                let sent = chat::send_message(&self.st, &self.who, m).await?;
                Ok(Ack::Sent(SendAck {
                    message_id: sent.message_id,
                    room: RoomFields::of(&sent.room),
                    client_msg_id: sent.client_msg_id,
                    seq: sent.seq,
                    duplicate: sent.duplicate,
                }))
            }
            ClientRequest::JoinConversation(r) => {
                self.join(RoomKind::Conversation, &r.conversation_id, r.last_seq).await
            }
            ClientRequest::LeaveConversation(r) => self.leave(RoomKind::Conversation, &r.conversation_id).await,
            ClientRequest::JoinGroup(r) => self.join(RoomKind::Group, &r.group_id, r.last_seq).await,
            ClientRequest::LeaveGroup(r) => self.leave(RoomKind::Group, &r.group_id).await,
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
                Ok(Ack::Room(RoomFields::of(&room)))
            }
            ClientRequest::MarkAsRead(r) => {
                let (room, seq) = chat::mark_read(&self.st, &self.who, &r.message_id, false).await?;
                Ok(Ack::Receipt(ReceiptAck { message_id: r.message_id, seq, room: RoomFields::of(&room) }))
            }
            ClientRequest::DeleteMessage(r) => {
                let (room, seq) = chat::delete_message(&self.st, &self.who, &r.message_id, false).await?;
                Ok(Ack::Receipt(ReceiptAck { message_id: r.message_id, seq, room: RoomFields::of(&room) }))
            }
            ClientRequest::EditMessage(e) => {
                let (room, seq) = chat::edit_message(&self.st, &self.who, &e.message_id, e.content, false).await?;
                Ok(Ack::Receipt(ReceiptAck { message_id: e.message_id, seq, room: RoomFields::of(&room) }))
            }
            ClientRequest::AddReaction(r) => self.react(r, true).await,
            ClientRequest::RemoveReaction(r) => self.react(r, false).await,
            ClientRequest::PinMessage(r) => self.pin(r, true).await,
            ClientRequest::UnpinMessage(r) => self.pin(r, false).await,
        }
    }

    async fn react(&self, r: ReactionRef, add: bool) -> Result<Ack, ChatError> {
        let (room, seq) = chat::react(&self.st, &self.who, &r.message_id, r.emoji, add, false).await?;
        Ok(Ack::Receipt(ReceiptAck { message_id: r.message_id, seq, room: RoomFields::of(&room) }))
    }

    async fn pin(&self, r: MessageRef, pin: bool) -> Result<Ack, ChatError> {
        let (room, seq) = chat::pin(&self.st, &self.who, &r.message_id, pin, false).await?;
        Ok(Ack::Receipt(ReceiptAck { message_id: r.message_id, seq, room: RoomFields::of(&room) }))
    }
}
