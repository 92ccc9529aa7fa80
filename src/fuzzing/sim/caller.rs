//! The caller: sends with every option, requests by name or id, the
//! `on_open` hook's `Link`, `close`; and each waiting caller, who polls
//! its one-shot channel and gives up at its deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use serde_json::{Value, json};

use super::{Sim, ms_or_max};
use crate::command::{Command, Item, ReplyTo, Waiter};
use crate::delivery::ReceiptCell;
use crate::pending::Key;
use crate::{Error, Message, Status};

/// One message accepted by `send`, as the model follows it.
#[derive(Debug)]
pub(super) struct Msg {
    pub(super) k: u64,
    pub(super) id: Option<u64>,
    pub(super) expires: Option<Instant>,
    pub(super) receipt: Option<Arc<ReceiptCell>>,
    /// Statuses the session gave its receipt, in order.
    pub(super) statuses: Vec<Status>,
    /// Times written.
    pub(super) written: u32,
    /// Times the server's WebSocket layer read it.
    pub(super) read: u32,
    pub(super) handed_back: bool,
    /// The `on_open` step's message for this connection.
    pub(super) hook: Option<u64>,
}

/// One request, as its caller sees it.
#[derive(Debug)]
pub(super) struct Req {
    pub(super) k: u64,
    pub(super) op: String,
    pub(super) req_id: Option<u64>,
    pub(super) deadline: Instant,
    pub(super) idempotent: bool,
    pub(super) rx: Receiver<Result<Message, Error>>,
    pub(super) answer: Option<(Instant, Result<Message, Error>)>,
    /// The caller gave up at its deadline.
    pub(super) timed_out: bool,
    /// A failure that came after that.
    pub(super) late: Option<Result<Message, Error>>,
    pub(super) written: u32,
    /// The client read its own reply in time on this connection.
    pub(super) own_reply: Option<u64>,
    /// The `on_open` step's request for this connection.
    pub(super) hook: Option<u64>,
}

impl Sim {
    pub(super) fn send(&mut self, ttl_ms: Option<u16>, volatile: bool, receipt: bool, pad: u8) {
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

    pub(super) fn request(&mut self, op: u8, timeout_ms: u16, idempotent: bool, hook: Option<u64>) {
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
