//! The caller: sends with every option, requests by name or id, the
//! `on_open` hook's `Link`, `close`; callers blocked for room in the
//! outbox; and each waiting caller, who polls its one-shot channel and
//! gives up at its deadline.

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, TryRecvError};
use serde_json::{Value, json};

use super::Sim;
use super::model::{Msg, Req};
use crate::command::{Command, Item, ReplyTo, Waiter};
use crate::delivery::ReceiptCell;
use crate::pending::Key;
use crate::{Error, Overflow};

/// A `send` or `request` of the application, made at `at`.
#[derive(Clone, Copy)]
pub(super) enum Submit {
    Send {
        ttl_ms: Option<u16>,
        volatile: bool,
        receipt: bool,
        pad: u8,
        at: Instant,
    },
    Request {
        op: u8,
        timeout_ms: u16,
        idempotent: bool,
        at: Instant,
    },
}

/// A step's milliseconds; `u16::MAX` stands for `Duration::MAX` (no limit).
fn ms_or_max(ms: u16) -> Duration {
    if ms == u16::MAX {
        Duration::MAX
    } else {
        Duration::from_millis(u64::from(ms))
    }
}

impl fmt::Debug for Submit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Submit::Send { ttl_ms, pad, .. } => write!(f, "send (ttl {ttl_ms:?} ms, pad {pad})"),
            Submit::Request { op, timeout_ms, .. } => {
                write!(f, "request (op {op}, timeout {timeout_ms} ms)")
            }
        }
    }
}

/// A caller waiting for room in the outbox (`Overflow::Block`) until `until`.
#[derive(Debug)]
pub(super) struct Blocked {
    what: Submit,
    until: Instant,
}

impl Sim {
    pub(super) fn send(&mut self, ttl_ms: Option<u16>, volatile: bool, receipt: bool, pad: u8) {
        let at = self.now;
        self.submit(Submit::Send {
            ttl_ms,
            volatile,
            receipt,
            pad,
            at,
        });
    }

    /// A request of the application (through the outbox), or of the
    /// `on_open` step of connection `hook` (past it).
    pub(super) fn request(&mut self, op: u8, timeout_ms: u16, idempotent: bool, hook: Option<u64>) {
        let at = self.now;
        match hook {
            Some(conn) => {
                self.accept_request(op, timeout_ms, idempotent, at, Some(conn));
            }
            None => self.submit(Submit::Request {
                op,
                timeout_ms,
                idempotent,
                at,
            }),
        }
    }

    /// As `Shared::submit`: refused once closing; else room is reserved by
    /// the overflow policy. `Overflow::Block(d)`: a caller that finds no
    /// room waits, in this single-threaded model, as one of
    /// [`blocked`](Sim::blocked): before every later step it tries again,
    /// until room frees or `d` has passed (then it gets `OutboxFull`).
    fn submit(&mut self, what: Submit) {
        if self.closing || self.ended {
            return self.note(|| format!("{what:?}: refused, closed"));
        }
        if self.accept(what) {
            return;
        }
        match self.cfg.overflow {
            Overflow::Block(d) => {
                self.figures.blocked += 1;
                self.note(|| format!("{what:?}: waits for room up to {d:?}"));
                let until = crate::time::after(self.now, d);
                self.blocked.push_back(Blocked { what, until });
            }
            _ => self.note(|| format!("{what:?}: outbox full, handed back")),
        }
    }

    /// Callers blocked for room try again, oldest first; those whose wait
    /// is over give up (`OutboxFull`), and close refuses them all.
    pub(super) fn unblock(&mut self) {
        for b in std::mem::take(&mut self.blocked) {
            if self.closing || self.ended {
                self.note(|| format!("blocked {:?}: refused, closed", b.what));
            } else if self.accept(b.what) {
                self.note(|| format!("blocked {:?}: found room", b.what));
            } else if self.now >= b.until {
                self.note(|| format!("blocked {:?}: outbox full, handed back", b.what));
            } else {
                self.blocked.push_back(b);
            }
        }
    }

    /// Reserve room for `weight` as the overflow policy says.
    fn reserve(&self, weight: usize) -> bool {
        match self.cfg.overflow {
            // The handle waits past twice the bound; the driver trims
            // each message as it takes it, so it never waits here.
            Overflow::DropOldest => {
                self.budget.force_reserve(weight);
                true
            }
            _ => self.budget.try_reserve(weight),
        }
    }

    /// Whether the outbox took it (it is refused for good when the
    /// journal cannot take it).
    fn accept(&mut self, what: Submit) -> bool {
        match what {
            Submit::Send {
                ttl_ms,
                volatile,
                receipt,
                pad,
                at,
            } => self.accept_send(ttl_ms, volatile, receipt, pad, at),
            Submit::Request {
                op,
                timeout_ms,
                idempotent,
                at,
            } => self.accept_request(op, timeout_ms, idempotent, at, None),
        }
    }

    fn accept_send(
        &mut self,
        ttl_ms: Option<u16>,
        volatile: bool,
        receipt: bool,
        pad: u8,
        at: Instant,
    ) -> bool {
        let k = self.next_k;
        let pad = "x".repeat(usize::from(pad));
        let plain = json!({"Operator": "Post", "k": k, "pad": pad}).to_string();
        let stamp = self.cfg.at_least_once && !volatile;
        let mut item = Item::new(plain.clone());
        if stamp {
            item.weight += self.stamp_key.len() + 21;
        }
        if !self.reserve(item.weight) {
            return false;
        }
        self.next_k += 1;
        // As `send_with` computes it, before it waits for room.
        item.expires = ttl_ms.map(|t| crate::time::after(at, ms_or_max(t)));
        item.volatile = volatile;
        let id = stamp.then_some(self.next_id);
        if let Some(id) = id {
            item.text = crate::sequence::stamp_text(&plain, &self.stamp_key, id).into();
            item.id = Some(id);
            // Durable: in the journal before `send` returns.
            if !self.journal_append(&item) {
                self.budget.release(item.weight);
                self.note(|| format!("send k{k}: the journal refused it"));
                return true;
            }
            self.next_id += 1;
        }
        let cell = receipt.then(ReceiptCell::new);
        if let (Some(c), Some(id)) = (&cell, id) {
            c.set_id(id);
        }
        item.receipt = cell.clone();
        self.figures.sent += 1;
        let mut m = Msg::new(k, item.text.len(), self.now, self.epoch);
        m.id = id;
        m.expires = item.expires;
        m.receipt = cell;
        self.msgs.push(m);
        self.note(|| format!("send k{k} id {id:?}"));
        self.cmds.push_back(Command::Send(item));
        true
    }

    /// The `on_open` hook's `Link` sends or asks, as `Shared::submit` does:
    /// refused with `ConnectionLost` once its connection is gone (the
    /// driver holds another or none), never refused for `close`.
    pub(super) fn hook_send(&mut self, request: bool, stale: bool) {
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
        let mut m = Msg::new(k, text.len(), self.now, self.epoch);
        m.hook = Some(conn);
        self.msgs.push(m);
        self.note(|| format!("hook send k{k} on conn {conn}"));
        let item = Item::new(text);
        self.cmds.push_back(Command::OnOpen { conn, item });
    }

    fn accept_request(
        &mut self,
        op: u8,
        timeout_ms: u16,
        idempotent: bool,
        at: Instant,
        hook: Option<u64>,
    ) -> bool {
        let k = self.next_k;
        let op = if op == 0 { "ReqA" } else { "ReqB" };
        let mut value = json!({"Operator": op, "k": k});
        let req_id = self.cfg.by_id.then_some(self.next_req);
        let key = match req_id {
            Some(id) => {
                value["reqId"] = json!(id);
                Key::Id(id)
            }
            None => Key::Operator {
                reply: format!("{op}OK"),
                errors: vec![format!("{op}Error")],
            },
        };
        let mut item = Item::new(value.to_string());
        // The on_open step's messages take no room in the outbox.
        if hook.is_none() && !self.reserve(item.weight) {
            return false;
        }
        self.next_k += 1;
        self.next_req += u64::from(req_id.is_some());
        let (tx, rx) = crossbeam_channel::bounded(1);
        // As `request_with` computes it, before it waits for room (a
        // millisecond later: the caller gives up just after the session
        // would answer).
        let timeout = ms_or_max(timeout_ms).saturating_add(Duration::from_millis(1));
        let deadline = crate::time::after(at, timeout);
        let waiter = Waiter {
            tx,
            errors: vec![format!("{op}Error")],
            retry: None,
            written_at: 0,
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
            epoch: self.epoch,
            too_large: 0,
        });
        self.note(|| format!("request k{k} {op} {req_id:?} hook {hook:?}"));
        self.cmds.push_back(match hook {
            Some(conn) => Command::OnOpen { conn, item },
            None => Command::Send(item),
        });
        true
    }

    /// `close` with a timeout of `ms`.
    pub(super) fn close(&mut self, ms: u16) {
        if !self.closing {
            self.closing = true;
            let deadline = self.now + Duration::from_millis(u64::from(ms));
            // The driver takes `Close` out of the command stream.
            self.session.handle_close(deadline);
            self.close_deadline = Some(deadline);
        }
    }

    /// Poll each waiting caller's channel; a caller whose deadline passed
    /// gives up (it sees `Timeout`).
    pub(super) fn callers(&mut self) {
        self.callers_at(self.now);
    }

    /// [`callers`](Self::callers) as of `now`.
    pub(super) fn callers_at(&mut self, now: Instant) {
        for i in 0..self.reqs.len() {
            let r = &mut self.reqs[i];
            // Its caller died with its process.
            if r.epoch != self.epoch {
                continue;
            }
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
