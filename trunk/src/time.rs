//! Time as the trunk speaks of it: an [`Instant`] on the caller's clock and a [`Duration`]
//! between two of them, both in whole milliseconds, and [`PollAt`], when a state machine next
//! wants to be polled.
//!
//! The crate has no clock (it is sans-IO): every call that needs the time takes it as an
//! [`Instant`] the caller read from its own monotonic clock (embassy's `Instant::now()`, tokio's,
//! a simulation's counter). Only differences between instants matter, so the clock's zero is the
//! caller's choice: boot, process start, or the beginning of a test. Like `smoltcp::time`, these
//! types are `Copy`, ordered, and cost one `u64`; arithmetic saturates rather than panics, because
//! an instant read before a lock and another read after it may come in either order.

use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};

/// The representation, constructors and accessors [`Instant`] and [`Duration`] share: a number
/// of milliseconds.
macro_rules! millis_type {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name {
            millis: u64,
        }

        impl $name {
            #[doc = concat!("The ", $what, " of `millis` milliseconds.")]
            pub const fn from_millis(millis: u64) -> Self {
                Self { millis }
            }

            #[doc = concat!("The ", $what, " of `secs` seconds (saturating).")]
            pub const fn from_secs(secs: u64) -> Self {
                Self { millis: secs.saturating_mul(1_000) }
            }

            #[doc = concat!("The ", $what, " in milliseconds.")]
            pub const fn as_millis(self) -> u64 {
                self.millis
            }
        }

        impl fmt::Display for $name {
            /// Seconds, to the millisecond: `12.345s`.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}.{:03}s", self.millis / 1_000, self.millis % 1_000)
            }
        }
    };
}

millis_type!(
    /// A point on the caller's monotonic clock, in milliseconds since its zero.
    Instant,
    "instant after the clock's zero"
);

millis_type!(
    /// A span of time, in milliseconds.
    Duration,
    "span"
);

impl Instant {
    /// The clock's zero.
    pub const ZERO: Self = Self { millis: 0 };

    /// How long after `earlier` this is; zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration { millis: self.millis.saturating_sub(earlier.millis) }
    }
}

impl Duration {
    /// No time at all.
    pub const ZERO: Self = Self { millis: 0 };
    /// The longest span (about 585 million years): adding it to any instant saturates.
    pub const MAX: Self = Self { millis: u64::MAX };

    /// The span in whole seconds.
    pub const fn as_secs(self) -> u64 {
        self.millis / 1_000
    }

    /// The span `n` times over (saturating).
    pub const fn saturating_mul(self, n: u64) -> Self {
        Self { millis: self.millis.saturating_mul(n) }
    }
}

/// `$lhs op $rhs -> $out` by a saturating operation on the milliseconds, and `op=` from it.
macro_rules! saturating_op {
    ($lhs:ident $op:ident $method:ident $assign:ident $assign_method:ident $rhs:ident = $out:ident, $sat:ident, $doc:literal) => {
        impl $op<$rhs> for $lhs {
            type Output = $out;
            #[doc = $doc]
            fn $method(self, rhs: $rhs) -> $out {
                $out { millis: self.millis.$sat(rhs.millis) }
            }
        }

        impl $assign<$rhs> for $lhs {
            fn $assign_method(&mut self, rhs: $rhs) {
                *self = $op::$method(*self, rhs);
            }
        }
    };
}

saturating_op!(Instant Add add AddAssign add_assign Duration = Instant, saturating_add, "Saturates at the clock's end.");
saturating_op!(Instant Sub sub SubAssign sub_assign Duration = Instant, saturating_sub, "Saturates at the clock's zero.");
saturating_op!(Duration Add add AddAssign add_assign Duration = Duration, saturating_add, "Saturates at [`Duration::MAX`].");
saturating_op!(Duration Sub sub SubAssign sub_assign Duration = Duration, saturating_sub, "Saturates at zero.");

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// How long after `earlier` this is; zero if `earlier` is later (see
    /// [`Instant::saturating_duration_since`]).
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl From<Duration> for core::time::Duration {
    fn from(d: Duration) -> Self {
        core::time::Duration::from_millis(d.millis)
    }
}

impl From<core::time::Duration> for Duration {
    /// Whole milliseconds (what is below one is dropped; beyond [`Duration::MAX`] saturates).
    fn from(d: core::time::Duration) -> Self {
        Duration { millis: u64::try_from(d.as_millis()).unwrap_or(u64::MAX) }
    }
}

/// When a state machine next has something to do: the answer of
/// [`Gateway::poll_timeout`](crate::gateway::Gateway::poll_timeout).
///
/// Ordered from the most to the least urgent (`Now < At(_) < Never`, and `At` by its instant), so
/// the earliest of several is their `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PollAt {
    /// Poll again at once: something is ready to send.
    Now,
    /// Poll again at this instant (at the latest).
    At(Instant),
    /// Nothing will happen until an event (a phone, a link) comes: no timer is needed.
    Never,
}

impl PollAt {
    /// The instant to poll at, given the time `now`: `None` for [`PollAt::Never`]. For callers
    /// that arm a timer (`Timer::at`, `sleep_until`).
    pub fn instant(self, now: Instant) -> Option<Instant> {
        match self {
            PollAt::Now => Some(now),
            PollAt::At(t) => Some(t),
            PollAt::Never => None,
        }
    }

    /// How long to wait from `now`: zero if due, `None` for [`PollAt::Never`].
    pub fn delay(self, now: Instant) -> Option<Duration> {
        self.instant(now).map(|t| t - now)
    }

    /// Whether polling is due at `now`.
    pub fn is_due(self, now: Instant) -> bool {
        self.instant(now).is_some_and(|t| t <= now)
    }
}

impl fmt::Display for PollAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollAt::Now => f.write_str("now"),
            PollAt::At(t) => write!(f, "at {t}"),
            PollAt::Never => f.write_str("never"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_and_poll_at_orders_by_urgency() {
        let t = Instant::from_millis(1_000);
        assert_eq!(t + Duration::from_millis(250), Instant::from_millis(1_250));
        assert_eq!(t - Duration::from_secs(5), Instant::ZERO);
        assert_eq!(Instant::from_millis(900) - t, Duration::ZERO);
        assert_eq!(t - Instant::from_millis(400), Duration::from_millis(600));
        assert_eq!(Instant::from_millis(u64::MAX - 1) + Duration::MAX, Instant::from_millis(u64::MAX));
        assert!(PollAt::Now < PollAt::At(Instant::ZERO));
        assert!(PollAt::At(t) < PollAt::At(t + Duration::from_millis(1)));
        assert!(PollAt::At(Instant::from_millis(u64::MAX)) < PollAt::Never);
        assert_eq!(PollAt::At(t).delay(Instant::from_millis(1_200)), Some(Duration::ZERO));
        assert_eq!(PollAt::Never.instant(t), None);
    }

    #[test]
    fn display_in_seconds() {
        extern crate std;
        use std::string::ToString;
        assert_eq!(Instant::from_millis(12_345).to_string(), "12.345s");
        assert_eq!(Duration::from_millis(250).to_string(), "0.250s");
        assert_eq!(PollAt::At(Instant::from_millis(5)).to_string(), "at 0.005s");
    }
}
