//! The seam between the board and the application.
//!
//! `main.rs` brings up the board and the network (DHCPv4) and then calls
//! [`app`] once, from a task, with everything the application needs. The
//! gateway core replaces the body of `app` (and may change [`SOCKETS`]); it
//! must not need anything else from the board.

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
///   CryptoRng`); on this board seeded from emulator-only entropy, see
///   `board_common::entropy`;
/// * `provisioning`: the 16 KiB provisioning block (format: the core's).
pub async fn app(spawner: Spawner, stack: Stack<'static>, rng: Drbg, provisioning: &'static [u8]) -> ! {
    board_common::gateway::run(spawner, stack, rng, provisioning).await
}
