//! Waiting for a count to reach a mark: the phones a server holds, the files it has open. One
//! loop ([`until`]) asks a probe every so often until its count is where it is wanted, the
//! phones' mobile-sim or a server that must stay up ends first, or time runs out; it says which
//! in a [`Waited`], whose Display reads as the reason in a `FAILED:` line or an error. Each
//! caller keeps its own probe and its own way of failing.

use std::fmt;
use std::future::Future;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::children::Proc;

/// Lines of the phones' log a [`Waited`] keeps when they ended early.
const TAIL_LINES: usize = 10;

/// Where the count is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// N or more (phones connecting).
    AtLeast(u64),
    /// N or fewer (phones closing).
    AtMost(u64),
}

impl Want {
    /// Whether `count` is where it is wanted.
    pub fn met(self, count: u64) -> bool {
        match self {
            Want::AtLeast(n) => count >= n,
            Want::AtMost(n) => count <= n,
        }
    }
}

impl fmt::Display for Want {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Want::AtLeast(n) => write!(f, "at least {n}"),
            Want::AtMost(n) => write!(f, "at most {n}"),
        }
    }
}

/// A server that must stay up while its count is waited for: its check fails (with what ended
/// and how) once a process of it has ended. `compare::Served` is one, and so is a lone
/// [`Proc`].
pub trait Alive {
    fn check_alive(&mut self) -> anyhow::Result<()>;
}

/// The processes whose end makes waiting pointless.
#[derive(Default)]
pub struct Watch<'a> {
    /// The phones' mobile-sim: its end, however it ended, ends the wait.
    phones: Option<&'a mut Proc>,
    /// A server that must stay up.
    server: Option<&'a mut dyn Alive>,
}

impl<'a> Watch<'a> {
    /// Also the phones' mobile-sim `sim`.
    pub fn phones(mut self, sim: &'a mut Proc) -> Self {
        self.phones = Some(sim);
        self
    }

    /// Also `server`.
    pub fn server(mut self, server: &'a mut dyn Alive) -> Self {
        self.server = Some(server);
        self
    }
}

/// Why [`until`] stopped.
#[derive(Debug)]
pub enum End {
    /// The count was where it was wanted.
    Reached,
    /// The phones' mobile-sim (its name) ended first: how, and its log's last lines.
    PhonesEnded { name: String, status: ExitStatus, tail: String },
    /// The server's check failed (its error says which process ended, and how).
    ServerDied(anyhow::Error),
    /// `limit` passed; the last probe that failed, if one did (one may fail while a server is
    /// busy, and a later one succeed).
    TimedOut { limit: Duration, last_error: Option<anyhow::Error> },
}

/// What [`until`] saw: the last count it read and why it stopped. An error (for `?` into
/// anyhow) when it stopped short of the mark.
#[derive(Debug)]
pub struct Waited {
    /// What was counted, plural ("phones held", "open files").
    pub counted: String,
    pub want: Want,
    /// The last count read; `None` when no probe succeeded.
    pub count: Option<u64>,
    pub end: End,
}

impl Waited {
    pub fn reached(&self) -> bool {
        matches!(self.end, End::Reached)
    }

    /// The count when it was reached, or `self` as the error.
    pub fn into_result(self) -> Result<u64, Waited> {
        match (&self.end, self.count) {
            (End::Reached, Some(n)) => Ok(n),
            _ => Err(self),
        }
    }

    /// "4 phones held", or "no read of phones held" when no probe succeeded.
    fn counted_now(&self) -> String {
        match self.count {
            Some(n) => format!("{n} {}", self.counted),
            None => format!("no read of {}", self.counted),
        }
    }
}

impl fmt::Display for Waited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (now, want) = (self.counted_now(), self.want);
        match &self.end {
            End::Reached => write!(f, "{now} ({want})"),
            End::PhonesEnded { name, status, tail } => {
                let tail = if tail.is_empty() { "(its log is empty)" } else { tail };
                write!(f, "{name} ended ({status}) with {now}, wanted {want}: {tail}")
            }
            End::ServerDied(e) => write!(f, "the server ended with {now}, wanted {want}: {e:#}"),
            End::TimedOut { limit, last_error } => {
                let short = match (self.count, want) {
                    (None, _) => "",
                    (Some(_), Want::AtLeast(_)) => "only ",
                    (Some(_), Want::AtMost(_)) => "still ",
                };
                write!(f, "{short}{now} after {limit:?}, wanted {want}")?;
                match last_error {
                    Some(e) => write!(f, " (the last read failed: {e:#})"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for Waited {}

/// Asks `probe` for the count of `counted` every `every` until it is as `want` says, a process
/// of `watch` ends, or `limit` passes (the probe is asked at least once). Each round checks the
/// server first, then reads the count, then looks at the phones: phones that ended after the
/// mark was reached do not spoil it. A failed probe is remembered and asked again. A sync probe
/// is passed as `|| std::future::ready(read())`.
pub async fn until<P, F>(
    counted: &str,
    want: Want,
    every: Duration,
    limit: Duration,
    mut watch: Watch<'_>,
    mut probe: P,
) -> Waited
where
    P: FnMut() -> F,
    F: Future<Output = anyhow::Result<u64>>,
{
    let deadline = Instant::now() + limit;
    let mut count = None;
    let mut last_error = None;
    let end = loop {
        if let Some(Err(e)) = watch.server.as_mut().map(|s| s.check_alive()) {
            break End::ServerDied(e);
        }
        match probe().await {
            Ok(n) => count = Some(n),
            Err(e) => last_error = Some(e),
        }
        if count.is_some_and(|n| want.met(n)) {
            break End::Reached;
        }
        if let Some(sim) = watch.phones.as_mut() {
            if let Some(status) = sim.exited() {
                break End::PhonesEnded { name: sim.name.clone(), status, tail: sim.log_tail(TAIL_LINES) };
            }
        }
        if Instant::now() >= deadline {
            break End::TimedOut { limit, last_error };
        }
        tokio::time::sleep(every).await;
    };
    Waited { counted: counted.to_owned(), want, count, end }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use anyhow::anyhow;

    use super::*;

    const EVERY: Duration = Duration::from_millis(5);
    const LONG: Duration = Duration::from_secs(30);

    /// A mobile-sim stand-in: `sleep SECONDS` (0: ends at once), its log `dir/stand-in.log`.
    pub(crate) fn stand_in(dir: &Path, seconds: &str) -> Proc {
        let mut c = tokio::process::Command::new("sleep");
        c.arg(seconds);
        Proc::spawn("stand-in", c, 0, dir, None).unwrap()
    }

    /// A probe that gives `reads` in turn, then `last` for ever.
    fn reads(
        reads: Vec<anyhow::Result<u64>>,
        last: u64,
    ) -> impl FnMut() -> std::future::Ready<anyhow::Result<u64>> {
        let mut reads = reads.into_iter();
        move || std::future::ready(reads.next().unwrap_or(Ok(last)))
    }

    /// A server whose check fails from its `alive`-th on.
    struct Server {
        alive: u32,
    }

    impl Alive for Server {
        fn check_alive(&mut self) -> anyhow::Result<()> {
            match self.alive.checked_sub(1) {
                Some(left) => {
                    self.alive = left;
                    Ok(())
                }
                None => Err(anyhow!("gateway exited (exit status: 1): no trunk")),
            }
        }
    }

    #[tokio::test]
    async fn reached_past_failed_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut sim = stand_in(dir.path(), "30");
        let mut server = Server { alive: 100 };
        let watch = Watch::default().phones(&mut sim).server(&mut server);
        let probe = reads(vec![Err(anyhow!("busy")), Ok(5), Ok(9)], 10);
        let w = until("phones held", Want::AtLeast(10), EVERY, LONG, watch, probe).await;
        assert!(w.reached(), "{w}");
        assert_eq!(w.count, Some(10));
        assert_eq!(w.to_string(), "10 phones held (at least 10)");
        assert_eq!(w.into_result().unwrap(), 10);
    }

    #[tokio::test]
    async fn phones_that_end_end_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let mut ended = stand_in(dir.path(), "0");
        let _ = ended.wait(Duration::from_secs(10)).await;
        std::fs::write(&ended.log, "one\nrefused: too many phones\n").unwrap();
        let w =
            until("phones held", Want::AtLeast(10), EVERY, LONG, Watch::default().phones(&mut ended), || {
                std::future::ready(Ok(3))
            })
            .await;
        assert!(matches!(w.end, End::PhonesEnded { status, .. } if status.success()), "{w:?}");
        assert_eq!(
            w.to_string(),
            "stand-in ended (exit status: 0) with 3 phones held, wanted at least 10: \
             one\nrefused: too many phones"
        );
        // Ended, but after the mark: reached.
        let w =
            until("phones held", Want::AtLeast(3), EVERY, LONG, Watch::default().phones(&mut ended), || {
                std::future::ready(Ok(3))
            })
            .await;
        assert!(w.reached(), "{w}");
    }

    #[tokio::test]
    async fn a_server_that_dies_ends_the_wait() {
        let mut server = Server { alive: 2 };
        let probe = reads(vec![Ok(1), Ok(2)], 2);
        let w =
            until("phones held", Want::AtLeast(10), EVERY, LONG, Watch::default().server(&mut server), probe)
                .await;
        assert!(matches!(w.end, End::ServerDied(_)), "{w:?}");
        assert_eq!(
            w.to_string(),
            "the server ended with 2 phones held, wanted at least 10: gateway exited (exit status: 1): no trunk"
        );
        // As an anyhow error, with the caller's context.
        let e = anyhow::Error::from(w.into_result().unwrap_err()).context("idle phones");
        assert!(format!("{e:#}").starts_with("idle phones: the server ended with 2 phones held"), "{e:#}");
    }

    #[tokio::test]
    async fn time_runs_out_with_the_last_count_and_error() {
        let limit = Duration::from_millis(50);
        let probe = reads(vec![Ok(4), Err(anyhow!("connection refused"))], 4);
        let started = Instant::now();
        let w = until("phones held", Want::AtLeast(10), EVERY, limit, Watch::default(), probe).await;
        assert!(started.elapsed() >= limit);
        assert!(matches!(w.end, End::TimedOut { last_error: Some(_), .. }), "{w:?}");
        assert_eq!(w.count, Some(4));
        assert_eq!(
            w.to_string(),
            "only 4 phones held after 50ms, wanted at least 10 (the last read failed: connection refused)"
        );
        // Never a count: said so, not read as 0.
        let w = until("open files", Want::AtLeast(1), EVERY, Duration::ZERO, Watch::default(), || {
            std::future::ready(Err(anyhow!("no /proc/7/fd")))
        })
        .await;
        assert_eq!(w.count, None);
        assert!(!w.reached());
        assert_eq!(
            w.to_string(),
            "no read of open files after 0ns, wanted at least 1 (the last read failed: no /proc/7/fd)"
        );
    }

    #[tokio::test]
    async fn at_most_waits_for_the_count_to_fall() {
        let probe = reads(vec![Ok(500), Ok(120), Ok(40)], 12);
        let w = until("open files", Want::AtMost(12), EVERY, LONG, Watch::default(), probe).await;
        assert!(w.reached(), "{w}");
        assert_eq!(w.count, Some(12));
        let w = until("open files", Want::AtMost(12), EVERY, Duration::ZERO, Watch::default(), || {
            std::future::ready(Ok(13))
        })
        .await;
        assert_eq!(w.to_string(), "still 13 open files after 0ns, wanted at most 12");
        assert!(Want::AtMost(0).met(0) && !Want::AtMost(0).met(1) && !Want::AtLeast(2).met(1));
    }
}
