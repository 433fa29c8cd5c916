//! The egress program: learns the host's real peers from what the host
//! itself sends (see `detector_common::known`). It never changes a verdict.
//!
//! A peer is learned from traffic only a real conversation produces: a TCP
//! segment the host sends without SYN+ACK or RST (it opened the connection,
//! or the peer completed the handshake), a UDP datagram sent from a port
//! that is not a DNS or amplification service (its own queries, and a game
//! or application server's answers to clients). Not from the answers a
//! spoofed flood draws: SYN-ACKs, resets, ICMP errors, DNS and reflector
//! replies.
//!
//! In network mode it also counts what protected addresses send (see
//! `targets`).

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_OK},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map},
    maps::{Array, PerCpuArray},
    programs::TcContext,
};
use detector_common::{
    known::{KnownPeer, LearnControl, LearnState, KNOWN_BY_EGRESS},
    maps::SourceKey,
    TrafficClass,
};

use crate::{
    mitigate::{self, PeerCacheSlot, KNOWN_PEERS, PEER_CACHE_SLOTS},
    parse::{self, parse, Parsed},
    program::epoch,
    targets,
};

#[map]
static LEARN_CONTROL: Array<LearnControl> = Array::with_max_entries(1, 0);

#[map]
static LEARN_STATE: PerCpuArray<LearnState> = PerCpuArray::with_max_entries(1, 0);

/// A known peer's time is refreshed at most this often (a write per packet
/// of a bulk transfer would cost more than it tells).
const REFRESH_NS: u64 = 1_000_000_000;

#[classifier]
pub fn detector_egress(ctx: TcContext) -> i32 {
    // Nothing to parse for while neither learns nor counts (learning is
    // off under attack; network mode may be off).
    let learning = LEARN_CONTROL.get(0).is_some_and(|c| c.enabled != 0);
    if !learning && !targets::enabled() {
        return TC_ACT_OK as i32;
    }
    let Some(p) = launder(parse(ctx.data(), ctx.data_end())) else {
        return TC_ACT_OK as i32;
    };
    let p: &Parsed = p;
    if !p.has_src {
        return TC_ACT_OK as i32;
    }
    // Network mode: what a protected address sends, whether or not
    // learning is on. A GSO packet leaves as `gso_segs` frames; its length
    // is the whole payload's (one copy of the headers).
    let segs = unsafe { (*ctx.skb.skb).gso_segs } as u64;
    let frames = if segs > 1 { segs } else { 1 };
    targets::count::<{ targets::OUT }>(&p.src, p.class as u32, ctx.len() as u64, frames);
    learn(p);
    TC_ACT_OK as i32
}

/// This CPU's copy of the parser's findings for the egress program: its
/// own, not the XDP program's slot, which is in use for as long as that
/// program runs.
#[map]
static EGRESS_PARSED: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(1, 0);

/// The parser's findings, written to [`EGRESS_PARSED`] and read from there
/// (as the XDP program does with its own, for the verifier): kept on the
/// stack, LLVM built each IPv4-mapped address's ten zero bytes with a call
/// of the BPF backend's byte-at-a-time `memset`, two per IPv4 packet
/// (about 30 ns of a learning packet's 150 under test runs on the AMD
/// EPYC).
#[inline(always)]
fn launder(p: Parsed) -> Option<&'static mut Parsed> {
    let slot = EGRESS_PARSED.get_ptr_mut(0)?;
    unsafe {
        core::ptr::write_volatile(slot, p);
        Some(&mut *slot)
    }
}

#[inline(always)]
fn learn(p: &Parsed) {
    let Some(ctl) = LEARN_CONTROL.get(0) else {
        return;
    };
    if ctl.enabled == 0 {
        return;
    }
    let learnable = [
        TrafficClass::TcpSyn,
        TrafficClass::TcpAck,
        TrafficClass::HttpRequest,
        TrafficClass::Udp,
        TrafficClass::DnsQuery,
    ]
    .iter()
    .any(|c| *c as u8 == p.class);
    if !learnable {
        return;
    }
    // The frame's destination is the peer.
    let epoch = epoch();
    let Some(seen) = SEEN.get_ptr_mut(mitigate::cache_slot(&p.dst)) else {
        return;
    };
    // SAFETY: this CPU's slot.
    unsafe {
        if (*seen).epoch == epoch.wrapping_add(1) && (*seen).addr == p.dst {
            return;
        }
    }
    let key = SourceKey { addr: parse::bytes(p.dst) };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if let Some(peer) = KNOWN_PEERS.get_ptr_mut(&key) {
        unsafe {
            if now.wrapping_sub((*peer).last_ns) > REFRESH_NS {
                (*peer).last_ns = now;
                (*peer).how |= KNOWN_BY_EGRESS;
            }
            (*seen).addr = p.dst;
            (*seen).epoch = epoch.wrapping_add(1);
        }
        return;
    }
    let Some(st) = LEARN_STATE.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        if (*st).epoch != epoch {
            (*st).epoch = epoch;
            (*st).learned = 0;
        }
        if (*st).learned >= ctl.budget {
            (*st).over_budget_total += 1;
            return;
        }
        (*st).learned += 1;
        (*st).learned_total += 1;
    }
    let peer = KnownPeer { last_ns: now, how: KNOWN_BY_EGRESS, _pad: 0 };
    // Another CPU may have learned it a moment ago (NOEXIST fails): known
    // either way.
    let _ = KNOWN_PEERS.insert(&key, &peer, BPF_NOEXIST as u64);
    unsafe {
        (*seen).addr = p.dst;
        (*seen).epoch = epoch.wrapping_add(1);
    }
}

/// Per CPU: the peers this CPU found known (or learned) in the current
/// epoch (one poll), so the rest of their packets in it skip the known-peer
/// map's hash lookup and the clock (two helper calls, most of what
/// learning cost a packet: a bulk transfer's packets all go to one peer).
/// A peer's time is still refreshed at most once a second, at its first
/// packet of a poll; a peer the map lost is learned again from the next
/// poll on. The XDP program's cache of known-peer answers, in layout
/// (`known` unused: only known peers are kept).
#[map]
static SEEN: PerCpuArray<PeerCacheSlot> = PerCpuArray::with_max_entries(PEER_CACHE_SLOTS, 0);
