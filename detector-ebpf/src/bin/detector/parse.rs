//! Frame parser: Ethernet, two VLAN tags, IPv4 with options, IPv6 with a
//! bounded walk of extension headers, TCP, UDP, ICMP, ICMPv6.
//!
//! Every read goes through [`header`], an explicit bounds check against
//! `data_end` that returns the checked address. Offsets are small bounded
//! integers added to `data`; lengths from the packet are compared as
//! integers against `data_end - data`, never used to build a pointer.
//! A frame that announces a header it does not carry, or a length it does
//! not have, is `Malformed`; nothing here decides to drop anything.

use detector_common::{class::is_amplification_port, TrafficClass};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ: u16 = 0x9100;
const MAX_VLAN: usize = 2;
/// IPv6 extension headers walked before giving up (and calling it malformed).
const MAX_IPV6_EXT: usize = 6;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MH: u8 = 135;

pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
pub(crate) const TCP_ACK: u8 = 0x10;
pub(crate) const TCP_ECE: u8 = 0x40;
pub(crate) const TCP_CWR: u8 = 0x80;

/// What the parser learned about one frame. Laid out in words: the
/// program copies it into a map once per packet (see its `launder`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Parsed {
    /// The source address, IPv4 mapped into IPv6, as two words in packet
    /// byte order; valid when `has_src`.
    pub src: [u64; 2],
    /// The destination address, the same way ([`detector_common::rules::dst_words`]).
    /// Read here, once: rules on the destination and, in network mode,
    /// per-destination counting need it.
    pub dst: [u64; 2],
    /// The [`TrafficClass`] id: a plain number, not the enum, because the
    /// program reads it back from a map (see its `launder`), where the
    /// compiler's knowledge that an enum holds a valid value would let it
    /// drop the bounds checks the verifier needs.
    pub class: u8,
    /// The IP header was sound: `src`, `dst` and `ttl` are set.
    pub has_src: bool,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// TCP flags; 0 for other transports.
    pub tcp_flags: u8,
    /// Transport ports (TCP and UDP), 0 otherwise.
    pub ports: Ports,
    /// Where the rest of the headers are, for the few packets that need
    /// them (a sample); nothing reads them per packet.
    pub at: Offsets,
}

/// Offsets from the start of the frame.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Offsets {
    /// The IP header (after Ethernet and VLAN tags).
    pub l3: u16,
    /// The transport header (0: none, or not parsed).
    pub l4: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// A transport verdict: the class and, for TCP and UDP, the ports.
struct Transport {
    class: TrafficClass,
    ports: Ports,
    flags: u8,
    l4: usize,
}

impl Transport {
    #[inline(always)]
    const fn bare(class: TrafficClass) -> Self {
        Transport { class, ports: Ports { src: 0, dst: 0 }, flags: 0, l4: 0 }
    }
}

/// The IP layer's findings, for [`Parsed::from`].
struct Ip {
    src: [u64; 2],
    dst: [u64; 2],
    ttl: u8,
    l3: usize,
    limit: usize,
}

impl Parsed {
    #[inline(always)]
    const fn bare(class: TrafficClass) -> Self {
        Parsed {
            src: [0; 2],
            dst: [0; 2],
            class: class as u8,
            has_src: false,
            ttl: 0,
            tcp_flags: 0,
            ports: Ports { src: 0, dst: 0 },
            at: Offsets { l3: 0, l4: 0 },
        }
    }

    #[inline(always)]
    const fn from(t: Transport, ip: Ip) -> Self {
        Parsed {
            src: ip.src,
            dst: ip.dst,
            class: t.class as u8,
            has_src: true,
            ttl: ip.ttl,
            tcp_flags: t.flags,
            ports: t.ports,
            // Frames are shorter than 64 KiB; the casts cannot cut.
            at: Offsets { l3: ip.l3 as u16, l4: t.l4 as u16 },
        }
    }

    #[inline(always)]
    const fn fragment(ip: Ip) -> Self {
        Parsed::from(Transport::bare(TrafficClass::Fragment), ip)
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`).
#[inline(always)]
fn mapped(a: [u8; 4]) -> [u8; 16] {
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]]
}

#[inline(always)]
fn words(b: [u8; 16]) -> [u64; 2] {
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(b) }
}

#[inline(always)]
pub fn bytes(w: [u64; 2]) -> [u8; 16] {
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(w) }
}

/// The address of `len` readable bytes at `off`, or `None` past the end.
///
/// Every packet read goes through the address this returns, plus a constant
/// smaller than `len`. The address passes through [`opaque`] so LLVM can
/// neither drop the check (it can often derive it from an earlier length
/// check, which the verifier cannot) nor rebuild the address from another
/// base after the check (the verifier only trusts the checked register).
#[inline(always)]
pub(crate) fn header(start: usize, end: usize, off: usize, len: usize) -> Option<usize> {
    let p = opaque(start + off);
    if p + len > end {
        None
    } else {
        Some(p)
    }
}

/// Hides a value from LLVM's reasoning. Costs one register move (an empty
/// asm block would leave two BTF line entries on one instruction, which the
/// kernel rejects).
#[inline(always)]
pub(crate) fn opaque(mut x: usize) -> usize {
    unsafe { core::arch::asm!("{0} = {0}", inout(reg) x, options(pure, nomem, nostack)) };
    x
}

#[inline(always)]
pub(crate) unsafe fn u8_at(p: usize, k: usize) -> u8 {
    unsafe { *((p + k) as *const u8) }
}

#[inline(always)]
pub(crate) unsafe fn be16_at(p: usize, k: usize) -> u16 {
    u16::from_be(unsafe { load::<u16>(p + k) })
}

/// A packet word at `p`, in packet byte order, read with one load.
///
/// `read_unaligned` would not do: the BPF backend knows no unaligned
/// access, so it reads a `u64` as eight byte loads put together with
/// shifts (an IPv6 header's two addresses were a hundred instructions, and
/// their bytes spilled to the stack). The kernel lets a program read
/// packet data at any alignment on the architectures with efficient
/// unaligned access (x86-64 and arm64 among them); on the others its
/// verifier checks the alignment and refuses a misaligned read at load,
/// so nothing is ever misread.
///
/// # Safety
/// `p` is a packet address [`header`] checked for at least
/// `size_of::<T>()` bytes.
#[inline(always)]
pub(crate) unsafe fn load<T: Word>(p: usize) -> T {
    unsafe { T::load(p) }
}

/// Writes a word at `p` with one store (see [`load`]): into the frame, in
/// packet byte order, or into a map value at a byte offset.
///
/// # Safety
/// `p` is a packet address [`header`] checked for at least
/// `size_of::<T>()` bytes, in a frame the program may rewrite; or inside
/// a map value with that many bytes left.
#[inline(always)]
pub(crate) unsafe fn store<T: Word>(p: usize, v: T) {
    unsafe { T::store(p, v) }
}

/// The packet words [`load`] reads and [`store`] writes.
pub(crate) trait Word: Sized {
    /// # Safety
    /// As [`load`].
    unsafe fn load(p: usize) -> Self;
    /// # Safety
    /// As [`store`].
    unsafe fn store(p: usize, v: Self);
}

macro_rules! word {
    ($t:ty, $load:literal, $store:literal) => {
        impl Word for $t {
            #[inline(always)]
            unsafe fn load(p: usize) -> $t {
                let v: u64;
                // Not `pure`: LLVM must not hoist the load above the
                // bounds check that makes it valid.
                unsafe { core::arch::asm!($load, v = lateout(reg) v, p = in(reg) p, options(readonly, nostack, preserves_flags)) };
                v as $t
            }

            #[inline(always)]
            unsafe fn store(p: usize, v: $t) {
                unsafe { core::arch::asm!($store, v = in(reg) v as u64, p = in(reg) p, options(nostack, preserves_flags)) };
            }
        }
    };
}
word!(u16, "{v} = *(u16 *)({p} + 0)", "*(u16 *)({p} + 0) = {v}");
word!(u32, "{v} = *(u32 *)({p} + 0)", "*(u32 *)({p} + 0) = {v}");
word!(u64, "{v} = *(u64 *)({p} + 0)", "*(u64 *)({p} + 0) = {v}");

#[inline(always)]
pub fn parse(start: usize, end: usize) -> Parsed {
    let Some(eth) = header(start, end, 0, ETH_HLEN) else {
        return Parsed::bare(TrafficClass::Malformed);
    };
    let mut proto = unsafe { be16_at(eth, 12) };
    let mut off = ETH_HLEN;
    let mut i = 0;
    while i < MAX_VLAN {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD && proto != ETH_P_QINQ {
            break;
        }
        let Some(tag) = header(start, end, off, 4) else {
            return Parsed::bare(TrafficClass::Malformed);
        };
        proto = unsafe { be16_at(tag, 2) };
        off += 4;
        i += 1;
    }
    match proto {
        ETH_P_IP => ipv4(start, end, off),
        ETH_P_IPV6 => ipv6(start, end, off),
        // A third VLAN tag is legal but rare; we do not walk it.
        _ => Parsed::bare(TrafficClass::NonIp),
    }
}

#[inline(always)]
fn ipv4(start: usize, end: usize, off: usize) -> Parsed {
    let Some(ip) = header(start, end, off, 20) else {
        return Parsed::bare(TrafficClass::Malformed);
    };
    let vihl = unsafe { u8_at(ip, 0) };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let total = unsafe { be16_at(ip, 2) } as usize;
    if vihl >> 4 != 4 || ihl < 20 || total < ihl || off + total > end - start {
        return Parsed::bare(TrafficClass::Malformed);
    }
    let src = words(mapped(unsafe { load::<u32>(ip + 12) }.to_ne_bytes()));
    let dst = words(mapped(unsafe { load::<u32>(ip + 16) }.to_ne_bytes()));
    let ip_info = Ip { src, dst, ttl: unsafe { u8_at(ip, 8) }, l3: off, limit: off + total };
    // More-fragments flag or a non-zero offset: any piece of a fragmented datagram.
    if unsafe { be16_at(ip, 6) } & 0x3fff != 0 {
        return Parsed::fragment(ip_info);
    }
    let proto = unsafe { u8_at(ip, 9) };
    Parsed::from(transport(start, end, off + ihl, off + total, proto), ip_info)
}

#[inline(always)]
fn ipv6(start: usize, end: usize, off: usize) -> Parsed {
    let Some(ip) = header(start, end, off, 40) else {
        return Parsed::bare(TrafficClass::Malformed);
    };
    let payload = unsafe { be16_at(ip, 4) } as usize;
    if unsafe { u8_at(ip, 0) } >> 4 != 6 || off + 40 + payload > end - start {
        return Parsed::bare(TrafficClass::Malformed);
    }
    // Two word loads, not sixteen byte loads: fewer instructions, and fewer
    // stack slots for the verifier to track.
    let src = unsafe { [load::<u64>(ip + 8), load::<u64>(ip + 16)] };
    let limit = off + 40 + payload;
    let dst = unsafe { [load::<u64>(ip + 24), load::<u64>(ip + 32)] };
    let ip_info = Ip { src, dst, ttl: unsafe { u8_at(ip, 7) }, l3: off, limit };
    let mut next = unsafe { u8_at(ip, 6) };
    let mut l4 = off + 40;
    let mut i = 0;
    while i < MAX_IPV6_EXT {
        let unit = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => 8,
            IPPROTO_AH => 4,
            // 8 bytes, always; only its presence is needed, but it must be
            // there: one the payload ends before is malformed.
            IPPROTO_FRAGMENT => {
                if l4 + 8 > limit || header(start, end, l4, 8).is_none() {
                    return Parsed::bare(TrafficClass::Malformed);
                }
                return Parsed::fragment(ip_info);
            }
            _ => break,
        };
        if l4 + 8 > limit {
            return Parsed::bare(TrafficClass::Malformed);
        }
        let Some(ext) = header(start, end, l4, 8) else {
            return Parsed::bare(TrafficClass::Malformed);
        };
        next = unsafe { u8_at(ext, 0) };
        let len = unsafe { u8_at(ext, 1) } as usize;
        // Extension lengths do not count their first unit (AH: first two).
        l4 += if unit == 8 { (len + 1) * 8 } else { (len + 2) * 4 };
        i += 1;
    }
    if i == MAX_IPV6_EXT && is_ipv6_ext(next) {
        return Parsed::bare(TrafficClass::Malformed);
    }
    if l4 > limit {
        return Parsed::bare(TrafficClass::Malformed);
    }
    Parsed::from(transport(start, end, l4, limit, next), ip_info)
}

#[inline(always)]
fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH | IPPROTO_AH | IPPROTO_FRAGMENT)
}

/// Classifies the transport header at `l4`; `limit` is where the IP packet
/// ends (Ethernet padding after it is not payload).
#[inline(always)]
fn transport(start: usize, end: usize, l4: usize, limit: usize, proto: u8) -> Transport {
    match proto {
        IPPROTO_TCP => tcp(start, end, l4, limit),
        IPPROTO_UDP => {
            if l4 + 8 > limit {
                return Transport::bare(TrafficClass::Malformed);
            }
            let Some(udp) = header(start, end, l4, 8) else {
                return Transport::bare(TrafficClass::Malformed);
            };
            let ports = Ports { src: unsafe { be16_at(udp, 0) }, dst: unsafe { be16_at(udp, 2) } };
            let class = if ports.src == 53 {
                TrafficClass::DnsResponse
            } else if ports.dst == 53 {
                TrafficClass::DnsQuery
            } else if is_amplification_port(ports.src) {
                TrafficClass::UdpAmplification
            } else {
                TrafficClass::Udp
            };
            Transport { class, ports, flags: 0, l4 }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if l4 + 4 > limit || header(start, end, l4, 4).is_none() {
                return Transport::bare(TrafficClass::Malformed);
            }
            let class = if proto == IPPROTO_ICMP { TrafficClass::Icmp } else { TrafficClass::Icmpv6 };
            Transport { class, ports: Ports { src: 0, dst: 0 }, flags: 0, l4 }
        }
        _ => Transport::bare(TrafficClass::OtherIp),
    }
}

#[inline(always)]
fn tcp(start: usize, end: usize, l4: usize, limit: usize) -> Transport {
    if l4 + 20 > limit {
        return Transport::bare(TrafficClass::Malformed);
    }
    let Some(th) = header(start, end, l4, 20) else {
        return Transport::bare(TrafficClass::Malformed);
    };
    let doff = ((unsafe { u8_at(th, 12) } >> 4) as usize) * 4;
    if doff < 20 || l4 + doff > limit {
        return Transport::bare(TrafficClass::Malformed);
    }
    let ports = Ports { src: unsafe { be16_at(th, 0) }, dst: unsafe { be16_at(th, 2) } };
    let flags = unsafe { u8_at(th, 13) };
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    let class = if syn {
        if ack {
            TrafficClass::TcpSynAck
        } else {
            TrafficClass::TcpSyn
        }
    } else if flags & TCP_RST != 0 {
        TrafficClass::TcpRst
    } else if (ports.dst == 80 || ports.dst == 8080) && is_http_request(start, end, l4 + doff, limit) {
        TrafficClass::HttpRequest
    } else {
        TrafficClass::TcpAck
    };
    Transport { class, ports, flags, l4 }
}

#[inline(always)]
fn is_http_request(start: usize, end: usize, payload: usize, limit: usize) -> bool {
    if payload + 4 > limit {
        return false;
    }
    match header(start, end, payload, 4) {
        Some(p) => is_http_method(unsafe { load::<u32>(p) }.to_ne_bytes()),
        None => false,
    }
}

/// The first four bytes of every HTTP/1.x request method.
#[inline(always)]
fn is_http_method(w: [u8; 4]) -> bool {
    matches!(&w, b"GET " | b"POST" | b"PUT " | b"HEAD" | b"DELE" | b"OPTI" | b"PATC" | b"CONN" | b"TRAC")
}
