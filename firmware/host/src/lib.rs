//! The host build's runtime for the firmware core (see `runtime`); the `gateway` binary is
//! `main.rs`. A library so that tests can measure and drive the same sockets and timers.

pub mod runtime;
