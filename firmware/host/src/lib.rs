//! The host gateway's parts that tests drive directly; the `gateway` binary is `main.rs`. It runs
//! on the `host-runtime` crate (one thread: embassy's executor, a timing wheel, edge-triggered
//! epoll), shared with mobile-sim's phones.

pub mod tls;
