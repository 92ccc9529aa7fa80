//! One connection as the rules see it: what was written and what the peer
//! is known to have read, its outstanding requests, its liveness; and what
//! arrives on it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::{Inbound, Output, Rules, Session};
use crate::command::{Event, Item, ReplyTo, Retry, Waiter};
use crate::delivery::ReceiptCell;
use crate::liveness::{Liveness, Verdict};
use crate::message::decode;
use crate::pending::{Matched, Pending};
use crate::state::Counters;
use crate::{Cause, Error, Failure, InvalidFrame, Message, Status};

/// Receipts and answered requests one connection keeps while it waits for a
/// pong (about 1 MiB): past it, writing waits for the pong.
pub(crate) const TRACK_CAP: usize = 1 << 16;

pub(super) struct ConnState {
    pub(super) id: u64,
    pub(super) live: Liveness,
    pub(super) pending: Pending<Waiter>,
    /// Data frames written on this connection.
    pub(super) written: u64,
    /// Of those, how many the peer is known to have read (pong to a later ping).
    confirmed: u64,
    /// Frames written that are not re-sent if lost (all but at-least-once ones).
    pub(super) plain: u64,
    /// Of those, how many a pong confirmed.
    plain_confirmed: u64,
    /// Plain frames written after the last confirmation whose reply came:
    /// delivered for sure, so not "possibly lost" (their indexes).
    answered: Vec<u64>,
    /// Outstanding ping: payload number, when, `written` and `plain` then.
    ping: Option<(u64, Instant, u64, u64)>,
    /// Since when its pong is awaited while reading (reset when reading
    /// resumes after a pause: an unread pong is not a missing one).
    pong_wait_from: Instant,
    /// Receipts of plain messages written, by frame number, awaiting a pong.
    pub(super) awaiting: VecDeque<(u64, Arc<ReceiptCell>)>,
    ping_seq: u64,
    /// The driver reads the socket (it stops while the dispatcher is full).
    reading: bool,
    /// [`TRACK_CAP`], unless the rules say otherwise.
    track_cap: usize,
}

impl ConnState {
    pub(super) fn new(id: u64, now: Instant, rules: &Rules) -> ConnState {
        ConnState {
            id,
            live: Liveness::new(now, rules.heartbeat_interval, rules.heartbeat_timeout),
            pending: Pending::default(),
            written: 0,
            confirmed: 0,
            plain: 0,
            plain_confirmed: 0,
            answered: Vec::new(),
            ping: None,
            pong_wait_from: now,
            awaiting: VecDeque::new(),
            ping_seq: 0,
            reading: true,
            track_cap: rules.track_cap,
        }
    }

    /// The peer read every frame written before the ping that holds these
    /// counts; receipts confirmed by it are returned through `out`.
    fn confirm(&mut self, written: u64, plain: u64, out: &mut VecDeque<Output>) {
        self.confirmed = self.confirmed.max(written);
        self.plain_confirmed = self.plain_confirmed.max(plain);
        let confirmed = self.confirmed;
        self.answered.retain(|i| *i > confirmed);
        while let Some((n, _)) = self.awaiting.front()
            && *n <= self.confirmed
        {
            if let Some((_, r)) = self.awaiting.pop_front() {
                out.push_back(Output::Receipt(r, Status::Confirmed));
            }
        }
    }

    /// Record a ping written now; its payload number.
    pub(super) fn ping_now(&mut self, now: Instant) -> u64 {
        self.ping_seq += 1;
        // The oldest unanswered ping counts: a newer one (a probe) must not
        // push the verdict back.
        if self.ping.is_none() {
            self.pong_wait_from = now;
        }
        self.ping = Some((self.ping_seq, now, self.written, self.plain));
        self.ping_seq
    }

    /// Give back the room of empty lists.
    pub(super) fn release_memory(&mut self) {
        if self.awaiting.is_empty() {
            self.awaiting.shrink_to_fit();
        }
        if self.answered.is_empty() {
            self.answered.shrink_to_fit();
        }
    }

    /// No ping waits for its pong.
    pub(super) fn ping_answered(&self) -> bool {
        self.ping.is_none()
    }

    /// A ping confirming what was written is due (one at a time, so at
    /// most one per round trip while writing).
    pub(super) fn wants_confirmation(&self) -> bool {
        self.ping.is_none() && self.written > self.confirmed
    }

    /// Receipts and answered requests waiting for a pong.
    pub(super) fn tracked(&self) -> usize {
        self.awaiting.len() + self.answered.len()
    }

    /// Receipts and answered requests waiting for a pong are at their bound:
    /// write nothing more until one comes (or the link is declared dead).
    pub(super) fn tracking_full(&self) -> bool {
        self.tracked() >= self.track_cap
    }

    /// When the link is to be declared dead for want of a pong: the
    /// tracking is full (writing waits for a pong) and the outstanding ping
    /// has gone unanswered for heartbeat interval + timeout of reading. A
    /// pong may lag far behind inbound data (a flood), which is no fault; a
    /// peer that reads and sends but never answers pings can confirm
    /// nothing, and would stall the link for good.
    fn pong_deadline(&self, rules: &Rules) -> Option<Instant> {
        let wait = rules
            .heartbeat_interval
            .saturating_add(rules.heartbeat_timeout);
        self.ping
            .filter(|_| self.reading && self.tracking_full())
            .map(|_| crate::time::after(self.pong_wait_from, wait))
    }

    pub(super) fn next_deadline(&self, rules: &Rules) -> Option<Instant> {
        let live = self.reading.then(|| self.live.next_deadline());
        [live, self.pong_deadline(rules)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The liveness verdict now, or why the link must be declared dead.
    pub(super) fn check(&mut self, now: Instant, rules: &Rules) -> Result<Verdict, String> {
        if self.pong_deadline(rules).is_some_and(|d| now >= d) {
            return Err("the server answers no ping: nothing it read can be confirmed".into());
        }
        Ok(if self.reading {
            self.live.check(now)
        } else {
            Verdict::Alive
        })
    }

    pub(super) fn set_reading(&mut self, now: Instant, reading: bool) {
        if reading && !self.reading {
            self.live.on_inbound(now);
            self.pong_wait_from = now;
        }
        self.reading = reading;
    }
}

impl Session {
    /// A frame read from the connection.
    pub(crate) fn handle_frame(&mut self, now: Instant, frame: Inbound) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        conn.live.on_inbound(now);
        match frame {
            Inbound::Text(text) => {
                Counters::add(&self.counters.messages_received, 1);
                Counters::add(&self.counters.bytes_received, text.len() as u64);
                match decode(text.as_str(), &self.rules.operator_field) {
                    Ok(m) => self.route(m, now),
                    Err(bad) => self.invalid(bad),
                }
            }
            Inbound::Binary(bytes) => {
                Counters::add(&self.counters.messages_received, 1);
                Counters::add(&self.counters.bytes_received, bytes.len() as u64);
                self.invalid(InvalidFrame::Binary(bytes));
            }
            Inbound::NotUtf8 => self.invalid(InvalidFrame::NotUtf8),
            // The driver's WebSocket layer answers it.
            Inbound::Ping => {}
            Inbound::Pong(payload) => {
                if let Some((seq, sent, written, plain)) = conn.ping
                    && payload == seq.to_be_bytes()
                {
                    // The peer's WebSocket layer read every frame before the ping.
                    conn.confirm(written, plain, &mut self.outputs);
                    conn.ping = None;
                    let rtt = now.saturating_duration_since(sent).as_micros() as u64;
                    Counters::store(&self.counters.last_rtt_us, rtt + 1);
                }
            }
            Inbound::Close(code) => self.lost(now, Cause::ServerClosed { code }),
        }
    }

    /// A reply to a request goes straight to its caller; an acknowledgement
    /// settles messages; anything else goes to subscribers.
    fn route(&mut self, m: Message, now: Instant) {
        let op = m.operator();
        if let Some((ack_op, id_field)) = &self.rules.acks
            && op == &**ack_op
        {
            match m.get(id_field).and_then(Value::as_u64) {
                Some(n) => self.on_ack(n),
                None => log::warn!("longlink: an {op:?} without a numeric id; ignored"),
            }
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let id = self
            .rules
            .correlation_field
            .as_ref()
            .and_then(|f| m.get(f))
            .and_then(Value::as_u64);
        let suffix = &self.rules.error_suffix;
        let error_named = !suffix.is_empty() && op.ends_with(&**suffix);
        match conn.pending.offer(op, id, error_named, now) {
            Matched::Reply { waiter, error } => {
                if waiter.written_at > conn.confirmed {
                    conn.answered.push(waiter.written_at);
                }
                let error = error || waiter.errors.iter().any(|e| e == op);
                let answer = if error { Err(Error::Remote(m)) } else { Ok(m) };
                self.outputs.push_back(Output::answer(waiter, answer));
                self.answered = true;
            }
            Matched::Late => {
                log::debug!("longlink: late reply {op:?} dropped (its caller gave up)")
            }
            Matched::None => {
                let heartbeat = self
                    .rules
                    .app_heartbeat
                    .as_ref()
                    .is_some_and(|(_, reply)| reply == op);
                if !heartbeat || self.rules.app_heartbeat_dispatch {
                    self.outputs.push_back(Output::Dispatch(Event::Message(m)));
                }
            }
        }
    }

    fn invalid(&mut self, frame: InvalidFrame) {
        Counters::add(&self.counters.invalid_frames, 1);
        log::debug!("longlink: invalid frame: {frame:?}");
        self.outputs
            .push_back(Output::Dispatch(Event::Invalid(frame)));
    }

    /// Account for a dead connection and answer its outstanding requests.
    /// Unacknowledged messages go back to the front of the outbox; with
    /// `retry`, so do idempotent requests (behind them).
    pub(super) fn bury(&mut self, now: Instant, retry: bool) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        self.outputs.push_back(Output::Disconnect);
        self.control.clear();
        let c = &self.counters;
        Counters::add(&c.heartbeat_misses, conn.live.misses());
        let mut again = Vec::new();
        let mut lost_requests = Vec::new();
        // Frames written since the last pong are possibly lost, except
        // requests answered meanwhile and idempotent ones written again.
        let mut not_lost = conn.answered.len() as u64;
        for mut w in conn.pending.drain(now) {
            match w.retry.take().filter(|_| retry) {
                Some(Retry {
                    text,
                    key,
                    deadline,
                }) => {
                    if w.written_at > conn.confirmed {
                        not_lost += 1;
                    }
                    let mut item = Item::new(text);
                    item.written = true;
                    item.reply = Some(Box::new(ReplyTo {
                        key,
                        deadline,
                        waiter: w,
                        idempotent: true,
                    }));
                    self.budget.force_reserve(item.weight);
                    again.push(item);
                }
                None => lost_requests.push(w),
            }
        }
        let unconfirmed = conn.plain - conn.plain_confirmed;
        // Counted before any receipt or caller learns the outcome.
        Counters::add(&c.possibly_lost, unconfirmed.saturating_sub(not_lost));
        for (_, r) in conn.awaiting.drain(..) {
            self.outputs
                .push_back(Output::Receipt(r, Status::Failed(Failure::PossiblyLost)));
        }
        for w in lost_requests {
            self.outputs
                .push_back(Output::answer(w, Err(Error::ConnectionLost)));
        }
        // Oldest deadline first: the closest to its caller giving up.
        again.sort_by_key(|i| i.reply.as_ref().map(|r| r.deadline));
        for item in again.into_iter().rev() {
            self.outbox.push_front(item);
        }
        if !self.unacked.is_empty() {
            log::debug!(
                "longlink: {} unacknowledged messages go back to the front of the outbox",
                self.unacked.len()
            );
        }
        while let Some(item) = self.unacked.pop_back() {
            self.outbox.push_front(item);
        }
        self.unacked_bytes = 0;
        Counters::store(&c.awaiting_ack, 0);
    }
}
