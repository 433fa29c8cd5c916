//! Configuration of the flood generator's XDP program.
//!
//! The generator runs a frame template through `BPF_PROG_TEST_RUN` with live
//! frames; its program rewrites the source address of each copy before
//! `XDP_TX`, so one template becomes a flood from many sources. Userspace
//! built the template, so it tells the program where the fields are instead
//! of the program parsing anything.

/// Array map of one [`FloodConfig`].
pub const FLOOD_CONFIG_MAP: &str = "FLOOD_CONFIG";
/// Per-CPU array of one `u64`: the sequence counter for [`SPREAD_SEQUENTIAL`].
pub const FLOOD_SEQ_MAP: &str = "FLOOD_SEQ";
/// Name of the generator program.
pub const FLOOD_PROGRAM: &str = "flood";
/// Name of the empty program (`XDP_PASS`) used as the bench baseline.
pub const PASS_PROGRAM: &str = "pass";
/// Name of the empty classifier (`TC_ACT_OK`), the egress bench's baseline.
pub const PASS_CLASSIFIER: &str = "pass_tc";

/// Sources are `base + (n mod count)` for a per-CPU counter `n`.
pub const SPREAD_SEQUENTIAL: u32 = 0;
/// Sources are `base + (random mod count)`.
pub const SPREAD_RANDOM: u32 = 1;

/// Where and how to rewrite the source address of each frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodConfig {
    /// Number of distinct sources; 0 or 1 leaves the template's source alone.
    pub src_count: u32,
    /// Low 32 bits of the first source address, host byte order.
    pub src_base: u32,
    /// [`SPREAD_SEQUENTIAL`] or [`SPREAD_RANDOM`].
    pub spread: u32,
    /// Number of heavy-hitter addresses (`heavy_base ..`), 0 for none.
    pub heavy_count: u32,
    /// Low 32 bits of the first heavy hitter, host byte order.
    pub heavy_base: u32,
    /// A frame goes to a heavy hitter when a random u32 is below this.
    pub heavy_threshold: u32,
    /// Offset in the frame of the last 4 bytes of the source address.
    pub src_offset: u32,
    /// Offset of the IPv4 header checksum, 0 for IPv6.
    pub ip_csum_offset: u32,
    /// Offset of the transport checksum covering the source, 0 for none.
    pub l4_csum_offset: u32,
    /// 1 when the transport is UDP (a zero result is sent as 0xffff).
    pub l4_is_udp: u32,
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for FloodConfig {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(core::mem::size_of::<FloodConfig>(), 40);
        assert_eq!(core::mem::offset_of!(FloodConfig, l4_is_udp), 36);
    }
}
