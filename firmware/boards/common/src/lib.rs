//! Board-independent pieces of the holdfast gateway firmware.
//!
//! Every board package (`board-mps2-an386`, `board-nucleo-h743zi`) brings up
//! its clocks, its Ethernet driver and an `embassy_net::Stack`, then calls its
//! own `app::app(spawner, stack, rng, provisioning)`. What that call needs and
//! does not depend on the board lives here:
//!
//! * [`rng::Drbg`]: the one random number generator type handed to the app on
//!   every board (a SHA-256 hash DRBG, seeded from the board's entropy);
//! * [`entropy::JitterPool`]: timer jitter sampled in interrupt handlers, the
//!   entropy of last resort on a board without a hardware RNG (the emulator);
//! * [`provisioning::block`]: the bytes written at flash time into the
//!   provisioning block that each board's `memory.x` reserves;
//! * [`executor`]: the WFI executor all boards run on;
//! * [`gateway`]: the gateway core (`firmware/core`) on the board's stack, in
//!   static memory.
#![no_std]

pub mod entropy;
pub mod executor;
pub mod gateway;
pub mod provisioning;
pub mod rng;
