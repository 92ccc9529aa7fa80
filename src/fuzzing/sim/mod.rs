//! A deterministic simulation of one link: the real `Session`, driven as
//! the I/O thread drives it, against a simulated clock, network and server,
//! with every step checked against a small reference model.
//!
//! - **Clock**: an `Instant` taken once, plus an offset the steps advance.
//!   Nothing reads the real clock after [`Sim::new`].
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
//!   or not), `reconnect_now`, the `on_open` hook's verdict, `close` with
//!   its goodbye as `Socket::goodbye` does it. Waiters are real one-shot
//!   channels the caller polls; it gives up at its deadline.
//!
//! Here: the configuration, the steps, the caller and the driver; the
//! network and the clock in `net.rs`, the server in `server.rs`, the
//! invariants in `checks.rs`.
//!
//! Randomness comes from the configuration's seed only (the server's
//! choices, latencies, and the session's backoff jitter through
//! `fastrand`'s thread-local generator), so a trace replays exactly.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use serde_json::{Value, json};
use tungstenite::Utf8Bytes;

use crate::backoff::BackoffPolicy;
use crate::command::{Command, Event, Item, ReplyTo, Waiter};
use crate::delivery::ReceiptCell;
use crate::outbox::Budget;
use crate::pending::Key;
use crate::session::{Inbound, Output, Rules, Session, Transmit, Written};
use crate::state::Counters;
use crate::{Error, Failure, LinkState, Message, Overflow, Status};

mod checks;
mod net;
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
    /// Overflow policy: drop the oldest instead of refusing.
    pub drop_oldest: bool,
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
    /// The server pushes a message.
    Push,
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
}

/// A frame from the client.
#[derive(Debug)]
enum Up {
    Text(Utf8Bytes),
    Ping(u64),
    Close,
}

/// A frame from the server.
#[derive(Debug)]
enum Down {
    Text(String),
    Pong(u64),
    Close(u16),
}

#[derive(Debug)]
struct Flight<F> {
    at: Instant,
    conn: u64,
    frame: F,
}

/// One message accepted by `send`, as the model follows it.
#[derive(Debug)]
struct Msg {
    k: u64,
    id: Option<u64>,
    expires: Option<Instant>,
    receipt: Option<Arc<ReceiptCell>>,
    /// Statuses the session gave its receipt, in order.
    statuses: Vec<Status>,
    /// Times written.
    written: u32,
    /// Times the server's WebSocket layer read it.
    read: u32,
    handed_back: bool,
    /// The `on_open` step's message for this connection.
    hook: Option<u64>,
}

/// One request, as its caller sees it.
#[derive(Debug)]
struct Req {
    k: u64,
    op: String,
    req_id: Option<u64>,
    deadline: Instant,
    idempotent: bool,
    rx: Receiver<Result<Message, Error>>,
    answer: Option<(Instant, Result<Message, Error>)>,
    /// The caller gave up at its deadline.
    timed_out: bool,
    /// A failure that came after that.
    late: Option<Result<Message, Error>>,
    written: u32,
    /// The client read its own reply in time on this connection.
    own_reply: Option<u64>,
    /// The `on_open` step's request for this connection.
    hook: Option<u64>,
}

/// The server's view of one connection.
#[derive(Debug)]
struct ServerConn {
    id: u64,
    /// It sent a Close: what arrives after is discarded.
    closing: bool,
    no_pong: bool,
}

#[derive(Debug, Default)]
struct Server {
    conn: Option<ServerConn>,
    /// Dedup state: (run, highest id) of the at-least-once sequence.
    run: Option<u64>,
    highest: u64,
    /// An acknowledgement owed, sent with the next message's.
    ack_owed: bool,
    /// Messages (their `k`) its application handled, first copies only.
    app: Vec<u64>,
    duplicates: u64,
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
    close_deadline: Option<Instant>,
    /// The session ended for good.
    ended: bool,
    finished: bool,
    figures: Figures,
    /// Trace of what happened, for a failure's report.
    log: VecDeque<String>,
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

/// A step's milliseconds; `u16::MAX` stands for `Duration::MAX` (no limit).
fn ms_or_max(ms: u16) -> Duration {
    if ms == u16::MAX {
        Duration::MAX
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

impl Sim {
    /// A link that starts now (the only read of the real clock).
    pub fn new(cfg: SimConfig) -> Sim {
        // The session's backoff jitter comes from the thread's generator.
        fastrand::seed(cfg.seed);
        let rng = fastrand::Rng::with_seed(cfg.seed);
        let ms = Duration::from_millis;
        let rules = Rules {
            heartbeat_interval: ms(1000),
            heartbeat_timeout: ms(500),
            app_heartbeat: cfg.app_heartbeat.then(|| {
                (
                    Utf8Bytes::from_static(r#"{"Operator":"Heart"}"#),
                    "HeartOK".into(),
                )
            }),
            app_heartbeat_dispatch: false,
            backoff: BackoffPolicy {
                min: ms(100),
                max: ms(2000),
                healthy_after: ms(1000),
                max_attempts: cfg.max_attempts,
                spread: ms(50),
            },
            retry_rejections: false,
            connect_timeout: if cfg.unlimited {
                Duration::MAX
            } else {
                ms(1000)
            },
            login_timeout: if cfg.unlimited {
                Duration::MAX
            } else {
                ms(1500)
            },
            on_open: cfg.on_open,
            overflow: if cfg.drop_oldest {
                Overflow::DropOldest
            } else {
                Overflow::Reject
            },
            operator_field: "Operator".into(),
            error_suffix: "Error".into(),
            correlation_field: cfg.by_id.then(|| "reqId".into()),
            acks: cfg.at_least_once.then(|| ("Ack".into(), "msgId".into())),
            // Small, so that the window fills and frees often.
            window: (16, 4096),
            durable: false,
            track_cap: cfg.track_cap,
        };
        let budget = Arc::new(Budget::new(cfg.capacity, cfg.max_bytes));
        let counters = Arc::new(Counters::default());
        let session = Session::new(
            Arc::new(rules),
            budget.clone(),
            counters.clone(),
            Vec::new(),
        );
        let run = cfg.seed % (1 << 53);
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
            close_deadline: None,
            ended: false,
            finished: false,
            figures: Figures::default(),
            log: VecDeque::new(),
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

    fn ms(&self) -> u128 {
        (self.now - self.t0).as_millis()
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.log.len() == LOG_KEEP {
            self.log.pop_front();
        }
        let line = format!("{:>7} ms  {}", self.ms(), what());
        self.log.push_back(line);
    }

    /// A broken invariant: say which, with the recent trace.
    #[track_caller]
    fn fail(&self, what: String) -> ! {
        let trace: Vec<&str> = self.log.iter().map(String::as_str).collect();
        panic!(
            "simulation invariant broken at {} ms: {what}\n  config: {:?}\n  last events:\n    {}",
            self.ms(),
            self.cfg,
            trace.join("\n    ")
        );
    }

    fn latency(&mut self) -> Duration {
        Duration::from_millis(self.rng.u64(1..=20))
    }

    /// Apply one step, then run a driver turn and check every invariant.
    pub fn step(&mut self, step: &Step) {
        if self.finished {
            return;
        }
        self.figures.steps += 1;
        self.note(|| format!("step {step:?}"));
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
            Step::ConnectOk => {
                if self.attempt.take().is_some() {
                    let id = self.session.handle_connected(self.now);
                    self.figures.connects += 1;
                    self.failed_in_a_row = 0;
                    self.sock = Some(id);
                    self.server.conn = Some(ServerConn {
                        id,
                        closing: false,
                        no_pong: false,
                    });
                    self.note(|| format!("connected: conn {id}"));
                    self.perform();
                }
            }
            Step::ConnectFail | Step::ConnectRejected => {
                if self.attempt.take().is_some() {
                    let e = match step {
                        Step::ConnectFail => Error::Connect {
                            context: "connecting".into(),
                            source: "refused".into(),
                        },
                        _ => Error::Rejected { status: 403 },
                    };
                    self.failed_in_a_row += 1;
                    self.session.handle_connect_failed(self.now, e);
                    self.perform();
                }
            }
            Step::Hook(v) => {
                if let Some(conn) = self.hooks.pop_front() {
                    let (result, fatal) = match v {
                        HookVerdict::Ok => (Ok(()), false),
                        HookVerdict::Err => (Err(Error::Timeout(Duration::from_secs(1))), false),
                        HookVerdict::Fatal => (Err(Error::Fatal("banned".into())), false),
                    };
                    // A fatal verdict ends the link even if its connection
                    // died meanwhile, unless a later on_open step succeeded.
                    let settled =
                        matches!(self.state, Some(LinkState::Open | LinkState::Closed(_)));
                    self.fatal_due |= *v == HookVerdict::Fatal && !settled;
                    self.cmds.push_back(Command::HookDone {
                        conn,
                        result,
                        fatal,
                    });
                }
            }
            Step::Push => {
                if let Some(c) = self.server.conn.as_ref().filter(|c| !c.closing) {
                    let id = c.id;
                    let at = self.now + self.latency();
                    self.server_send(at, id, json!({"Operator": "News"}));
                }
            }
            Step::Reset => {
                if let Some(id) = self.sock {
                    self.reset = Some(id);
                    self.up.retain(|f| f.conn != id);
                    self.down.retain(|f| f.conn != id);
                    self.server.conn = None;
                }
            }
            Step::BlackHole => {
                if let Some(id) = self.sock {
                    self.holes.push(id);
                    self.up.retain(|f| f.conn != id);
                    self.down.retain(|f| f.conn != id);
                    self.server.conn = None;
                }
            }
            Step::PeerClose => {
                if let Some(c) = self.server.conn.as_mut().filter(|c| !c.closing) {
                    c.closing = true;
                    let id = c.id;
                    let at = self.now + self.latency();
                    self.push_down(at, id, Down::Close(1000));
                }
            }
            Step::NoPong => {
                if let Some(c) = self.server.conn.as_mut() {
                    c.no_pong = true;
                }
            }
            Step::ReconnectNow => self.cmds.push_back(Command::ReconnectNow),
            Step::Close(ms) => {
                if !self.closing {
                    self.closing = true;
                    let deadline = self.now + Duration::from_millis(u64::from(*ms));
                    // The driver takes `Close` out of the command stream.
                    self.session.handle_close(deadline);
                    self.close_deadline = Some(deadline);
                }
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

// ---- the caller
impl Sim {
    fn send(&mut self, ttl_ms: Option<u16>, volatile: bool, receipt: bool, pad: u8) {
        let k = self.next_k;
        self.next_k += 1;
        let pad = "x".repeat(usize::from(pad));
        let plain = json!({"Operator": "Post", "k": k, "pad": pad}).to_string();
        let stamp = self.cfg.at_least_once && !volatile;
        let mut item = Item::new(plain.clone());
        if stamp {
            item.weight += self.stamp_key.len() + 21;
        }
        if self.closing || self.ended {
            return self.note(|| format!("send k{k}: refused, closed"));
        }
        let reserved = if self.cfg.drop_oldest {
            // The handle waits past twice the bound; the driver trims
            // each message as it takes it, so it never waits here.
            self.budget.force_reserve(item.weight);
            true
        } else {
            self.budget.try_reserve(item.weight)
        };
        if !reserved {
            return self.note(|| format!("send k{k}: outbox full, handed back"));
        }
        let id = stamp.then(|| {
            let id = self.next_id;
            self.next_id += 1;
            item.text = crate::sequence::stamp_text(&plain, &self.stamp_key, id).into();
            item.id = Some(id);
            id
        });
        // As `send_with` computes it.
        item.expires = ttl_ms.map(|t| crate::time::after(self.now, ms_or_max(t)));
        item.volatile = volatile;
        let cell = receipt.then(ReceiptCell::new);
        if let (Some(c), Some(id)) = (&cell, id) {
            c.set_id(id);
        }
        item.receipt = cell.clone();
        self.figures.sent += 1;
        self.msgs.push(Msg {
            k,
            id,
            expires: item.expires,
            receipt: cell,
            statuses: Vec::new(),
            written: 0,
            read: 0,
            handed_back: false,
            hook: None,
        });
        self.note(|| format!("send k{k} id {id:?}"));
        self.cmds.push_back(Command::Send(item));
    }

    /// The `on_open` hook's `Link` sends or asks, as `Shared::submit` does:
    /// refused with `ConnectionLost` once its connection is gone (the
    /// driver holds another or none), never refused for `close`.
    fn hook_send(&mut self, request: bool, stale: bool) {
        let Some(conn) = self.hooks.front().copied().or(self.last_hook) else {
            return;
        };
        if !stale && (self.sock != Some(conn) || self.ended) {
            return self.note(|| format!("hook send on conn {conn}: ConnectionLost"));
        }
        if request {
            return self.request(0, 1000, false, Some(conn));
        }
        let k = self.next_k;
        self.next_k += 1;
        let text = json!({"Operator": "Post", "k": k, "pad": "", "hook": conn}).to_string();
        self.figures.sent += 1;
        self.msgs.push(Msg {
            k,
            id: None,
            expires: None,
            receipt: None,
            statuses: Vec::new(),
            written: 0,
            read: 0,
            handed_back: false,
            hook: Some(conn),
        });
        self.note(|| format!("hook send k{k} on conn {conn}"));
        let item = Item::new(text);
        self.cmds.push_back(Command::OnOpen { conn, item });
    }

    fn request(&mut self, op: u8, timeout_ms: u16, idempotent: bool, hook: Option<u64>) {
        if hook.is_none() && (self.closing || self.ended) {
            return;
        }
        let k = self.next_k;
        self.next_k += 1;
        let op = if op == 0 { "ReqA" } else { "ReqB" };
        let mut value = json!({"Operator": op, "k": k});
        let key = if self.cfg.by_id {
            let id = self.next_req;
            self.next_req += 1;
            value["reqId"] = json!(id);
            Key::Id(id)
        } else {
            Key::Operator {
                reply: format!("{op}OK"),
                errors: vec![format!("{op}Error")],
            }
        };
        let mut item = Item::new(value.to_string());
        // The on_open step's messages take no room in the outbox.
        let reserved = if hook.is_some() {
            true
        } else if self.cfg.drop_oldest {
            self.budget.force_reserve(item.weight);
            true
        } else {
            self.budget.try_reserve(item.weight)
        };
        if !reserved {
            return self.note(|| format!("request k{k}: outbox full"));
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        // As `request_with` computes it (a millisecond later: the caller
        // gives up just after the session would answer).
        let timeout = ms_or_max(timeout_ms).saturating_add(Duration::from_millis(1));
        let deadline = crate::time::after(self.now, timeout);
        let waiter = Waiter {
            tx,
            errors: vec![format!("{op}Error")],
            retry: None,
            written_at: 0,
        };
        let req_id = match &key {
            Key::Id(id) => Some(*id),
            Key::Operator { .. } => None,
        };
        item.reply = Some(Box::new(ReplyTo {
            key,
            deadline,
            waiter,
            idempotent,
        }));
        self.figures.requests += 1;
        self.reqs.push(Req {
            k,
            op: op.into(),
            req_id,
            deadline,
            idempotent,
            rx,
            answer: None,
            timed_out: false,
            late: None,
            written: 0,
            own_reply: None,
            hook,
        });
        self.note(|| format!("request k{k} {op} {req_id:?} hook {hook:?}"));
        self.cmds.push_back(match hook {
            Some(conn) => Command::OnOpen { conn, item },
            None => Command::Send(item),
        });
    }

    /// Poll each waiting caller's channel; a caller whose deadline passed
    /// gives up (it sees `Timeout`).
    fn callers(&mut self) {
        self.callers_at(self.now);
    }

    /// [`callers`](Self::callers) as of `now`.
    fn callers_at(&mut self, now: Instant) {
        for i in 0..self.reqs.len() {
            let r = &mut self.reqs[i];
            let polled = r.rx.try_recv();
            if let Err(TryRecvError::Disconnected) = polled
                && r.answer.is_none()
                && !r.timed_out
            {
                // Let go without an answer: the caller maps it as
                // `Shared::request` does (before the deadline, only the
                // I/O thread ending may do that: a closed link).
                let outcome = crate::send::request_outcome(
                    Err(RecvTimeoutError::Disconnected),
                    r.deadline,
                    now,
                    Duration::ZERO,
                );
                if now < r.deadline || !matches!(outcome, Err(Error::Timeout(_))) {
                    let k = r.k;
                    self.fail(format!(
                        "request k{k}: its waiter was let go without an answer; \
                         its caller sees {outcome:?}"
                    ));
                }
            }
            if let Ok(answer) = polled {
                // A failure sent after the caller gave up (close answers
                // whatever is still queued) reaches nobody: the caller saw
                // its timeout. A reply must never come that late.
                if r.timed_out
                    && r.answer.is_none()
                    && !matches!(answer, Ok(_) | Err(Error::Remote(_)))
                {
                    self.figures.late_failures += 1;
                    r.late = Some(answer);
                    continue;
                }
                if r.answer.is_some() || r.timed_out {
                    let what = format!(
                        "request k{} answered after {} ({answer:?})",
                        r.k,
                        if r.timed_out {
                            "its timeout"
                        } else {
                            "an answer"
                        }
                    );
                    self.fail(what);
                }
                if now < r.deadline && self.now >= r.deadline {
                    // Decided in time during the goodbye, handed out after it.
                    let k = r.k;
                    self.figures.delayed_by_goodbye += 1;
                    self.fail(format!(
                        "request k{k}: its answer, decided in time during the goodbye, \
                         reached its caller after the deadline"
                    ));
                }
                // By name, a reply may reach another request of its
                // operator (the price of FIFO matching): its own is then
                // owed to someone else.
                let other = match &answer {
                    Ok(m) | Err(Error::Remote(m)) => {
                        r.req_id.is_none() && m.get("k").and_then(Value::as_u64) != Some(r.k)
                    }
                    Err(_) => false,
                };
                let key = (self.reading, r.op.clone());
                r.answer = Some((now, answer));
                if other {
                    self.robbery.entry(key).or_default().0 += 1;
                }
                self.check_answer(i);
            } else if r.answer.is_none() && !r.timed_out && now >= r.deadline {
                r.timed_out = true;
                if let Some(conn) = r.own_reply {
                    let (k, key) = (r.k, (conn, r.op.clone()));
                    self.robbed(k, key);
                }
            }
        }
    }
}

// ---- the driver: as `io::Io` does it
impl Sim {
    /// One turn of the I/O loop.
    fn turn(&mut self) {
        let now = self.now;
        while let Some(cmd) = self.cmds.pop_front() {
            self.session.handle_command(now, cmd);
        }
        self.perform();
        if self.session.close_ready(now, true) {
            return self.finish();
        }
        // Read what has arrived.
        while let Some(conn) = self.sock {
            if self.reset == Some(conn) {
                self.reset = None;
                self.session.handle_lost(now, "read failed: reset".into());
                self.perform();
                break;
            }
            if self.down.front().is_none_or(|f| f.at > now) {
                break;
            }
            let Some(f) = self.down.pop_front() else {
                break;
            };
            if f.conn != conn {
                continue;
            }
            let inbound = match f.frame {
                Down::Text(t) => Inbound::Text(t.into()),
                Down::Pong(n) => Inbound::Pong(n.to_be_bytes().to_vec()),
                Down::Close(code) => Inbound::Close(Some(code)),
            };
            self.note(|| format!("conn {conn} reads {inbound:?}"));
            if let Inbound::Text(t) = &inbound {
                self.reply_read(conn, t.as_str());
            }
            self.session.handle_frame(now, inbound);
            self.perform();
        }
        self.session.handle_timeout(now);
        self.perform();
        self.write();
        self.perform();
    }

    fn write(&mut self) {
        let Some(conn) = self.sock else {
            return;
        };
        let now = self.now;
        while let Some(t) = self.session.poll_transmit(now) {
            match t {
                Transmit::Ping(seq) => self.push_up(conn, Up::Ping(seq)),
                Transmit::Text(text) => {
                    let (receipts, answered) = self.session.tracked();
                    if receipts + answered >= self.cfg.track_cap
                        && text.as_str() != r#"{"Operator":"Heart"}"#
                    {
                        self.fail(format!(
                            "wrote a message while {receipts} receipts and {answered} answered \
                             requests waited for a pong (bound {})",
                            self.cfg.track_cap
                        ));
                    }
                    let len = text.len();
                    self.written(&text);
                    self.push_up(conn, Up::Text(text));
                    self.session.transmitted(now, len, Written::Yes);
                }
            }
        }
        if let Some(seq) = self.session.end_batch(now) {
            self.push_up(conn, Up::Ping(seq));
        }
    }

    /// The model learns what was written.
    fn written(&mut self, text: &Utf8Bytes) {
        if text.as_str() == r#"{"Operator":"Heart"}"# {
            // While the on_open step runs, only its messages go out.
            if self.state != Some(LinkState::Open) {
                let state = self.state.clone();
                self.fail(format!("the app heartbeat was written while {state:?}"));
            }
            return;
        }
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        let k = v["k"].as_u64().unwrap_or(0);
        let now = self.now;
        let (sock, open) = (self.sock, self.state == Some(LinkState::Open));
        // The on_open step's messages go on their connection only; the
        // outbox's only once it is open.
        let gate = |hook: Option<u64>| match hook {
            Some(conn) if sock != Some(conn) => Some("on another connection than its step's"),
            None if !open => Some("before the on_open step finished"),
            _ => None,
        };
        if let Some(m) = self.msgs.iter_mut().find(|m| m.k == k) {
            if m.written == 0 && m.expires.is_some_and(|e| e <= now) {
                self.fail(format!("k{k} written after its time to live ran out"));
            }
            if let Some(why) = gate(m.hook) {
                self.fail(format!("k{k} written {why}"));
            }
            m.written += 1;
        } else if let Some(r) = self.reqs.iter_mut().find(|r| r.k == k) {
            if r.answer.is_some() || r.deadline <= now {
                let what = format!("request k{k} written after it was answered or timed out");
                self.fail(what);
            }
            if let Some(why) = gate(r.hook) {
                self.fail(format!("request k{k} written {why}"));
            }
            r.written += 1;
        } else {
            self.fail(format!("wrote a frame nobody sent: {text}"));
        }
        self.note(|| format!("writes {text}"));
    }

    /// Do what the session asks, in its order.
    fn perform(&mut self) {
        while let Some(out) = self.session.poll_output() {
            self.perform_one(out);
        }
        self.callers();
    }

    fn perform_one(&mut self, out: Output) {
        match out {
            Output::Connect { deadline } => {
                if self.attempt.is_some() {
                    self.fail("a second connect attempt while one runs".into());
                }
                if self.sock.is_some() {
                    self.fail("a connect attempt while connected".into());
                }
                // `reconnect_max_attempts(n)` gives up at the n-th failure.
                if let Some(n) = self.cfg.max_attempts
                    && self.failed_in_a_row >= n
                {
                    let failed = self.failed_in_a_row;
                    self.fail(format!(
                        "a connect attempt after {failed} failed in a row (max attempts {n})"
                    ));
                }
                self.note(|| "connect attempt".into());
                self.attempt = Some(deadline);
            }
            Output::AbandonAttempt => self.attempt = None,
            // Its Close frame may or may not get out; the Disconnect that
            // follows drops the socket.
            Output::GoAway(code) => self.note(|| format!("go away ({code})")),
            Output::Disconnect => {
                let conn = self.sock.take();
                self.note(|| format!("disconnect {conn:?}"));
                // The socket is dropped: what it had not read is gone.
                self.down.retain(|f| Some(f.conn) != conn);
                if self.server.conn.as_ref().map(|c| c.id) == conn {
                    self.server.conn = None;
                }
            }
            Output::RunHook { conn } => {
                self.hooks.push_back(conn);
                self.last_hook = Some(conn);
            }
            Output::Dispatch(ev) => {
                if let Event::Message(m) = &ev
                    && !["News", "HeartOK"].contains(&m.operator())
                    && !m.operator().starts_with("Req")
                {
                    self.fail(format!("dispatched {:?} to subscribers", m.operator()));
                }
            }
            Output::Answer(a) => {
                let (waiter, answer) = *a;
                waiter.answer(answer);
            }
            Output::Receipt(cell, status) => self.receipt(&cell, status),
            Output::State(s) => {
                self.note(|| format!("state {s:?}"));
                self.state = Some(s);
            }
            Output::JournalDrop(_) | Output::LastError(_) => {}
            Output::Ended => self.ended = true,
        }
    }

    fn receipt(&mut self, cell: &Arc<ReceiptCell>, status: Status) {
        let Some(i) = self
            .msgs
            .iter()
            .position(|m| m.receipt.as_ref().is_some_and(|r| Arc::ptr_eq(r, cell)))
        else {
            self.fail("a receipt nobody asked for".into());
        };
        cell.set(status);
        let m = &self.msgs[i];
        let is_final = status.is_final();
        let wrong = if m.statuses.iter().any(|s| s.is_final()) {
            Some("after its final status")
        } else {
            match status {
                Status::Queued => Some("back to queued"),
                Status::Written | Status::Failed(Failure::PossiblyLost) if m.written == 0 => {
                    Some("though never written")
                }
                Status::Confirmed if m.read == 0 => Some("though the server never read it"),
                Status::Acknowledged if !self.server.app.contains(&m.k) => {
                    Some("though the server's application never had it")
                }
                Status::Expired if m.written > 0 => Some("though written"),
                Status::Failed(Failure::Dropped) if !self.cfg.drop_oldest => {
                    Some("without drop-oldest")
                }
                // Drop-oldest makes room for the newest: never drops it.
                Status::Failed(Failure::Dropped) if m.k + 1 == self.next_k => {
                    Some("though it is the one just accepted")
                }
                Status::Failed(Failure::Closed) if !self.closing => Some("before close"),
                _ => None,
            }
        };
        if let Some(why) = wrong {
            let (k, seen) = (m.k, m.statuses.clone());
            self.fail(format!(
                "receipt of k{k} moved to {status:?} {why} (before: {seen:?})"
            ));
        }
        let k = m.k;
        self.note(|| format!("receipt k{k} {status:?} (final {is_final})"));
        self.msgs[i].statuses.push(status);
        if is_final {
            self.counted_before(k, status);
        }
    }

    /// Close: the goodbye (`Socket::goodbye`), then `Session::finish`.
    fn finish(&mut self) {
        self.finished = true;
        self.attempt = None;
        while let Some(cmd) = self.cmds.pop_front() {
            self.session.handle_command(self.now, cmd);
        }
        let deadline = self.close_deadline.unwrap_or(self.now);
        if let Some(conn) = self.sock.take()
            && deadline > self.now
        {
            self.goodbye(conn, deadline);
        }
        self.note(|| "finish".into());
        let unsent = self.session.finish(self.now);
        for (at, out) in std::mem::take(&mut self.held) {
            self.perform_one(out);
            self.callers_at(at);
        }
        for text in unsent {
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            let k = v["k"].as_u64().unwrap_or(0);
            match self.msgs.iter_mut().find(|m| m.k == k) {
                Some(m) if !m.handed_back => m.handed_back = true,
                _ => self.fail(format!("close handed back {text} (not a queued send)")),
            }
        }
        self.perform();
        // Past close, every caller has an answer or has given up.
        self.now = self.now.max(deadline);
        self.callers();
        self.final_checks();
    }

    fn goodbye(&mut self, conn: u64, deadline: Instant) {
        if let Some(seq) = self.session.goodbye_ping(self.now) {
            self.push_up(conn, Up::Ping(seq));
        }
        self.push_up(conn, Up::Close);
        let mut peer_closed = false;
        while !(peer_closed && self.session.confirmed()) {
            let next = [
                self.up.front().map(|f| f.at),
                self.down.front().map(|f| f.at),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(at) = next.filter(|t| *t < deadline) else {
                self.now = deadline;
                return;
            };
            self.now = self.now.max(at);
            self.server_turn(at);
            while self.down.front().is_some_and(|f| f.at <= at) {
                let Some(f) = self.down.pop_front() else {
                    break;
                };
                if f.conn != conn || self.reset == Some(conn) {
                    continue;
                }
                match f.frame {
                    Down::Pong(n) => self
                        .session
                        .handle_frame(self.now, Inbound::Pong(n.to_be_bytes().to_vec())),
                    Down::Text(t) => {
                        self.reply_read(conn, &t);
                        self.session.handle_frame(self.now, Inbound::Text(t.into()));
                    }
                    Down::Close(_) => peer_closed = true,
                }
                // The driver performs what the session decided at once.
                self.perform();
                self.callers();
            }
        }
    }
}
