//! Per-target rates: the traffic of each protected address (incoming: to
//! it; outgoing: from it) and of each host group, per class, over one poll.
//! What the detector's network mode reads, as [`crate::rates`] is what the
//! interface-wide view reads. Pure: no clock, no kernel.
//!
//! [`TargetTracker`] turns the kernel's cumulative per-target and
//! per-group counters (`crate::kernel::targets`) into a [`TargetsReading`],
//! as [`crate::sources::SourceTracker`] does for sources.

use std::{collections::HashMap, net::IpAddr, time::Duration};

use detector_common::{maps::SourceKey, targets::TargetStats, CLASS_COUNT};
use serde::{Deserialize, Serialize};

use crate::{
    rates::{delta, per_second, ClassRate},
    sources::key_addr,
};

/// Which way an attack goes, seen from the protected networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards a protected address: an attack on it.
    #[default]
    Incoming,
    /// From a protected address: a flood it sends (a compromised server).
    Outgoing,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Incoming, Direction::Outgoing];

    pub fn name(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }

    /// The index the kernel's per-group counters use (`group * 2 + index`).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One protected address over one poll interval, in one direction.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetRate {
    pub addr: IpAddr,
    /// Index of its host group in the list the controller installed.
    pub group: usize,
    pub classes: [ClassRate; CLASS_COUNT],
}

/// One host group's totals over one poll interval, in one direction:
/// exact, whatever the number of its addresses that sent or received.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupRate {
    pub group: usize,
    pub direction: Direction,
    pub classes: [ClassRate; CLASS_COUNT],
}

/// One poll's per-target rates of one interface.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetsReading {
    /// Tracked addresses that received traffic in the interval.
    pub incoming: Vec<TargetRate>,
    /// Tracked addresses that sent traffic in the interval.
    pub outgoing: Vec<TargetRate>,
    /// Every installed group, both directions (zero rates included).
    pub groups: Vec<GroupRate>,
}

impl TargetsReading {
    pub fn targets(&self, direction: Direction) -> &[TargetRate] {
        match direction {
            Direction::Incoming => &self.incoming,
            Direction::Outgoing => &self.outgoing,
        }
    }

    pub fn group(&self, group: usize, direction: Direction) -> Option<&GroupRate> {
        self.groups.iter().find(|g| g.group == group && g.direction == direction)
    }
}

/// What one poll of the per-target maps gave.
#[derive(Debug, Default)]
pub struct TargetsUpdate {
    pub reading: TargetsReading,
    /// Per direction ([`Direction::index`]): addresses unchanged for longer
    /// than the idle limit. The poller removes them from the kernel maps,
    /// so the maps (and the next poll) stay small.
    pub idle: [Vec<SourceKey>; 2],
}

struct Seen {
    stats: TargetStats,
    last_change: Duration,
    /// The poll that last listed it.
    poll: u64,
}

/// Partial reads in a row after which an address not listed is taken as
/// gone: the kernel adapter's sweep lists every address at least once in
/// two of its passes (a pass begins every `SWEEP_POLLS`, 20 polls), a
/// margin under this.
pub const FORGET_POLLS: u64 = 64;

/// Forgets, as `poll` ends, the addresses its read did not list: after a
/// whole read all of them (the kernel evicted or removed them); after a
/// partial one only those missing from [`FORGET_POLLS`] reads in a row
/// (looked at every `FORGET_POLLS` polls). `listed_in`: the poll that last
/// listed an entry. The per-source and per-address trackers both forget
/// by this.
pub fn forget_unlisted<V>(seen: &mut HashMap<SourceKey, V>, poll: u64, whole: bool, listed_in: impl Fn(&V) -> u64) {
    if whole {
        seen.retain(|_, v| listed_in(v) == poll);
    } else if poll.is_multiple_of(FORGET_POLLS) {
        seen.retain(|_, v| poll - listed_in(v) < FORGET_POLLS);
    }
}

/// Remembers each tracked address's and each group's previous cumulative
/// counters.
pub struct TargetTracker {
    /// Per direction.
    seen: [HashMap<SourceKey, Seen>; 2],
    /// Per group and direction; never forgotten (at most
    /// `2 * MAX_HOSTGROUPS` entries): a group removed and installed again
    /// goes on from its kernel counters, which never stopped being there.
    groups: HashMap<(u32, Direction), TargetStats>,
    idle_after: Duration,
    /// Polls so far.
    polls: u64,
}

impl TargetTracker {
    pub fn new(idle_after: Duration) -> Self {
        TargetTracker { seen: [HashMap::new(), HashMap::new()], groups: HashMap::new(), idle_after, polls: 0 }
    }

    /// Addresses remembered in `direction`.
    pub fn len(&self, direction: Direction) -> usize {
        self.seen[direction.index()].len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.iter().all(HashMap::is_empty)
    }

    /// Takes the maps' current contents at monotonic time `now`, `elapsed`
    /// after the previous poll: the tracked addresses of each direction
    /// (their group as the kernel wrote it) and the installed groups'
    /// totals (each group in both directions).
    pub fn update(
        &mut self,
        now: Duration,
        elapsed: Duration,
        incoming: &[(SourceKey, TargetStats)],
        outgoing: &[(SourceKey, TargetStats)],
        groups: &[(u32, Direction, TargetStats)],
    ) -> TargetsUpdate {
        self.update_read(now, elapsed, [(incoming, true), (outgoing, true)], groups)
    }

    /// As [`TargetTracker::update`], from reads that may list only part of
    /// each direction's map (`(entries, whole)`, incoming then outgoing):
    /// the addresses counted in the last window and a slice of a sweep
    /// (`crate::kernel::targets::TargetMaps::read`). An address left out of
    /// a partial read keeps its last counts; one left out of a whole read,
    /// or of [`FORGET_POLLS`] reads in a row, is gone from the kernel's map.
    pub fn update_read(
        &mut self,
        now: Duration,
        elapsed: Duration,
        listed: [(&[(SourceKey, TargetStats)], bool); 2],
        groups: &[(u32, Direction, TargetStats)],
    ) -> TargetsUpdate {
        let secs = elapsed.as_secs_f64();
        let mut out = TargetsUpdate::default();
        self.polls += 1;
        let poll = self.polls;
        for (direction, (current, whole)) in Direction::ALL.into_iter().zip(listed) {
            let d = direction.index();
            let seen = &mut self.seen[d];
            // Updated in place: with tens of thousands of addresses, a new
            // map each poll costs more than the rates.
            let rates_out = match direction {
                Direction::Incoming => &mut out.reading.incoming,
                Direction::Outgoing => &mut out.reading.outgoing,
            };
            rates_out.reserve(current.len());
            for (key, stats) in current {
                let (classes, packets, last_change) = match seen.get_mut(key) {
                    Some(p) => {
                        let (classes, packets) = rates(&base(&p.stats, stats), stats, secs);
                        if packets > 0 {
                            p.last_change = now;
                        }
                        p.stats = *stats;
                        p.poll = poll;
                        (classes, packets, p.last_change)
                    }
                    None => {
                        let (classes, packets) = rates(&TargetStats::default(), stats, secs);
                        seen.insert(*key, Seen { stats: *stats, last_change: now, poll });
                        (classes, packets, now)
                    }
                };
                if packets == 0 && now.saturating_sub(last_change) >= self.idle_after {
                    out.idle[d].push(*key);
                    seen.remove(key);
                    continue;
                }
                if packets > 0 {
                    rates_out.push(TargetRate { addr: key_addr(key), group: stats.group as usize, classes });
                }
            }
            forget_unlisted(seen, poll, whole, |s| s.poll);
        }
        for (group, direction, stats) in groups {
            let prev = self.groups.insert((*group, *direction), *stats);
            let before = prev.as_ref().map(|p| base(p, stats)).unwrap_or_default();
            let (classes, _) = rates(&before, stats, secs);
            out.reading.groups.push(GroupRate { group: *group as usize, direction: *direction, classes });
        }
        out.reading.groups.sort_by_key(|g| (g.group, g.direction));
        out
    }
}

/// What `cur`'s increase is counted from: `prev`, or nothing when any of
/// its counters went backwards (the entry or the program was recreated,
/// so everything it holds is new).
fn base(prev: &TargetStats, cur: &TargetStats) -> TargetStats {
    let backwards = prev.counts.iter().zip(cur.counts.iter()).any(|(p, c)| c.packets < p.packets || c.bytes < p.bytes);
    if backwards {
        TargetStats::default()
    } else {
        *prev
    }
}

/// Per-class rates between two cumulative values, and the packets of all
/// classes.
fn rates(before: &TargetStats, cur: &TargetStats, secs: f64) -> ([ClassRate; CLASS_COUNT], u64) {
    let mut out = [ClassRate::default(); CLASS_COUNT];
    let mut total = 0;
    for (i, rate) in out.iter_mut().enumerate() {
        let packets = delta(before.counts[i].packets, cur.counts[i].packets);
        let bytes = delta(before.counts[i].bytes, cur.counts[i].bytes);
        total += packets;
        *rate = ClassRate {
            packets,
            bytes,
            pps: per_second(packets as f64, secs),
            bps: per_second(bytes as f64 * 8.0, secs),
        };
    }
    (out, total)
}

#[cfg(test)]
mod tests {
    use detector_common::TrafficClass;

    use super::*;
    use crate::sources::addr_key;

    const S: Duration = Duration::from_secs(1);

    fn key(s: &str) -> SourceKey {
        addr_key(s.parse().unwrap())
    }

    fn stats(group: u32, class: TrafficClass, packets: u64) -> TargetStats {
        let mut s = TargetStats { group, ..Default::default() };
        s.counts[class.index()].packets = packets;
        s.counts[class.index()].bytes = packets * 100;
        s
    }

    #[test]
    fn rates_are_per_class_deltas_and_new_targets_count_from_zero() {
        let mut t = TargetTracker::new(30 * S);
        let a = key("192.0.2.1");
        let u = t.update(S, S, &[(a, stats(3, TrafficClass::Udp, 100))], &[], &[]);
        assert_eq!(u.reading.incoming.len(), 1);
        let r = &u.reading.incoming[0];
        assert_eq!((r.addr, r.group), ("192.0.2.1".parse::<IpAddr>().unwrap(), 3));
        assert_eq!(r.classes[TrafficClass::Udp.index()].packets, 100);
        let mut cur = stats(3, TrafficClass::Udp, 150);
        cur.counts[TrafficClass::TcpSyn.index()].packets = 20;
        cur.counts[TrafficClass::TcpSyn.index()].bytes = 1200;
        let u = t.update(2 * S, S / 2, &[(a, cur)], &[], &[]);
        let r = &u.reading.incoming[0];
        let udp = r.classes[TrafficClass::Udp.index()];
        assert_eq!((udp.packets, udp.bytes, udp.pps, udp.bps), (50, 5000, 100.0, 80_000.0));
        let syn = r.classes[TrafficClass::TcpSyn.index()];
        assert_eq!((syn.packets, syn.pps, syn.bps), (20, 40.0, 19_200.0));
        assert!(u.reading.outgoing.is_empty());
        // Quiet: not active, still tracked.
        let u = t.update(3 * S, S, &[(a, cur)], &[], &[]);
        assert!(u.reading.incoming.is_empty());
        assert_eq!(t.len(Direction::Incoming), 1);
    }

    #[test]
    fn directions_are_tracked_apart() {
        let mut t = TargetTracker::new(30 * S);
        let a = key("2001:db8::5");
        t.update(S, S, &[(a, stats(0, TrafficClass::Udp, 10))], &[(a, stats(0, TrafficClass::TcpAck, 7))], &[]);
        let u = t.update(
            2 * S,
            S,
            &[(a, stats(0, TrafficClass::Udp, 10))],
            &[(a, stats(0, TrafficClass::TcpAck, 17))],
            &[],
        );
        assert!(u.reading.incoming.is_empty());
        assert_eq!(u.reading.outgoing.len(), 1);
        assert_eq!(u.reading.targets(Direction::Outgoing)[0].classes[TrafficClass::TcpAck.index()].packets, 10);
        assert_eq!((t.len(Direction::Incoming), t.len(Direction::Outgoing)), (1, 1));
    }

    #[test]
    fn quiet_targets_are_reported_idle_once_and_evicted_ones_forgotten() {
        let mut t = TargetTracker::new(10 * S);
        let a = key("192.0.2.1");
        let b = key("192.0.2.2");
        t.update(S, S, &[], &[(a, stats(1, TrafficClass::Udp, 5)), (b, stats(1, TrafficClass::Udp, 5))], &[]);
        let mut idle = Vec::new();
        let mut now = S;
        for i in 2..=12u64 {
            now = S * i as u32;
            let mut cur = vec![(b, stats(1, TrafficClass::Udp, 5 * i))];
            if idle.is_empty() {
                cur.push((a, stats(1, TrafficClass::Udp, 5)));
            }
            let u = t.update(now, S, &[], &cur, &[]);
            if i < 11 {
                assert!(u.idle[Direction::Outgoing.index()].is_empty(), "{i}: idle too early");
            }
            assert!(u.idle[Direction::Incoming.index()].is_empty());
            idle.extend(u.idle[Direction::Outgoing.index()].iter().copied());
        }
        assert_eq!(idle, vec![a]);
        assert_eq!(t.len(Direction::Outgoing), 1);
        t.update(now + S, S, &[], &[], &[]);
        assert!(t.is_empty());
    }

    #[test]
    fn a_counter_that_went_backwards_starts_the_entry_afresh() {
        let mut t = TargetTracker::new(30 * S);
        let a = key("192.0.2.1");
        let mut first = stats(0, TrafficClass::Udp, 1000);
        first.counts[TrafficClass::Icmp.index()].packets = 5;
        t.update(S, S, &[(a, first)], &[], &[]);
        // Evicted and admitted again within one poll: 30 UDP, 8 ICMP since.
        let mut again = stats(0, TrafficClass::Udp, 30);
        again.counts[TrafficClass::Icmp.index()].packets = 8;
        let u = t.update(2 * S, S, &[(a, again)], &[], &[]);
        let r = &u.reading.incoming[0];
        assert_eq!(r.classes[TrafficClass::Udp.index()].packets, 30);
        assert_eq!(r.classes[TrafficClass::Icmp.index()].packets, 8, "not 8 - 5: the entry is new");
    }

    #[test]
    fn groups_are_reported_in_both_directions_zero_rates_included() {
        let mut t = TargetTracker::new(30 * S);
        let groups = |inc: u64, out: u64| {
            vec![
                (2, Direction::Outgoing, stats(0, TrafficClass::Udp, out)),
                (2, Direction::Incoming, stats(0, TrafficClass::Udp, inc)),
                (0, Direction::Incoming, stats(0, TrafficClass::TcpSyn, 0)),
                (0, Direction::Outgoing, stats(0, TrafficClass::TcpSyn, 0)),
            ]
        };
        let u = t.update(S, S, &[], &[], &groups(100, 0));
        let order: Vec<(usize, Direction)> = u.reading.groups.iter().map(|g| (g.group, g.direction)).collect();
        assert_eq!(
            order,
            vec![
                (0, Direction::Incoming),
                (0, Direction::Outgoing),
                (2, Direction::Incoming),
                (2, Direction::Outgoing)
            ]
        );
        let u = t.update(2 * S, S / 4, &[], &[], &groups(400, 10));
        let g = u.reading.group(2, Direction::Incoming).unwrap();
        assert_eq!(
            (g.classes[TrafficClass::Udp.index()].packets, g.classes[TrafficClass::Udp.index()].pps),
            (300, 1200.0)
        );
        assert_eq!(u.reading.group(2, Direction::Outgoing).unwrap().classes[TrafficClass::Udp.index()].packets, 10);
        assert_eq!(u.reading.group(0, Direction::Incoming).unwrap().classes[TrafficClass::TcpSyn.index()].pps, 0.0);
        assert!(u.reading.group(1, Direction::Incoming).is_none());
    }

    #[test]
    fn a_partial_read_keeps_what_it_did_not_list_and_a_whole_one_drops_it() {
        let mut t = TargetTracker::new(30 * S);
        let (a, b) = (key("203.0.113.1"), key("203.0.113.2"));
        let sa = stats(1, TrafficClass::Udp, 100);
        let sb = stats(1, TrafficClass::Udp, 50);
        t.update(S, S, &[(a, sa), (b, sb)], &[], &[]);
        // b not listed by a partial read: kept, and read again later with
        // more packets, only the new ones count.
        let sa2 = stats(1, TrafficClass::Udp, 300);
        let u = t.update_read(2 * S, S, [(&[(a, sa2)], false), (&[], false)], &[]);
        assert_eq!(u.reading.incoming.len(), 1);
        assert_eq!(u.reading.incoming[0].classes[TrafficClass::Udp.index()].packets, 200);
        assert_eq!(t.len(Direction::Incoming), 2);
        let sb2 = stats(1, TrafficClass::Udp, 80);
        let u = t.update_read(3 * S, S, [(&[(b, sb2)], false), (&[], false)], &[]);
        assert_eq!(u.reading.incoming[0].classes[TrafficClass::Udp.index()].packets, 30);
        // A whole read without b: b is gone.
        t.update_read(4 * S, S, [(&[(a, sa2)], true), (&[], true)], &[]);
        assert_eq!(t.len(Direction::Incoming), 1);
    }

    #[test]
    fn an_address_no_partial_read_lists_for_long_is_forgotten() {
        let mut t = TargetTracker::new(3600 * S);
        let (a, b) = (key("203.0.113.1"), key("203.0.113.2"));
        t.update(S, S, &[(a, stats(1, TrafficClass::Udp, 10)), (b, stats(1, TrafficClass::Udp, 10))], &[], &[]);
        let mut n = 1;
        while t.len(Direction::Incoming) == 2 {
            n += 1;
            assert!(n <= 2 * FORGET_POLLS, "b never forgotten");
            // a listed each time (unchanged), b never.
            t.update_read(n as u32 * S, S, [(&[(a, stats(1, TrafficClass::Udp, 10))], false), (&[], false)], &[]);
        }
        assert!(n > FORGET_POLLS / 2, "b forgotten after {n} polls");
        assert_eq!(t.len(Direction::Incoming), 1);
    }
}
