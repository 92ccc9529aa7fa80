//! The threads of a link: starting them, closing, joining.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use polling::Poller;
use serde_json::Value;

use crate::command::Command;
use crate::config::Config;
use crate::dispatch::{self, Registry};
use crate::outbox::Budget;
use crate::shared::Shared;
use crate::state::Counters;
use crate::{CloseReason, Error, LinkState};

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
pub(crate) struct Owner {
    shared: Arc<Shared>,
    io: Mutex<Option<Worker>>,
    /// The dispatcher (most links have none), and the sender dropped when
    /// closing: a dispatcher waiting for room in a full receiver gives up.
    dispatcher: Mutex<Option<(Worker, Sender<()>)>>,
}

impl Owner {
    /// Start the dispatcher thread if it is not running yet.
    pub(crate) fn start_dispatcher(&self) -> Result<(), Error> {
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
        let (stop_tx, stop) = bounded(0);
        let worker = Worker::spawn("longlink-dispatch", move || {
            let (registry, counters) = (s.registry.clone(), s.counters.clone());
            dispatch::run(
                registry,
                counters,
                rx,
                stop,
                || s.dispatch_done(),
                |conn| crate::link::run_hook(&s, conn),
            )
        })?;
        let _ = shared.dispatcher_id.set(worker.handle.thread().id());
        shared.dispatcher_on.store(true, Ordering::Release);
        *slot = Some((worker, stop_tx));
        Ok(())
    }

    pub(crate) fn close(&self, timeout: Duration) -> Result<(), Error> {
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
        if let Some((dispatcher, stop)) = dispatcher {
            // Receivers: what they hold can still be taken; nothing more comes.
            drop(stop);
            dispatcher.join_until(crate::time::after(deadline, grace));
        }
        shared.registry.close_receivers();
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

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Owner")
    }
}

/// Build the shared state and start the I/O thread (and the dispatcher
/// when an `on_open` hook needs it).
pub(crate) fn spawn(
    cfg: Config,
    registry: Arc<Registry>,
) -> Result<(Arc<Shared>, Arc<Owner>), Error> {
    let crate::sequence::Start {
        seq,
        stamp_key,
        initial,
        recovered,
        expired,
    } = crate::sequence::start(&cfg)?;
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
        budget.force_reserve(item.weight);
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
        state: Mutex::new(LinkState::Connecting {
            attempt: 0,
            endpoint: 0,
        }),
        state_changed: Condvar::new(),
        last_error: Mutex::new(None),
        refusing: AtomicBool::new(false),
        entering: AtomicUsize::new(0),
        close_called: AtomicBool::new(false),
        registry,
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
    // The hook runs on the dispatcher from the first connect on; what the
    // builder registered must see the first state and message.
    if shared.cfg.on_open.is_some() || !shared.registry.is_empty() {
        owner.start_dispatcher()?;
    }
    let s = shared.clone();
    let io = Worker::spawn_sized("longlink-io", Some(crate::stack::IO_STACK), move || {
        crate::io::run(s, rx, dtx, initial)
    })?;
    *owner.io.lock().unwrap_or_else(|e| e.into_inner()) = Some(io);
    Ok((shared, owner))
}
