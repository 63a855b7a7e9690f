//! Arbitrary bytes, cut into arbitrary pieces, as a phone's upgrade request, with and without
//! device tokens required: never a panic, never more consumed than given, and every answer fits
//! its buffer.
#![no_main]

use device_token::PublicKey;
use gateway_core::upgrade::{write_accept, write_refusal, Parsed, RequestParser, Tokens, MAX_ANSWER_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, data)) = data.split_first() else { return };
    let mut parser = RequestParser::new(512);
    let step = usize::from(cuts % 64) + 1;
    // Ed25519's base point: a valid key, so a token is checked all the way to its signature.
    let key = PublicKey::from_hex("5866666666666666666666666666666666666666666666666666666666666666").unwrap();
    let tokens = (cuts & 0x80 != 0).then_some(Tokens { key: &key, now: Some(1_800_000_000) });
    for piece in data.chunks(step) {
        match parser.feed(piece, tokens) {
            Parsed::More => {}
            Parsed::Upgrade { upgrade, consumed } => {
                assert!(consumed <= piece.len());
                let mut out = [0u8; MAX_ANSWER_LEN];
                assert!(write_accept(&upgrade.key, &mut out) < MAX_ANSWER_LEN);
                return;
            }
            Parsed::Refuse(refusal) => {
                let mut out = [0u8; MAX_ANSWER_LEN];
                assert!(write_refusal(refusal, &mut out) < MAX_ANSWER_LEN);
                return;
            }
            Parsed::Page(file) => {
                assert!(!file.gzip.is_empty());
                return;
            }
        }
    }
});
