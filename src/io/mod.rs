//! The I/O thread: the driver of the link's [`Session`]. The only code that
//! touches the socket. This is the main loop.
//!
//! Each turn: hand the callers' commands to the session, read until
//! `WouldBlock` (frames go to the session), let the session judge time
//! (deadlines, liveness, backoff), write what it hands out in one batch and
//! flush once, perform what it asks, then park in the poller until the
//! socket is ready, a caller wakes us, or the session's next deadline. An
//! idle link parks until its heartbeat.

mod dial;
mod park;
mod socket;
mod transport;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use polling::Events;
use tungstenite::Message as Frame;
use tungstenite::Utf8Bytes;

use crate::command::{Command, Event, Item};
use crate::session::{Inbound, Output, Session, Transmit, Written};
use crate::shared::Shared;
use crate::{Error, InvalidFrame};
use socket::{Socket, would_block};
use transport::Ws;

/// Frames written per turn before one flush.
const WRITE_BATCH: usize = 4096;
/// Frames read per turn, so a flooding peer cannot starve writes and timers.
const READ_BATCH: usize = 4096;
/// Commands taken per turn.
const COMMAND_BATCH: usize = 16 * 1024;
/// Bytes read past a full dispatcher while a request waits for its reply
/// (which may sit behind the pushes that filled it).
const REPLY_RESERVE: usize = 1 << 20;
/// How long the thread watches for the next request after answering one.
/// Measured (`LONGLINK_PERF_ONLY=rtt cargo bench --bench perf`, 2 cores):
/// request p50 1.34–1.85× raw ping-pong without it, 1.1–1.3× with 50, 100
/// or 200 µs alike, none at 30 µs (a woken caller takes longer to ask again).
const SPIN: Duration = Duration::from_micros(50);
/// Waking this much later than planned means the process was frozen.
const FREEZE_GAP: Duration = Duration::from_secs(2);

pub(crate) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    dispatch: Sender<Event>,
    recovered: Vec<Item>,
) {
    // This frame lives as long as the thread: keep it small, so that an
    // idle link's stack fits in two pages (the connection state is on the
    // heap, and built in a frame of its own).
    let stack_top = crate::stack::Top::here();
    Io::new(shared, rx, dispatch, recovered, stack_top).run();
}

struct Io {
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    dispatch: Sender<Event>,
    session: Session,
    sock: Option<Socket>,
    sock_keys: usize,
    /// The running connection attempt's answer.
    attempt: Option<Receiver<Result<Ws, Error>>>,
    /// `close` was called: its deadline, and where to report.
    closing: Option<(Instant, Sender<Vec<Utf8Bytes>>)>,
    /// Highest acknowledgement recorded in the journal.
    journal_acked: u64,
    /// Bytes read past a full dispatcher for a waiting request's sake.
    reserve_used: usize,
    events: Events,
    /// Where this thread's stack began, for [`crate::stack::release_below`].
    stack_top: crate::stack::Top,
    /// A connection was made since the stack was last trimmed.
    stack_dirty: bool,
}

impl Io {
    /// On the heap, and built in a frame that is gone before the loop runs.
    #[inline(never)]
    fn new(
        shared: Arc<Shared>,
        rx: Receiver<Command>,
        dispatch: Sender<Event>,
        recovered: Vec<Item>,
        stack_top: crate::stack::Top,
    ) -> Box<Io> {
        let session = Session::new(
            shared.cfg.rules.clone(),
            shared.budget.clone(),
            shared.counters.clone(),
            recovered,
        );
        Box::new(Io {
            shared,
            rx,
            dispatch,
            session,
            sock: None,
            sock_keys: 0,
            attempt: None,
            closing: None,
            journal_acked: 0,
            reserve_used: 0,
            // One socket is registered at a time.
            events: Events::with_capacity(NonZeroUsize::new(2).expect("2 > 0")),
            stack_top,
            stack_dirty: false,
        })
    }

    /// The steps are kept out of the loop (`#[inline(never)]`): their
    /// temporaries live only while they run, in stack pages given back before
    /// a long sleep, and the frames an idle link keeps stay small.
    fn run(&mut self) {
        loop {
            let now = Instant::now();
            self.take_commands(now);
            self.take_attempt(now);
            self.journal_turn(now);
            let flushed = self.sock.as_ref().is_none_or(Socket::flushed);
            if self.session.close_ready(now, flushed && self.rx.is_empty()) {
                return self.finish();
            }
            self.service(now);
            self.park();
        }
    }

    #[inline(never)]
    fn take_commands(&mut self, now: Instant) {
        for _ in 0..COMMAND_BATCH {
            let Ok(cmd) = self.rx.try_recv() else { break };
            if let Command::Close { deadline, done } = cmd {
                self.session.handle_close(deadline);
                self.closing.get_or_insert((deadline, done));
            } else {
                self.session.handle_command(now, cmd);
            }
        }
        self.perform(now);
    }

    /// Read, let the session judge time, write: one turn.
    #[inline(never)]
    fn service(&mut self, now: Instant) {
        self.resume_reading(now);
        if let Err(reason) = self.read(now) {
            self.session.handle_lost(now, reason);
        }
        self.perform(now);
        self.journal_acks();
        self.session.handle_timeout(now);
        self.perform(now);
        // A fresh clock: a request taken this turn may have been made after
        // `now`, with a deadline already past (a zero timeout): never late.
        if let Err(reason) = self.write(Instant::now()) {
            self.session.handle_lost(now, reason);
        }
        self.perform(now);
        // A request just written may need reading resumed for its reply.
        self.resume_reading(now);
        if let Some(s) = self.sock.as_mut() {
            s.set_interest();
        }
    }

    /// Do what the session asks, in its order. Counters have moved already.
    fn perform(&mut self, now: Instant) {
        while let Some(out) = self.session.poll_output() {
            match out {
                Output::Connect { deadline, endpoint } => self.dial(now, deadline, endpoint),
                Output::AbandonAttempt => self.attempt = None,
                Output::GoAway(code) => {
                    if let Some(s) = self.sock.take() {
                        s.go_away(code);
                    }
                }
                Output::Disconnect => {
                    self.sock = None;
                    self.reserve_used = 0;
                    self.shared.live_conn.store(0, Ordering::Release);
                    self.shared.read_paused.store(false, Ordering::Release);
                }
                Output::RunHook { conn } => {
                    let _ = self.dispatch.send(Event::Hook { conn });
                }
                Output::Dispatch(ev) => self.deliver(now, ev),
                Output::Answer(a) => {
                    let (waiter, answer) = *a;
                    waiter.answer(answer);
                }
                Output::Receipt(cell, status) => cell.set(status),
                Output::State(s) => {
                    self.shared.set_state(s.clone());
                    if self.shared.dispatcher_on.load(Ordering::Acquire) {
                        let _ = self.dispatch.send(Event::State(s));
                    }
                }
                Output::JournalDrop(id) => self.shared.journal_drop(id),
                Output::LastError(e) => self.shared.set_last_error(e),
                Output::Ended => self.shared.refusing.store(true, Ordering::SeqCst),
            }
        }
    }

    fn read(&mut self, now: Instant) -> Result<(), String> {
        for _ in 0..READ_BATCH {
            let Some(s) = self.sock.as_mut() else {
                return Ok(());
            };
            if s.paused || !s.readable {
                return Ok(());
            }
            let inbound = match s.ws.read() {
                Ok(Frame::Text(t)) => Inbound::Text(t),
                Ok(Frame::Binary(b)) => Inbound::Binary(b.to_vec()),
                // tungstenite queued the pong; it goes out with the next flush.
                Ok(Frame::Ping(_)) => {
                    s.need_flush = true;
                    Inbound::Ping
                }
                Ok(Frame::Pong(p)) => Inbound::Pong(p.to_vec()),
                Ok(Frame::Close(close)) => {
                    let _ = s.ws.flush();
                    Inbound::Close(close.map(|c| u16::from(c.code)))
                }
                Ok(Frame::Frame(_)) => continue,
                Err(e) if would_block(&e) => {
                    s.readable = false;
                    return Ok(());
                }
                Err(tungstenite::Error::Utf8(_)) => Inbound::NotUtf8,
                Err(tungstenite::Error::Capacity(e)) => {
                    return Err(format!("inbound message over the size limit: {e}"));
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Err("the server closed the connection".into());
                }
                Err(e) => return Err(format!("read failed: {e}")),
            };
            self.session.handle_frame(now, inbound);
            self.perform(now);
        }
        Ok(())
    }

    /// Write what the session hands out, in order, then one flush.
    fn write(&mut self, now: Instant) -> Result<(), String> {
        let Some(s) = self.sock.as_mut() else {
            return Ok(());
        };
        if s.writable {
            s.writable = false;
            if s.write_blocked {
                s.flush()?;
            }
        }
        let mut result = Ok(());
        for _ in 0..WRITE_BATCH {
            if s.write_blocked {
                break;
            }
            let Some(t) = self.session.poll_transmit(now) else {
                break;
            };
            let (frame, len) = match t {
                Transmit::Ping(seq) => (Frame::Ping(seq.to_be_bytes().to_vec().into()), None),
                Transmit::Text(text) => {
                    let len = text.len();
                    (Frame::Text(text), Some(len))
                }
            };
            let written = match s.write(frame) {
                Ok(()) => Written::Yes,
                Err(tungstenite::Error::WriteBufferFull(_)) => Written::TooLarge,
                // Part of it may have left: account for it as written.
                Err(e) => {
                    result = Err(format!("write failed: {e}"));
                    Written::Yes
                }
            };
            if let Some(len) = len {
                self.session.transmitted(now, len, written);
            }
            if result.is_err() {
                break;
            }
        }
        let ping = self.session.end_batch(now);
        result?;
        if let Some(seq) = ping {
            s.write(Frame::Ping(seq.to_be_bytes().to_vec().into()))
                .map_err(|e| format!("write failed: {e}"))?;
        }
        if s.need_flush && !s.write_blocked {
            s.flush()?;
        }
        Ok(())
    }

    /// Hand to the dispatcher; stop reading when it is full (backpressure).
    /// With no subscriber yet there is no dispatcher, and nobody to tell:
    /// the message is counted as unclaimed.
    ///
    /// A reply to a request may sit in the socket behind the pushes that
    /// filled the dispatcher, and its caller may be the very subscriber
    /// (or `on_open` hook) the dispatcher waits for: while a request waits,
    /// reading goes on past the bound for up to [`REPLY_RESERVE`] bytes.
    fn deliver(&mut self, now: Instant, ev: Event) {
        if !self.shared.dispatcher_on.load(Ordering::Acquire) {
            if let Event::Message(_) = ev {
                crate::state::Counters::add(&self.shared.counters.unclaimed, 1);
            }
            return;
        }
        let size = match &ev {
            Event::Message(m) => m.len(),
            Event::Invalid(InvalidFrame::Binary(b)) => b.len(),
            _ => 0,
        };
        let depth = self.shared.dispatch_depth.fetch_add(1, Ordering::AcqRel) + 1;
        let _ = self.dispatch.send(ev);
        if depth >= self.shared.cfg.dispatch_capacity
            && let Some(s) = self.sock.as_mut()
        {
            if !self.session.awaiting_reply() || self.reserve_used >= REPLY_RESERVE {
                s.paused = true;
                self.shared.read_paused.store(true, Ordering::Release);
                self.session.handle_reading(now, false);
            } else {
                self.reserve_used += size.max(1);
            }
        }
    }

    /// Read again once the dispatcher has caught up, or while a request
    /// waits and the reply reserve is not used up.
    fn resume_reading(&mut self, now: Instant) {
        let cap = self.shared.cfg.dispatch_capacity;
        let Some(s) = self.sock.as_mut() else {
            return;
        };
        if !s.paused {
            return;
        }
        let caught_up = self.shared.dispatch_depth.load(Ordering::Acquire) <= cap / 2;
        if caught_up {
            self.reserve_used = 0;
        }
        if caught_up || (self.session.awaiting_reply() && self.reserve_used < REPLY_RESERVE) {
            s.paused = false;
            s.readable = true;
            self.shared.read_paused.store(false, Ordering::Release);
            self.session.handle_reading(now, true);
        }
    }

    /// Journal upkeep that waits for nobody: drops recorded while it was
    /// busy, the interval sync.
    #[inline(never)]
    fn journal_turn(&mut self, now: Instant) {
        let shared = &self.shared;
        shared.try_journal(|j| {
            shared.journal_catch_up(j);
            j.sync_if_due(now);
        });
    }

    /// Record acknowledgements in the journal (once per turn, not per ack).
    fn journal_acks(&mut self) {
        let n = self.session.acked();
        if n > self.journal_acked && self.shared.cfg.journal.is_some() {
            self.shared.journal_ack.store(n, Ordering::Release);
            // Busy: the sender holding it records it, or we try next turn.
            if self.shared.try_journal(|j| j.ack(n)).is_some() {
                self.journal_acked = n;
            }
        }
    }

    /// Say goodbye: a ping, then a Close frame; wait (until `deadline`) for
    /// the pong and the peer's Close. Only the pong proves the peer read
    /// what we wrote: a Close from the peer may have crossed ours, sent
    /// before it read our last frames, and servers drop data that arrives
    /// after they began closing. What arrives meanwhile (the pong,
    /// acknowledgements, replies) goes to the session, and what it decides
    /// is performed at once: a reply reaches its caller now, not after the
    /// goodbye (whose wait may outlast the request's deadline).
    fn goodbye(&mut self, s: &mut Socket, deadline: Instant) {
        if deadline <= Instant::now() {
            return;
        }
        let ping = self.session.goodbye_ping(Instant::now());
        if !s.start_goodbye(ping, deadline) {
            return;
        }
        let mut peer_closed = false;
        while !(peer_closed && self.session.confirmed()) {
            let Some(frame) = s.goodbye_frame(deadline) else {
                return;
            };
            let now = Instant::now();
            match frame {
                Frame::Pong(p) => self.session.handle_frame(now, Inbound::Pong(p.to_vec())),
                Frame::Text(t) => self.session.handle_frame(now, Inbound::Text(t)),
                Frame::Close(_) => peer_closed = true,
                _ => {}
            }
            self.perform(now);
        }
    }

    /// Close: say goodbye, hand back what is left, release the journal, stop.
    #[inline(never)]
    fn finish(&mut self) {
        let Some((deadline, done)) = self.closing.take() else {
            return;
        };
        // An attempt still running is abandoned: its socket closes when it answers.
        self.attempt = None;
        // Sends that passed their `refusing` check are about to push.
        while self.shared.entering.load(Ordering::SeqCst) > 0 {
            std::thread::yield_now();
        }
        let now = Instant::now();
        while let Ok(cmd) = self.rx.try_recv() {
            if !matches!(cmd, Command::Close { .. }) {
                self.session.handle_command(now, cmd);
            }
        }
        if let Some(mut s) = self.sock.take() {
            self.goodbye(&mut s, deadline);
        }
        let unsent = self.session.finish(Instant::now());
        self.perform(Instant::now());
        // No sender can hold the journal now: wait for it.
        self.shared
            .journal_ack
            .store(self.session.acked(), Ordering::Release);
        let shared = &self.shared;
        shared.journal(|j| {
            shared.journal_catch_up(j);
            j.compact_if_empty();
            j.sync_pending();
        });
        // Release the file (and its lock) now: a new client may open it.
        if let Some(seq) = &self.shared.seq {
            seq.lock().unwrap_or_else(|e| e.into_inner()).journal = None;
        }
        log::info!("longlink: closed");
        let _ = self.dispatch.send(Event::Stop);
        // Counted before this answer: close reads the count after it.
        let _ = done.send(unsent);
    }
}
