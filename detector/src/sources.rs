//! Per-source rates and the top talkers of each class. Pure: the poller
//! feeds it the per-source map's cumulative values and the poll time.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use detector_common::{
    maps::{SourceKey, SourceStats},
    TrafficClass, CLASS_COUNT,
};
use serde::Serialize;

use crate::{
    rates::{delta, per_second},
    targets::forget_unlisted,
};

/// The address a map key stands for.
pub fn key_addr(key: &SourceKey) -> IpAddr {
    if key.is_ipv4() {
        IpAddr::V4(Ipv4Addr::new(key.addr[12], key.addr[13], key.addr[14], key.addr[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(key.addr))
    }
}

/// The map key of an address (IPv4 mapped into IPv6).
pub fn addr_key(addr: IpAddr) -> SourceKey {
    match addr {
        IpAddr::V4(v4) => SourceKey::from_ipv4_octets(v4.octets()),
        IpAddr::V6(v6) => SourceKey { addr: v6.octets() },
    }
}

/// One source over one poll interval.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRate {
    pub addr: IpAddr,
    pub pps: f64,
    pub bps: f64,
    pub class_pps: [f64; CLASS_COUNT],
    /// How long the source has been tracked, as of this poll: since the
    /// poll it first appeared in (it is forgotten after `idle_after`
    /// without packets). A source an attack's runbook should never limit
    /// (the host's users) was there well before the attack.
    pub seen_for_ms: u64,
}

/// A top talker of one class.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopSource {
    pub addr: IpAddr,
    pub pps: f64,
    /// The source's part of the class's packets, 0..=1.
    pub share: f64,
}

struct Seen {
    stats: SourceStats,
    last_change: Duration,
    first_seen: Duration,
    /// The poll that last listed it.
    poll: u64,
}

/// What one poll of the per-source map gave.
#[derive(Debug, Default)]
pub struct SourcesUpdate {
    /// Sources that sent anything during the interval.
    pub active: Vec<SourceRate>,
    /// Entries unchanged for longer than the idle limit: the poller removes
    /// them from the kernel map so the map (and the next poll) stays small.
    pub idle: Vec<SourceKey>,
}

/// Remembers each source's previous cumulative counters.
pub struct SourceTracker {
    seen: HashMap<SourceKey, Seen>,
    idle_after: Duration,
    polls: u64,
}

impl SourceTracker {
    pub fn new(idle_after: Duration) -> Self {
        SourceTracker { seen: HashMap::new(), idle_after, polls: 0 }
    }

    /// Number of sources remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Takes one poll's read of the per-source map at monotonic time `now`,
    /// `elapsed` after the previous poll: `current`, the sources it listed
    /// with their cumulative counters, which is the whole map when `whole`
    /// (or else the sources counted in the last window and a slice of a
    /// sweep, `crate::kernel::dirty`). A source left out of a partial read
    /// keeps its last counts; one left out of a whole read, or of
    /// [`FORGET_POLLS`](crate::targets::FORGET_POLLS) reads in a row, is
    /// gone from the kernel's map (evicted by it; see [`forget_unlisted`]).
    pub fn update(
        &mut self,
        now: Duration,
        elapsed: Duration,
        current: &[(SourceKey, SourceStats)],
        whole: bool,
    ) -> SourcesUpdate {
        let secs = elapsed.as_secs_f64();
        let mut out = SourcesUpdate::default();
        self.polls += 1;
        let poll = self.polls;
        for (key, stats) in current {
            let prev = self.seen.get(key);
            let before = prev.map(|p| p.stats).unwrap_or_default();
            let packets = delta(before.packets, stats.packets);
            let last_change = match prev {
                Some(p) if packets == 0 => p.last_change,
                _ => now,
            };
            let first_seen = prev.map(|p| p.first_seen).unwrap_or(now);
            if packets == 0 && now.saturating_sub(last_change) >= self.idle_after {
                out.idle.push(*key);
                self.seen.remove(key);
                continue;
            }
            if packets > 0 {
                let mut class_pps = [0.0; CLASS_COUNT];
                for (i, pps) in class_pps.iter_mut().enumerate() {
                    *pps = per_second(delta(before.class_packets[i], stats.class_packets[i]) as f64, secs);
                }
                out.active.push(SourceRate {
                    addr: key_addr(key),
                    pps: per_second(packets as f64, secs),
                    bps: per_second(delta(before.bytes, stats.bytes) as f64 * 8.0, secs),
                    class_pps,
                    seen_for_ms: now.saturating_sub(first_seen).as_millis() as u64,
                });
            }
            self.seen.insert(*key, Seen { stats: *stats, last_change, first_seen, poll });
        }
        forget_unlisted(&mut self.seen, poll, whole, |s| s.poll);
        out
    }
}

/// The `n` busiest sources of `class`, busiest first. `class_pps` is the
/// class's exact rate from the per-class counters, the base of each share.
pub fn top_sources(active: &[SourceRate], class: TrafficClass, class_pps: f64, n: usize) -> Vec<TopSource> {
    let i = class.index();
    let mut top: Vec<TopSource> = active
        .iter()
        .filter(|s| s.class_pps[i] > 0.0)
        .map(|s| TopSource {
            addr: s.addr,
            pps: s.class_pps[i],
            share: if class_pps > 0.0 { (s.class_pps[i] / class_pps).min(1.0) } else { 0.0 },
        })
        .collect();
    top.sort_by(|a, b| b.pps.total_cmp(&a.pps).then_with(|| a.addr.cmp(&b.addr)));
    top.truncate(n);
    top
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::FORGET_POLLS;

    fn v4(s: &str) -> SourceKey {
        addr_key(s.parse().unwrap())
    }

    fn stats(class: TrafficClass, packets: u64) -> SourceStats {
        let mut s = SourceStats { packets, bytes: packets * 100, ..Default::default() };
        s.class_packets[class.index()] = packets;
        s
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn keys_round_trip() {
        for a in ["192.0.2.1", "2001:db8::1", "::1", "0.0.0.0"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(key_addr(&addr_key(ip)), ip);
        }
    }

    #[test]
    fn rates_are_deltas_and_new_sources_count_from_zero() {
        let mut t = SourceTracker::new(Duration::from_secs(30));
        let a = v4("192.0.2.1");
        let u = t.update(S, S, &[(a, stats(TrafficClass::Udp, 100))], true);
        assert_eq!(u.active.len(), 1);
        assert_eq!(u.active[0].pps, 100.0);
        let u = t.update(2 * S, S / 2, &[(a, stats(TrafficClass::Udp, 150))], true);
        assert_eq!(u.active[0].pps, 100.0);
        assert_eq!(u.active[0].bps, 100.0 * 100.0 * 8.0);
        assert_eq!(u.active[0].class_pps[TrafficClass::Udp.index()], 100.0);
        // Tracked since its first poll: 1 s, then a new source from zero.
        assert_eq!(u.active[0].seen_for_ms, 1000);
        let b = v4("192.0.2.9");
        let u = t.update(3 * S, S, &[(a, stats(TrafficClass::Udp, 150)), (b, stats(TrafficClass::Udp, 1))], true);
        assert_eq!(u.active.iter().map(|r| r.seen_for_ms).collect::<Vec<_>>(), vec![0], "a, quiet, is not active");
        let u = t.update(4 * S, S, &[(a, stats(TrafficClass::Udp, 160)), (b, stats(TrafficClass::Udp, 2))], true);
        assert_eq!(u.active.iter().map(|r| r.seen_for_ms).collect::<Vec<_>>(), vec![3000, 1000]);
    }

    #[test]
    fn quiet_sources_are_reported_idle_once() {
        let mut t = SourceTracker::new(Duration::from_secs(10));
        let a = v4("192.0.2.1");
        let b = v4("192.0.2.2");
        t.update(S, S, &[(a, stats(TrafficClass::Udp, 5)), (b, stats(TrafficClass::Udp, 5))], true);
        // b keeps sending, a goes quiet.
        let mut now = S;
        let mut idle = Vec::new();
        for i in 2..=12u64 {
            now = S * i as u32;
            // The poller deletes what is reported idle; the map no longer has it.
            let mut cur = vec![(b, stats(TrafficClass::Udp, 5 * i))];
            if idle.is_empty() {
                cur.push((a, stats(TrafficClass::Udp, 5)));
            }
            let u = t.update(now, S, &cur, true);
            assert!(u.active.iter().all(|s| s.addr == key_addr(&b)), "{i}: {:?}", u.active);
            if i < 11 {
                assert!(u.idle.is_empty(), "{i}: idle too early");
            }
            idle.extend(u.idle);
        }
        assert_eq!(idle, vec![a]);
        assert_eq!(t.len(), 1);
        // A source evicted by the kernel is forgotten.
        t.update(now + S, S, &[], true);
        assert!(t.is_empty());
    }

    #[test]
    fn top_sources_sorted_with_shares() {
        let mut t = SourceTracker::new(Duration::from_secs(30));
        let cur = [
            (v4("192.0.2.1"), stats(TrafficClass::TcpSyn, 300)),
            (v4("192.0.2.2"), stats(TrafficClass::TcpSyn, 600)),
            (v4("192.0.2.3"), stats(TrafficClass::Udp, 900)),
        ];
        let u = t.update(S, S, &cur, true);
        let top = top_sources(&u.active, TrafficClass::TcpSyn, 1_000.0, 5);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].addr, "192.0.2.2".parse::<IpAddr>().unwrap());
        assert!((top[0].share - 0.6).abs() < 1e-9);
        assert!((top[1].share - 0.3).abs() < 1e-9);
        assert_eq!(top_sources(&u.active, TrafficClass::TcpSyn, 1_000.0, 1).len(), 1);
        assert!(top_sources(&u.active, TrafficClass::Icmp, 0.0, 5).is_empty());
    }

    #[test]
    fn a_partial_read_leaves_the_unlisted_alone_until_they_are_missing_too_long() {
        let mut t = SourceTracker::new(Duration::from_secs(30));
        let (a, b) = (v4("192.0.2.1"), v4("192.0.2.2"));
        t.update(S, S, &[(a, stats(TrafficClass::Udp, 100)), (b, stats(TrafficClass::Udp, 100))], true);
        // Only a counted: b, unlisted, keeps its counts and is not active.
        let u = t.update(2 * S, S, &[(a, stats(TrafficClass::Udp, 150))], false);
        assert_eq!(u.active.iter().map(|s| s.addr).collect::<Vec<_>>(), vec![key_addr(&a)]);
        assert_eq!(t.len(), 2);
        // b listed again: its rate is counted from what it had.
        let u = t.update(3 * S, S, &[(b, stats(TrafficClass::Udp, 130))], false);
        assert_eq!(u.active.len(), 1);
        assert_eq!(u.active[0].pps, 30.0);
        assert_eq!(u.active[0].seen_for_ms, 2000, "tracked since its first poll");
        // Missing from FORGET_POLLS partial reads in a row: evicted.
        let mut now = 3 * S;
        for _ in 0..2 * FORGET_POLLS {
            now += S / 10;
            t.update(now, S / 10, &[(b, stats(TrafficClass::Udp, 130))], false);
        }
        assert_eq!(t.len(), 1, "a forgotten");
        // A whole read forgets at once what it does not list.
        t.update(now + S, S, &[], true);
        assert!(t.is_empty());
    }

    #[test]
    fn a_quiet_source_listed_by_the_sweep_is_found_idle() {
        let mut t = SourceTracker::new(Duration::from_secs(10));
        let a = v4("192.0.2.1");
        t.update(S, S, &[(a, stats(TrafficClass::Udp, 5))], true);
        // Unlisted while quiet, then listed by a sweep's slice, unchanged.
        for i in 2..=12u32 {
            assert!(t.update(S * i, S, &[], false).idle.is_empty());
        }
        let u = t.update(S * 13, S, &[(a, stats(TrafficClass::Udp, 5))], false);
        assert_eq!(u.idle, vec![a]);
        assert!(t.is_empty());
    }
}
