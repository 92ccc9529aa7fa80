//! Operator → subscribers, and the dispatcher thread that runs them.
//!
//! User code runs here and only here: subscriber closures, state callbacks
//! and the `on_open` hook, one at a time, in arrival order. A panic is caught
//! and counted; it never reaches the I/O thread. A [`Receiver`](crate::Receiver)
//! is a subscriber too: its queue is filled here, and when it is full the
//! dispatcher waits for room, so the dispatcher's own queue fills and the
//! I/O thread stops reading (the same backpressure as a slow closure).

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};

use crate::command::Event;
use crate::state::Counters;
use crate::{InvalidFrame, LinkState, Message};

/// The largest `dispatch_capacity`: a receiver allocates its slots up
/// front (16 bytes each), so this bounds one at 16 MiB.
pub(crate) const MAX_CAPACITY: usize = 1 << 20;

type Handler<T> = Arc<Mutex<Box<dyn FnMut(&T) + Send>>>;

/// Where a message goes: a closure, or a [`Receiver`](crate::Receiver)'s queue.
#[derive(Clone)]
pub(crate) enum Sink {
    Call(Handler<Message>),
    Queue(Sender<Message>),
}

impl Sink {
    pub(crate) fn call(f: Box<dyn FnMut(&Message) + Send>) -> Sink {
        Sink::Call(Arc::new(Mutex::new(f)))
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

#[derive(Default)]
struct Tables {
    by_op: HashMap<String, Vec<(u64, Sink)>>,
    any: Vec<(u64, Sink)>,
    invalid: Vec<(u64, Handler<InvalidFrame>)>,
    state: Vec<(u64, Handler<LinkState>)>,
    /// The link is closed: receivers made now end at once.
    closed: bool,
}

/// The subscription table, shared by handles and the dispatcher.
#[derive(Default)]
pub(crate) struct Registry {
    tables: RwLock<Tables>,
    next: AtomicU64,
}

/// Which message table a subscription lives in.
pub(crate) enum Topic {
    Operator(String),
    Any,
}

impl Registry {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add_message(&self, topic: Topic, h: Sink) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut t = self.write();
        if t.closed && matches!(h, Sink::Queue(_)) {
            // Dropping the sender: the receiver says the link is closed.
            return id;
        }
        match topic {
            Topic::Operator(op) => t.by_op.entry(op).or_default().push((id, h)),
            Topic::Any => t.any.push((id, h)),
        }
        id
    }

    pub(crate) fn add_invalid(&self, f: Box<dyn FnMut(&InvalidFrame) + Send>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.write().invalid.push((id, Arc::new(Mutex::new(f))));
        id
    }

    pub(crate) fn add_state(&self, f: Box<dyn FnMut(&LinkState) + Send>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.write().state.push((id, Arc::new(Mutex::new(f))));
        id
    }

    /// Remove subscription `id`; true if it was there.
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut t = self.write();
        let mut found = false;
        let mut empty = None;
        for (op, list) in t.by_op.iter_mut() {
            if let Some(i) = list.iter().position(|(x, _)| *x == id) {
                list.remove(i);
                found = true;
                if list.is_empty() {
                    empty = Some(op.clone());
                }
                break;
            }
        }
        if let Some(op) = empty {
            t.by_op.remove(&op);
        }
        fn drop_from<T>(list: &mut Vec<(u64, T)>, id: u64) -> bool {
            let before = list.len();
            list.retain(|(x, _)| *x != id);
            before != list.len()
        }
        found |= drop_from(&mut t.any, id);
        found |= drop_from(&mut t.invalid, id);
        found |= drop_from(&mut t.state, id);
        found
    }

    /// Whether anything is registered (the dispatcher must run).
    pub(crate) fn is_empty(&self) -> bool {
        let t = self.read();
        t.by_op.is_empty() && t.any.is_empty() && t.invalid.is_empty() && t.state.is_empty()
    }

    /// The link is closed: let go of the receivers' queues, so that they
    /// end once drained.
    pub(crate) fn close_receivers(&self) {
        let mut t = self.write();
        t.closed = true;
        for list in t.by_op.values_mut() {
            list.retain(|(_, s)| matches!(s, Sink::Call(_)));
        }
        t.by_op.retain(|_, list| !list.is_empty());
        t.any.retain(|(_, s)| matches!(s, Sink::Call(_)));
    }

    /// Where a message goes: the operator's own sinks, else the catch-all ones.
    pub(crate) fn for_message(&self, op: &str) -> Vec<Sink> {
        let t = self.read();
        match t.by_op.get(op) {
            Some(list) if !list.is_empty() => list.iter().map(|(_, h)| h.clone()).collect(),
            _ => t.any.iter().map(|(_, h)| h.clone()).collect(),
        }
    }
}

pub(crate) fn call<T>(h: &Handler<T>, arg: &T, counters: &Counters, what: &str) {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut f = h.lock().unwrap_or_else(|e| e.into_inner());
        f(arg)
    }));
    if outcome.is_err() {
        Counters::add(&counters.handler_panics, 1);
        log::error!("longlink: a {what} handler panicked; the link is unharmed");
    }
}

/// The dispatcher's inputs, and what it took from them out of turn.
struct Inbox<'a, H: Fn(u64)> {
    rx: &'a Receiver<Event>,
    stop: &'a Receiver<()>,
    hook: &'a H,
    counters: &'a Counters,
    /// Events that came while a full receiver was waited for, in order.
    deferred: VecDeque<Event>,
}

impl<H: Fn(u64)> Inbox<'_, H> {
    fn next(&mut self) -> Option<Event> {
        self.deferred.pop_front().or_else(|| self.rx.recv().ok())
    }

    /// Hand `m` to a receiver's queue, waiting for room while it is full,
    /// unless the link closes (`stop` disconnects) or the receiver is
    /// dropped: then it is counted as unclaimed. While it waits, a new
    /// connection's `on_open` step runs (an application that stopped
    /// pulling must not keep its link from logging in again); other events
    /// wait their turn.
    fn enqueue(&mut self, tx: &Sender<Message>, m: Message) {
        let m = match tx.try_send(m) {
            Ok(()) => return,
            Err(TrySendError::Disconnected(_)) => {
                return Counters::add(&self.counters.unclaimed, 1);
            }
            Err(TrySendError::Full(m)) => m,
        };
        let mut events = true;
        loop {
            let mut sel = Select::new();
            let room = sel.send(tx);
            let stop = sel.recv(self.stop);
            if events {
                sel.recv(self.rx);
            }
            let op = sel.select();
            let i = op.index();
            if i == room {
                if op.send(tx, m).is_err() {
                    Counters::add(&self.counters.unclaimed, 1);
                }
                return;
            }
            if i == stop {
                let _ = op.recv(self.stop);
                return Counters::add(&self.counters.unclaimed, 1);
            }
            match op.recv(self.rx) {
                Ok(Event::Hook { conn }) => (self.hook)(conn),
                Ok(other) => self.deferred.push_back(other),
                // The I/O thread is gone: wait for room or the close.
                Err(_) => events = false,
            }
        }
    }
}

/// The dispatcher thread's loop. `done`: one message or invalid frame is
/// handled (the I/O thread may read again); `hook`: run the `on_open` hook
/// for this connection; `stop` disconnects when the link is closing (a
/// full receiver is not waited for any more).
pub(crate) fn run(
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    rx: Receiver<Event>,
    stop: Receiver<()>,
    done: impl Fn(),
    hook: impl Fn(u64),
) {
    let mut inbox = Inbox {
        rx: &rx,
        stop: &stop,
        hook: &hook,
        counters: &counters,
        deferred: VecDeque::new(),
    };
    while let Some(event) = inbox.next() {
        match event {
            Event::Message(m) => {
                let sinks = registry.for_message(m.operator());
                if sinks.is_empty() {
                    Counters::add(&counters.unclaimed, 1);
                }
                let mut sinks = sinks.into_iter().peekable();
                while let Some(sink) = sinks.next() {
                    match sink {
                        Sink::Call(h) => call(&h, &m, &counters, "message"),
                        // The last one takes the message itself.
                        Sink::Queue(tx) if sinks.peek().is_none() => {
                            inbox.enqueue(&tx, m);
                            break;
                        }
                        Sink::Queue(tx) => inbox.enqueue(&tx, m.clone()),
                    }
                }
                done();
            }
            Event::Invalid(f) => {
                let handlers: Vec<_> = registry
                    .read()
                    .invalid
                    .iter()
                    .map(|(_, h)| h.clone())
                    .collect();
                for h in handlers {
                    call(&h, &f, &counters, "invalid-frame");
                }
                done();
            }
            Event::State(s) => {
                let handlers: Vec<_> = registry
                    .read()
                    .state
                    .iter()
                    .map(|(_, h)| h.clone())
                    .collect();
                for h in handlers {
                    call(&h, &s, &counters, "state");
                }
            }
            Event::Hook { conn } => hook(conn),
            Event::Stop => break,
        }
    }
}
