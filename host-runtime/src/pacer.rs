//! When the executor's thread takes its sockets' readiness: as it comes, or once per window.
//!
//! A thread woken for every phone's byte pays a context switch per byte. So while readiness
//! keeps coming, the thread sleeps out a window ([`crate::RuntimeConfig::io_batch_us`]) and then
//! takes everything that arrived meanwhile in one `epoll_wait`. But readiness that comes in
//! bursts further apart than the window (a load generator's send ticks, a trunk's
//! acknowledgements, a flush's answers) is best taken once per burst: sleeping out a window after
//! each burst only adds a wakeup that finds nothing. In a 200,000-phone hold that was 15 of a
//! gateway's 51 wakeups a second (`strace -tt` of one gateway, 2026-12-07).
//!
//! The rule: readiness found by a blocking wait less than a window after the last readiness is a
//! stream, and from then on the thread sleeps out each window; a window that ends with nothing
//! ready ends the stream, and the thread blocks until the next readiness.

/// The pacing state. Times are microseconds on one monotonic clock.
#[derive(Debug, Clone)]
pub struct Pacer {
    window_us: u64,
    /// When a wait last found sockets ready.
    last_io: Option<u64>,
    /// Whether readiness is coming more often than once per window.
    stream: bool,
}

impl Pacer {
    /// A pacer with this window; 0: take readiness as it comes, never sleep.
    pub const fn new(window_us: u64) -> Self {
        Self { window_us, last_io: None, stream: false }
    }

    /// A blocking wait returned readiness at `at`.
    pub fn woken(&mut self, at: u64) {
        self.stream = self.last_io.is_some_and(|prev| at.saturating_sub(prev) < self.window_us);
        self.last_io = Some(at);
    }

    /// A wait that did not block (tasks were ready to run) found readiness at `at`.
    pub fn took(&mut self, at: u64) {
        self.last_io = Some(at);
    }

    /// The wait at the end of a window ([`Pacer::sleep_for`]) found readiness at `at`, or
    /// nothing (`None`).
    pub fn window_ended(&mut self, found: Option<u64>) {
        match found {
            Some(at) => self.last_io = Some(at),
            None => self.stream = false,
        }
    }

    /// With nothing left to run at `now`: how long to sleep before taking readiness without
    /// blocking, or `None` to block until readiness (or the next timer) comes.
    pub fn sleep_for(&self, now: u64) -> Option<u64> {
        let since = now.saturating_sub(self.last_io?);
        (self.stream && since < self.window_us).then(|| self.window_us - since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a pacer like the runtime's loop over readiness arriving at `arrivals` (µs, in
    /// order), each taking 20 µs to serve (readiness that comes meanwhile is taken by a wait that
    /// does not block), and returns how many times the thread woke (blocking waits that
    /// returned, sleeps that ended) and how many sleeps found nothing.
    fn simulate(window_us: u64, arrivals: &[u64]) -> (usize, usize) {
        const SERVE_US: u64 = 20;
        let mut pacer = Pacer::new(window_us);
        let (mut wakeups, mut empty) = (0, 0);
        let mut now = 0;
        let mut next = 0; // the first arrival not yet taken
        let take = |now: u64, next: &mut usize| {
            let n = arrivals[*next..].iter().take_while(|&&a| a <= now).count();
            *next += n;
            n as u64
        };
        while next < arrivals.len() {
            let taken = match pacer.sleep_for(now) {
                Some(rest) => {
                    now += rest;
                    wakeups += 1;
                    let taken = take(now, &mut next);
                    empty += usize::from(taken == 0);
                    pacer.window_ended((taken > 0).then_some(now));
                    taken
                }
                None => {
                    now = now.max(arrivals[next]);
                    wakeups += 1;
                    pacer.woken(now);
                    take(now, &mut next)
                }
            };
            now += taken * SERVE_US;
            loop {
                let more = take(now, &mut next);
                if more == 0 {
                    break;
                }
                pacer.took(now);
                now += more * SERVE_US;
            }
        }
        (wakeups, empty)
    }

    #[test]
    fn bursts_further_apart_than_the_window_wake_the_thread_once_each() {
        // 20 bursts 100 ms apart, each of 30 arrivals within 100 µs.
        let arrivals: Vec<u64> =
            (0..20u64).flat_map(|b| (0..30u64).map(move |i| 1_000 + b * 100_000 + i * 3)).collect();
        assert_eq!(simulate(20_000, &arrivals), (20, 0));
    }

    #[test]
    fn a_stream_is_taken_once_per_window() {
        // One arrival every 3 ms for a second: 334 arrivals, about 50 windows of 20 ms.
        let arrivals: Vec<u64> = (0..334u64).map(|i| 1_000 + i * 3_000).collect();
        let (wakeups, empty) = simulate(20_000, &arrivals);
        assert!((50..=54).contains(&wakeups), "{wakeups} wakeups");
        assert!(empty <= 1, "{empty} sleeps found nothing");
    }

    #[test]
    fn a_stream_that_stops_ends_with_one_empty_window_then_blocks() {
        let mut pacer = Pacer::new(20_000);
        pacer.woken(1_000);
        assert_eq!(pacer.sleep_for(1_500), None, "one readiness is not a stream");
        pacer.woken(4_000);
        assert_eq!(pacer.sleep_for(4_500), Some(19_500));
        pacer.window_ended(Some(24_000));
        assert_eq!(pacer.sleep_for(24_200), Some(19_800));
        pacer.window_ended(None);
        assert_eq!(pacer.sleep_for(44_000), None);
    }

    #[test]
    fn no_window_never_sleeps() {
        let mut pacer = Pacer::new(0);
        pacer.woken(1);
        pacer.woken(2);
        assert_eq!(pacer.sleep_for(2), None);
    }
}
