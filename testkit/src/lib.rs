//! What holdfast's integration tests share, in one place instead of files included by path:
//! real databases ([`db`]: a fresh Postgres database per test on the server of `DATABASE_URL`)
//! and the real aggregator binary as a process a test can SIGKILL, SIGTERM and restart
//! ([`process`]), and a test CA ([`pki`]). Used by the aggregator's tests and the gateway's.

pub mod db;
pub mod pki;
pub mod process;
