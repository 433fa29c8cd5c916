//! The heavy-hitter filter in front of the per-source map.
//!
//! Under a spoofed flood every packet carries a new source address. Giving
//! each one a slot in the LRU per-source map would evict the real heavy
//! hitters within milliseconds and make every packet pay for a hash insert.
//! Instead each CPU keeps a small count-min sketch: [`SKETCH_DEPTH`] rows of
//! [`SKETCH_WIDTH`] saturating counters, indexed by independent hashes of the
//! source. A packet is counted in the per-source map only when its source's
//! sketch estimate reaches [`ADMIT_MIN`] plus 1/[`ADMIT_DIVISOR`] of the
//! packets this CPU has seen in the current window. The share term is four
//! times the noise a random source picks up from collisions (`total/WIDTH`
//! per counter); the constant keeps the first packets of a window, when
//! counts are tiny, from admitting sources by chance. At low rates every
//! source is counted from its `ADMIT_MIN`th packet in a window; under a
//! flood from millions of random addresses essentially no random source
//! gets in, so the map is left to the real heavy hitters, which clear the
//! bar easily. The controller zeroes the sketch at every poll, which starts
//! a new window.
//!
//! The arithmetic lives here so the kernel and the unit tests run the same
//! code.

/// Rows of the sketch (independent hash functions).
pub const SKETCH_DEPTH: usize = 4;
/// Counters per row; a power of two.
pub const SKETCH_WIDTH: usize = 2048;
const WIDTH_BITS: u32 = SKETCH_WIDTH.trailing_zeros();
const WIDTH_MASK: u32 = (SKETCH_WIDTH as u32) - 1;
// The rows' index slices must fit in the 64-bit hash.
const _: () = assert!(WIDTH_BITS as usize * SKETCH_DEPTH <= 64);
/// A source needs `1/ADMIT_DIVISOR` of a window's packets (a power of two)...
pub const ADMIT_DIVISOR: u64 = 512;
/// ... plus this many.
pub const ADMIT_MIN: u64 = 4;

/// One CPU's sketch. 16 KiB, inside the per-CPU value size limit (32 KiB).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Sketch {
    /// Packets with a source seen in this window on this CPU.
    pub total: u64,
    pub rows: [[u16; SKETCH_WIDTH]; SKETCH_DEPTH],
}

impl Sketch {
    pub const ZERO: Sketch = Sketch {
        total: 0,
        rows: [[0; SKETCH_WIDTH]; SKETCH_DEPTH],
    };
}

/// A 64-bit hash of a 16-byte address, keyed by `seed` so an attacker cannot
/// aim collisions at one known counter. Two rounds of MurmurHash3's 64-bit
/// finaliser: every output bit depends on every input bit, which the rows
/// need (they take disjoint slices of the hash).
#[inline(always)]
pub fn hash_addr(addr: &[u8; 16], seed: u64) -> u64 {
    let w0 = u64::from_ne_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let w1 = u64::from_ne_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    fmix64(fmix64(seed ^ w0) ^ w1)
}

#[inline(always)]
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The counter index of row `row` for hash `h`: row `r` takes bits
/// `11r .. 11r+11`, so rows are as independent as the hash's bits.
#[inline(always)]
pub fn row_index(h: u64, row: u32) -> usize {
    ((h >> (row * WIDTH_BITS)) as u32 & WIDTH_MASK) as usize
}

/// Whether a source with sketch estimate `estimate` is admitted when the
/// window has seen `total` packets.
#[inline(always)]
pub fn admit(estimate: u16, total: u64) -> bool {
    estimate as u64 >= ADMIT_MIN + total / ADMIT_DIVISOR
}

/// Counts one packet from the source hashed to `h`; returns its estimate.
///
/// Used by the unit tests and the bench's model; the XDP program runs the
/// same steps on its map value.
pub fn record(sketch: &mut Sketch, h: u64) -> u16 {
    sketch.total += 1;
    let mut est = u16::MAX;
    let mut row = 0;
    while row < SKETCH_DEPTH {
        let c = &mut sketch.rows[row][row_index(h, row as u32)];
        *c = c.saturating_add(1);
        if *c < est {
            est = *c;
        }
        row += 1;
    }
    est
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for Sketch {}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    fn v4(i: u32) -> [u8; 16] {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&i.to_be_bytes());
        a
    }

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<Sketch>(), 8 + 2 * SKETCH_WIDTH * SKETCH_DEPTH);
        assert!(core::mem::size_of::<Sketch>() <= 32 * 1024);
        assert!(SKETCH_WIDTH.is_power_of_two());
    }

    #[test]
    fn rows_spread_independently() {
        let h = hash_addr(&v4(0x0a000001), 7);
        let idx: std::vec::Vec<usize> = (0..SKETCH_DEPTH as u32).map(|r| row_index(h, r)).collect();
        assert!(idx.iter().all(|i| *i < SKETCH_WIDTH));
        // Seeds change the placement.
        assert_ne!(hash_addr(&v4(1), 1), hash_addr(&v4(1), 2));
    }

    #[test]
    fn quiet_sources_are_counted_from_their_fourth_packet() {
        let mut s = Box::new(Sketch::ZERO);
        for round in 1..=6u64 {
            for i in 0..50u32 {
                let est = record(&mut s, hash_addr(&v4(i), 42));
                let ok = admit(est, s.total);
                if round < ADMIT_MIN {
                    assert!(!ok || est as u64 > round, "source {i} admitted at packet {round}");
                } else {
                    assert!(ok, "source {i} refused at packet {round}, total {}", s.total);
                }
            }
        }
    }

    #[test]
    fn heavy_hitters_stand_out_of_spoofed_noise() {
        let mut s = Box::new(Sketch::ZERO);
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut noise_admitted = 0;
        let mut heavy_admitted = [0u32; 10];
        for _ in 0..500_000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // 5% of packets from 10 heavy hitters, the rest from random
            // sources of the same /8 (neighbouring addresses must not share
            // counters: an earlier hash made every row agree with the first).
            let (addr, heavy) = if rng % 20 == 0 {
                let k = ((rng >> 8) % 10) as u32;
                (v4(0x0a00_0000 + k), Some(k as usize))
            } else {
                (v4(0x0a00_0000 + (rng as u32 & 0xff_ffff)), None)
            };
            let est = record(&mut s, hash_addr(&addr, 99));
            let ok = admit(est, s.total);
            match heavy {
                Some(k) => heavy_admitted[k] += ok as u32,
                None => noise_admitted += ok as u32,
            }
        }
        // Every heavy hitter (0.5% of traffic each) clears the bar nearly always.
        for (k, a) in heavy_admitted.iter().enumerate() {
            assert!(*a > 2_000, "heavy hitter {k} admitted only {a} times");
        }
        // Random sources essentially never do, early or late in the window.
        assert!(noise_admitted < 5, "{noise_admitted} noise admissions");
    }
}
