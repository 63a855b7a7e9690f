//! A gateway driven by arbitrary phone events, link events, aggregator messages and clock steps:
//! it never panics, and what it sends is well-formed and exact. See `trunk_fuzz::gateway`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| trunk_fuzz::gateway(data));
