//! Fuzz entry points (feature `fuzzing`; not part of the API). Each takes
//! arbitrary bytes and panics only when an invariant breaks. The cargo-fuzz
//! targets under `fuzz/` call them; `tests/fuzz.rs` runs them on stable
//! with generated inputs for a bounded time.

pub mod sim;

use std::collections::{HashMap, HashSet};
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};

use crate::backoff::{Backoff, BackoffPolicy, Next};
use crate::dispatch::{Registry, Sink, Topic};
use crate::liveness::{Liveness, Verdict};
use crate::message::decode;
use crate::pending::{Key, Matched, Pending};
use crate::state::Counters;
use crate::{InvalidFrame, Message};

/// Reads the input as a stream of small numbers; zeros once exhausted.
struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }
    fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

/// Server bytes → tungstenite's client-side reader → `decode` → request
/// matching and subscriber dispatch. Also decodes the raw input as one
/// frame's text. Invariants: nothing panics; a decoded message's operator
/// is its operator field's string; every request is answered at most once;
/// a reply found by id goes to that id's request; handlers see exactly the
/// messages routed to them.
pub fn inbound(data: &[u8]) {
    const OP: &str = "Operator";
    if let Ok(text) = std::str::from_utf8(data) {
        check_decoded(text, OP);
    }
    let now = Instant::now();
    let mut pending: Pending<u32> = Pending::default();
    let later = now + Duration::from_secs(60);
    for (w, reply) in [(0u32, "LoginOK"), (1, "GetOK"), (2, "GetOK")] {
        let errors = vec![reply.replace("OK", "Error")];
        let key = Key::Operator {
            reply: reply.into(),
            errors,
        };
        pending.insert(key, w, now, later);
    }
    for id in 1..=3u64 {
        pending.insert(Key::Id(id), 100 + id as u32, now, later);
    }
    let registry = Registry::default();
    let seen = Arc::new(AtomicU64::new(0));
    let s = seen.clone();
    registry.add_message(
        Topic::Operator("Notice".into()),
        Sink::call(Box::new(move |m: &Message| {
            assert_eq!(m.operator(), "Notice");
            s.fetch_add(1, Ordering::Relaxed);
        })),
    );
    let any = Arc::new(AtomicU64::new(0));
    let a = any.clone();
    registry.add_message(
        Topic::Any,
        Sink::call(Box::new(move |m: &Message| {
            assert_ne!(m.operator(), "Notice", "an operator's own handler takes it");
            a.fetch_add(1, Ordering::Relaxed);
        })),
    );
    let counters = Counters::default();
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let mut ws = WebSocket::from_raw_socket(Replay(Cursor::new(data)), Role::Client, Some(config));
    let mut answered = HashSet::new();
    let (mut notices, mut others) = (0, 0);
    for _ in 0..256 {
        let frame = match ws.read() {
            Ok(f) => f,
            Err(tungstenite::Error::Utf8(_)) => continue,
            Err(_) => break,
        };
        let tungstenite::Message::Text(text) = frame else {
            continue;
        };
        let Some(m) = check_decoded(text.as_str(), OP) else {
            continue;
        };
        let id = m.get("reqId").and_then(Value::as_u64);
        let op = m.operator().to_owned();
        match pending.offer(&op, id, op.ends_with("Error"), now) {
            Matched::Reply { waiter, .. } => {
                assert!(answered.insert(waiter), "request {waiter} answered twice");
                if waiter >= 100 {
                    assert_eq!(id, Some(u64::from(waiter - 100)), "reply by id went astray");
                }
            }
            Matched::Late => panic!("nothing was late"),
            Matched::None => {
                for sink in registry.for_message(&op) {
                    if let Sink::Call(h) = sink {
                        crate::dispatch::call(&h, &m, &counters, "message");
                    }
                }
                if op == "Notice" {
                    notices += 1;
                } else {
                    others += 1;
                }
            }
        }
    }
    assert_eq!(seen.load(Ordering::Relaxed), notices);
    assert_eq!(any.load(Ordering::Relaxed), others);
    assert_eq!(counters.handler_panics.load(Ordering::Relaxed), 0);
}

/// The server's bytes to read; what the client writes (pongs, close
/// replies) is discarded.
struct Replay<'a>(Cursor<&'a [u8]>);

impl std::io::Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl std::io::Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn check_decoded(text: &str, op_field: &str) -> Option<Message> {
    match decode(text, op_field) {
        Ok(m) => {
            let field = m.get(op_field).and_then(Value::as_str);
            assert_eq!(field, Some(m.operator()), "operator differs from its field");
            Some(m)
        }
        Err(InvalidFrame::Text { text: kept, reason }) => {
            assert_eq!(&*kept, text, "an invalid frame keeps its text");
            assert!(!reason.is_empty());
            None
        }
        Err(other) => panic!("a text decodes to a message or an invalid text, not {other:?}"),
    }
}

/// The pure cores driven by an arbitrary sequence of events with a fake
/// clock. Invariants: liveness never says dead without an unanswered probe
/// as old as the timeout, and an alive verdict always leaves a deadline in
/// the future; backoff delays stay within their bounds and give up only
/// past the limit; each request is answered at most once, never after its
/// deadline, by id only to its own id, and by name in the order the
/// requests were made. (The outbox is checked through the real session:
/// [`session`].)
pub fn cores(data: &[u8]) {
    let mut input = Input { data, at: 0 };
    let t0 = Instant::now();
    let mut now = t0;
    let ms = |n: u16| Duration::from_millis(u64::from(n));

    // Liveness
    let interval = ms(input.u16() % 5000 + 1);
    let timeout = ms(input.u16() % 5000 + 1);
    let mut live = Liveness::new(now, interval, timeout);
    let mut last_in = now;
    let mut probe: Option<Instant> = None;

    // Backoff
    let min = ms(input.u16() % 2000 + 1);
    let max = min + ms(input.u16());
    let limit = match input.u8() % 4 {
        0 => Some(u32::from(input.u8() % 8)),
        _ => None,
    };
    let spread = ms(input.u16() % 500);
    let policy = BackoffPolicy {
        min,
        max,
        healthy_after: ms(input.u16() % 3000),
        max_attempts: limit,
        spread,
    };
    let mut backoff = Backoff::new(policy);
    let mut failures = 0u32;

    // Requests
    let mut pending: Pending<u32> = Pending::default();
    let mut waiters: HashMap<u32, (Option<u64>, String, Instant, u64)> = HashMap::new();
    let mut answered: HashSet<u32> = HashSet::new();
    let mut last_by_name: HashMap<String, u64> = HashMap::new();
    let mut next_waiter = 0u32;

    while !input.done() {
        match input.u8() % 10 {
            0 => now += ms(input.u16() % 4000),
            1 => {
                live.on_inbound(now);
                last_in = now;
                probe = None;
            }
            2 => live.on_outbound(now),
            3 => match live.check(now) {
                Verdict::Dead => {
                    let sent_at = probe.expect("dead without a probe");
                    assert!(now >= sent_at + timeout, "dead before the timeout");
                    assert!(last_in <= sent_at, "dead despite an answer");
                    // The link is buried; a new one starts.
                    live = Liveness::new(now, interval, timeout);
                    last_in = now;
                    probe = None;
                }
                Verdict::Probe => {
                    assert!(probe.is_none(), "a second probe while one is out");
                    live.on_probe_sent(now);
                    probe = Some(now);
                }
                Verdict::Alive => assert!(live.next_deadline() > now, "a deadline in the past"),
            },
            4 => {
                live.on_resumed(now);
                probe = None;
                last_in = now;
            }
            5 => backoff.on_up(now),
            6 => {
                let healthy = backoff.is_healthy(now);
                match backoff.on_down(now, f64::from(input.u8()) / 255.0) {
                    Next::Retry { attempt, delay } => {
                        if healthy {
                            assert_eq!(attempt, 0);
                            assert!(delay <= spread, "{delay:?} past the spread {spread:?}");
                            failures = 0;
                        } else {
                            failures += 1;
                            assert_eq!(attempt, failures);
                            assert!(delay <= max, "{delay:?} over the maximum {max:?}");
                            assert!(delay >= min.min(backoff.ceiling(attempt)));
                            assert!(limit.is_none_or(|l| attempt < l));
                        }
                    }
                    Next::GiveUp { attempts } => {
                        let l = limit.expect("gave up without a limit");
                        assert_eq!(attempts, l.max(1));
                        // The link ends; a new client starts afresh.
                        backoff = Backoff::new(policy);
                        failures = 0;
                    }
                }
            }
            7 => {
                let w = next_waiter;
                next_waiter += 1;
                let deadline = now + ms(input.u16() % 3000 + 1);
                let reply = ["AOK", "BOK"][usize::from(input.u8() % 2)].to_owned();
                let by_id = input.u8().is_multiple_of(2);
                let id = by_id.then_some(u64::from(w));
                let key = match id {
                    Some(id) => Key::Id(id),
                    None => Key::Operator {
                        reply: reply.clone(),
                        errors: vec![reply.replace("OK", "Error")],
                    },
                };
                pending.insert(key, w, now, deadline);
                waiters.insert(w, (id, reply, deadline, u64::from(w)));
            }
            8 => {
                let op = ["AOK", "BOK", "AError", "BError", "COK"][usize::from(input.u8() % 5)];
                let id = match input.u8() % 3 {
                    0 => None,
                    _ => Some(u64::from(input.u8() % 32)),
                };
                if let Matched::Reply { waiter, error } =
                    pending.offer(op, id, op.ends_with("Error"), now)
                {
                    assert!(answered.insert(waiter), "request {waiter} answered twice");
                    let (wid, reply, deadline, seq) = waiters[&waiter].clone();
                    assert!(now < deadline, "answered after its deadline");
                    match wid {
                        Some(wid) => assert_eq!(id, Some(wid), "an id reply went astray"),
                        None => {
                            assert!(op == reply || (error && op == reply.replace("OK", "Error")));
                            let last = last_by_name.insert(reply.clone(), seq);
                            assert!(last.is_none_or(|l| l < seq), "by-name order broken");
                        }
                    }
                }
            }
            _ => {
                for w in pending.drain(now) {
                    assert!(answered.insert(w), "request {w} both answered and failed");
                    assert!(now < waiters[&w].2, "failed a request already timed out");
                }
                last_by_name.clear();
            }
        }
    }
}

/// The real [`Session`](crate::session::Session) under arbitrary steps: the
/// input picks the link's setup and then one [`sim::Step`] per byte group,
/// and [`sim::Sim`] drives the session exactly as the I/O thread does
/// against a simulated server, network and clock, checking every step
/// against its reference model (order, at-least-once, receipts, requests,
/// counters, the outbox bound); the run ends with `close`, checked in full
/// (and, durable, with a new process that empties the journal).
pub fn session(data: &[u8]) {
    use sim::{HookVerdict, Sim, SimConfig, Step};
    let mut input = Input { data, at: 0 };
    let flags = input.u8();
    let more = input.u8();
    let cfg = SimConfig {
        seed: u64::from(input.u16()) << 16 | u64::from(input.u16()),
        at_least_once: flags & 1 != 0,
        by_id: flags & 2 != 0,
        on_open: flags & 4 != 0,
        durable: more & 1 != 0,
        overflow: match (flags & 8 != 0, more & 2 != 0) {
            (true, _) => crate::Overflow::DropOldest,
            (false, true) => {
                crate::Overflow::Block(Duration::from_millis(u64::from(input.u16() % 3000)))
            }
            (false, false) => crate::Overflow::Reject,
        },
        write_limit: if more & 4 != 0 {
            usize::from(input.u16() % 512) + 32
        } else {
            usize::MAX
        },
        dispatch_capacity: (more & 8 != 0).then(|| usize::from(input.u8() % 6) + 1),
        app_heartbeat: flags & 16 != 0,
        capacity: usize::from(input.u8() % 16) + 1,
        max_bytes: usize::from(input.u16() % 4096) + 64,
        max_attempts: (flags & 32 != 0).then(|| u32::from(input.u8() % 6) + 1),
        unlimited: flags & 64 != 0,
        track_cap: if flags & 128 != 0 {
            usize::from(input.u8() % 8) + 1
        } else {
            65_536
        },
    };
    let mut sim = Sim::new(cfg);
    while !input.done() {
        let step = match input.u8() % 22 {
            0..=3 => Step::Send {
                ttl_ms: input.u8().is_multiple_of(4).then(|| input.u16() % 2000),
                volatile: input.u8().is_multiple_of(8),
                receipt: input.u8().is_multiple_of(2),
                pad: input.u8(),
            },
            4 | 5 => Step::Request {
                op: input.u8() % 2,
                timeout_ms: input.u16() % 3000 + 1,
                idempotent: input.u8().is_multiple_of(3),
            },
            6 | 7 => Step::Advance(input.u16() % 1500),
            8 | 9 => Step::Sleep,
            10 | 11 => Step::ConnectOk,
            12 => Step::ConnectFail,
            13 => match input.u8() % 8 {
                0 => Step::ConnectRejected,
                1 => Step::Hook(HookVerdict::Err),
                2 => Step::Hook(HookVerdict::Fatal),
                3 => Step::BlackHole,
                4 => Step::PeerClose,
                5 => Step::NoPong,
                _ => Step::ReconnectNow,
            },
            14 | 15 => Step::Hook(HookVerdict::Ok),
            16 => Step::Push(input.u8() % 4 + 1),
            17 => Step::Reset,
            18 => Step::Close(input.u16() % 3000),
            19 => Step::Handle(input.u8() % 4 + 1),
            20 => match input.u8() % 4 {
                0 => Step::Freeze(input.u16() % 30_000),
                1 => Step::Restart(input.u16() % 5000),
                2 => Step::Pause,
                _ => Step::Resume,
            },
            _ => Step::Sleep,
        };
        sim.step(&step);
    }
    sim.step(&Step::Close(2000));
    for _ in 0..100 {
        if sim.finished() {
            break;
        }
        sim.step(&Step::Sleep);
    }
    assert!(sim.finished(), "close did not finish");
    sim.drain_journal();
}
