//! Map names, keys and values of the counting program.

use crate::{class::CLASS_COUNT, rules::DROP_REASON_COUNT};

/// Per-CPU array indexed by [`crate::TrafficClass`] id, value [`ClassStats`].
pub const CLASS_STATS_MAP: &str = "CLASS_STATS";
/// LRU per-CPU hash of [`SourceKey`] to [`SourceStats`].
pub const SOURCE_STATS_MAP: &str = "SOURCE_STATS";
/// Per-CPU array of [`crate::sketch::SKETCH_BLOCKS`] [`crate::sketch::SketchBlock`]s.
pub const SKETCH_MAP: &str = "SKETCH";
/// Array of one [`CpuWindows`] per possible CPU, indexed by the CPU's id
/// (sized by the loader; CPU-indexed rather than per-CPU for the reason
/// [`PARSED_MAP`] gives: the source window is touched by every packet with
/// an address). One map, so a poll reads every CPU's windows in one call.
pub const WINDOW_MAP: &str = "WINDOW";
/// Windows of a CPU in the [`WINDOW_MAP`].
pub const WINDOWS: u32 = 3;
/// The per-source window's index in a CPU's [`CpuWindows`].
pub const SOURCE_WINDOW: u32 = 0;

/// A CPU's windows: the per-source window ([`SOURCE_WINDOW`]), then network
/// mode's, one per direction (`crate::targets::target_window`); and a line
/// of padding, so that the next CPU's windows, written at every packet it
/// counts, never share a cache line with these, whatever the alignment of
/// the array's values.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuWindows {
    pub windows: [crate::sketch::Window; WINDOWS as usize],
    pub _pad: [u64; 8],
}
/// Array of one `u32`: the current epoch, bumped by the controller each
/// poll. The map the loader makes of the counting object's section of
/// that name, where the programs' global `EPOCH` lies alone.
pub const EPOCH_MAP: &str = ".bss.epoch";
/// The program's scratch copy of a packet's parsed headers: an array of one
/// slot per possible CPU, indexed by the CPU's id. Sized by the loader;
/// the controller never reads it.
///
/// Why not a per-CPU array: a per-CPU value's address is two dependent
/// loads (the map's table of per-CPU pointers, then this CPU's offset),
/// each a cache miss for a packet arriving cold, as each does at a few tens
/// of thousands a second, with the sender and the stack running on the CPU
/// between two. An array's element is one multiply from the map, the CPU's
/// id a load the verifier inlines. Under test runs with the caches evicted
/// before each, this and the per-destination cache's the same way took
/// about 25 ns off a packet to a protected address (a few off one outside).
///
/// Where the lines fall: an array's values start right after the kernel's
/// `struct bpf_array` (312 bytes into it on Linux 6.18, 56 past a cache
/// line), so a 64-byte element or a 64-byte half of one spans two lines;
/// the layouts here size things in 64 bytes to keep CPUs apart, not to
/// match lines. `BPF_F_MMAPABLE` would page-align the values, but moves a
/// small array from the kernel's linear map to 4 KiB vmalloc pages (a TLB
/// entry of its own): with it on these four arrays (PARSED, WINDOW,
/// TARGET_CACHE, GROUP_STATS), test runs with the caches evicted showed no
/// difference the host's noise let through (2026-12-03, AMD EPYC).
pub const PARSED_MAP: &str = "PARSED";
/// Name of the counting XDP program in its object.
pub const DETECTOR_PROGRAM: &str = "detector";

/// Per-CPU array of the keys of two rings, [`DIRTY_CHUNKS`] [`DirtyChunk`]s
/// each (see [`chunk_of`]): the sources counted in windows of even epochs
/// and of odd ones, so the controller reads a finished window's while the
/// program fills the next. Their heads are in the [`WINDOW_MAP`].
pub const SOURCE_DIRTY_MAP: &str = "SOURCE_DIRTY";
/// Default capacity of [`SOURCE_STATS_MAP`]; the controller may override it.
pub const DEFAULT_MAX_SOURCES: u32 = 16_384;

/// Cumulative packets and bytes (whole frame, Ethernet header included).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Per class, per CPU: everything seen, and what of it was dropped, per
/// [`crate::rules::DropReason`]. One entry, so the program that counts a
/// packet can count its drop through the same pointer, with no second lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    pub seen: ClassCounters,
    pub dropped: [ClassCounters; DROP_REASON_COUNT],
}

/// A source address. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`) so both
/// families share one map and one key size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

impl SourceKey {
    /// The key of an IPv4 source given in network byte order.
    #[inline(always)]
    pub const fn from_ipv4_octets(o: [u8; 4]) -> Self {
        SourceKey { addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3]] }
    }

    /// True when this key holds an IPv4 address.
    pub fn is_ipv4(&self) -> bool {
        self.addr[..10].iter().all(|b| *b == 0) && self.addr[10] == 0xff && self.addr[11] == 0xff
    }
}

/// Cumulative per-source counters, one copy per CPU in the kernel.
///
/// Counting starts when the source is admitted to the map (see
/// [`crate::sketch`]): a source that never stands out is never tracked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub packets: u64,
    pub bytes: u64,
    pub class_packets: [u64; CLASS_COUNT],
    /// The window this CPU last counted the source in: when it moves, the
    /// source is listed in the window's ring ([`DirtyHead`]).
    pub epoch: u32,
    pub _pad: u32,
}

/// Keys in one [`DirtyChunk`]: a kilobyte.
pub const DIRTY_CHUNK_KEYS: usize = 64;
/// Chunks of one ring.
pub const DIRTY_CHUNKS: usize = 32;
/// Keys a ring holds.
pub const DIRTY_KEYS: usize = DIRTY_CHUNK_KEYS * DIRTY_CHUNKS;

/// The addresses this CPU counted in one window, in a per-address map
/// (sources, or protected addresses): each listed once, when its entry's
/// `epoch` ([`SourceStats::epoch`], `TargetStats::epoch`) moves to the
/// window. The sketch admits fewer than 2,048 addresses per CPU per window,
/// so the controller reads those entries alone, not the whole map;
/// `overflow` says the ring was too small this time, and the controller
/// then reads everything.
///
/// A ring is its head (this), in the CPU's window
/// ([`crate::sketch::Window`]), and its keys in [`DirtyChunk`]s of another
/// map, so a poll copies the chunks in use, not the whole ring: a per-CPU
/// value is copied for every CPU at each read, and one 32 KB ring per CPU
/// was 64 KB per read on two CPUs (2 MB on 64) for the one key a flood
/// from one source lists.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirtyHead {
    /// The window these keys belong to (the sketch epoch).
    pub epoch: u32,
    pub count: u32,
    pub overflow: u32,
    pub _pad: u32,
}

/// [`DIRTY_CHUNK_KEYS`] keys of a ring.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DirtyChunk {
    pub keys: [SourceKey; DIRTY_CHUNK_KEYS],
}

/// The index, in a map of rings' chunks, of the chunk holding key `n`
/// (below [`DIRTY_KEYS`]) of ring `ring`.
#[inline(always)]
pub const fn chunk_of(ring: u32, n: u32) -> u32 {
    ring * DIRTY_CHUNKS as u32 + n / DIRTY_CHUNK_KEYS as u32
}

/// The ring of window `epoch`: its head in [`crate::sketch::Window::rings`],
/// its chunks from [`chunk_of`] of it.
#[inline(always)]
pub const fn ring_of(epoch: u32) -> u32 {
    epoch & 1
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::ClassCounters {}
    unsafe impl aya::Pod for super::ClassStats {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceStats {}
    unsafe impl aya::Pod for super::DirtyHead {}
    unsafe impl aya::Pod for super::DirtyChunk {}
    unsafe impl aya::Pod for super::CpuWindows {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts() {
        assert_eq!(size_of::<ClassCounters>(), 16);
        assert_eq!(offset_of!(ClassCounters, bytes), 8);
        assert_eq!(size_of::<ClassStats>(), 64);
        assert_eq!(offset_of!(ClassStats, dropped), 16);
        assert_eq!(size_of::<SourceKey>(), 16);
        assert_eq!(align_of::<SourceKey>(), 1);
        assert_eq!(size_of::<SourceStats>(), 16 + 8 * CLASS_COUNT + 8);
        assert_eq!(offset_of!(SourceStats, class_packets), 16);
        assert_eq!(offset_of!(SourceStats, epoch), 16 + 8 * CLASS_COUNT);
        assert_eq!(size_of::<DirtyHead>(), 16);
        assert_eq!(offset_of!(DirtyHead, count), 4);
        assert_eq!(offset_of!(DirtyHead, overflow), 8);
        assert_eq!(size_of::<DirtyChunk>(), 16 * DIRTY_CHUNK_KEYS);
        assert_eq!(align_of::<DirtyChunk>(), 1);
        assert_eq!(size_of::<CpuWindows>(), WINDOWS as usize * 128 + 64);
        assert_eq!(offset_of!(CpuWindows, _pad), WINDOWS as usize * 128);
        assert_eq!(chunk_of(0, 0), 0);
        assert_eq!(chunk_of(0, 63), 0);
        assert_eq!(chunk_of(0, 64), 1);
        assert_eq!(chunk_of(1, 0), DIRTY_CHUNKS as u32);
        assert_eq!(chunk_of(3, DIRTY_KEYS as u32 - 1), 4 * DIRTY_CHUNKS as u32 - 1);
    }

    #[test]
    fn ipv4_mapped_key() {
        let k = SourceKey::from_ipv4_octets([192, 0, 2, 7]);
        assert!(k.is_ipv4());
        assert_eq!(&k.addr[12..], &[192, 0, 2, 7]);
        let mut v6 = k;
        v6.addr[0] = 0x20;
        assert!(!v6.is_ipv4());
    }
}
