//! SYN cookies from XDP: the answer to a SYN, and the check of the ACK
//! that completes the handshake (see `detector_common::syncookie` for the
//! design).
//!
//! A program of its own, which the counting program tail-calls for the
//! packets a SYN-cookie rule matched: nothing here runs for other traffic,
//! and it has a stack frame and a verifier budget of its own (the counting
//! program uses most of its 512 bytes of stack). The parser's findings come
//! in the per-CPU `PARSED` map, the rule in [`COOKIE_JOB`].
//!
//! Handled layouts: IPv4 without options and IPv6 without extension
//! headers, behind Ethernet and up to two VLAN tags. Anything else is left
//! to the stack (a SYN) or dropped (an ACK from an unknown source).

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr, xdp_action},
    helpers::{
        bpf_ktime_get_coarse_ns,
        generated::{
            bpf_csum_diff, bpf_tcp_raw_check_syncookie_ipv4, bpf_tcp_raw_check_syncookie_ipv6,
            bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
        },
    },
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use detector_common::syncookie::{
    csum_fold, csum_replace, fit_options, parse_syn_options, synack_options, ts_cookie, OptionScan, SynCookieConfig,
    HANDSHAKE_DSCP, TCP_MAX_OPTIONS,
};

use detector_common::{rules::ACTION_SYN_COOKIES, TrafficClass};

use crate::{
    mitigate,
    parse::{header, load, opaque, store, u8_at, Offsets, IPPROTO_TCP, TCP_ACK, TCP_CWR, TCP_ECE, TCP_SYN},
    program::{self, CLASS_STATS},
};

/// Slot 0: the SYN-cookie program, put there by the controller when it
/// loads the counting program. Pinned with the rules, so it goes on
/// answering while no controller runs.
#[map]
static SYNCOOKIE_PROGRAM: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The rule that handed this CPU's current packet over.
#[map]
static COOKIE_JOB: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Hands the packet to the SYN-cookie program for rule `index`. Returns
/// only when the program is not there (the caller then passes the packet).
#[inline(always)]
pub fn hand_over(ctx: &XdpContext, index: u32) {
    let Some(job) = COOKIE_JOB.get_ptr_mut(0) else {
        return;
    };
    unsafe {
        *job = index;
        let _ = SYNCOOKIE_PROGRAM.tail_call(ctx, 0);
    }
}

#[xdp]
pub fn detector_syncookie(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx) as u64;
    let (Some(p), Some(index)) = (program::parsed(), COOKIE_JOB.get(0).copied()) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's slot, written by the program that tail-called.
    let p = unsafe { &*p };
    let Some(stats) = CLASS_STATS.get_ptr_mut(p.class as u32) else {
        return xdp_action::XDP_PASS;
    };
    if p.class == TrafficClass::TcpSyn as u8 {
        let answered = answer(&ctx, &p.at);
        mitigate::count_rule(index, ACTION_SYN_COOKIES, len, answered, stats);
        return if answered { xdp_action::XDP_TX } else { xdp_action::XDP_PASS };
    }
    if check(&ctx, &p.at) {
        mitigate::learn_handshake(&p.src);
        mitigate::count_rule(index, ACTION_SYN_COOKIES, len, false, stats);
        return xdp_action::XDP_PASS;
    }
    mitigate::count_rule(index, ACTION_SYN_COOKIES, len, true, stats);
    xdp_action::XDP_DROP
}

/// What the SYN-ACKs offer; the controller writes it from the interface's MTU.
#[map]
static SYNCOOKIE_CONFIG: Array<SynCookieConfig> = Array::with_max_entries(1, 0);

/// This CPU's copy of a SYN's options (the stack has no room for them),
/// and the option walk's state (see `OptionScan`).
#[map]
static SYN_OPTIONS: PerCpuArray<SynScratch> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
pub struct SynScratch {
    options: [u8; TCP_MAX_OPTIONS],
    scan: OptionScan,
}

/// The furthest an IP header starts: Ethernet and two VLAN tags.
const MAX_L3: usize = 22;

/// The frame's length, as a plain number: the verifier takes the
/// difference of the two packet pointers, but not arithmetic that LLVM
/// would otherwise fold the end pointer into.
#[inline(always)]
fn frame_len(ctx: &XdpContext) -> usize {
    let end = opaque(ctx.data_end());
    opaque(end - ctx.data())
}

/// Turns the SYN into its cookie SYN-ACK in place; true when the frame is
/// to be sent back (`XDP_TX`). False leaves the SYN to the stack: a layout
/// this does not answer.
///
/// The SYN-ACK is written over the SYN, in the room its TCP header had:
/// a frame cannot always grow (a veth's often cannot), so the options are
/// fitted to that room (`fit_options`). Every size below is a constant of
/// one copy of [`answer_with`], one per TCP header length, so the verifier
/// sees each access in bounds without the frame growing.
#[inline(always)]
fn answer(ctx: &XdpContext, at: &Offsets) -> bool {
    let (l3, l4) = (at.l3 as usize, at.l4 as usize);
    if l3 > MAX_L3 {
        return false;
    }
    let Some(ip) = header(ctx.data(), ctx.data_end(), l3, 1) else {
        return false;
    };
    if unsafe { u8_at(ip, 0) } >> 4 == 6 {
        answer_at::<40>(ctx, l3, l4)
    } else {
        answer_at::<20>(ctx, l3, l4)
    }
}

#[inline(always)]
fn answer_at<const IP: usize>(ctx: &XdpContext, l3: usize, l4: usize) -> bool {
    if l4 != l3 + IP {
        return false;
    }
    let Some(ip) = header(ctx.data(), ctx.data_end(), l3, IP + 20) else {
        return false;
    };
    // The cookie, and the SYN's options copied out: per TCP header length,
    // so each copy of this small part has constant sizes.
    let cookie = match unsafe { u8_at(ip + IP, 12) } >> 4 {
        5 => cookie_with::<IP, 20>(ctx, l3),
        6 => cookie_with::<IP, 24>(ctx, l3),
        7 => cookie_with::<IP, 28>(ctx, l3),
        8 => cookie_with::<IP, 32>(ctx, l3),
        9 => cookie_with::<IP, 36>(ctx, l3),
        10 => cookie_with::<IP, 40>(ctx, l3),
        11 => cookie_with::<IP, 44>(ctx, l3),
        12 => cookie_with::<IP, 48>(ctx, l3),
        13 => cookie_with::<IP, 52>(ctx, l3),
        14 => cookie_with::<IP, 56>(ctx, l3),
        15 => cookie_with::<IP, 60>(ctx, l3),
        _ => None,
    };
    let Some((cookie, th)) = cookie else {
        return false;
    };
    synack::<IP>(ctx, l3, cookie, th)
}

/// The SYN's cookie from the kernel's helper, for an IP header of `IP`
/// bytes and a TCP header of `TH`, with the SYN's options copied to this
/// CPU's scratch space; and `TH`.
#[inline(always)]
fn cookie_with<const IP: usize, const TH: usize>(ctx: &XdpContext, l3: usize) -> Option<(u32, usize)> {
    if l3 > MAX_L3 {
        return None;
    }
    let ip = header(ctx.data(), ctx.data_end(), l3, IP + TH)?;
    let tcp = ip + IP;
    let value = unsafe {
        if IP == 40 {
            bpf_tcp_raw_gen_syncookie_ipv6(ip as *mut ipv6hdr, tcp as *mut tcphdr, TH as u32)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv4(ip as *mut iphdr, tcp as *mut tcphdr, TH as u32)
        }
    };
    if value < 0 {
        return None;
    }
    let scratch = SYN_OPTIONS.get_ptr_mut(0)?;
    // A word at a time (options are whole words): `copy_nonoverlapping`
    // copies a byte at a time here, two instructions a byte in each of the
    // twenty-two copies of this function.
    let raw = unsafe { &raw mut (*scratch).options } as usize;
    let mut k = 0;
    while k < (TH - 20) / 4 {
        unsafe { store::<u32>(raw + k * 4, load::<u32>(tcp + 20 + k * 4)) };
        k += 1;
    }
    Some((value as u32, TH))
}

/// Writes the SYN-ACK over the SYN, whose TCP header had `th` bytes: the
/// options fitted to that room (`fit_options`), each write behind a
/// bounds check of constant size.
#[inline(always)]
fn synack<const IP: usize>(ctx: &XdpContext, l3: usize, cookie: u32, th: usize) -> bool {
    let Some(scratch) = SYN_OPTIONS.get_ptr_mut(0) else {
        return false;
    };
    let room = if th > 60 { 40 } else { th - 20 };
    let offered = unsafe { parse_syn_options(&(*scratch).options, room, &mut (*scratch).scan) };
    let (syn, with_mss) = fit_options(offered, room);
    let (start, end) = (ctx.data(), ctx.data_end());
    if l3 > MAX_L3 {
        return false;
    }
    let Some(eth) = header(start, end, 0, 14) else {
        return false;
    };
    let Some(ip) = header(start, end, l3, IP + 20) else {
        return false;
    };
    let tcp = ip + IP;
    let flags = unsafe { u8_at(tcp, 13) };
    let ecn = flags & (TCP_ECE | TCP_CWR) == TCP_ECE | TCP_CWR && syn.tsval.is_some();
    // The coarse clock (a tick, 1 to 10 ms, at half the cost): TSval only
    // needs to move forward in about milliseconds.
    let now_ms = (unsafe { bpf_ktime_get_coarse_ns() } / 1_000_000) as u32;
    let cfg = SYNCOOKIE_CONFIG.get(0).copied().unwrap_or_default().or_defaults();
    let mss = if IP == 40 { cfg.mss6 } else { cfg.mss4 };
    let (words, n) = synack_options(mss, cfg.wscale, &syn, ts_cookie(now_ms, &syn, ecn));
    let n = if with_mss { n } else { 0 };
    let tcp_len = 20 + n * 4;

    unsafe {
        // Ethernet: back where it came from.
        // Six bytes each, as a word and a half-word.
        let (d0, d1) = (load::<u32>(eth), load::<u16>(eth + 4));
        let (s0, s1) = (load::<u16>(eth + 6), load::<u32>(eth + 8));
        store::<u16>(eth, s0);
        store::<u32>(eth + 2, s1);
        store::<u32>(eth + 6, d0);
        store::<u16>(eth + 10, d1);

        if IP == 40 {
            // Version 6, traffic class and flow label 0.
            store::<u32>(ip, 0x6000_0000u32.to_be());
            store::<u16>(ip + 4, (tcp_len as u16).to_be());
            *((ip + 7) as *mut u8) = cfg.ttl;
            let src = [load::<u64>(ip + 8), load::<u64>(ip + 16)];
            let dst = [load::<u64>(ip + 24), load::<u64>(ip + 32)];
            store::<u64>(ip + 8, dst[0]);
            store::<u64>(ip + 16, dst[1]);
            store::<u64>(ip + 24, src[0]);
            store::<u64>(ip + 32, src[1]);
        } else {
            *((ip + 1) as *mut u8) = 0;
            store::<u16>(ip + 2, ((20 + tcp_len) as u16).to_be());
            store::<u32>(ip + 4, 0x0000_4000u32.to_be());
            *((ip + 8) as *mut u8) = cfg.ttl;
            store::<u16>(ip + 10, 0);
            let src = load::<u32>(ip + 12);
            let dst = load::<u32>(ip + 16);
            store::<u32>(ip + 12, dst);
            store::<u32>(ip + 16, src);
        }

        let sport = load::<u16>(tcp);
        let dport = load::<u16>(tcp + 2);
        store::<u16>(tcp, dport);
        store::<u16>(tcp + 2, sport);
        let seq = u32::from_be(load::<u32>(tcp + 4));
        store::<u32>(tcp + 4, cookie.to_be());
        store::<u32>(tcp + 8, seq.wrapping_add(1).to_be());
        *((tcp + 12) as *mut u8) = ((tcp_len / 4) as u8) << 4;
        *((tcp + 13) as *mut u8) = TCP_SYN | TCP_ACK | if ecn { TCP_ECE } else { 0 };
        // Window 0, as SYNPROXY's own SYN-ACK: it opens the window once
        // the listener has answered.
        store::<u32>(tcp + 14, 0);
        store::<u16>(tcp + 18, 0);
    }
    // The options, one word at a time, each behind its own check (the SYN
    // had room for them: `fit_options`).
    let mut i = 0;
    while i < 5 {
        if i < n {
            let Some(w) = header(start, end, l3, IP + 24 + i * 4) else {
                return false;
            };
            unsafe { store::<u32>(w + IP + 20 + i * 4, words[i].to_be()) };
        }
        i += 1;
    }
    // Checksums from scratch: the SYN's own may be partial (offloaded).
    let sum = match n {
        0 => tcp_sum::<IP, 20>(start, end, l3),
        1 => tcp_sum::<IP, 24>(start, end, l3),
        4 => tcp_sum::<IP, 36>(start, end, l3),
        5 => tcp_sum::<IP, 40>(start, end, l3),
        _ => None,
    };
    let Some(mut s) = sum else {
        return false;
    };
    unsafe {
        if IP == 40 {
            let mut k = 0;
            while k < 8 {
                s += load::<u32>(ip + 8 + k * 4) as u64;
                k += 1;
            }
            s += (tcp_len as u32).to_be() as u64;
            s += (IPPROTO_TCP as u32).to_be() as u64;
        } else {
            s += load::<u32>(ip + 12) as u64;
            s += load::<u32>(ip + 16) as u64;
            s += (((IPPROTO_TCP as u32 + tcp_len as u32) as u16).to_be()) as u64;
        }
        store::<u16>(tcp + 16, csum_fold(s));
        if IP == 20 {
            let sum = bpf_csum_diff(core::ptr::null_mut(), 0, ip as *mut u32, 20, 0);
            if sum < 0 {
                return false;
            }
            store::<u16>(ip + 10, csum_fold(sum as u64 & 0xffff_ffff));
        }
    }
    // Cut the frame to the SYN-ACK (a shrink, which always fits).
    let len = frame_len(ctx) as i32;
    let want = (l3 + IP + tcp_len) as i32;
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, want - len) == 0 }
}

/// The one's complement sum of the `TH`-byte TCP header after an IP header
/// of `IP` bytes at `l3`.
#[inline(always)]
fn tcp_sum<const IP: usize, const TH: usize>(start: usize, end: usize, l3: usize) -> Option<u64> {
    let ip = header(start, end, l3, IP + TH)?;
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, (ip + IP) as *mut u32, TH as u32, 0) };
    (sum >= 0).then_some(sum as u64 & 0xffff_ffff)
}

/// True when the segment's acknowledgment number is a valid cookie for its
/// addresses and ports (the ACK of a handshake this program answered). The
/// segment is then marked with [`HANDSHAKE_DSCP`] for netfilter's SYNPROXY.
#[inline(always)]
fn check(ctx: &XdpContext, at: &Offsets) -> bool {
    let (l3, l4) = (at.l3 as usize, at.l4 as usize);
    if l3 > MAX_L3 {
        return false;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(ip) = header(start, end, l3, 1) else {
        return false;
    };
    if unsafe { u8_at(ip, 0) } >> 4 == 6 {
        if l4 != l3 + 40 {
            return false;
        }
        let Some(ip) = header(start, end, l3, 60) else {
            return false;
        };
        if unsafe { bpf_tcp_raw_check_syncookie_ipv6(ip as *mut ipv6hdr, (ip + 40) as *mut tcphdr) } != 0 {
            return false;
        }
        unsafe {
            let w = u32::from_be(load::<u32>(ip));
            let tc = ((w >> 20) & 0xff) as u8;
            let tc = (HANDSHAKE_DSCP << 2) | (tc & 0x03);
            let w = (w & 0xf00f_ffff) | (tc as u32) << 20;
            store::<u32>(ip, w.to_be());
        }
        true
    } else {
        if l4 != l3 + 20 {
            return false;
        }
        let Some(ip) = header(start, end, l3, 40) else {
            return false;
        };
        if unsafe { bpf_tcp_raw_check_syncookie_ipv4(ip as *mut iphdr, (ip + 20) as *mut tcphdr) } != 0 {
            return false;
        }
        unsafe {
            let old = u16::from_be(load::<u16>(ip));
            let new = (old & 0xff03) | (HANDSHAKE_DSCP as u16) << 2;
            let check = u16::from_be(load::<u16>(ip + 10));
            store::<u16>(ip, new.to_be());
            store::<u16>(ip + 10, csum_replace(check, old, new).to_be());
        }
        true
    }
}
