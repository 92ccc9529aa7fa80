//! The handle: `Client` (owning, cloneable), `Link` (given to the re-login
//! hook), `Subscription`. Methods build a [`Command`], send it to the I/O
//! thread and, for requests, wait on a one-shot reply channel.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use polling::Poller;
use serde::Serialize;
use serde_json::Value;

use tungstenite::Utf8Bytes;

use crate::command::{Command, Item, ReplyTo, Waiter};
use crate::config::Config;
use crate::delivery::ReceiptCell;
use crate::dispatch::{self, Registry, Topic};
use crate::journal::Journal;
use crate::outbox::{Budget, Weighed};
use crate::pending::Key;
use crate::state::Counters;
use crate::{
    ClientBuilder, CloseReason, Error, InvalidFrame, LinkState, Message, Overflow, Receipt,
    RequestOptions, SendOptions, Stats,
};

/// Assigns at-least-once ids, and journals messages when durable.
pub(crate) struct Sequencer {
    pub(crate) next: u64,
    pub(crate) journal: Option<Journal>,
}

/// State shared by handles, the I/O thread and the dispatcher.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    tx: Sender<Command>,
    pub(crate) poller: Arc<Poller>,
    /// The I/O thread is (about to be) parked in the poller.
    pub(crate) sleeping: AtomicBool,
    pub(crate) budget: Arc<Budget>,
    pub(crate) counters: Arc<Counters>,
    state: Mutex<LinkState>,
    state_changed: Condvar,
    pub(crate) last_error: Mutex<Option<Error>>,
    /// No new messages are accepted (closing or ended for good).
    pub(crate) refusing: AtomicBool,
    /// Sends between their `refusing` check and their push.
    pub(crate) entering: AtomicUsize,
    close_called: AtomicBool,
    pub(crate) registry: Arc<Registry>,
    next_request_id: AtomicU64,
    pub(crate) dispatch_depth: AtomicUsize,
    /// The dispatcher thread runs. It starts with the first subscription
    /// (or at once with an `on_open` hook); until then inbound messages and
    /// state changes have nobody to go to and are not queued.
    pub(crate) dispatcher_on: AtomicBool,
    /// The dispatcher's end of its channel, until it starts.
    dispatch_rx: Mutex<Option<Receiver<dispatch::Event>>>,
    pub(crate) read_paused: AtomicBool,
    /// The connection a [`Link`] may use: set by the I/O thread when a
    /// connection is made, 0 once it is gone.
    pub(crate) live_conn: AtomicU64,
    dispatcher_id: OnceLock<ThreadId>,
    /// At-least-once: ids (and the journal). Held from stamping to the push,
    /// so the outbox order is the id order.
    pub(crate) seq: Option<Mutex<Sequencer>>,
    /// `"msgRun":R,"msgId":` ready to splice into a message: the run is
    /// fixed for the client's life.
    stamp_key: String,
    recovered: Vec<Message>,
    /// Journal drops waiting for the journal lock.
    pub(crate) pending_drops: Mutex<Vec<u64>>,
    /// Highest acknowledgement, to be recorded in the journal.
    pub(crate) journal_ack: AtomicU64,
}

thread_local! {
    /// Set while an `on_open` hook runs: the connection it logs in.
    static IN_HOOK: Cell<Option<u64>> = const { Cell::new(None) };
    /// The operator of an [`Expect::or_fatal`] reply a request of the
    /// running `on_open` hook got.
    static FATAL_REPLY: Cell<Option<String>> = const { Cell::new(None) };
}

/// Take the operator of the fatal reply the hook that just ran got, if any.
pub(crate) fn take_fatal_reply() -> Option<String> {
    FATAL_REPLY.with(Cell::take)
}

/// Where a message goes.
#[derive(Clone, Copy)]
enum Route {
    Outbox,
    Login(u64),
}

impl Shared {
    /// Push a command and wake the I/O thread if it sleeps.
    pub(crate) fn command(&self, c: Command) -> bool {
        let ok = self.tx.send(c).is_ok();
        self.wake();
        ok
    }

    /// Wake only a sleeping I/O thread. Pairs with the fence in its park step.
    pub(crate) fn wake(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let _ = self.poller.notify();
        }
    }

    /// The dispatcher finished one inbound message.
    pub(crate) fn dispatch_done(&self) {
        let left = self.dispatch_depth.fetch_sub(1, Ordering::AcqRel) - 1;
        if left <= self.cfg.dispatch_capacity / 2 && self.read_paused.load(Ordering::Acquire) {
            self.wake();
        }
    }

    pub(crate) fn set_state(&self, s: LinkState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = s;
        self.state_changed.notify_all();
    }

    pub(crate) fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set_last_error(&self, e: Error) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
    }

    fn route(&self, requested: Route) -> Route {
        match (requested, IN_HOOK.with(Cell::get)) {
            // Inside the hook, the outbox is gated until the hook returns:
            // send the hook's messages past it instead of deadlocking.
            (Route::Outbox, Some(conn)) if self.is_dispatcher() => Route::Login(conn),
            (r, _) => r,
        }
    }

    /// Run `f` on the journal, if the outbox is durable. Blocks for the
    /// lock: only where no sender can hold it (close).
    pub(crate) fn journal<R>(&self, f: impl FnOnce(&mut Journal) -> R) -> Option<R> {
        self.cfg.journal.as_ref()?;
        let seq = self.seq.as_ref()?;
        let mut g = seq.lock().unwrap_or_else(|e| e.into_inner());
        g.journal.as_mut().map(f)
    }

    /// Run `f` on the journal if the lock is free right now. The I/O thread
    /// uses only this: a sender holds the lock while it pushes into the
    /// command channel, which may wait for the I/O thread to drain it.
    pub(crate) fn try_journal<R>(&self, f: impl FnOnce(&mut Journal) -> R) -> Option<R> {
        self.cfg.journal.as_ref()?;
        let seq = self.seq.as_ref()?;
        let mut g = match seq.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        g.journal.as_mut().map(f)
    }

    /// Record the acknowledgements and drops the I/O thread could not.
    pub(crate) fn journal_catch_up(&self, j: &mut Journal) {
        j.ack(self.journal_ack.load(Ordering::Acquire));
        let drops =
            std::mem::take(&mut *self.pending_drops.lock().unwrap_or_else(|e| e.into_inner()));
        for id in drops {
            j.drop_id(id);
        }
    }

    /// Record that message `id` will never be sent: now if the journal is
    /// free, else at the I/O thread's next turn.
    pub(crate) fn journal_drop(&self, id: u64) {
        if self.cfg.journal.is_none() {
            return;
        }
        if self.try_journal(|j| j.drop_id(id)).is_none() {
            self.pending_drops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(id);
        }
    }

    /// Whether messages on `route` with `opts` get an at-least-once id.
    fn stamps(&self, route: Route, opts: SendOptions) -> bool {
        self.seq.is_some() && matches!(route, Route::Outbox) && !opts.volatile
    }

    fn is_dispatcher(&self) -> bool {
        self.dispatcher_id.get() == Some(&thread::current().id())
    }

    fn to_value(&self, msg: impl Serialize) -> Result<Value, Error> {
        serde_json::to_value(msg).map_err(Error::Serialize)
    }

    fn submit(&self, route: Route, mut item: Item, stamp: bool) -> Result<(), Error> {
        let hand_back = |text: &str| serde_json::from_str::<Value>(text).ok();
        // A closing link refuses the application's messages, not the
        // re-login's: close waits for a login in progress so that the
        // outbox can still flush behind it.
        let login = matches!(route, Route::Login(_));
        // A Link is bound to its connection: once that is gone, say so.
        if let Route::Login(conn) = route
            && self.live_conn.load(Ordering::Acquire) != conn
        {
            return Err(Error::ConnectionLost);
        }
        if self.refusing.load(Ordering::Acquire) && !login {
            return Err(Error::Closed {
                message: hand_back(&item.text),
            });
        }
        let outbox = matches!(route, Route::Outbox);
        if outbox {
            let weight = item.weight();
            let reserved = match self.cfg.overflow {
                Overflow::Reject => self.budget.try_reserve(weight),
                // The I/O thread drops the oldest when it takes the message;
                // if it is busy elsewhere (a connect attempt), wait once
                // twice the bound is in flight, so memory stays bounded.
                Overflow::DropOldest => {
                    let limit = self.cfg.outbox_capacity.saturating_mul(2);
                    self.budget.force_reserve_below(weight, limit);
                    true
                }
                Overflow::Block(d) => self.budget.reserve_within(weight, d),
            };
            if !reserved {
                let message = hand_back(&item.text).unwrap_or(Value::Null);
                return Err(Error::OutboxFull { message });
            }
        }
        let unreserve = |item: &Item| {
            if outbox {
                self.budget.release(item.weight());
            }
        };
        // Between the check and the push, close must wait for us (see io::finish).
        self.entering.fetch_add(1, Ordering::SeqCst);
        if self.refusing.load(Ordering::SeqCst) && !login {
            self.entering.fetch_sub(1, Ordering::SeqCst);
            unreserve(&item);
            return Err(Error::Closed {
                message: hand_back(&item.text),
            });
        }
        let pushed = match (route, stamp.then_some(self.seq.as_ref()).flatten()) {
            (Route::Outbox, Some(seq)) => {
                let mut g = seq.lock().unwrap_or_else(|e| e.into_inner());
                let id = g.next;
                let plain = std::mem::take(&mut item.text);
                item.text = stamp_text(&plain, &self.stamp_key, id).into();
                if let Some(j) = g.journal.as_mut()
                    && let Err(source) =
                        j.append(id, &item.text, wall_deadline(&item), Instant::now())
                {
                    drop(g);
                    self.entering.fetch_sub(1, Ordering::SeqCst);
                    unreserve(&item);
                    return Err(Error::Journal {
                        context: "appending a message".into(),
                        source,
                        message: hand_back(&plain),
                    });
                }
                if let Some(j) = g.journal.as_mut() {
                    // The I/O thread only tries the lock; while senders keep
                    // it busy they record its acknowledgements and drops.
                    self.journal_catch_up(j);
                }
                g.next += 1;
                item.id = Some(id);
                if let Some(r) = &item.receipt {
                    r.set_id(id);
                }
                // Still under the lock: the outbox order is the id order.
                self.tx.send(Command::Send(item))
            }
            (Route::Outbox, None) => self.tx.send(Command::Send(item)),
            (Route::Login(conn), _) => self.tx.send(Command::Login { conn, item }),
        };
        self.entering.fetch_sub(1, Ordering::SeqCst);
        self.wake();
        match pushed {
            Ok(()) => Ok(()),
            Err(e) => {
                let text = match e.into_inner() {
                    Command::Send(item) | Command::Login { item, .. } => item.text,
                    _ => Utf8Bytes::default(),
                };
                Err(Error::Closed {
                    message: hand_back(&text),
                })
            }
        }
    }

    fn send(
        &self,
        route: Route,
        msg: impl Serialize,
        opts: SendOptions,
        receipt: bool,
    ) -> Result<Option<Receipt>, Error> {
        let route = self.route(route);
        let stamp = self.stamps(route, opts);
        let op_field = &self.cfg.operator_field;
        let ours = [
            self.cfg.msg_id_field.as_str(),
            self.cfg.msg_run_field.as_str(),
        ];
        let avoid: &[&str] = if stamp { &ours } else { &[] };
        let mut item = match crate::message::encode_direct(&msg, op_field, avoid)? {
            Some(text) => Item::new(text),
            // Escapes, or a field of our id's or run's name to replace: the full path.
            None => {
                let mut value = self.to_value(msg)?;
                if stamp && let Some(obj) = value.as_object_mut() {
                    obj.remove(&self.cfg.msg_id_field);
                    obj.remove(&self.cfg.msg_run_field);
                }
                Item::from_string(crate::message::encode(value, op_field)?.0)
            }
        };
        if stamp {
            // Room for the run and id spliced in later.
            item.weight += self.stamp_key.len() + 21;
        }
        item.expires = opts.ttl.map(crate::time::from_now);
        item.volatile = opts.volatile;
        let cell = receipt.then(ReceiptCell::new);
        item.receipt = cell.clone();
        self.submit(route, item, stamp)?;
        Ok(cell.map(Receipt::new))
    }

    fn request(
        &self,
        route: Route,
        msg: impl Serialize,
        expect: Option<Expect>,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Message, Error> {
        let route = self.route(route);
        let mut value = self.to_value(msg)?;
        let op = value
            .get(&self.cfg.operator_field)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (reply, errors) = match (expect, &op) {
            (Some(e), _) => (e.reply, e.errors),
            (None, Some(op)) => (
                format!("{op}{}", self.cfg.reply_suffix),
                vec![format!("{op}{}", self.cfg.error_suffix)],
            ),
            // encode() below reports the missing operator.
            (None, None) => (String::new(), Vec::new()),
        };
        let key = match (&self.cfg.correlation_field, value.as_object_mut()) {
            (Some(field), Some(obj)) => {
                let id = self.next_request_id.fetch_add(1, Ordering::Relaxed) + 1;
                obj.insert(field.clone(), Value::from(id));
                Key::Id(id)
            }
            _ => Key::Operator {
                reply,
                errors: errors.clone(),
            },
        };
        let (text, _) = crate::message::encode(value, &self.cfg.operator_field)?;
        let (tx, rx) = bounded(1);
        let deadline = crate::time::from_now(timeout);
        let waiter = Waiter {
            tx,
            errors,
            retry: None,
            written_at: 0,
        };
        let mut item = Item::from_string(text);
        item.reply = Some(Box::new(ReplyTo {
            key,
            deadline,
            waiter,
            idempotent,
        }));
        self.submit(route, item, false)?;
        let answer = rx.recv_deadline(deadline);
        request_outcome(answer, deadline, Instant::now(), timeout)
    }
}

/// What a request's caller gets. The I/O thread lets go of a waiter
/// without answering only once its deadline has passed (by its clock,
/// which is ours): that is a timeout, not a closed link.
fn request_outcome(
    answer: Result<Result<Message, Error>, RecvTimeoutError>,
    deadline: Instant,
    now: Instant,
    timeout: Duration,
) -> Result<Message, Error> {
    match answer {
        Ok(r) => r,
        Err(RecvTimeoutError::Timeout) => Err(Error::Timeout(timeout)),
        Err(RecvTimeoutError::Disconnected) if now >= deadline => Err(Error::Timeout(timeout)),
        Err(RecvTimeoutError::Disconnected) => Err(Error::Closed { message: None }),
    }
}

impl Shared {
    /// A request with explicit reply operators. Inside the `on_open` hook,
    /// an [`Expect::or_fatal`] reply is noted for the hook's verdict.
    fn request_expecting(
        &self,
        route: Route,
        msg: impl Serialize,
        expect: Expect,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Message, Error> {
        let fatal = expect.fatal.clone();
        let r = self.request(route, msg, Some(expect), timeout, idempotent);
        if let Err(Error::Remote(m)) = &r
            && fatal.iter().any(|op| op == m.operator())
            && IN_HOOK.with(Cell::get).is_some()
        {
            FATAL_REPLY.with(|f| f.set(Some(m.operator().to_owned())));
        }
        r
    }
}

/// The wall-clock time at which `item`'s time to live ends, for the journal.
fn wall_deadline(item: &Item) -> Option<std::time::SystemTime> {
    let left = item.expires?.saturating_duration_since(Instant::now());
    std::time::SystemTime::now().checked_add(left)
}

/// A new at-least-once run id: random, nonzero, exact in JavaScript (< 2^53).
pub(crate) fn new_run() -> u64 {
    fastrand::u64(1..1 << 53)
}

/// `{"msgRun":R,"msgId":7,` + the rest of the encoded object (which starts
/// with `{`); `key` is `"msgRun":R,"msgId":`, made once per client. (Or
/// any `{key}{n},` in front.)
fn stamp_text(text: &str, key: &str, id: u64) -> String {
    let rest = text.strip_prefix('{').unwrap_or(text);
    let sep = if rest.starts_with('}') { "" } else { "," };
    format!("{{{key}{id}{sep}{rest}")
}

/// A running thread and a way to learn it has exited without blocking on join.
struct Worker {
    handle: JoinHandle<()>,
    exited: Receiver<()>,
}

impl Worker {
    fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<Self, Error> {
        Self::spawn_sized(name, None, f)
    }

    fn spawn_sized(
        name: &str,
        stack: Option<usize>,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<Self, Error> {
        let (guard, exited) = bounded::<()>(0);
        let mut builder = thread::Builder::new().name(name.into());
        if let Some(size) = stack {
            builder = builder.stack_size(size);
        }
        let handle = builder
            .spawn(move || {
                let _guard = guard;
                f()
            })
            .map_err(|e| Error::Connect {
                context: format!("spawning thread {name}"),
                source: Box::new(e),
            })?;
        Ok(Worker { handle, exited })
    }

    /// Join if it exits before `deadline`; else leave it to finish alone.
    fn join_until(self, deadline: Instant) -> bool {
        if self.handle.thread().id() == thread::current().id() {
            return false;
        }
        match self.exited.recv_deadline(deadline) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = self.handle.join();
                true
            }
            _ => false,
        }
    }
}

/// Owns the threads; dropping the last one closes the link.
struct Owner {
    shared: Arc<Shared>,
    io: Mutex<Option<Worker>>,
    dispatcher: Mutex<Option<Worker>>,
}

impl Owner {
    /// Start the dispatcher thread if it is not running yet.
    fn start_dispatcher(&self) -> Result<(), Error> {
        let shared = &self.shared;
        if shared.dispatcher_on.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut slot = self.dispatcher.lock().unwrap_or_else(|e| e.into_inner());
        let rx = shared
            .dispatch_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(rx) = rx else {
            return Ok(()); // started already, or closed
        };
        let s = shared.clone();
        let worker = Worker::spawn("longlink-dispatch", move || dispatch::run(s, rx))?;
        let _ = shared.dispatcher_id.set(worker.handle.thread().id());
        shared.dispatcher_on.store(true, Ordering::Release);
        *slot = Some(worker);
        Ok(())
    }

    fn close(&self, timeout: Duration) -> Result<(), Error> {
        let shared = &self.shared;
        if shared.close_called.swap(true, Ordering::SeqCst) {
            return Err(Error::Closed { message: None });
        }
        let deadline = crate::time::from_now(timeout);
        let lost_before = shared.counters.possibly_lost.load(Ordering::Acquire);
        shared.refusing.store(true, Ordering::SeqCst);
        let (done_tx, done_rx) = bounded(1);
        shared.command(Command::Close {
            deadline,
            done: done_tx,
        });
        // The I/O thread honours the deadline; a connect attempt in progress
        // may take it a little past.
        let grace = Duration::from_millis(250);
        let unsent = done_rx.recv_deadline(crate::time::after(deadline, grace));
        let io = self.io.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(io) = io {
            io.join_until(crate::time::after(deadline, grace));
        }
        let dispatcher = self
            .dispatcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(dispatcher) = dispatcher {
            dispatcher.join_until(crate::time::after(deadline, grace));
        }
        let Ok(unsent) = unsent else {
            return Err(Error::Timeout(timeout));
        };
        // What close answers for: messages not known delivered when it was
        // called. Losses reported before are in the stats and receipts.
        let possibly_lost = shared
            .counters
            .possibly_lost
            .load(Ordering::Acquire)
            .saturating_sub(lost_before);
        let messages: Vec<Value> = unsent
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect();
        // The link had ended for good before this call: nothing was closed.
        let ended =
            matches!(shared.state(), LinkState::Closed(ref r) if *r != CloseReason::Requested);
        match (possibly_lost, messages.is_empty()) {
            (0, true) if ended => Err(Error::Closed { message: None }),
            (0, true) => Ok(()),
            (0, false) => Err(Error::Unsent { messages }),
            (count, _) => Err(Error::PossiblyLost {
                count,
                unsent: messages,
            }),
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let timeout = self.shared.cfg.drop_close_timeout;
        match self.close(timeout) {
            Ok(()) | Err(Error::Closed { .. }) => {}
            Err(Error::Unsent { messages }) => {
                log::warn!(
                    "longlink: client dropped with {} unsent messages",
                    messages.len()
                )
            }
            Err(e) => log::warn!("longlink: closing on drop: {e}"),
        }
    }
}

/// A handle to one long-lived WebSocket link. Cheap to clone; `Send + Sync`.
///
/// All clones share one link, one outbox and one set of subscriptions.
/// When the last clone is dropped, the link closes as [`close`](Self::close)
/// does, with [`drop_close_timeout`](ClientBuilder::drop_close_timeout).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("url", &crate::config::redact_url(&self.shared.cfg.url))
            .field("state", &self.shared.state())
            .finish_non_exhaustive()
    }
}

/// The reply a request expects, when it is not `X` → `XOK` / `XError`.
///
/// ```
/// # use longlink::Expect;
/// let login = Expect::reply("LoginOK").or_error("LoginError").or_fatal("BanLogin");
/// # let _ = login;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    reply: String,
    errors: Vec<String>,
    /// Those of `errors` that end the link when the `on_open` hook fails on them.
    fatal: Vec<String>,
}

impl Expect {
    /// The operator of the successful reply.
    pub fn reply(operator: impl Into<String>) -> Self {
        Expect {
            reply: operator.into(),
            errors: Vec::new(),
            fatal: Vec::new(),
        }
    }

    /// An operator that answers the request with a failure ([`Error::Remote`]).
    pub fn or_error(mut self, operator: impl Into<String>) -> Self {
        self.errors.push(operator.into());
        self
    }

    /// An operator that answers the request with a failure that no retry
    /// can mend, like `BanLogin`. The request fails with [`Error::Remote`]
    /// as with [`or_error`](Self::or_error). In addition, when the request
    /// is made inside the [`on_open`](ClientBuilder::on_open) hook and the
    /// hook then fails with that error (a plain `?` does it), the link ends
    /// for good in [`CloseReason::Fatal`](crate::CloseReason::Fatal)
    /// instead of retrying, and [`connect`](ClientBuilder::connect) returns
    /// at once with [`Error::Connect`] ("the on_open step failed"), whose
    /// [`Error::remote`] is the reply. A hook that handles the error and
    /// returns `Ok` (or another error) decides for itself. Outside the hook
    /// it is the same as `or_error`: a normal [`Client::request`] gets
    /// [`Error::Remote`] and the link goes on.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use longlink::{Client, Expect};
    /// # use serde_json::json;
    /// let client = Client::builder("wss://example.com/ws")
    ///     .on_open(|link| {
    ///         link.request_expect(
    ///             json!({"Operator": "userLogin", "userCode": "abc"}),
    ///             Expect::reply("LoginOK").or_error("LoginError").or_fatal("BanLogin"),
    ///             Duration::from_secs(5),
    ///         )?; // BanLogin: the link ends; LoginError: retried with backoff
    ///         Ok(())
    ///     })
    ///     .connect()?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn or_fatal(mut self, operator: impl Into<String>) -> Self {
        let operator = operator.into();
        self.errors.push(operator.clone());
        self.fatal.push(operator);
        self
    }
}

impl Client {
    /// Starts configuring a client for `url` (`ws://` or `wss://`).
    ///
    /// ```no_run
    /// let client = longlink::Client::builder("wss://example.com/ws").connect()?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    pub(crate) fn spawn(cfg: Config) -> Result<Client, Error> {
        let mut initial = Vec::new();
        let mut recovered = Vec::new();
        let mut expired = 0;
        let seq = if cfg.at_least_once {
            let journal = match &cfg.journal {
                Some(path) => {
                    let (mut j, replay) =
                        Journal::open(path, cfg.journal_sync).map_err(|source| Error::Journal {
                            context: format!("opening {}", path.display()),
                            source,
                            message: None,
                        })?;
                    let (wall, now) = (std::time::SystemTime::now(), Instant::now());
                    let run_key = format!(
                        "{}:",
                        serde_json::to_string(&cfg.msg_run_field).unwrap_or_default()
                    );
                    for (id, text, deadline) in replay.messages {
                        let left = match deadline.map(|d| d.duration_since(wall)) {
                            // Its time to live ran out while no process ran:
                            // never sent late.
                            Some(Err(_)) => {
                                j.drop_id(id);
                                expired += 1;
                                continue;
                            }
                            Some(Ok(left)) => Some(left),
                            None => None,
                        };
                        // Written by a version without runs: it joins the
                        // journal's run (a check at start only, never per send).
                        let text = match crate::message::decode(&text, &cfg.operator_field) {
                            Ok(m) if m.get(&cfg.msg_run_field).is_none() => {
                                stamp_text(&text, &run_key, j.run())
                            }
                            _ => text,
                        };
                        if let Ok(m) = crate::message::decode(&text, &cfg.operator_field) {
                            recovered.push(m);
                        }
                        let mut item = Item::new(text);
                        item.id = Some(id);
                        // Whether the last process wrote it is unknown. One
                        // with a time to live keeps the time left (as if not
                        // written: it is not sent once that runs out).
                        item.expires = left.and_then(|l| now.checked_add(l));
                        item.written = left.is_none();
                        initial.push(item);
                    }
                    if expired > 0 {
                        log::info!(
                            "longlink: {expired} messages in the journal expired while no client ran"
                        );
                    }
                    if !initial.is_empty() {
                        log::info!(
                            "longlink: {} messages recovered from the journal",
                            initial.len()
                        );
                    }
                    Some(j)
                }
                None => None,
            };
            // The server tells duplicates by (run, id): a new run starts a
            // new sequence. A journal keeps its run, and its ids continue
            // after its last one. Ids start at the wall clock in
            // microseconds only to make them easy to tell apart in logs:
            // nothing depends on the clock (it may step back).
            let run = journal.as_ref().map_or_else(new_run, Journal::run);
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_micros() as u64);
            let next = journal.as_ref().map_or(clock, |j| j.next_id().max(clock));
            Some((run, Mutex::new(Sequencer { next, journal })))
        } else {
            None
        };
        let (run, seq) = match seq {
            Some((run, seq)) => (run, Some(seq)),
            None => (0, None),
        };
        let stamp_key = format!(
            "{}:{run},{}:",
            serde_json::to_string(&cfg.msg_run_field).unwrap_or_default(),
            serde_json::to_string(&cfg.msg_id_field).unwrap_or_default()
        );
        let poller = Poller::new().map_err(|e| Error::Connect {
            context: "creating the poller".into(),
            source: Box::new(e),
        })?;
        // Unbounded (a list of small blocks, allocated as used): the outbox
        // budget bounds what is in flight. A bounded channel allocates and
        // touches every slot up front: 64K slots were 7 MiB of RSS per
        // idle client.
        let (tx, rx) = unbounded();
        let (dtx, drx) = unbounded();
        let budget = Budget::new(cfg.outbox_capacity, cfg.outbox_max_bytes);
        for item in &initial {
            budget.force_reserve(item.weight());
        }
        let counters = Counters::default();
        Counters::add(&counters.recovered, initial.len() as u64);
        Counters::add(&counters.expired, expired);
        let shared = Arc::new(Shared {
            cfg,
            tx,
            poller: Arc::new(poller),
            sleeping: AtomicBool::new(false),
            budget: Arc::new(budget),
            counters: Arc::new(counters),
            state: Mutex::new(LinkState::Connecting { attempt: 0 }),
            state_changed: Condvar::new(),
            last_error: Mutex::new(None),
            refusing: AtomicBool::new(false),
            entering: AtomicUsize::new(0),
            close_called: AtomicBool::new(false),
            registry: Arc::new(Registry::default()),
            next_request_id: AtomicU64::new(0),
            dispatch_depth: AtomicUsize::new(0),
            dispatcher_on: AtomicBool::new(false),
            dispatch_rx: Mutex::new(Some(drx)),
            read_paused: AtomicBool::new(false),
            live_conn: AtomicU64::new(0),
            dispatcher_id: OnceLock::new(),
            seq,
            stamp_key,
            recovered,
            pending_drops: Mutex::new(Vec::new()),
            journal_ack: AtomicU64::new(0),
        });
        let owner = Arc::new(Owner {
            shared: shared.clone(),
            io: Mutex::new(None),
            dispatcher: Mutex::new(None),
        });
        // The hook runs on the dispatcher from the first connect on.
        if shared.cfg.on_open.is_some() {
            owner.start_dispatcher()?;
        }
        let s = shared.clone();
        let io = Worker::spawn_sized("longlink-io", Some(crate::stack::IO_STACK), move || {
            crate::io::run(s, rx, dtx, initial)
        })?;
        *owner.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
        Ok(Client { shared, owner })
    }

    pub(crate) fn wait_open(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = crate::time::from_now(timeout);
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        let failure = loop {
            match &*state {
                LinkState::Open => return Ok(()),
                LinkState::Closed(reason) => break Some(format!("{reason:?}")),
                _ => {}
            }
            // An attempt still running at the deadline is bounded by the same
            // connect timeout: give it a moment to report its own error.
            let now = Instant::now();
            let connecting = matches!(*state, LinkState::Connecting { .. });
            let until = if now < deadline || !connecting {
                deadline
            } else {
                crate::time::after(deadline, Duration::from_millis(200))
            };
            if now >= until {
                break None;
            }
            state = self
                .shared
                .state_changed
                .wait_timeout(state, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(state);
        let last = self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let _ = self.owner.close(Duration::from_millis(100));
        Err(match (last, failure) {
            (Some(e), _) => e,
            (None, Some(reason)) => Error::Fatal(reason),
            (None, None) => Error::Timeout(timeout),
        })
    }

    /// Queues `msg` for sending. Returns once it is in the outbox; it leaves
    /// in the order `send` accepted it, after the re-login step, across any
    /// number of reconnects. Blocks only under [`Overflow::Block`].
    ///
    /// # Errors
    /// [`Error::Serialize`], [`Error::InvalidMessage`] (not an object with a
    /// string operator), [`Error::OutboxFull`], [`Error::Closed`]; the last
    /// three hand the message back ([`Error::into_message`]).
    ///
    /// ```no_run
    /// # let client = longlink::Client::builder("ws://127.0.0.1:9001").start()?;
    /// client.send(serde_json::json!({"Operator": "CreateInvitation", "Table": "hi"}))?;
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn send(&self, msg: impl Serialize) -> Result<(), Error> {
        self.shared
            .send(Route::Outbox, msg, SendOptions::new(), false)
            .map(drop)
    }

    /// [`send`](Self::send) with a per-message policy (time to live,
    /// volatile), returning a [`Receipt`] that reports the message's fate:
    /// queued → written → acknowledged (at least once) or confirmed by a
    /// pong (at most once), or expired, or failed.
    ///
    /// # Errors
    /// As [`send`](Self::send), plus [`Error::Journal`] with a durable outbox.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use longlink::{SendOptions, Status};
    /// # let client = longlink::Client::builder("ws://127.0.0.1:9001").start()?;
    /// let quote = serde_json::json!({"Operator": "Quote", "price": 101.5});
    /// let r = client.send_with(quote, SendOptions::new().ttl(Duration::from_secs(2)))?;
    /// match r.wait(Duration::from_secs(5)) {
    ///     Status::Expired => println!("too old by the time the link was back"),
    ///     s => println!("{s:?}"),
    /// }
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn send_with(&self, msg: impl Serialize, options: SendOptions) -> Result<Receipt, Error> {
        self.shared
            .send(Route::Outbox, msg, options, true)
            .map(|r| r.expect("a receipt was asked for"))
    }

    /// The messages recovered from the durable journal when this client
    /// started (accepted by an earlier process, not acknowledged), in the
    /// order they are being re-sent, with their ids. Empty otherwise.
    /// Messages whose [time to live](SendOptions::ttl) ran out before this
    /// start are not among them: they are dropped and counted in
    /// [`Stats::expired`].
    pub fn recovered(&self) -> Vec<Message> {
        self.shared.recovered.clone()
    }

    /// Sends `msg` (operator `X`) and blocks until the reply `X` + `"OK"`
    /// arrives, or `X` + `"Error"`, or `timeout` passes. The request waits in
    /// the outbox while the link is down, within the same deadline.
    ///
    /// Replies are matched first in, first out per operator, or by the
    /// [`correlation_field`](ClientBuilder::correlation_field) when set. A
    /// reply taken by a request is not dispatched to subscribers. Safe to
    /// call from a subscriber closure.
    ///
    /// By name, a reply does not say which request it answers: a request
    /// that timed out keeps a claim on the next reply of its operator (its
    /// late reply must not reach another caller), so after the server lost
    /// one reply, the next request of that operator may time out once; the
    /// one after it is matched again. A correlation field removes the
    /// ambiguity.
    ///
    /// # Errors
    /// [`Error::Remote`] (error reply), [`Error::Timeout`],
    /// [`Error::ConnectionLost`] (written, link died, outcome unknown), plus
    /// those of [`send`](Self::send).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # let client = longlink::Client::builder("ws://127.0.0.1:9001").connect()?;
    /// let page = client.request(
    ///     serde_json::json!({"Operator": "GetInvitation", "limt": 10}),
    ///     Duration::from_secs(5),
    /// )?;
    /// println!("{}", page.value()["data"]);
    /// # Ok::<(), longlink::Error>(())
    /// ```
    pub fn request(&self, msg: impl Serialize, timeout: Duration) -> Result<Message, Error> {
        self.shared
            .request(Route::Outbox, msg, None, timeout, false)
    }

    /// [`request`](Self::request) with options: the timeout, the reply
    /// operators, and whether it may be written again after a reconnect
    /// ([`RequestOptions::idempotent`]).
    ///
    /// # Errors
    /// As [`request`](Self::request); an idempotent request fails with
    /// [`Error::ConnectionLost`] only if the client closes, and otherwise
    /// with [`Error::Timeout`] when no reconnect brings its reply in time.
    pub fn request_with(
        &self,
        msg: impl Serialize,
        options: RequestOptions,
    ) -> Result<Message, Error> {
        let RequestOptions {
            timeout,
            expect,
            idempotent,
        } = options;
        match expect {
            Some(e) => self
                .shared
                .request_expecting(Route::Outbox, msg, e, timeout, idempotent),
            None => self
                .shared
                .request(Route::Outbox, msg, None, timeout, idempotent),
        }
    }

    /// [`request`](Self::request) with the configured
    /// [`request_timeout`](ClientBuilder::request_timeout).
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub fn request_default(&self, msg: impl Serialize) -> Result<Message, Error> {
        self.request(msg, self.shared.cfg.request_timeout)
    }

    /// [`request`](Self::request) for pairs that do not follow the naming
    /// convention, like `userLogin` → `LoginOK` / `LoginError`.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub fn request_expect(
        &self,
        msg: impl Serialize,
        expect: Expect,
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.shared
            .request_expecting(Route::Outbox, msg, expect, timeout, false)
    }

    /// Calls `f` on the dispatcher thread for every inbound message with this
    /// operator, after the closures registered before it. Returns at once.
    pub fn on(
        &self,
        operator: impl Into<String>,
        f: impl FnMut(&Message) + Send + 'static,
    ) -> Subscription {
        let id = self
            .shared
            .registry
            .add_message(Topic::Operator(operator.into()), Box::new(f));
        self.subscribed();
        Subscription {
            id,
            registry: Arc::downgrade(&self.shared.registry),
        }
    }

    /// Calls `f` for every message whose operator has no subscriber.
    pub fn on_any(&self, f: impl FnMut(&Message) + Send + 'static) -> Subscription {
        let id = self.shared.registry.add_message(Topic::Any, Box::new(f));
        self.subscribed();
        Subscription {
            id,
            registry: Arc::downgrade(&self.shared.registry),
        }
    }

    /// Calls `f` for every inbound frame that is not an operator message:
    /// bad JSON, not an object, no string operator, binary, bad UTF-8.
    /// Such frames never harm the link; they are counted in
    /// [`Stats::invalid_frames`].
    pub fn on_invalid(&self, f: impl FnMut(&InvalidFrame) + Send + 'static) -> Subscription {
        let id = self.shared.registry.add_invalid(Box::new(f));
        self.subscribed();
        Subscription {
            id,
            registry: Arc::downgrade(&self.shared.registry),
        }
    }

    /// Calls `f` on every state change, in order, on the dispatcher thread.
    pub fn on_state(&self, f: impl FnMut(&LinkState) + Send + 'static) -> Subscription {
        let id = self.shared.registry.add_state(Box::new(f));
        self.subscribed();
        Subscription {
            id,
            registry: Arc::downgrade(&self.shared.registry),
        }
    }

    /// A closure was registered: make sure the dispatcher runs.
    fn subscribed(&self) {
        if let Err(e) = self.owner.start_dispatcher() {
            log::error!("longlink: cannot start the dispatcher thread: {e}");
        }
    }

    /// The link's state now.
    pub fn state(&self) -> LinkState {
        self.shared.state()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(self.shared.budget.depth())
    }

    /// Skip the current backoff wait and try at once (network came back, app
    /// came to the foreground). On an open link, probe the peer now instead.
    pub fn reconnect_now(&self) {
        self.shared.command(Command::ReconnectNow);
    }

    /// Flushes what is queued until `timeout`, then says goodbye (a ping,
    /// then a Close frame, and waits for the pong), stops and joins its
    /// threads. Returns by `timeout` (plus a few ms) whatever the I/O
    /// thread is doing: a connect attempt in progress is abandoned. New
    /// messages are refused from the start of the call (not the `on_open`
    /// hook's: a re-login in progress finishes, and the outbox flushes
    /// behind it). If the link is not open or logging in, nothing more can
    /// be flushed. Under at-least-once it also waits (within `timeout`) for
    /// the acknowledgements; messages not acknowledged are handed back.
    /// With a durable outbox they are not handed back: they stay in the
    /// journal and are sent by the next client started on it; one with a
    /// time to live keeps its deadline there, and the next start drops it
    /// if the deadline has passed. A message whose time to live has run
    /// out by the close is expired, neither handed back nor kept. The
    /// journal file is released.
    ///
    /// `Ok(())` means every message accepted before this call and not
    /// already reported lost (in [`Stats`] and receipts) is known to have
    /// arrived: a pong to a ping written after it (at most once), its
    /// acknowledgement (at least once), or it stays in the journal
    /// (durable). A Close frame from the server proves nothing: it may
    /// have crossed ours, sent before the server read our last messages.
    ///
    /// # Errors
    /// [`Error::Unsent`] with the messages that did not leave (or were not
    /// acknowledged), in order — also when the link had already ended for
    /// good; [`Error::PossiblyLost`] when, besides, messages were written
    /// that nothing confirmed (they may or may not have arrived);
    /// [`Error::Closed`] if it was already closed, by an earlier `close` or
    /// because the link had ended for good
    /// ([`CloseReason::Fatal`](crate::CloseReason::Fatal) or
    /// [`CloseReason::GaveUp`](crate::CloseReason::GaveUp)) with nothing
    /// left to hand back (the threads are stopped and joined all the same);
    /// [`Error::Timeout`] if the I/O thread did not finish in time (it then
    /// finishes alone).
    pub fn close(&self, timeout: Duration) -> Result<(), Error> {
        self.owner.close(timeout)
    }

    /// A handle that does not keep the link alive, for closures stored in
    /// the client's own subscriptions (a strong clone there would keep the
    /// link open until [`close`](Self::close)).
    pub fn downgrade(&self) -> WeakClient {
        WeakClient {
            shared: Arc::downgrade(&self.shared),
            owner: Arc::downgrade(&self.owner),
        }
    }
}

/// A [`Client`] that does not keep the link alive. See [`Client::downgrade`].
#[derive(Clone, Debug)]
pub struct WeakClient {
    shared: Weak<Shared>,
    owner: Weak<Owner>,
}

impl WeakClient {
    /// The client, if it is still alive.
    pub fn upgrade(&self) -> Option<Client> {
        Some(Client {
            shared: self.shared.upgrade()?,
            owner: self.owner.upgrade()?,
        })
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared")
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Owner")
    }
}

/// The connection being logged in, as the [`on_open`](ClientBuilder::on_open)
/// hook sees it. Its messages bypass the outbox and are the only ones
/// written until the hook returns. Bound to one connection: once it is gone,
/// its calls fail with [`Error::ConnectionLost`].
pub struct Link {
    shared: Arc<Shared>,
    conn: u64,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("conn", &self.conn).finish()
    }
}

impl Link {
    pub(crate) fn new(shared: Arc<Shared>, conn: u64) -> Self {
        Link { shared, conn }
    }

    pub(crate) fn enter_hook(&self) -> HookGuard {
        IN_HOOK.with(|c| c.set(Some(self.conn)));
        FATAL_REPLY.with(|f| f.set(None));
        HookGuard
    }

    /// Writes `msg` now, ahead of the outbox.
    ///
    /// # Errors
    /// As [`Client::send`], except that nothing waits in the outbox.
    pub fn send(&self, msg: impl Serialize) -> Result<(), Error> {
        self.shared
            .send(Route::Login(self.conn), msg, SendOptions::new(), false)
            .map(drop)
    }

    /// Requests on this connection, ahead of the outbox; see [`Client::request`].
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn request(&self, msg: impl Serialize, timeout: Duration) -> Result<Message, Error> {
        self.shared
            .request(Route::Login(self.conn), msg, None, timeout, false)
    }

    /// See [`Client::request_expect`], e.g. `userLogin` → `LoginOK` / `LoginError`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub fn request_expect(
        &self,
        msg: impl Serialize,
        expect: Expect,
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.shared
            .request_expecting(Route::Login(self.conn), msg, expect, timeout, false)
    }

    /// Counters of the client, e.g. to tell a first login from a re-login.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot(self.shared.budget.depth())
    }
}

/// Clears the in-hook mark when the hook returns or panics.
pub(crate) struct HookGuard;

impl Drop for HookGuard {
    fn drop(&mut self) {
        IN_HOOK.with(|c| c.set(None));
    }
}

/// A registered closure. Dropping it does **not** unsubscribe: call
/// [`unsubscribe`](Self::unsubscribe).
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    registry: Weak<Registry>,
}

impl Subscription {
    /// Removes the closure; it is not called for messages dispatched after
    /// this returns (one already running finishes). Returns false if it was
    /// already gone.
    pub fn unsubscribe(self) -> bool {
        self.registry.upgrade().is_some_and(|r| r.remove(self.id))
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Registry")
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_stay_small() {
        // Every message travels by value through the command
        // channel and the outbox: doubling this cost 20-30 % of throughput.
        assert!(size_of::<Command>() <= 128, "{}", size_of::<Command>());
        assert!(size_of::<Item>() <= 112, "{}", size_of::<Item>());
    }

    #[test]
    fn a_waiter_let_go_after_its_deadline_is_a_timeout_not_a_closed_link() {
        let t = Instant::now();
        let d = t + Duration::from_millis(5);
        let gone = Err(RecvTimeoutError::Disconnected);
        let r = request_outcome(gone, d, d, Duration::from_millis(5));
        assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
        let gone = Err(RecvTimeoutError::Disconnected);
        let r = request_outcome(gone, d, t, Duration::from_millis(5));
        assert!(matches!(r, Err(Error::Closed { .. })), "{r:?}");
    }

    #[test]
    fn run_ids_are_nonzero_and_exact_in_javascript() {
        for _ in 0..1000 {
            let r = new_run();
            assert!(r > 0 && r < 1 << 53, "{r}");
        }
    }

    #[test]
    fn the_id_is_spliced_in_front_of_the_encoded_object() {
        assert_eq!(stamp_text("{}", "\"msgId\":", 7), "{\"msgId\":7}");
        assert_eq!(
            stamp_text("{\"Operator\":\"X\"}", "\"msgId\":", 12),
            "{\"msgId\":12,\"Operator\":\"X\"}"
        );
    }
}
