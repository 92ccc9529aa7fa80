//! Server bytes → frames → decode → request matching and dispatch.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| longlink::fuzzing::inbound(data));
