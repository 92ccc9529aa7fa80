//! The outbox as the rules see it: what is accepted, what leaves and in
//! which order, what expires, what an acknowledgement settles, and how a
//! message that will not be delivered is reported.

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::Value;

use super::{Output, Phase, Session, Transmit, Written};
use crate::command::{Item, ReplyTo, Retry};
use crate::outbox::trim_oldest;
use crate::state::Counters;
use crate::{Error, Failure, Overflow, Status};

/// How far a connection's in-flight window grows with what it delivers.
pub(crate) const WINDOW_GROWTH: usize = 16;

/// Messages written and awaiting their acknowledgement, none having come,
/// before the warning that the server may not acknowledge at all.
const ACK_SILENCE: usize = 1000;

impl Session {
    /// A message accepted by `send` (its room is already reserved).
    pub(super) fn enqueue(&mut self, item: Item) {
        if matches!(self.phase, Phase::Ended(_)) && item.reply.is_some() {
            self.budget.release(item.weight);
            return self.fail_item(item, Failure::Closed, || Error::Closed { message: None });
        }
        if item.volatile && self.phase != Phase::Open {
            self.budget.release(item.weight);
            return self.fail_item(item, Failure::NotOpen, || Error::ConnectionLost);
        }
        if item.volatile {
            self.volatile_queued += 1;
        }
        if let Some(e) = drop_at(&item) {
            self.ttl_next = Some(self.ttl_next.map_or(e, |t| t.min(e)));
        }
        if let Some(id) = item.id {
            self.highest_id = self.highest_id.max(id);
        }
        self.outbox.push_back(item);
        if self.rules.overflow == Overflow::DropOldest {
            let trimmed = trim_oldest(&mut self.unacked, &mut self.outbox, &self.budget);
            if !trimmed.is_empty() {
                self.unacked_bytes = self.unacked.iter().map(|i| i.weight).sum();
            }
            for old in trimmed {
                if old.volatile {
                    self.volatile_queued -= 1;
                }
                self.fail_item(old, Failure::Dropped, || Error::OutboxFull {
                    message: Value::Null,
                });
            }
        }
    }

    /// Drop queued messages whose time to live ran out and requests whose
    /// caller gave up (never sent late).
    pub(super) fn expire(&mut self, now: Instant) {
        if self.ttl_next.is_some_and(|t| t <= now) {
            self.expire_all(now);
        }
    }

    /// [`expire`](Self::expire), looking at every queued message.
    pub(super) fn expire_all(&mut self, now: Instant) {
        let mut next: Option<Instant> = None;
        let mut keep = VecDeque::with_capacity(self.outbox.len());
        for item in std::mem::take(&mut self.outbox) {
            match drop_at(&item) {
                Some(e) if e <= now => {
                    if item.volatile {
                        self.volatile_queued -= 1;
                    }
                    self.budget.release(item.weight);
                    // A request's caller has given up (it sees a timeout):
                    // it goes unwritten, as from `poll_transmit`, and gives
                    // its room back now, also while no connection comes.
                    if item.reply.as_ref().is_none_or(|r| r.deadline > now) {
                        self.expire_item(item);
                    }
                }
                Some(e) => {
                    next = Some(next.map_or(e, |t| t.min(e)));
                    keep.push_back(item);
                }
                None => keep.push_back(item),
            }
        }
        self.outbox = keep;
        self.ttl_next = next;
    }

    /// At least once with a server that never acknowledges: the outbox
    /// fills silently and `send` starts to fail. Say so once, early (half
    /// the outbox, at most [`ACK_SILENCE`] messages written and none
    /// acknowledged), naming what the server must send.
    fn warn_if_never_acknowledged(&mut self) {
        if self.ack_warned || self.acked > 0 {
            return;
        }
        let at = ACK_SILENCE.min(self.budget.capacity().div_ceil(2)).max(1);
        if self.unacked.len() < at {
            return;
        }
        self.ack_warned = true;
        if let Some((op, field)) = &self.rules.acks {
            log::warn!(
                "longlink: at least once: {} messages written and no acknowledgement has come; \
                 the server must answer {{\"{}\": \"{op}\", \"{field}\": <highest id received>}} \
                 (see ack_operator and message_id_field); until it does, the outbox fills",
                self.unacked.len(),
                self.rules.operator_field,
            );
        }
    }

    /// At least once: as many messages or bytes are written ahead of the
    /// acknowledgements as the window allows. A connection starts with the
    /// configured window and grows it to half of what it has had
    /// acknowledged, up to [`WINDOW_GROWTH`] times: a cut makes write again
    /// at most about half of what the connection delivered, and a link that
    /// works is not held back waiting for acknowledgements.
    pub(super) fn window_full(&self) -> bool {
        let (count, bytes) = self.window();
        self.rules.acks.is_some() && (self.unacked.len() >= count || self.unacked_bytes >= bytes)
    }

    /// The in-flight window now, in messages and bytes.
    fn window(&self) -> (usize, usize) {
        let grow = |start: usize, acked: usize| {
            start
                .max(acked / 2)
                .min(start.saturating_mul(WINDOW_GROWTH))
        };
        let (count, bytes) = self.rules.window;
        (
            grow(count, self.acked_here.0),
            grow(bytes, self.acked_here.1),
        )
    }

    /// The server acknowledged every id up to `n`.
    pub(super) fn on_ack(&mut self, n: u64) {
        let n = n.min(self.highest_id);
        if n <= self.acked {
            return;
        }
        self.acked = n;
        let settled = |i: &Item| i.id.is_some_and(|id| id <= n);
        let mut receipts = Vec::new();
        let (mut count, mut freed) = (0, 0);
        // Written ones, and re-queued ones the server had after all.
        while let Some(item) = pop_if(&mut self.unacked, settled)
            .inspect(|i| self.unacked_bytes -= i.weight)
            .or_else(|| pop_if(&mut self.outbox, settled))
        {
            self.budget.release(item.weight);
            receipts.extend(item.receipt);
            count += 1;
            freed += item.weight;
        }
        Counters::add(&self.counters.acknowledged, count);
        self.acked_here.0 += count as usize;
        self.acked_here.1 += freed;
        for r in receipts {
            self.outputs
                .push_back(Output::Receipt(r, Status::Acknowledged));
        }
    }

    /// The next frame to write: a probe's frames first, then the `on_open`
    /// step's messages, then (once open) the outbox, in order. The driver
    /// writes it and reports with [`transmitted`](Self::transmitted), and
    /// ends each batch with [`end_batch`](Self::end_batch).
    pub(crate) fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        debug_assert!(self.in_flight.is_none(), "transmitted() was not called");
        if let Some(t) = self.control.pop_front() {
            if let Transmit::Text(text) = &t {
                Counters::add(&self.counters.messages_sent, 1);
                Counters::add(&self.counters.bytes_sent, text.len() as u64);
            }
            return Some(t);
        }
        let conn = self.conn.as_ref()?;
        if conn.tracking_full() {
            return None;
        }
        // Under at least once, the outbox waits while the window is full:
        // what a cut makes to write again stays bounded.
        let open = self.phase == Phase::Open && !self.window_full();
        loop {
            let item = if let Some(item) = self.on_open_queue.pop_front() {
                item
            } else if open {
                let item = self.outbox.pop_front()?;
                if item.volatile {
                    self.volatile_queued -= 1;
                }
                // At-least-once messages hold their room until acknowledged.
                if item.id.is_none() {
                    self.batch.freed.0 += 1;
                    self.batch.freed.1 += item.weight;
                }
                item
            } else {
                return None;
            };
            if item.reply.as_ref().is_some_and(|r| r.deadline <= now) {
                // Its caller has given up (it sees a timeout): never send a
                // request late.
                continue;
            }
            if !item.written && item.expires.is_some_and(|e| e <= now) {
                if item.id.is_some() {
                    self.budget.release(item.weight);
                }
                self.expire_item(item);
                continue;
            }
            // Keep the text only if it may have to be written again.
            let keep = item.id.is_some() || item.reply.as_ref().is_some_and(|r| r.idempotent);
            let mut item = item;
            let text = if keep {
                item.text.clone()
            } else {
                std::mem::take(&mut item.text)
            };
            self.in_flight = Some(item);
            return Some(Transmit::Text(text));
        }
    }

    /// How writing the frame [`poll_transmit`](Self::poll_transmit) gave went.
    /// `len` is its size.
    pub(crate) fn transmitted(&mut self, now: Instant, len: usize, written: Written) {
        let Some(mut item) = self.in_flight.take() else {
            return;
        };
        if written == Written::TooLarge {
            log::warn!("longlink: a {len}-byte message is too large to send; dropped");
            if item.id.is_some() {
                self.budget.release(item.weight);
            }
            return self.fail_item(item, Failure::TooLarge, || Error::InvalidMessage {
                reason: format!("{len} bytes is more than the write buffer holds"),
                message: Value::Null,
            });
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        conn.written += 1;
        self.batch.frames += 1;
        self.batch.bytes += len as u64;
        if item.written {
            self.batch.resent += 1;
        }
        item.written = true;
        if let Some(r) = &item.receipt {
            self.outputs
                .push_back(Output::Receipt(r.clone(), Status::Written));
        }
        if item.id.is_some() {
            self.unacked_bytes += item.weight;
            self.unacked.push_back(item);
            self.warn_if_never_acknowledged();
            return;
        }
        conn.plain += 1;
        if let Some(r) = item.receipt {
            conn.awaiting.push_back((conn.written, r));
        }
        if let Some(r) = item.reply {
            let ReplyTo {
                key,
                deadline,
                mut waiter,
                idempotent,
            } = *r;
            if idempotent {
                waiter.retry = Some(Retry {
                    text: item.text,
                    key: key.clone(),
                    deadline,
                });
            }
            waiter.written_at = conn.written;
            conn.pending.insert(key, waiter, now, deadline);
        }
    }

    /// A batch of writes is done: count it, and return the ping to write
    /// (before the flush) when one should confirm what was written — a
    /// pong proves the server's WebSocket layer read every frame before
    /// it, which narrows "possibly lost" to the frames written since.
    pub(crate) fn end_batch(&mut self, now: Instant) -> Option<u64> {
        let b = std::mem::take(&mut self.batch);
        if b.freed.0 > 0 {
            self.budget.release_many(b.freed.0, b.freed.1);
        }
        let c = &self.counters;
        if b.frames > 0 {
            Counters::add(&c.messages_sent, b.frames);
            Counters::add(&c.bytes_sent, b.bytes);
            Counters::add(&c.resent, b.resent);
        }
        Counters::store(&c.awaiting_ack, self.unacked.len() as u64);
        let conn = self.conn.as_mut()?;
        if b.frames > 0 {
            conn.live.on_outbound(now);
        }
        conn.wants_confirmation().then(|| conn.ping_now(now))
    }

    /// Answer a message that will not be sent: counters first, then its
    /// receipt learns `why`, the journal forgets it, a request gets `err()`.
    /// The caller has already released its outbox room.
    pub(super) fn fail_item(&mut self, item: Item, why: Failure, err: impl FnOnce() -> Error) {
        // A message written before (awaiting its ack, or a request written
        // again) may have arrived: possibly lost, not dropped.
        if item.reply.is_none() || why == Failure::Dropped {
            let c = &self.counters;
            let counter = if item.written {
                &c.possibly_lost
            } else {
                &c.dropped
            };
            Counters::add(counter, 1);
        }
        if let Some(r) = item.receipt {
            self.outputs
                .push_back(Output::Receipt(r, Status::Failed(why)));
        }
        // Closed: a journaled message stays for the next start.
        if let Some(id) = item.id.filter(|_| why != Failure::Closed) {
            self.outputs.push_back(Output::JournalDrop(id));
        }
        if let Some(r) = item.reply {
            self.outputs.push_back(Output::answer(r.waiter, Err(err())));
        }
    }

    /// A message whose time to live ran out before it was written.
    fn expire_item(&mut self, item: Item) {
        Counters::add(&self.counters.expired, 1);
        if let Some(r) = item.receipt {
            self.outputs.push_back(Output::Receipt(r, Status::Expired));
        }
        if let Some(id) = item.id {
            self.outputs.push_back(Output::JournalDrop(id));
        }
        log::debug!("longlink: a message expired before it could be written");
    }
}

/// When a queued item is to go unwritten: its time to live (unless it was
/// written: a re-send is due whatever its age) or, for a request, its
/// deadline, whichever comes first.
pub(super) fn drop_at(item: &Item) -> Option<Instant> {
    let ttl = item.expires.filter(|_| !item.written);
    let deadline = item.reply.as_ref().map(|r| r.deadline);
    match (ttl, deadline) {
        (Some(t), Some(d)) => Some(t.min(d)),
        (t, d) => t.or(d),
    }
}

/// Pop the front item if it matches.
fn pop_if(q: &mut VecDeque<Item>, f: impl FnOnce(&Item) -> bool) -> Option<Item> {
    if q.front().is_some_and(f) {
        q.pop_front()
    } else {
        None
    }
}
