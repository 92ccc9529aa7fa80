//! The real link session, simulated: `longlink::fuzzing::sim` drives the
//! sans-IO `Session` exactly as the I/O thread does, against a simulated
//! clock, network and deduplicating server, and checks every step against
//! a small reference model (order, at-least-once, receipts, requests,
//! counters, the outbox and dispatcher bounds, dead-peer verdicts, what a
//! durable journal keeps across a process restart). proptest-state-machine
//! generates the setup (delivery mode, overflow policy, write buffer,
//! subscribers…) and the steps (sends with every option, requests, faults,
//! time, freezes, lagging subscribers, hooks, restarts, close), shrinks a
//! failure to a minimal trace and prints it; the failing case's seed is
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

use std::time::Duration;

use longlink::Overflow;
use longlink::fuzzing::sim::{HookVerdict, Sim, SimConfig, Step};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

/// Cases when `PROPTEST_CASES` is not set: a few seconds in debug.
const CASES: u32 = 256;
/// Steps per case, at most.
const STEPS: usize = 400;

static STEPS_RUN: AtomicU64 = AtomicU64::new(0);
static DELIVERED: AtomicU64 = AtomicU64::new(0);
static CONNECTS: AtomicU64 = AtomicU64::new(0);
static DELAYED: AtomicU64 = AtomicU64::new(0);
static ROBBED: AtomicU64 = AtomicU64::new(0);
static RESTARTS: AtomicU64 = AtomicU64::new(0);
static RECOVERED: AtomicU64 = AtomicU64::new(0);
static EXPIRED_AT_START: AtomicU64 = AtomicU64::new(0);
static BLOCKED: AtomicU64 = AtomicU64::new(0);
static TOO_LARGE: AtomicU64 = AtomicU64::new(0);
static PAUSES: AtomicU64 = AtomicU64::new(0);
static RESUMES: AtomicU64 = AtomicU64::new(0);
static VERDICTS: AtomicU64 = AtomicU64::new(0);
/// Steps and cases applied so far, and at the first failure (0: none yet).
static APPLIED: AtomicU64 = AtomicU64::new(0);
static CASES_RUN: AtomicU64 = AtomicU64::new(0);
static FIRST_FAIL_STEPS: AtomicU64 = AtomicU64::new(0);
static FIRST_FAIL_CASE: AtomicU64 = AtomicU64::new(0);
/// Steps of the last failing case: the minimal one once shrinking ends.
static LAST_FAIL_LEN: AtomicU64 = AtomicU64::new(0);

/// Up to 3 s, or now and then `u16::MAX`: `Duration::MAX`, no limit.
fn millis() -> impl Strategy<Value = u16> {
    prop_oneof![19 => 0..3000u16, 1 => Just(u16::MAX)]
}

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
        let overflow = prop_oneof![
            2 => Just(Overflow::Reject),
            2 => Just(Overflow::DropOldest),
            1 => (0..3000u64).prop_map(|ms| Overflow::Block(Duration::from_millis(ms))),
        ];
        let driver = (
            prop::bool::weighted(0.3),
            prop_oneof![2 => 64..400usize, 3 => Just(usize::MAX)],
            prop::option::weighted(0.5, 1..4usize),
        );
        (
            any::<u64>(),
            any::<[bool; 5]>(),
            1..8usize,
            64..1024usize,
            prop::option::weighted(0.2, 1..6u32),
            prop_oneof![1..8usize, Just(1 << 16)],
            overflow,
            driver,
        )
            .prop_map(
                |(seed, b, capacity, max_bytes, max_attempts, track_cap, overflow, driver)| {
                    let (durable, write_limit, dispatch_capacity) = driver;
                    Setup {
                        cfg: SimConfig {
                            seed,
                            at_least_once: b[0],
                            by_id: b[1],
                            on_open: b[2],
                            app_heartbeat: b[3],
                            unlimited: b[4],
                            durable,
                            overflow,
                            capacity,
                            max_bytes,
                            max_attempts,
                            track_cap,
                            write_limit,
                            dispatch_capacity,
                        },
                    }
                },
            )
            .boxed()
    }

    fn transitions(_: &Setup) -> BoxedStrategy<Step> {
        let send = (
            prop::option::weighted(0.3, millis()),
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
        // Mostly one operator: matching by name is tested by requests of
        // one operator that overlap (a ghost and live requests).
        let request = (prop::bool::weighted(0.2), millis(), any::<bool>()).prop_map(
            |(other, timeout_ms, idempotent)| Step::Request {
                op: u8::from(other),
                timeout_ms,
                idempotent,
            },
        );
        prop_oneof![
            20 => send,
            12 => request,
            12 => (0..1500u16).prop_map(Step::Advance),
            10 => Just(Step::Sleep),
            10 => Just(Step::ConnectOk),
            3 => Just(Step::ConnectFail),
            1 => Just(Step::ConnectRejected),
            6 => Just(Step::Hook(HookVerdict::Ok)),
            1 => Just(Step::Hook(HookVerdict::Err)),
            1 => Just(Step::Hook(HookVerdict::Fatal)),
            3 => (1..5u8).prop_map(Step::Push),
            2 => Just(Step::Reset),
            1 => Just(Step::BlackHole),
            1 => Just(Step::PeerClose),
            1 => Just(Step::NoPong),
            3 => (any::<bool>(), prop::bool::weighted(0.3))
                .prop_map(|(request, stale)| Step::HookSend { request, stale }),
            2 => Just(Step::ReconnectNow),
            1 => (0..3000u16).prop_map(Step::Close),
            2 => (1..4u8).prop_map(Step::Handle),
            2 => (0..20_000u16).prop_map(Step::Freeze),
            2 => prop_oneof![3 => 0..3000u16, 1 => Just(60_000)].prop_map(Step::Restart),
            1 => Just(Step::Pause),
            2 => Just(Step::Resume),
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
        if !sim.finished() {
            APPLIED.fetch_add(1, Ordering::Relaxed);
        }
        sim.step(&step);
        sim
    }

    /// Every case ends with `close`, whose outcome is checked in full;
    /// a durable one then starts again on its journal until it is empty.
    fn teardown(mut sim: Sim, _: Setup) {
        sim.step(&Step::Close(2000));
        for _ in 0..100 {
            if sim.finished() {
                break;
            }
            sim.step(&Step::Sleep);
        }
        assert!(sim.finished(), "close did not finish: {sim:?}");
        sim.drain_journal();
        let f = sim.figures();
        let add = |a: &AtomicU64, n: u64| a.fetch_add(n, Ordering::Relaxed);
        add(&STEPS_RUN, f.steps);
        add(&DELIVERED, f.delivered);
        add(&CONNECTS, f.connects);
        add(&DELAYED, f.delayed_by_goodbye);
        add(&ROBBED, f.robbed);
        add(&RESTARTS, f.restarts);
        add(&RECOVERED, f.recovered);
        add(&EXPIRED_AT_START, f.expired_at_start);
        add(&BLOCKED, f.blocked);
        add(&TOO_LARGE, f.too_large);
        add(&PAUSES, f.pauses);
        add(&RESUMES, f.resumes);
        add(&VERDICTS, f.verdicts);
    }
}

fn config() -> Config {
    let mut c = Config {
        source_file: Some(file!()),
        // Generating the steps took most of the time with ChaCha in a
        // debug build; a case replays from its saved seed either way.
        rng_algorithm: RngAlgorithm::XorShift,
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
            let case = CASES_RUN.fetch_add(1, Ordering::Relaxed) + 1;
            let len = steps.len() as u64;
            let run = std::panic::AssertUnwindSafe(|| {
                Simulated::test_sequential(config(), setup, steps, seen);
            });
            if let Err(panic) = std::panic::catch_unwind(run) {
                // Before shrinking: how far the search went until the first failure.
                if FIRST_FAIL_CASE.load(Ordering::Relaxed) == 0 {
                    FIRST_FAIL_CASE.store(case, Ordering::Relaxed);
                    FIRST_FAIL_STEPS.store(APPLIED.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                LAST_FAIL_LEN.store(len, Ordering::Relaxed);
                std::panic::resume_unwind(panic);
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        panic!(
            "{e}\nsim: first failure in case {} after {} steps in all; \
             the minimal case has {} steps (plus the closing ones)",
            get(&FIRST_FAIL_CASE),
            get(&FIRST_FAIL_STEPS),
            get(&LAST_FAIL_LEN),
        );
    }
    let steps = STEPS_RUN.load(Ordering::Relaxed);
    let took = started.elapsed();
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "sim: {} cases, {steps} steps in {took:.2?} ({:.0} steps/s); {} connections, \
         {} messages delivered, {} answers held back by the goodbye, \
         {} requests robbed by a ghost; {} restarts recovered {} messages \
         ({} more expired meanwhile); {} callers blocked for room, {} frames too large, \
         {} read pauses, {} freezes noticed, {} verdicts on the peer checked",
        config().cases,
        steps as f64 / took.as_secs_f64(),
        get(&CONNECTS),
        get(&DELIVERED),
        get(&DELAYED),
        get(&ROBBED),
        get(&RESTARTS),
        get(&RECOVERED),
        get(&EXPIRED_AT_START),
        get(&BLOCKED),
        get(&TOO_LARGE),
        get(&PAUSES),
        get(&RESUMES),
        get(&VERDICTS),
    );
}
