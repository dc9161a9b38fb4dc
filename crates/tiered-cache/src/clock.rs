//! The memory tier's clock: nanoseconds on the monotonic clock, with a
//! deadline check that costs an L1 hit a few nanoseconds.
//!
//! A precise monotonic read costs about 26 ns on a typical Linux server,
//! more than the whole map lookup. On Linux the check first reads the
//! kernel's coarse monotonic clock (the same clock as of its last tick, a
//! few nanoseconds): that clock never runs ahead of the precise one and
//! lags it by at most a tick (1–10 ms). Only a deadline within
//! [`MARGIN_NS`] of the coarse time is decided by a precise read, so the
//! answer is the precise one every time. Elsewhere every check is a precise
//! read.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How close to the coarse time a deadline must be for a precise read:
/// more than two ticks at the slowest common tick rate (100 Hz).
#[cfg(target_os = "linux")]
const MARGIN_NS: u64 = 25_000_000;

/// Nanoseconds since an arbitrary origin, on the precise monotonic clock.
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn now_ns() -> u64 {
    nanos(rustix::time::clock_gettime(
        rustix::time::ClockId::Monotonic,
    ))
}

#[cfg(target_os = "linux")]
#[inline]
fn nanos(time: rustix::time::Timespec) -> u64 {
    let seconds = u64::try_from(time.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(time.tv_nsec).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Whether the precise monotonic clock has reached `deadline` (from
/// [`now_ns`] plus a TTL).
#[cfg(target_os = "linux")]
#[inline]
pub(crate) fn reached(deadline: u64) -> bool {
    let coarse = nanos(rustix::time::clock_gettime(
        rustix::time::ClockId::MonotonicCoarse,
    ));
    if coarse >= deadline {
        // The coarse clock never runs ahead of the precise one.
        return true;
    }
    if deadline - coarse > MARGIN_NS {
        return false;
    }
    now_ns() >= deadline
}

#[cfg(not(target_os = "linux"))]
static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since an arbitrary origin, on the precise monotonic clock.
#[cfg(not(target_os = "linux"))]
#[inline]
pub(crate) fn now_ns() -> u64 {
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the monotonic clock has reached `deadline` (from [`now_ns`] plus
/// a TTL).
#[cfg(not(target_os = "linux"))]
#[inline]
pub(crate) fn reached(deadline: u64) -> bool {
    now_ns() >= deadline
}

/// A pair of readings of [`now_ns`] and [`Instant`] taken together, to
/// convert one into the other.
static ORIGIN_PAIR: OnceLock<(u64, Instant)> = OnceLock::new();

/// The [`Instant`] of `deadline` (from [`now_ns`] plus a TTL), `None` for
/// `u64::MAX` (no deadline); within a microsecond (the time between the two
/// readings it converts with).
pub(crate) fn instant(deadline: u64) -> Option<Instant> {
    if deadline == u64::MAX {
        return None;
    }
    let (nanos, origin) = *ORIGIN_PAIR.get_or_init(|| (now_ns(), Instant::now()));
    if deadline >= nanos {
        origin.checked_add(Duration::from_nanos(deadline - nanos))
    } else {
        origin.checked_sub(Duration::from_nanos(nanos - deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_reached_exactly_when_the_precise_clock_passes_it() {
        // Deadlines from 30 ms past to 30 ms ahead (inside and outside the
        // coarse margin), many times over a few ticks: the answer must agree
        // with precise reads taken just before and just after it.
        let (mut ahead, mut passed) = (0, 0);
        for round in 0..200_000_u64 {
            let offset = i64::try_from(round % 60_001).unwrap_or(0) * 1_000 - 30_000_000;
            let before = now_ns();
            let deadline = before.saturating_add_signed(offset);
            let answer = reached(deadline);
            let after = now_ns();
            if after < deadline {
                assert!(!answer, "{offset} ns: reached before its time");
                ahead += 1;
            }
            if before >= deadline {
                assert!(answer, "{offset} ns: not reached once passed");
                passed += 1;
            }
        }
        assert!(
            ahead > 1_000 && passed > 1_000,
            "{ahead} ahead, {passed} passed"
        );
        assert!(!reached(u64::MAX));
        assert!(reached(0));
    }

    #[test]
    fn a_deadline_converts_to_the_instant_it_stands_for() {
        let ttl = Duration::from_secs(90);
        let (deadline, expected) = (now_ns() + 90_000_000_000, Instant::now() + ttl);
        let converted = instant(deadline).unwrap();
        let gap = converted.max(expected) - converted.min(expected);
        assert!(gap < Duration::from_millis(10), "{gap:?} apart");
        assert_eq!(instant(u64::MAX), None);
    }
}
