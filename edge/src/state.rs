//! What every request handler shares.

use crate::delivery::Deliveries;
use crate::hub::Hub;
use crate::membership::Membership;
use crate::presence::Presence;
use natter_nats::Subjects;
use natter_shared::auth::Jwt;
use natter_shared::config::EdgeConfig;
use natter_shared::store::Store;
use std::sync::Arc;

pub struct EdgeState {
    pub config: EdgeConfig,
    pub jwt: Jwt,
    pub store: Store,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub subjects: Subjects,
    pub hub: Arc<Hub>,
    pub membership: Membership,
    pub presence: Arc<Presence>,
    pub deliveries: Deliveries,
    /// Where uploads wait for the attachments worker.
    pub staging: async_nats::jetstream::object_store::ObjectStore,
    /// S3 client and bucket, when attachments are configured.
    pub s3: Option<(aws_sdk_s3::Client, String)>,
    /// Everything the edge spawns, drained in two rings on shutdown.
    pub lifecycle: natter_shared::shutdown::Tasks,
    /// Typing publishes per user and room.
    pub typing: crate::limits::TypingGate,
    /// Upload budgets per user.
    pub uploads: crate::uploads::UploadBudgets,
    /// REST request rates per caller.
    pub rest_limits: crate::limits::RestLimits,
}
