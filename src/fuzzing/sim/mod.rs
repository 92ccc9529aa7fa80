//! A deterministic simulation of one link: the real `Session`, driven as
//! the I/O thread drives it, against a simulated clock, network and server,
//! with every step checked against a small reference model.
//!
//! - **Clock**: an `Instant` taken once, plus an offset the steps advance,
//!   and a wall clock that starts at a fixed date for the journal's
//!   deadlines. Nothing the simulation depends on reads the real clock
//!   after [`Sim::new`] (a journal notes when it was opened, for a sync
//!   policy that never syncs here).
//! - **Network**: frames in flight each way with a latency (in order, as on
//!   TCP); a reset (both ways lost, the client reads an error), a black
//!   hole (everything vanishes, nobody is told), a connect attempt that
//!   succeeds, fails, is rejected for good or hangs until the session gives
//!   it up.
//! - **Server**: deduplicates by `(msgRun, msgId)` as the wire contract
//!   says and acknowledges cumulatively (at once, later or never), answers
//!   requests by name (`X` → `XOK` / `XError`) and by `reqId` (at once,
//!   late or never), pushes, answers pings (or stops), closes at any moment.
//! - **Caller**: sends with every option, requests by name or id (idempotent
//!   or not), under every overflow policy (a caller blocked for room waits
//!   across steps), `reconnect_now`, the `on_open` hook's verdict, `close`
//!   with its goodbye as `Socket::goodbye` does it. Waiters are real
//!   one-shot channels the caller polls; it gives up at its deadline.
//! - **Driver**: as `io::Io`: a write buffer that refuses frames over its
//!   size (`Written::TooLarge`), a dispatcher whose subscribers lag (reading
//!   pauses while it is full), a process frozen for a while (the driver
//!   wakes late and says so), and durable mode: the real journal in a
//!   directory of its own, and the process dying at any step, a new one
//!   starting on what the journal recovered.
//!
//! Here: the configuration, the steps and the simulation's state; the
//! caller in `caller.rs`, the model's records in `model.rs`, the driver
//! in `driver.rs`, reading pauses and freezes in `reading.rs`, the journal
//! and restarts in `restart.rs`, the network and the clock in `net.rs`, the
//! server in `server.rs`, the invariants in `checks.rs`.
//!
//! Randomness comes from the configuration's seed only (the server's
//! choices, latencies, and the session's backoff jitter through
//! `fastrand`'s thread-local generator), so a trace replays exactly.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::command::Command;
use crate::outbox::Budget;
use crate::session::{Output, Session};
use crate::state::Counters;
use crate::{LinkState, Overflow};
use caller::Blocked;
pub use model::Figures;
use model::{Msg, Req};
use net::{Down, Flight, Up};
use restart::Disk;
use rules::{
    ENDPOINTS, Endpoints, HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, SPREAD, WINDOW, login_timeout,
    rules,
};
use server::Server;

mod caller;
mod checks;
mod driver;
mod model;
mod net;
mod reading;
mod restart;
mod rules;
mod server;

/// The setup of one simulated link.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Seeds the server, the network and the session's jitter.
    pub seed: u64,
    /// At-least-once delivery (ids, acknowledgements, re-sending).
    pub at_least_once: bool,
    /// Requests carry a `reqId` and replies are matched by it.
    pub by_id: bool,
    /// An `on_open` hook gates every connection.
    pub on_open: bool,
    /// Durable: at-least-once messages go to a journal file of their own
    /// (this implies `at_least_once`), and [`Step::Restart`] restarts the
    /// process on it.
    pub durable: bool,
    /// What `send` does when the outbox is full.
    pub overflow: Overflow,
    /// Outbox capacity (messages).
    pub capacity: usize,
    /// Outbox capacity (bytes).
    pub max_bytes: usize,
    /// An application heartbeat (`Heart` → `HeartOK`) besides pings.
    pub app_heartbeat: bool,
    /// Give up after this many failed attempts.
    pub max_attempts: Option<u32>,
    /// Connect and `on_open` timeouts are `Duration::MAX` (no limit).
    pub unlimited: bool,
    /// Receipts and answered requests a connection keeps while it waits
    /// for a pong (65,536 in the library; small, the bound is reached).
    pub track_cap: usize,
    /// The largest frame the write buffer takes; a larger message is
    /// `Written::TooLarge` (`usize::MAX`: any).
    pub write_limit: usize,
    /// Subscribers, whose dispatcher holds this many events before the
    /// driver stops reading (`None`: no subscriber, no dispatcher).
    pub dispatch_capacity: Option<usize>,
}

/// What the `on_open` hook reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookVerdict {
    /// Logged in.
    Ok,
    /// Failed; the attempt counts as failed.
    Err,
    /// Failed for good: the link ends.
    Fatal,
}

/// One step of a simulation: a caller's action, a fault, or time passing.
#[derive(Debug, Clone)]
pub enum Step {
    /// `send_with`: a message with an optional time to live (ms), volatile
    /// or not, with a receipt or not, padded by this many bytes.
    Send {
        /// Time to live in milliseconds (`u16::MAX`: `Duration::MAX`).
        ttl_ms: Option<u16>,
        /// Never buffered across a reconnect.
        volatile: bool,
        /// With a receipt.
        receipt: bool,
        /// Extra bytes.
        pad: u8,
    },
    /// `request_with` on operator `ReqA` or `ReqB`.
    Request {
        /// Which operator (0: `ReqA`, else `ReqB`).
        op: u8,
        /// Timeout in milliseconds (`u16::MAX`: `Duration::MAX`).
        timeout_ms: u16,
        /// Safe to write again after a reconnect.
        idempotent: bool,
    },
    /// Time passes (ms).
    Advance(u16),
    /// Time passes to the next deadline or arrival.
    Sleep,
    /// The connect attempt in progress succeeds.
    ConnectOk,
    /// The connect attempt in progress fails (transient).
    ConnectFail,
    /// The connect attempt in progress is refused for good (HTTP 403).
    ConnectRejected,
    /// The oldest `on_open` hook still running reports.
    Hook(HookVerdict),
    /// The server pushes this many messages (a burst fills the dispatcher).
    Push(u8),
    /// The connection is reset: frames in flight are lost both ways and
    /// the client reads an error.
    Reset,
    /// The connection becomes a black hole: nothing arrives any more,
    /// and nobody is told.
    BlackHole,
    /// The server sends a Close frame and reads nothing more.
    PeerClose,
    /// The server stops answering pings on this connection.
    NoPong,
    /// The `on_open` hook's `Link` sends (or asks, by name or id as the
    /// link does): for the step still running, or a `Link` kept past it.
    HookSend {
        /// A request (`ReqA`) instead of a message.
        request: bool,
        /// The handle found the connection live just before it went (and
        /// another may have come): the command reaches the session anyway.
        stale: bool,
    },
    /// `reconnect_now`.
    ReconnectNow,
    /// `close` with this timeout (ms).
    Close(u16),
    /// The dispatcher runs up to this many queued events (subscribers
    /// catch up).
    Handle(u8),
    /// The process is frozen this long (ms): time jumps and no timer fires;
    /// then the driver finds it woke late.
    Freeze(u16),
    /// The process dies; a new one starts on the same journal this much
    /// later (ms). Only with `durable`.
    Restart(u16),
    /// `pause`: the app goes to the background.
    Pause,
    /// `resume`: the app is back.
    Resume,
}

/// The simulation: see the module docs.
pub struct Sim {
    cfg: SimConfig,
    rng: fastrand::Rng,
    t0: Instant,
    now: Instant,
    session: Session,
    budget: Arc<Budget>,
    counters: Arc<Counters>,
    stamp_key: String,
    next_id: u64,
    next_k: u64,
    next_req: u64,
    /// Commands waiting for the next turn.
    cmds: VecDeque<Command>,
    /// The running connect attempt (its deadline).
    attempt: Option<Instant>,
    /// Connect attempts failed in a row (no connection between them).
    failed_in_a_row: u32,
    /// Of those, the last ones refused for good, in a row.
    rejected_in_a_row: usize,
    /// A fatal `on_open` verdict was given this step: the link must end.
    fatal_due: bool,
    /// The connection the driver holds.
    sock: Option<u64>,
    /// The client's connection was reset: its next read fails.
    reset: Option<u64>,
    /// Connections that became black holes.
    holes: Vec<u64>,
    hooks: VecDeque<u64>,
    /// The connection the last `on_open` step ran for (its `Link` may be kept).
    last_hook: Option<u64>,
    /// Outputs of the goodbye, with when the session gave them.
    held: VecDeque<(Instant, Output)>,
    up: VecDeque<Flight<Up>>,
    down: VecDeque<Flight<Down>>,
    server: Server,
    msgs: Vec<Msg>,
    reqs: Vec<Req>,
    /// Per connection and operator: replies the server never sent, that
    /// came after their caller gave up, or that went to another request;
    /// and requests that timed out though their own reply came in time.
    robbery: BTreeMap<(u64, String), (u32, u32)>,
    /// The connection the client last read a frame from.
    reading: u64,
    /// The state the session last reported.
    state: Option<LinkState>,
    /// `close` was called (sends are refused).
    closing: bool,
    /// The caller paused the link and has not resumed it.
    app_paused: bool,
    endpoints: Endpoints,
    /// At least once: ids written on this connection whose acknowledgement
    /// the client has not read (the in-flight window bounds them).
    ahead: BTreeMap<u64, usize>,
    /// Acknowledgements the client read on this connection.
    acks_here: usize,
    close_deadline: Option<Instant>,
    /// The session ended for good.
    ended: bool,
    finished: bool,
    figures: Figures,
    /// Trace of what happened, for a failure's report.
    log: VecDeque<String>,
    /// The process: 0 at first, one more at each restart.
    epoch: u32,
    /// Durable: the journal and where it lives.
    disk: Option<Disk>,
    /// The highest acknowledgement a process that died knew.
    acked_before: u64,
    /// Callers waiting for room in the outbox.
    blocked: VecDeque<Blocked>,
    /// Events the dispatcher holds.
    dispatch_depth: usize,
    /// The driver stopped reading: the dispatcher is full.
    paused: bool,
    /// Bytes read past a full dispatcher for a waiting request's sake.
    reserve_used: usize,
    /// Since when the client may have heard nothing from its peer: the
    /// connection, the last frame read, reading resumed, a freeze noticed,
    /// `reconnect_now`.
    quiet_from: Instant,
    /// Since when the driver reads this connection without a pause.
    reading_since: Instant,
    /// When the connection the driver holds was made.
    connected_at: Instant,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("cfg", &self.cfg)
            .field("at_ms", &self.ms())
            .field("figures", &self.figures)
            .finish_non_exhaustive()
    }
}

const LOG_KEEP: usize = 60;

impl Sim {
    /// A link that starts now (the only read of the real clock).
    pub fn new(mut cfg: SimConfig) -> Sim {
        cfg.at_least_once |= cfg.durable;
        // The session's backoff jitter comes from the thread's generator.
        fastrand::seed(cfg.seed);
        let rng = fastrand::Rng::with_seed(cfg.seed);
        let budget = Arc::new(Budget::new(cfg.capacity, cfg.max_bytes));
        let counters = Arc::new(Counters::default());
        let session = Session::new(rules(&cfg), budget.clone(), counters.clone(), Vec::new());
        // Durable: the journal's run, and its ids; else a run of the seed's.
        let disk = cfg.durable.then(Disk::create);
        let run = disk.as_ref().map_or(cfg.seed % (1 << 53), Disk::run);
        let t0 = Instant::now();
        let mut sim = Sim {
            rng,
            t0,
            now: t0,
            session,
            budget,
            counters,
            stamp_key: format!("\"msgRun\":{run},\"msgId\":"),
            next_id: 1,
            next_k: 1,
            next_req: 1,
            cmds: VecDeque::new(),
            attempt: None,
            failed_in_a_row: 0,
            rejected_in_a_row: 0,
            fatal_due: false,
            sock: None,
            reset: None,
            holes: Vec::new(),
            hooks: VecDeque::new(),
            last_hook: None,
            held: VecDeque::new(),
            up: VecDeque::new(),
            down: VecDeque::new(),
            server: Server::default(),
            msgs: Vec::new(),
            reqs: Vec::new(),
            robbery: BTreeMap::new(),
            reading: 0,
            state: None,
            closing: false,
            app_paused: false,
            endpoints: Endpoints::default(),
            ahead: BTreeMap::new(),
            acks_here: 0,
            close_deadline: None,
            ended: false,
            finished: false,
            figures: Figures::default(),
            log: VecDeque::new(),
            epoch: 0,
            disk,
            acked_before: 0,
            blocked: VecDeque::new(),
            dispatch_depth: 0,
            paused: false,
            reserve_used: 0,
            quiet_from: t0,
            reading_since: t0,
            connected_at: t0,
            cfg,
        };
        // The driver's first turn starts the first attempt.
        sim.turn();
        sim.check();
        sim
    }

    /// Figures so far.
    pub fn figures(&self) -> Figures {
        let mut f = self.figures;
        f.delivered = self.server.app.len() as u64;
        f
    }

    /// Whether `close` has finished (later steps do nothing).
    pub fn finished(&self) -> bool {
        self.finished
    }

    pub(super) fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    pub(super) fn note(&mut self, what: impl FnOnce() -> String) {
        if self.log.len() == LOG_KEEP {
            self.log.pop_front();
        }
        let line = format!("{:>7} ms  {}", self.ms(), what());
        self.log.push_back(line);
    }

    /// A broken invariant: say which, with the recent trace.
    #[track_caller]
    pub(super) fn fail(&self, what: String) -> ! {
        let trace: Vec<&str> = self.log.iter().map(String::as_str).collect();
        panic!(
            "simulation invariant broken at {} ms: {what}\n  config: {:?}\n  last events:\n    {}",
            self.ms(),
            self.cfg,
            trace.join("\n    ")
        );
    }

    /// The overflow policy drops the oldest.
    pub(super) fn drop_oldest(&self) -> bool {
        self.cfg.overflow == Overflow::DropOldest
    }

    pub(super) fn latency(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(1..=20))
    }

    /// Apply one step, then run a driver turn and check every invariant.
    pub fn step(&mut self, step: &Step) {
        if self.finished {
            return;
        }
        self.figures.steps += 1;
        self.note(|| format!("step {step:?}"));
        // Callers blocked for room were woken when it freed.
        self.unblock();
        match step {
            Step::Send {
                ttl_ms,
                volatile,
                receipt,
                pad,
            } => self.send(*ttl_ms, *volatile, *receipt, *pad),
            Step::Request {
                op,
                timeout_ms,
                idempotent,
            } => self.request(*op, *timeout_ms, *idempotent, None),
            Step::HookSend { request, stale } => self.hook_send(*request, *stale),
            Step::Advance(ms) => self.advance(self.now + Duration::from_millis(u64::from(*ms))),
            Step::Sleep => self.sleep(),
            Step::ConnectOk => self.connect_ok(),
            Step::ConnectFail => self.connect_failed(false),
            Step::ConnectRejected => self.connect_failed(true),
            Step::Hook(v) => self.hook_verdict(*v),
            Step::Push(n) => self.push(*n),
            Step::Reset => self.reset_conn(),
            Step::BlackHole => self.black_hole(),
            Step::PeerClose => self.peer_close(),
            Step::NoPong => self.no_pong(),
            Step::ReconnectNow => {
                // On a live connection, it asks the peer now.
                self.quiet_from = self.now;
                self.cmds.push_back(Command::ReconnectNow);
            }
            Step::Close(ms) => self.close(*ms),
            Step::Handle(n) => self.handle_events(*n),
            Step::Freeze(ms) => self.freeze(*ms),
            Step::Restart(ms) => self.restart(*ms),
            Step::Pause => {
                self.app_paused = true;
                self.endpoints.paused = true;
                self.cmds.push_back(Command::Pause);
            }
            Step::Resume => {
                // A resume starts afresh: no failed attempt counts.
                if self.app_paused && !self.ended {
                    self.failed_in_a_row = 0;
                    self.rejected_in_a_row = 0;
                }
                self.app_paused = false;
                self.cmds.push_back(Command::Resume);
            }
        }
        self.turn();
        if std::mem::take(&mut self.fatal_due) && !self.ended {
            let state = self.state.clone();
            self.fail(format!("a fatal on_open verdict left the link {state:?}"));
        }
        self.check();
    }
}
