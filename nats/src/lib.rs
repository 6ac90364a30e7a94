//! The NATS side of natter, declared as code: stream, consumer and bucket
//! configurations (`topology`), and every subject name (`subjects`). Nothing
//! outside this crate spells a subject or a stream name.

pub mod connect;
pub mod publish;
pub mod subjects;
pub mod topology;

pub use subjects::{LeaseKey, PARTITIONS, RoomKind, Subjects};
pub use topology::{Role, Sizing, TopologyError, apply, apply_consumers, verify, verify_consumers};
