//! The NATS side of natter, declared as code: stream, consumer and bucket
//! configurations (`topology`), and every subject name (`subjects`). Nothing
//! outside this crate spells a subject or a stream name.

pub mod connect;
pub mod partitioning;
pub mod publish;
pub mod subjects;
pub mod topology;

pub use partitioning::{PartitionState, Partitioning};
pub use subjects::{DEFAULT_PARTITIONS, LeaseKey, MAX_PARTITIONS, RoomKind, Subjects};
pub use topology::{Role, Sizing, TopologyError, apply, apply_consumers, verify, verify_consumers};
