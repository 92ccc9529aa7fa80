//! The link's rules, sans I/O: one [`Session`] per link.
//!
//! Everything that decides what happens on a link lives here: the phases
//! and the `on_open` gate, liveness and backoff, the outbox and its budget,
//! time to live, volatile messages, at-least-once ids, acknowledgements and
//! re-sending, what counts as possibly lost, receipts, request matching,
//! close and drain. None of it touches a socket, thread, channel, file or
//! clock: the I/O thread (the driver) feeds it what happened, with `now`,
//! and performs what it asks, as quinn-proto's `Connection` is driven:
//!
//! - inputs: [`handle_command`](Session::handle_command),
//!   [`handle_connected`](Session::handle_connected),
//!   [`handle_connect_failed`](Session::handle_connect_failed),
//!   [`handle_frame`](Session::handle_frame),
//!   [`handle_lost`](Session::handle_lost),
//!   [`handle_timeout`](Session::handle_timeout);
//! - outputs, drained in this order after every input: frames to write
//!   ([`poll_transmit`](Session::poll_transmit), then
//!   [`end_batch`](Session::end_batch)), what to do or hand out
//!   ([`poll_output`](Session::poll_output)), and the next deadline
//!   ([`poll_timeout`](Session::poll_timeout)).
//!
//! Counters (shared atomics) move as the session decides; receipts and
//! answers are outputs, so whoever sees a final status sees it counted.

mod close;
mod conn;
mod inspect;
mod lifecycle;
mod queue;
mod rules;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::Utf8Bytes;

use crate::backoff::Backoff;
use crate::command::{Command, Event, Item, Waiter};
use crate::delivery::ReceiptCell;
use crate::liveness::Verdict;
use crate::outbox::Budget;
use crate::state::Counters;
use crate::{Cause, CloseReason, Error, Failure, LinkState, Message, Status};
use conn::ConnState;
pub(crate) use conn::TRACK_CAP;
pub(crate) use queue::WINDOW_GROWTH;
pub(crate) use rules::{Name, Rules};

/// How long past its connect timeout an attempt may take to answer before
/// it is given up (DNS has no timeout of its own).
const ATTEMPT_GRACE: Duration = Duration::from_millis(500);

/// The lifecycle. Each arm of [`Session::handle_timeout`] says what happens
/// next; the [`LinkState`] callers see is derived from it
/// ([`Phase::state`]), never kept beside it. `attempt` counts consecutive
/// failures before the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// An attempt is to be started.
    Connecting { attempt: u32 },
    /// The driver runs an attempt; given up at `until`.
    Dialing { attempt: u32, until: Instant },
    /// Connected; the `on_open` hook runs until it reports or `deadline`.
    LoggingIn { deadline: Instant },
    /// Usable; the outbox flows.
    Open,
    /// Waiting to retry.
    Backoff {
        attempt: u32,
        delay: Duration,
        until: Instant,
        cause: Cause,
    },
    /// The application paused the link: nothing happens until it resumes
    /// (or closes), but time to live and request deadlines.
    Paused,
    /// Ended for good; waiting for `close` to collect what is left.
    Ended(CloseReason),
}

impl Phase {
    /// The state callers see, with the endpoint in use.
    fn state(&self, endpoint: usize) -> LinkState {
        match self {
            Phase::Connecting { attempt } | Phase::Dialing { attempt, .. } => {
                LinkState::Connecting {
                    attempt: *attempt,
                    endpoint,
                }
            }
            Phase::LoggingIn { .. } => LinkState::LoggingIn,
            Phase::Open => LinkState::Open,
            Phase::Backoff {
                attempt,
                delay,
                cause,
                ..
            } => LinkState::Backoff {
                attempt: *attempt,
                delay: *delay,
                cause: cause.clone(),
            },
            Phase::Paused => LinkState::Paused,
            Phase::Ended(reason) => LinkState::Closed(reason.clone()),
        }
    }
}

/// A frame to write.
#[derive(Debug)]
pub(crate) enum Transmit {
    /// A text frame: an application message (the one in flight) or the
    /// app heartbeat.
    Text(Utf8Bytes),
    /// A WebSocket ping with this number as its payload.
    Ping(u64),
}

/// How writing the last [`Transmit::Text`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// In the socket or its buffer (part of it, if the write then failed).
    Yes,
    /// More than the write buffer holds: never written.
    TooLarge,
}

/// A frame that arrived.
#[derive(Debug)]
pub(crate) enum Inbound {
    Text(Utf8Bytes),
    Binary(Vec<u8>),
    /// Text that is not UTF-8.
    NotUtf8,
    Ping,
    Pong(Vec<u8>),
    /// The peer's Close, with its code.
    Close(Option<u16>),
}

/// What the driver must do or hand out.
pub(crate) enum Output {
    /// Open a connection to endpoint `endpoint`; the attempt ends by `deadline`.
    Connect { deadline: Instant, endpoint: usize },
    /// The attempt in flight is given up (its socket is dropped if it comes).
    AbandonAttempt,
    /// The connection is gone: drop the socket.
    Disconnect,
    /// Write a Close frame with this code (best effort, without waiting),
    /// then drop the socket: the application paused the link.
    GoAway(u16),
    /// Run the `on_open` hook for connection `conn`.
    RunHook { conn: u64 },
    /// For the subscribers.
    Dispatch(Event),
    /// A request's outcome, for its caller (boxed: the other outputs are
    /// small, and a queue of outputs is as wide as its widest).
    Answer(Box<(Waiter, Result<Message, Error>)>),
    /// A receipt moves on.
    Receipt(Arc<ReceiptCell>, Status),
    /// The state the callers see.
    State(LinkState),
    /// This journaled message will never be sent.
    JournalDrop(u64),
    /// Why the last attempt failed, for `connect()`.
    LastError(Error),
    /// The link ended for good: refuse new messages.
    Ended,
}

/// The rules of one link. See the module docs.
pub(crate) struct Session {
    /// Shared with the configuration, not copied; behind a pointer, the
    /// session's frame stays small (an idle link keeps its stack pages
    /// resident: see `crate::stack`).
    rules: Arc<Rules>,
    budget: Arc<Budget>,
    counters: Arc<Counters>,
    phase: Phase,
    backoff: Backoff,
    conn: Option<ConnState>,
    conn_ids: u64,
    /// The endpoint in use, or to try next.
    endpoint: usize,
    /// Attempts refused for good in a row (HTTP 4xx, a bad certificate):
    /// the link ends when every endpoint has refused in turn.
    refused: usize,
    /// Accepted by `send`, not yet written (or to be written again).
    outbox: VecDeque<Item>,
    /// At-least-once messages written and not yet acknowledged, in id order.
    unacked: VecDeque<Item>,
    /// Their bytes (weights), for the in-flight window.
    unacked_bytes: usize,
    /// Messages and bytes acknowledged on this connection: the in-flight
    /// window grows with them.
    acked_here: (usize, usize),
    /// Messages of the `on_open` hook (and of a `Link` kept after it).
    on_open_queue: VecDeque<Item>,
    /// Highest at-least-once id seen (acks beyond it are clamped).
    highest_id: u64,
    /// Highest id the server acknowledged.
    acked: u64,
    /// The warning that no acknowledgement comes was given.
    ack_warned: bool,
    /// When the next queued item is to go unwritten: a message's time to
    /// live, a request's deadline ([`queue::drop_at`]).
    ttl_next: Option<Instant>,
    /// Volatile messages in the outbox.
    volatile_queued: usize,
    /// `close` was called: flush until this deadline.
    closing: Option<Instant>,
    /// Frames to write before any message: a probe's ping and heartbeat.
    control: VecDeque<Transmit>,
    /// The message [`poll_transmit`](Self::poll_transmit) handed out.
    in_flight: Option<Item>,
    /// This batch's writes, counted once at its end.
    batch: Batch,
    outputs: VecDeque<Output>,
    shown: Option<LinkState>,
    /// A reply went to a caller since the driver last asked.
    answered: bool,
}

/// What one batch of writes adds up to.
#[derive(Debug, Default)]
struct Batch {
    frames: u64,
    bytes: u64,
    resent: u64,
    /// Room given back to the budget (count, bytes).
    freed: (usize, usize),
}

impl Output {
    fn answer(waiter: Waiter, answer: Result<Message, Error>) -> Output {
        Output::Answer(Box::new((waiter, answer)))
    }
}

impl Session {
    /// A session with the messages recovered from a journal, which go first.
    pub(crate) fn new(
        rules: Arc<Rules>,
        budget: Arc<Budget>,
        counters: Arc<Counters>,
        recovered: Vec<Item>,
    ) -> Session {
        let highest_id = recovered.iter().filter_map(|i| i.id).max().unwrap_or(0);
        // Recovered messages keep what was left of their time to live.
        let ttl_next = recovered.iter().filter_map(queue::drop_at).min();
        Session {
            backoff: Backoff::new(rules.backoff),
            rules,
            budget,
            counters,
            phase: Phase::Connecting { attempt: 0 },
            conn: None,
            conn_ids: 0,
            endpoint: 0,
            refused: 0,
            outbox: recovered.into(),
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            acked_here: (0, 0),
            on_open_queue: VecDeque::new(),
            highest_id,
            acked: 0,
            ack_warned: false,
            ttl_next,
            volatile_queued: 0,
            closing: None,
            control: VecDeque::new(),
            in_flight: None,
            batch: Batch::default(),
            outputs: VecDeque::new(),
            shown: None,
            answered: false,
        }
    }

    // ---- getters

    /// The connection messages may be written to, if any.
    pub(crate) fn conn_id(&self) -> Option<u64> {
        self.conn.as_ref().map(|c| c.id)
    }

    /// The endpoint in use, or to try next.
    pub(crate) fn endpoint(&self) -> usize {
        self.endpoint
    }

    /// Highest acknowledged id (for the journal).
    pub(crate) fn acked(&self) -> u64 {
        self.acked
    }

    /// A request waits for its reply on the connection.
    pub(crate) fn awaiting_reply(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.pending.is_empty())
    }

    /// Everything written on the connection is confirmed by a pong (or
    /// there is no connection): nothing more to wait for at close.
    pub(crate) fn confirmed(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.ping_answered())
    }

    /// A reply went to a caller since the last call (it may ask again at once).
    pub(crate) fn take_answered(&mut self) -> bool {
        std::mem::take(&mut self.answered)
    }

    /// Whether an attempt is to be started now (the driver cannot wait).
    pub(crate) fn wants_connect(&self) -> bool {
        matches!(self.phase, Phase::Connecting { .. }) && self.closing.is_none()
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has something now.
    pub(crate) fn wants_write(&self) -> bool {
        let Some(c) = &self.conn else {
            return false;
        };
        !self.control.is_empty()
            || (!c.tracking_full()
                && (!self.on_open_queue.is_empty()
                    || (self.phase == Phase::Open
                        && !self.outbox.is_empty()
                        && !self.window_full())))
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Backoff { until, .. } | Phase::Dialing { until, .. } => Some(until),
            Phase::LoggingIn { deadline } => Some(deadline),
            _ => None,
        };
        let live = self
            .conn
            .as_ref()
            .and_then(|c| c.next_deadline(&self.rules));
        [phase, live, self.closing, self.ttl_next]
            .into_iter()
            .flatten()
            .min()
    }

    /// What to do or hand out next. A state change comes last, after what
    /// led to it (answers, receipts, the error `connect()` reports).
    pub(crate) fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front().or_else(|| {
            let s = self.phase.state(self.endpoint);
            (self.shown.as_ref() != Some(&s)).then(|| {
                log::debug!("longlink: state {s:?}");
                self.shown = Some(s.clone());
                Output::State(s)
            })
        })
    }

    // ---- inputs

    /// A caller's command. `Close` comes as [`handle_close`](Self::handle_close).
    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Send(item) => self.enqueue(item),
            Command::OnOpen { conn, item } => {
                let live = matches!(self.phase, Phase::LoggingIn { .. } | Phase::Open);
                if live && self.conn_id() == Some(conn) {
                    self.on_open_queue.push_back(item);
                } else {
                    self.fail_item(item, Failure::NotOpen, || Error::ConnectionLost);
                }
            }
            Command::HookDone {
                conn,
                result,
                fatal,
            } => self.hook_done(now, conn, result, fatal),
            Command::ReconnectNow => match self.phase {
                Phase::Backoff { attempt, .. } => self.phase = Phase::Connecting { attempt },
                Phase::Open | Phase::LoggingIn { .. } => {
                    if let Some(c) = self.conn.as_mut() {
                        c.live.on_resumed(now);
                    }
                }
                Phase::Connecting { .. }
                | Phase::Dialing { .. }
                | Phase::Paused
                | Phase::Ended(_) => {}
            },
            Command::Pause => self.pause(now),
            Command::Resume => self.resume(),
            Command::Close { deadline, .. } => self.handle_close(deadline),
        }
    }

    /// `close` was called: flush until `deadline`, then finish.
    pub(crate) fn handle_close(&mut self, deadline: Instant) {
        if self.closing.is_none() {
            self.closing = Some(deadline);
        }
    }

    /// Time has passed: phase deadlines, liveness, time to live.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        self.expire(now);
        match self.phase {
            // The hook has run out of time: the attempt failed.
            Phase::LoggingIn { deadline } if now >= deadline => {
                let why = "the on_open hook did not finish in time".to_owned();
                return self.lost(now, Cause::OnOpenFailed(why));
            }
            // Waited long enough: try again.
            Phase::Backoff { attempt, until, .. } if now >= until => {
                self.phase = Phase::Connecting { attempt };
            }
            // The attempt did not answer in time (DNS has no timeout).
            Phase::Dialing { until, .. } if now >= until => {
                log::warn!("longlink: the connect attempt did not finish in time");
                self.outputs.push_back(Output::AbandonAttempt);
                return self.handle_connect_failed(
                    now,
                    Error::Connect {
                        context: "connecting".into(),
                        source: "the attempt did not finish within the connect timeout".into(),
                    },
                );
            }
            _ => {}
        }
        if matches!(self.phase, Phase::Connecting { .. }) && self.closing.is_none() {
            // Never open a connection just to close it.
            self.connect(now);
        }
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        match c.check(now, &self.rules) {
            Ok(Verdict::Alive) => {}
            Ok(Verdict::Probe) => self.probe(now),
            Ok(Verdict::Dead) => {
                let t = self.rules.heartbeat_timeout;
                log::info!("longlink: no frame from the server within {t:?} of a ping");
                self.lost(now, Cause::DeadPeer);
            }
            Err(reason) => {
                log::info!("longlink: {reason}");
                self.lost(now, Cause::DeadPeer);
            }
        }
    }

    /// The process was frozen: ask the peer now instead of declaring it dead.
    pub(crate) fn handle_resumed(&mut self, now: Instant) {
        if let Some(c) = self.conn.as_mut() {
            c.live.on_resumed(now);
        }
    }

    /// The driver stopped (`false`) or resumed (`true`) reading the socket:
    /// the silence while it did not read says nothing about the peer.
    pub(crate) fn handle_reading(&mut self, now: Instant, reading: bool) {
        if let Some(c) = self.conn.as_mut() {
            c.set_reading(now, reading);
        }
    }

    /// Send a probe: a ping and, once open, the application heartbeat.
    fn probe(&mut self, now: Instant) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let seq = c.ping_now(now);
        self.control.push_back(Transmit::Ping(seq));
        // While the on_open step runs, only its messages may go out: the
        // ping proves liveness alone, the app heartbeat waits for Open.
        if let Some((text, _)) = self.rules.app_heartbeat.as_ref()
            && self.phase == Phase::Open
        {
            self.control.push_back(Transmit::Text(text.clone()));
        }
        c.live.on_probe_sent(now);
        log::debug!("longlink: heartbeat probe sent");
    }
}
