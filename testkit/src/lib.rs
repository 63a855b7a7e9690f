//! What holdfast's integration tests share, in one place instead of files included by path:
//! real databases ([`db`]: a fresh Postgres database per test on the server of `DATABASE_URL`)
//! and the real aggregator binary as a process a test can SIGKILL, SIGTERM and restart
//! ([`process`]), a test CA ([`pki`]), what phones do ([`phones`]), and a real browser ([`browser`]: headless Chromium over
//! WebDriver). Used by the aggregator's tests and the gateway's.

pub mod browser;
pub mod db;
pub mod phones;
pub mod pki;
pub mod process;

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
