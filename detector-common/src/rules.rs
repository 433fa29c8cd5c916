//! Mitigation rules as the XDP program sees them.
//!
//! The controller compiles its rules and allowlist into one LPM trie keyed
//! by source prefix (see `detector/src/mitigate/plan.rs`). Each trie entry
//! carries everything a packet from that prefix can match: an allowlist
//! flag, and up to [`MAX_SLOTS`] rule slots, already ordered so the first
//! slot that matches decides. One lookup per packet, whatever the number
//! of rules: no loop over rules, no second lookup for the allowlist.

use crate::class::CLASS_COUNT;

/// LPM trie of source prefix (IPv4 mapped into IPv6) to [`RuleEntry`].
pub const RULES_MAP: &str = "RULES";
/// Per-CPU array of [`RuleCounters`], indexed by [`RuleSlot::index`].
pub const RULE_STATS_MAP: &str = "RULE_STATS";
/// LRU hash of [`BucketKey`] to [`Bucket`]: per-source rate-limit state.
pub const BUCKETS_MAP: &str = "BUCKETS";
/// Array of [`Bucket`] indexed like [`RULE_STATS_MAP`]: the schedule of
/// each aggregate rate limit, shared by every CPU.
pub const AGGREGATE_MAP: &str = "AGGREGATE";
/// Array of one `u32`: non-zero while any rule is in force. Without rules
/// nothing can be dropped, so the program skips the trie lookup (the
/// allowlist alone never changes a verdict).
pub const RULES_ACTIVE_MAP: &str = "RULES_ACTIVE";

/// Rule slots per trie entry: the most rules that may cover one prefix.
pub const MAX_SLOTS: usize = 8;
/// Default capacity of rules (and of [`RULE_STATS_MAP`], plus its unused index 0).
pub const DEFAULT_MAX_RULES: u32 = 1024;
/// Default capacity of the allowlist.
pub const DEFAULT_MAX_ALLOW: u32 = 1024;
/// Default number of sources with a live rate-limit bucket.
pub const DEFAULT_MAX_BUCKETS: u32 = 65_536;

/// Why a packet was dropped: the index in [`crate::maps::ClassStats::dropped`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A drop rule matched.
    Rule = 0,
    /// A rate-limit rule matched and the source was over its limit.
    RateLimit = 1,
    /// A SYN-cookie rule matched: a SYN answered from XDP (it never reaches
    /// the stack), or an ACK from an unknown source with no valid cookie.
    SynCookie = 2,
}

pub const DROP_REASON_COUNT: usize = 3;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASON_COUNT] = [DropReason::Rule, DropReason::RateLimit, DropReason::SynCookie];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Rule => "rule",
            DropReason::RateLimit => "rate_limit",
            DropReason::SynCookie => "syn_cookie",
        }
    }
}

/// [`RuleSlot::action`]: empty slot.
pub const ACTION_NONE: u8 = 0;
/// [`RuleSlot::action`]: drop every matching packet.
pub const ACTION_DROP: u8 = 1;
/// [`RuleSlot::action`]: admit each source at a rate, drop the excess.
pub const ACTION_RATE_LIMIT: u8 = 2;
/// [`RuleSlot::action`]: answer SYNs with a SYN cookie from XDP, pass ACKs
/// that carry a valid one (or come from a known peer), drop the rest (see
/// [`crate::syncookie`]).
pub const ACTION_SYN_COOKIES: u8 = 3;

/// [`RuleEntry::allow`]: the prefix is on the allowlist; nothing here drops.
pub const ENTRY_ALLOW: u8 = 1;

/// Every class: the mask of a rule with no class scope.
pub const ALL_CLASSES: u32 = (1 << CLASS_COUNT) - 1;

/// One rule, as far as a packet is concerned.
///
/// Besides the source prefix (the trie's key), a slot matches on class,
/// port ranges, frame length, TTL and destination prefix. Every range is
/// inclusive and always set: "any" is the full range (ports 0-65535, which
/// takes portless packets too), so matching is compares only, with no
/// special case per field.
///
/// Rate limits are a GCRA (the token bucket as virtual scheduling): a
/// schedule's next admission time advances by `interval_ns` per packet (and
/// by `len * byte_interval_ps / 1000` for a byte limit), and a packet is
/// admitted while that time is no more than the tolerance ahead of now.
/// The schedule is per source ([`BUCKETS_MAP`]), or one for the whole rule
/// with [`SLOT_AGGREGATE`] ([`AGGREGATE_MAP`]). With the coarse clock,
/// "now" moves a tick at a time: the admitted rate over any longer span is
/// exact, and within one tick a schedule may get up to a tick's worth of
/// packets (pps x 1-10 ms) on top of its burst.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSlot {
    /// Index of the rule's counters in [`RULE_STATS_MAP`]; 0 marks an empty slot.
    pub index: u32,
    /// Bit `c` set: the rule applies to traffic class `c`.
    pub class_mask: u32,
    pub sport_lo: u16,
    pub sport_hi: u16,
    pub dport_lo: u16,
    pub dport_hi: u16,
    /// Frame length, Ethernet header included.
    pub len_lo: u16,
    pub len_hi: u16,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl_lo: u8,
    pub ttl_hi: u8,
    pub action: u8,
    /// [`SLOT_AGGREGATE`], [`SLOT_SPARE_KNOWN`], [`SLOT_DST`].
    pub flags: u8,
    pub _pad: u32,
    /// Destination prefix, IPv4 mapped into IPv6, as two words in the
    /// packet's byte order; matched when `dst_addr & dst_mask == dst`.
    /// Only read with [`SLOT_DST`].
    pub dst: [u64; 2],
    pub dst_mask: [u64; 2],
    /// `CLOCK_MONOTONIC` time after which the slot no longer matches, so a
    /// TTL holds even while no controller runs; 0: never. The program reads
    /// the coarse clock (`bpf_ktime_get_coarse_ns`, one scheduler tick of
    /// resolution, half the cost of the precise one).
    pub expires_ns: u64,
    /// Rate limit: nanoseconds per admitted packet; 0: no packet limit
    /// (an aggregate limit on bytes alone).
    pub interval_ns: u64,
    /// Rate limit: how far ahead of now a schedule may run
    /// (the burst, `(burst - 1) * interval_ns`).
    pub tolerance_ns: u64,
    /// Byte limit: picoseconds per admitted byte; 0: no byte limit.
    pub byte_interval_ps: u64,
    /// Byte limit: tolerance in nanoseconds.
    pub byte_tolerance_ns: u64,
}

/// [`RuleSlot::flags`]: the rate limit is one budget for every packet the
/// rule matches, kept in [`AGGREGATE_MAP`] at the rule's index.
pub const SLOT_AGGREGATE: u8 = 1;
/// [`RuleSlot::flags`]: a source on the known-good list passes this rule
/// (counted as passed). Set on rules that do not name the source (a /0
/// prefix): a signature or an aggregate limit must not cut off the
/// host's real peers, while a rule against a source prefix applies to it.
pub const SLOT_SPARE_KNOWN: u8 = 2;
/// [`RuleSlot::flags`]: the rule has a destination prefix.
pub const SLOT_DST: u8 = 4;

/// A destination address as [`RuleSlot::dst`] compares it.
#[inline(always)]
pub const fn dst_words(addr: &[u8; 16]) -> [u64; 2] {
    [
        u64::from_ne_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]),
        u64::from_ne_bytes([addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15]]),
    ]
}

/// Everything a packet from one prefix can match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleEntry {
    /// [`ENTRY_ALLOW`] when the prefix is allowlisted.
    pub allow: u8,
    /// Non-zero when a slot has a destination prefix ([`SLOT_DST`]): the
    /// program reads the packet's destination once, before the slots.
    pub dst: u8,
    pub _pad: [u8; 6],
    pub slots: [RuleSlot; MAX_SLOTS],
}

/// The trie's key data: a source address, IPv4 mapped into IPv6 (so an
/// IPv4 /24 is stored with prefix length 96 + 24).
pub type PrefixData = [u8; 16];

/// Per rule, per CPU: what it dropped and what it let through (rate-limit
/// admissions, and packets it matched from an allowlisted source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
}

/// One source under one rate-limit rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BucketKey {
    pub index: u32,
    pub addr: [u8; 16],
}

/// A source's schedule under a rate limit (see [`RuleSlot`]). Updated with
/// compare-and-swap: CPUs share it, so the limit holds per source across
/// CPUs, not per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Theoretical arrival time of the next packet, ns.
    pub tat_ns: u64,
    /// Same, for the byte limit.
    pub byte_tat_ns: u64,
}

/// What a slot matches a packet on, besides its source and destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PacketKey {
    pub class: u32,
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub ttl: u8,
}

impl RuleSlot {
    /// A slot that matches every packet, for the controller to narrow.
    pub const fn any() -> RuleSlot {
        RuleSlot {
            index: 0,
            class_mask: ALL_CLASSES,
            sport_lo: 0,
            sport_hi: u16::MAX,
            dport_lo: 0,
            dport_hi: u16::MAX,
            len_lo: 0,
            len_hi: u16::MAX,
            ttl_lo: 0,
            ttl_hi: u8::MAX,
            action: ACTION_NONE,
            flags: 0,
            _pad: 0,
            dst: [0; 2],
            dst_mask: [0; 2],
            expires_ns: 0,
            interval_ns: 0,
            tolerance_ns: 0,
            byte_interval_ps: 0,
            byte_tolerance_ns: 0,
        }
    }

    /// True when this slot's scope covers the packet, the destination
    /// aside (see [`RuleSlot::covers_dst`]).
    #[inline(always)]
    pub const fn matches(&self, k: &PacketKey) -> bool {
        // One unsigned compare per range: below `lo` wraps above `hi - lo`.
        self.action != ACTION_NONE
            && (self.class_mask >> k.class) & 1 == 1
            && k.sport.wrapping_sub(self.sport_lo) <= self.sport_hi.wrapping_sub(self.sport_lo)
            && k.dport.wrapping_sub(self.dport_lo) <= self.dport_hi.wrapping_sub(self.dport_lo)
            && k.len.wrapping_sub(self.len_lo) <= self.len_hi.wrapping_sub(self.len_lo)
            && k.ttl.wrapping_sub(self.ttl_lo) <= self.ttl_hi.wrapping_sub(self.ttl_lo)
    }

    /// True when the destination (as [`dst_words`]) is in the slot's prefix.
    #[inline(always)]
    pub const fn covers_dst(&self, dst: &[u64; 2]) -> bool {
        dst[0] & self.dst_mask[0] == self.dst[0] && dst[1] & self.dst_mask[1] == self.dst[1]
    }
}

/// The GCRA decision for one packet at `now`, given the schedule `tat`:
/// the new schedule when admitted, `None` when over the limit.
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, increment: u64, tolerance: u64) -> Option<u64> {
    let base = if tat > now { tat } else { now };
    if base - now > tolerance {
        None
    } else {
        Some(base + increment)
    }
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::RuleEntry {}
    unsafe impl aya::Pod for super::RuleCounters {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts() {
        assert_eq!(size_of::<RuleSlot>(), 104);
        assert_eq!(offset_of!(RuleSlot, class_mask), 4);
        assert_eq!(offset_of!(RuleSlot, sport_lo), 8);
        assert_eq!(offset_of!(RuleSlot, dport_lo), 12);
        assert_eq!(offset_of!(RuleSlot, len_lo), 16);
        assert_eq!(offset_of!(RuleSlot, ttl_lo), 20);
        assert_eq!(offset_of!(RuleSlot, action), 22);
        assert_eq!(offset_of!(RuleSlot, flags), 23);
        assert_eq!(offset_of!(RuleSlot, dst), 32);
        assert_eq!(offset_of!(RuleSlot, dst_mask), 48);
        assert_eq!(offset_of!(RuleSlot, expires_ns), 64);
        assert_eq!(offset_of!(RuleSlot, byte_tolerance_ns), 96);
        assert_eq!(size_of::<RuleEntry>(), 8 + 104 * MAX_SLOTS);
        assert_eq!(offset_of!(RuleEntry, slots), 8);
        assert_eq!(size_of::<RuleCounters>(), 32);
        assert_eq!(size_of::<BucketKey>(), 20);
        assert_eq!(offset_of!(BucketKey, addr), 4);
        assert_eq!(size_of::<Bucket>(), 16);
    }

    fn key(class: u32, sport: u16, dport: u16) -> PacketKey {
        PacketKey { class, sport, dport, len: 100, ttl: 64 }
    }

    #[test]
    fn slot_scope() {
        let s = RuleSlot {
            index: 1,
            class_mask: 1 << 5,
            dport_lo: 53,
            dport_hi: 53,
            action: ACTION_DROP,
            ..RuleSlot::any()
        };
        assert!(s.matches(&key(5, 1234, 53)));
        assert!(!s.matches(&key(5, 1234, 54)));
        assert!(!s.matches(&key(6, 1234, 53)));
        let empty = RuleSlot::default();
        assert!(!empty.matches(&key(5, 0, 0)));
        let any = RuleSlot { index: 2, action: ACTION_DROP, ..RuleSlot::any() };
        for c in 0..CLASS_COUNT as u32 {
            assert!(any.matches(&key(c, 0, 0)));
            assert!(any.matches(&PacketKey { class: c, sport: 65535, dport: 65535, len: 65535, ttl: 255 }));
            assert!(any.covers_dst(&dst_words(&[7; 16])));
        }
    }

    #[test]
    fn slot_ranges_are_inclusive() {
        let s = RuleSlot {
            index: 1,
            action: ACTION_DROP,
            sport_lo: 100,
            sport_hi: 200,
            len_lo: 60,
            len_hi: 80,
            ttl_lo: 40,
            ttl_hi: 64,
            ..RuleSlot::any()
        };
        let k = PacketKey { class: 0, sport: 100, dport: 9, len: 60, ttl: 40 };
        assert!(s.matches(&k));
        assert!(s.matches(&PacketKey { sport: 200, len: 80, ttl: 64, ..k }));
        assert!(!s.matches(&PacketKey { sport: 99, ..k }));
        assert!(!s.matches(&PacketKey { sport: 201, ..k }));
        assert!(!s.matches(&PacketKey { len: 81, ..k }));
        assert!(!s.matches(&PacketKey { len: 59, ..k }));
        assert!(!s.matches(&PacketKey { ttl: 39, ..k }));
        assert!(!s.matches(&PacketKey { ttl: 65, ..k }));
    }

    #[test]
    fn destination_prefixes() {
        // 192.0.2.0/24, mapped: the first 12 bytes and 3 of the address.
        let mut mask = [0u8; 16];
        mask[..15].fill(0xff);
        let mut net = [0u8; 16];
        net[10] = 0xff;
        net[11] = 0xff;
        net[12..15].copy_from_slice(&[192, 0, 2]);
        let s = RuleSlot { dst: dst_words(&net), dst_mask: dst_words(&mask), ..RuleSlot::any() };
        let mut a = net;
        a[15] = 77;
        assert!(s.covers_dst(&dst_words(&a)));
        a[14] = 3;
        assert!(!s.covers_dst(&dst_words(&a)));
    }

    #[test]
    fn gcra_admits_the_rate_and_the_burst() {
        // 10 packets per second, burst 3.
        let interval = 100_000_000;
        let tolerance = 2 * interval;
        let mut tat = 0;
        let now = 1_000_000_000;
        let mut admitted = 0;
        for _ in 0..10 {
            if let Some(t) = gcra(tat, now, interval, tolerance) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 3, "a burst of back-to-back packets admits the burst size");
        // Over one more second at a high offered rate: 10 more.
        let mut admitted = 0;
        for i in 1..=1000u64 {
            if let Some(t) = gcra(tat, now + i * 1_000_000, interval, tolerance) {
                tat = t;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn gcra_on_a_coarse_clock_keeps_the_rate() {
        // 1000 pps, burst 5, a clock that moves 4 ms at a time, a source
        // sending 100 times that: over 10 s it gets 10 s worth plus the burst.
        let (interval, tolerance, tick) = (1_000_000, 4_000_000, 4_000_000);
        let mut tat = 0;
        let mut admitted = 0u64;
        for i in 0..1_000_000u64 {
            let precise = 1_000_000_000 + i * 10_000;
            let now = precise - precise % tick;
            if let Some(t) = gcra(tat, now, interval, tolerance) {
                tat = t;
                admitted += 1;
            }
        }
        assert!((10_000..=10_010).contains(&admitted), "{admitted}");
    }
}
