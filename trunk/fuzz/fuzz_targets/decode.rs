//! Arbitrary bytes as one trunk message: decoding never panics, and every frame that decodes
//! re-encodes to exactly its input bytes. See `trunk_fuzz::decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| trunk_fuzz::decode(data));
