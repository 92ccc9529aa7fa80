//! The real session, driven by arbitrary steps against the simulated
//! server, network and clock, its invariants checked at every step.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| longlink::fuzzing::session(data));
