//! The send path: from a caller's message to a command for the I/O
//! thread (encoding, routing inside the `on_open` hook, the outbox budget,
//! at-least-once stamping and journaling) and, for requests, the wait for
//! the answer.

use std::cell::Cell;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, bounded};
use serde::Serialize;
use serde_json::Value;
use tungstenite::Utf8Bytes;

use crate::command::{Command, Item, ReplyTo, Waiter};
use crate::delivery::ReceiptCell;
use crate::pending::Key;
use crate::sequence::{stamp_text, wall_deadline};
use crate::shared::Shared;
use crate::{Error, Expect, Message, Receipt, SendOptions};

thread_local! {
    /// Set while an `on_open` hook runs: the connection it logs in.
    pub(crate) static IN_HOOK: Cell<Option<u64>> = const { Cell::new(None) };
    /// The operator of an [`Expect::or_fatal`] reply a request of the
    /// running `on_open` hook got.
    pub(crate) static FATAL_REPLY: Cell<Option<String>> = const { Cell::new(None) };
}

/// Take the operator of the fatal reply the hook that just ran got, if any.
pub(crate) fn take_fatal_reply() -> Option<String> {
    FATAL_REPLY.with(Cell::take)
}

/// Where a message goes.
#[derive(Clone, Copy)]
pub(crate) enum Route {
    Outbox,
    OnOpen(u64),
}

impl Shared {
    /// Inside the hook, messages go to its connection.
    fn route(&self, requested: Route) -> Route {
        match (requested, IN_HOOK.with(Cell::get)) {
            // Inside the hook, the outbox is gated until the hook returns:
            // send the hook's messages past it instead of deadlocking.
            (Route::Outbox, Some(conn)) if self.is_dispatcher() => Route::OnOpen(conn),
            (r, _) => r,
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
        // on_open step's: close waits for a step in progress so that the
        // outbox can still flush behind it.
        let on_open = matches!(route, Route::OnOpen(_));
        // A Link is bound to its connection: once that is gone, say so.
        if let Route::OnOpen(conn) = route
            && self.live_conn.load(Ordering::Acquire) != conn
        {
            return Err(Error::ConnectionLost);
        }
        if self.refusing.load(Ordering::Acquire) && !on_open {
            return Err(Error::Closed {
                message: hand_back(&item.text),
            });
        }
        let outbox = matches!(route, Route::Outbox);
        if outbox {
            let reserved = self.budget.admit(item.weight, self.cfg.rules.overflow);
            if !reserved {
                let message = hand_back(&item.text).unwrap_or(Value::Null);
                return Err(Error::OutboxFull { message });
            }
        }
        let unreserve = |item: &Item| {
            if outbox {
                self.budget.release(item.weight);
            }
        };
        // Between the check and the push, close must wait for us (see io::finish).
        self.entering.fetch_add(1, Ordering::SeqCst);
        if self.refusing.load(Ordering::SeqCst) && !on_open {
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
            (Route::OnOpen(conn), _) => self.tx.send(Command::OnOpen { conn, item }),
        };
        self.entering.fetch_sub(1, Ordering::SeqCst);
        self.wake();
        match pushed {
            Ok(()) => Ok(()),
            Err(e) => {
                let text = match e.into_inner() {
                    Command::Send(item) | Command::OnOpen { item, .. } => item.text,
                    _ => Utf8Bytes::default(),
                };
                Err(Error::Closed {
                    message: hand_back(&text),
                })
            }
        }
    }

    pub(crate) fn send(
        &self,
        route: Route,
        msg: impl Serialize,
        opts: SendOptions,
        receipt: bool,
    ) -> Result<Option<Receipt>, Error> {
        let route = self.route(route);
        let stamp = self.stamps(route, opts);
        let op_field = &self.cfg.rules.operator_field;
        let ours: [&str; 2] = [&self.cfg.msg_id_field, &self.cfg.msg_run_field];
        let avoid: &[&str] = if stamp { &ours } else { &[] };
        let mut item = match crate::message::encode_direct(&msg, op_field, avoid)? {
            Some(text) => Item::new(text),
            // Escapes, or a field of our id's or run's name to replace: the full path.
            None => {
                let mut value = self.to_value(msg)?;
                if stamp && let Some(obj) = value.as_object_mut() {
                    obj.remove(&*self.cfg.msg_id_field);
                    obj.remove(&*self.cfg.msg_run_field);
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

    pub(crate) fn request(
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
            .get(&*self.cfg.rules.operator_field)
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (reply, errors) = match (expect, &op) {
            (Some(e), _) => (e.reply, e.errors),
            (None, Some(op)) => (
                format!("{op}{}", self.cfg.reply_suffix),
                vec![format!("{op}{}", self.cfg.rules.error_suffix)],
            ),
            // encode() below reports the missing operator.
            (None, None) => (String::new(), Vec::new()),
        };
        let key = match (&self.cfg.rules.correlation_field, value.as_object_mut()) {
            (Some(field), Some(obj)) => {
                let id = self.next_request_id.fetch_add(1, Ordering::Relaxed) + 1;
                obj.insert(field.to_string(), Value::from(id));
                Key::Id(id)
            }
            _ => Key::Operator {
                reply,
                errors: errors.clone(),
            },
        };
        let (text, _) = crate::message::encode(value, &self.cfg.rules.operator_field)?;
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
pub(crate) fn request_outcome(
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
    pub(crate) fn request_expecting(
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
}
