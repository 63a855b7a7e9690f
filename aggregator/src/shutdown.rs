//! Graceful shutdown: SIGTERM or Ctrl-C stops accepting, sends go-away to trunks and close 1001
//! to phones, waits for them (at most `--shutdown-grace-ms`), flushes what they reported, exits 0.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// SIGTERM or SIGINT (`cli_env::Interrupts`, shared by every binary), caught from this call on:
/// the handlers are installed before it returns, so a signal that comes before the future is
/// first polled is kept, not the default action (death without a final flush).
pub fn signal() -> impl std::future::Future<Output = ()> {
    let caught = cli_env::Interrupts::catch();
    async move {
        match caught {
            Ok(mut interrupts) => {
                let which = interrupts.recv().await;
                tracing::info!("{which}");
            }
            Err(e) => {
                tracing::warn!("cannot catch SIGTERM ({e}): only Ctrl-C stops gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// The shutdown flag: `true` once shutdown has begun.
pub fn channel() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Resolves once shutdown has begun (holding no lock on the flag afterwards).
pub async fn requested(flag: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the process is going down all the same.
    let _ = flag.wait_for(|&stop| stop).await.map(|_| ());
}

/// The connections shutdown waits for, seen by a channel closing (mini-redis's
/// `shutdown_complete`): each holds a [`DrainGuard`], a clone of one sender, and the receiver
/// yields `None` once the original (dropped by [`Drain::wait`]) and every clone are gone. Nothing
/// polls.
pub struct Drain {
    guard: Mutex<Option<mpsc::Sender<()>>>,
    done: Mutex<Option<mpsc::Receiver<()>>>,
}

/// Held by a connection for as long as shutdown must wait for it.
pub struct DrainGuard {
    _sender: mpsc::Sender<()>,
}

impl Default for Drain {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Drain { guard: Mutex::new(Some(tx)), done: Mutex::new(Some(rx)) }
    }
}

impl Drain {
    /// A guard for a connection that is starting; `None` once the drain began (the connection
    /// is then refused: shutdown would not wait for it).
    pub fn guard(&self) -> Option<DrainGuard> {
        let guard = self.guard.lock().unwrap_or_else(PoisonError::into_inner);
        guard.as_ref().map(|tx| DrainGuard { _sender: tx.clone() })
    }

    /// Hands out no more guards and waits, at most `grace`, until every guard was dropped;
    /// whether they all were.
    pub async fn wait(&self, grace: Duration) -> bool {
        drop(self.guard.lock().unwrap_or_else(PoisonError::into_inner).take());
        let Some(mut done) = self.done.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return true;
        };
        // Nothing is ever sent: `recv` returns `None` when the last sender is dropped.
        tokio::time::timeout(grace, done.recv()).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_drain_ends_when_the_last_guard_is_dropped() {
        let drain = Drain::default();
        let guard = drain.guard().unwrap();
        let held = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(guard);
        });
        assert!(drain.wait(Duration::from_secs(5)).await, "the guard was dropped");
        assert!(drain.guard().is_none(), "no guards once the drain began");
        held.await.unwrap();

        let drain = Drain::default();
        let _kept = drain.guard().unwrap();
        assert!(!drain.wait(Duration::from_millis(50)).await, "a guard still held");
    }
}
