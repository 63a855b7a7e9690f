//! Arbitrary bytes, cut into arbitrary pieces, as a phone's WebSocket stream: never a panic,
//! never more payload counted than bytes received, nothing read once the connection is done, every
//! frame the gateway owes fits its buffer, and echoed ping bytes lie within what was fed.
#![no_main]

use gateway_core::ws::{Connection, MAX_OUTGOING_FRAME};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cuts, data)) = data.split_first() else { return };
    let mut ws = Connection::new(u64::from(cuts) * 64);
    let step = usize::from(cuts % 32) + 1;
    let (mut consumed, mut counted) = (0usize, 0u64);
    for piece in data.chunks(step) {
        let mut piece = piece.to_vec();
        let mut at = 0;
        while at < piece.len() {
            let done_before = ws.is_done();
            let fed = ws.feed(&mut piece[at..]);
            assert!(fed.echo.start <= fed.echo.end && fed.echo.end <= fed.consumed);
            if done_before {
                assert_eq!(fed.consumed, 0, "read after the end");
            }
            consumed += fed.consumed;
            counted += fed.payload;
            assert!(counted <= consumed as u64);
            while let Some(frame) = ws.poll_transmit() {
                assert!(frame.len() <= MAX_OUTGOING_FRAME);
            }
            if fed.consumed == 0 {
                break;
            }
            at += fed.consumed;
        }
    }
});
