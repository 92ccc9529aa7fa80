//! Liveness, backoff, outbox and request matching under arbitrary events.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| longlink::fuzzing::cores(data));
