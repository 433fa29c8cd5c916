//! Network mode: per-destination counting. Map names, keys and values.
//!
//! The controller installs the protected networks: prefixes, each in a host
//! group (`0..MAX_HOSTGROUPS`). A packet whose destination (ingress) or
//! source (egress) is inside one is counted exactly in its group's totals
//! ([`GROUP_STATS_MAP`]), and per address ([`TARGETS_IN_MAP`],
//! [`TARGETS_OUT_MAP`]) behind a heavy-hitter sketch of its own, run as the
//! per-source one is (see [`crate::sketch`]): a flood sprayed over a whole
//! prefix leaves the per-address maps nearly empty while the group totals
//! stay exact.

use crate::class::CLASS_COUNT;

/// LPM trie: `lpm_trie::Key<[u8; 16]>` (the address IPv4-mapped as in
/// [`crate::maps::SourceKey`], the prefix length over 128 bits: IPv4 /n is
/// 96 + n) to [`ProtectedNet`].
pub const PROTECTED_MAP: &str = "PROTECTED";
/// Array of one [`TargetControl`].
pub const TARGET_CONTROL_MAP: &str = "TARGET_CONTROL";
/// LRU per-CPU hash of [`crate::maps::SourceKey`] (a protected destination)
/// to [`TargetStats`]: traffic to it.
pub const TARGETS_IN_MAP: &str = "TARGETS_IN";
/// The same for traffic from a protected address (the egress program).
pub const TARGETS_OUT_MAP: &str = "TARGETS_OUT";
/// Per-CPU array of [`TargetStats`], index [`group_index`].
pub const GROUP_STATS_MAP: &str = "GROUP_STATS";
/// Per-CPU array of `2 * SKETCH_DEPTH` [`crate::sketch::SketchRow`]s: the
/// incoming sketch's rows, then the outgoing one's.
pub const TARGET_SKETCH_MAP: &str = "TARGET_SKETCH";
/// Per-CPU array of two [`crate::sketch::Window`]s: incoming, outgoing.
pub const TARGET_WINDOW_MAP: &str = "TARGET_WINDOW";

/// Host groups: group ids are `0..MAX_HOSTGROUPS`.
pub const MAX_HOSTGROUPS: u32 = 64;
/// Capacity of [`PROTECTED_MAP`] (allocated per entry, not up front).
pub const MAX_PROTECTED: u32 = 16_384;

/// Default capacity of each of [`TARGETS_IN_MAP`] and [`TARGETS_OUT_MAP`];
/// the controller may override it.
///
/// An address enters the map only when its sketch estimate reaches
/// [`crate::sketch::ADMIT_MIN`] plus 1/[`crate::sketch::ADMIT_DIVISOR`] of
/// its CPU's packets in the window, so no more than about 2048 addresses
/// per CPU are admitted in one poll window, and a carpet-bombing flood,
/// whose addresses each carry a tiny share, admits almost none. The map
/// holds the heavy addresses of the last `idle_after` (the tracker removes
/// idle ones; LRU evicts the oldest past this). Memory is preallocated, one
/// [`TargetStats`] (264 bytes) per possible CPU per entry: 16,384 entries
/// cost about 4.3 MB per CPU per direction, the order of the per-source
/// map's (16,384 × 144 bytes per CPU).
pub const DEFAULT_MAX_TARGETS: u32 = 16_384;

/// Which way a packet goes, seen from the protected networks: the offset
/// in a group's pair of [`GROUP_STATS_MAP`] entries, and the window/sketch
/// of [`TARGET_WINDOW_MAP`] and [`TARGET_SKETCH_MAP`].
pub const DIRECTION_IN: u32 = 0;
pub const DIRECTION_OUT: u32 = 1;

/// The [`GROUP_STATS_MAP`] index of `group`'s totals in `direction`.
#[inline(always)]
pub const fn group_index(group: u32, direction: u32) -> u32 {
    group * 2 + direction
}

/// The value of a protected prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtectedNet {
    /// Its host group, `< MAX_HOSTGROUPS`.
    pub group: u32,
}

/// Whether the programs look destinations up at all: the trie is read
/// only when the controller installed at least one prefix, so a host not
/// in network mode pays one array read per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetControl {
    pub enabled: u32,
}

/// Cumulative packets and bytes (whole frame) per class, one copy per CPU.
///
/// Per address: `group` is the address's group when the entry was written
/// (set by every CPU that counts in it; the other CPUs' copies hold 0), so
/// userspace needs no trie lookup: it takes the largest over CPUs. In
/// [`GROUP_STATS_MAP`], `group` is unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetStats {
    pub group: u32,
    pub _pad: u32,
    pub packets: [u64; CLASS_COUNT],
    pub bytes: [u64; CLASS_COUNT],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ProtectedNet {}
    unsafe impl aya::Pod for super::TargetControl {}
    unsafe impl aya::Pod for super::TargetStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layouts() {
        assert_eq!(size_of::<ProtectedNet>(), 4);
        assert_eq!(size_of::<TargetControl>(), 4);
        assert_eq!(size_of::<TargetStats>(), 8 + 16 * CLASS_COUNT);
        assert_eq!(offset_of!(TargetStats, packets), 8);
        assert_eq!(offset_of!(TargetStats, bytes), 8 + 8 * CLASS_COUNT);
    }

    #[test]
    fn group_indexes_are_dense_pairs() {
        assert_eq!(group_index(0, DIRECTION_IN), 0);
        assert_eq!(group_index(0, DIRECTION_OUT), 1);
        assert_eq!(group_index(MAX_HOSTGROUPS - 1, DIRECTION_OUT), 2 * MAX_HOSTGROUPS - 1);
    }
}
