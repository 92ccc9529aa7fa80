//! The vocabulary between the handle and the I/O thread: the commands a
//! caller sends, the messages they carry, and where a request's answer
//! goes. Plain data: no I/O here, and every layer may name it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Sender;
use tungstenite::Utf8Bytes;

use crate::delivery::ReceiptCell;
use crate::outbox::Weighed;
use crate::pending::Key;
use crate::{Error, InvalidFrame, LinkState, Message};

/// The whole handle → I/O thread vocabulary.
pub(crate) enum Command {
    /// A message for the outbox (a request if it carries a reply slot).
    Send(Item),
    /// A message from the `on_open` hook of connection `conn`: bypasses the outbox.
    OnOpen { conn: u64, item: Item },
    /// The `on_open` hook of connection `conn` finished; `fatal`: it failed
    /// on an [`Expect::or_fatal`](crate::Expect::or_fatal) reply, so the link ends.
    HookDone {
        conn: u64,
        result: Result<(), Error>,
        fatal: bool,
    },
    /// Skip the backoff wait (or probe an open link now).
    ReconnectNow,
    /// The app goes to the background: close the connection, stop
    /// reconnecting and probing; keep queueing.
    Pause,
    /// The app is back: connect at once.
    Resume,
    /// Flush until `deadline`, close, report the unsent messages' texts
    /// (after counting what may have been lost).
    Close {
        deadline: Instant,
        done: Sender<Vec<Utf8Bytes>>,
    },
}

/// One outbound message.
pub(crate) struct Item {
    pub(crate) text: Utf8Bytes,
    /// Bytes counted in the outbox budget.
    pub(crate) weight: usize,
    /// Boxed: most messages are not requests, and items travel by value.
    pub(crate) reply: Option<Box<ReplyTo>>,
    /// At-least-once id, stamped in the text.
    pub(crate) id: Option<u64>,
    /// Drop it if not written by then.
    pub(crate) expires: Option<Instant>,
    /// Never buffered across a reconnect.
    pub(crate) volatile: bool,
    pub(crate) receipt: Option<Arc<ReceiptCell>>,
    /// Written at least once already (a re-send is due).
    pub(crate) written: bool,
}

impl Item {
    pub(crate) fn new(text: impl Into<Utf8Bytes>) -> Self {
        let text = text.into();
        Item {
            weight: text.len(),
            text,
            reply: None,
            id: None,
            expires: None,
            volatile: false,
            receipt: None,
            written: false,
        }
    }
}

impl Item {
    /// A message from freshly encoded text. The text is trimmed to its
    /// length first: the buffer then converts to frame bytes without an
    /// extra allocation, and the I/O thread frees one block, not two,
    /// allocated by another thread (cross-thread frees contend on the
    /// allocator's lock).
    pub(crate) fn from_string(mut text: String) -> Self {
        text.shrink_to_fit();
        Item::new(text)
    }
}

impl Weighed for Item {
    fn weight(&self) -> usize {
        self.weight
    }
}

/// Where a request's answer goes.
pub(crate) struct ReplyTo {
    pub(crate) key: Key,
    pub(crate) deadline: Instant,
    pub(crate) waiter: Waiter,
    pub(crate) idempotent: bool,
}

/// The caller waiting for a reply, and the operators that mean failure.
pub(crate) struct Waiter {
    pub(crate) tx: Sender<Result<Message, Error>>,
    pub(crate) errors: Vec<String>,
    /// An idempotent request's frame, to write again after a reconnect.
    pub(crate) retry: Option<Retry>,
    /// Index of the request's frame on its connection (set when written).
    pub(crate) written_at: u64,
}

/// What it takes to send an idempotent request again.
pub(crate) struct Retry {
    pub(crate) text: Utf8Bytes,
    pub(crate) key: Key,
    pub(crate) deadline: Instant,
}

impl Waiter {
    pub(crate) fn answer(self, r: Result<Message, Error>) {
        // The caller may have given up; nothing to do then.
        let _ = self.tx.try_send(r);
    }
}

impl fmt::Debug for Waiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Waiter")
    }
}

/// What the I/O thread hands to the dispatcher.
pub(crate) enum Event {
    Message(Message),
    Invalid(InvalidFrame),
    State(LinkState),
    Hook { conn: u64 },
    Stop,
}
