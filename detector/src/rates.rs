//! Per-class rates from two cumulative snapshots. Pure: no clock, no kernel.

use std::time::Duration;

use detector_common::{maps::ClassCounters, rules::DROP_REASON_COUNT, TrafficClass, CLASS_COUNT};

/// Cumulative per-class counters of one interface, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassSnapshot {
    /// Everything seen, dropped or not.
    pub counters: [ClassCounters; CLASS_COUNT],
    /// Of that, dropped by a mitigation rule, per [`detector_common::rules::DropReason`].
    pub dropped: [[ClassCounters; CLASS_COUNT]; DROP_REASON_COUNT],
}

impl ClassSnapshot {
    pub fn get(&self, class: TrafficClass) -> ClassCounters {
        self.counters[class.index()]
    }

    pub fn total_packets(&self) -> u64 {
        self.counters.iter().map(|c| c.packets).sum()
    }
}

/// One class over one poll interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClassRate {
    /// Packets and bytes counted during the interval.
    pub packets: u64,
    pub bytes: u64,
    pub pps: f64,
    /// Bits per second, Ethernet header included.
    pub bps: f64,
}

/// The increase of a cumulative counter. A counter that went backwards was
/// recreated (the program was reloaded), so everything it holds is new.
pub fn delta(prev: u64, cur: u64) -> u64 {
    cur.checked_sub(prev).unwrap_or(cur)
}

/// Rates per class between `prev` and `cur`, taken `elapsed` apart.
pub fn class_rates(prev: &ClassSnapshot, cur: &ClassSnapshot, elapsed: Duration) -> [ClassRate; CLASS_COUNT] {
    let secs = elapsed.as_secs_f64();
    let mut out = [ClassRate::default(); CLASS_COUNT];
    for (i, rate) in out.iter_mut().enumerate() {
        let packets = delta(prev.counters[i].packets, cur.counters[i].packets);
        let bytes = delta(prev.counters[i].bytes, cur.counters[i].bytes);
        *rate = ClassRate {
            packets,
            bytes,
            pps: per_second(packets as f64, secs),
            bps: per_second(bytes as f64 * 8.0, secs),
        };
    }
    out
}

/// `amount / secs`, or 0 for an empty interval (the first poll).
pub fn per_second(amount: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        amount / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(pairs: &[(TrafficClass, u64, u64)]) -> ClassSnapshot {
        let mut s = ClassSnapshot::default();
        for (c, p, b) in pairs {
            s.counters[c.index()] = ClassCounters { packets: *p, bytes: *b };
        }
        s
    }

    #[test]
    fn rates_are_deltas_over_elapsed_time() {
        let a = snap(&[(TrafficClass::Udp, 1_000, 64_000), (TrafficClass::TcpSyn, 10, 600)]);
        let b = snap(&[(TrafficClass::Udp, 1_500, 96_000), (TrafficClass::TcpSyn, 10, 600)]);
        let r = class_rates(&a, &b, Duration::from_millis(250));
        let udp = r[TrafficClass::Udp.index()];
        assert_eq!(udp.packets, 500);
        assert_eq!(udp.bytes, 32_000);
        assert!((udp.pps - 2_000.0).abs() < 1e-9);
        assert!((udp.bps - 1_024_000.0).abs() < 1e-6);
        assert_eq!(r[TrafficClass::TcpSyn.index()].packets, 0);
        assert_eq!(r[TrafficClass::TcpSyn.index()].pps, 0.0);
    }

    #[test]
    fn a_counter_that_went_backwards_counts_from_zero() {
        assert_eq!(delta(100, 30), 30);
        assert_eq!(delta(100, 130), 30);
    }

    #[test]
    fn zero_elapsed_gives_zero_rates() {
        let a = snap(&[]);
        let b = snap(&[(TrafficClass::Icmp, 5, 500)]);
        let r = class_rates(&a, &b, Duration::ZERO);
        assert_eq!(r[TrafficClass::Icmp.index()].packets, 5);
        assert_eq!(r[TrafficClass::Icmp.index()].pps, 0.0);
    }

    #[test]
    fn totals() {
        let s = snap(&[(TrafficClass::Udp, 3, 0), (TrafficClass::NonIp, 4, 0)]);
        assert_eq!(s.total_packets(), 7);
        assert_eq!(s.get(TrafficClass::NonIp).packets, 4);
    }
}
