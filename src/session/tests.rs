//! The session's rules, driven in memory with fake instants: no socket, no
//! thread, no sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};
use tungstenite::Utf8Bytes;

use super::{Inbound, Output, Rules, Session, Transmit, Written};
use crate::backoff::BackoffPolicy;
use crate::command::{Command, Event, Item, ReplyTo, Waiter};
use crate::delivery::ReceiptCell;
use crate::outbox::Budget;
use crate::pending::Key;
use crate::state::Counters;
use crate::{CloseReason, Error, Failure, LinkState, Message, Overflow, Receipt, Status};

mod close;
mod confirm;
mod driver;
mod endpoints;
#[cfg(feature = "fuzzing")]
mod inspect;
mod lifecycle;
mod pause;
mod queue;
mod route;
mod window;

const MS: Duration = Duration::from_millis(1);

/// The builder's defaults, but a working link that drops is retried at
/// once (the tests count attempts and their times).
fn rules() -> Rules {
    let mut rules = (*crate::Client::builder("ws://example.com").cfg.rules).clone();
    rules.backoff.spread = Duration::ZERO;
    rules
}

/// A session, a fake clock, and the driver's side effects kept for checks.
struct Sim {
    s: Session,
    now: Instant,
    budget: Arc<Budget>,
    counters: Arc<Counters>,
    states: Vec<LinkState>,
    connects: Vec<Instant>,
    dispatched: Vec<Event>,
    hooks: Vec<u64>,
    journal_drops: Vec<u64>,
    disconnects: usize,
    go_aways: Vec<u16>,
}

impl Sim {
    fn new(rules: Rules) -> Sim {
        Sim::with_outbox(rules, 100)
    }

    /// A link whose outbox holds this many messages (and 1 MiB).
    fn with_outbox(rules: Rules, capacity: usize) -> Sim {
        let budget = Arc::new(Budget::new(capacity, 1 << 20));
        let counters = Arc::new(Counters::default());
        let s = Session::new(
            Arc::new(rules),
            budget.clone(),
            counters.clone(),
            Vec::new(),
        );
        Sim {
            s,
            now: Instant::now(),
            budget,
            counters,
            states: Vec::new(),
            connects: Vec::new(),
            dispatched: Vec::new(),
            hooks: Vec::new(),
            journal_drops: Vec::new(),
            disconnects: 0,
            go_aways: Vec::new(),
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.s.handle_timeout(self.now);
        self.perform();
    }

    /// What the driver does with the outputs.
    fn perform(&mut self) {
        while let Some(o) = self.s.poll_output() {
            match o {
                Output::Connect { .. } => self.connects.push(self.now),
                Output::AbandonAttempt => {}
                Output::Disconnect => self.disconnects += 1,
                Output::GoAway(code) => self.go_aways.push(code),
                Output::RunHook { conn } => self.hooks.push(conn),
                Output::Dispatch(ev) => self.dispatched.push(ev),
                Output::Answer(a) => {
                    let (w, r) = *a;
                    w.answer(r);
                }
                Output::Receipt(cell, status) => cell.set(status),
                Output::State(s) => self.states.push(s),
                Output::JournalDrop(id) => self.journal_drops.push(id),
                Output::LastError(_) | Output::Ended => {}
            }
        }
    }

    /// The `on_open` step of connection `conn` reports `result`.
    fn hook_done(&mut self, conn: u64, result: Result<(), Error>) {
        self.s.handle_command(
            self.now,
            Command::HookDone {
                conn,
                result,
                fatal: false,
            },
        );
        self.perform();
    }

    fn state(&self) -> LinkState {
        self.states.last().cloned().expect("a state was shown")
    }

    /// Run the clock to the attempt and let it succeed.
    fn connect(&mut self) -> u64 {
        self.advance(Duration::ZERO);
        assert!(!self.connects.is_empty(), "an attempt was asked for");
        let id = self.s.handle_connected(self.now);
        self.perform();
        id
    }

    fn item(&self, text: &str) -> Item {
        let item = Item::new(text.to_owned());
        assert!(self.budget.try_reserve(item.weight), "room in the outbox");
        item
    }

    fn send(&mut self, text: &str) -> Arc<ReceiptCell> {
        let mut item = self.item(text);
        let cell = ReceiptCell::new();
        item.receipt = Some(cell.clone());
        self.s.handle_command(self.now, Command::Send(item));
        self.perform();
        cell
    }

    fn request(
        &mut self,
        text: &str,
        reply: &str,
        timeout: Duration,
    ) -> Receiver<Result<Message, Error>> {
        let (tx, rx) = bounded(1);
        let mut item = self.item(text);
        item.reply = Some(Box::new(ReplyTo {
            key: Key::Operator {
                reply: reply.into(),
                errors: vec![format!("{}Error", reply.trim_end_matches("OK"))],
            },
            deadline: self.now + timeout,
            waiter: waiter(tx),
            idempotent: false,
        }));
        self.s.handle_command(self.now, Command::Send(item));
        self.perform();
        rx
    }

    /// Write everything the session hands out; the frames, in order.
    fn write(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(t) = self.s.poll_transmit(self.now) {
            match t {
                Transmit::Text(text) => {
                    let len = text.len();
                    out.push(text.to_string());
                    self.s.transmitted(self.now, len, Written::Yes);
                }
                Transmit::Ping(seq) => out.push(format!("ping {seq}")),
            }
        }
        if let Some(seq) = self.s.end_batch(self.now) {
            out.push(format!("ping {seq}"));
        }
        self.perform();
        out
    }

    fn frame(&mut self, f: Inbound) {
        self.s.handle_frame(self.now, f);
        self.perform();
    }

    fn text(&mut self, t: &str) {
        self.frame(Inbound::Text(Utf8Bytes::from(t.to_owned())));
    }

    fn pong(&mut self, seq: u64) {
        self.frame(Inbound::Pong(seq.to_be_bytes().to_vec()));
    }
}

/// A caller waiting on `tx`, fresh (no error operators of its own, not
/// written yet).
fn waiter(tx: crossbeam_channel::Sender<Result<Message, Error>>) -> Waiter {
    Waiter {
        tx,
        errors: Vec::new(),
        retry: None,
        written_at: 0,
    }
}

/// The messages among written frames (not the confirmation pings).
fn texts(frames: Vec<String>) -> Vec<String> {
    frames
        .into_iter()
        .filter(|f| !f.starts_with("ping"))
        .collect()
}

/// At least once: acknowledged by `{"Operator":"Ack","msgId":n}`.
fn acked_rules() -> Rules {
    Rules {
        acks: Some(("Ack".into(), "msgId".into())),
        ..rules()
    }
}

fn status(cell: &Arc<ReceiptCell>) -> Status {
    Receipt::new(cell.clone()).status()
}

fn ping_of(frames: &[String]) -> u64 {
    let last = frames.last().expect("frames");
    last.strip_prefix("ping ")
        .expect("a ping last")
        .parse()
        .unwrap()
}

#[test]
fn an_attempt_is_asked_for_at_once_and_a_connection_opens_the_link() {
    let mut t = Sim::new(rules());
    t.advance(Duration::ZERO);
    assert_eq!(t.connects.len(), 1);
    assert_eq!(
        t.state(),
        LinkState::Connecting {
            attempt: 0,
            endpoint: 0
        }
    );
    assert!(t.s.poll_timeout().is_some(), "the attempt has a deadline");
    t.s.handle_connected(t.now);
    t.perform();
    assert_eq!(t.state(), LinkState::Open);
    assert_eq!(
        t.counters
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn messages_leave_in_the_order_accepted_and_a_pong_confirms_them() {
    let mut t = Sim::new(rules());
    let early = t.send(r#"{"Operator":"A"}"#);
    t.connect();
    let late = t.send(r#"{"Operator":"B"}"#);
    let frames = t.write();
    assert_eq!(frames[..2], [r#"{"Operator":"A"}"#, r#"{"Operator":"B"}"#]);
    assert_eq!(status(&early), Status::Written);
    t.pong(ping_of(&frames));
    assert_eq!(status(&early), Status::Confirmed);
    assert_eq!(status(&late), Status::Confirmed);
    assert_eq!(
        t.budget.depth(),
        (0, 0),
        "written messages give their room back"
    );
}

#[test]
fn a_link_that_dies_before_the_pong_counts_its_messages_as_possibly_lost() {
    let mut t = Sim::new(rules());
    t.connect();
    let r = t.send(r#"{"Operator":"A"}"#);
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.frame(Inbound::Close(Some(1001)));
    assert_eq!(status(&r), Status::Failed(Failure::PossiblyLost));
    assert!(matches!(rx.try_recv(), Ok(Err(Error::ConnectionLost))));
    let lost = t
        .counters
        .possibly_lost
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(lost, 2);
    assert_eq!(t.disconnects, 1);
    assert!(matches!(t.state(), LinkState::Backoff { .. }));
}

#[test]
fn the_on_open_step_runs_before_the_outbox_and_only_its_messages_leave() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    t.send(r#"{"Operator":"Queued"}"#);
    let conn = t.connect();
    assert_eq!(t.hooks, [conn]);
    assert_eq!(t.state(), LinkState::LoggingIn);
    let hook_msg = t.item(r#"{"Operator":"userLogin"}"#);
    t.budget.release(hook_msg.weight);
    t.s.handle_command(
        t.now,
        Command::OnOpen {
            conn,
            item: hook_msg,
        },
    );
    let frames = t.write();
    assert_eq!(frames[0], r#"{"Operator":"userLogin"}"#);
    assert!(!frames.iter().any(|f| f.contains("Queued")), "{frames:?}");
    t.hook_done(conn, Ok(()));
    assert_eq!(t.state(), LinkState::Open);
    assert_eq!(t.write()[0], r#"{"Operator":"Queued"}"#);
}

#[test]
fn a_hook_message_for_a_connection_that_is_gone_fails_with_connection_lost() {
    let mut t = Sim::new(Rules {
        on_open: true,
        ..rules()
    });
    let conn = t.connect();
    let (tx, rx) = bounded(1);
    let mut item = Item::new(r#"{"Operator":"userLogin"}"#.to_owned());
    item.reply = Some(Box::new(ReplyTo {
        key: Key::Id(1),
        deadline: t.now + Duration::from_secs(1),
        waiter: waiter(tx),
        idempotent: false,
    }));
    t.s.handle_command(
        t.now,
        Command::OnOpen {
            conn: conn + 1,
            item,
        },
    );
    t.perform();
    assert!(matches!(rx.try_recv(), Ok(Err(Error::ConnectionLost))));
}

#[test]
fn replies_go_to_their_request_and_other_messages_to_subscribers() {
    let mut t = Sim::new(rules());
    t.connect();
    let ok = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    let err = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_secs(5));
    t.write();
    t.text(r#"{"Operator":"GetOK","n":1}"#);
    t.text(r#"{"Operator":"News"}"#);
    t.text(r#"{"Operator":"GetError","reason":"no"}"#);
    assert_eq!(
        ok.try_recv().unwrap().unwrap().get("n"),
        Some(&serde_json::json!(1))
    );
    assert!(matches!(err.try_recv(), Ok(Err(Error::Remote(_)))));
    assert!(t.s.take_answered());
    assert!(matches!(&t.dispatched[..], [Event::Message(m)] if m.operator() == "News"));
    t.text("not json");
    assert!(matches!(t.dispatched.last(), Some(Event::Invalid(_))));
}

#[test]
fn a_request_whose_deadline_passed_in_the_outbox_is_never_written() {
    let mut t = Sim::new(rules());
    let rx = t.request(r#"{"Operator":"Get"}"#, "GetOK", Duration::from_millis(100));
    t.advance(200 * MS);
    t.s.handle_connected(t.now);
    t.perform();
    let frames = t.write();
    assert!(frames.iter().all(|f| !f.contains("Get")), "{frames:?}");
    // Let go without an answer: its caller sees its own timeout.
    assert!(matches!(
        rx.try_recv(),
        Err(crossbeam_channel::TryRecvError::Disconnected)
    ));
}

#[test]
fn silence_brings_a_probe_and_then_a_dead_verdict() {
    let mut t = Sim::new(Rules {
        app_heartbeat: Some((
            Utf8Bytes::from_static(r#"{"Operator":"Heart"}"#),
            "HeartOK".into(),
        )),
        ..rules()
    });
    t.connect();
    t.advance(Duration::from_secs(25));
    let frames = t.write();
    assert!(frames[0].starts_with("ping"), "{frames:?}");
    assert_eq!(frames[1], r#"{"Operator":"Heart"}"#);
    t.advance(Duration::from_secs(10));
    assert_eq!(t.disconnects, 1);
    // Up for longer than the flap guard: the next attempt comes at once.
    t.advance(Duration::ZERO);
    assert_eq!(
        t.state(),
        LinkState::Connecting {
            attempt: 0,
            endpoint: 0
        }
    );
    assert_eq!(t.connects.len(), 2);
    assert_eq!(
        t.counters
            .heartbeat_misses
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[test]
fn failed_attempts_back_off_and_the_attempt_limit_ends_the_link() {
    let mut t = Sim::new(Rules {
        backoff: BackoffPolicy {
            max_attempts: Some(2),
            ..rules().backoff
        },
        ..rules()
    });
    t.advance(Duration::ZERO);
    let refused = || Error::Connect {
        context: "test".into(),
        source: "refused".into(),
    };
    t.s.handle_connect_failed(t.now, refused());
    t.perform();
    let LinkState::Backoff {
        attempt: 1, delay, ..
    } = t.state()
    else {
        panic!("{:?}", t.state());
    };
    assert!(delay >= Duration::from_millis(500));
    t.advance(delay);
    assert_eq!(t.connects.len(), 2);
    t.s.handle_connect_failed(t.now, refused());
    t.perform();
    assert!(matches!(
        t.state(),
        LinkState::Closed(CloseReason::GaveUp { attempts: 2, .. })
    ));
}

#[test]
fn the_backoff_state_says_why_the_link_dropped() {
    let mut t = Sim::new(rules());
    t.connect();
    t.frame(Inbound::Close(Some(1012)));
    let LinkState::Backoff { cause, .. } = t.state() else {
        panic!("{:?}", t.state());
    };
    assert_eq!(cause, crate::Cause::ServerClosed { code: Some(1012) });
    t.advance(Duration::from_secs(60));
    t.s.handle_connect_failed(
        t.now,
        Error::Connect {
            context: "connecting".into(),
            source: "refused".into(),
        },
    );
    t.perform();
    let LinkState::Backoff { cause, attempt, .. } = t.state() else {
        panic!("{:?}", t.state());
    };
    assert_eq!(attempt, 2);
    assert!(matches!(cause, crate::Cause::ConnectFailed(ref why) if why.contains("refused")));
    t.advance(Duration::from_secs(60));
    t.s.handle_connected(t.now);
    t.s.handle_lost(t.now, "reset by peer".into());
    t.perform();
    assert!(matches!(
        t.state(),
        LinkState::Backoff { cause: crate::Cause::Broken(ref why), .. } if why == "reset by peer"
    ));
}
