//! The I/O thread: the only code that touches the socket. This is the main loop.
//!
//! Each turn: take the callers' commands, do what the phase asks (connect,
//! read until `WouldBlock`, probe or declare the peer dead, write a batch and
//! flush once), then park in the poller until the socket is ready, a caller
//! wakes us, or the next deadline. An idle link parks until its heartbeat.

mod transport;

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use polling::{Event as Ready, Events, PollMode, Poller};
use serde_json::Value;
use tungstenite::Message as Frame;
use tungstenite::Utf8Bytes;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;

use crate::backoff::{Backoff, Next};
use crate::client::{Command, Item, ReplyTo, Retry, Shared, Waiter};
use crate::config::redact_url;
use crate::delivery::ReceiptCell;
use crate::dispatch::Event;
use crate::liveness::{Liveness, Verdict};
use crate::message::decode;
use crate::outbox::{Weighed, trim_oldest};
use crate::pending::{Matched, Pending};
use crate::state::Counters;
use crate::{CloseReason, Error, Failure, InvalidFrame, LinkState, Message, Overflow, Status};
use transport::{Ws, tcp};

/// Frames written per turn before one flush.
const WRITE_BATCH: usize = 4096;
/// Frames read per turn, so a flooding peer cannot starve writes and timers.
const READ_BATCH: usize = 4096;
/// Commands taken per turn.
const COMMAND_BATCH: usize = 16 * 1024;
/// Receipts and answered requests one connection keeps while it waits for a
/// pong (about 1 MiB): past it, writing waits for the pong.
const TRACK_CAP: usize = 1 << 16;
/// Bytes read past a full dispatcher while a request waits for its reply
/// (which may sit behind the pushes that filled it).
const REPLY_RESERVE: usize = 1 << 20;
/// How long the thread watches for the next request after answering one.
/// Measured (`LONGLINK_PERF_ONLY=rtt cargo bench --bench perf`, 2 cores):
/// request p50 1.34–1.85× raw ping-pong without it, 1.1–1.3× with 50, 100
/// or 200 µs alike, none at 30 µs (a woken caller takes longer to ask again).
const SPIN: Duration = Duration::from_micros(50);
/// How long past its connect timeout an attempt may take to answer before
/// it is given up (DNS has no timeout of its own).
const ATTEMPT_GRACE: Duration = Duration::from_millis(500);
/// Waking this much later than planned means the process was frozen.
const FREEZE_GAP: Duration = Duration::from_secs(2);

pub(crate) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    dispatch: Sender<Event>,
    recovered: Vec<Item>,
) {
    let stack_top = crate::stack::Top::here();
    let backoff = Backoff::new(shared.cfg.backoff);
    let highest_id = recovered.iter().filter_map(|i| i.id).max().unwrap_or(0);
    // Recovered messages keep what was left of their time to live.
    let ttl_next = recovered.iter().filter_map(|i| i.expires).min();
    let mut io = Io {
        shared,
        rx,
        dispatch,
        outbox: recovered.into(),
        unacked: VecDeque::new(),
        highest_id,
        acked: 0,
        journal_acked: 0,
        ttl_next,
        volatile_queued: 0,
        login: VecDeque::new(),
        conn: None,
        phase: Phase::Connecting,
        backoff,
        conn_ids: 0,
        closing: None,
        attempt: None,
        events: Events::with_capacity(NonZeroUsize::new(8).expect("8 > 0")),
        shown_state: None,
        stack_top,
        stack_dirty: false,
        just_answered: false,
        settled: Vec::new(),
        reserve_used: 0,
    };
    io.run();
}

/// The lifecycle. Each arm of [`Io::step`] says what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Next turn starts a connection attempt.
    Connecting,
    /// An attempt runs on its own thread (TCP, proxy, TLS and the upgrade
    /// block), so this thread stays free for `close`; given up at `until`.
    Dialing { until: Instant },
    /// Connected; the `on_open` hook runs until it reports or `deadline`.
    LoggingIn { deadline: Instant },
    /// Usable; the outbox flows.
    Open,
    /// Waiting to retry.
    Backoff { until: Instant },
    /// Ended for good; waiting for `close` to collect what is left.
    Ended,
}

/// `close` was called: until when it may flush, where to report.
struct Closing {
    deadline: Instant,
    done: Sender<Vec<Utf8Bytes>>,
}

/// One live connection and what we know about it.
struct Conn {
    id: u64,
    ws: Ws,
    poller: Arc<Poller>,
    live: Liveness,
    pending: Pending<Waiter>,
    /// Data frames written on this connection.
    written: u64,
    /// Of those, how many the peer is known to have read (pong to a later ping).
    confirmed: u64,
    /// Frames written that are not re-sent if lost (all but at-least-once ones).
    plain: u64,
    /// Of those, how many a pong confirmed.
    plain_confirmed: u64,
    /// Plain frames written after the last confirmation whose reply came:
    /// delivered for sure, so not "possibly lost" (their indexes).
    answered: Vec<u64>,
    /// Outstanding ping: payload number, when, `written` and `plain` then.
    ping: Option<(u64, Instant, u64, u64)>,
    /// Since when its pong is awaited while reading (reset when reading
    /// resumes after a pause: an unread pong is not a missing one).
    pong_wait_from: Instant,
    /// Receipts of plain messages written, by frame number, awaiting a pong.
    awaiting: VecDeque<(u64, Arc<ReceiptCell>)>,
    ping_seq: u64,
    readable: bool,
    writable: bool,
    write_blocked: bool,
    need_flush: bool,
    interest: (bool, bool),
    /// Reading stopped because the dispatcher is full.
    paused: bool,
}

impl Conn {
    fn register(id: u64, ws: Ws, poller: Arc<Poller>, live: Liveness) -> std::io::Result<Conn> {
        // SAFETY: polling requires the socket to be deleted from the poller
        // before it is closed. `Conn` owns the socket and deletes it in Drop,
        // which runs before the socket field is dropped.
        #[allow(unsafe_code)]
        unsafe {
            poller.add_with_mode(tcp(&ws), Ready::readable(id as usize), PollMode::Level)?;
        }
        Ok(Conn {
            id,
            ws,
            poller,
            live,
            pending: Pending::default(),
            written: 0,
            confirmed: 0,
            plain: 0,
            plain_confirmed: 0,
            answered: Vec::new(),
            ping: None,
            pong_wait_from: Instant::now(),
            awaiting: VecDeque::new(),
            ping_seq: 0,
            // Frames may already sit in tungstenite's or TLS's buffer.
            readable: true,
            writable: false,
            write_blocked: false,
            need_flush: false,
            interest: (true, false),
            paused: false,
        })
    }

    /// The peer read every frame written before the ping that holds these counts.
    fn confirm(&mut self, written: u64, plain: u64) {
        self.confirmed = self.confirmed.max(written);
        self.plain_confirmed = self.plain_confirmed.max(plain);
        let confirmed = self.confirmed;
        self.answered.retain(|i| *i > confirmed);
        while let Some((n, _)) = self.awaiting.front()
            && *n <= self.confirmed
        {
            if let Some((_, r)) = self.awaiting.pop_front() {
                r.set(Status::Confirmed);
            }
        }
    }

    fn send_ping(&mut self, now: Instant) -> Result<(), String> {
        self.ping_seq += 1;
        let ping = Frame::Ping(self.ping_seq.to_be_bytes().to_vec().into());
        write_frame(self, ping)?;
        // The oldest unanswered ping counts: a newer one (a probe) must not
        // push the verdict back.
        if self.ping.is_none() {
            self.pong_wait_from = now;
        }
        self.ping = Some((self.ping_seq, now, self.written, self.plain));
        self.need_flush = true;
        Ok(())
    }

    /// Receipts and answered requests waiting for a pong are at their bound:
    /// write nothing more until one comes (or the link is declared dead).
    fn tracking_full(&self) -> bool {
        self.awaiting.len() + self.answered.len() >= TRACK_CAP
    }

    /// When the link is to be declared dead for want of a pong: the
    /// tracking is full (writing waits for a pong) and the outstanding
    /// ping has gone unanswered for heartbeat interval + timeout of
    /// reading. A pong may lag far behind inbound data (a flood), which is
    /// no fault; a peer that reads and sends but never answers pings can
    /// confirm nothing, and would stall the link for good.
    fn pong_deadline(&self, cfg: &crate::config::Config) -> Option<Instant> {
        let wait = cfg.heartbeat_interval.saturating_add(cfg.heartbeat_timeout);
        self.ping
            .filter(|_| !self.paused && self.tracking_full())
            .map(|_| crate::time::after(self.pong_wait_from, wait))
    }

    fn set_interest(&mut self) {
        let want = (!self.paused, self.write_blocked);
        if want != self.interest {
            let ev = Ready::new(self.id as usize, want.0, want.1);
            if self
                .poller
                .modify_with_mode(tcp(&self.ws), ev, PollMode::Level)
                .is_ok()
            {
                self.interest = want;
            }
        }
    }

    /// Flush tungstenite's buffer; `WouldBlock` leaves it buffered.
    fn flush(&mut self) -> Result<(), String> {
        match self.ws.flush() {
            Ok(()) => {
                self.need_flush = false;
                self.write_blocked = false;
                Ok(())
            }
            Err(e) if would_block(&e) => {
                self.write_blocked = true;
                Ok(())
            }
            Err(e) => Err(format!("write failed: {e}")),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.poller.delete(tcp(&self.ws));
    }
}

fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}

struct Io {
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    dispatch: Sender<Event>,
    outbox: VecDeque<Item>,
    /// At-least-once messages written and not yet acknowledged, in id order.
    unacked: VecDeque<Item>,
    /// Highest at-least-once id seen (acks beyond it are clamped).
    highest_id: u64,
    /// Highest id the server acknowledged.
    acked: u64,
    /// Highest acknowledgement recorded in the journal.
    journal_acked: u64,
    /// Earliest time to live of a queued message, if any.
    ttl_next: Option<Instant>,
    /// Volatile messages in the outbox.
    volatile_queued: usize,
    /// Messages of the `on_open` hook (and of a `Link` kept after it).
    login: VecDeque<Item>,
    conn: Option<Conn>,
    phase: Phase,
    backoff: Backoff,
    conn_ids: u64,
    closing: Option<Closing>,
    /// The running connection attempt's answer.
    attempt: Option<Receiver<Result<Ws, Error>>>,
    events: Events,
    shown_state: Option<LinkState>,
    /// Where this thread's stack began, for [`crate::stack::release_below`].
    stack_top: crate::stack::Top,
    /// A connect ran since the stack was last trimmed.
    stack_dirty: bool,
    /// This turn handed a reply to a caller: it may ask again at once.
    just_answered: bool,
    /// Receipts to move on once their counters are updated (reused).
    settled: Vec<Arc<ReceiptCell>>,
    /// Bytes read past a full dispatcher for a waiting request's sake.
    reserve_used: usize,
}

impl Io {
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            self.take_commands(now);
            self.expire(now);
            self.journal_turn(now);
            if self.close_ready(now) {
                self.finish();
                return;
            }
            self.step(now);
            self.park();
        }
    }

    fn set_state(&mut self, s: LinkState) {
        if self.shown_state.as_ref() != Some(&s) {
            log::debug!("longlink: state {s:?}");
            self.shown_state = Some(s.clone());
            self.shared.set_state(s.clone());
            if self.shared.dispatcher_on.load(Ordering::Acquire) {
                let _ = self.dispatch.send(Event::State(s));
            }
        }
    }

    fn take_commands(&mut self, now: Instant) {
        for _ in 0..COMMAND_BATCH {
            let Ok(cmd) = self.rx.try_recv() else { break };
            self.command(cmd, now);
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::Send(item) => self.enqueue(item),
            Command::Login { conn, item } => {
                let live = matches!(self.phase, Phase::LoggingIn { .. } | Phase::Open);
                if live && self.conn.as_ref().is_some_and(|c| c.id == conn) {
                    self.login.push_back(item);
                } else {
                    fail_item(item, &self.shared, Failure::NotOpen, || {
                        Error::ConnectionLost
                    });
                }
            }
            Command::HookDone {
                conn,
                result,
                fatal,
            } => {
                let current = self.conn.as_ref().is_some_and(|c| c.id == conn);
                let logging_in = current && matches!(self.phase, Phase::LoggingIn { .. });
                // A fatal verdict stands even if its connection died
                // meanwhile (servers often close right after a ban) and a
                // retry has begun; not once a later login has succeeded.
                let fatal_verdict = fatal || matches!(result, Err(Error::Fatal(_)));
                let not_open = !matches!(self.phase, Phase::Open | Phase::Ended);
                let ends_stale = fatal_verdict && not_open;
                if !logging_in && !ends_stale {
                    return;
                }
                match result {
                    Ok(()) => self.open(now),
                    Err(Error::Fatal(reason)) => {
                        log::warn!("longlink: on_open hook ended the link: {reason}");
                        self.end(
                            CloseReason::Fatal(reason.clone()),
                            Some(Error::Fatal(reason)),
                        );
                    }
                    Err(e) => {
                        let reason = format!("the on_open step failed: {}", e.describe_for_log());
                        let e = Error::on_open_failed(e);
                        if fatal {
                            log::warn!("longlink: {reason} (or_fatal): the link ends");
                            self.end(CloseReason::Fatal(reason), Some(e));
                        } else {
                            self.shared.set_last_error(e);
                            self.lost(reason);
                        }
                    }
                }
            }
            Command::ReconnectNow => match self.phase {
                Phase::Backoff { .. } => self.phase = Phase::Connecting,
                Phase::Open | Phase::LoggingIn { .. } => {
                    if let Some(c) = self.conn.as_mut() {
                        c.live.on_resumed(now);
                    }
                }
                Phase::Connecting | Phase::Dialing { .. } | Phase::Ended => {}
            },
            Command::Close { deadline, done } => {
                if self.closing.is_none() {
                    self.closing = Some(Closing { deadline, done });
                }
            }
        }
    }

    fn enqueue(&mut self, item: Item) {
        if self.phase == Phase::Ended && item.reply.is_some() {
            self.shared.budget.release(item.weight());
            fail_item(item, &self.shared, Failure::Closed, || Error::Closed {
                message: None,
            });
            return;
        }
        if item.volatile && self.phase != Phase::Open {
            self.shared.budget.release(item.weight());
            fail_item(item, &self.shared, Failure::NotOpen, || {
                Error::ConnectionLost
            });
            return;
        }
        if item.volatile {
            self.volatile_queued += 1;
        }
        if let Some(e) = item.expires {
            self.ttl_next = Some(self.ttl_next.map_or(e, |t| t.min(e)));
        }
        if let Some(id) = item.id {
            self.highest_id = self.highest_id.max(id);
        }
        self.outbox.push_back(item);
        if self.shared.cfg.overflow == Overflow::DropOldest {
            let budget = &self.shared.budget;
            for old in trim_oldest(&mut self.unacked, &mut self.outbox, budget) {
                if old.volatile {
                    self.volatile_queued -= 1;
                }
                fail_item(old, &self.shared, Failure::Dropped, || Error::OutboxFull {
                    message: Value::Null,
                });
            }
        }
    }

    /// Drop queued messages whose time to live ran out (never sent late).
    fn expire(&mut self, now: Instant) {
        if self.ttl_next.is_none_or(|t| t > now) {
            return;
        }
        self.expire_all(now);
    }

    /// [`expire`](Self::expire), looking at every queued message.
    fn expire_all(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        let mut keep = VecDeque::with_capacity(self.outbox.len());
        for item in self.outbox.drain(..) {
            match item.expires.filter(|_| !item.written) {
                Some(e) if e <= now => expired.push(item),
                Some(e) => {
                    next = Some(next.map_or(e, |t| t.min(e)));
                    keep.push_back(item);
                }
                None => keep.push_back(item),
            }
        }
        self.outbox = keep;
        self.ttl_next = next;
        for item in expired {
            if item.volatile {
                self.volatile_queued -= 1;
            }
            self.shared.budget.release(item.weight());
            expire_item(item, &self.shared);
        }
    }

    /// The server acknowledged every id up to `n`.
    fn on_ack(&mut self, n: u64) {
        let n = n.min(self.highest_id);
        if n <= self.acked {
            return;
        }
        self.acked = n;
        let mut count = 0;
        // Written ones, and re-queued ones the server had after all.
        while let Some(item) = pop_if(&mut self.unacked, |i| i.id.is_some_and(|id| id <= n))
            .or_else(|| pop_if(&mut self.outbox, |i| i.id.is_some_and(|id| id <= n)))
        {
            self.shared.budget.release(item.weight());
            self.settled.extend(item.receipt);
            count += 1;
        }
        // Counted before any receipt says so.
        Counters::add(&self.shared.counters.acknowledged, count);
        for r in self.settled.drain(..) {
            r.set(Status::Acknowledged);
        }
    }

    /// Journal upkeep that waits for nobody: drops recorded while it was
    /// busy, the interval sync.
    fn journal_turn(&mut self, now: Instant) {
        let shared = &self.shared;
        shared.try_journal(|j| {
            shared.journal_catch_up(j);
            j.sync_if_due(now);
        });
    }

    /// Record acknowledgements in the journal (once per turn, not per ack).
    fn journal_acks(&mut self) {
        if self.acked > self.journal_acked && self.shared.cfg.journal.is_some() {
            let n = self.acked;
            self.shared.journal_ack.store(n, Ordering::Release);
            // Busy: the sender holding it records it, or we try next turn.
            if self.shared.try_journal(|j| j.ack(n)).is_some() {
                self.journal_acked = n;
            }
        }
    }

    /// One turn of the state machine.
    fn step(&mut self, now: Instant) {
        match self.phase {
            // The hook has run out of time: the attempt failed.
            Phase::LoggingIn { deadline } if now >= deadline => {
                self.lost("the on_open hook did not finish in time".into());
            }
            // Waited long enough: try again.
            Phase::Backoff { until } if now >= until => self.phase = Phase::Connecting,
            // Still waiting, or nothing to do until close.
            Phase::Backoff { .. } | Phase::Ended => {}
            // Never open a connection just to close it.
            Phase::Connecting if self.closing.is_some() => {}
            Phase::Connecting => self.connect(),
            // The attempt has answered, or has run out of time.
            Phase::Dialing { until } => self.dialed(now, until),
            Phase::LoggingIn { .. } | Phase::Open => {
                if let Err(reason) = self.service(now) {
                    self.lost(reason);
                }
            }
        }
    }

    /// Start an attempt on its own thread: a connect blocks (TCP, proxy,
    /// TLS, upgrade, up to the connect timeout; DNS without one), and
    /// `close` must not wait for it.
    fn connect(&mut self) {
        self.set_state(LinkState::Connecting {
            attempt: self.backoff.failures(),
        });
        let deadline = crate::time::from_now(self.shared.cfg.connect_timeout);
        let (tx, rx) = crossbeam_channel::bounded(1);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("longlink-connect".into())
            .spawn(move || {
                let result = transport::connect(&shared.cfg, deadline);
                // Abandoned (close, or too late): the socket closes here.
                let _ = tx.send(result);
                shared.wake();
            });
        match spawned {
            Ok(_) => {
                self.attempt = Some(rx);
                // DNS has no timeout of its own: past this, give up on it.
                let until = crate::time::after(deadline, ATTEMPT_GRACE);
                self.phase = Phase::Dialing { until };
            }
            Err(e) => self.attempt_failed(Error::Connect {
                context: "spawning the connect thread".into(),
                source: Box::new(e),
            }),
        }
    }

    /// Take the attempt's answer if it has come.
    fn dialed(&mut self, now: Instant, until: Instant) {
        let answer = match self.attempt.as_ref().map(Receiver::try_recv) {
            Some(Ok(answer)) => answer,
            Some(Err(TryRecvError::Empty)) if now < until => return,
            Some(Err(TryRecvError::Empty)) => Err(Error::Connect {
                context: "connecting".into(),
                source: "the attempt did not finish within the connect timeout".into(),
            }),
            Some(Err(TryRecvError::Disconnected)) | None => Err(Error::Connect {
                context: "connecting".into(),
                source: "the connect thread ended without an answer".into(),
            }),
        };
        self.attempt = None;
        match answer.and_then(|ws| self.register(ws)) {
            Ok(conn) => self.connected(conn),
            Err(e) => self.attempt_failed(e),
        }
    }

    fn register(&mut self, ws: Ws) -> Result<Conn, Error> {
        let cfg = &self.shared.cfg;
        self.conn_ids += 1;
        let live = Liveness::new(
            Instant::now(),
            cfg.heartbeat_interval,
            cfg.heartbeat_timeout,
        );
        Conn::register(self.conn_ids, ws, self.shared.poller.clone(), live).map_err(|e| {
            Error::Connect {
                context: "registering the socket".into(),
                source: Box::new(e),
            }
        })
    }

    fn connected(&mut self, conn: Conn) {
        // The first reads and writes (TLS) may run deep.
        self.stack_dirty = true;
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let id = conn.id;
        self.conn = Some(conn);
        shared.live_conn.store(id, Ordering::Release);
        Counters::add(&shared.counters.connects, 1);
        let via = cfg.proxy.as_ref().map_or_else(String::new, |p| {
            format!(" through proxy {}:{}", p.host, p.port)
        });
        log::info!("longlink: connected to {}{via}", redact_url(&cfg.url));
        if cfg.on_open.is_some() {
            self.phase = Phase::LoggingIn {
                deadline: crate::time::from_now(cfg.login_timeout),
            };
            self.set_state(LinkState::LoggingIn);
            let _ = self.dispatch.send(Event::Hook { conn: id });
        } else {
            self.open(Instant::now());
        }
    }

    fn attempt_failed(&mut self, e: Error) {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        Counters::add(&shared.counters.connect_failures, 1);
        let reason = e.describe();
        log::warn!(
            "longlink: connecting to {} failed: {reason}",
            redact_url(&cfg.url)
        );
        if e.is_permanent(cfg.retry_rejections) {
            self.end(CloseReason::Fatal(reason), Some(e));
        } else {
            self.shared.set_last_error(e);
            self.retry(Instant::now(), reason);
        }
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open;
        self.backoff.on_up(now);
        self.set_state(LinkState::Open);
    }

    /// Schedule the next attempt.
    fn retry(&mut self, now: Instant, last_error: String) {
        match self.backoff.on_down(now, fastrand::f64()) {
            Next::Retry { delay, .. } if delay.is_zero() => self.phase = Phase::Connecting,
            Next::Retry { attempt, delay } => {
                log::info!("longlink: retrying in {delay:?} (attempt {attempt})");
                self.phase = Phase::Backoff {
                    until: crate::time::after(now, delay),
                };
                self.set_state(LinkState::Backoff { attempt, delay });
            }
            Next::GiveUp { attempts } => {
                log::warn!("longlink: giving up after {attempts} failed attempts");
                let e = Error::Fatal(format!("gave up after {attempts} attempts: {last_error}"));
                self.end(
                    CloseReason::GaveUp {
                        attempts,
                        last_error,
                    },
                    Some(e),
                );
            }
        }
    }

    /// The connection is gone (or the attempt failed after the handshake).
    fn lost(&mut self, reason: String) {
        log::info!("longlink: link lost: {reason}");
        let now = Instant::now();
        if let Some(conn) = self.conn.take() {
            self.bury(conn, now, true);
        }
        for item in self.login.drain(..) {
            fail_item(item, &self.shared, Failure::NotOpen, || {
                Error::ConnectionLost
            });
        }
        if self.volatile_queued > 0 {
            let (volatile, keep): (VecDeque<Item>, VecDeque<Item>) =
                self.outbox.drain(..).partition(|i| i.volatile);
            self.outbox = keep;
            self.volatile_queued = 0;
            for item in volatile {
                self.shared.budget.release(item.weight());
                fail_item(item, &self.shared, Failure::NotOpen, || {
                    Error::ConnectionLost
                });
            }
        }
        self.retry(now, reason);
    }

    /// Account for a dead connection and answer its outstanding requests.
    /// Unacknowledged messages go back to the front of the outbox; with
    /// `retry`, so do idempotent requests (behind them).
    fn bury(&mut self, mut conn: Conn, now: Instant, retry: bool) {
        self.shared.live_conn.store(0, Ordering::Release);
        self.reserve_used = 0;
        let c = &self.shared.counters;
        Counters::add(&c.heartbeat_misses, conn.live.misses());
        let mut again = Vec::new();
        let mut lost_requests = Vec::new();
        // Frames written since the last pong are possibly lost, except
        // requests answered meanwhile and idempotent ones written again.
        let mut not_lost = conn.answered.len() as u64;
        for mut w in conn.pending.drain(now) {
            match w.retry.take().filter(|_| retry) {
                Some(Retry {
                    text,
                    key,
                    deadline,
                }) => {
                    if w.written_at > conn.confirmed {
                        not_lost += 1;
                    }
                    let mut item = Item::new(text);
                    item.written = true;
                    item.reply = Some(Box::new(ReplyTo {
                        key,
                        deadline,
                        waiter: w,
                        idempotent: true,
                    }));
                    self.shared.budget.force_reserve(item.weight());
                    again.push(item);
                }
                None => lost_requests.push(w),
            }
        }
        let unconfirmed = conn.plain - conn.plain_confirmed;
        // Counted before any receipt or caller learns the outcome.
        Counters::add(&c.possibly_lost, unconfirmed.saturating_sub(not_lost));
        for (_, r) in conn.awaiting.drain(..) {
            r.set(Status::Failed(Failure::PossiblyLost));
        }
        for w in lost_requests {
            w.answer(Err(Error::ConnectionLost));
        }
        // Oldest deadline first: the closest to its caller giving up.
        again.sort_by_key(|i| i.reply.as_ref().map(|r| r.deadline));
        for item in again.into_iter().rev() {
            self.outbox.push_front(item);
        }
        if !self.unacked.is_empty() {
            log::debug!(
                "longlink: {} unacknowledged messages go back to the front of the outbox",
                self.unacked.len()
            );
        }
        while let Some(item) = self.unacked.pop_back() {
            self.outbox.push_front(item);
        }
        Counters::store(&c.awaiting_ack, 0);
        self.shared.read_paused.store(false, Ordering::Release);
    }

    /// End for good: no more attempts. Queued sends stay for `close` to hand back.
    fn end(&mut self, reason: CloseReason, err: Option<Error>) {
        let now = Instant::now();
        // An attempt in flight is abandoned: its socket closes when it answers.
        self.attempt = None;
        if let Some(conn) = self.conn.take() {
            self.bury(conn, now, false);
        }
        for item in self.login.drain(..) {
            fail_item(item, &self.shared, Failure::Closed, || {
                Error::ConnectionLost
            });
        }
        let (requests, sends): (VecDeque<Item>, VecDeque<Item>) =
            self.outbox.drain(..).partition(|i| i.reply.is_some());
        self.outbox = sends;
        for item in requests {
            self.shared.budget.release(item.weight());
            fail_item(item, &self.shared, Failure::Closed, || Error::Closed {
                message: None,
            });
        }
        self.shared.refusing.store(true, Ordering::SeqCst);
        if let Some(e) = err {
            self.shared.set_last_error(e);
        }
        self.phase = Phase::Ended;
        self.set_state(LinkState::Closed(reason));
    }

    /// Read, judge liveness, write: one turn on an open connection.
    fn service(&mut self, now: Instant) -> Result<(), String> {
        self.maybe_resume(now);
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if conn.writable {
            conn.writable = false;
            if conn.write_blocked {
                conn.flush()?;
            }
        }
        if conn.readable && !conn.paused {
            let read = self.read(now);
            self.journal_acks();
            read?;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        if !conn.paused {
            match conn.live.check(now) {
                Verdict::Alive => {}
                Verdict::Probe => self.probe(now)?,
                Verdict::Dead => {
                    let t = self.shared.cfg.heartbeat_timeout;
                    return Err(format!("no frame from the server within {t:?} of a ping"));
                }
            }
        }
        let overdue = self
            .conn
            .as_ref()
            .and_then(|c| c.pong_deadline(&self.shared.cfg))
            .is_some_and(|d| now >= d);
        if overdue {
            return Err("the server answers no ping: nothing it read can be confirmed".into());
        }
        let written = self.write(now);
        Counters::store(
            &self.shared.counters.awaiting_ack,
            self.unacked.len() as u64,
        );
        written?;
        // A request just written may need reading resumed for its reply.
        self.maybe_resume(now);
        if let Some(conn) = self.conn.as_mut() {
            conn.set_interest();
        }
        Ok(())
    }

    fn read(&mut self, now: Instant) -> Result<(), String> {
        for _ in 0..READ_BATCH {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            if conn.paused {
                return Ok(());
            }
            match conn.ws.read() {
                Ok(frame) => self.frame(frame, now)?,
                Err(e) if would_block(&e) => {
                    conn.readable = false;
                    return Ok(());
                }
                Err(tungstenite::Error::Utf8(_)) => {
                    conn.live.on_inbound(now);
                    self.invalid(InvalidFrame::NotUtf8);
                }
                Err(tungstenite::Error::Capacity(e)) => {
                    return Err(format!("inbound message over the size limit: {e}"));
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err("the server closed the connection".into());
                }
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
        Ok(())
    }

    fn frame(&mut self, frame: Frame, now: Instant) -> Result<(), String> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.live.on_inbound(now);
        match frame {
            Frame::Text(text) => {
                let c = &self.shared.counters;
                Counters::add(&c.messages_received, 1);
                Counters::add(&c.bytes_received, text.len() as u64);
                match decode(text.as_str(), &self.shared.cfg.operator_field) {
                    Ok(m) => self.route(m, now),
                    Err(bad) => self.invalid(bad),
                }
            }
            Frame::Binary(bytes) => {
                let c = &self.shared.counters;
                Counters::add(&c.messages_received, 1);
                Counters::add(&c.bytes_received, bytes.len() as u64);
                self.invalid(InvalidFrame::Binary(bytes.to_vec()));
            }
            // tungstenite queued the pong; it goes out with the next flush.
            Frame::Ping(_) => conn.need_flush = true,
            Frame::Pong(payload) => {
                if let Some((seq, sent, written, plain)) = conn.ping
                    && payload.as_ref() == seq.to_be_bytes()
                {
                    // The peer's WebSocket layer read every frame before the ping.
                    conn.confirm(written, plain);
                    conn.ping = None;
                    let rtt = now.saturating_duration_since(sent).as_micros() as u64;
                    self.shared
                        .counters
                        .last_rtt_us
                        .store(rtt + 1, Ordering::Relaxed);
                }
            }
            Frame::Close(close) => {
                let _ = conn.ws.flush();
                let why = close.map_or_else(
                    || "no code".to_owned(),
                    |c| format!("code {}", u16::from(c.code)),
                );
                return Err(format!("the server closed the link ({why})"));
            }
            Frame::Frame(_) => {}
        }
        Ok(())
    }

    /// A reply to a request goes straight to its caller; anything else to subscribers.
    fn route(&mut self, m: Message, now: Instant) {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let id = cfg
            .correlation_field
            .as_ref()
            .and_then(|f| m.get(f))
            .and_then(Value::as_u64);
        let op = m.operator();
        if shared.seq.is_some() && op == cfg.ack_operator {
            match m.get(&cfg.msg_id_field).and_then(Value::as_u64) {
                Some(n) => self.on_ack(n),
                None => log::warn!("longlink: an {op:?} without a numeric id; ignored"),
            }
            return;
        }
        let error_named = !cfg.error_suffix.is_empty() && op.ends_with(cfg.error_suffix.as_str());
        match conn.pending.offer(op, id, error_named, now) {
            Matched::Reply { waiter, error } => {
                if waiter.written_at > conn.confirmed {
                    conn.answered.push(waiter.written_at);
                }
                let error = error || waiter.errors.iter().any(|e| e == op);
                waiter.answer(if error { Err(Error::Remote(m)) } else { Ok(m) });
                self.just_answered = true;
            }
            Matched::Late => {
                log::debug!("longlink: late reply {op:?} dropped (its caller gave up)")
            }
            Matched::None => {
                let heartbeat = cfg
                    .app_heartbeat
                    .as_ref()
                    .is_some_and(|(_, reply)| reply == op);
                if !heartbeat || cfg.app_heartbeat_dispatch {
                    self.deliver(Event::Message(m));
                }
            }
        }
    }

    fn invalid(&mut self, frame: InvalidFrame) {
        Counters::add(&self.shared.counters.invalid_frames, 1);
        log::debug!("longlink: invalid frame: {frame:?}");
        self.deliver(Event::Invalid(frame));
    }

    /// Hand to the dispatcher; stop reading when it is full (backpressure).
    /// With no subscriber yet there is no dispatcher, and nobody to tell.
    ///
    /// A reply to a request may sit in the socket behind the pushes that
    /// filled the dispatcher, and its caller may be the very subscriber
    /// (or `on_open` hook) the dispatcher waits for: while a request waits,
    /// reading goes on past the bound for up to [`REPLY_RESERVE`] bytes.
    fn deliver(&mut self, ev: Event) {
        if !self.shared.dispatcher_on.load(Ordering::Acquire) {
            return;
        }
        let size = match &ev {
            Event::Message(m) => m.len(),
            _ => 0,
        };
        let depth = self.shared.dispatch_depth.fetch_add(1, Ordering::AcqRel) + 1;
        let _ = self.dispatch.send(ev);
        if depth >= self.shared.cfg.dispatch_capacity
            && let Some(conn) = self.conn.as_mut()
        {
            if conn.pending.is_empty() || self.reserve_used >= REPLY_RESERVE {
                conn.paused = true;
                self.shared.read_paused.store(true, Ordering::Release);
            } else {
                self.reserve_used += size.max(1);
            }
        }
    }

    /// Read again once the dispatcher has caught up, or while a request
    /// waits and the reply reserve is not used up.
    fn maybe_resume(&mut self, now: Instant) {
        let cap = self.shared.cfg.dispatch_capacity;
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if !conn.paused {
            return;
        }
        let caught_up = self.shared.dispatch_depth.load(Ordering::Acquire) <= cap / 2;
        if caught_up {
            self.reserve_used = 0;
        }
        if caught_up || (!conn.pending.is_empty() && self.reserve_used < REPLY_RESERVE) {
            conn.paused = false;
            conn.readable = true;
            // The silence while we did not read says nothing about the peer.
            conn.live.on_inbound(now);
            conn.pong_wait_from = now;
            self.shared.read_paused.store(false, Ordering::Release);
        }
    }

    fn probe(&mut self, now: Instant) -> Result<(), String> {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        conn.send_ping(now)?;
        // While the on_open step runs, only its messages may go out: the
        // ping proves liveness alone, the app heartbeat waits for Open.
        if let Some((text, _)) = cfg
            .app_heartbeat
            .as_ref()
            .filter(|_| self.phase == Phase::Open)
        {
            write_frame(conn, Frame::Text(text.clone().into()))?;
            Counters::add(&self.shared.counters.messages_sent, 1);
            Counters::add(&self.shared.counters.bytes_sent, text.len() as u64);
        }
        conn.live.on_probe_sent(now);
        conn.need_flush = true;
        log::debug!("longlink: heartbeat probe sent");
        Ok(())
    }

    /// Write the hook's messages, then (when open) the outbox, in order; one flush.
    fn write(&mut self, now: Instant) -> Result<(), String> {
        let open = self.phase == Phase::Open;
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let shared = &self.shared;
        let counters = &shared.counters;
        let mut n = 0u64;
        let mut bytes = 0u64;
        let mut resent = 0u64;
        // Room given back to the budget: once per batch, not per message.
        let mut freed = (0usize, 0usize);
        let mut result = Ok(());
        while n < WRITE_BATCH as u64 && !conn.write_blocked && !conn.tracking_full() {
            let mut item = if let Some(item) = self.login.pop_front() {
                item
            } else if open {
                match self.outbox.pop_front() {
                    Some(item) => {
                        if item.volatile {
                            self.volatile_queued -= 1;
                        }
                        // At-least-once messages hold their room until acknowledged.
                        if item.id.is_none() {
                            freed.0 += 1;
                            freed.1 += item.weight();
                        }
                        item
                    }
                    None => break,
                }
            } else {
                break;
            };
            if item.reply.as_ref().is_some_and(|r| r.deadline <= now) {
                // Its caller has given up: never send a request late.
                continue;
            }
            if !item.written && item.expires.is_some_and(|e| e <= now) {
                if item.id.is_some() {
                    shared.budget.release(item.weight());
                }
                expire_item(item, shared);
                continue;
            }
            let len = item.text.len() as u64;
            // Keep the text only if it may have to be written again.
            let keep = item.id.is_some() || item.reply.as_ref().is_some_and(|r| r.idempotent);
            let text = if keep {
                item.text.clone()
            } else {
                std::mem::take(&mut item.text)
            };
            match conn.ws.write(Frame::Text(text)) {
                Ok(()) => {}
                // The frame is in tungstenite's buffer: never write it again.
                Err(e) if would_block(&e) => conn.write_blocked = true,
                Err(tungstenite::Error::WriteBufferFull(_)) => {
                    log::warn!("longlink: a {len}-byte message is too large to send; dropped");
                    if item.id.is_some() {
                        shared.budget.release(item.weight());
                    }
                    fail_item(item, shared, Failure::TooLarge, || Error::InvalidMessage {
                        reason: format!("{len} bytes is more than the write buffer holds"),
                        message: Value::Null,
                    });
                    continue;
                }
                // Part of it may have left: account for it as written.
                Err(e) => result = Err(format!("write failed: {e}")),
            }
            conn.written += 1;
            n += 1;
            bytes += len;
            if item.written {
                resent += 1;
            }
            item.written = true;
            if let Some(r) = &item.receipt {
                r.set(Status::Written);
            }
            if item.id.is_some() {
                self.unacked.push_back(item);
            } else {
                conn.plain += 1;
                if let Some(r) = item.receipt {
                    conn.awaiting.push_back((conn.written, r));
                }
                if let Some(r) = item.reply {
                    let ReplyTo {
                        key,
                        deadline,
                        mut waiter,
                        idempotent,
                    } = *r;
                    if idempotent {
                        waiter.retry = Some(Retry {
                            text: item.text,
                            key: key.clone(),
                            deadline,
                        });
                    }
                    waiter.written_at = conn.written;
                    conn.pending.insert(key, waiter, now, deadline);
                }
            }
            if result.is_err() {
                break;
            }
        }
        if freed.0 > 0 {
            shared.budget.release_many(freed.0, freed.1);
        }
        if n > 0 {
            Counters::add(&counters.messages_sent, n);
            Counters::add(&counters.bytes_sent, bytes);
            Counters::add(&counters.resent, resent);
            conn.live.on_outbound(now);
            conn.need_flush = true;
        }
        result?;
        if conn.ping.is_none() && conn.written > conn.confirmed {
            // A pong proves the server's WebSocket layer read every frame
            // written before this ping: it narrows "possibly lost" to the
            // frames written since. One outstanding at a time, so at most
            // one ping per round trip while writing.
            conn.send_ping(now)?;
        }
        if conn.need_flush && !conn.write_blocked {
            conn.flush()?;
        }
        Ok(())
    }

    /// Whether there is more to do right away (do not sleep).
    fn busy(&self) -> bool {
        match (&self.conn, self.phase) {
            (_, Phase::Connecting) => self.closing.is_none(),
            (Some(c), Phase::Open | Phase::LoggingIn { .. }) => {
                let can_write = !c.write_blocked
                    && !c.tracking_full()
                    && (!self.login.is_empty()
                        || (self.phase == Phase::Open && !self.outbox.is_empty()));
                (c.readable && !c.paused) || can_write || (c.need_flush && !c.write_blocked)
            }
            _ => false,
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Backoff { until } | Phase::Dialing { until } => Some(until),
            Phase::LoggingIn { deadline } => Some(deadline),
            _ => None,
        };
        let live = self
            .conn
            .as_ref()
            .filter(|c| !c.paused)
            .map(|c| c.live.next_deadline());
        let pong = self
            .conn
            .as_ref()
            .and_then(|c| c.pong_deadline(&self.shared.cfg));
        let close = self.closing.as_ref().map(|c| c.deadline);
        let sync = self.shared.try_journal(|j| j.sync_due()).flatten();
        [phase, live, pong, close, self.ttl_next, sync]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sleep in the poller until the socket, a caller or the next deadline wakes us.
    fn park(&mut self) {
        let busy = self.busy();
        if busy && self.phase == Phase::Connecting {
            return;
        }
        if std::mem::take(&mut self.just_answered) && !busy && self.spin() {
            return;
        }
        let planned = self.next_deadline();
        let timeout = if busy {
            Some(Duration::ZERO)
        } else {
            planned.map(|d| d.saturating_duration_since(Instant::now()))
        };
        let cap = self.shared.cfg.dispatch_capacity;
        self.shared.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in `Shared::wake`: either the caller sees us
        // sleeping and notifies, or we see its command here.
        fence(Ordering::SeqCst);
        let resumable = self.conn.as_ref().is_some_and(|c| c.paused)
            && self.shared.dispatch_depth.load(Ordering::Acquire) <= cap / 2;
        let answered = self.attempt.as_ref().is_some_and(|a| !a.is_empty());
        if !self.rx.is_empty() || resumable || answered {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        if self.stack_dirty && !busy {
            // A connect went deep; the link may now idle for hours.
            self.stack_dirty = false;
            crate::stack::release_below(self.stack_top);
        }
        self.events.clear();
        let waited = self.shared.poller.wait(&mut self.events, timeout);
        self.shared.sleeping.store(false, Ordering::SeqCst);
        if let Err(e) = waited {
            log::error!("longlink: poller wait failed: {e}");
        }
        let woke = Instant::now();
        if let (Some(planned), Some(conn)) = (planned, self.conn.as_mut())
            && woke > crate::time::after(planned, FREEZE_GAP)
        {
            log::info!(
                "longlink: woke {:?} late (process frozen?); probing the peer",
                woke - planned
            );
            conn.live.on_resumed(woke);
        }
        if let Some(conn) = self.conn.as_mut() {
            for ev in self.events.iter() {
                if ev.key == conn.id as usize {
                    conn.readable |= ev.readable;
                    conn.writable |= ev.writable;
                }
            }
        }
    }

    /// After a reply, a caller usually asks again within microseconds:
    /// watching the channel for a moment saves it the wake-up syscall and
    /// this thread the trip through the scheduler. Bounded by [`SPIN`];
    /// never while idle. Whether a command came.
    fn spin(&self) -> bool {
        let until = Instant::now() + SPIN;
        while Instant::now() < until {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if !self.rx.is_empty() {
                return true;
            }
        }
        false
    }

    fn close_ready(&self, now: Instant) -> bool {
        let Some(Closing { deadline, .. }) = &self.closing else {
            return false;
        };
        if now >= *deadline {
            return true;
        }
        match self.phase {
            Phase::Open => {
                self.outbox.is_empty()
                    && self.unacked.is_empty()
                    && self.login.is_empty()
                    && self.rx.is_empty()
                    && self
                        .conn
                        .as_ref()
                        .is_none_or(|c| !c.write_blocked && !c.need_flush)
            }
            // Let the login finish so the outbox can flush.
            Phase::LoggingIn { .. } => false,
            _ => true,
        }
    }

    /// Say goodbye on `conn`: a ping, then a Close frame; wait (until
    /// `deadline`) for the pong and the peer's Close. Only the pong proves
    /// the peer read what we wrote: a Close from the peer may have crossed
    /// ours, sent before it read our last frames, and servers drop data
    /// that arrives after they began closing. Acknowledgements read
    /// meanwhile still count.
    fn goodbye(&mut self, conn: &mut Conn, deadline: Instant) {
        let s = tcp(&conn.ws);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_nonblocking(false).is_err() {
            return;
        }
        let _ = s.set_write_timeout(Some(left));
        let pinged = conn.send_ping(Instant::now()).is_ok();
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = conn.ws.close(Some(frame));
        let _ = conn.ws.flush();
        let (mut confirmed, mut peer_closed) = (!pinged, false);
        while !(confirmed && peer_closed) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tcp(&conn.ws).set_read_timeout(Some(left)).is_err() {
                return;
            }
            match conn.ws.read() {
                Ok(Frame::Pong(payload)) => {
                    if let Some((seq, _, written, plain)) = conn.ping
                        && payload.as_ref() == seq.to_be_bytes()
                    {
                        conn.confirm(written, plain);
                        conn.ping = None;
                        confirmed = true;
                    }
                }
                Ok(Frame::Close(_)) => peer_closed = true,
                Ok(Frame::Text(text)) => {
                    if let Ok(m) = decode(text.as_str(), &self.shared.cfg.operator_field)
                        && self.shared.seq.is_some()
                        && m.operator() == self.shared.cfg.ack_operator
                        && let Some(n) =
                            m.get(&self.shared.cfg.msg_id_field).and_then(Value::as_u64)
                    {
                        self.on_ack(n);
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Close: say goodbye, hand back what is left, stop.
    fn finish(&mut self) {
        let Some(Closing { deadline, done }) = self.closing.take() else {
            return;
        };
        // An attempt still running is abandoned: its socket closes when it answers.
        self.attempt = None;
        // Sends that passed their `refusing` check are about to push.
        while self.shared.entering.load(Ordering::SeqCst) > 0 {
            std::thread::yield_now();
        }
        while let Ok(cmd) = self.rx.try_recv() {
            if let Command::Send(item) = cmd {
                self.outbox.push_back(item);
            } else if let Command::Login { item, .. } = cmd {
                fail_item(item, &self.shared, Failure::Closed, || Error::Closed {
                    message: None,
                });
            }
        }
        if let Some(mut conn) = self.conn.take() {
            self.goodbye(&mut conn, deadline);
            self.bury(conn, Instant::now(), false);
        }
        for item in self.login.drain(..) {
            fail_item(item, &self.shared, Failure::Closed, || Error::Closed {
                message: None,
            });
        }
        // Messages taken from the channel just now were not looked at: what
        // has run out of time is expired (recorded in the journal below),
        // not handed back or kept for the next start.
        self.expire_all(Instant::now());
        // No sender can hold the journal now: wait for it.
        self.shared.journal_ack.store(self.acked, Ordering::Release);
        let shared = &self.shared;
        let durable = shared
            .journal(|j| {
                shared.journal_catch_up(j);
                j.compact_if_empty();
                j.sync_pending();
            })
            .is_some();
        // Release the file (and its lock) now: a new client may open it.
        if let Some(seq) = &self.shared.seq {
            seq.lock().unwrap_or_else(|e| e.into_inner()).journal = None;
        }
        let mut unsent = Vec::new();
        let mut kept = 0;
        for item in self.outbox.drain(..) {
            self.shared.budget.release(item.weight());
            if let Some(r) = &item.receipt {
                r.set(Status::Failed(Failure::Closed));
            }
            match item.reply {
                Some(r) => r.waiter.answer(Err(Error::Closed { message: None })),
                // In the journal: sent after the next start, not handed back.
                None if durable && item.id.is_some() => kept += 1,
                None => unsent.push(item.text),
            }
        }
        if kept > 0 {
            log::info!("longlink: closed; {kept} messages stay in the journal for the next start");
        }
        if !unsent.is_empty() {
            log::warn!("longlink: closed with {} messages unsent", unsent.len());
        }
        if self.phase != Phase::Ended {
            self.phase = Phase::Ended;
            self.set_state(LinkState::Closed(CloseReason::Requested));
        }
        log::info!("longlink: closed");
        let _ = self.dispatch.send(Event::Stop);
        // Counted before this answer: close reads the count after it.
        let _ = done.send(unsent);
    }
}

/// Write one control or heartbeat frame.
fn write_frame(conn: &mut Conn, frame: Frame) -> Result<(), String> {
    match conn.ws.write(frame) {
        Ok(()) => Ok(()),
        Err(e) if would_block(&e) => {
            conn.write_blocked = true;
            Ok(())
        }
        Err(e) => Err(format!("write failed: {e}")),
    }
}

/// Answer a message that will not be sent: requests get `err()`, plain
/// sends are counted as dropped, receipts learn `why`, and the journal
/// forgets it. The caller has already released its outbox room.
fn fail_item(item: Item, shared: &Shared, why: Failure, err: impl FnOnce() -> Error) {
    // Counted before the receipt or the caller can see the outcome. A
    // message written before (awaiting its ack, or a request written
    // again) may have arrived: possibly lost, not dropped.
    if item.reply.is_none() || why == Failure::Dropped {
        let c = &shared.counters;
        Counters::add(
            if item.written {
                &c.possibly_lost
            } else {
                &c.dropped
            },
            1,
        );
    }
    if let Some(r) = &item.receipt {
        r.set(Status::Failed(why));
    }
    // Closed: a journaled message stays for the next start.
    if let Some(id) = item.id.filter(|_| why != Failure::Closed) {
        shared.journal_drop(id);
    }
    if let Some(r) = item.reply {
        r.waiter.answer(Err(err()));
    }
}

/// A message whose time to live ran out before it was written.
fn expire_item(item: Item, shared: &Shared) {
    Counters::add(&shared.counters.expired, 1);
    if let Some(r) = &item.receipt {
        r.set(Status::Expired);
    }
    if let Some(id) = item.id {
        shared.journal_drop(id);
    }
    log::debug!("longlink: a message expired before it could be written");
}

/// Pop the front item if it matches.
fn pop_if(q: &mut VecDeque<Item>, f: impl FnOnce(&Item) -> bool) -> Option<Item> {
    if q.front().is_some_and(f) {
        q.pop_front()
    } else {
        None
    }
}
