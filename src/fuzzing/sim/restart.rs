//! Durable mode: the real journal, in a directory of its own, kept as
//! `send.rs` and `io::Io` keep it (each stamped message appended before
//! `send` returns, acknowledgements recorded once per turn, drops as the
//! session reports them, the last acknowledgement and release at close);
//! and the process restart: everything in memory is lost, then a new
//! process opens the same journal (`Journal::open`, `sequence::recover`)
//! and a new session starts with what was recovered.
//!
//! The model: the journal holds every stamped message that is neither
//! acknowledged (up to the highest acknowledgement any process of the link
//! knew) nor given up (`Output::JournalDrop`: expired, too large, dropped
//! for room). A new process recovers exactly those, in id order, with
//! their text and what was left of their time to live; one whose time to
//! live ran out while no process ran is counted expired at the start
//! instead, never sent. What was not journaled (volatile messages, the
//! `on_open` step's, requests and their waiters, receipts, callers blocked
//! for room) is gone with the process: exempt from the accounting, which
//! counts each process's messages against that process's counters (a
//! recovered message belongs to the process that recovered it). At the
//! end ([`Sim::drain_journal`]), every journaled message was delivered
//! exactly once after the server's dedup, or given up and counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::{HookVerdict, Sim, Step, rules};
use crate::command::Item;
use crate::journal::{Journal, JournalSync};
use crate::outbox::Budget;
use crate::session::Session;
use crate::state::Counters;

/// The simulated wall clock at the start: a fixed moment, so that a trace
/// replays exactly.
const WALL0: Duration = Duration::from_secs(1_700_000_000);
/// Steps a new process may take to empty the journal at the end.
const DRAIN_STEPS: usize = 200;

/// The journal's file, and what the driver recorded in it.
pub(super) struct Disk {
    dir: PathBuf,
    path: PathBuf,
    run: u64,
    /// Open while a process runs.
    journal: Option<Journal>,
    /// The highest acknowledgement recorded (`Io::journal_acked`).
    recorded: u64,
}

impl Disk {
    /// A new journal, in a directory unique to this test process and case.
    /// Never synced but at its creation (`JournalSync::Never`): only the
    /// process dies here, and what it wrote is the OS's by then.
    pub(super) fn create() -> Disk {
        static CASES: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "longlink-sim-{}-{}",
            std::process::id(),
            CASES.fetch_add(1, Ordering::Relaxed)
        ));
        // Left by an earlier test process of the same id, killed.
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("creating {}: {e}", dir.display());
        }
        let path = dir.join("journal");
        let (journal, _) = Journal::open(&path, JournalSync::Never)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        Disk {
            run: journal.run(),
            dir,
            path,
            journal: Some(journal),
            recorded: 0,
        }
    }

    pub(super) fn run(&self) -> u64 {
        self.run
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.journal = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Sim {
    /// Now, by the simulated wall clock (the journal keeps deadlines in it).
    fn wall(&self) -> SystemTime {
        UNIX_EPOCH + WALL0 + (self.now - self.t0)
    }

    fn journal(&mut self) -> Option<&mut Journal> {
        self.disk.as_mut()?.journal.as_mut()
    }

    /// Durable: append stamped message `item` before `send` returns, as
    /// `Shared::submit` does. Whether the journal took it.
    pub(super) fn journal_append(&mut self, item: &Item) -> bool {
        let (now, wall) = (self.now, self.wall());
        let (Some(id), Some(j)) = (item.id, self.journal()) else {
            return true;
        };
        let deadline = crate::sequence::wall_deadline_at(item, now, wall);
        let appended = j.append(id, &item.text, deadline, now);
        if let Err(e) = &appended {
            self.note(|| format!("appending id {id}: {e}"));
        }
        appended.is_ok()
    }

    /// `Output::JournalDrop`: message `id` will never be sent.
    pub(super) fn journal_drop(&mut self, id: u64) {
        if let Some(j) = self.journal() {
            j.drop_id(id);
        }
        match self.msgs.iter_mut().find(|m| m.id == Some(id)) {
            Some(m) => m.journal_dropped = true,
            None => self.fail(format!("the session gave up id {id}, which no message has")),
        }
    }

    /// Record acknowledgements, once per turn (`Io::journal_acks`).
    pub(super) fn journal_acks(&mut self) {
        let n = self.session.acked();
        if let Some(d) = self.disk.as_mut()
            && n > d.recorded
            && let Some(j) = d.journal.as_mut()
        {
            j.ack(n);
            d.recorded = n;
        }
    }

    /// At close (`Io::finish`): the last acknowledgement, shrink the file
    /// if nothing is left, flush, release it for the next start.
    pub(super) fn journal_close(&mut self) {
        let n = self.session.acked();
        if let Some(d) = self.disk.as_mut() {
            if let Some(j) = d.journal.as_mut() {
                j.ack(n);
                j.compact_if_empty();
                j.sync_pending();
            }
            d.journal = None;
        }
    }

    /// The highest acknowledgement any process of the link knew.
    fn acked_ever(&self) -> u64 {
        self.acked_before.max(self.session.acked())
    }

    /// What the journal holds by the model: indexes into `msgs`, in id order.
    fn journal_live(&self) -> Vec<usize> {
        let acked = self.acked_ever();
        let live = |m: &super::Msg| {
            m.id.is_some_and(|id| id > acked) && !m.journal_dropped && !m.expired_at_start
        };
        (0..self.msgs.len())
            .filter(|i| live(&self.msgs[*i]))
            .collect()
    }

    /// The process dies at once: the session and its queues, waiters,
    /// callers blocked for room, the dispatcher and the connection are
    /// gone (the server sees it vanish: nothing in flight arrives). `ms`
    /// later a new process starts on the journal. Without one, nothing
    /// survives to be checked: the step does nothing.
    pub(super) fn restart(&mut self, ms: u16) {
        if self.disk.is_none() {
            return;
        }
        let live = self.journal_live();
        self.acked_before = self.acked_ever();
        self.figures.restarts += 1;
        self.note(|| format!("the process dies; the journal holds {}", live.len()));
        // The OS closes its file and releases the lock.
        if let Some(d) = self.disk.as_mut() {
            d.journal = None;
        }
        self.epoch += 1;
        self.now += Duration::from_millis(u64::from(ms));
        // The network forgets the connection.
        self.up.clear();
        self.down.clear();
        self.holes.clear();
        self.reset = None;
        self.server.conn = None;
        self.robbery.clear();
        self.reading = 0;
        // The driver's and the callers' memory.
        self.cmds.clear();
        self.attempt = None;
        self.failed_in_a_row = 0;
        self.rejected_in_a_row = 0;
        self.fatal_due = false;
        self.sock = None;
        self.hooks.clear();
        self.last_hook = None;
        self.held.clear();
        self.blocked.clear();
        self.state = None;
        self.closing = false;
        self.close_deadline = None;
        self.ended = false;
        self.finished = false;
        self.dispatch_depth = 0;
        self.paused = false;
        self.reserve_used = 0;
        self.quiet_from = self.now;
        self.reading_since = self.now;
        self.start_on_journal(&live);
    }

    /// A new process opens the journal, as `sequence::start`,
    /// `owner::spawn` and `io::run` do.
    fn start_on_journal(&mut self, live: &[usize]) {
        let (now, wall) = (self.now, self.wall());
        let Some((path, run)) = self.disk.as_ref().map(|d| (d.path.clone(), d.run)) else {
            return;
        };
        let (mut j, replay) = Journal::open(&path, JournalSync::Never)
            .unwrap_or_else(|e| self.fail(format!("reopening the journal: {e}")));
        if let Some((at, why)) = &replay.cut {
            self.fail(format!(
                "the journal had a torn tail at byte {at} ({why}), though no process died \
                 in the middle of a write"
            ));
        }
        let rec =
            crate::sequence::recover(&mut j, replay.messages, (wall, now), "Operator", "msgRun");
        if j.run() != run {
            self.fail(format!("the journal's run was {run}, is {} now", j.run()));
        }
        // Ids continue after the journal's last one: the server would take
        // a reused one for a duplicate.
        if j.next_id() < self.next_id {
            let (next, last) = (j.next_id(), self.next_id - 1);
            self.fail(format!(
                "the journal gives id {next} next, though id {last} was taken"
            ));
        }
        self.next_id = j.next_id();
        if let Some(d) = self.disk.as_mut() {
            d.journal = Some(j);
            d.recorded = 0;
        }
        self.check_recovered(live, &rec.items, rec.expired);
        let n = rec.items.len() as u64;
        self.figures.recovered += n;
        self.figures.expired_at_start += rec.expired;
        let budget = Arc::new(Budget::new(self.cfg.capacity, self.cfg.max_bytes));
        for item in &rec.items {
            budget.force_reserve(item.weight);
        }
        let counters = Arc::new(Counters::default());
        Counters::add(&counters.recovered, n);
        Counters::add(&counters.expired, rec.expired);
        let rules = rules(&self.cfg);
        // A new process is not paused: pausing is the app's, in memory.
        self.app_paused = false;
        self.endpoints = super::Endpoints::default();
        self.ahead.clear();
        self.acks_here = 0;
        self.session = Session::new(rules, budget.clone(), counters.clone(), rec.items);
        self.budget = budget;
        self.counters = counters;
    }

    /// What was recovered is what the model says the journal holds, less
    /// what expired while no process ran; the model's records move to
    /// the new process.
    fn check_recovered(&mut self, live: &[usize], items: &[Item], expired: u64) {
        let (now, t0, epoch) = (self.now, self.t0, self.epoch);
        let run = self.disk.as_ref().map(Disk::run);
        let mut items = items.iter();
        let mut expired_seen = 0;
        for &i in live {
            // It moves to the new process; its receipt and caller are gone.
            let m = &mut self.msgs[i];
            m.epoch = epoch;
            m.receipt = None;
            m.statuses.clear();
            m.written_here = 0;
            let m = &self.msgs[i];
            // The journal keeps a deadline no earlier than the message was
            // accepted, as wall-clock microseconds.
            let kept = m.expires.map(|e| {
                let us = e
                    .max(m.accepted_at)
                    .saturating_duration_since(t0)
                    .as_micros();
                t0 + Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
            });
            if kept.is_some_and(|d| d < now) {
                expired_seen += 1;
                self.msgs[i].expired_at_start = true;
                continue;
            }
            let (k, id) = (m.k, m.id);
            let Some(item) = items.next() else {
                self.fail(format!(
                    "k{k} (id {id:?}) was journaled, neither acknowledged nor given up, \
                     and is not recovered"
                ));
            };
            let v: Value = serde_json::from_str(&item.text).unwrap_or(Value::Null);
            // Whether the last process wrote it is unknown: one without a
            // time to live counts as written (sent again whatever); one
            // with a time to live keeps what is left of it, as not written.
            let same = item.id == id
                && v["k"].as_u64() == Some(k)
                && v["msgId"].as_u64() == id
                && v["msgRun"].as_u64() == run
                && item.expires == kept
                && item.written == kept.is_none();
            if !same {
                let ms = |t: Option<Instant>| t.map(|t| (t - t0).as_millis());
                self.fail(format!(
                    "k{k} (id {id:?}, expires at {:?} ms, written {}) recovered as {} \
                     (id {:?}, expires at {:?} ms, written {})",
                    ms(kept),
                    kept.is_none(),
                    item.text,
                    item.id,
                    ms(item.expires),
                    item.written
                ));
            }
            self.msgs[i].recovered = Some(item.written);
        }
        if let Some(item) = items.next() {
            let m = self.msgs.iter().find(|m| m.id.is_some() && m.id == item.id);
            let why = match m {
                Some(m) if m.expired_at_start => "ran out of time while no process ran",
                Some(m) if m.journal_dropped => "was given up",
                Some(_) => "was acknowledged",
                None => "was never accepted",
            };
            self.fail(format!(
                "recovered {} (id {:?}), which {why}",
                item.text, item.id
            ));
        }
        if expired != expired_seen {
            self.fail(format!(
                "{expired} journaled messages counted expired at the start, \
                 {expired_seen} ran out of time while no process ran"
            ));
        }
    }

    /// Durable, after close: a new process starts on the journal, with a
    /// network that keeps its connection and a server that acknowledges
    /// at once, runs until the journal is empty and closes. Then every
    /// journaled message of the whole run was delivered exactly once after
    /// the server's dedup, or given up (and counted by its process).
    pub fn drain_journal(&mut self) {
        if self.disk.is_none() {
            return;
        }
        self.restart(0);
        self.server.steady = true;
        self.turn();
        for _ in 0..DRAIN_STEPS {
            if self.journal_live().is_empty() {
                break;
            }
            let step = if self.attempt.is_some() {
                Step::ConnectOk
            } else if !self.hooks.is_empty() {
                Step::Hook(HookVerdict::Ok)
            } else {
                Step::Sleep
            };
            self.step(&step);
        }
        let left = self.journal_live().len();
        if left > 0 {
            self.fail(format!(
                "{left} journaled messages still undelivered after {DRAIN_STEPS} steps \
                 on a perfect network"
            ));
        }
        self.step(&Step::Close(2000));
        for _ in 0..100 {
            if self.finished {
                break;
            }
            self.step(&Step::Sleep);
        }
        if !self.finished {
            self.fail("close did not finish on a perfect network".into());
        }
        let mut copies: HashMap<u64, u32> = HashMap::new();
        for k in &self.server.app {
            *copies.entry(*k).or_default() += 1;
        }
        for m in self.msgs.iter().filter(|m| m.id.is_some()) {
            let n = copies.get(&m.k).copied().unwrap_or(0);
            let given_up = m.journal_dropped || m.expired_at_start;
            if n > 1 || (n == 0 && !given_up) {
                self.fail(format!(
                    "journaled k{} (id {:?}) reached the server's application {n} times \
                     (given up: {given_up})",
                    m.k, m.id
                ));
            }
        }
    }
}
