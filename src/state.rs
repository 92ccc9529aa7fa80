//! Link state and statistics, as callers see them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the link is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Opening TCP, TLS and the WebSocket handshake. `attempt` is 0 for a
    /// first try or an immediate retry, else the consecutive failure count.
    Connecting {
        /// Consecutive failures before this attempt.
        attempt: u32,
        /// Where this attempt goes: the index of its URL in
        /// [`endpoints`](crate::ClientBuilder::endpoints) (always 0 with one
        /// URL). The link stays on it once open;
        /// [`Stats::endpoint`] gives its URL, redacted.
        endpoint: usize,
    },
    /// Handshake done; the [`on_open`](crate::ClientBuilder::on_open) hook is running.
    /// Only the hook's own messages are written.
    LoggingIn,
    /// Usable: the outbox is being flushed and messages flow.
    Open,
    /// Waiting before the next attempt.
    Backoff {
        /// Consecutive failures so far (0: the link was up and dropped).
        attempt: u32,
        /// How long this wait is.
        delay: Duration,
        /// Why the last connection ended or the last attempt failed.
        cause: Cause,
    },
    /// [`Client::pause`](crate::Client::pause)d: no connection, no
    /// attempts, no heartbeat; `send` queues. [`Client::resume`](crate::Client::resume) connects.
    Paused,
    /// Ended for good.
    Closed(CloseReason),
}

/// Why a connection ended or an attempt failed, as
/// [`LinkState::Backoff`] says, for an application to tell its user.
/// Its text never holds a secret (URL queries, headers, payloads).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cause {
    /// The server sent a Close frame, with its code if it gave one
    /// (1001: going away, 1012: restarting…).
    ServerClosed {
        /// The Close frame's status code.
        code: Option<u16>,
    },
    /// The connection broke: reset, ended without a Close frame, a read or
    /// write failed, or a frame broke a limit. With what happened.
    Broken(String),
    /// The server answered nothing within the heartbeat timeout of a ping
    /// (or answers no ping at all): found dead.
    DeadPeer,
    /// A connection attempt failed: TCP, proxy, TLS or the WebSocket
    /// upgrade. With why.
    ConnectFailed(String),
    /// The [`on_open`](crate::ClientBuilder::on_open) step failed or ran
    /// out of time. With why.
    OnOpenFailed(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::ServerClosed { code: Some(c) } => {
                write!(f, "the server closed the link (code {c})")
            }
            Cause::ServerClosed { code: None } => {
                f.write_str("the server closed the link (no code)")
            }
            Cause::Broken(why) => write!(f, "the connection broke: {why}"),
            Cause::DeadPeer => f.write_str("the server stopped answering (dead peer)"),
            Cause::ConnectFailed(why) => write!(f, "the connection attempt failed: {why}"),
            Cause::OnOpenFailed(why) => write!(f, "the on_open step failed: {why}"),
        }
    }
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application called [`Client::close`](crate::Client::close) or dropped the last clone.
    Requested,
    /// A permanent failure: refused upgrade, untrusted certificate, or a
    /// fatal error returned by the `on_open` hook.
    Fatal(String),
    /// The opt-in attempt limit was reached.
    GaveUp {
        /// Consecutive failed attempts.
        attempts: u32,
        /// The last failure.
        last_error: String,
    },
}

/// Counters of one link since it was built. A snapshot: see [`Client::stats`](crate::Client::stats).
///
/// Counters move before receipts and replies do: whoever sees a receipt's
/// final status (or a request's answer) sees it counted here too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Successful WebSocket handshakes.
    pub connects: u64,
    /// Handshakes after the first one.
    pub reconnects: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Application messages written (including login and heartbeat messages).
    pub messages_sent: u64,
    /// Bytes of application messages written.
    pub bytes_sent: u64,
    /// Data frames received.
    pub messages_received: u64,
    /// Bytes of data frames received.
    pub bytes_received: u64,
    /// Messages in the outbox now; under at-least-once, including those
    /// written and awaiting their acknowledgement.
    pub outbox_depth: u64,
    /// Bytes in the outbox now (as `outbox_depth`).
    pub outbox_bytes: u64,
    /// Messages given up without being written: dropped by the
    /// `DropOldest` policy, volatile while the link was down, too large.
    pub dropped: u64,
    /// Messages whose time to live ran out before they were written.
    pub expired: u64,
    /// Messages written into a socket that then died before a pong showed
    /// the peer read them: they may or may not have arrived. At-least-once
    /// messages are re-sent instead and not counted here, unless
    /// [`Overflow::DropOldest`](crate::Overflow::DropOldest) gave one up
    /// after it was written; nor are requests whose reply came, or
    /// idempotent requests written again.
    pub possibly_lost: u64,
    /// At-least-once: messages written and awaiting their acknowledgement now.
    pub awaiting_ack: u64,
    /// At-least-once: messages acknowledged by the server.
    pub acknowledged: u64,
    /// Messages written again after a reconnect (unacknowledged, recovered
    /// from the journal, or idempotent requests).
    pub resent: u64,
    /// Messages recovered from the journal when the client started.
    pub recovered: u64,
    /// Subscriber closures or hooks that panicked (the link is unharmed).
    pub handler_panics: u64,
    /// Frames that were not operator messages (bad JSON, binary, no operator…).
    pub invalid_frames: u64,
    /// Heartbeat probes that went unanswered: each one ended a connection.
    pub heartbeat_misses: u64,
    /// Messages that arrived while no closure or receiver took their
    /// operator (and none took every other one), or for a receiver that
    /// was dropped or could not take it before the link closed.
    pub unclaimed: u64,
    /// The endpoint in use, or being tried (without query or user info).
    pub endpoint: String,
    /// Round trip of the last answered WebSocket ping.
    pub last_rtt: Option<Duration>,
}

/// The live counters, shared between the threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) possibly_lost: AtomicU64,
    pub(crate) awaiting_ack: AtomicU64,
    pub(crate) acknowledged: AtomicU64,
    pub(crate) resent: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) handler_panics: AtomicU64,
    pub(crate) invalid_frames: AtomicU64,
    pub(crate) heartbeat_misses: AtomicU64,
    pub(crate) unclaimed: AtomicU64,
    /// Index of the endpoint in use or being tried.
    pub(crate) endpoint: AtomicU64,
    /// Microseconds + 1; 0 means none yet.
    pub(crate) last_rtt_us: AtomicU64,
}

impl Counters {
    pub(crate) fn add(field: &AtomicU64, n: u64) {
        field.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn store(field: &AtomicU64, n: u64) {
        field.store(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, outbox: (usize, usize)) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let connects = get(&self.connects);
        let rtt = get(&self.last_rtt_us);
        Stats {
            connects,
            reconnects: connects.saturating_sub(1),
            connect_failures: get(&self.connect_failures),
            messages_sent: get(&self.messages_sent),
            bytes_sent: get(&self.bytes_sent),
            messages_received: get(&self.messages_received),
            bytes_received: get(&self.bytes_received),
            outbox_depth: outbox.0 as u64,
            outbox_bytes: outbox.1 as u64,
            dropped: get(&self.dropped),
            expired: get(&self.expired),
            possibly_lost: get(&self.possibly_lost),
            awaiting_ack: get(&self.awaiting_ack),
            acknowledged: get(&self.acknowledged),
            resent: get(&self.resent),
            recovered: get(&self.recovered),
            handler_panics: get(&self.handler_panics),
            invalid_frames: get(&self.invalid_frames),
            heartbeat_misses: get(&self.heartbeat_misses),
            unclaimed: get(&self.unclaimed),
            endpoint: String::new(),
            last_rtt: (rtt > 0).then(|| Duration::from_micros(rtt - 1)),
        }
    }
}
