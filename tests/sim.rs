//! The real link session, simulated: `longlink::fuzzing::sim` drives the
//! sans-IO `Session` exactly as the I/O thread does, against a simulated
//! clock, network and deduplicating server, and checks every step against
//! a small reference model (order, at-least-once, receipts, requests,
//! counters, the outbox bound). proptest-state-machine generates the steps
//! (sends with every option, requests, faults, time, hooks, close), shrinks
//! a failure to a minimal trace and prints it; the failing case's seed is
//! saved under `proptest-regressions/` and replayed first on the next run.
//!
//! Bounded on `cargo test --all-features` (a few seconds). Long run:
//!
//! ```text
//! PROPTEST_CASES=20000 cargo test --release --all-features --test sim -- --nocapture
//! ```
#![cfg(feature = "fuzzing")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use longlink::fuzzing::sim::{HookVerdict, Sim, SimConfig, Step};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

/// Cases when `PROPTEST_CASES` is not set: a few seconds in debug.
const CASES: u32 = 256;
/// Steps per case, at most.
const STEPS: usize = 400;

static STEPS_RUN: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static CONNECTS: AtomicU64 = AtomicU64::new(0);
static DELAYED: AtomicU64 = AtomicU64::new(0);

/// The reference side only generates: the simulator holds the model.
struct Link;

#[derive(Debug, Clone)]
struct Setup {
    cfg: SimConfig,
}

impl ReferenceStateMachine for Link {
    type State = Setup;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Setup> {
        (
            any::<u64>(),
            any::<[bool; 5]>(),
            1..8usize,
            64..1024usize,
            prop::option::weighted(0.2, 1..6u32),
        )
            .prop_map(|(seed, b, capacity, max_bytes, max_attempts)| Setup {
                cfg: SimConfig {
                    seed,
                    at_least_once: b[0],
                    by_id: b[1],
                    on_open: b[2],
                    drop_oldest: b[3],
                    app_heartbeat: b[4],
                    capacity,
                    max_bytes,
                    max_attempts,
                },
            })
            .boxed()
    }

    fn transitions(_: &Setup) -> BoxedStrategy<Step> {
        let send = (
            prop::option::weighted(0.3, 0..3000u16),
            prop::bool::weighted(0.15),
            any::<bool>(),
            any::<u8>(),
        )
            .prop_map(|(ttl_ms, volatile, receipt, pad)| Step::Send {
                ttl_ms,
                volatile,
                receipt,
                pad,
            });
        let request =
            (0..2u8, 0..3000u16, any::<bool>()).prop_map(|(op, timeout_ms, idempotent)| {
                Step::Request {
                    op,
                    timeout_ms,
                    idempotent,
                }
            });
        prop_oneof![
            20 => send,
            8 => request,
            12 => (0..1500u16).prop_map(Step::Advance),
            10 => Just(Step::Sleep),
            10 => Just(Step::ConnectOk),
            3 => Just(Step::ConnectFail),
            1 => Just(Step::ConnectRejected),
            6 => Just(Step::Hook(HookVerdict::Ok)),
            1 => Just(Step::Hook(HookVerdict::Err)),
            1 => Just(Step::Hook(HookVerdict::Fatal)),
            3 => Just(Step::Push),
            2 => Just(Step::Reset),
            1 => Just(Step::BlackHole),
            1 => Just(Step::PeerClose),
            1 => Just(Step::NoPong),
            2 => Just(Step::ReconnectNow),
            1 => (0..3000u16).prop_map(Step::Close),
        ]
        .boxed()
    }

    fn apply(state: Setup, _: &Step) -> Setup {
        state
    }
}

struct Simulated;

impl StateMachineTest for Simulated {
    type SystemUnderTest = Sim;
    type Reference = Link;

    fn init_test(setup: &Setup) -> Sim {
        Sim::new(setup.cfg.clone())
    }

    fn apply(mut sim: Sim, _: &Setup, step: Step) -> Sim {
        sim.step(&step);
        sim
    }

    /// Every case ends with `close`, whose outcome is checked in full.
    fn teardown(mut sim: Sim, _: Setup) {
        sim.step(&Step::Close(2000));
        for _ in 0..100 {
            if sim.finished() {
                break;
            }
            sim.step(&Step::Sleep);
        }
        assert!(sim.finished(), "close did not finish: {sim:?}");
        let f = sim.figures();
        STEPS_RUN.fetch_add(f.steps, Ordering::Relaxed);
        DELIVERED.fetch_add(f.delivered, Ordering::Relaxed);
        CONNECTS.fetch_add(f.connects, Ordering::Relaxed);
        DELAYED.fetch_add(f.delayed_by_goodbye, Ordering::Relaxed);
    }
}

fn config() -> Config {
    let mut c = Config {
        source_file: Some(file!()),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = CASES;
    }
    c
}

#[test]
fn the_real_session_keeps_every_invariant_under_simulated_faults() {
    let started = Instant::now();
    let mut runner = TestRunner::new(config());
    let result = runner.run(
        &Link::sequential_strategy(1..STEPS),
        |(setup, steps, seen)| {
            Simulated::test_sequential(config(), setup, steps, seen);
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let steps = STEPS_RUN.load(Ordering::Relaxed);
    let took = started.elapsed();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "sim: {} cases, {steps} steps in {took:.2?} ({:.0} steps/s); {} connections, \
         {} messages delivered, {} answers held back by the goodbye",
        config().cases,
        steps as f64 / took.as_secs_f64(),
        get(&CONNECTS),
        get(&DELIVERED),
        get(&DELAYED),
    );
}
