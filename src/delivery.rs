//! Per-message policy and the fate of each message: [`SendOptions`],
//! [`RequestOptions`], [`Receipt`].

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::Expect;

/// Where a message sent with [`Client::send_with`](crate::Client::send_with) is.
///
/// It only moves forward: `Queued` → `Written` → one final status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Accepted, waiting in the outbox.
    Queued,
    /// Written to a socket; not yet known to be received. Under
    /// at-least-once it is re-sent after a reconnect until acknowledged.
    Written,
    /// At most once: a WebSocket pong answered a ping written after the
    /// message, so the server's WebSocket layer read it. That proves
    /// receipt by the server process, not that the application handled it.
    Confirmed,
    /// At least once: the server acknowledged its id.
    Acknowledged,
    /// Its time to live ran out before it could be written; never sent.
    Expired,
    /// It will not be delivered, or it may not have been; see [`Failure`].
    Failed(Failure),
}

impl Status {
    /// Whether this status is final.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Written)
    }

    fn rank(self) -> u8 {
        match self {
            Status::Queued => 0,
            Status::Written => 1,
            _ => 2,
        }
    }
}

/// Why a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// At most once: written to a link that died before a pong confirmed
    /// it. The server may or may not have received it.
    PossiblyLost,
    /// Volatile, and the link was not open (or dropped before writing it).
    NotOpen,
    /// Dropped to make room ([`Overflow::DropOldest`](crate::Overflow::DropOldest)):
    /// the oldest goes first, written ones awaiting their acknowledgement
    /// included. Counted in [`Stats::dropped`](crate::Stats::dropped) if it
    /// was never written, else in
    /// [`Stats::possibly_lost`](crate::Stats::possibly_lost).
    Dropped,
    /// Larger than the write buffer can hold; never sent.
    TooLarge,
    /// The client closed before it was delivered. [`Client::close`](crate::Client::close)
    /// hands it back; with a durable outbox it stays in the journal and is
    /// sent after the next start.
    Closed,
}

/// Shared between a [`Receipt`] and the I/O thread.
#[derive(Debug)]
pub(crate) struct ReceiptCell {
    status: Mutex<Status>,
    changed: Condvar,
    id: Mutex<Option<u64>>,
}

impl ReceiptCell {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ReceiptCell {
            status: Mutex::new(Status::Queued),
            changed: Condvar::new(),
            id: Mutex::new(None),
        })
    }

    /// Move forward to `s`; never backward, never past a final status.
    pub(crate) fn set(&self, s: Status) {
        let mut cur = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if s.rank() > cur.rank() {
            *cur = s;
            self.changed.notify_all();
        }
    }

    pub(crate) fn set_id(&self, id: u64) {
        *self.id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    }
}

/// The fate of one message, as the I/O thread learns it. Cheap to clone.
///
/// ```no_run
/// # use std::time::Duration;
/// # use longlink::{SendOptions, Status};
/// # let client = longlink::Client::builder("ws://127.0.0.1:9001").start()?;
/// let r = client.send_with(
///     serde_json::json!({"Operator": "Typing"}),
///     SendOptions::volatile(),
/// )?;
/// if r.wait(Duration::from_secs(1)) != Status::Confirmed {
///     // not known to have arrived
/// }
/// # Ok::<(), longlink::Error>(())
/// ```
#[derive(Clone)]
pub struct Receipt {
    cell: Arc<ReceiptCell>,
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receipt")
            .field("status", &self.status())
            .field("msg_id", &self.msg_id())
            .finish()
    }
}

impl Receipt {
    pub(crate) fn new(cell: Arc<ReceiptCell>) -> Self {
        Receipt { cell }
    }

    /// The status now, without waiting.
    pub fn status(&self) -> Status {
        *self.cell.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the status is final or `timeout` passes; returns the
    /// status then (possibly still `Queued` or `Written`).
    pub fn wait(&self, timeout: Duration) -> Status {
        let deadline = crate::time::from_now(timeout);
        let mut s = self.cell.status.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            if s.is_final() || now >= deadline {
                return *s;
            }
            s = self
                .cell
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The id stamped on the message under at-least-once, if any.
    pub fn msg_id(&self) -> Option<u64> {
        *self.cell.id.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How one message is sent; see [`Client::send_with`](crate::Client::send_with).
///
/// ```
/// # use std::time::Duration;
/// # use longlink::SendOptions;
/// let price = SendOptions::new().ttl(Duration::from_secs(5));
/// let typing = SendOptions::volatile();
/// # let _ = (price, typing);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) volatile: bool,
}

impl SendOptions {
    /// Queued, kept across reconnects, no time limit: what [`send`](crate::Client::send) does.
    pub fn new() -> Self {
        SendOptions::default()
    }

    /// Not buffered: written if the link is open, otherwise dropped and
    /// reported as [`Failure::NotOpen`]. Never stamped, journaled or
    /// re-sent. For typing indicators, presence, cursor positions.
    pub fn volatile() -> Self {
        SendOptions {
            ttl: None,
            volatile: true,
        }
    }

    /// Drop the message (reported as [`Status::Expired`]) if it has not
    /// been written within `ttl` of `send_with`. A message already written
    /// is not recalled, and is re-sent under at-least-once. With a
    /// [durable](crate::ClientBuilder::durable) outbox its deadline is kept
    /// in the journal as wall-clock time: a client started on the journal
    /// after the deadline drops it (counted in
    /// [`Stats::expired`](crate::Stats::expired), not in
    /// [`Client::recovered`](crate::Client::recovered)), written before or
    /// not; one started earlier gives it only the time left. A step of the
    /// system clock between the two processes moves that deadline with it.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// How one request is made; see [`Client::request_with`](crate::Client::request_with).
///
/// ```
/// # use std::time::Duration;
/// # use longlink::{Expect, RequestOptions};
/// let opts = RequestOptions::new(Duration::from_secs(5))
///     .expect(Expect::reply("GetInvitationOK"))
///     .idempotent(true);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestOptions {
    pub(crate) timeout: Duration,
    pub(crate) expect: Option<Expect>,
    pub(crate) idempotent: bool,
}

impl RequestOptions {
    /// A request that fails after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        RequestOptions {
            timeout,
            expect: None,
            idempotent: false,
        }
    }

    /// The reply operators, when they do not follow `X` → `XOK` / `XError`.
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = Some(expect);
        self
    }

    /// Safe to repeat (a read, or a write the server deduplicates): if the
    /// link dies after it was written, it is written again after the
    /// reconnect, within the same deadline, instead of failing with
    /// [`Error::ConnectionLost`](crate::Error::ConnectionLost). Defaults to false.
    pub fn idempotent(mut self, yes: bool) -> Self {
        self.idempotent = yes;
        self
    }
}
