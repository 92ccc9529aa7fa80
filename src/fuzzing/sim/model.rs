//! The reference model's records: each message and request the caller
//! made, and what became of it, across connections and processes; and the
//! figures of a run.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use crate::delivery::ReceiptCell;
use crate::{Error, Message, Status};

/// One message accepted by `send`, as the model follows it.
#[derive(Debug)]
pub(super) struct Msg {
    pub(super) k: u64,
    pub(super) id: Option<u64>,
    /// Its frame's length.
    pub(super) len: usize,
    pub(super) accepted_at: Instant,
    pub(super) expires: Option<Instant>,
    pub(super) receipt: Option<Arc<ReceiptCell>>,
    /// Statuses the session gave its receipt, in order.
    pub(super) statuses: Vec<Status>,
    /// Times written, by every process.
    pub(super) written: u32,
    /// Times written by the process that holds it now.
    pub(super) written_here: u32,
    /// Times the server's WebSocket layer read it.
    pub(super) read: u32,
    pub(super) handed_back: bool,
    /// The `on_open` step's message for this connection.
    pub(super) hook: Option<u64>,
    /// The process that holds it: the one that accepted it, or the last
    /// one that recovered it from the journal.
    pub(super) epoch: u32,
    /// Recovered from the journal, as written before (no time to live) or
    /// not (`Item::written`, as `sequence::recover` sets it).
    pub(super) recovered: Option<bool>,
    /// The session said it will never be sent (`Output::JournalDrop`).
    pub(super) journal_dropped: bool,
    /// Its time to live ran out while no process ran.
    pub(super) expired_at_start: bool,
    /// Times the driver found it too large to write.
    pub(super) too_large: u32,
}

impl Msg {
    pub(super) fn new(k: u64, len: usize, at: Instant, epoch: u32) -> Msg {
        Msg {
            k,
            id: None,
            len,
            accepted_at: at,
            expires: None,
            receipt: None,
            statuses: Vec::new(),
            written: 0,
            written_here: 0,
            read: 0,
            handed_back: false,
            hook: None,
            epoch,
            recovered: None,
            journal_dropped: false,
            expired_at_start: false,
            too_large: 0,
        }
    }

    /// Written, as the session counts it: by this process, or recovered
    /// as written before.
    pub(super) fn written_as_counted(&self) -> bool {
        self.written_here > 0 || self.recovered == Some(true)
    }
}

/// One request, as its caller sees it.
#[derive(Debug)]
pub(super) struct Req {
    pub(super) k: u64,
    pub(super) op: String,
    pub(super) req_id: Option<u64>,
    pub(super) deadline: Instant,
    pub(super) idempotent: bool,
    pub(super) rx: Receiver<Result<Message, Error>>,
    pub(super) answer: Option<(Instant, Result<Message, Error>)>,
    /// The caller gave up at its deadline.
    pub(super) timed_out: bool,
    /// A failure that came after that.
    pub(super) late: Option<Result<Message, Error>>,
    pub(super) written: u32,
    /// The client read its own reply in time on this connection.
    pub(super) own_reply: Option<u64>,
    /// The `on_open` step's request for this connection.
    pub(super) hook: Option<u64>,
    /// The process it was made in (its caller is gone with it).
    pub(super) epoch: u32,
    /// Times the driver found it too large to write.
    pub(super) too_large: u32,
}

/// Figures of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    /// Steps applied.
    pub steps: u64,
    /// Messages accepted by `send`.
    pub sent: u64,
    /// Requests made.
    pub requests: u64,
    /// Connections made.
    pub connects: u64,
    /// Messages the server's application handled.
    pub delivered: u64,
    /// Failures (`Closed`, `ConnectionLost`) the session sent to a
    /// request after its deadline: its caller had given up, so they
    /// reach nobody.
    pub late_failures: u64,
    /// Answers the session gave in time while the driver said goodbye,
    /// which the driver hands out only after it (so past their caller's
    /// deadline, when the goodbye outlasts it).
    pub delayed_by_goodbye: u64,
    /// Requests that timed out though their own reply came in time (a
    /// ghost took it).
    pub robbed: u64,
    /// Sends and requests that waited for room (`Overflow::Block`).
    pub blocked: u64,
    /// Messages and requests found too large to write.
    pub too_large: u64,
    /// Times the driver stopped reading for a full dispatcher.
    pub pauses: u64,
    /// Times the driver told the session it woke from a freeze.
    pub resumes: u64,
    /// Dead-peer verdicts (each checked against the silence the client heard).
    pub verdicts: u64,
    /// Process restarts.
    pub restarts: u64,
    /// Messages recovered from the journal by a new process.
    pub recovered: u64,
    /// Journaled messages whose time to live ran out while no process ran.
    pub expired_at_start: u64,
}
