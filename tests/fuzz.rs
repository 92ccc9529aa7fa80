//! The fuzz targets of `fuzz/` on stable Rust: generated inputs for a
//! bounded time (`LONGLINK_FUZZ_SECS`, default 2 s per target;
//! `LONGLINK_FUZZ_SEED` replays a run). Coverage-guided fuzzing needs
//! cargo-fuzz (see the README); this keeps the same invariants checked on
//! every `cargo test`.
#![cfg(feature = "fuzzing")]

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use longlink::fuzzing::{cores, inbound, session};

fn budget() -> Duration {
    let secs = std::env::var("LONGLINK_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

fn rng(name: &str) -> fastrand::Rng {
    let seed = std::env::var("LONGLINK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{name}: seed {seed} (LONGLINK_FUZZ_SEED={seed} replays it)");
    fastrand::Rng::with_seed(seed)
}

/// Run `f` on inputs from `gen` until the budget is spent; on a panic,
/// print the input first.
fn run(name: &str, f: fn(&[u8]), mut generate: impl FnMut(&mut fastrand::Rng) -> Vec<u8>) {
    let mut rng = rng(name);
    let until = Instant::now() + budget();
    let mut execs = 0u64;
    while Instant::now() < until {
        let input = generate(&mut rng);
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(&input))) {
            eprintln!(
                "{name}: failing input ({} bytes): {input:02x?}",
                input.len()
            );
            resume_unwind(p);
        }
        execs += 1;
    }
    eprintln!("{name}: {execs} execs in {:?}", budget());
    assert!(execs > 0);
}

const OPS: &[&str] = &[
    "LoginOK",
    "LoginError",
    "GetOK",
    "GetError",
    "Notice",
    "Other",
    "",
    "Get\\u004fK",
    "\u{e9}t\u{e9}",
];

/// Text that is JSON-like: often a valid message, often nearly one.
fn json_like(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut s = String::from("{");
    let mut fields = Vec::new();
    if !rng.u8(..).is_multiple_of(8) {
        let op = OPS[rng.usize(..OPS.len())];
        fields.push(match rng.u8(..) % 6 {
            0 => "\"Operator\":7".to_owned(),
            1 => "\"Operator\":null".to_owned(),
            _ => format!("\"Operator\":\"{op}\""),
        });
    }
    for _ in 0..rng.usize(..4) {
        fields.push(match rng.u8(..) % 6 {
            0 => format!("\"reqId\":{}", rng.u64(..5)),
            1 => format!("\"n\":{}", rng.i64(..)),
            2 => "\"nested\":{\"Operator\":\"Inner\",\"a\":[1,{\"b\":null}]}".to_owned(),
            3 => "\"s\":\"quote \\\" and \\\\ and \\u00e9\"".to_owned(),
            4 => format!("\"reqId\":\"{}\"", rng.u8(..)),
            _ => "\"Operator\":\"Dup\"".to_owned(),
        });
    }
    rng.shuffle(&mut fields);
    s.push_str(&fields.join(","));
    s.push('}');
    let mut b = s.into_bytes();
    match rng.u8(..) % 10 {
        0 => b.truncate(rng.usize(..=b.len())),
        1 if !b.is_empty() => {
            let i = rng.usize(..b.len());
            b[i] = rng.u8(..);
        }
        2 => b = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect(),
        3 => b = b"[1,2]".to_vec(),
        _ => {}
    }
    b
}

/// A server frame; sometimes one no server should send.
fn frame(rng: &mut fastrand::Rng, out: &mut Vec<u8>) {
    let (first, payload) = match rng.u8(..) % 12 {
        0 => (0x82, json_like(rng)),
        1 => (0x89, vec![1, 2, 3]),
        2 => (0x8a, vec![]),
        3 => (0x88, vec![0x03, 0xe8]),
        // A text in two fragments.
        4 => {
            let p = json_like(rng);
            let cut = rng.usize(..=p.len());
            push(out, 0x01, &p[..cut]);
            (0x80, p[cut..].to_vec())
        }
        5 => (rng.u8(..), json_like(rng)),
        // A header announcing far more than follows.
        6 => {
            out.extend_from_slice(&[0x81, 127]);
            out.extend_from_slice(&rng.u64(..).to_be_bytes());
            return;
        }
        _ => (0x81, json_like(rng)),
    };
    push(out, first, &payload);
}

fn push(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

#[test]
fn inbound_frames_decode_and_dispatch_without_breaking_invariants() {
    run("inbound", inbound, |rng| {
        let mut out = Vec::new();
        match rng.u8(..) % 8 {
            0 => out = json_like(rng),
            1 => out = (0..rng.usize(..256)).map(|_| rng.u8(..)).collect(),
            _ => {
                for _ in 0..rng.usize(1..16) {
                    frame(rng, &mut out);
                }
            }
        }
        out
    });
}

#[test]
fn cores_keep_their_invariants_under_any_event_sequence() {
    run("cores", cores, |rng| {
        (0..rng.usize(..1024)).map(|_| rng.u8(..)).collect()
    });
}

#[test]
fn the_real_session_keeps_its_invariants_under_any_step_sequence() {
    run("session", session, |rng| {
        (0..rng.usize(..1024)).map(|_| rng.u8(..)).collect()
    });
}
