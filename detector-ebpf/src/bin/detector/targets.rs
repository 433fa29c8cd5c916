//! Network mode: counting per protected address and per host group (see
//! `detector_common::targets`). The XDP program counts what comes in to a
//! protected destination, the egress program what a protected source
//! sends. Never changes a verdict.
//!
//! Stack use is a few words: the trie key and the entry a new address is
//! inserted with are built in a per-CPU scratch value, and the address is
//! read through a pointer (into the parser's findings that each program
//! keeps in a map: `PARSED`, `EGRESS_PARSED`).

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{lpm_trie::Key, Array, LpmTrie, LruPerCpuHashMap, PerCpuArray},
};
use detector_common::{
    maps::{ring_of, SourceKey},
    sketch::{self, SketchBlock, Window, EPOCH_MASK, SKETCH_BLOCKS},
    targets::{
        cache_slot, dirty_index, group_index, target_window, CacheSlot, DirtyChunk, HotStep, ProtectedNet,
        TargetControl, TargetStats, CACHE_NONE, CACHE_SLOTS, DEFAULT_MAX_TARGETS, DIRECTION_IN, DIRECTION_OUT,
        DIRTY_CHUNKS, GROUPS_PER_CPU, MAX_HOSTGROUPS, MAX_PROTECTED,
    },
    CLASS_COUNT,
};

use crate::program::{epoch, hash_key, window, Global};

/// Protected prefix to its host group.
#[map]
static PROTECTED: LpmTrie<[u8; 16], ProtectedNet> =
    LpmTrie::with_max_entries(MAX_PROTECTED, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Non-zero `enabled` while the trie holds any prefix; the prefilter and
/// the generation of the protected set. A global (see [`Global`]): every
/// packet with a source reads it, host mode's too.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.targets")]
static TARGET_CONTROL: Global<TargetControl> = Global(core::cell::UnsafeCell::new(TargetControl::ZERO));

/// Per CPU and direction: the last addresses looked up in the trie, with
/// their group (see [`CacheSlot`]); a CPU's slots in a row (see
/// [`crate::cpu`]).
#[map]
static TARGET_CACHE: Array<CacheSlot> = Array::with_max_entries(2 * CACHE_SLOTS, 0);

/// Per CPU, group and direction: exact totals per class; a CPU's entries
/// in a row (see [`crate::cpu`]).
#[map]
static GROUP_STATS: Array<TargetStats> = Array::with_max_entries(GROUPS_PER_CPU, 0);

/// Per admitted protected destination: what it received.
#[map]
static TARGETS_IN: LruPerCpuHashMap<SourceKey, TargetStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_TARGETS, 0);

/// Per admitted protected source: what it sent.
#[map]
static TARGETS_OUT: LruPerCpuHashMap<SourceKey, TargetStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_MAX_TARGETS, 0);

/// The heavy-hitter filters, in the blocked layout (one block per packet):
/// the incoming blocks, then the outgoing ones.
#[map]
static TARGET_SKETCH: PerCpuArray<SketchBlock> = PerCpuArray::with_max_entries(2 * SKETCH_BLOCKS as u32, 0);

/// Per CPU, direction and epoch parity: the addresses counted in a window
/// (the keys of the rings whose heads are in the direction's window).
#[map]
static TARGET_DIRTY: PerCpuArray<DirtyChunk> = PerCpuArray::with_max_entries(4 * DIRTY_CHUNKS as u32, 0);

/// Per CPU and direction: the trie key being looked up (`prefix_len`
/// and `addr`, laid out as a `Key<[u8; 16]>` with the address's words
/// aligned), and the entry a newly admitted address is inserted with (zero
/// but for the packet's class and group while it is inserted, zero again
/// after). Written only on those two paths: a packet to a cached, tracked
/// address keeps its words in registers.
#[repr(C)]
pub struct Scratch {
    _pad: u32,
    prefix_len: u32,
    addr: [u64; 2],
    fresh: TargetStats,
}

#[map]
static TARGET_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(2, 0);

/// True while any network is protected.
#[inline(always)]
pub fn enabled() -> bool {
    TARGET_CONTROL.get_ref().enabled != 0
}

/// Counts one packet (or `packets`, a GSO packet's segments) of `len`
/// bytes in `class`, to (`DIR` = in) or from (out) `addr`, the parser's
/// address words, when the address is protected. `addr` must point into
/// a map value (it is the per-address map's key).
///
/// The part every packet pays: a read of the global, and the prefilter's
/// bit.
/// An address that may be protected goes on to [`count_protected`].
#[inline(always)]
pub fn count<const DIR: u32>(addr: &[u64; 2], class: u32, len: u64, packets: u64) {
    let ctl = TARGET_CONTROL.get_ref();
    if ctl.enabled == 0 || !ctl.may_protect(addr) {
        return;
    }
    count_protected::<DIR>(ctl, addr, class, len, packets);
}

/// The rest. Inline, not a subprogram of its own: the verifier then walks
/// the rest of the XDP program once per way out of it (about 47,000
/// instructions verified instead of 30,000, of the million allowed), but a
/// subprogram's call and return were a third or more of what this part
/// added to a packet under test runs on the AMD EPYC, whose returns pay
/// SRSO's thunk (21 to 39 ns as a subprogram, 10 to 15 inline, the two
/// builds in turns).
#[inline(always)]
fn count_protected<const DIR: u32>(ctl: &TargetControl, addr: &[u64; 2], class: u32, len: u64, packets: u64) {
    if class as usize >= CLASS_COUNT {
        return;
    }
    let c = class as usize;
    // The cache is keyed by the address's first bits, as many as the
    // longest protected prefix of its family: one slot serves a whole
    // protected /24 (see `TargetControl::cache_key`).
    let cache_key = ctl.cache_key(addr);
    let Some(slot) = crate::cpu::entry(&TARGET_CACHE, 2 * CACHE_SLOTS, cache_slot(&cache_key, ctl.cache_seed, DIR))
    else {
        return;
    };
    // SAFETY: this CPU's slot, of this program's.
    let group = unsafe {
        if (*slot).generation == ctl.generation && (*slot).addr == cache_key {
            (*slot).group
        } else {
            // Another key's slot now: its heavy address is forgotten, with
            // what it had added up (fewer than HOT_BATCH packets; two
            // keys this CPU sees share the slot).
            (*slot).hot.cool();
            let group = lookup_group::<DIR>(addr);
            (*slot).addr = cache_key;
            (*slot).generation = ctl.generation;
            (*slot).group = group;
            group
        }
    };
    if group >= MAX_HOSTGROUPS {
        return;
    }
    if let Some(g) = crate::cpu::entry(&GROUP_STATS, GROUPS_PER_CPU, group_index(group, DIR)) {
        // SAFETY: this CPU's entry; the class is below CLASS_COUNT.
        unsafe {
            (*g).counts[c].packets += packets;
            (*g).counts[c].bytes += len;
        }
    }
    let epoch = epoch() & EPOCH_MASK;
    let map = if DIR == DIRECTION_IN { &TARGETS_IN } else { &TARGETS_OUT };
    // SAFETY: SourceKey is sixteen bytes, alignment 1.
    let target = unsafe { &*(addr as *const [u64; 2] as *const SourceKey) };
    // The slot's heavy address (see `Hot`): added up, and written a
    // few packets at a time.
    let (left_n, left_b) = match unsafe { (*slot).hot.count(addr, class, epoch, packets, len) } {
        HotStep::Held => return,
        HotStep::Write { packets: n, bytes: b } => {
            if let Some(w) = window(target_window(DIR)) {
                // SAFETY: this CPU's window.
                unsafe { (*w).advance(epoch, n as u32) };
                if !add::<DIR>(w, map, target, group, c, n, b, epoch) {
                    // Gone from the map (the controller removed it): the
                    // sketch admits it again.
                    unsafe { (*slot).hot.cool() };
                }
            }
            return;
        }
        HotStep::Cold { left_packets, left_bytes } => (left_packets, left_bytes),
    };

    let Some(w) = window(target_window(DIR)) else {
        return;
    };
    // What the heavy address added up in the window before, counted with
    // this packet.
    // SAFETY: this CPU's window.
    let total = unsafe { (*w).advance(epoch, 1 + left_n as u32) };
    let h = hash_key().hash(addr);
    let Some(b) = TARGET_SKETCH.get_ptr_mut(DIR * SKETCH_BLOCKS as u32 + sketch::block_index(h)) else {
        return;
    };
    // SAFETY: this CPU's block.
    let est = unsafe { (*b).count(h, epoch) };
    let weight = sketch::weight(est, total) as u64;
    if weight == 0 && left_n == 0 {
        return;
    }
    let (n, b) = (weight * packets + left_n, weight * len + left_b);
    if add::<DIR>(w, map, target, group, c, n, b, epoch) {
        if weight == sketch::SAMPLE_EVERY as u64 {
            // Heavy: the slot's heavy address from here on. What the one
            // before added up is written first (an address of the same
            // key, so of the same group).
            // SAFETY: this CPU's slot; the key is its value's bytes.
            unsafe {
                if let Some((oc, on, ob)) = (*slot).hot.left() {
                    let old = &*(core::ptr::addr_of!((*slot).hot.addr) as *const SourceKey);
                    if (oc as usize) < CLASS_COUNT {
                        add::<DIR>(w, map, old, group, oc as usize, on, ob, epoch);
                    }
                }
                (*slot).hot.heat(addr, class, epoch);
            }
        }
        return;
    }
    let Some(s) = TARGET_SCRATCH.get_ptr_mut(DIR) else {
        return;
    };
    // Inserted from the scratch value: a 272-byte entry does not fit on
    // the stack beside the rest of the program.
    unsafe {
        (*s).fresh.group = group;
        (*s).fresh.epoch = epoch;
        (*s).fresh.counts[c].packets = n;
        (*s).fresh.counts[c].bytes = b;
    }
    // NOEXIST: another CPU may have admitted the address a moment ago; then
    // its entry stays and this CPU's slot in it takes the packet.
    let inserted = map.insert(target, unsafe { &(*s).fresh }, BPF_NOEXIST as u64);
    unsafe {
        (*s).fresh.group = 0;
        (*s).fresh.epoch = 0;
        // Volatile, as in `track_source`: not a call of `memset`.
        core::ptr::write_volatile(&raw mut (*s).fresh.counts[c].packets, 0);
        core::ptr::write_volatile(&raw mut (*s).fresh.counts[c].bytes, 0);
    }
    if inserted.is_ok() {
        mark_dirty::<DIR>(w, target, epoch);
    } else {
        add::<DIR>(w, map, target, group, c, n, b, epoch);
    }
}

/// The host group of `addr` in the trie, or `CACHE_NONE` when no protected
/// prefix holds it.
#[inline(always)]
fn lookup_group<const DIR: u32>(addr: &[u64; 2]) -> u32 {
    let Some(s) = TARGET_SCRATCH.get_ptr_mut(DIR) else {
        return CACHE_NONE;
    };
    // SAFETY: this CPU's scratch value; a trie key is a u32 and sixteen
    // bytes, packed, as `prefix_len` and `addr` are.
    unsafe {
        (*s).prefix_len = 128;
        (*s).addr = *addr;
        let key = &*(core::ptr::addr_of!((*s).prefix_len) as *const Key<[u8; 16]>);
        PROTECTED.get(key).map_or(CACHE_NONE, |net| net.group)
    }
}

/// Lists `key` in this CPU's ring of the window `epoch` (its head in the
/// CPU's window `w` of the direction).
#[inline(always)]
fn mark_dirty<const DIR: u32>(w: *mut Window, key: &SourceKey, epoch: u32) {
    // SAFETY: this CPU's window; the index is 0 or 1.
    let head = unsafe { &raw mut (*w).rings[ring_of(epoch) as usize] };
    crate::dirty::list(head, &TARGET_DIRTY, dirty_index(DIR, epoch), key, epoch);
}

/// The egress program's direction.
pub const OUT: u32 = DIRECTION_OUT;
/// The XDP program's direction.
pub const IN: u32 = DIRECTION_IN;

/// Adds to a tracked address's counters, listing it in the window's ring
/// the first time this CPU counts it in the window; false when it is not
/// tracked.
#[inline(always)]
fn add<const DIR: u32>(
    w: *mut Window,
    map: &LruPerCpuHashMap<SourceKey, TargetStats>,
    key: &SourceKey,
    group: u32,
    class: usize,
    packets: u64,
    bytes: u64,
    epoch: u32,
) -> bool {
    match map.get_ptr_mut(key) {
        Some(t) => {
            let first = unsafe {
                (*t).group = group;
                (*t).counts[class].packets += packets;
                (*t).counts[class].bytes += bytes;
                let first = (*t).epoch != epoch;
                (*t).epoch = epoch;
                first
            };
            if first {
                mark_dirty::<DIR>(w, key, epoch);
            }
            true
        }
        None => false,
    }
}
