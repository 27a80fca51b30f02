//! Conversions between the `std` timer's [`Instant`]s and
//! [`std::time::Instant`].

extern crate std;

use super::{Instant, StdTimer};
use core::time::Duration;

impl StdTimer {
    /// Converts this clock's [`Instant`] to a [`std::time::Instant`]: the
    /// inverse of [`to_instant`](Self::to_instant), for handing a context's
    /// deadline to an API that takes a `std` instant (a socket timeout, a
    /// `Condvar`, a thread sleep).
    ///
    /// Saturating, never panics: an instant too far in the future for the
    /// platform's `std::time::Instant` (such as [`Instant::MAX`], "never")
    /// maps to the latest `std` instant it can represent on the way there.
    /// Costs one read of the `std` clock.
    ///
    /// ```
    /// use ctxcore::{Context, StdTimer};
    /// use std::time::Duration;
    ///
    /// let timer = StdTimer::global();
    /// let (ctx, _h) = Context::background().with_timeout(Duration::from_secs(5));
    /// let deadline: std::time::Instant = timer.to_std(ctx.deadline().unwrap());
    /// assert!(deadline > std::time::Instant::now());
    /// assert_eq!(timer.to_instant(deadline), ctx.deadline().unwrap()); // round trip
    /// ```
    pub fn to_std(&self, t: Instant) -> std::time::Instant {
        // The timer's epoch is private to its module: find it through one
        // reading of the `std` clock, in exact integer nanoseconds.
        let now = std::time::Instant::now();
        let now_i = self.to_instant(now);
        if t >= now_i {
            saturating_add_std(now, t - now_i)
        } else {
            // At most `now - epoch` back: always representable.
            now.checked_sub(now_i - t).unwrap_or(now)
        }
    }
}

/// `base + d`, or the latest instant on the way to it that the platform can
/// represent.
pub(crate) fn saturating_add_std(base: std::time::Instant, d: Duration) -> std::time::Instant {
    add_saturating(base, d, std::time::Instant::checked_add)
}

/// `base + d` through `checked_add`, or as close to it as the type can
/// represent: what does not fit is halved until it does. One step when it
/// fits; otherwise at most two per bit of a `Duration` (about 190).
pub(crate) fn add_saturating<T: Copy>(base: T, d: Duration, checked_add: impl Fn(&T, Duration) -> Option<T>) -> T {
    let (mut at, mut left, mut step) = (base, d, d);
    while !left.is_zero() && !step.is_zero() {
        step = step.min(left);
        match checked_add(&at, step) {
            Some(t) => {
                at = t;
                left -= step;
            }
            None => step /= 2,
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_saturating_fits_or_gets_within_a_nanosecond() {
        let cap = |t: &u64, d: Duration| {
            let n = u64::try_from(d.as_nanos()).ok()?;
            t.checked_add(n).filter(|v| *v <= 1_000_000_007)
        };
        assert_eq!(add_saturating(5u64, Duration::from_nanos(10), cap), 15);
        assert_eq!(add_saturating(5u64, Duration::ZERO, cap), 5);
        assert_eq!(add_saturating(5u64, Duration::MAX, cap), 1_000_000_007);
        assert_eq!(add_saturating(5u64, Duration::from_secs(2), cap), 1_000_000_007);
    }

    #[test]
    fn to_std_round_trips_and_saturates() {
        let timer = StdTimer::global();
        let now = std::time::Instant::now();
        let t = timer.to_instant(now);
        assert_eq!(timer.to_std(t), now);
        assert_eq!(
            timer.to_instant(timer.to_std(t + Duration::from_secs(3))),
            t + Duration::from_secs(3)
        );
        assert!(timer.to_std(Instant::ZERO) <= now);
        assert_eq!(timer.to_instant(timer.to_std(Instant::ZERO)), Instant::ZERO);
        assert!(timer.to_std(Instant::MAX) > now);
    }
}
