//! Sampled packet headers, from the counting program to the controller.
//!
//! Counters say how much of each class arrives; they cannot say to which
//! ports, or from which reflector service. For that the program copies the
//! headers of a random one in [`SampleControl::divisor`] packets into a ring
//! buffer. The controller adapts the divisor so it reads a bounded number
//! of samples per poll, whatever the rate, and scales them back up.

/// Ring buffer of [`PacketSample`]s.
pub const SAMPLES_MAP: &str = "SAMPLES";
/// Array of one [`SampleControl`].
pub const SAMPLE_CONTROL_MAP: &str = "SAMPLE_CONTROL";
/// Size of the ring buffer in bytes (a power of two, a multiple of the page).
pub const SAMPLES_RING_BYTES: u32 = 1 << 20;

/// The headers of one sampled packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketSample {
    /// Source address, IPv4 mapped into IPv6.
    pub src: [u8; 16],
    /// Frame length in bytes.
    pub len: u32,
    /// [`crate::TrafficClass`] id.
    pub class: u8,
    pub _pad: u8,
    /// Transport ports (TCP and UDP), 0 otherwise.
    pub sport: u16,
    pub dport: u16,
    pub _pad2: u16,
}

/// How often to sample, set by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampleControl {
    /// One packet in `divisor` is sampled (a power of two); 0 turns sampling off.
    pub divisor: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketSample {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for SampleControl {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout() {
        assert_eq!(size_of::<PacketSample>(), 28);
        assert_eq!(offset_of!(PacketSample, len), 16);
        assert_eq!(offset_of!(PacketSample, class), 20);
        assert_eq!(offset_of!(PacketSample, sport), 22);
        assert_eq!(offset_of!(PacketSample, dport), 24);
        assert_eq!(size_of::<SampleControl>(), 4);
        assert!(SAMPLES_RING_BYTES.is_power_of_two());
    }
}
