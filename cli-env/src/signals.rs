//! SIGINT and SIGTERM, the two ways every holdfast binary is asked to stop (Ctrl-C in a terminal,
//! systemd's and Kubernetes' stop): one implementation for the aggregator, mobile-sim and the lab.
//!
//! They are caught from [`Interrupts::catch`] on, for as long as the value lives, so a signal
//! that arrives while the program is busy elsewhere (between two `select!`s) is kept for the next
//! [`Interrupts::recv`] rather than missed, and never kills the process with its work half done.

use std::fmt;
use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// Which signal asked the program to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// SIGINT: Ctrl-C.
    Interrupted,
    /// SIGTERM: a service manager's stop.
    Terminated,
}

impl fmt::Display for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interrupt::Interrupted => "interrupted (SIGINT)",
            Interrupt::Terminated => "terminated (SIGTERM)",
        })
    }
}

/// SIGINT and SIGTERM, caught while this lives.
#[derive(Debug)]
pub struct Interrupts {
    int: Signal,
    term: Signal,
}

impl Interrupts {
    /// Catches both from now on. Fails only when the handlers cannot be installed (no tokio
    /// runtime with signals enabled, or the OS refused).
    pub fn catch() -> io::Result<Self> {
        Ok(Self { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    /// The next one (or one that came since the last call).
    pub async fn recv(&mut self) -> Interrupt {
        tokio::select! {
            _ = self.int.recv() => Interrupt::Interrupted,
            _ = self.term.recv() => Interrupt::Terminated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_sent_before_recv_is_kept_and_named() {
        let mut interrupts = Interrupts::catch().unwrap();
        // SAFETY: raise() sends a signal to this process; a handler is installed above, so the
        // process is not stopped by it.
        unsafe { libc::raise(libc::SIGTERM) };
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), interrupts.recv()).await;
        assert_eq!(got.map(|i| i.to_string()).ok(), Some("terminated (SIGTERM)".to_string()));
    }
}
