//! Graceful shutdown: SIGTERM or Ctrl-C stops accepting, sends go-away to trunks and close 1001
//! to phones, waits for them (at most `--shutdown-grace-ms`), flushes what they reported, exits 0.

use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Waits for SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
