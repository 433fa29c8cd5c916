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

pub use crate::sketch::{Hot, HotStep, HOT_NONE};
use crate::{class::CLASS_COUNT, maps::ClassCounters};

/// LPM trie: `lpm_trie::Key<[u8; 16]>` (the address IPv4-mapped as in
/// [`crate::maps::SourceKey`], the prefix length over 128 bits: IPv4 /n is
/// 96 + n) to [`ProtectedNet`].
pub const PROTECTED_MAP: &str = "PROTECTED";
/// Array of one [`TargetControl`]: the map the loader makes of the
/// counting object's section of that name, where the programs' global
/// `TARGET_CONTROL` lies alone.
pub const TARGET_CONTROL_MAP: &str = ".bss.targets";
/// LRU per-CPU hash of [`crate::maps::SourceKey`] (a protected destination)
/// to [`TargetStats`]: traffic to it.
pub const TARGETS_IN_MAP: &str = "TARGETS_IN";
/// The same for traffic from a protected address (the egress program).
pub const TARGETS_OUT_MAP: &str = "TARGETS_OUT";
/// Array of [`GROUPS_PER_CPU`] [`TargetStats`] per possible CPU, indexed by
/// the CPU's id and then [`group_index`]. Sized by the loader; CPU-indexed
/// rather than per-CPU for the reason [`crate::maps::PARSED_MAP`] gives
/// (every packet to a protected address counts in it).
pub const GROUP_STATS_MAP: &str = "GROUP_STATS";
/// A CPU's entries of [`GROUP_STATS_MAP`]: per group, both directions.
pub const GROUPS_PER_CPU: u32 = MAX_HOSTGROUPS * 2;
/// Per-CPU array of `2 * SKETCH_BLOCKS` [`crate::sketch::SketchBlock`]s:
/// the incoming sketch's blocks, then the outgoing one's.
pub const TARGET_SKETCH_MAP: &str = "TARGET_SKETCH";
/// The index in the counting program's window map
/// ([`crate::maps::WINDOW_MAP`]) of `direction`'s window.
#[inline(always)]
pub const fn target_window(direction: u32) -> u32 {
    1 + direction
}

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
/// [`TargetStats`] (272 bytes) per possible CPU per entry: 16,384 entries
/// cost about 4.5 MB per CPU per direction, the order of the per-source
/// map's (16,384 × 144 bytes per CPU).
pub const DEFAULT_MAX_TARGETS: u32 = 16_384;

/// Which way a packet goes, seen from the protected networks: the offset
/// in a group's pair of [`GROUP_STATS_MAP`] entries, and the window/sketch
/// of [`target_window`] and [`TARGET_SKETCH_MAP`].
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

/// Words of [`TargetControl::v4`] and [`TargetControl::v6`]: one bit per
/// IPv4 /16, and one per hash bucket of IPv6 /32s.
pub const FILTER_WORDS: usize = 1024;
const FILTER_BITS: u32 = (FILTER_WORDS * 64) as u32;

/// What the programs read first, per packet, in one array lookup.
///
/// `enabled`: the trie is read only when the controller installed at least
/// one prefix, so a host not in network mode pays this one read.
///
/// The prefilter (`v4`, `v6`, `v6_all`) says which destinations may be
/// protected: a bit per IPv4 /16 that overlaps a protected prefix, a bit per
/// hash bucket of the IPv6 /32s that do (or `v6_all` when an IPv6 prefix is
/// shorter than /32). A destination whose bit is clear is not protected,
/// and costs no trie lookup; a set bit may be a false positive (a bucket
/// shared, or a /16 only partly protected), which the trie settles. See
/// [`TargetControl::may_protect`] and [`TargetControl::add_prefix`].
///
/// `generation` changes whenever the protected set does: the per-CPU cache
/// of destination to group ([`CacheSlot`]) holds entries of one generation.
///
/// `key_v4` and `key_v6` mask an address down to its cache key
/// ([`TargetControl::cache_key`]): its first L bits, L the longest protected
/// prefix of its family (at least /96 for IPv4-mapped addresses, so a key
/// keeps its family). The trie's answer depends on those bits only, so every
/// address of a key has the same group, and a flood sprayed over a protected
/// /16 of /24s hits the cache 256 keys wide instead of missing it with
/// every new address.
///
/// `cache_seed` keys the cache's slots ([`cache_slot`]), so which keys share
/// a slot cannot be worked out from outside; the controller draws it at
/// random. Here rather than in the sketches' load-time key: this value is
/// read by every packet anyway, and the seed then costs no cache line of
/// its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetControl {
    pub enabled: u32,
    pub generation: u32,
    pub v6_all: u32,
    pub cache_seed: u32,
    /// In the first cache line, with the fields every packet reads.
    pub key_v4: [u64; 2],
    pub key_v6: [u64; 2],
    pub v4: [u64; FILTER_WORDS],
    pub v6: [u64; FILTER_WORDS],
}

impl TargetControl {
    /// Nothing protected (the XDP program's global starts so).
    pub const ZERO: TargetControl = TargetControl {
        enabled: 0,
        generation: 0,
        v6_all: 0,
        cache_seed: 0,
        v4: [0; FILTER_WORDS],
        v6: [0; FILTER_WORDS],
        key_v4: [0; 2],
        key_v6: [0; 2],
    };
}

impl Default for TargetControl {
    fn default() -> Self {
        TargetControl::ZERO
    }
}

/// The first `len` bits of 128 set, as the parser's words (native order of
/// the address's bytes).
#[inline(always)]
pub fn prefix_mask(len: u32) -> [u64; 2] {
    let mut b = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let from = i as u32 * 8;
        b[i] = if len >= from + 8 {
            0xff
        } else if len > from {
            0xffu8 << (8 - (len - from))
        } else {
            0
        };
        i += 1;
    }
    [
        u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        u64::from_ne_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
    ]
}

/// An address's first eight bytes as the parser loads them (native order):
/// the IPv4-mapped prefix `::ffff:0:0/96` spans both words.
#[inline(always)]
fn mapped_v4(words: &[u64; 2]) -> bool {
    words[0] == 0 && words[1] as u32 == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// An IPv4-mapped address's /16 (its first two octets).
#[inline(always)]
fn v4_slot(words: &[u64; 2]) -> u32 {
    let b = words[1].to_ne_bytes();
    ((b[4] as u32) << 8) | b[5] as u32
}

/// The bucket of an IPv6 address's /32.
#[inline(always)]
fn v6_slot(words: &[u64; 2]) -> u32 {
    let b = words[0].to_ne_bytes();
    let top = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    top.wrapping_mul(0x9e37_79b1) >> 16
}

#[inline(always)]
fn bit(map: &[u64; FILTER_WORDS], slot: u32) -> bool {
    let slot = slot % FILTER_BITS;
    map[(slot / 64) as usize] & (1u64 << (slot % 64)) != 0
}

#[inline(always)]
fn set_bit(map: &mut [u64; FILTER_WORDS], slot: u32) {
    let slot = slot % FILTER_BITS;
    map[(slot / 64) as usize] |= 1u64 << (slot % 64);
}

impl TargetControl {
    /// False when the address (the parser's words of an IPv4-mapped or
    /// IPv6 address) is inside no protected prefix; true when it may be.
    #[inline(always)]
    pub fn may_protect(&self, words: &[u64; 2]) -> bool {
        if mapped_v4(words) {
            bit(&self.v4, v4_slot(words))
        } else {
            self.v6_all != 0 || bit(&self.v6, v6_slot(words))
        }
    }

    /// The cache key of an address (the parser's words): its first bits, as
    /// many as the longest protected prefix of its family has. Addresses
    /// with one key have one group (see the type's documentation).
    #[inline(always)]
    pub fn cache_key(&self, words: &[u64; 2]) -> [u64; 2] {
        let m = if mapped_v4(words) { &self.key_v4 } else { &self.key_v6 };
        [words[0] & m[0], words[1] & m[1]]
    }

    /// Lets the addresses of a protected prefix through the prefilter: the
    /// trie's key (`addr` IPv4-mapped for IPv4, `len` over 128 bits).
    pub fn add_prefix(&mut self, addr: [u8; 16], len: u32) {
        let words = [
            u64::from_ne_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]),
            u64::from_ne_bytes([addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15]]),
        ];
        // The key masks: the longest prefix of each family. A prefix
        // shorter than /96 that covers IPv4-mapped addresses is within
        // IPv4's floor of /96; one inside ::ffff:0:0/96 is IPv4's alone.
        let mask = prefix_mask(len.min(128));
        let v4_floor = prefix_mask(96);
        self.key_v4 = [self.key_v4[0] | v4_floor[0], self.key_v4[1] | v4_floor[1]];
        if len >= 96 && mapped_v4(&words) {
            self.key_v4 = [self.key_v4[0] | mask[0], self.key_v4[1] | mask[1]];
        } else {
            self.key_v6 = [self.key_v6[0] | mask[0], self.key_v6[1] | mask[1]];
        }
        if len >= 96 && mapped_v4(&words) {
            let first = v4_slot(&words);
            let bits = len - 96;
            if bits >= 16 {
                set_bit(&mut self.v4, first);
            } else {
                let span = 1u32 << (16 - bits);
                let base = first & !(span - 1);
                for i in 0..span {
                    set_bit(&mut self.v4, base | i);
                }
            }
        } else if len >= 32 {
            set_bit(&mut self.v6, v6_slot(&words));
        } else {
            self.v6_all = 1;
        }
    }
}

/// Array of `2 * CACHE_SLOTS` [`CacheSlot`]s per possible CPU, indexed by
/// the CPU's id and then [`cache_slot`]: the incoming program's, then the
/// egress program's. Sized by the loader; CPU-indexed rather than per-CPU
/// for the reason [`crate::maps::PARSED_MAP`] gives.
pub const TARGET_CACHE_MAP: &str = "TARGET_CACHE";
/// Slots of one direction's cache.
pub const CACHE_SLOTS: u32 = 1024;
/// A cached "not protected": the prefilter let the address through, the
/// trie did not hold it.
pub const CACHE_NONE: u32 = u32::MAX;

/// One slot of a CPU's direct-mapped cache of destination (or source,
/// egress) to host group, in front of the trie: a flood at a few addresses,
/// or sprayed over a few protected prefixes, looks each key up once per
/// generation. An array lookup is inlined by the verifier, a trie's is a
/// helper call that walks the trie.
///
/// A slot also holds the heavy address of its key, if it has one (see
/// [`Hot`]): a cache line in all.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheSlot {
    /// The cache key ([`TargetControl::cache_key`]).
    pub addr: [u64; 2],
    /// The [`TargetControl::generation`] it was filled in; 0 is never one.
    pub generation: u32,
    /// The group, or [`CACHE_NONE`].
    pub group: u32,
    /// The key's heavy address on this CPU, if it has one.
    pub hot: Hot,
}

/// The cache slot of a cache key ([`TargetControl::cache_key`]): one
/// multiply of its words, keyed by `seed` ([`TargetControl::cache_seed`]),
/// top bits.
#[inline(always)]
pub fn cache_slot(key: &[u64; 2], seed: u32, direction: u32) -> u32 {
    let h = (key[0] ^ key[1].rotate_left(29) ^ (seed as u64) << 32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    direction * CACHE_SLOTS + ((h >> 54) as u32 & (CACHE_SLOTS - 1))
}

/// Per-CPU array of the keys of four rings, ring [`dirty_index`] (see
/// [`crate::maps::chunk_of`]): per direction, the ring for windows of even
/// epochs and the one for odd ones, so the controller reads a finished
/// window's while the program fills the next. Their heads are in the
/// direction's window ([`target_window`]).
pub const TARGET_DIRTY_MAP: &str = "TARGET_DIRTY";
pub use crate::maps::{chunk_of, DirtyChunk, DirtyHead, DIRTY_CHUNKS, DIRTY_KEYS};

/// The [`TARGET_DIRTY_MAP`] ring of `direction` for `epoch`.
#[inline(always)]
pub const fn dirty_index(direction: u32, epoch: u32) -> u32 {
    direction * 2 + crate::maps::ring_of(epoch)
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
    /// Per CPU: the window (sketch epoch) this CPU last counted in the
    /// entry; when it moves, the address goes into the window's
    /// ring ([`DirtyHead`]). Unused in [`GROUP_STATS_MAP`].
    pub epoch: u32,
    pub _pad: u64,
    /// Per class, its packets beside its bytes: one cache line for a
    /// packet's two additions (the pair is sixteen bytes at a multiple of
    /// sixteen).
    pub counts: [ClassCounters; CLASS_COUNT],
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ProtectedNet {}
    unsafe impl aya::Pod for super::TargetControl {}
    unsafe impl aya::Pod for super::TargetStats {}
    unsafe impl aya::Pod for super::CacheSlot {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::mem::{offset_of, size_of};
    use std::vec::Vec;

    #[test]
    fn layouts() {
        assert_eq!(size_of::<ProtectedNet>(), 4);
        assert_eq!(size_of::<TargetControl>(), 48 + 16 * FILTER_WORDS);
        assert_eq!(offset_of!(TargetControl, key_v4), 16);
        assert_eq!(offset_of!(TargetControl, key_v6), 32);
        assert_eq!(offset_of!(TargetControl, v4), 48);
        assert_eq!(size_of::<CacheSlot>(), 64);
        assert_eq!(offset_of!(CacheSlot, hot), 24);

        assert_eq!(offset_of!(TargetStats, epoch), 4);
        assert_eq!(offset_of!(CacheSlot, generation), 16);
        assert_eq!(size_of::<TargetStats>(), 16 + 16 * CLASS_COUNT);
        assert_eq!(offset_of!(TargetStats, counts), 16);
    }

    #[test]
    fn group_indexes_are_dense_pairs() {
        assert_eq!(group_index(0, DIRECTION_IN), 0);
        assert_eq!(group_index(0, DIRECTION_OUT), 1);
        assert_eq!(group_index(MAX_HOSTGROUPS - 1, DIRECTION_OUT), 2 * MAX_HOSTGROUPS - 1);
        assert_eq!(group_index(MAX_HOSTGROUPS - 1, DIRECTION_OUT), GROUPS_PER_CPU - 1);
    }

    fn words(a: [u8; 16]) -> [u64; 2] {
        [u64::from_ne_bytes(a[..8].try_into().unwrap()), u64::from_ne_bytes(a[8..].try_into().unwrap())]
    }

    fn v4(o: [u8; 4]) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&o);
        a
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn the_prefilter_lets_every_protected_address_through() {
        let mut c = TargetControl::default();
        c.add_prefix(v4([10, 1, 2, 0]), 96 + 24);
        c.add_prefix(v4([172, 16, 0, 0]), 96 + 12);
        c.add_prefix(v4([192, 0, 2, 7]), 128);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c.add_prefix(v6, 64);
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            let r = xorshift(&mut s).to_ne_bytes();
            assert!(c.may_protect(&words(v4([10, 1, 2, r[0]]))));
            assert!(c.may_protect(&words(v4([172, 16 + (r[1] & 15), r[2], r[3]]))));
            let mut a = v6;
            a[8..].copy_from_slice(&r);
            assert!(c.may_protect(&words(a)));
        }
        assert!(c.may_protect(&words(v4([192, 0, 2, 7]))));
        // Outside: other /16s, other IPv6 /32s (none shares the bucket here).
        assert!(!c.may_protect(&words(v4([10, 2, 0, 1]))));
        assert!(!c.may_protect(&words(v4([172, 32, 0, 1]))));
        assert!(!c.may_protect(&words(v4([198, 51, 100, 1]))));
        let mut other = v6;
        other[3] = 0xb9;
        assert!(!c.may_protect(&words(other)));
        // A v6 prefix shorter than /32 opens IPv6 to the trie.
        c.add_prefix([0x20, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 16);
        assert!(c.may_protect(&words(other)));
        assert!(!c.may_protect(&words(v4([198, 51, 100, 1]))));
    }

    #[test]
    fn an_ipv4_slash_eight_sets_its_256_slash_sixteens_only() {
        let mut c = TargetControl::default();
        c.add_prefix(v4([10, 0, 0, 0]), 96 + 8);
        let set: u32 = c.v4.iter().map(|w| w.count_ones()).sum();
        assert_eq!(set, 256);
        assert!(c.may_protect(&words(v4([10, 255, 1, 1]))));
        assert!(!c.may_protect(&words(v4([11, 0, 0, 1]))));
        assert_eq!(c.v6.iter().map(|w| w.count_ones()).sum::<u32>(), 0);
    }

    #[test]
    fn windows_follow_the_source_window() {
        assert_eq!(crate::maps::SOURCE_WINDOW, 0);
        assert_eq!(target_window(DIRECTION_IN), 1);
        assert_eq!(target_window(DIRECTION_OUT), 2);
        assert_eq!(crate::maps::WINDOWS, 3);
    }

    #[test]
    fn dirty_rings_alternate_per_direction() {
        assert_eq!(dirty_index(DIRECTION_IN, 6), 0);
        assert_eq!(dirty_index(DIRECTION_IN, 7), 1);
        assert_eq!(dirty_index(DIRECTION_OUT, 6), 2);
        assert_eq!(dirty_index(DIRECTION_OUT, 7), 3);
    }

    #[test]
    fn cache_slots_stay_in_their_direction() {
        for k in [[0u64, 0], [u64::MAX, u64::MAX], [1 << 54, 7], [0x1234_5678_9abc_def0, 1]] {
            for seed in [0, u32::MAX, 0x5555] {
                assert!(cache_slot(&k, seed, DIRECTION_IN) < CACHE_SLOTS);
                let out = cache_slot(&k, seed, DIRECTION_OUT);
                assert!((CACHE_SLOTS..2 * CACHE_SLOTS).contains(&out));
            }
        }
    }

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(0), [0, 0]);
        assert_eq!(prefix_mask(128), [u64::MAX, u64::MAX]);
        assert_eq!(prefix_mask(64), [u64::MAX, 0]);
        let m = prefix_mask(96 + 20);
        let bytes: Vec<u8> = m.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, [[0xffu8; 14].as_slice(), &[0xf0, 0]].concat());
    }

    /// The longest match of `a` among `nets` (address as a big-endian
    /// u128, length, group): the trie's answer.
    fn lpm(nets: &[(u128, u32, u32)], a: u128) -> Option<u32> {
        let m = |len: u32| if len == 0 { 0 } else { u128::MAX << (128 - len) };
        nets.iter().filter(|(p, len, _)| a & m(*len) == *p & m(*len)).max_by_key(|(_, len, _)| *len).map(|n| n.2)
    }

    fn words_of(a: u128) -> [u64; 2] {
        words(a.to_be_bytes())
    }

    #[test]
    fn addresses_with_one_cache_key_have_one_group() {
        let mapped = |o: u32| (0xffffu128 << 32) | o as u128;
        let mut s = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200 {
            // A random protected set of both families (and, now and then,
            // a short IPv6 prefix that covers the IPv4-mapped space).
            let mut c = TargetControl::default();
            let mut nets = Vec::new();
            for i in 0..(1 + xorshift(&mut s) % 6) {
                let (addr, len) = if i % 2 == 0 {
                    (mapped(xorshift(&mut s) as u32), 96 + 8 + (xorshift(&mut s) % 25) as u32)
                } else if round % 10 == 0 && i == 1 {
                    (0, (xorshift(&mut s) % 80) as u32)
                } else {
                    ((0x2001_0db8u128 << 96) | (xorshift(&mut s) as u128) << 32, 16 + (xorshift(&mut s) % 113) as u32)
                };
                let m = if len == 0 { 0 } else { u128::MAX << (128 - len) };
                c.add_prefix((addr & m).to_be_bytes(), len);
                nets.push((addr & m, len, i as u32));
            }
            // Addresses in and around them, and each with random bits
            // changed past its family's key length: same key, same group.
            for _ in 0..200 {
                let (p, len, _) = nets[(xorshift(&mut s) % nets.len() as u64) as usize];
                let noise = (xorshift(&mut s) as u128) << 64 | xorshift(&mut s) as u128;
                let shift = (len + (xorshift(&mut s) % 8) as u32).min(128);
                let a = if shift == 128 { p } else { p | (noise >> shift) };
                let key = c.cache_key(&words_of(a));
                let b = {
                    let mask = if mapped_v4(&words_of(a)) { c.key_v4 } else { c.key_v6 };
                    let m = u128::from_be_bytes(
                        [mask[0].to_ne_bytes(), mask[1].to_ne_bytes()].concat().try_into().unwrap(),
                    );
                    (a & m) | (noise.rotate_left(17) & !m)
                };
                // b keeps a's family: the mask keeps at least /96 of a
                // mapped address, and a's key bits of an IPv6 one.
                assert_eq!(c.cache_key(&words_of(b)), key, "{a:x} {b:x}");
                assert_eq!(lpm(&nets, a), lpm(&nets, b), "{a:x} and {b:x} share key {key:x?}: {nets:x?}");
            }
        }
    }

    #[test]
    fn keys_of_the_two_families_never_meet() {
        let mut c = TargetControl::default();
        c.add_prefix(v4([10, 1, 0, 0]), 96 + 16);
        c.add_prefix([0; 16], 8);
        // An IPv4 key keeps ::ffff:0:0/96 and the /16; an IPv6 one, here,
        // its first 8 bits, so never the 0xffff of a mapped address.
        let a = c.cache_key(&words(v4([10, 1, 2, 3])));
        assert_eq!(a, words(v4([10, 1, 0, 0])));
        let v6 = c.cache_key(&words([0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]));
        assert_eq!(v6, [0, 0]);
        assert_ne!(v6, a);
    }
}
