//! Operator → subscribers, and the dispatcher thread that runs them.
//!
//! User code runs here and only here: subscriber closures, state callbacks
//! and the `on_open` hook, one at a time, in arrival order. A panic is caught
//! and counted; it never reaches the I/O thread.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crossbeam_channel::Receiver;

use crate::command::Event;
use crate::state::Counters;
use crate::{InvalidFrame, LinkState, Message};

type Handler<T> = Arc<Mutex<Box<dyn FnMut(&T) + Send>>>;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

#[derive(Default)]
struct Tables {
    by_op: HashMap<String, Vec<(u64, Handler<Message>)>>,
    any: Vec<(u64, Handler<Message>)>,
    invalid: Vec<(u64, Handler<InvalidFrame>)>,
    state: Vec<(u64, Handler<LinkState>)>,
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

    pub(crate) fn add_message(&self, topic: Topic, f: Box<dyn FnMut(&Message) + Send>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let h = Arc::new(Mutex::new(f));
        let mut t = self.write();
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

    /// Handlers for a message: the operator's own, else the catch-all ones.
    pub(crate) fn for_message(&self, op: &str) -> Vec<Handler<Message>> {
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

/// The dispatcher thread's loop. `done`: one message or invalid frame is
/// handled (the I/O thread may read again); `hook`: run the `on_open` hook
/// for this connection.
pub(crate) fn run(
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    rx: Receiver<Event>,
    done: impl Fn(),
    hook: impl Fn(u64),
) {
    for event in rx.iter() {
        match event {
            Event::Message(m) => {
                for h in registry.for_message(m.operator()) {
                    call(&h, &m, &counters, "message");
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
