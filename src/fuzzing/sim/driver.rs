//! The driver, as `io::Io` does it: one turn of the I/O loop (commands,
//! reads, time, writes), performing what the session asks, the connect
//! attempt's answer, the `on_open` hook's verdict, and `close` with its
//! goodbye.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::Utf8Bytes;

use super::net::{Down, Up};
use super::server::ServerConn;
use super::{HookVerdict, Sim};
use crate::command::{Command, Event};
use crate::delivery::ReceiptCell;
use crate::session::{Inbound, Output, Transmit, Written};
use crate::{Cause, Error, Failure, LinkState, Status};

impl Sim {
    /// One turn of the I/O loop, as `Io::run` and `Io::service` do it.
    pub(super) fn turn(&mut self) {
        let now = self.now;
        while let Some(cmd) = self.cmds.pop_front() {
            self.session.handle_command(now, cmd);
        }
        self.perform();
        if self.session.close_ready(now, true) {
            return self.finish();
        }
        self.resume_reading();
        // Read what has arrived, unless the dispatcher is full.
        while let Some(conn) = self.sock {
            if self.paused {
                break;
            }
            if self.reset == Some(conn) {
                self.reset = None;
                self.session.handle_lost(now, "read failed: reset".into());
                self.perform();
                break;
            }
            if self.down.front().is_none_or(|f| f.at > now) {
                break;
            }
            let Some(f) = self.down.pop_front() else {
                break;
            };
            if f.conn != conn {
                continue;
            }
            let inbound = match f.frame {
                Down::Text(t) => Inbound::Text(t.into()),
                Down::Pong(n) => Inbound::Pong(n.to_be_bytes().to_vec()),
                Down::Close(code) => Inbound::Close(Some(code)),
            };
            self.note(|| format!("conn {conn} reads {inbound:?}"));
            if let Inbound::Text(t) = &inbound {
                self.reply_read(conn, t.as_str());
            }
            self.quiet_from = now;
            let close = matches!(inbound, Inbound::Close(_));
            self.session.handle_frame(now, inbound);
            self.perform();
            if close {
                self.check_cause("the server's Close", |c| {
                    matches!(c, Cause::ServerClosed { code: Some(1000) })
                });
            }
        }
        self.journal_acks();
        self.judge_time();
        self.perform();
        self.write();
        self.perform();
        // A request just written may need reading resumed for its reply.
        self.resume_reading();
    }

    fn write(&mut self) {
        let Some(conn) = self.sock else {
            return;
        };
        let now = self.now;
        while let Some(t) = self.session.poll_transmit(now) {
            match t {
                Transmit::Ping(seq) => self.push_up(conn, Up::Ping(seq)),
                Transmit::Text(text) => {
                    let (receipts, answered) = self.session.tracked();
                    if receipts + answered >= self.cfg.track_cap
                        && text.as_str() != r#"{"Operator":"Heart"}"#
                    {
                        self.fail(format!(
                            "wrote a message while {receipts} receipts and {answered} answered \
                             requests waited for a pong (bound {})",
                            self.cfg.track_cap
                        ));
                    }
                    let len = text.len();
                    // Larger than the write buffer takes: never written.
                    if len > self.cfg.write_limit {
                        self.too_large(&text);
                        self.session.transmitted(now, len, Written::TooLarge);
                        continue;
                    }
                    self.written(&text);
                    self.push_up(conn, Up::Text(text));
                    self.session.transmitted(now, len, Written::Yes);
                }
            }
        }
        if let Some(seq) = self.session.end_batch(now) {
            self.push_up(conn, Up::Ping(seq));
        }
    }

    /// The model learns what was written.
    fn written(&mut self, text: &Utf8Bytes) {
        if text.as_str() == r#"{"Operator":"Heart"}"# {
            // While the on_open step runs, only its messages go out.
            if self.state != Some(LinkState::Open) {
                let state = self.state.clone();
                self.fail(format!("the app heartbeat was written while {state:?}"));
            }
            return;
        }
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        let k = v["k"].as_u64().unwrap_or(0);
        if let Some(id) = v["msgId"].as_u64() {
            self.check_window(id, text.len());
        }
        let now = self.now;
        let (sock, open) = (self.sock, self.state == Some(LinkState::Open));
        // The on_open step's messages go on their connection only; the
        // outbox's only once it is open.
        let gate = |hook: Option<u64>| match hook {
            Some(conn) if sock != Some(conn) => Some("on another connection than its step's"),
            None if !open => Some("before the on_open step finished"),
            _ => None,
        };
        let epoch = self.epoch;
        if let Some(m) = self.msgs.iter_mut().find(|m| m.k == k) {
            // Once written, a message is sent again whatever its time to
            // live; a recovered one not known to be written keeps it.
            if !m.written_as_counted() && m.expires.is_some_and(|e| e <= now) {
                self.fail(format!("k{k} written after its time to live ran out"));
            }
            if let Some(why) = gate(m.hook) {
                self.fail(format!("k{k} written {why}"));
            }
            if m.epoch != epoch || m.too_large > 0 {
                let why = if m.too_large > 0 {
                    "though it was too large to write".to_owned()
                } else {
                    format!("by process {epoch}, though held by process {}", m.epoch)
                };
                self.fail(format!("k{k} written {why}"));
            }
            m.written += 1;
            m.written_here += 1;
        } else if let Some(r) = self.reqs.iter_mut().find(|r| r.k == k) {
            if r.epoch != epoch || r.too_large > 0 {
                self.fail(format!(
                    "request k{k} written by the wrong process or too large"
                ));
            }
            if r.answer.is_some() || r.deadline <= now {
                let what = format!("request k{k} written after it was answered or timed out");
                self.fail(what);
            }
            if let Some(why) = gate(r.hook) {
                self.fail(format!("request k{k} written {why}"));
            }
            r.written += 1;
        } else {
            self.fail(format!("wrote a frame nobody sent: {text}"));
        }
        self.note(|| format!("writes {text}"));
    }

    /// The model learns a frame was too large to write: it must never be
    /// handed out again.
    fn too_large(&mut self, text: &Utf8Bytes) {
        let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
        let k = v["k"].as_u64().unwrap_or(0);
        self.figures.too_large += 1;
        self.note(|| format!("too large to write: k{k} ({} bytes)", text.len()));
        let times = if let Some(m) = self.msgs.iter_mut().find(|m| m.k == k) {
            m.too_large += 1;
            m.too_large
        } else if let Some(r) = self.reqs.iter_mut().find(|r| r.k == k) {
            r.too_large += 1;
            r.too_large
        } else {
            self.fail(format!("handed out a frame nobody sent: {text}"));
        };
        if times > 1 {
            self.fail(format!(
                "k{k} handed out again after it was too large to write"
            ));
        }
    }

    /// Do what the session asks, in its order.
    pub(super) fn perform(&mut self) {
        while let Some(out) = self.session.poll_output() {
            self.perform_one(out);
        }
        self.callers();
    }

    fn perform_one(&mut self, out: Output) {
        match out {
            Output::Connect { deadline, endpoint } => {
                self.check_endpoint(endpoint);
                if self.attempt.is_some() {
                    self.fail("a second connect attempt while one runs".into());
                }
                if self.sock.is_some() {
                    self.fail("a connect attempt while connected".into());
                }
                if self.app_paused {
                    self.fail("a connect attempt while paused".into());
                }
                // `reconnect_max_attempts(n)` gives up at the n-th failure.
                if let Some(n) = self.cfg.max_attempts
                    && self.failed_in_a_row >= n
                {
                    let failed = self.failed_in_a_row;
                    self.fail(format!(
                        "a connect attempt after {failed} failed in a row (max attempts {n})"
                    ));
                }
                self.note(|| "connect attempt".into());
                self.attempt = Some(deadline);
            }
            Output::AbandonAttempt => {
                // Given up for a timeout (a failure for now) or a pause
                // (a resume starts afresh): no refusal in a row any more.
                self.attempt = None;
                self.rejected_in_a_row = 0;
            }
            // Its Close frame may or may not get out; the Disconnect that
            // follows drops the socket.
            Output::GoAway(code) => self.note(|| format!("go away ({code})")),
            Output::Disconnect => {
                let conn = self.sock.take();
                self.note(|| format!("disconnect {conn:?}"));
                // The socket is dropped: what it had not read is gone.
                self.down.retain(|f| Some(f.conn) != conn);
                if self.server.conn.as_ref().map(|c| c.id) == conn {
                    self.server.conn = None;
                }
                self.paused = false;
                self.reserve_used = 0;
                self.ahead.clear();
                self.acks_here = 0;
            }
            Output::RunHook { conn } => {
                self.hooks.push_back(conn);
                self.last_hook = Some(conn);
            }
            Output::Dispatch(ev) => {
                if let Event::Message(m) = &ev
                    && !["News", "HeartOK"].contains(&m.operator())
                    && !m.operator().starts_with("Req")
                {
                    self.fail(format!("dispatched {:?} to subscribers", m.operator()));
                }
                self.deliver(&ev);
            }
            Output::Answer(a) => {
                let (waiter, answer) = *a;
                waiter.answer(answer);
            }
            Output::Receipt(cell, status) => self.receipt(&cell, status),
            Output::State(s) => {
                self.note(|| format!("state {s:?}"));
                // A working link that drops retries within the spread.
                if let LinkState::Backoff {
                    attempt: 0, delay, ..
                } = &s
                    && *delay > super::SPREAD
                {
                    self.fail(format!("a first retry {delay:?} away, past the spread"));
                }
                if s == LinkState::Open {
                    self.endpoints.opened = true;
                }
                self.check_state_endpoint(&s);
                self.state = Some(s);
            }
            Output::JournalDrop(id) => {
                // Given up: it will not be written again, nor waits for its
                // acknowledgement.
                self.ahead.remove(&id);
                self.journal_drop(id);
            }
            Output::LastError(_) => {}
            Output::Ended => self.ended = true,
        }
    }

    fn receipt(&mut self, cell: &Arc<ReceiptCell>, status: Status) {
        let Some(i) = self
            .msgs
            .iter()
            .position(|m| m.receipt.as_ref().is_some_and(|r| Arc::ptr_eq(r, cell)))
        else {
            self.fail("a receipt nobody asked for".into());
        };
        cell.set(status);
        let m = &self.msgs[i];
        let is_final = status.is_final();
        let wrong = if m.statuses.iter().any(|s| s.is_final()) {
            Some("after its final status")
        } else {
            match status {
                Status::Queued => Some("back to queued"),
                Status::Written | Status::Failed(Failure::PossiblyLost) if m.written == 0 => {
                    Some("though never written")
                }
                Status::Confirmed if m.read == 0 => Some("though the server never read it"),
                Status::Acknowledged if !self.server.app.contains(&m.k) => {
                    Some("though the server's application never had it")
                }
                Status::Expired if m.written > 0 => Some("though written"),
                Status::Failed(Failure::Dropped) if !self.drop_oldest() => {
                    Some("without drop-oldest")
                }
                Status::Failed(Failure::TooLarge) if m.too_large == 0 => {
                    Some("though never too large to write")
                }
                // Drop-oldest makes room for the newest: never drops it.
                Status::Failed(Failure::Dropped) if m.k + 1 == self.next_k => {
                    Some("though it is the one just accepted")
                }
                Status::Failed(Failure::Closed) if !self.closing => Some("before close"),
                _ => None,
            }
        };
        if let Some(why) = wrong {
            let (k, seen) = (m.k, m.statuses.clone());
            self.fail(format!(
                "receipt of k{k} moved to {status:?} {why} (before: {seen:?})"
            ));
        }
        let k = m.k;
        self.note(|| format!("receipt k{k} {status:?} (final {is_final})"));
        self.msgs[i].statuses.push(status);
        if is_final {
            self.counted_before(k, status);
        }
    }

    /// Close: the goodbye (`Socket::goodbye`), then `Session::finish`.
    fn finish(&mut self) {
        self.finished = true;
        self.attempt = None;
        while let Some(cmd) = self.cmds.pop_front() {
            self.session.handle_command(self.now, cmd);
        }
        let deadline = self.close_deadline.unwrap_or(self.now);
        if let Some(conn) = self.sock.take()
            && deadline > self.now
        {
            self.goodbye(conn, deadline);
        }
        self.note(|| "finish".into());
        let unsent = self.session.finish(self.now);
        for (at, out) in std::mem::take(&mut self.held) {
            self.perform_one(out);
            self.callers_at(at);
        }
        for text in unsent {
            let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
            let k = v["k"].as_u64().unwrap_or(0);
            match self.msgs.iter_mut().find(|m| m.k == k) {
                Some(m) if !m.handed_back => m.handed_back = true,
                _ => self.fail(format!("close handed back {text} (not a queued send)")),
            }
        }
        self.perform();
        // Callers still blocked for room are refused; the journal keeps
        // what was not delivered, and is released.
        self.unblock();
        self.journal_close();
        // Past close, every caller has an answer or has given up.
        self.now = self.now.max(deadline);
        self.callers();
        self.final_checks();
    }

    fn goodbye(&mut self, conn: u64, deadline: Instant) {
        if let Some(seq) = self.session.goodbye_ping(self.now) {
            self.push_up(conn, Up::Ping(seq));
        }
        self.push_up(conn, Up::Close);
        let mut peer_closed = false;
        while !(peer_closed && self.session.confirmed()) {
            let next = [
                self.up.front().map(|f| f.at),
                self.down.front().map(|f| f.at),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(at) = next.filter(|t| *t < deadline) else {
                self.now = deadline;
                return;
            };
            self.now = self.now.max(at);
            self.server_turn(at);
            while self.down.front().is_some_and(|f| f.at <= at) {
                let Some(f) = self.down.pop_front() else {
                    break;
                };
                if f.conn != conn || self.reset == Some(conn) {
                    continue;
                }
                match f.frame {
                    Down::Pong(n) => self
                        .session
                        .handle_frame(self.now, Inbound::Pong(n.to_be_bytes().to_vec())),
                    Down::Text(t) => {
                        self.reply_read(conn, &t);
                        self.session.handle_frame(self.now, Inbound::Text(t.into()));
                    }
                    Down::Close(_) => peer_closed = true,
                }
                // The driver performs what the session decided at once.
                self.perform();
                self.callers();
            }
        }
    }

    /// The connect attempt in progress succeeds.
    pub(super) fn connect_ok(&mut self) {
        if self.attempt.take().is_some() {
            let id = self.session.handle_connected(self.now);
            self.figures.connects += 1;
            self.failed_in_a_row = 0;
            self.rejected_in_a_row = 0;
            self.sock = Some(id);
            self.quiet_from = self.now;
            self.reading_since = self.now;
            self.connected_at = self.now;
            self.server.conn = Some(ServerConn {
                id,
                closing: false,
                no_pong: false,
            });
            self.note(|| format!("connected: conn {id}"));
            self.perform();
        }
    }

    /// The connect attempt in progress fails, for now or (`rejected`) for good.
    pub(super) fn connect_failed(&mut self, rejected: bool) {
        if self.attempt.take().is_some() {
            let e = if rejected {
                Error::Rejected { status: 403 }
            } else {
                Error::Connect {
                    context: "connecting".into(),
                    source: "refused".into(),
                }
            };
            self.failed_in_a_row += 1;
            let refusals = self.count_refusal(rejected);
            self.session.handle_connect_failed(self.now, e);
            self.perform();
            self.check_cause("a failed attempt", |c| matches!(c, Cause::ConnectFailed(_)));
            self.check_refusals(rejected, refusals);
        }
    }

    /// The oldest `on_open` hook still running reports.
    pub(super) fn hook_verdict(&mut self, v: HookVerdict) {
        if let Some(conn) = self.hooks.pop_front() {
            let (result, fatal) = match v {
                HookVerdict::Ok => (Ok(()), false),
                HookVerdict::Err => (Err(Error::Timeout(Duration::from_secs(1))), false),
                HookVerdict::Fatal => (Err(Error::Fatal("banned".into())), false),
            };
            // A fatal verdict ends the link even if its connection
            // died meanwhile, unless a later on_open step succeeded.
            let settled = matches!(self.state, Some(LinkState::Open | LinkState::Closed(_)));
            self.fatal_due |= v == HookVerdict::Fatal && !settled;
            self.cmds.push_back(Command::HookDone {
                conn,
                result,
                fatal,
            });
        }
    }
}
