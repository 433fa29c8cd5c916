//! The heavy-hitter filter in front of the per-source map.
//!
//! Under a spoofed flood every packet carries a new source address. Giving
//! each one a slot in the LRU per-source map would evict the real heavy
//! hitters within milliseconds and make every packet pay for a hash insert.
//! Instead each CPU keeps a count-min sketch: [`SKETCH_DEPTH`] rows of
//! [`SKETCH_WIDTH`] counters, indexed by disjoint slices of a keyed hash of
//! the source, laid out in blocks of a cache line (see [`SketchBlock`]). A packet is counted in the per-source map only when its
//! source's estimate reaches [`ADMIT_MIN`] plus 1/[`ADMIT_DIVISOR`] of the
//! packets this CPU has seen in the current window. The share term is four
//! times the noise a random source picks up from collisions (`total/WIDTH`
//! per counter); the constant keeps the first packets of a window, when
//! counts are tiny, from admitting sources by chance. So at low rates every
//! source is counted from its `ADMIT_MIN`th packet in a window, a botnet of
//! a thousand equal sources is tracked whole, and under a flood from
//! millions of random addresses essentially no random source gets in.
//!
//! Windows are epochs: the controller bumps a global epoch at every poll,
//! and each counter carries the epoch it was last written in, so a counter
//! from an old epoch reads as zero. Nothing is ever bulk-zeroed, on any
//! number of CPUs.
//!
//! Once a source has [`SAMPLE_FROM`] packets in a window, only every
//! [`SAMPLE_EVERY`]th of its packets touches the per-source map, with that
//! weight: heavy hitters are where the packets are, and this keeps their
//! cost near that of a quiet source (NitroSketch's idea, applied to the map
//! rather than the sketch). Their per-source counts are then exact to within
//! `SAMPLE_EVERY`. The first heavy source of a window on a CPU then skips
//! the sketch for the rest of the window ([`Hot`]), written [`HOT_BATCH`]
//! packets at a time; who gets in, which the tests below model, is the
//! sketch's alone.
//!
//! The arithmetic lives here so the kernel and the unit tests run the same
//! code.

use crate::maps::DirtyHead;

/// Rows of the sketch (independent hash functions).
pub const SKETCH_DEPTH: usize = 4;
/// Counters per row; a power of two.
pub const SKETCH_WIDTH: usize = 8192;

/// A source needs `1/ADMIT_DIVISOR` of a window's packets...
pub const ADMIT_DIVISOR: u32 = 2048;
/// ... plus this many.
pub const ADMIT_MIN: u32 = 4;
/// From this estimate on, per-source updates are sampled...
pub const SAMPLE_FROM: u32 = 16;
/// ... one in this many, with this weight. A power of two.
pub const SAMPLE_EVERY: u32 = 8;
/// A heavy address's packets ([`Hot`]) are written to its entry this many
/// at a time. A write is a lookup in an LRU hash map, whose lines a packet
/// arriving cold (as each does at a few tens of thousands a second, the
/// sender and the stack running on the CPU between two) finds out of the
/// cache: one write in 32 packets rather than one in 8 took a tenth off the
/// program's cold cost (test runs, caches evicted before each). What is
/// held when a window ends is written in the next one, so a poll's rate
/// of a heavy source is late by fewer than this many packets per CPU,
/// never short over two polls.
pub const HOT_BATCH: u32 = 32;

/// A counter: the epoch it belongs to in the high bits, the count below.
const COUNT_BITS: u32 = 20;
const COUNT_MASK: u32 = (1 << COUNT_BITS) - 1;
/// Epochs wrap at 2^12: a counter idle for exactly 4096 polls (about seven
/// minutes at 100 ms) may read its old count once; it only over-estimates.
pub const EPOCH_MASK: u32 = (1 << (32 - COUNT_BITS)) - 1;

/// Counters of one block of the blocked layout: a cache line.
pub const BLOCK_COUNTERS: usize = 16;
/// Counters a row may pick from in a block.
const BLOCK_GROUP: usize = BLOCK_COUNTERS / SKETCH_DEPTH;
const GROUP_BITS: u32 = BLOCK_GROUP.trailing_zeros();
/// Blocks of the blocked layout: as many counters in all as the rows'.
pub const SKETCH_BLOCKS: usize = SKETCH_WIDTH * SKETCH_DEPTH / BLOCK_COUNTERS;
const BLOCK_BITS: u32 = SKETCH_BLOCKS.trailing_zeros();
const _: () = assert!(BLOCK_GROUP.is_power_of_two() && SKETCH_BLOCKS.is_power_of_two());
// The block index and the rows' picks must fit in the 64-bit hash.
const _: () = assert!(BLOCK_BITS + SKETCH_DEPTH as u32 * GROUP_BITS <= 64);

/// One block of the sketch (both the per-source and the per-target one): a
/// key's [`SKETCH_DEPTH`] counters all lie in one block, chosen by its
/// hash, each row in its own quarter of it. One map lookup and one cache
/// line per packet instead of one per row, which a packet arriving at a
/// cold cache pays for each; the same number of counters as rows of
/// [`SKETCH_WIDTH`], so the same expected noise per counter
/// (`total / (SKETCH_BLOCKS * BLOCK_GROUP)`, `total / SKETCH_WIDTH`). Rows
/// are not independent across blocks (a key's rows share its block's
/// traffic), which costs a little precision and never a heavy hitter: a
/// count-min estimate only ever overcounts.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SketchBlock {
    pub counters: [u32; BLOCK_COUNTERS],
}

impl SketchBlock {
    /// Counts one packet of the key whose hash is `h` (its block being
    /// this one) in window `epoch` (already masked), and returns the key's
    /// estimate: the least of its counters. The kernel's per-source and
    /// per-destination filters and the tests' model all count here.
    #[inline(always)]
    pub fn count(&mut self, h: u64, epoch: u32) -> u32 {
        let mut est = u32::MAX;
        let mut row = 0;
        // A fixed bound, each index masked into the block: the verifier
        // walks it without a check of its own.
        while row < SKETCH_DEPTH {
            let c = &mut self.counters[block_counter(h, row as u32)];
            *c = bump(*c, epoch);
            let n = count(*c);
            if n < est {
                est = n;
            }
            row += 1;
        }
        est
    }
}

/// The block of a key's hash.
#[inline(always)]
pub fn block_index(h: u64) -> u32 {
    h as u32 & (SKETCH_BLOCKS as u32 - 1)
}

/// The counter of `row` in the key's block: `row`'s quarter, at the place
/// the next bits of the hash say.
#[inline(always)]
pub fn block_counter(h: u64, row: u32) -> usize {
    let pick = (h >> (BLOCK_BITS + row * GROUP_BITS)) as usize & (BLOCK_GROUP - 1);
    (row as usize % SKETCH_DEPTH) * BLOCK_GROUP + pick
}

/// One CPU's window: which epoch it is in and how many packets with a
/// source it has seen in it; for header sampling, how many packets to let
/// pass before the next sample; and the heads of the rings of addresses
/// it counted (see [`DirtyHead`]), one per epoch parity
/// ([`crate::maps::ring_of`]): a cache line, read by the controller in
/// one lookup a poll (whether the CPU counted, and what it listed). Then,
/// in a second line, the window's heavy source ([`Hot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub epoch: u32,
    pub total: u32,
    pub sample_countdown: u32,
    /// The epoch whose divisor the countdown was last cut to (see
    /// `sample::current_countdown`): the sampling keeps its own, so a
    /// packet that sees a new window there and the old one in `epoch`
    /// (the controller moved it in between) still cuts at the next.
    pub sample_epoch: u32,
    pub rings: [DirtyHead; 2],
    pub _tail: [u32; 4],
    /// Second 64 bytes (not quite a cache line: see
    /// [`crate::maps::PARSED_MAP`]): the source window's heavy source (unused in
    /// network mode's windows, whose heavy addresses are per cache slot).
    pub hot: Hot,
    pub _tail2: [u64; 3],
}

impl Window {
    /// Moves the window to `epoch` (a new one starts from zero) and counts
    /// `n` packets in it; its total after them.
    #[inline(always)]
    pub fn advance(&mut self, epoch: u32, n: u32) -> u32 {
        if self.epoch != epoch {
            self.epoch = epoch;
            self.total = 0;
        }
        self.total += n;
        self.total
    }

    /// Whether this CPU may have counted anything since the window `epoch`
    /// began: its own window (moved on by each packet it counts) is that
    /// one, the next, or the one before. The one before covers a packet
    /// that read the epoch just before the controller moved it and counted
    /// a moment later. Wrapped epochs can only make it say yes (an idle CPU
    /// 4,096 polls later), never no for a CPU that counted.
    ///
    /// Lets the controller skip reading a map no packet touched in a poll.
    pub fn counted_since(&self, epoch: u32) -> bool {
        let (mine, e) = (self.epoch & EPOCH_MASK, epoch & EPOCH_MASK);
        mine == e || mine == e.wrapping_add(1) & EPOCH_MASK || mine == e.wrapping_sub(1) & EPOCH_MASK
    }
}

/// `Hot::class` with no heavy address.
pub const HOT_NONE: u32 = 0;

/// A heavy address, on one CPU, in one window: one the sketch found heavy
/// (its estimate past [`SAMPLE_FROM`], the first packet it samples) and
/// the map behind it holds. Its next packets of the same class skip the
/// address's hash, the sketch and the map: they are added up here and
/// written to its entry [`HOT_BATCH`] at a time, so a flood from one
/// source (the per-CPU window's [`Window::hot`]), or at one protected
/// address (its cache slot's, `targets::CacheSlot`), costs each packet a
/// compare and two adds, and its counts are exact (packets and bytes)
/// where the sketch's sampling counted one packet in eight with eight
/// times its length. In a new window what the last one left is written
/// (for the source window by the CPU's first packet of the window, whatever
/// its source; for a cache slot by the slot's next packet) and the address
/// goes through the sketch again, so an address is listed in every window
/// it is counted in, as the sketch's addresses are, and the heavy one of a
/// window is the window's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hot {
    /// The address, as the parser's words.
    pub addr: [u64; 2],
    /// The window ([`EPOCH_MASK`]ed) it was found in.
    pub epoch: u32,
    /// Its class + 1; [`HOT_NONE`] when the slot has no heavy address.
    pub class: u32,
    /// Added up, not yet written to its entry.
    pub packets: u64,
    pub bytes: u64,
}

/// What a packet's turn through a [`Hot`] leaves to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HotStep {
    /// Counted here; nothing more.
    Held,
    /// Counted here; write this much to the address's entry.
    Write { packets: u64, bytes: u64 },
    /// Not this slot's heavy address (or class), or a new window: the
    /// packet goes through the sketch. `left`: what the heavy address had
    /// added up in the window before, to write (zero when nothing).
    Cold { left_packets: u64, left_bytes: u64 },
}

impl Hot {
    /// Counts `packets` packets of `len` bytes in `class` to `addr` in
    /// window `epoch` when it is the heavy address, the class and the
    /// window.
    #[inline(always)]
    pub fn count(&mut self, addr: &[u64; 2], class: u32, epoch: u32, packets: u64, len: u64) -> HotStep {
        if self.class != class + 1 || self.addr != *addr {
            return HotStep::Cold { left_packets: 0, left_bytes: 0 };
        }
        if self.epoch != epoch {
            let (left_packets, left_bytes) = (self.packets, self.bytes);
            self.cool();
            return HotStep::Cold { left_packets, left_bytes };
        }
        self.packets += packets;
        self.bytes += len;
        if self.packets < HOT_BATCH as u64 {
            return HotStep::Held;
        }
        let step = HotStep::Write { packets: self.packets, bytes: self.bytes };
        self.clear();
        step
    }

    /// Makes `addr` the heavy address for `class` in window `epoch`, with
    /// nothing added up: what the one before left (see [`Hot::left`])
    /// is the caller's to write first.
    #[inline(always)]
    pub fn heat(&mut self, addr: &[u64; 2], class: u32, epoch: u32) {
        self.addr = *addr;
        self.class = class + 1;
        self.epoch = epoch;
        self.clear();
    }

    /// The heavy address's class and what it added up, when there is one
    /// and it added anything: to write before the slot takes another.
    #[inline(always)]
    pub fn left(&self) -> Option<(u32, u64, u64)> {
        if self.class == HOT_NONE || self.packets == 0 {
            return None;
        }
        Some((self.class - 1, self.packets, self.bytes))
    }

    /// Whether another address may take the place in window `epoch`:
    /// none holds it, or one of another window, or one with nothing added
    /// up (it gets no packets just now). The source window asks: its heavy
    /// source is not displaced while it has packets to write (with many
    /// sources taking turns, each would write another's few at its turn).
    /// A protected key's cache slot does not: the newest heavy address of
    /// the key takes it, after writing what the one before left.
    #[inline(always)]
    pub fn vacant(&self, epoch: u32) -> bool {
        self.class == HOT_NONE || self.epoch != epoch || self.packets == 0
    }

    /// No heavy address any more; what was added up is the caller's to
    /// write or lose.
    #[inline(always)]
    pub fn cool(&mut self) {
        self.class = HOT_NONE;
    }

    /// Nothing added up. Two stores: plain ones, the BPF backend merges
    /// into a call of its byte-at-a-time `memset`.
    #[inline(always)]
    fn clear(&mut self) {
        // SAFETY: fields of `self`, aligned.
        unsafe {
            core::ptr::write_volatile(&mut self.packets, 0);
            core::ptr::write_volatile(&mut self.bytes, 0);
        }
    }
}

/// A 64-bit hash of a 16-byte address, keyed by `seed` so an attacker cannot
/// aim collisions at one known counter. Two rounds of MurmurHash3's 64-bit
/// finaliser: every output bit depends on every input bit, which the rows
/// need (they take disjoint slices of the hash).
#[inline(always)]
pub fn hash_addr(addr: &[u8; 16], seed: u64) -> u64 {
    let w0 = u64::from_ne_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]);
    let w1 = u64::from_ne_bytes([addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15]]);
    hash_words(&[w0, w1], seed)
}

/// [`hash_addr`] of the address held in two words (its bytes in memory
/// order, as the parser keeps them): the same hash, without the bytes.
#[inline(always)]
pub fn hash_words(words: &[u64; 2], seed: u64) -> u64 {
    fmix64(fmix64(seed ^ words[0]) ^ words[1])
}

/// The key of [`hash_words`] as the programs hold it: the seed, and the
/// hash's first round already applied to a first word of zero, which every
/// IPv4-mapped address has. The programs hash every packet's source, and
/// a protected destination too; the round is a chain of two multiplies
/// the next loads wait for, so an IPv4 address hashes in one round instead
/// of two, with the same result.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashKey {
    pub seed: u64,
    /// `fmix64(seed)`: the first round of an address whose first word is 0.
    pub zero_round: u64,
}

impl HashKey {
    pub const fn new(seed: u64) -> Self {
        HashKey { seed, zero_round: fmix64(seed) }
    }

    /// [`hash_words`] of `words` under this key's seed.
    #[inline(always)]
    pub fn hash(&self, words: &[u64; 2]) -> u64 {
        let first = if words[0] == 0 { self.zero_round } else { fmix64(self.seed ^ words[0]) };
        fmix64(first ^ words[1])
    }
}

#[inline(always)]
const fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The counter after one more packet in `epoch` (already masked).
#[inline(always)]
pub fn bump(counter: u32, epoch: u32) -> u32 {
    if counter >> COUNT_BITS != epoch {
        (epoch << COUNT_BITS) | 1
    } else if counter & COUNT_MASK == COUNT_MASK {
        counter
    } else {
        counter + 1
    }
}

/// The count a counter holds.
#[inline(always)]
pub fn count(counter: u32) -> u32 {
    counter & COUNT_MASK
}

/// How many packets this one stands for in the per-source map: 0 when the
/// source is below the bar or sampled out, else 1 or [`SAMPLE_EVERY`].
#[inline(always)]
pub fn weight(estimate: u32, total: u32) -> u32 {
    if estimate < ADMIT_MIN + total / ADMIT_DIVISOR {
        0
    } else if estimate <= SAMPLE_FROM {
        1
    } else if estimate & (SAMPLE_EVERY - 1) == 0 {
        SAMPLE_EVERY
    } else {
        0
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for SketchBlock {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Window {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for HashKey {}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::{vec, vec::Vec};

    /// One CPU's sketch, run the way the XDP program runs it.
    struct Model {
        blocks: Vec<SketchBlock>,
        window: Window,
        seed: u64,
    }

    impl Model {
        fn new(seed: u64) -> Self {
            Model {
                blocks: vec![SketchBlock { counters: [0; BLOCK_COUNTERS] }; SKETCH_BLOCKS],
                window: Window::default(),
                seed,
            }
        }

        fn packet(&mut self, addr: &[u8; 16], epoch: u32) -> u32 {
            let total = self.window.advance(epoch, 1);
            let h = hash_addr(addr, self.seed);
            let est = self.blocks[block_index(h) as usize].count(h, epoch);
            weight(est, total)
        }
    }

    fn v4(i: u32) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&i.to_be_bytes());
        a
    }

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn a_window_counted_since_its_epoch_the_next_or_the_one_before() {
        let w = |epoch| Window { epoch, ..Default::default() };
        assert!(w(7).counted_since(7));
        assert!(w(8).counted_since(7), "counted in the next window");
        assert!(w(6).counted_since(7), "a packet that read the epoch just before it moved");
        assert!(!w(5).counted_since(7));
        assert!(!w(9).counted_since(7));
        // Across the wrap.
        assert!(w(0).counted_since(EPOCH_MASK));
        assert!(w(EPOCH_MASK).counted_since(0));
        assert!(!w(2).counted_since(EPOCH_MASK));
    }

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<SketchBlock>(), 64);
        assert_eq!(core::mem::size_of::<Window>(), 128);
        assert_eq!(core::mem::offset_of!(Window, hot), 64);
        assert_eq!(core::mem::size_of::<Hot>(), 40);
        assert_eq!(core::mem::offset_of!(Hot, epoch), 16);
        assert_eq!(core::mem::offset_of!(Hot, class), 20);
        assert_eq!(core::mem::offset_of!(Hot, packets), 24);
        assert_eq!(core::mem::offset_of!(Window, sample_countdown), 8);
        assert_eq!(core::mem::offset_of!(Window, sample_epoch), 12);
        assert_eq!(core::mem::offset_of!(Window, rings), 16);
        assert!(SKETCH_WIDTH.is_power_of_two() && SAMPLE_EVERY.is_power_of_two());
    }

    #[test]
    fn counters_reset_with_the_epoch_and_saturate() {
        let c = bump(0, 1);
        assert_eq!((count(c), c >> COUNT_BITS), (1, 1));
        assert_eq!(count(bump(c, 1)), 2);
        // A new epoch starts from one.
        assert_eq!(count(bump(bump(c, 1), 2)), 1);
        let full = (3 << COUNT_BITS) | COUNT_MASK;
        assert_eq!(bump(full, 3), full);
        assert_eq!(EPOCH_MASK, 0xfff);
    }

    #[test]
    fn a_heavy_address_is_added_up_and_written_a_batch_at_a_time() {
        let (a, b) = ([0, 7], [0, 8]);
        let mut h = Hot::default();
        // No heavy address: every packet goes through the sketch.
        assert_eq!(h.count(&a, 0, 1, 1, 60), HotStep::Cold { left_packets: 0, left_bytes: 0 });
        h.heat(&a, 3, 1);
        // Another address, another class: the sketch's.
        assert_eq!(h.count(&b, 3, 1, 1, 60), HotStep::Cold { left_packets: 0, left_bytes: 0 });
        assert_eq!(h.count(&a, 4, 1, 1, 60), HotStep::Cold { left_packets: 0, left_bytes: 0 });
        let mut written = (0, 0);
        let n = 2 * HOT_BATCH as u64 + 4;
        for i in 0..n {
            match h.count(&a, 3, 1, 1, 60 + i) {
                HotStep::Held => {}
                HotStep::Write { packets, bytes } => {
                    assert_eq!(packets, HOT_BATCH as u64);
                    written = (written.0 + packets, written.1 + bytes);
                }
                s => panic!("packet {i}: {s:?}"),
            }
        }
        // Two batches written (exact lengths: 60 on), four held.
        let b2 = 2 * HOT_BATCH as u64;
        assert_eq!(written, (b2, (60..60 + b2).sum()));
        // A GSO packet counts its segments: these complete the batch.
        let rest = HOT_BATCH as u64 - 4;
        let held: u64 = (60 + b2..60 + b2 + 4).sum();
        assert_eq!(h.count(&a, 3, 1, rest, 400), HotStep::Write { packets: HOT_BATCH as u64, bytes: held + 400 });
        assert_eq!(h.count(&a, 3, 1, 1, 10), HotStep::Held);
        assert_eq!(h.left(), Some((3, 1, 10)));
        // A new window: what is left goes to be written, the address cools.
        assert_eq!(h.count(&a, 3, 2, 1, 60), HotStep::Cold { left_packets: 1, left_bytes: 10 });
        assert_eq!((h.class, h.left()), (HOT_NONE, None));
        assert_eq!(h.count(&a, 3, 2, 1, 60), HotStep::Cold { left_packets: 0, left_bytes: 0 });
        // Class 0 is a class, not "none".
        assert!(h.vacant(2));
        h.heat(&b, 0, 2);
        assert_eq!(h.left(), None);
        assert_eq!(h.count(&b, 0, 2, 1, 60), HotStep::Held);
        assert_eq!(h.left(), Some((0, 1, 60)));
        assert!(!h.vacant(2), "packets to write");
        assert!(h.vacant(3), "another window");
    }

    #[test]
    fn hashes_are_keyed_and_agree_on_words_and_bytes() {
        assert_ne!(hash_addr(&v4(1), 1), hash_addr(&v4(1), 2));
        let a = v4(0xc000_0207);
        let words = [u64::from_ne_bytes(a[..8].try_into().unwrap()), u64::from_ne_bytes(a[8..].try_into().unwrap())];
        assert_eq!(hash_words(&words, 9), hash_addr(&a, 9));
    }

    #[test]
    fn the_key_hashes_as_the_seed_does() {
        for seed in [0, 1, 0x9e37_79b9_7f4a_7c15, u64::MAX] {
            let key = HashKey::new(seed);
            for words in [[0, 0], [0, 0x0700_0000_ffff_0000], [0, 1], [1, 0], [0x20010db8, 5], [u64::MAX, u64::MAX]] {
                assert_eq!(key.hash(&words), hash_words(&words, seed), "seed {seed:#x}, words {words:x?}");
            }
        }
        // A zero seed is a zero key: a program loaded without one agrees.
        assert_eq!(HashKey::new(0), HashKey::default());
    }

    #[test]
    fn quiet_sources_are_counted_from_their_fourth_packet() {
        let mut m = Model::new(42);
        for round in 1..=6u32 {
            for i in 0..50u32 {
                let w = m.packet(&v4(i), 1);
                assert_eq!(w, (round >= ADMIT_MIN) as u32, "source {i}, packet {round}");
            }
        }
    }

    #[test]
    fn a_new_epoch_starts_a_new_window() {
        let mut m = Model::new(5);
        for _ in 0..10 {
            m.packet(&v4(9), 1);
        }
        assert_eq!(m.packet(&v4(9), 2), 0, "counts carried over into a new window");
        assert_eq!(m.window.total, 1);
    }

    #[test]
    fn heavy_sources_are_sampled_with_their_weight() {
        let mut m = Model::new(3);
        let total: u32 = (0..1000).map(|_| m.packet(&v4(77), 1)).sum();
        // Packets 4..=16 one by one, then 8 at every 8th from 24 on.
        assert_eq!(total, (SAMPLE_FROM - ADMIT_MIN + 1) + SAMPLE_EVERY * ((1000 - SAMPLE_FROM) / SAMPLE_EVERY));
        assert!((990..=1000).contains(&(total + ADMIT_MIN - 1)));
    }

    #[test]
    fn heavy_hitters_stand_out_of_spoofed_noise() {
        let mut m = Model::new(99);
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut noise = 0;
        let mut heavy = [0u32; 10];
        // Five windows of 100k packets: 5% from 10 heavy hitters, the
        // rest from random sources of the same /8 (neighbouring addresses
        // must not share counters: an earlier hash made every row agree
        // with the first).
        for epoch in 1..=5 {
            for _ in 0..100_000 {
                let r = xorshift(&mut rng);
                if r.is_multiple_of(20) {
                    let k = ((r >> 8) % 10) as usize;
                    heavy[k] += m.packet(&v4(0x0a00_0000 + k as u32), epoch);
                } else {
                    noise += (m.packet(&v4(0x0a00_0000 + (r as u32 & 0xff_ffff)), epoch) > 0) as u32;
                }
            }
        }
        // Each heavy hitter sent about 2,500 packets; nearly all are counted.
        for (k, h) in heavy.iter().enumerate() {
            assert!((2_000..3_000).contains(h), "heavy hitter {k} counted {h}");
        }
        assert!(noise < 5, "{noise} noise packets counted");
    }

    #[test]
    fn a_carpet_over_a_slash_sixteen_admits_almost_nobody() {
        // 65,536 destinations, 400k packets a window: each gets about six,
        // far below 1/2048 of the window, and the noise a counter picks up
        // (about 50) stays below it too, in either layout.
        let mut m = Model::new(17);
        let mut admitted = 0;
        for epoch in 1..=2 {
            for n in 0..400_000u32 {
                let i = (n.wrapping_mul(40_503)) & 0xffff;
                admitted += (m.packet(&v4(0x0a01_0000 + i), epoch) > 0) as u32;
            }
        }
        assert!(admitted < 100, "{admitted} of 800,000 carpet packets admitted");
    }

    #[test]
    fn block_counters_stay_in_their_rows_quarter() {
        let mut rng = 5u64;
        for _ in 0..10_000 {
            let h = xorshift(&mut rng);
            assert!((block_index(h) as usize) < SKETCH_BLOCKS);
            for r in 0..SKETCH_DEPTH as u32 {
                let c = block_counter(h, r);
                assert_eq!(c / BLOCK_GROUP, r as usize, "row {r} left its quarter");
            }
        }
        assert_eq!(core::mem::size_of::<SketchBlock>(), 64);
        assert_eq!(SKETCH_BLOCKS * BLOCK_COUNTERS, SKETCH_WIDTH * SKETCH_DEPTH);
    }

    #[test]
    fn a_thousand_equal_sources_are_all_tracked() {
        let mut m = Model::new(11);
        let mut counted = vec![0u32; 1000];
        // A botnet: 1,000 sources round robin, 100k packets per window.
        for epoch in 1..=3 {
            for n in 0..100_000u32 {
                let i = n % 1000;
                counted[i as usize] += m.packet(&v4(0xc612_0000 + i), epoch);
            }
        }
        let tracked = counted.iter().filter(|c| **c > 0).count();
        assert_eq!(tracked, 1000);
    }
}
