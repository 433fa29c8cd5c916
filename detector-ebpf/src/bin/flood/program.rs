//! `flood` runs under `BPF_PROG_TEST_RUN` with live frames: each run hands it
//! a copy of one frame template, it rewrites the source address (and the
//! checksums that cover it) and returns `XDP_TX`, which sends the frame out
//! of the interface named in the run's context.

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK},
    helpers::bpf_get_prandom_u32,
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use detector_common::flood::{FloodConfig, SPREAD_SEQUENTIAL};

#[map]
static FLOOD_CONFIG: Array<FloodConfig> = Array::with_max_entries(1, 0);

#[map]
static FLOOD_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Offsets in the config are bounded so the verifier can see every access
/// stays inside the first 256 bytes of the frame.
const MAX_OFFSET: u32 = 256;

#[xdp]
pub fn flood(ctx: XdpContext) -> u32 {
    if let Some(cfg) = FLOOD_CONFIG.get(0) {
        rewrite_source(&ctx, cfg);
    }
    xdp_action::XDP_TX
}

/// Baseline for the bench: the cheapest possible XDP program.
#[xdp]
pub fn pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The egress classifier's baseline for the bench: the cheapest possible
/// classifier.
#[classifier]
pub fn pass_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[inline(always)]
fn rewrite_source(ctx: &XdpContext, cfg: &FloodConfig) {
    let addr = if cfg.heavy_count > 0 && unsafe { bpf_get_prandom_u32() } < cfg.heavy_threshold {
        cfg.heavy_base.wrapping_add(unsafe { bpf_get_prandom_u32() } % cfg.heavy_count)
    } else if cfg.src_count > 1 {
        let n = if cfg.spread == SPREAD_SEQUENTIAL {
            match FLOOD_SEQ.get_ptr_mut(0) {
                Some(seq) => unsafe {
                    *seq += 1;
                    *seq
                },
                None => 0,
            }
        } else {
            (unsafe { bpf_get_prandom_u32() }) as u64
        };
        cfg.src_base.wrapping_add((n % cfg.src_count as u64) as u32)
    } else {
        return;
    };

    let start = ctx.data();
    let end = ctx.data_end();
    let src_off = cfg.src_offset;
    if src_off > MAX_OFFSET || start + src_off as usize + 4 > end {
        return;
    }
    let p = (start + src_off as usize) as *mut [u8; 4];
    let old = unsafe { core::ptr::read_unaligned(p) };
    let new = addr.to_be_bytes();
    unsafe { core::ptr::write_unaligned(p, new) };

    fix_checksum(start, end, cfg.ip_csum_offset, old, new, false);
    fix_checksum(start, end, cfg.l4_csum_offset, old, new, cfg.l4_is_udp != 0);
}

/// RFC 1624 incremental update of the checksum at `off` for a 4-byte field
/// that changed from `old` to `new`. Ones' complement sums do not depend on
/// byte order, so the words are added as they lie in memory.
#[inline(always)]
fn fix_checksum(start: usize, end: usize, off: u32, old: [u8; 4], new: [u8; 4], udp: bool) {
    if off == 0 || off > MAX_OFFSET || start + off as usize + 2 > end {
        return;
    }
    let p = (start + off as usize) as *mut [u8; 2];
    let cur = u16::from_ne_bytes(unsafe { core::ptr::read_unaligned(p) });
    if udp && cur == 0 {
        // UDP over IPv4 without a checksum stays without one.
        return;
    }
    let w = |b: [u8; 4], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]) as u32;
    let mut sum = (!cur) as u32 + (!w(old, 0) & 0xffff) + (!w(old, 2) & 0xffff) + w(new, 0) + w(new, 2);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let mut out = !(sum as u16);
    if udp && out == 0 {
        out = 0xffff;
    }
    unsafe { core::ptr::write_unaligned(p, out.to_ne_bytes()) };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
