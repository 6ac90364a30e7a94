//! One database writer for all of a worker's partitions. Each partition
//! writes its rooms behind its batches (`WRITE_BEHIND`); their writes fall
//! due together (on one clock, see `runner::flow`) and go to the database
//! as one: one `insert` of every new message and one `bulkWrite` of the
//! rest, not one round trip per partition. A write that arrives while one
//! is in flight goes with the next, so under load the writes grow by
//! themselves.

use super::writes::{WriteError, Writes, execute_all};
use crate::handler::ApplyError;
use natter_shared::store::Store;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the writer waits after the first write of a round for the
/// other partitions' (they fall due at the same moment).
const GATHER: Duration = Duration::from_millis(2);

type Submission = (Writes, oneshot::Sender<Result<(), WriteError>>);

pub(super) struct Committer {
    tx: mpsc::UnboundedSender<Submission>,
}

impl Committer {
    /// Starts the writer; it stops when the committer is dropped. Each
    /// partition has at most one write in flight, so the queue stays short.
    pub fn start(store: Store, bulk: bool) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Submission>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                tokio::time::sleep(GATHER).await;
                let mut round = vec![first];
                while let Ok(s) = rx.try_recv() {
                    round.push(s);
                }
                let (writes, replies): (Vec<Writes>, Vec<_>) = round.into_iter().unzip();
                let results = execute_all(writes, &store, bulk).await;
                for (result, reply) in results.into_iter().zip(replies) {
                    let _ = reply.send(result);
                }
            }
        });
        Committer { tx }
    }

    /// Writes `writes` with whatever else is due.
    pub async fn write(&self, writes: Writes) -> Result<(), WriteError> {
        let stopped = || WriteError::Apply(ApplyError::transient("the writer stopped"));
        let (tx, rx) = oneshot::channel();
        self.tx.send((writes, tx)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }
}
