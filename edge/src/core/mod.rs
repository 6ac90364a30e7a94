//! The protocol-independent core: who may do what, and turning requests
//! into commands on JetStream and answers from MongoDB. It knows nothing
//! of sockets, sessions or HTTP; the realtime layer and the three
//! protocols call it with a [`Core`], the state it needs and no more.
//!
//! - `chat`: authorization (membership, roles), commands (send, read,
//!   delete, conversations, groups) and waiting for their outcome;
//! - `attachments`: staging uploads and authorizing downloads;
//! - `access`: audited reads (history and audit exports);
//! - `events`: reading a room's published events back (membership changes
//!   newer than MongoDB's copy; what catch-up resends);
//! - `membership`, `recent`: caches of groups and of messages lately seen;
//! - `uploads`: per-user upload budgets on this edge;
//! - `quota`: per-user limits across edges (sends, uploads, groups);
//! - `search`: full-text search over the caller's rooms.

pub mod access;
pub mod attachments;
pub mod chat;
pub mod events;
pub mod membership;
pub mod quota;
pub mod recent;
pub mod search;
pub mod uploads;

use natter_nats::Subjects;
use natter_shared::config::EdgeConfig;
use natter_shared::store::Store;
use std::sync::Arc;

/// What the core needs: the stores it reads, the stream it writes, its
/// caches and budgets.
pub struct Core {
    pub config: EdgeConfig,
    pub store: Store,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    /// The partition count commands go out under, and whether a move to
    /// another is draining (commands are held meanwhile).
    pub partitioning: natter_nats::Partitioning,
    /// Shared with the hub, which notes the conversations it sees created.
    pub membership: Arc<membership::Membership>,
    /// Messages relayed or stored lately (shared with the hub, which
    /// notes those it relays).
    pub recent: Arc<recent::Recent>,
    /// Where uploads wait for the attachments worker.
    pub staging: async_nats::jetstream::object_store::ObjectStore,
    /// S3 client and bucket, when attachments are configured.
    pub s3: Option<(aws_sdk_s3::Client, String)>,
    /// Upload budgets per user.
    pub uploads: uploads::UploadBudgets,
    /// Per-user limits across edges.
    pub quota: quota::Quota,
}
