//! The state the handle, the I/O thread and the dispatcher share, and the
//! few operations on it that all of them use (commands and the wake-up
//! handshake, the state the callers see, journal access).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::ThreadId;

use crossbeam_channel::{Receiver, Sender};
use polling::Poller;

use crate::command::{Command, Event};
use crate::config::Config;
use crate::dispatch::Registry;
use crate::journal::Journal;
use crate::outbox::Budget;
use crate::sequence::Sequencer;
use crate::state::Counters;
use crate::{Error, LinkState, Message};

/// State shared by handles, the I/O thread and the dispatcher.
pub(crate) struct Shared {
    pub(crate) cfg: Config,
    pub(crate) tx: Sender<Command>,
    pub(crate) poller: Arc<Poller>,
    /// The I/O thread is (about to be) parked in the poller.
    pub(crate) sleeping: AtomicBool,
    pub(crate) budget: Arc<Budget>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) state: Mutex<LinkState>,
    pub(crate) state_changed: Condvar,
    pub(crate) last_error: Mutex<Option<Error>>,
    /// No new messages are accepted (closing or ended for good).
    pub(crate) refusing: AtomicBool,
    /// Sends between their `refusing` check and their push.
    pub(crate) entering: AtomicUsize,
    pub(crate) close_called: AtomicBool,
    pub(crate) registry: Arc<Registry>,
    pub(crate) next_request_id: AtomicU64,
    pub(crate) dispatch_depth: AtomicUsize,
    /// The dispatcher thread runs. It starts with the first subscription
    /// (or at once with an `on_open` hook); until then inbound messages and
    /// state changes have nobody to go to and are not queued.
    pub(crate) dispatcher_on: AtomicBool,
    /// The dispatcher's end of its channel, until it starts.
    pub(crate) dispatch_rx: Mutex<Option<Receiver<Event>>>,
    pub(crate) read_paused: AtomicBool,
    /// The connection a [`Link`] may use: set by the I/O thread when a
    /// connection is made, 0 once it is gone.
    pub(crate) live_conn: AtomicU64,
    pub(crate) dispatcher_id: OnceLock<ThreadId>,
    /// At-least-once: ids (and the journal). Held from stamping to the push,
    /// so the outbox order is the id order.
    pub(crate) seq: Option<Box<Mutex<Sequencer>>>,
    /// `"msgRun":R,"msgId":` ready to splice into a message: the run is
    /// fixed for the client's life.
    pub(crate) stamp_key: String,
    pub(crate) recovered: Vec<Message>,
    /// Journal drops waiting for the journal lock.
    pub(crate) pending_drops: Mutex<Vec<u64>>,
    /// Highest acknowledgement, to be recorded in the journal.
    pub(crate) journal_ack: AtomicU64,
}

impl Shared {
    /// A snapshot of the counters, with the endpoint in use (redacted).
    pub(crate) fn stats(&self) -> crate::Stats {
        let mut stats = self.counters.snapshot(self.budget.depth());
        let i = self
            .counters
            .endpoint
            .load(std::sync::atomic::Ordering::Relaxed) as usize;
        stats.endpoint = crate::config::redact_url(self.cfg.endpoint(i));
        stats
    }

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
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared")
    }
}
