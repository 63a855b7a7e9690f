//! Reconnect delays: exponential backoff with full jitter, shared by gateways (trunk links),
//! mobile-sim's phones and the web app's logic, so a crowd that lost its server at the same moment
//! does not come back at the same moment.
//!
//! The caller supplies the randomness (a firmware RNG, `rand` on a host), which keeps this pure.

use crate::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay bound after the first failure.
    pub base: Duration,
    /// The largest delay bound, reached after a few failures.
    pub max: Duration,
}

impl Backoff {
    /// Gateway trunk links: retry fast after one failure, at most every 30 s after many.
    pub const TRUNK: Self = Self { base: Duration::from_millis(250), max: Duration::from_secs(30) };
    /// Phones: a crowd of thousands spreads its reconnects over up to a minute.
    pub const PHONE: Self = Self { base: Duration::from_millis(500), max: Duration::from_secs(60) };
    /// The aggregator's writes to a failing database: retry soon, at most every 6.4 s, so the
    /// first commit after the database returns is not long in coming.
    pub const STORE: Self = Self { base: Duration::from_millis(200), max: Duration::from_millis(6_400) };

    /// The delay before attempt number `failures + 1`, uniformly spread ("full jitter") over
    /// `[bound / 2, bound]` where `bound = min(max, base * 2^(failures - 1))`. No delay before the
    /// first attempt (`failures == 0`). `random` is any uniformly random `u32`.
    pub fn delay(&self, failures: u32, random: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(32);
        let bound = self.base.as_millis().saturating_mul(1u64 << shift).min(self.max.as_millis()).max(1);
        let half = bound / 2;
        let spread = (u128::from(random) * u128::from(bound - half + 1)) >> 32;
        Duration::from_millis(half + spread as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_and_stays_in_range() {
        let b = Backoff { base: Duration::from_millis(100), max: Duration::from_secs(1) };
        assert_eq!(b.delay(0, u32::MAX), Duration::ZERO);
        for failures in 1..100 {
            let bound = (100u64 << (failures - 1).min(20)).min(1_000);
            for r in [0, 1, u32::MAX / 2, u32::MAX] {
                let d = b.delay(failures, r).as_millis();
                assert!(d >= bound / 2 && d <= bound, "failures {failures} r {r}: {d}");
            }
        }
    }
}
