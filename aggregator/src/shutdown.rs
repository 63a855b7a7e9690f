//! Graceful shutdown: SIGTERM or Ctrl-C stops accepting, sends go-away to trunks and close 1001
//! to phones, waits for them (at most `--shutdown-grace-ms`), flushes what they reported, exits 0.

use std::time::{Duration, Instant};

use tokio::sync::watch;

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

/// Polls `done` until it holds or `grace` has passed; returns whether it held.
pub async fn wait_until(grace: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + grace;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Resolves once shutdown has begun (holding no lock on the flag afterwards).
pub async fn requested(flag: &mut watch::Receiver<bool>) {
    // An error means the sender is gone: the process is going down all the same.
    let _ = flag.wait_for(|&stop| stop).await.map(|_| ());
}
