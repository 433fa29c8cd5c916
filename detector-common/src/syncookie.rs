//! SYN cookies answered from XDP: what the program and the controller share.
//!
//! A rule with [`crate::rules::ACTION_SYN_COOKIES`] makes the program answer
//! each SYN to its ports itself, with a SYN-ACK whose sequence number is the
//! kernel's own SYN cookie (`bpf_tcp_raw_gen_syncookie_ipv4/ipv6`), sent
//! back out of the interface (`XDP_TX`): a spoofed SYN never reaches the
//! stack, and answering costs no state. The ACK that completes a handshake
//! carries the cookie back; the program checks it
//! (`bpf_tcp_raw_check_syncookie_ipv4/ipv6`), learns the source as a known
//! peer, marks the segment with [`HANDSHAKE_DSCP`] and passes it. An ACK
//! from an unknown source with no valid cookie is dropped.
//!
//! The kernel's listener takes a cookie only right after it sent cookies
//! itself, so the marked ACK is handed to netfilter's SYNPROXY (the design
//! of the kernel's `xdp_synproxy` selftest): it checks the cookie again,
//! opens the connection to the listener on the client's behalf with the
//! options the cookie carries, and translates sequence numbers for the
//! connection's life. The controller installs that one nftables rule (see
//! `detector/src/kernel/synproxy.rs`); it matches only the DSCP mark, which
//! only the program sets and only on an ACK whose cookie it checked, so
//! every other connection is left to the stack as before.
//!
//! The connection's options ride in the SYN-ACK's timestamp as the kernel
//! encodes them (`cookie_init_timestamp`): window scale, SACK and ECN in the
//! low six bits of TSval. A client without timestamps gets an MSS option
//! only, as from the kernel's own cookies. The SYN-ACK is written over the
//! SYN in the room the SYN's TCP header had ([`fit_options`]): a frame
//! cannot always grow (a veth's mostly cannot), and a SYN without options
//! (a flood tool's) gets a SYN-ACK without options.

/// Array of one [`SynCookieConfig`], set by the controller.
pub const SYNCOOKIE_CONFIG_MAP: &str = "SYNCOOKIE_CONFIG";

/// DSCP the program puts on an ACK whose cookie it checked (pool 3 of
/// RFC 2474, for local use): the mark the SYNPROXY rule matches. The
/// segment is consumed by SYNPROXY, so the mark never reaches a socket.
pub const HANDSHAKE_DSCP: u8 = 0x3f;
/// Window scale the SYN-ACK offers; SYNPROXY's rule offers the same.
pub const DEFAULT_WSCALE: u8 = 7;
pub const DEFAULT_MSS4: u16 = 1460;
pub const DEFAULT_MSS6: u16 = 1440;
pub const DEFAULT_TTL: u8 = 64;
/// The longest TCP header.
pub const TCP_MAXLEN: usize = 60;
/// The most option bytes a TCP header carries.
pub const TCP_MAX_OPTIONS: usize = TCP_MAXLEN - 20;

/// What the SYN-ACKs say about this end of the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynCookieConfig {
    /// MSS offered over IPv4 and IPv6 (the interface's MTU minus headers).
    pub mss4: u16,
    pub mss6: u16,
    /// Window scale offered (when the client offered one).
    pub wscale: u8,
    /// TTL or hop limit of the SYN-ACK.
    pub ttl: u8,
    pub _pad: [u8; 2],
}

impl SynCookieConfig {
    /// The configuration to use: zeros (nothing written yet) are the defaults.
    #[inline(always)]
    pub fn or_defaults(self) -> SynCookieConfig {
        SynCookieConfig {
            mss4: if self.mss4 == 0 { DEFAULT_MSS4 } else { self.mss4 },
            mss6: if self.mss6 == 0 { DEFAULT_MSS6 } else { self.mss6 },
            wscale: if self.wscale == 0 { DEFAULT_WSCALE } else { self.wscale },
            ttl: if self.ttl == 0 { DEFAULT_TTL } else { self.ttl },
            _pad: [0; 2],
        }
    }
}

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOPT_WINDOW: u8 = 3;
const TCPOPT_SACK_PERM: u8 = 4;
const TCPOPT_TIMESTAMP: u8 = 8;
const TCP_MAX_WSCALE: u8 = 14;
/// "No window scale" in the timestamp cookie, as the kernel encodes it.
const TS_OPT_WSCALE_NONE: u32 = 0xf;
const TS_OPT_SACK: u32 = 1 << 4;
const TS_OPT_ECN: u32 = 1 << 5;
const TSBITS: u32 = 6;
const TSMASK: u32 = (1 << TSBITS) - 1;

/// The options of a client's SYN that the cookie must remember.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    /// The client's window scale (capped at 14), or `None`.
    pub wscale: Option<u8>,
    pub sack: bool,
    /// The client's TSval, when it sent timestamps.
    pub tsval: Option<u32>,
}

/// Where [`parse_syn_options`] keeps its state between steps. In the XDP
/// program it lives in a map: the verifier then sees plain numbers at each
/// step, the ways through one step meet at the next, and the walk costs
/// steps times one step, not the product of every option's branches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OptionScan {
    /// Offset of the next option.
    pub at: u32,
    /// The window scale + 1; 0: none.
    pub wscale: u32,
    pub sack: u32,
    /// Non-zero: `tsval` was read.
    pub ts: u32,
    pub tsval: u32,
}

/// Options (NOPs included) read from a SYN at most. A SYN carries few:
/// Linux 5, macOS 8 (with its NOPs), Windows 6. The bound keeps the
/// verifier's walk of the loop short; options past it are not read (the
/// SYN-ACK then offers less, never something wrong).
pub const MAX_OPTION_STEPS: usize = 16;

/// Reads the options of a SYN, `opts[..len]`, keeping its state in `scan`
/// (see [`OptionScan`]). Stops at the end-of-list option, at an option
/// that does not fit, or after [`MAX_OPTION_STEPS`]; what was read before
/// counts.
#[inline(always)]
pub fn parse_syn_options(opts: &[u8; TCP_MAX_OPTIONS], len: usize, scan: &mut OptionScan) -> SynOptions {
    if let Some(o) = known_layout(opts, len) {
        return o;
    }
    let len = if len > TCP_MAX_OPTIONS { TCP_MAX_OPTIONS } else { len };
    // Volatile: the compiler must not carry the state in registers, or the
    // verifier would track it, which is what `scan` is there to avoid.
    let put = |field: &mut u32, v: u32| unsafe { core::ptr::write_volatile(field, v) };
    put(&mut scan.at, 0);
    put(&mut scan.wscale, 0);
    put(&mut scan.sack, 0);
    put(&mut scan.ts, 0);
    let mut steps = 0;
    while steps < MAX_OPTION_STEPS {
        steps += 1;
        let i = unsafe { core::ptr::read_volatile(&scan.at) } as usize;
        if i >= len {
            break;
        }
        let Some(kind) = byte(opts, i) else { break };
        if kind == TCPOPT_EOL {
            break;
        }
        if kind == TCPOPT_NOP {
            put(&mut scan.at, i as u32 + 1);
            continue;
        }
        let Some(size) = byte(opts, i + 1) else { break };
        let size = size as usize;
        if size < 2 || i + size > len {
            break;
        }
        match (kind, size) {
            (TCPOPT_WINDOW, 3) => {
                if let Some(w) = byte(opts, i + 2) {
                    put(&mut scan.wscale, if w < TCP_MAX_WSCALE { w } else { TCP_MAX_WSCALE } as u32 + 1);
                }
            }
            (TCPOPT_SACK_PERM, 2) => put(&mut scan.sack, 1),
            (TCPOPT_TIMESTAMP, 10) => {
                if let (Some(a), Some(b), Some(c), Some(d)) =
                    (byte(opts, i + 2), byte(opts, i + 3), byte(opts, i + 4), byte(opts, i + 5))
                {
                    put(&mut scan.tsval, u32::from_be_bytes([a, b, c, d]));
                    put(&mut scan.ts, 1);
                }
            }
            _ => {}
        }
        put(&mut scan.at, (i + size) as u32);
    }
    let get = |field: &u32| unsafe { core::ptr::read_volatile(field) };
    let w = get(&scan.wscale);
    SynOptions {
        wscale: if w == 0 { None } else { Some((w - 1) as u8) },
        sack: get(&scan.sack) != 0,
        tsval: if get(&scan.ts) != 0 { Some(get(&scan.tsval)) } else { None },
    }
}

/// The SYN options of the common stacks, read at fixed places without the
/// walk (which costs the XDP program a few hundred ns): Linux (MSS, SACK
/// permitted, timestamp, NOP, window scale), macOS (MSS, NOP, window
/// scale, NOP, NOP, timestamp, SACK permitted, end) and Windows (MSS, NOP,
/// window scale, NOP, NOP, SACK permitted). Anything else: `None`.
#[inline(always)]
fn known_layout(b: &[u8; TCP_MAX_OPTIONS], len: usize) -> Option<SynOptions> {
    let cap = |w: u8| if w < TCP_MAX_WSCALE { w } else { TCP_MAX_WSCALE };
    let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mss = b[0] == TCPOPT_MSS && b[1] == 4;
    match len {
        20 if mss && b[4..8] == [4, 2, 8, 10] && b[16..19] == [1, 3, 3] => {
            Some(SynOptions { wscale: Some(cap(b[19])), sack: true, tsval: Some(word(8)) })
        }
        24 if mss && b[4..7] == [1, 3, 3] && b[8..12] == [1, 1, 8, 10] && b[20..24] == [4, 2, 0, 0] => {
            Some(SynOptions { wscale: Some(cap(b[7])), sack: true, tsval: Some(word(12)) })
        }
        12 if mss && b[4..7] == [1, 3, 3] && b[8..12] == [1, 1, 4, 2] => {
            Some(SynOptions { wscale: Some(cap(b[7])), sack: true, tsval: None })
        }
        _ => None,
    }
}

/// `opts[k]`, or `None` past the end. The index goes through
/// `black_box`, so the compiler keeps every bounds check: the BPF verifier
/// needs each one, and LLVM would drop those it can prove from the loop's
/// own checks, which the verifier cannot follow.
#[inline(always)]
fn byte(opts: &[u8; TCP_MAX_OPTIONS], k: usize) -> Option<u8> {
    opts.get(core::hint::black_box(k)).copied()
}

/// The SYN-ACK's TSval: the clock in milliseconds with the client's window
/// scale, SACK and ECN in its low bits (the kernel's `cookie_init_timestamp`,
/// which SYNPROXY and the kernel decode from the returning TSecr).
#[inline(always)]
pub fn ts_cookie(now_ms: u32, o: &SynOptions, ecn: bool) -> u32 {
    let mut c = now_ms & !TSMASK;
    c |= match o.wscale {
        Some(w) => w as u32,
        None => TS_OPT_WSCALE_NONE,
    };
    if o.sack {
        c |= TS_OPT_SACK;
    }
    if ecn {
        c |= TS_OPT_ECN;
    }
    c
}

/// What the SYN-ACK can say in `room` bytes of options (the SYN's own
/// option space: the SYN-ACK is written over the SYN, and a frame cannot
/// always grow): everything from 20 bytes; without the window scale from
/// 16 (the cookie then says "none", so neither end scales); the MSS alone
/// from 4 (the cookie says nothing more); no option at all below (the
/// client then assumes the smallest MSS). Returns the options the cookie
/// is to carry and whether the MSS option fits.
#[inline(always)]
pub fn fit_options(o: SynOptions, room: usize) -> (SynOptions, bool) {
    let mut o = o;
    if room < 20 {
        o.wscale = None;
    }
    if room < 16 {
        o = SynOptions::default();
    }
    (o, room >= 4)
}

/// The SYN-ACK's options as big-endian words, and how many: the MSS alone
/// for a client without timestamps (the cookie has nowhere to keep more);
/// else MSS, SACK-permitted (if asked) and the timestamp, then the window
/// scale (if the client offered one).
#[inline(always)]
pub fn synack_options(mss: u16, wscale: u8, o: &SynOptions, tsval: u32) -> ([u32; 5], usize) {
    let mut w = [0u32; 5];
    w[0] = (TCPOPT_MSS as u32) << 24 | 4 << 16 | mss as u32;
    let Some(tsecr) = o.tsval else {
        return (w, 1);
    };
    let head = if o.sack { (TCPOPT_SACK_PERM as u32) << 8 | 2 } else { (TCPOPT_NOP as u32) << 8 | TCPOPT_NOP as u32 };
    w[1] = head << 16 | (TCPOPT_TIMESTAMP as u32) << 8 | 10;
    w[2] = tsval;
    w[3] = tsecr;
    if o.wscale.is_none() {
        return (w, 4);
    }
    w[4] = (TCPOPT_NOP as u32) << 24 | (TCPOPT_WINDOW as u32) << 16 | 3 << 8 | wscale as u32;
    (w, 5)
}

/// Folds a 32-bit one's complement sum to the 16-bit checksum.
#[inline(always)]
pub fn csum_fold(sum: u64) -> u16 {
    let mut s = sum;
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// RFC 1624: the checksum after one 16-bit word of the summed data
/// changed from `old` to `new` (all in host order).
#[inline(always)]
pub fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let s = (!check as u32) + (!old as u32 & 0xffff) + new as u32;
    csum_fold(s as u64)
}

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::SynCookieConfig {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    fn opts(bytes: &[u8]) -> ([u8; TCP_MAX_OPTIONS], usize) {
        let mut a = [0u8; TCP_MAX_OPTIONS];
        a[..bytes.len()].copy_from_slice(bytes);
        (a, bytes.len())
    }

    #[test]
    fn layout() {
        assert_eq!(size_of::<SynCookieConfig>(), 8);
        assert_eq!(size_of::<OptionScan>(), 20);
    }

    #[test]
    fn reads_a_linux_syn() {
        // MSS 1460, SACK-permitted, timestamp, NOP, window scale 7.
        let (a, n) = opts(&[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0, 1, 3, 3, 7]);
        let o = parse_syn_options(&a, n, &mut OptionScan::default());
        assert_eq!(o, SynOptions { wscale: Some(7), sack: true, tsval: Some(0x102) });
    }

    #[test]
    fn reads_a_bare_syn_and_stops_at_broken_options() {
        assert_eq!(parse_syn_options(&[0; TCP_MAX_OPTIONS], 0, &mut OptionScan::default()), SynOptions::default());
        // hping3: no options at all; a window scale above 14 is capped.
        let (a, n) = opts(&[1, 3, 3, 20]);
        assert_eq!(parse_syn_options(&a, n, &mut OptionScan::default()).wscale, Some(14));
        // A zero size must not loop; a timestamp that runs past the end is not read.
        let (a, n) = opts(&[4, 2, 9, 0, 8, 10, 0, 0]);
        assert_eq!(
            parse_syn_options(&a, n, &mut OptionScan::default()),
            SynOptions { sack: true, ..Default::default() }
        );
        let (a, n) = opts(&[8, 10, 1, 2, 3]);
        assert_eq!(parse_syn_options(&a, n, &mut OptionScan::default()), SynOptions::default());
        // End of list ends it.
        let (a, n) = opts(&[0, 4, 2]);
        assert_eq!(parse_syn_options(&a, n, &mut OptionScan::default()), SynOptions::default());
    }

    #[test]
    fn a_run_of_nops_ends_the_walk() {
        // Twenty NOPs and a window scale: past the steps the walk takes.
        let mut b = [1u8; 23];
        b[20..].copy_from_slice(&[3, 3, 7]);
        let (a, n) = opts(&b);
        assert_eq!(parse_syn_options(&a, n, &mut OptionScan::default()), SynOptions::default());
        // A macOS SYN fits.
        let (a, n) = opts(&[2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 4, 2, 0, 0]);
        let o = parse_syn_options(&a, n, &mut OptionScan::default());
        assert_eq!(o, SynOptions { wscale: Some(6), sack: true, tsval: Some(9) });
    }

    #[test]
    fn the_common_layouts_read_as_the_walk_reads_them() {
        let linux = [2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0, 1, 3, 3, 7];
        let macos = [2, 4, 5, 0xb4, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 4, 2, 0, 0];
        let windows = [2, 4, 5, 0xb4, 1, 3, 3, 8, 1, 1, 4, 2];
        for bytes in [&linux[..], &macos[..], &windows[..]] {
            let (a, n) = opts(bytes);
            let fast = known_layout(&a, n).expect("a known layout");
            // The walk alone, on the same bytes (a copy with one more NOP
            // than any layout, so the fast path does not take it).
            let mut walked = [1u8; TCP_MAX_OPTIONS];
            walked[1..=n].copy_from_slice(bytes);
            assert_eq!(parse_syn_options(&walked, n + 1, &mut OptionScan::default()), fast, "{bytes:?}");
        }
        let (a, n) = opts(&[2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 1, 2, 0, 0, 0, 0, 1, 3, 3, 20]);
        assert_eq!(known_layout(&a, n).unwrap().wscale, Some(14), "capped as by the walk");
        let (a, n) = opts(&[2, 4, 5, 0xb4, 1, 3, 3, 6]);
        assert_eq!(known_layout(&a, n), None);
    }

    #[test]
    fn timestamp_cookie_encodes_like_the_kernel() {
        let o = SynOptions { wscale: Some(7), sack: true, tsval: Some(5) };
        assert_eq!(ts_cookie(0x1234_5678, &o, false), 0x1234_5640 | 7 | 1 << 4);
        let bare = SynOptions { tsval: Some(5), ..Default::default() };
        assert_eq!(ts_cookie(0x40, &bare, true), 0x40 | 0xf | 1 << 5);
    }

    #[test]
    fn synack_options_layouts() {
        let none = SynOptions::default();
        assert_eq!(synack_options(1460, 7, &none, 0), ([0x0204_05b4, 0, 0, 0, 0], 1));
        let o = SynOptions { wscale: Some(8), sack: true, tsval: Some(9) };
        let (w, n) = synack_options(1460, 7, &o, 0xaa);
        assert_eq!(n, 5);
        assert_eq!(w, [0x0204_05b4, 0x0402_080a, 0xaa, 9, 0x0103_0307]);
        let o = SynOptions { wscale: None, sack: false, tsval: Some(9) };
        let (w, n) = synack_options(1460, 7, &o, 0xaa);
        assert_eq!((w[1], n), (0x0101_080a, 4));
    }

    #[test]
    fn options_fit_the_room_the_syn_left() {
        let o = SynOptions { wscale: Some(7), sack: true, tsval: Some(1) };
        assert_eq!(fit_options(o, 20), (o, true));
        assert_eq!(fit_options(o, 16), (SynOptions { wscale: None, ..o }, true));
        assert_eq!(fit_options(o, 12), (SynOptions::default(), true));
        assert_eq!(fit_options(o, 0), (SynOptions::default(), false));
    }

    #[test]
    fn checksums() {
        // An IPv4 header from RFC 1071's style of example.
        let words: [u16; 10] = [0x4500, 0x0073, 0x0000, 0x4000, 0x4011, 0x0000, 0xc0a8, 0x0001, 0xc0a8, 0x00c7];
        let sum: u64 = words.iter().map(|&w| w as u64).sum();
        let check = csum_fold(sum);
        assert_eq!(check, 0xb861);
        // Changing the TOS incrementally equals summing again.
        let mut changed = words;
        changed[0] = 0x45fc;
        let full = csum_fold(changed.iter().map(|&w| w as u64).sum());
        assert_eq!(csum_replace(check, 0x4500, 0x45fc), full);
    }
}
