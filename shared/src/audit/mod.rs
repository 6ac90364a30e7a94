//! The audit trail: one record per command, chained by hash.
//!
//! The applying roles publish an `AuditFact` for every command they own
//! (what was asked, by whom, on what, and whether it was applied, refused or
//! dead-lettered) to the outcomes stream. The audit role turns facts into
//! `AuditRecord`s in that stream's order: each record's `hash` covers its
//! content and the previous record's hash, so changing, removing or
//! reordering a record breaks the chain at that point (`verify`).

use crate::ids::UserId;
use crate::timefmt::iso;
use crate::v1::command::RoomFields;
use crate::v1::error::ErrorCode;
use mongodb::bson::{DateTime, doc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod trail;

pub use trail::{
    AuditPage, Broken, Filter, Head, LOOKAHEAD, Listing, TOTAL_CAP, Verdict, Window, head, page, records, verify,
};

/// The collection of the trail's pages (see `trail`).
pub const AUDIT: &str = "audit_trail";
/// The `prevHash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened to one command, as its applying role saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditFact {
    pub v: u32,
    /// The command's stream sequence.
    pub seq: u64,
    /// When the stream stored the command (ms since the epoch).
    pub time_ms: i64,
    pub role: String,
    /// The command's action (`send_message`, ...); `unknown` if undecodable.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<UserId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, flatten)]
    pub room: RoomFields,
    /// Ids the command acts on (`messageId`, `userId`, `attachmentId`, ...).
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    pub status: FactStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// Request metadata (transport, request id, user agent, origin, route).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

/// What became of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum FactStatus {
    Applied,
    Refused,
    DeadLettered,
}

impl FactStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FactStatus::Applied => "applied",
            FactStatus::Refused => "refused",
            FactStatus::DeadLettered => "dead_lettered",
        }
    }
}

impl AuditFact {
    /// The version of the fact format this code writes and reads.
    pub const VERSION: u32 = 1;

    /// The outcomes stream's message id of the fact about the command at
    /// `seq`: a fact published twice is stored once.
    pub fn msg_id(&self) -> String {
        format!("out:{}", self.seq)
    }

    /// An audited read (no command behind it): `who` did `action` on
    /// `room`, naming `targets`, at `time_ms`, with the request's `meta`.
    pub fn read(
        role: &str,
        time_ms: i64,
        who: &crate::auth::Identity,
        action: &str,
        room: Option<&crate::ids::RoomRef>,
        targets: &[(&str, &str)],
        meta: BTreeMap<String, String>,
    ) -> AuditFact {
        AuditFact {
            v: Self::VERSION,
            seq: 0,
            time_ms,
            role: role.into(),
            action: action.into(),
            actor: Some(who.user),
            roles: who.roles.clone(),
            room: RoomFields::of_optional(room),
            targets: targets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            status: FactStatus::Applied,
            reason: None,
            code: None,
            meta,
        }
    }

    /// The fact about the command at `seq` in the role's stream (`env` is
    /// `None` when it could not be decoded).
    pub fn of(
        role: &str,
        seq: u64,
        time_ms: i64,
        env: Option<&crate::v1::command::CommandEnvelope>,
        status: FactStatus,
        reason: Option<String>,
        code: Option<ErrorCode>,
    ) -> AuditFact {
        AuditFact {
            v: Self::VERSION,
            seq,
            time_ms,
            role: role.to_string(),
            action: env.map(|e| e.command.action()).unwrap_or("unknown").to_string(),
            actor: env.map(|e| e.actor),
            roles: env.map(|e| e.roles.clone()).unwrap_or_default(),
            room: env.and_then(|e| e.command.room().ok()).map(|r| RoomFields::of(&r)).unwrap_or_default(),
            targets: env.map(|e| e.command.targets()).unwrap_or_default(),
            status,
            reason,
            code,
            meta: env.and_then(|e| e.meta.as_ref()).map(|m| m.to_map()).unwrap_or_default(),
        }
    }
}

/// The audit action for a command action (the module's vocabulary).
pub fn action_name(command_action: &str) -> &str {
    match command_action {
        "send_message" => "message_sent",
        "delete_message" => "message_deleted",
        "edit_message" => "message_edited",
        "add_reaction" => "reaction_added",
        "remove_reaction" => "reaction_removed",
        "pin_message" => "message_pinned",
        "unpin_message" => "message_unpinned",
        "mark_read" => "message_read",
        "mark_delivered" => "message_delivered",
        "create_conversation" => "conversation_created",
        "create_group" => "group_created",
        "update_group" => "group_updated",
        "delete_group" => "group_deleted",
        "add_member" => "member_added",
        "remove_member" => "member_removed",
        "leave_group" => "member_left",
        "upload_attachment" => "attachment_uploaded",
        "record_attachment" => "attachment_recorded",
        "expire_upload" => "upload_expired",
        other => other,
    }
}

/// One audit record, as stored (in a page of the trail).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// The command's stream sequence (one record per command).
    pub seq: i64,
    /// Position in the chain: the fact's sequence in the outcomes stream.
    pub chain_seq: i64,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(default)]
    pub targets: BTreeMap<String, String>,
    /// The target ids as a list, for filtering.
    #[serde(default)]
    pub target_ids: Vec<String>,
    pub time: DateTime,
    pub status: FactStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The fields a hash covers, in a fixed order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Hashed<'a> {
    v: u32,
    seq: i64,
    chain_seq: i64,
    action: &'a str,
    actor: &'a Option<String>,
    roles: &'a [String],
    conversation_id: &'a Option<String>,
    group_id: &'a Option<String>,
    targets: &'a BTreeMap<String, String>,
    target_ids: &'a [String],
    time: String,
    status: &'a str,
    reason: &'a Option<String>,
    code: &'a Option<String>,
    meta: &'a BTreeMap<String, String>,
    prev_hash: &'a str,
}

impl AuditRecord {
    pub fn from_fact(f: &AuditFact, chain_seq: u64, prev_hash: &str) -> AuditRecord {
        let mut r = AuditRecord {
            seq: f.seq as i64,
            chain_seq: chain_seq as i64,
            action: action_name(&f.action).to_string(),
            actor: f.actor.map(|a| a.hex()),
            roles: f.roles.clone(),
            conversation_id: f.room.conversation_id.clone(),
            group_id: f.room.group_id.clone(),
            targets: f.targets.clone(),
            target_ids: f.targets.values().cloned().collect(),
            time: DateTime::from_millis(f.time_ms),
            status: f.status,
            reason: f.reason.clone(),
            code: f.code.map(|c| c.as_str().to_string()),
            meta: f.meta.clone(),
            prev_hash: prev_hash.to_string(),
            hash: String::new(),
        };
        r.hash = r.compute_hash();
        r
    }

    /// SHA-256 over the canonical JSON of the content and `prevHash`.
    pub fn compute_hash(&self) -> String {
        let h = Hashed {
            v: 1,
            seq: self.seq,
            chain_seq: self.chain_seq,
            action: &self.action,
            actor: &self.actor,
            roles: &self.roles,
            conversation_id: &self.conversation_id,
            group_id: &self.group_id,
            targets: &self.targets,
            target_ids: &self.target_ids,
            time: iso(self.time),
            status: self.status.as_str(),
            reason: &self.reason,
            code: &self.code,
            meta: &self.meta,
            prev_hash: &self.prev_hash,
        };
        crate::ids::sha256_hex(&serde_json::to_vec(&h).unwrap_or_default())
    }
}

/// A record on the wire (logs API and exports).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AuditView {
    pub seq: i64,
    pub chain_seq: i64,
    pub action: String,
    pub actor: Option<String>,
    pub roles: Vec<String>,
    pub conversation_id: Option<String>,
    pub group_id: Option<String>,
    pub targets: BTreeMap<String, String>,
    pub time: String,
    pub status: FactStatus,
    pub reason: Option<String>,
    pub code: Option<String>,
    pub meta: BTreeMap<String, String>,
    pub prev_hash: String,
    pub hash: String,
}

impl From<&AuditRecord> for AuditView {
    fn from(r: &AuditRecord) -> Self {
        AuditView {
            seq: r.seq,
            chain_seq: r.chain_seq,
            action: r.action.clone(),
            actor: r.actor.clone(),
            roles: r.roles.clone(),
            conversation_id: r.conversation_id.clone(),
            group_id: r.group_id.clone(),
            targets: r.targets.clone(),
            time: iso(r.time),
            status: r.status,
            reason: r.reason.clone(),
            code: r.code.clone(),
            meta: r.meta.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fact(seq: u64) -> AuditFact {
        AuditFact {
            v: 1,
            seq,
            time_ms: 1_700_000_000_000 + seq as i64,
            role: "messages".into(),
            action: "send_message".into(),
            actor: Some("64b7f0c2a1b2c3d4e5f60718".parse().unwrap()),
            roles: vec![],
            room: RoomFields { conversation_id: Some("c".into()), group_id: None },
            targets: BTreeMap::from([("messageId".into(), format!("m{seq}"))]),
            status: FactStatus::Applied,
            reason: None,
            code: None,
            meta: BTreeMap::from([("via".into(), "ws".into())]),
        }
    }

    #[test]
    fn hashes_chain_and_detect_edits() {
        let a = AuditRecord::from_fact(&fact(1), 1, GENESIS);
        let b = AuditRecord::from_fact(&fact(2), 2, &a.hash);
        assert_eq!(a.action, "message_sent");
        assert_eq!(b.prev_hash, a.hash);
        assert_eq!(a.hash, AuditRecord::from_fact(&fact(1), 1, GENESIS).hash, "deterministic");
        let mut edited = b.clone();
        edited.actor = Some("64b7f0c2a1b2c3d4e5f60719".into());
        assert_ne!(edited.compute_hash(), b.hash);
        let mut moved = b.clone();
        moved.chain_seq = 7;
        assert_ne!(moved.compute_hash(), b.hash);
    }
}
