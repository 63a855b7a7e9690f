//! What the aggregator's integration tests share: real databases, the real aggregator (in the
//! test's process, or the binary as a process), and clients built on the same crates the real
//! clients use.
#![allow(dead_code)] // each test file uses its own part

pub mod clients;
#[allow(unused_imports)] // each test file uses its own part
pub use testkit::{browser, db, process};
