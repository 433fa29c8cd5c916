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
}

pub const DROP_REASON_COUNT: usize = 2;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASON_COUNT] = [DropReason::Rule, DropReason::RateLimit];

    pub const fn name(self) -> &'static str {
        match self {
            DropReason::Rule => "rule",
            DropReason::RateLimit => "rate_limit",
        }
    }
}

/// [`RuleSlot::action`]: empty slot.
pub const ACTION_NONE: u8 = 0;
/// [`RuleSlot::action`]: drop every matching packet.
pub const ACTION_DROP: u8 = 1;
/// [`RuleSlot::action`]: admit each source at a rate, drop the excess.
pub const ACTION_RATE_LIMIT: u8 = 2;

/// [`RuleEntry::allow`]: the prefix is on the allowlist; nothing here drops.
pub const ENTRY_ALLOW: u8 = 1;

/// Every class: the mask of a rule with no class scope.
pub const ALL_CLASSES: u32 = (1 << CLASS_COUNT) - 1;

/// One rule, as far as a packet is concerned.
///
/// Rate limits are a GCRA (the token bucket as virtual scheduling): a
/// source's next admission time advances by `interval_ns` per packet (and
/// by `len * byte_interval_ps / 1000` for a byte limit), and a packet is
/// admitted while that time is no more than the tolerance ahead of now.
/// With the coarse clock, "now" moves a tick at a time: the admitted rate
/// over any longer span is exact, and within one tick a source may get up
/// to a tick's worth of packets (pps x 1-10 ms) on top of its burst.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSlot {
    /// Index of the rule's counters in [`RULE_STATS_MAP`]; 0 marks an empty slot.
    pub index: u32,
    /// Bit `c` set: the rule applies to traffic class `c`.
    pub class_mask: u32,
    /// Source port to match; 0 matches any (and portless packets).
    pub sport: u16,
    /// Destination port to match; 0 matches any.
    pub dport: u16,
    pub action: u8,
    pub _pad: [u8; 3],
    /// `CLOCK_MONOTONIC` time after which the slot no longer matches, so a
    /// TTL holds even while no controller runs; 0: never. The program reads
    /// the coarse clock (`bpf_ktime_get_coarse_ns`, one scheduler tick of
    /// resolution, half the cost of the precise one).
    pub expires_ns: u64,
    /// Rate limit: nanoseconds per admitted packet.
    pub interval_ns: u64,
    /// Rate limit: how far ahead of now a source's schedule may run
    /// (the burst, `(burst - 1) * interval_ns`).
    pub tolerance_ns: u64,
    /// Byte limit: picoseconds per admitted byte; 0: no byte limit.
    pub byte_interval_ps: u64,
    /// Byte limit: tolerance in nanoseconds.
    pub byte_tolerance_ns: u64,
}

/// Everything a packet from one prefix can match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleEntry {
    /// [`ENTRY_ALLOW`] when the prefix is allowlisted.
    pub allow: u8,
    pub _pad: [u8; 7],
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

impl RuleSlot {
    /// True when this slot's scope covers a packet of `class` with these ports.
    #[inline(always)]
    pub const fn matches(&self, class: u32, sport: u16, dport: u16) -> bool {
        self.action != ACTION_NONE
            && (self.class_mask >> class) & 1 == 1
            && (self.sport == 0 || self.sport == sport)
            && (self.dport == 0 || self.dport == dport)
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
        assert_eq!(size_of::<RuleSlot>(), 56);
        assert_eq!(offset_of!(RuleSlot, class_mask), 4);
        assert_eq!(offset_of!(RuleSlot, sport), 8);
        assert_eq!(offset_of!(RuleSlot, dport), 10);
        assert_eq!(offset_of!(RuleSlot, action), 12);
        assert_eq!(offset_of!(RuleSlot, expires_ns), 16);
        assert_eq!(offset_of!(RuleSlot, byte_tolerance_ns), 48);
        assert_eq!(size_of::<RuleEntry>(), 8 + 56 * MAX_SLOTS);
        assert_eq!(offset_of!(RuleEntry, slots), 8);
        assert_eq!(size_of::<RuleCounters>(), 32);
        assert_eq!(size_of::<BucketKey>(), 20);
        assert_eq!(offset_of!(BucketKey, addr), 4);
        assert_eq!(size_of::<Bucket>(), 16);
    }

    #[test]
    fn slot_scope() {
        let s = RuleSlot { index: 1, class_mask: 1 << 5, dport: 53, action: ACTION_DROP, ..Default::default() };
        assert!(s.matches(5, 1234, 53));
        assert!(!s.matches(5, 1234, 54));
        assert!(!s.matches(6, 1234, 53));
        let empty = RuleSlot::default();
        assert!(!empty.matches(5, 0, 0));
        let any = RuleSlot { index: 2, class_mask: ALL_CLASSES, action: ACTION_DROP, ..Default::default() };
        for c in 0..CLASS_COUNT as u32 {
            assert!(any.matches(c, 0, 0));
        }
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
