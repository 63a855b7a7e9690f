//! The seam between the board and the application; the same as on every
//! board (see firmware/boards/mps2-an386/src/app.rs). The gateway core
//! replaces the body of `app` (and may change [`SOCKETS`]).

use board_common::rng::Drbg;
use embassy_executor::Spawner;
use embassy_net::Stack;

/// Sockets the network stack has room for (DHCP takes one of them).
pub const SOCKETS: usize = board_common::gateway::SOCKETS;

/// The application.
///
/// * `spawner`: to start more tasks on the board's executor;
/// * `stack`: the network stack, already configured by DHCP;
/// * `rng`: the board's cryptographic RNG (`rand_core` 0.6 `RngCore +
///   CryptoRng`), seeded from, and refreshed by, the STM32 hardware RNG;
/// * `provisioning`: the 16 KiB provisioning block (format: the core's).
pub async fn app(spawner: Spawner, stack: Stack<'static>, rng: Drbg, provisioning: &'static [u8]) -> ! {
    board_common::gateway::run(spawner, stack, rng, provisioning).await
}
