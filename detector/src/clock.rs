//! Clocks. The pure modules take the time as an argument; the adapters
//! read it here.
//!
//! - [`now_ms`]: the wall clock, in the Unix milliseconds that incidents,
//!   rules and the history use;
//! - [`Clock`]: the wall clock and the kernel's `CLOCK_MONOTONIC` read
//!   together, for rule expiry times the XDP program can compare;
//! - [`Every`]: "do this every N" inside a loop that ticks faster.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The wall clock and the kernel's `CLOCK_MONOTONIC` (what
/// `bpf_ktime_get_coarse_ns` and `bpf_ktime_get_ns` read) at one moment:
/// converts a wall-clock expiry into the kernel's time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub wall_ms: u64,
    pub mono_ns: u64,
}

impl Clock {
    /// Both clocks, read now.
    pub fn now() -> Clock {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let mono_ns = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        Clock { wall_ms: now_ms(), mono_ns }
    }

    /// The kernel's monotonic time at the wall-clock time `wall_ms`.
    pub fn mono_ns_at(&self, wall_ms: u64) -> u64 {
        let delta_ns = (wall_ms as i128 - self.wall_ms as i128) * 1_000_000;
        // A time already past expires at once (1 ns after boot is long gone).
        (self.mono_ns as i128 + delta_ns).max(1) as u64
    }
}

/// A periodic chore inside a loop that ticks more often: `due` says yes
/// once per `period`.
#[derive(Clone, Copy, Debug)]
pub struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    /// Due first one `period` after `start`.
    pub fn new(period: Duration, start: Instant) -> Every {
        Every { period, last: Some(start) }
    }

    /// Due at the first call, then once per `period`.
    pub fn now_and_every(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// True (and the period restarts) when a period has passed since the
    /// last time it was due.
    pub fn due(&mut self, now: Instant) -> bool {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < self.period => false,
            _ => {
                self.last = Some(now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_is_due_once_per_period() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut e = Every::new(s, t0);
        assert!(!e.due(t0));
        assert!(!e.due(t0 + Duration::from_millis(999)));
        assert!(e.due(t0 + s));
        assert!(!e.due(t0 + s + Duration::from_millis(500)));
        assert!(e.due(t0 + 2 * s + Duration::from_millis(1)));
        let mut first = Every::now_and_every(s);
        assert!(first.due(t0));
        assert!(!first.due(t0 + Duration::from_millis(10)));
    }

    #[test]
    fn mono_at_wall() {
        let c = Clock { wall_ms: 10_000, mono_ns: 5_000_000_000 };
        assert_eq!(c.mono_ns_at(11_000), 6_000_000_000);
        assert_eq!(c.mono_ns_at(0), 1);
    }
}
