//! The lifecycle: connecting, the `on_open` gate, open, lost, backoff,
//! ended for good.

use std::collections::VecDeque;
use std::time::Instant;

use super::conn::ConnState;
use super::{ATTEMPT_GRACE, Output, Phase, Session};
use crate::backoff::Next;
use crate::command::Item;
use crate::state::Counters;
use crate::{Cause, CloseReason, Error, Failure};

impl Session {
    pub(super) fn hook_done(
        &mut self,
        now: Instant,
        conn: u64,
        result: Result<(), Error>,
        fatal: bool,
    ) {
        let current = self.conn_id() == Some(conn);
        let logging_in = current && matches!(self.phase, Phase::LoggingIn { .. });
        // A fatal verdict stands even if its connection died meanwhile
        // (servers often close right after a ban) and a retry has begun;
        // not once a later on_open step has succeeded.
        let fatal_verdict = fatal || matches!(result, Err(Error::Fatal(_)));
        let not_open = !matches!(self.phase, Phase::Open | Phase::Ended(_));
        let ends_stale = fatal_verdict && not_open;
        if !(logging_in || ends_stale) {
            return;
        }
        match result {
            Ok(()) => self.open(now),
            Err(Error::Fatal(reason)) => {
                log::warn!("longlink: on_open hook ended the link: {reason}");
                self.end(
                    now,
                    CloseReason::Fatal(reason.clone()),
                    Some(Error::Fatal(reason)),
                );
            }
            Err(e) => {
                let why = e.describe_for_log();
                let e = Error::on_open_failed(e);
                if fatal {
                    let reason = format!("the on_open step failed: {why}");
                    log::warn!("longlink: {reason} (or_fatal): the link ends");
                    self.end(now, CloseReason::Fatal(reason), Some(e));
                } else {
                    self.outputs.push_back(Output::LastError(e));
                    self.lost(now, Cause::OnOpenFailed(why));
                }
            }
        }
    }

    pub(super) fn connect(&mut self, now: Instant) {
        let deadline = crate::time::after(now, self.rules.connect_timeout);
        let endpoint = self.endpoint;
        self.outputs
            .push_back(Output::Connect { deadline, endpoint });
        self.phase = Phase::Dialing {
            attempt: self.backoff.failures(),
            until: crate::time::after(deadline, ATTEMPT_GRACE),
        };
    }

    /// The attempt succeeded: the connection's number.
    pub(crate) fn handle_connected(&mut self, now: Instant) -> u64 {
        self.conn_ids += 1;
        let id = self.conn_ids;
        self.conn = Some(ConnState::new(id, now, &self.rules));
        self.refused = 0;
        self.acked_here = (0, 0);
        Counters::add(&self.counters.connects, 1);
        if self.rules.on_open {
            self.phase = Phase::LoggingIn {
                deadline: crate::time::after(now, self.rules.login_timeout),
            };
            self.outputs.push_back(Output::RunHook { conn: id });
        } else {
            self.open(now);
        }
        id
    }

    /// The attempt failed.
    pub(crate) fn handle_connect_failed(&mut self, now: Instant, e: Error) {
        Counters::add(&self.counters.connect_failures, 1);
        self.next_endpoint();
        let reason = e.describe();
        if !e.is_permanent(self.rules.retry_rejections) {
            self.refused = 0;
        } else {
            // One endpoint that refuses for good is passed over; when each
            // has refused in turn (one: at once), the link ends.
            self.refused += 1;
            if self.refused >= self.rules.endpoints.max(1) {
                return self.end(now, CloseReason::Fatal(reason), Some(e));
            }
            log::warn!("longlink: an endpoint refused for good ({reason}); trying the next");
        }
        self.outputs.push_back(Output::LastError(e));
        self.retry(now, Cause::ConnectFailed(reason));
    }

    /// The connection failed (read or write error, size limit, …).
    pub(crate) fn handle_lost(&mut self, now: Instant, reason: String) {
        if self.conn.is_some() {
            self.lost(now, Cause::Broken(reason));
        }
    }

    pub(super) fn open(&mut self, now: Instant) {
        self.phase = Phase::Open;
        self.backoff.on_up(now);
    }

    /// Schedule the next attempt.
    pub(super) fn retry(&mut self, now: Instant, cause: Cause) {
        match self.backoff.on_down(now, fastrand::f64()) {
            Next::Retry { attempt, delay } if delay.is_zero() => {
                self.phase = Phase::Connecting { attempt };
            }
            Next::Retry { attempt, delay } => {
                log::info!("longlink: retrying in {delay:?} (attempt {attempt})");
                self.phase = Phase::Backoff {
                    attempt,
                    delay,
                    until: crate::time::after(now, delay),
                    cause,
                };
            }
            Next::GiveUp { attempts } => {
                log::warn!("longlink: giving up after {attempts} failed attempts");
                let last_error = cause.to_string();
                let e = Error::Fatal(format!("gave up after {attempts} attempts: {last_error}"));
                self.end(
                    now,
                    CloseReason::GaveUp {
                        attempts,
                        last_error,
                    },
                    Some(e),
                );
            }
        }
    }

    /// An attempt failed: the next one goes to the next endpoint (a link
    /// that works stays on its own).
    fn next_endpoint(&mut self) {
        self.endpoint = (self.endpoint + 1) % self.rules.endpoints.max(1);
    }

    /// The connection is gone (or the attempt failed after the handshake).
    pub(super) fn lost(&mut self, now: Instant, cause: Cause) {
        log::info!("longlink: link lost: {cause}");
        // Lost before it was open: the attempt failed.
        if matches!(self.phase, Phase::LoggingIn { .. }) {
            self.next_endpoint();
        }
        self.drop_connection(now);
        self.retry(now, cause);
    }

    /// The application goes to the background: end the attempt or the
    /// connection (a Close frame, 1001 "going away"), as at a loss (what
    /// was written and not confirmed is possibly lost, or re-sent under
    /// at least once), and wait for [`resume`](Self::resume). Queued
    /// messages stay queued; time to live and request deadlines run on.
    pub(super) fn pause(&mut self, now: Instant) {
        match self.phase {
            Phase::Paused | Phase::Ended(_) => return,
            Phase::Dialing { .. } => self.outputs.push_back(Output::AbandonAttempt),
            _ => {}
        }
        if self.conn.is_some() {
            log::info!("longlink: paused: closing the connection");
            self.outputs.push_back(Output::GoAway(1001));
            self.drop_connection(now);
        }
        // The next timer is a queued message's time to live, if any (not
        // one of a message written meanwhile): a paused link sleeps.
        self.expire_all(now);
        self.phase = Phase::Paused;
    }

    /// The application is back: connect at once, no backoff wait.
    pub(super) fn resume(&mut self) {
        if self.phase == Phase::Paused {
            self.backoff.forget();
            self.refused = 0;
            self.phase = Phase::Connecting { attempt: 0 };
        }
    }

    /// Let the connection go: settle what it carried, drop what only it
    /// could carry (the on_open step's messages, volatile ones).
    fn drop_connection(&mut self, now: Instant) {
        self.bury(now, true);
        for item in std::mem::take(&mut self.on_open_queue) {
            self.fail_item(item, Failure::NotOpen, || Error::ConnectionLost);
        }
        if self.volatile_queued > 0 {
            let (volatile, keep): (VecDeque<Item>, VecDeque<Item>) =
                self.outbox.drain(..).partition(|i| i.volatile);
            self.outbox = keep;
            self.volatile_queued = 0;
            for item in volatile {
                self.budget.release(item.weight);
                self.fail_item(item, Failure::NotOpen, || Error::ConnectionLost);
            }
        }
    }

    /// End for good: no more attempts. Queued sends stay for `close` to hand back.
    pub(super) fn end(&mut self, now: Instant, reason: CloseReason, err: Option<Error>) {
        if matches!(self.phase, Phase::Dialing { .. }) {
            self.outputs.push_back(Output::AbandonAttempt);
        }
        self.bury(now, false);
        for item in std::mem::take(&mut self.on_open_queue) {
            self.fail_item(item, Failure::Closed, || Error::ConnectionLost);
        }
        let (requests, sends): (VecDeque<Item>, VecDeque<Item>) =
            self.outbox.drain(..).partition(|i| i.reply.is_some());
        self.outbox = sends;
        for item in requests {
            self.budget.release(item.weight);
            self.fail_item(item, Failure::Closed, || Error::Closed { message: None });
        }
        self.outputs.push_back(Output::Ended);
        if let Some(e) = err {
            self.outputs.push_back(Output::LastError(e));
        }
        self.phase = Phase::Ended(reason);
    }
}
