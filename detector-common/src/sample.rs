//! Sampled packet headers, from the counting program to the controller.
//!
//! Counters say how much of each class arrives; they cannot say to which
//! ports, or from which reflector service. For that the program copies the
//! headers of one in [`SampleControl::divisor`] packets, on average, into a
//! ring buffer: each CPU counts down a random gap (uniform in 1 ..= 2 *
//! divisor) between samples, so a packet costs a decrement and only a
//! sample costs a random number. The controller adapts the divisor so it
//! reads a bounded number of samples per poll, whatever the rate, and
//! scales them back up.
//!
//! One sample in [`SampleControl::frame_divisor`] also carries the first
//! [`SNAPLEN`] bytes of the frame and the time it was taken (a
//! [`SampleRecord`]): the controller keeps them for packet captures (a
//! rolling buffer before any attack, a pcapng file per incident). The
//! others are a [`SampleHead`] without the frame: captures want far fewer
//! frames than detection wants headers, and each frame is 256 bytes the
//! program copies and the controller reads back from another CPU's cache.

/// Ring buffer of [`PacketSample`]s.
pub const SAMPLES_MAP: &str = "SAMPLES";
/// Array of one [`SampleControl`].
pub const SAMPLE_CONTROL_MAP: &str = "SAMPLE_CONTROL";
/// Size of the ring buffer in bytes (a power of two, a multiple of the
/// page): room for about 12,000 [`SampleRecord`]s, a poll's worth at the
/// controller's most and then some.
pub const SAMPLES_RING_BYTES: u32 = 1 << 22;

/// Bytes of the frame a sample keeps (the capture's snap length).
pub const SNAPLEN: usize = 256;

/// The headers of one sampled packet: what an attack's signature is
/// derived from (addresses, ports, length, TTL, TCP flags). No payload: no
/// reader used it, and each byte is copied at every sample.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketSample {
    /// Source address, IPv4 mapped into IPv6.
    pub src: [u8; 16],
    /// Destination address, IPv4 mapped into IPv6.
    pub dst: [u8; 16],
    /// Frame length in bytes.
    pub len: u32,
    /// [`crate::TrafficClass`] id.
    pub class: u8,
    /// IPv4 TTL or IPv6 hop limit; 0 when the packet had no sound IP header.
    pub ttl: u8,
    /// Transport ports (TCP and UDP), 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (FIN 0x01 .. CWR 0x80); 0 for other transports.
    pub tcp_flags: u8,
    pub _pad: u8,
}

/// A ring entry without the frame: a [`SampleRecord`]'s first bytes, the
/// same fields at the same offsets (`cap_len` 0, `ts_ns` 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleHead {
    pub header: PacketSample,
    pub cap_len: u16,
    pub _pad: u16,
    pub ts_ns: u64,
}

/// One entry of the ring with the frame: the parsed headers, the frame's
/// first bytes and when it was taken.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SampleRecord {
    pub header: PacketSample,
    /// How many bytes of `frame` are the frame's (1 ..= [`SNAPLEN`]; the
    /// rest is not written); 0 when they could not be read.
    pub cap_len: u16,
    pub _pad: u16,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    pub frame: [u8; SNAPLEN],
}

impl Default for SampleRecord {
    fn default() -> Self {
        SampleRecord { header: PacketSample::default(), cap_len: 0, _pad: 0, ts_ns: 0, frame: [0; SNAPLEN] }
    }
}

impl SampleRecord {
    /// The captured bytes.
    pub fn captured(&self) -> &[u8] {
        &self.frame[..(self.cap_len as usize).min(SNAPLEN)]
    }
}

/// The gap to the next sample for a random `r`: uniform in 1 ..= 2 *
/// divisor - 1 (mean divisor: at 1, every packet); when sampling is off, a
/// long gap before looking at the divisor again.
#[inline(always)]
pub fn next_gap(divisor: u32, r: u32) -> u32 {
    if divisor == 0 {
        1 << 16
    } else {
        // Bounded, and at least 1, so the modulus is never zero: the XDP
        // program may not carry a division-by-zero panic path.
        let d = divisor.min(1 << 24);
        r % (2 * d - 1).max(1) + 1
    }
}

/// A CPU's countdown to its next sample as a new window begins (once per
/// poll): one drawn at an earlier, larger divisor is cut to the longest gap
/// of the current one. After an attack the divisor falls by orders of
/// magnitude, and a CPU would otherwise let up to twice the attack's
/// divisor of calm packets pass unsampled (seconds to minutes of a calm
/// host's traffic) before its next sample. Sampling off: unchanged.
#[inline(always)]
pub fn current_countdown(countdown: u32, divisor: u32) -> u32 {
    if divisor == 0 {
        countdown
    } else {
        countdown.min(2 * divisor.min(1 << 24) - 1)
    }
}

/// Whether a sample carries its frame, for a random `r` (the one its gap
/// was drawn from; the gap uses its low bits, this its high ones): one in
/// `frame_divisor` (a power of two, at most [`MAX_FRAME_DIVISOR`]) does;
/// at 0 none does.
#[inline(always)]
pub fn carries_frame(frame_divisor: u32, r: u32) -> bool {
    frame_divisor != 0 && (r >> 16) & (frame_divisor.min(MAX_FRAME_DIVISOR) - 1) == 0
}

/// The largest frame divisor: the bits of the random number it reads.
pub const MAX_FRAME_DIVISOR: u32 = 1 << 16;

/// How often to sample, set by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleControl {
    /// One packet in `divisor` is sampled on average; 0 turns sampling off.
    pub divisor: u32,
    /// One sample in `frame_divisor` carries its frame (see
    /// [`carries_frame`]); 0: none does (captures off).
    pub frame_divisor: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketSample {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SampleControl {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SampleRecord {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SampleHead {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout() {
        assert_eq!(size_of::<PacketSample>(), 44);
        assert_eq!(offset_of!(PacketSample, dst), 16);
        assert_eq!(offset_of!(PacketSample, len), 32);
        assert_eq!(offset_of!(PacketSample, class), 36);
        assert_eq!(offset_of!(PacketSample, ttl), 37);
        assert_eq!(offset_of!(PacketSample, sport), 38);
        assert_eq!(offset_of!(PacketSample, dport), 40);
        assert_eq!(offset_of!(PacketSample, tcp_flags), 42);
        assert_eq!(offset_of!(PacketSample, _pad), 43);
        assert_eq!(size_of::<SampleControl>(), 8);
        assert_eq!(offset_of!(SampleControl, frame_divisor), 4);
        assert_eq!(offset_of!(SampleHead, header), offset_of!(SampleRecord, header));
        assert_eq!(offset_of!(SampleHead, cap_len), offset_of!(SampleRecord, cap_len));
        assert_eq!(offset_of!(SampleHead, ts_ns), offset_of!(SampleRecord, ts_ns));
        assert_eq!(size_of::<SampleHead>(), offset_of!(SampleRecord, frame));
        assert_eq!(offset_of!(SampleRecord, header), 0);
        assert_eq!(offset_of!(SampleRecord, cap_len), 44);
        assert_eq!(offset_of!(SampleRecord, ts_ns), 48);
        assert_eq!(offset_of!(SampleRecord, frame), 56);
        assert_eq!(size_of::<SampleRecord>(), 56 + SNAPLEN);
        assert!(SAMPLES_RING_BYTES.is_power_of_two());
        assert!(SNAPLEN.is_power_of_two(), "the program bounds the copy with a mask");
    }

    #[test]
    fn one_sample_in_the_frame_divisor_carries_its_frame() {
        let mut r = 12345u32;
        let n = 100_000u32;
        let mut frames = [0u32; 3];
        for _ in 0..n {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            for (count, fd) in frames.iter_mut().zip([1, 4, 64]) {
                *count += carries_frame(fd, r) as u32;
            }
            assert!(!carries_frame(0, r), "0: captures off");
        }
        assert_eq!(frames[0], n, "one in one: every sample");
        for (count, fd) in frames.iter().zip([1u32, 4, 64]).skip(1) {
            let want = n / fd;
            assert!(count.abs_diff(want) < want / 10, "one in {fd}: {count} of {n}");
        }
    }

    #[test]
    fn gaps_average_the_divisor() {
        let mut r = 12345u32;
        let n = 100_000u64;
        let mut sum = 0u64;
        for _ in 0..n {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            let g = next_gap(64, r);
            assert!((1..=127).contains(&g));
            sum += g as u64;
        }
        let mean = sum as f64 / n as f64;
        assert!((63.0..65.0).contains(&mean), "{mean}");
        assert!((0..1000).all(|r| next_gap(1, r) == 1), "one in one is every packet");
        assert_eq!(next_gap(0, 7), 1 << 16);
    }

    #[test]
    fn a_stale_countdown_is_cut_to_the_current_divisor() {
        // Drawn during an attack at 10,000, now calm at 1: the next packet.
        assert_eq!(current_countdown(next_gap(10_000, 19_999), 1), 1);
        assert_eq!(current_countdown(17_000, 64), 127);
        // Within the current divisor's gaps: kept, so the mean holds.
        assert!((0..1000).all(|r| current_countdown(next_gap(64, r), 64) == next_gap(64, r)));
        assert_eq!(current_countdown(0, 64), 0);
        // Sampling off: left alone (the long gap before looking again).
        assert_eq!(current_countdown(1 << 16, 0), 1 << 16);
        assert_eq!(current_countdown(5, u32::MAX), 5);
    }
}
