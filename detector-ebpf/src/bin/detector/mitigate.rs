//! The mitigation verdict: one LPM lookup on the source, then the entry's
//! slots in order (see `detector_common::rules`). Nothing here decides what
//! the rules are; the controller writes them.
//!
//! A slot that matches decides. Its action is skipped (the packet passes,
//! counted as passed) for an allowlisted prefix, and for a known-good
//! source when the slot spares them (rules that do not name a source).

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use detector_common::{
    known::{KnownPeer, DEFAULT_MAX_KNOWN, KNOWN_BY_HANDSHAKE},
    maps::{ClassStats, SourceKey},
    rules::{
        gcra, Bucket, BucketKey, DropReason, PacketKey, PrefixData, RuleCounters, RuleEntry, RuleSlot, ACTION_DROP,
        ACTION_RATE_LIMIT, ACTION_SYN_COOKIES, DEFAULT_MAX_BUCKETS, DEFAULT_MAX_RULES, ENTRY_ALLOW, MAX_SLOTS,
        SLOT_AGGREGATE, SLOT_DST, SLOT_SPARE_KNOWN,
    },
};

use crate::{parse::Parsed, program::epoch, syncookie};

/// Learns `src` (the parser's words) as a peer that completed a
/// handshake, and says so in this CPU's cache (where it may be cached as
/// unknown for the rest of the poll): its next segments, on this CPU as
/// a flow's are, count as `tcp_established` at once.
#[inline(always)]
pub fn learn_handshake(src: &[u64; 2]) {
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let peer = KnownPeer { last_ns: now, how: KNOWN_BY_HANDSHAKE, _pad: 0 };
    // SAFETY: two u64 are sixteen bytes.
    let addr = unsafe { *(src as *const [u64; 2] as *const [u8; 16]) };
    let _ = KNOWN_PEERS.insert(&SourceKey { addr }, &peer, BPF_NOEXIST as u64);
    if let Some(c) = PEER_CACHE.get_ptr_mut(cache_slot(src)) {
        unsafe {
            (*c).addr = *src;
            (*c).epoch = epoch().wrapping_add(1);
            (*c).known = 1;
        }
    }
}

/// Source prefix to the rules that cover it (and its allowlist flag).
#[map]
static RULES: LpmTrie<PrefixData, RuleEntry> =
    LpmTrie::with_max_entries(DEFAULT_MAX_RULES * 2, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Non-zero while any rule is in force.
#[map]
static RULES_ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Per rule index: dropped and passed packets and bytes.
#[map]
static RULE_STATS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(DEFAULT_MAX_RULES + 1, 0);

/// Per (rate-limit rule, source): the source's schedule.
#[map]
static BUCKETS: LruHashMap<BucketKey, Bucket> = LruHashMap::with_max_entries(DEFAULT_MAX_BUCKETS, 0);

/// Per aggregate rate-limit rule index: the rule's one schedule.
#[map]
static AGGREGATE: Array<Bucket> = Array::with_max_entries(DEFAULT_MAX_RULES + 1, 0);

/// The host's real peers (see `detector_common::known`).
#[map]
pub static KNOWN_PEERS: LruHashMap<SourceKey, KnownPeer> = LruHashMap::with_max_entries(DEFAULT_MAX_KNOWN, 0);

/// CAS attempts on a shared bucket before giving up on the packet (dropped:
/// under that much contention the source is far over any limit).
const CAS_TRIES: usize = 4;

/// The packet's fate under the rules: `XDP_PASS`, `XDP_DROP`, or `XDP_TX`
/// (a SYN answered with a cookie, the frame rewritten into the SYN-ACK). A
/// drop is counted in `stats`, the packet's class entry.
#[inline(always)]
pub fn verdict(ctx: &XdpContext, p: &Parsed, src: &[u8; 16], len: u64, stats: *mut ClassStats) -> u32 {
    // An array read, against a trie walk: peacetime traffic pays nothing more.
    if RULES_ACTIVE.get(0).copied().unwrap_or(0) == 0 {
        return xdp_action::XDP_PASS;
    }
    let Some(entry) = RULES.get(Key::new(128, *src)) else {
        return xdp_action::XDP_PASS;
    };
    let k = PacketKey {
        class: p.class as u32,
        sport: p.ports.src,
        dport: p.ports.dst,
        len: if len > 0xffff { 0xffff } else { len as u16 },
        ttl: p.ttl,
    };
    // First the slot that decides (cheap checks only), then its action,
    // written once: the verifier walks the action's branches once, not
    // once per slot.
    let mut now = 0u64;
    let mut found = MAX_SLOTS;
    let mut i = 0;
    while i < MAX_SLOTS {
        let s = &entry.slots[i];
        if s.index == 0 {
            // Slots are packed: the first empty one ends the list.
            break;
        }
        if s.matches(&k) && (s.flags & SLOT_DST == 0 || s.covers_dst(&p.dst)) {
            if s.expires_ns == 0 {
                found = i;
                break;
            }
            if now == 0 {
                now = unsafe { bpf_ktime_get_coarse_ns() };
            }
            if now < s.expires_ns {
                found = i;
                break;
            }
        }
        i += 1;
    }
    if found >= MAX_SLOTS {
        return xdp_action::XDP_PASS;
    }
    let s = &entry.slots[found];
    if s.action == ACTION_SYN_COOKIES {
        return syn_cookies(ctx, s, entry.allow == ENTRY_ALLOW, src, len, stats);
    }
    let spared = entry.allow == ENTRY_ALLOW || (s.flags & SLOT_SPARE_KNOWN != 0 && is_known(src));
    if s.action == ACTION_RATE_LIMIT && now == 0 {
        now = unsafe { bpf_ktime_get_coarse_ns() };
    }
    let drop = !spared
        && match s.action {
            ACTION_DROP => true,
            ACTION_RATE_LIMIT => {
                if s.flags & SLOT_AGGREGATE != 0 {
                    !admit_aggregate(s, len, now)
                } else {
                    !admit(s, src, len, now)
                }
            }
            _ => false,
        };
    count(s, len, drop, stats);
    if drop {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// A SYN-cookie rule's verdict. Any segment it matched from an unknown
/// source, a SYN or one that may carry a cookie back (an ACK, data, a FIN),
/// goes to the SYN-cookie program (see `syncookie`), a tail call: it
/// answers the SYN, or checks the segment's cookie. A known peer's
/// segments pass, its SYNs too: its handshake is the stack's, as in
/// peacetime (its ACKs are `tcp_established`, which SYNPROXY would not
/// see). An allowlisted source is left to the stack. Without the program
/// (never loaded), everything passes.
#[inline(always)]
fn syn_cookies(ctx: &XdpContext, s: &RuleSlot, allowed: bool, src: &[u8; 16], len: u64, stats: *mut ClassStats) -> u32 {
    // The map itself, not this CPU's cached answer: a peer learned by its
    // handshake a moment ago must pass at once (its next segments no
    // longer carry a valid cookie), and a spoofed source misses the cache
    // anyway.
    if !allowed && !is_known(src) {
        syncookie::hand_over(ctx, s.index);
    }
    count(s, len, false, stats);
    xdp_action::XDP_PASS
}

/// True when `src` is a known-good peer.
#[inline(always)]
fn is_known(src: &[u8; 16]) -> bool {
    unsafe { KNOWN_PEERS.get(SourceKey { addr: *src }).is_some() }
}

/// Slots of [`PEER_CACHE`] per CPU (and of the egress program's `SEEN`).
pub(crate) const PEER_CACHE_SLOTS: u32 = 256;

/// One CPU's recent known-peer answers, yes or no, valid for the epoch
/// they were found in (one poll): a bulk transfer's segments come from one
/// peer, as do an unknown sender's, and an array read and a compare cost a
/// fraction of the hash lookup. A spoofed flood misses here and pays the
/// lookup. A peer learned since is seen as one from the next poll on.
#[map]
static PEER_CACHE: PerCpuArray<PeerCacheSlot> = PerCpuArray::with_max_entries(PEER_CACHE_SLOTS, 0);

#[repr(C)]
pub struct PeerCacheSlot {
    pub(crate) addr: [u64; 2],
    /// Epoch + 1 when the answer was found; 0: empty.
    pub(crate) epoch: u32,
    /// 1: known; 0: not.
    pub(crate) known: u32,
}

/// The address's slot (the parser's words) in [`PEER_CACHE`], or in a
/// cache of its layout.
#[inline(always)]
pub(crate) fn cache_slot(src: &[u64; 2]) -> u32 {
    let h = (src[0] ^ src[1]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 56) as u32 % PEER_CACHE_SLOTS
}

/// True when the source (as the parser's words) is a known-good peer.
#[inline(always)]
pub fn is_known_peer(src: &[u64; 2]) -> bool {
    let slot = cache_slot(src);
    let epoch = epoch().wrapping_add(1);
    let Some(c) = PEER_CACHE.get_ptr_mut(slot) else {
        return false;
    };
    unsafe {
        if (*c).epoch == epoch && (*c).addr[0] == src[0] && (*c).addr[1] == src[1] {
            return (*c).known != 0;
        }
    }
    // SAFETY: two u64 are sixteen bytes, at an alignment that suits both.
    let known = is_known(unsafe { &*(src as *const [u64; 2] as *const [u8; 16]) });
    unsafe {
        (*c).addr = *src;
        (*c).epoch = epoch;
        (*c).known = known as u32;
    }
    known
}

#[inline(always)]
fn count(s: &RuleSlot, len: u64, drop: bool, stats: *mut ClassStats) {
    count_rule(s.index, s.action, len, drop, stats)
}

/// Counts a verdict of rule `index` (its action `action`) on a packet.
#[inline(always)]
pub fn count_rule(index: u32, action: u8, len: u64, drop: bool, stats: *mut ClassStats) {
    if let Some(c) = RULE_STATS.get_ptr_mut(index) {
        unsafe {
            if drop {
                (*c).dropped_packets += 1;
                (*c).dropped_bytes += len;
            } else {
                (*c).passed_packets += 1;
                (*c).passed_bytes += len;
            }
        }
    }
    if drop {
        let reason = match action {
            ACTION_DROP => DropReason::Rule,
            ACTION_SYN_COOKIES => DropReason::SynCookie,
            _ => DropReason::RateLimit,
        };
        unsafe {
            let d = &mut (*stats).dropped[reason as usize];
            d.packets += 1;
            d.bytes += len;
        }
    }
}

/// Takes one admission from the source's schedule under rule `s`.
#[inline(always)]
fn admit(s: &RuleSlot, src: &[u8; 16], len: u64, now: u64) -> bool {
    let key = BucketKey { index: s.index, addr: *src };
    let b = match BUCKETS.get_ptr_mut(&key) {
        Some(b) => b,
        None => {
            // A new source starts with its burst; NOEXIST keeps a bucket
            // another CPU created a moment ago.
            let _ = BUCKETS.insert(&key, &Bucket { tat_ns: 0, byte_tat_ns: 0 }, BPF_NOEXIST as u64);
            match BUCKETS.get_ptr_mut(&key) {
                Some(b) => b,
                None => return false,
            }
        }
    };
    if !take(unsafe { &raw mut (*b).tat_ns }, now, s.interval_ns, s.tolerance_ns) {
        return false;
    }
    if s.byte_interval_ps != 0 {
        let increment = len * s.byte_interval_ps / 1000;
        return take(unsafe { &raw mut (*b).byte_tat_ns }, now, increment, s.byte_tolerance_ns);
    }
    true
}

/// Takes one admission from an aggregate rule's one schedule.
#[inline(always)]
fn admit_aggregate(s: &RuleSlot, len: u64, now: u64) -> bool {
    let Some(b) = AGGREGATE.get_ptr_mut(s.index) else {
        return false;
    };
    if s.interval_ns != 0 && !take(unsafe { &raw mut (*b).tat_ns }, now, s.interval_ns, s.tolerance_ns) {
        return false;
    }
    if s.byte_interval_ps != 0 {
        let increment = len * s.byte_interval_ps / 1000;
        return take(unsafe { &raw mut (*b).byte_tat_ns }, now, increment, s.byte_tolerance_ns);
    }
    true
}

/// Advances a shared schedule by `increment` if it allows a packet now.
#[inline(always)]
fn take(tat: *mut u64, now: u64, increment: u64, tolerance: u64) -> bool {
    let mut cur = unsafe { core::ptr::read_volatile(tat) };
    let mut tries = 0;
    while tries < CAS_TRIES {
        let Some(next) = gcra(cur, now, increment, tolerance) else {
            return false;
        };
        let seen = unsafe { cmpxchg(tat, cur, next) };
        if seen == cur {
            return true;
        }
        cur = seen;
        tries += 1;
    }
    false
}

/// BPF's atomic compare-and-exchange: writes `new` at `ptr` if it holds
/// `expected`, and returns what it held. The BPF target has no
/// `compare_exchange` in `core`, so the instruction is written out.
#[inline(always)]
unsafe fn cmpxchg(ptr: *mut u64, expected: u64, new: u64) -> u64 {
    let mut r0 = expected;
    unsafe {
        core::arch::asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {n})",
            p = in(reg) ptr,
            n = in(reg) new,
            inout("r0") r0,
        );
    }
    r0
}
