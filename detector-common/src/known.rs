//! Known-good sources: the host's real peers, remembered in peacetime.
//!
//! A spoofed flood's sources are random; the host's real users and the
//! servers the host itself talks to are not. A peer becomes known when the
//! host sends it traffic that only a real conversation produces (seen by
//! the egress program), or when it completes a TCP handshake (a valid SYN
//! cookie). Rules that do not name a source ([`crate::rules::SLOT_SPARE_KNOWN`])
//! let known peers through, so mitigating a spoofed flood by its signature
//! keeps the host's conversations working.
//!
//! The map is an LRU hash, bounded, and pinned with the rules so a
//! controller restart keeps it.

/// LRU hash of [`crate::maps::SourceKey`] to [`KnownPeer`].
pub const KNOWN_PEERS_MAP: &str = "KNOWN_PEERS";
/// Default capacity of [`KNOWN_PEERS_MAP`].
pub const DEFAULT_MAX_KNOWN: u32 = 65_536;

/// [`KnownPeer::how`]: the host sent it traffic (egress).
pub const KNOWN_BY_EGRESS: u32 = 1;
/// [`KnownPeer::how`]: it completed a TCP handshake with a valid SYN cookie.
pub const KNOWN_BY_HANDSHAKE: u32 = 2;

/// One known peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnownPeer {
    /// `CLOCK_MONOTONIC` (coarse) time it was last confirmed, ns.
    pub last_ns: u64,
    /// How it became known: [`KNOWN_BY_EGRESS`] and [`KNOWN_BY_HANDSHAKE`] bits.
    pub how: u32,
    pub _pad: u32,
}

/// Array of one [`LearnControl`], set by the controller.
pub const LEARN_CONTROL_MAP: &str = "LEARN_CONTROL";
/// Per-CPU array of one [`LearnState`].
pub const LEARN_STATE_MAP: &str = "LEARN_STATE";
/// Name of the egress program in the counting object.
pub const EGRESS_PROGRAM: &str = "detector_egress";
/// Default [`LearnControl::budget`].
pub const DEFAULT_LEARN_BUDGET: u32 = 1024;

/// Whether and how fast the egress program learns peers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnControl {
    /// Non-zero: learn. The controller pauses learning while an incident
    /// is open on the interface: the host's answers to a spoofed flood
    /// must not teach it the flood's sources.
    pub enabled: u32,
    /// New peers each CPU may learn per epoch (one poll); a bound on how
    /// many entries anything can push through the LRU between two polls.
    pub budget: u32,
}

/// One CPU's learning, per epoch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LearnState {
    pub epoch: u32,
    /// New peers learned in `epoch`.
    pub learned: u32,
    /// Cumulative: new peers learned.
    pub learned_total: u64,
    /// Cumulative: new peers not learned, the epoch's budget spent.
    pub over_budget_total: u64,
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::KnownPeer {}
    unsafe impl aya::Pod for super::LearnControl {}
    unsafe impl aya::Pod for super::LearnState {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout() {
        assert_eq!(size_of::<KnownPeer>(), 16);
        assert_eq!(offset_of!(KnownPeer, how), 8);
        assert_eq!(size_of::<LearnControl>(), 8);
        assert_eq!(size_of::<LearnState>(), 24);
        assert_eq!(offset_of!(LearnState, learned_total), 8);
        assert_eq!(offset_of!(LearnState, over_budget_total), 16);
    }
}
