//! Small database requests that arrive together go to the database together.
//!
//! When two thousand gateway trunks connect at once (an aggregator restart, a balancer shift),
//! each handshake needs its gateway's secret and then records its boot. One query and one commit
//! each would be thousands of round trips on a handful of connections, and the handshakes behind
//! them time out. A [`Batcher`] runs one batch at a time: requests that arrive while a batch is at
//! the database wait for the next one, which carries them all (up to a bound). A quiet system
//! pays one round trip per request, as before; a burst pays one per batch.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

type Reply<A> = oneshot::Sender<Result<A, String>>;

/// A queue of requests of type `Q`, answered with `A` by a function that takes them in batches.
pub struct Batcher<Q, A> {
    tx: mpsc::Sender<(Q, Reply<A>)>,
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the task that answers batches of at most `max_batch` requests with `run`, which
    /// must answer every request of a batch, in order. At most `max_batch` requests wait behind
    /// the batch at the database (callers then wait to enqueue). Must be called within a tokio
    /// runtime; the task ends when the batcher is dropped.
    pub fn spawn<F, Fut>(what: &'static str, max_batch: usize, mut run: F) -> Self
    where
        F: FnMut(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<Vec<A>>> + Send,
    {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<(Q, Reply<A>)>(max_batch);
        tokio::spawn(async move {
            let mut jobs = Vec::with_capacity(max_batch);
            while rx.recv_many(&mut jobs, max_batch).await > 0 {
                let (requests, replies): (Vec<Q>, Vec<Reply<A>>) = jobs.drain(..).unzip();
                let asked = requests.len();
                let outcome = match run(requests).await {
                    Ok(answers) if answers.len() == asked => Ok(answers),
                    Ok(answers) => Err(format!("{what}: {} answers to {asked} requests", answers.len())),
                    Err(e) => Err(format!("{what}: {e:#}")),
                };
                match outcome {
                    Ok(answers) => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, requests = asked, "a batch failed; each of its requests gets the error");
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Asks, and waits for the batch that carries the request.
    pub async fn call(&self, request: Q) -> anyhow::Result<A> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((request, reply)).await.map_err(|_| anyhow::anyhow!("the batcher stopped"))?;
        answer.await.map_err(|_| anyhow::anyhow!("the batcher stopped"))?.map_err(anyhow::Error::msg)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn requests_that_arrive_together_share_a_batch() {
        let batches = Arc::new(AtomicUsize::new(0));
        let counted = batches.clone();
        let doubler = Arc::new(Batcher::spawn("doubling", 64, move |xs: Vec<u32>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                // A slow database: everything asked meanwhile waits for the next batch.
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(xs.into_iter().map(|x| x * 2).collect())
            }
        }));
        let calls: Vec<_> = (0..200u32)
            .map(|x| {
                let d = doubler.clone();
                tokio::spawn(async move { d.call(x).await.unwrap() })
            })
            .collect();
        for (x, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), 2 * x as u32, "each request gets its own answer");
        }
        let n = batches.load(Ordering::Relaxed);
        assert!((4..=10).contains(&n), "200 requests of at most 64 a batch went in {n} batches");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_request_and_the_next_batch_works() {
        let failing = Batcher::spawn("test", 8, |xs: Vec<u32>| async move {
            anyhow::ensure!(!xs.contains(&0), "zero refused");
            Ok(xs)
        });
        let e = failing.call(0).await.unwrap_err();
        assert!(e.to_string().contains("zero refused"), "{e}");
        assert_eq!(failing.call(7).await.unwrap(), 7);
        let short = Batcher::spawn("short", 8, |_: Vec<u32>| async { Ok(Vec::<u32>::new()) });
        assert!(short.call(1).await.is_err(), "an answer missing is an error, not a hang");
    }
}
