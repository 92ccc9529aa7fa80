//! The invariants: each caller's answer, the robbed rule, receipts
//! counted before they turn final, the outbox, tracking and dispatcher
//! bounds after every step, and every outcome once `close` has finished.

use serde_json::Value;

use super::{Msg, Sim};
use crate::state::Stats;
use crate::{Cause, Error, Failure, LinkState, Message, Status};

impl Sim {
    /// The client is about to read `text` on `conn`: a request's own
    /// reply, in time or after its caller gave up?
    pub(super) fn reply_read(&mut self, conn: u64, text: &str) {
        self.reading = conn;
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            return;
        };
        if v["Operator"] == "Ack"
            && let Some(n) = v["msgId"].as_u64()
        {
            self.ahead.retain(|id, _| *id > n);
            self.acks_here += 1;
        }
        let Some(k) = v["k"].as_u64() else { return };
        let now = self.now;
        let Some(r) = self
            .reqs
            .iter_mut()
            .find(|r| r.k == k && r.answer.is_none())
        else {
            return;
        };
        if now < r.deadline && !r.timed_out {
            r.own_reply = Some(conn);
        } else {
            let key = (conn, r.op.clone());
            self.robbery.entry(key).or_default().0 += 1;
        }
    }

    /// Request `k` timed out though its own reply came in time: a ghost
    /// (a request given up earlier) or another live request took it.
    /// Matching by name cannot tell a late reply from a lost one, but each
    /// reply missing (never sent, late, or handed to another request) may
    /// cost at most one such timeout (`pending`'s robbed rule), never a
    /// chain.
    pub(super) fn robbed(&mut self, k: u64, key: (u64, String)) {
        let e = self.robbery.entry(key.clone()).or_default();
        e.1 += 1;
        let (missing, robbed) = *e;
        self.figures.robbed += 1;
        if robbed > missing {
            self.fail(format!(
                "request k{k} timed out though its reply came in time: on conn {} \
                 {robbed} {} requests lost their reply to another, but only {missing} \
                 replies were missing, late or taken by another request",
                key.0, key.1
            ));
        }
    }

    pub(super) fn check_answer(&self, i: usize) {
        let r = &self.reqs[i];
        let Some((at, answer)) = &r.answer else {
            return;
        };
        let late = *at >= r.deadline;
        let by_id = |m: &Message| {
            r.req_id.is_none()
                || (m.get("reqId").and_then(Value::as_u64) == r.req_id
                    && m.get("k").and_then(Value::as_u64) == Some(r.k))
        };
        let ok = match answer {
            Ok(m) => !late && m.operator() == format!("{}OK", r.op) && by_id(m) && r.written > 0,
            Err(Error::Remote(m)) => {
                !late && m.operator() == format!("{}Error", r.op) && by_id(m) && r.written > 0
            }
            // Written, and its link died (an idempotent one is written
            // again, unless the link ended or is closing).
            // The on_open step's request, whose connection went before it was written.
            Err(Error::ConnectionLost) if r.hook.is_some() && r.written == 0 => !late,
            Err(Error::ConnectionLost) => {
                !late && r.written > 0 && (!r.idempotent || self.closing || self.ended)
            }
            Err(Error::Closed { .. }) => self.closing || self.ended,
            // Dropped to make room: never written, or queued again.
            Err(Error::OutboxFull { .. }) => {
                self.drop_oldest() && (r.written == 0 || r.idempotent) && r.k + 1 < self.next_k
            }
            // Larger than the write buffer takes: never written.
            Err(Error::InvalidMessage { .. }) => !late && r.too_large > 0 && r.written == 0,
            Err(_) => false,
        };
        if !ok {
            self.fail(format!(
                "request k{} ({}, deadline {} ms, idempotent {}, written {}x) got {answer:?} at {} ms",
                r.k,
                r.op,
                (r.deadline - self.t0).as_millis(),
                r.idempotent,
                r.written,
                (*at - self.t0).as_millis()
            ));
        }
    }

    // ---- after every step, and at the end

    pub(super) fn stats(&self) -> Stats {
        self.counters.snapshot(self.budget.depth())
    }

    /// After every step.
    /// The state says why the link dropped: if it now waits to retry, the
    /// cause is the one that just happened.
    pub(super) fn check_cause(&self, what: &str, fits: impl Fn(&Cause) -> bool) {
        if let Some(LinkState::Backoff { cause, .. }) = &self.state
            && !fits(cause)
        {
            self.fail(format!("after {what}, the backoff's cause is {cause:?}"));
        }
    }

    /// At least once: message `id` is written, as the window had room: fewer
    /// messages and bytes (weights are at least the lengths) were ahead of
    /// the acknowledgements the client has read than it allows: the
    /// configured window until an acknowledgement comes on the connection
    /// (it grows with them), never more than [`WINDOW_GROWTH`] times it.
    pub(super) fn check_window(&mut self, id: u64, len: usize) {
        let (count, bytes) = super::WINDOW;
        let grown = if self.acks_here > 0 {
            crate::session::WINDOW_GROWTH
        } else {
            1
        };
        let (count, bytes) = (count * grown, bytes * grown);
        let before: usize = self.ahead.values().sum();
        if self.ahead.len() >= count || before >= bytes {
            let n = self.ahead.len();
            self.fail(format!(
                "written with {n} messages, {before} bytes ahead of the \
                 acknowledgements (window {count}, {bytes} bytes)"
            ));
        }
        self.ahead.insert(id, len);
    }

    /// The state names the endpoint of the attempt that runs.
    pub(super) fn check_state_endpoint(&self, s: &LinkState) {
        if let LinkState::Connecting { endpoint, .. } = *s
            && self.attempt.is_some()
            && self.endpoints.last != Some(endpoint)
        {
            let running = self.endpoints.last;
            self.fail(format!(
                "the state names endpoint {endpoint}, the attempt runs on {running:?}"
            ));
        }
    }

    /// An attempt failed, refused for good or not: the refusals in a row.
    pub(super) fn count_refusal(&mut self, rejected: bool) -> usize {
        self.rejected_in_a_row = if rejected {
            self.rejected_in_a_row + 1
        } else {
            0
        };
        self.rejected_in_a_row
    }

    /// An endpoint that refuses for good is passed over: the link ends
    /// when every endpoint has refused in turn (or at its attempt limit).
    pub(super) fn check_refusals(&self, rejected: bool, refusals: usize) {
        let all = refusals >= super::ENDPOINTS;
        let limit = matches!(
            self.state,
            Some(LinkState::Closed(crate::CloseReason::GaveUp { .. }))
        );
        if all && !self.ended {
            self.fail("every endpoint refused for good in turn, yet the link lives".into());
        }
        if rejected && !all && !limit && self.ended {
            self.fail(format!(
                "the link ended after {refusals} refusals in a row, of {} endpoints",
                super::ENDPOINTS
            ));
        }
    }

    /// Endpoints: an attempt that fails moves to the next one; a link that
    /// was open retries its own (an attempt a pause abandoned may do either).
    pub(super) fn check_endpoint(&mut self, endpoint: usize) {
        let e = &mut self.endpoints;
        if let Some(prev) = e.last
            && !e.paused
        {
            let want = if e.opened {
                prev
            } else {
                (prev + 1) % super::ENDPOINTS
            };
            if endpoint != want {
                let opened = e.opened;
                self.fail(format!(
                    "attempt on endpoint {endpoint} after one on {prev} (open between: {opened}); want {want}"
                ));
            }
        }
        self.endpoints = super::Endpoints {
            last: Some(endpoint),
            opened: false,
            paused: false,
        };
    }

    pub(super) fn check(&self) {
        // Paused: no connection, no attempt, and (unless something queued
        // may run out of time, or close waits) no timer: the thread sleeps.
        if self.app_paused && !self.ended && self.cmds.is_empty() {
            if self.sock.is_some() || self.attempt.is_some() {
                self.fail("paused, yet connected or connecting".into());
            }
            if self.state.as_ref().is_some_and(|s| *s != LinkState::Paused) && !self.closing {
                let state = self.state.clone();
                self.fail(format!("paused, yet the state is {state:?}"));
            }
            if !self.closing && self.session.held().0 == 0 && self.session.poll_timeout().is_some()
            {
                self.fail("paused with nothing queued, yet a timer is set".into());
            }
        }
        let (count, bytes) = self.budget.depth();
        let held = self.session.held();
        if (count, bytes) != held && !self.finished {
            self.fail(format!(
                "the budget counts {count} messages / {bytes} bytes, the queues hold {held:?}"
            ));
        }
        // Confirmation tracking is bounded: writing waits past it (replies
        // to requests written before may still come).
        let (receipts, _) = self.session.tracked();
        if receipts > self.cfg.track_cap {
            self.fail(format!(
                "{receipts} receipts wait for a pong, over the bound {}",
                self.cfg.track_cap
            ));
        }
        // Idempotent requests queued again, and messages recovered from
        // the journal (`owner::spawn` forces their room), take room past
        // the bound.
        let slack = self.session.requeued_requests();
        let (rc, rb) = self.recovered_held();
        let (n, b) = (slack + rc, 64 * slack + rb);
        if count > self.cfg.capacity + n || (count > 1 + n && bytes > self.cfg.max_bytes + b) {
            self.fail(format!(
                "the outbox holds {count} messages / {bytes} bytes, over its bound ({} / {})",
                self.cfg.capacity, self.cfg.max_bytes
            ));
        }
        for m in &self.msgs {
            // A stamped message given up is dropped from the journal too,
            // or the next process would send it.
            let given_up = matches!(
                m.statuses.last(),
                Some(Status::Expired | Status::Failed(Failure::Dropped | Failure::TooLarge))
            );
            if given_up && m.id.is_some() && !m.journal_dropped {
                let (k, last) = (m.k, m.statuses.last());
                self.fail(format!("k{k} turned {last:?}, and stays in the journal"));
            }
            if self.cfg.at_least_once && m.id.is_some() {
                continue;
            }
            if m.read > 1 {
                self.fail(format!("k{} read {} times at most once", m.k, m.read));
            }
        }
        self.check_dispatch();
    }

    /// Recovered messages this process still holds: count and bytes.
    fn recovered_held(&self) -> (usize, usize) {
        if self.epoch == 0 {
            return (0, 0);
        }
        let acked = self.session.acked();
        self.msgs
            .iter()
            .filter(|m| m.epoch == self.epoch && m.recovered.is_some() && !m.journal_dropped)
            .filter(|m| m.id.is_some_and(|id| id > acked))
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len))
    }

    /// Whoever sees a final status sees it counted: at the moment receipt
    /// `k` turns final, the counters hold every final status given so far.
    pub(super) fn counted_before(&self, k: u64, status: Status) {
        let s = self.stats();
        let finals = |f: &dyn Fn(&Status) -> bool| {
            let last = |m: &Msg| m.statuses.last().copied();
            let done = |m: &&Msg| m.statuses.iter().any(|s| s.is_final());
            self.msgs
                .iter()
                .filter(|m| m.epoch == self.epoch)
                .filter(done)
                .filter_map(last)
                .filter(f)
                .count() as u64
        };
        let acked = finals(&|s| *s == Status::Acknowledged);
        let expired = finals(&|s| *s == Status::Expired);
        let given_up = finals(&|s| {
            matches!(
                s,
                Status::Failed(Failure::Dropped | Failure::PossiblyLost | Failure::NotOpen)
            )
        });
        if s.acknowledged < acked || s.expired < expired || s.dropped + s.possibly_lost < given_up {
            self.fail(format!(
                "receipt of k{k} turned {status:?} before the counters moved: {acked} acknowledged, \
                 {expired} expired, {given_up} dropped or lost receipts, but the counters say \
                 {} / {} / {} + {}",
                s.acknowledged, s.expired, s.dropped, s.possibly_lost
            ));
        }
    }

    /// Once `close` has finished: every message and request of this
    /// process has its one outcome, counted by this process's counters
    /// (earlier processes' are gone with them; what they journaled and did
    /// not settle was recovered by a later one, and is counted there).
    pub(super) fn final_checks(&self) {
        let s = self.stats();
        for r in self.reqs.iter().filter(|r| r.epoch == self.epoch) {
            if r.answer.is_none() && !r.timed_out {
                self.fail(format!(
                    "request k{} was neither answered nor timed out",
                    r.k
                ));
            }
        }
        let (mut never, mut lost_plain, mut written_stamped, mut dropped_written) = (0, 0, 0, 0);
        let acked = self.session.acked();
        for m in self.msgs.iter().filter(|m| m.epoch == self.epoch) {
            let finals = m.statuses.iter().filter(|s| s.is_final()).count();
            if m.receipt.is_some() && finals != 1 {
                self.fail(format!("receipt of k{} ended with {:?}", m.k, m.statuses));
            }
            let too_large = Some(&Status::Failed(Failure::TooLarge));
            if m.too_large > 0 && m.receipt.is_some() && m.statuses.last() != too_large {
                self.fail(format!("k{} too large, its receipt {:?}", m.k, m.statuses));
            }
            if m.handed_back {
                if m.written > 0 && m.id.is_none() {
                    self.fail(format!("k{} was written, then handed back at close", m.k));
                }
                if m.receipt.is_some()
                    && m.statuses.last() != Some(&Status::Failed(Failure::Closed))
                {
                    self.fail(format!("k{} handed back with {:?}", m.k, m.statuses));
                }
                continue;
            }
            if m.read > 0 && m.written == 0 {
                self.fail(format!("k{} read but never written", m.k));
            }
            // Durable: left in the journal for the next start (checked there).
            let given_up = m.journal_dropped || m.expired_at_start;
            if self.disk.is_some() && m.id.is_some_and(|id| id > acked) && !given_up {
                continue;
            }
            // Written as the session counts it; a recovered message may be
            // acknowledged before this process wrote it.
            let acknowledged = m.id.is_some_and(|id| id <= acked) && !given_up;
            if !(m.written_as_counted() || acknowledged) {
                never += 1;
            } else if m.id.is_some() {
                written_stamped += 1;
                dropped_written += u64::from(m.journal_dropped);
            } else if m.read == 0 {
                lost_plain += 1;
            }
        }
        let dropped_requests = self
            .reqs
            .iter()
            .filter(|r| r.epoch == self.epoch && r.written == 0)
            .filter(|r| {
                let answer = r.answer.as_ref().map(|(_, a)| a).or(r.late.as_ref());
                matches!(answer, Some(Err(Error::OutboxFull { .. })))
            })
            .count() as u64;
        // Never written and not handed back: dropped or expired, counted once.
        if s.dropped + s.expired != never + dropped_requests {
            self.fail(format!(
                "{never} sends and {dropped_requests} requests were never written nor handed back, \
                 but dropped {} + expired {} were counted",
                s.dropped, s.expired
            ));
        }
        // Written, never handed back nor kept: acknowledged, or given up
        // (for room, or too large) and counted lost.
        if s.acknowledged + dropped_written != written_stamped {
            self.fail(format!(
                "{written_stamped} stamped messages were written and neither handed back nor \
                 kept, {dropped_written} of them given up, but {} acknowledged",
                s.acknowledged
            ));
        }
        if s.possibly_lost < lost_plain + dropped_written {
            self.fail(format!(
                "{lost_plain} plain messages lost in transit and {dropped_written} written \
                 stamped ones given up unacknowledged, but possibly_lost = {}",
                s.possibly_lost
            ));
        }
        // Every acknowledged id reached the server's application (one the
        // client gave up may have been lost: not acknowledged).
        for m in &self.msgs {
            let given_up = m.journal_dropped || m.expired_at_start;
            let acknowledged = m.id.is_some_and(|id| id <= acked) && m.written > 0;
            if acknowledged && !given_up && !self.server.app.contains(&m.k) {
                self.fail(format!(
                    "k{} (id {:?}) acknowledged, never handled",
                    m.k, m.id
                ));
            }
        }
    }
}
