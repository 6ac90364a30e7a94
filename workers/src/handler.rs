//! The contract between the runner and a worker role.

use mongodb::bson::DateTime;
use natter_nats::topology::Role;
use natter_shared::audit::AuditFact;
use natter_shared::v1::command::CommandEnvelope;
use natter_shared::v1::error::ErrorCode;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::future::Future;

/// One message as fetched from the role's stream.
#[derive(Clone, Debug)]
pub struct Incoming<M = CommandEnvelope> {
    /// Stream sequence: the message's position (for commands, the room's order).
    pub seq: u64,
    /// When the stream stored it: the only clock a worker uses.
    pub time: DateTime,
    pub subject: String,
    pub msg: M,
}

impl<M: Input> Incoming<M> {
    /// A stream message read as `M`, or why this version cannot read it:
    /// the one decoding of the runner and of `natterctl replay`.
    pub fn decode(m: &async_nats::jetstream::Message) -> Result<Incoming<M>, String> {
        let info = m.info().map_err(|_| "message without JetStream metadata".to_string())?;
        let msg = serde_json::from_slice::<M>(&m.payload).map_err(|e| format!("undecodable: {e}"))?;
        msg.check_version()?;
        Ok(Incoming {
            seq: info.stream_sequence,
            time: natter_shared::timefmt::from_offset(info.published),
            subject: m.subject.to_string(),
            msg,
        })
    }
}

/// What a role consumes. Commands have a version, may want their outcome
/// reported, and are audited; audit facts are none of that.
pub trait Input: DeserializeOwned + Clone + Send + Sync + 'static {
    /// `Err` with the reason when this worker cannot read this version.
    fn check_version(&self) -> Result<(), String>;
    /// Where a waiting REST call hears the outcome.
    fn reply(&self) -> Option<&str>;
    /// Whether the runner records an `AuditFact` for it.
    const AUDITED: bool;
    /// The command itself, when the input is one.
    fn command(&self) -> Option<&CommandEnvelope>;
}

impl Input for CommandEnvelope {
    fn check_version(&self) -> Result<(), String> {
        if self.v == natter_shared::v1::VERSION {
            Ok(())
        } else {
            Err(format!("unsupported command version {}", self.v))
        }
    }
    fn reply(&self) -> Option<&str> {
        self.reply.as_deref()
    }
    const AUDITED: bool = true;
    fn command(&self) -> Option<&CommandEnvelope> {
        Some(self)
    }
}

impl Input for AuditFact {
    fn check_version(&self) -> Result<(), String> {
        if self.v == AuditFact::VERSION { Ok(()) } else { Err(format!("unsupported fact version {}", self.v)) }
    }
    fn reply(&self) -> Option<&str> {
        None
    }
    const AUDITED: bool = false;
    fn command(&self) -> Option<&CommandEnvelope> {
        None
    }
}

/// A message to publish on core NATS once the batch is written.
#[derive(Clone, Debug)]
pub struct Publication {
    pub subject: String,
    pub payload: bytes::Bytes,
}

/// What became of one command.
#[derive(Clone, Debug)]
pub enum Disposition {
    /// Applied (or found already applied); these events follow.
    Applied(Vec<Publication>),
    /// Valid but not allowed or not possible (a membership change raced
    /// it): nothing is written; acked, and reported to the actor.
    Refused { code: ErrorCode, reason: String, events: Vec<Publication> },
    /// Can never be applied; dead-lettered with this reason.
    Poison(String),
    /// Another role's command (a partition carries every role's): acked,
    /// and no outcome reported, which is the owner's to give.
    NotMine,
}

/// Dispositions by stream sequence. A failed attempt's are dropped: the
/// retry applies its commands again against what the database holds, and
/// finds applied what the failed attempt wrote.
pub type Done = HashMap<u64, Disposition>;

/// A failure of a batch. Transient ones (MongoDB unreachable, a timeout,
/// S3 down) are retried in place for as long as they last, keeping the room
/// order. Permanent ones (MongoDB refusing a document) are retried a few
/// times; then the batch is applied one command at a time, and the command
/// that still fails is dead-lettered with the reason (see `settle`).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct ApplyError {
    pub reason: String,
    pub permanent: bool,
}

impl ApplyError {
    pub fn transient(reason: impl Into<String>) -> Self {
        ApplyError { reason: reason.into(), permanent: false }
    }

    /// A MongoDB write error: permanent unless its code says the server
    /// was busy, stepping down or going away.
    pub fn write(code: i32, message: &str) -> Self {
        ApplyError {
            reason: format!("MongoDB refused the write ({code}): {message}"),
            permanent: !transient_code(code),
        }
    }
}

/// MongoDB's duplicate key error.
pub const DUPLICATE_KEY: i32 = 11000;

/// Whether `e` is a single write refused as a duplicate key (an id or
/// unique key already stored).
pub fn is_duplicate(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    matches!(&*e.kind, ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
}

/// Write error codes that pass: network, shutdown, elections, time limits,
/// lock and write conflicts.
fn transient_code(code: i32) -> bool {
    matches!(
        code,
        6 | 7
            | 24
            | 46
            | 50
            | 63
            | 89
            | 91
            | 112
            | 133
            | 150
            | 189
            | 234
            | 262
            | 9001
            | 10107
            | 11600
            | 11602
            | 13388
            | 13435
            | 13436
    )
}

impl From<mongodb::error::Error> for ApplyError {
    fn from(e: mongodb::error::Error) -> Self {
        use mongodb::error::{ErrorKind, WriteFailure};
        match &*e.kind {
            ErrorKind::Write(WriteFailure::WriteError(we)) => ApplyError::write(we.code, &we.message),
            ErrorKind::InsertMany(ime) if ime.write_concern_error.is_none() => {
                match ime.write_errors.iter().flatten().find(|we| !transient_code(we.code)) {
                    Some(we) => ApplyError::write(we.code, &we.message),
                    None => ApplyError::transient(e.to_string()),
                }
            }
            ErrorKind::BsonSerialization(_) => ApplyError { reason: e.to_string(), permanent: true },
            _ => ApplyError::transient(e.to_string()),
        }
    }
}

/// Attempts, of a batch and then of one command alone, before a permanent
/// failure dead-letters the command.
pub const PERMANENT_ATTEMPTS: u32 = 3;

/// Applies `batch` and writes it until it goes through, returning every
/// command's disposition. Between failed attempts, logged here,
/// `pause(attempt)` runs (it backs off; `false` gives up, and so does
/// this). Transient failures are retried for as long as they last; after
/// `PERMANENT_ATTEMPTS` permanent ones the commands are applied one at a
/// time, in stream order, and one that fails permanently that many times
/// alone is poison (the others are applied as usual).
pub async fn settle<H: Handler, F: Future<Output = bool>>(
    handler: &H,
    state: &mut H::State,
    batch: &[Incoming<H::Msg>],
    mut pause: impl FnMut(u32) -> F,
) -> Option<Done> {
    let role = H::ROLE.name();
    let mut attempt = 0u32;
    match retry(handler, state, batch, &mut pause, &mut attempt).await {
        Tried::Applied(done) => return Some(done),
        Tried::GaveUp => return None,
        Tried::Permanent(e) => {
            tracing::warn!(role, attempt, error = %e, "batch keeps failing; applying its commands one by one")
        }
    }
    let mut done = Done::new();
    for inc in batch {
        match retry(handler, state, std::slice::from_ref(inc), &mut pause, &mut attempt).await {
            Tried::Applied(d) => done.extend(d),
            Tried::GaveUp => return None,
            Tried::Permanent(e) => {
                tracing::warn!(role, seq = inc.seq, error = %e, "command fails on its own; dead-lettering it");
                done.insert(inc.seq, Disposition::Poison(e.reason));
            }
        }
    }
    Some(done)
}

/// How retrying some commands ended.
enum Tried {
    Applied(Done),
    /// `PERMANENT_ATTEMPTS` permanent failures; the last one.
    Permanent(ApplyError),
    /// `pause` said to stop.
    GaveUp,
}

/// Applies and writes `cmds` until it goes through, `pause` gives up, or it
/// has failed permanently `PERMANENT_ATTEMPTS` times; `attempt` counts
/// every failure.
async fn retry<H: Handler, F: Future<Output = bool>>(
    handler: &H,
    state: &mut H::State,
    cmds: &[Incoming<H::Msg>],
    pause: &mut impl FnMut(u32) -> F,
    attempt: &mut u32,
) -> Tried {
    let mut permanent = 0u32;
    loop {
        let e = match commit(handler, state, cmds).await {
            Ok(done) => return Tried::Applied(done),
            Err(e) => e,
        };
        *attempt += 1;
        permanent += u32::from(e.permanent);
        if permanent >= PERMANENT_ATTEMPTS {
            return Tried::Permanent(e);
        }
        tracing::warn!(
            role = H::ROLE.name(),
            commands = cmds.len(),
            attempt = *attempt,
            error = %e,
            permanent = e.permanent,
            "apply failed; retrying in place"
        );
        if !pause(*attempt).await {
            return Tried::GaveUp;
        }
    }
}

/// Applies `batch` with `handler`, the commands another role applies
/// (`Command::owner`) marked `NotMine` first: a role's `apply` sees its own
/// and skips what `done` already holds.
pub async fn apply_own<H: Handler>(
    handler: &H,
    state: &mut H::State,
    batch: &[Incoming<H::Msg>],
    done: &mut Done,
) -> Result<(), ApplyError> {
    for inc in batch {
        if let Some(c) = inc.msg.command()
            && c.command.owner() != H::ROLE.name()
        {
            done.insert(inc.seq, Disposition::NotMine);
        }
    }
    handler.apply(state, batch, done).await
}

/// Applies `cmds` and writes what they staged, at once.
pub async fn commit<H: Handler>(
    handler: &H,
    state: &mut H::State,
    cmds: &[Incoming<H::Msg>],
) -> Result<Done, ApplyError> {
    let mut done = Done::new();
    let result = match apply_own(handler, state, cmds, &mut done).await {
        Ok(()) => handler.write(handler.take(state)).await,
        Err(e) => Err(e),
    };
    handler.written(state, result.is_ok());
    result.map(|()| done)
}

/// A worker role. Applying must be idempotent and depend only on the
/// commands (with their seq and time): redelivery, replay and a parallel
/// worker all converge to the same state.
///
/// A batch is applied in memory (`apply`, which records every command's
/// disposition and stages what to write in the state), then written
/// (`take`, `write`, `written`). Roles that write as they apply stage
/// nothing. With `WRITE_BEHIND`, the runner publishes a batch's events
/// once it is applied, lets the writes of several batches gather, and
/// acks the commands once they are written; a write that fails makes it
/// apply them all again.
pub trait Handler: Send + Sync + 'static {
    const ROLE: Role;
    type Msg: Input;
    /// What the worker keeps about a partition between batches, so that it
    /// need not read back what it wrote: made empty when it takes the
    /// partition, dropped when it lets it go.
    type State: Default + Send + 'static;
    /// What `take` hands to `write`.
    type Writes: Send + 'static;
    /// After the first message of an idle spell, how long a fetch waits for
    /// more (roles nobody waits on trade latency for fewer writes).
    const LINGER: std::time::Duration = std::time::Duration::ZERO;
    /// How long applied batches' writes may gather before they are written
    /// (zero: each batch is written before the next is applied).
    const WRITE_BEHIND: std::time::Duration = std::time::Duration::ZERO;

    /// Applies a batch (in stream order, all from one partition) to the
    /// state, recording a disposition per command in `done`.
    fn apply(
        &self,
        state: &mut Self::State,
        batch: &[Incoming<Self::Msg>],
        done: &mut Done,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// How long the writes of what is staged now may gather: `WRITE_BEHIND`
    /// unless the role knows some cost more to write than others.
    fn write_behind(&self, _state: &Self::State) -> std::time::Duration {
        Self::WRITE_BEHIND
    }

    /// Takes what the batches applied since the last take staged.
    fn take(&self, state: &mut Self::State) -> Self::Writes;

    /// Writes it (while later batches may be applied).
    fn write(&self, writes: Self::Writes) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// After the write of the oldest take in flight: on success what it
    /// wrote can be relied on; on failure (or a failed `apply`) the state
    /// must forget what may be wrong, everything staged since included,
    /// because all of it is applied again.
    fn written(&self, state: &mut Self::State, ok: bool);

    /// What tells clients that a command whose events went out was
    /// dead-lettered after all (its write refused for good, an operator's
    /// validator say), as an event with this `seq` and `part` (after every
    /// event they may have got); `None` when nothing needs withdrawing.
    fn withdraw(&self, _inc: &Incoming<Self::Msg>, _seq: u64, _part: u32) -> Option<Publication> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_shared::ids::UserId;
    use natter_shared::v1::command::{Command, RoomFields, SendMessageCmd, UploadAttachmentCmd};
    use std::sync::Mutex;

    fn cmd(seq: u64, command: Command) -> Incoming {
        let env = CommandEnvelope {
            v: natter_shared::v1::VERSION,
            actor: UserId(mongodb::bson::oid::ObjectId::new()),
            roles: vec![],
            reply: None,
            meta: None,
            command,
        };
        Incoming { seq, time: DateTime::from_millis(0), subject: String::new(), msg: env }
    }

    fn send(seq: u64) -> Incoming {
        let room = RoomFields { conversation_id: Some("650000000000000000000002".into()), group_id: None };
        cmd(
            seq,
            Command::SendMessage(SendMessageCmd {
                message_id: format!("{seq:024x}").parse().unwrap(),
                room,
                content: "x".into(),
                message_type: natter_shared::model::MessageType::Text,
                client_msg_id: format!("k{seq}"),
                attachments: vec![],
                reply_to: None,
                mentions: vec![],
            }),
        )
    }

    fn upload(seq: u64) -> Incoming {
        cmd(
            seq,
            Command::UploadAttachment(UploadAttachmentCmd {
                attachment_id: format!("{seq:024x}").parse().unwrap(),
                room: RoomFields::default(),
                filename: "a.pdf".into(),
                declared_type: "application/pdf".into(),
                size: 10,
            }),
        )
    }

    /// A messages role that fails (permanently or not) on the seqs it is
    /// told to, and records the commands it applied and wrote, in order.
    #[derive(Default)]
    struct Toy {
        poison: Vec<u64>,
        transient_failures: Mutex<u32>,
        seen: Mutex<Vec<u64>>,
        written: Mutex<Vec<u64>>,
    }

    impl Handler for Toy {
        const ROLE: Role = Role::MESSAGES;
        type Msg = CommandEnvelope;
        type State = Vec<u64>;
        type Writes = Vec<u64>;

        async fn apply(&self, staged: &mut Vec<u64>, batch: &[Incoming], done: &mut Done) -> Result<(), ApplyError> {
            for inc in batch {
                if done.contains_key(&inc.seq) {
                    continue;
                }
                self.seen.lock().unwrap().push(inc.seq);
                if self.poison.contains(&inc.seq) {
                    return Err(ApplyError { reason: format!("{} cannot be written", inc.seq), permanent: true });
                }
                staged.push(inc.seq);
                done.insert(inc.seq, Disposition::Applied(vec![]));
            }
            Ok(())
        }

        fn take(&self, staged: &mut Vec<u64>) -> Vec<u64> {
            std::mem::take(staged)
        }

        async fn write(&self, writes: Vec<u64>) -> Result<(), ApplyError> {
            let mut left = self.transient_failures.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(ApplyError::transient("the database is away"));
            }
            self.written.lock().unwrap().extend(writes);
            Ok(())
        }

        fn written(&self, staged: &mut Vec<u64>, _ok: bool) {
            staged.clear();
        }
    }

    fn kinds(done: &Done) -> Vec<(u64, &'static str)> {
        let mut v: Vec<(u64, &'static str)> = done
            .iter()
            .map(|(s, d)| {
                let k = match d {
                    Disposition::Applied(_) => "applied",
                    Disposition::Refused { .. } => "refused",
                    Disposition::Poison(_) => "poison",
                    Disposition::NotMine => "not_mine",
                };
                (*s, k)
            })
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_command_that_fails_alone_is_poison_and_the_others_are_written_in_order() {
        let toy = Toy { poison: vec![3], ..Toy::default() };
        let batch: Vec<Incoming> = (1..=5).map(send).collect();
        let mut pauses = 0;
        let done = settle(&toy, &mut vec![], &batch, |_| {
            pauses += 1;
            async { true }
        })
        .await
        .expect("settled");
        assert_eq!(kinds(&done), vec![(1, "applied"), (2, "applied"), (3, "poison"), (4, "applied"), (5, "applied")]);
        assert_eq!(*toy.written.lock().unwrap(), vec![1, 2, 4, 5], "each good command written once, in order");
        // Three failures together, then three of the poison alone, each but
        // the last of a series followed by a pause.
        assert_eq!(pauses, 4);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_in_place_until_they_pass_or_the_pause_gives_up() {
        let toy = Toy { transient_failures: Mutex::new(5), ..Toy::default() };
        let batch: Vec<Incoming> = (1..=3).map(send).collect();
        let mut pauses = 0;
        let done = settle(&toy, &mut vec![], &batch, |_| {
            pauses += 1;
            async { true }
        })
        .await
        .expect("settled");
        assert_eq!(kinds(&done), vec![(1, "applied"), (2, "applied"), (3, "applied")]);
        assert_eq!((pauses, toy.written.lock().unwrap().clone()), (5, vec![1, 2, 3]), "never split, never poison");

        let toy = Toy { transient_failures: Mutex::new(10), ..Toy::default() };
        let gave_up = settle(&toy, &mut vec![], &batch, |attempt| async move { attempt < 2 }).await;
        assert!(gave_up.is_none(), "a pause that says stop ends the settling without a verdict");
        assert!(toy.written.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_role_never_sees_the_commands_another_role_owns() {
        let toy = Toy::default();
        let batch = vec![send(1), upload(2), send(3)];
        let mut done = Done::new();
        apply_own(&toy, &mut vec![], &batch, &mut done).await.unwrap();
        assert_eq!(*toy.seen.lock().unwrap(), vec![1, 3]);
        assert_eq!(kinds(&done), vec![(1, "applied"), (2, "not_mine"), (3, "applied")]);
        assert_eq!(upload(2).msg.command.owner(), "attachments");
        assert_eq!(send(1).msg.command.owner(), "messages");
    }
}
