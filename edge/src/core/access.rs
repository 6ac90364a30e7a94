//! Reads worth auditing: Admins reading or exporting the audit trail,
//! exporting a room's history, and anyone downloading an attachment. Each
//! is stored as a fact on the outcomes stream (role `edge`, no command
//! `seq`) before the data is served, and the audit worker chains it like
//! any other; a read that cannot be recorded is not served.

use crate::core::Core;
use crate::error::ChatError;
use async_nats::jetstream::message::PublishMessage;
use natter_shared::audit::AuditFact;
use natter_shared::auth::Identity;
use natter_shared::ids::RoomRef;

/// The role audited reads are recorded under.
pub const ROLE: &str = "edge";

/// Records that `who` did `action` (on `room`, naming `targets`).
pub async fn record(
    st: &Core,
    who: &Identity,
    action: &str,
    room: Option<&RoomRef>,
    targets: &[(&str, &str)],
) -> Result<(), ChatError> {
    let now = mongodb::bson::DateTime::now().timestamp_millis();
    let meta = crate::meta::current().map(|m| m.to_map()).unwrap_or_default();
    let fact = AuditFact::read(ROLE, now, who, action, room, targets, meta);
    let body = serde_json::to_vec(&fact).map_err(ChatError::unavailable)?;
    let id = mongodb::bson::oid::ObjectId::new().to_hex();
    let msg = PublishMessage::build().payload(body.into()).message_id(format!("access:{id}"));
    let ack = st.js.send_publish(st.subjects.outcome(ROLE), msg).await.map_err(ChatError::unavailable)?;
    ack.await.map_err(ChatError::unavailable)?;
    Ok(())
}
