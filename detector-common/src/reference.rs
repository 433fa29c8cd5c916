//! A plain reading of the README's "Traffic classes" table, for checking
//! the XDP parser against.
//!
//! The XDP parser (`detector-ebpf/src/bin/detector/parse.rs`) is written
//! for the verifier: offsets into the packet, a bounds check before every
//! read, loops with fixed bounds. This module is written for a reader: it
//! slices the frame header by header, and each slice ends where its
//! enclosing header says it ends, so a read past the end of what a header
//! announces cannot happen unnoticed. It was written from the README, not
//! from the parser, so the two can disagree; the differential fuzzer
//! (`cargo xtask fuzz`) runs frames through both and reports every frame on
//! which they do.
//!
//! The rules, in the order a frame meets them:
//!
//! - **Ethernet**: 14 bytes. Up to two VLAN tags follow, each 4 bytes, with
//!   TPID 0x8100 (802.1Q), 0x88a8 (802.1ad) or 0x9100 (pre-standard QinQ),
//!   in any order. What follows the tags (or a third tag) is IPv4
//!   (0x0800), IPv6 (0x86dd) or else `non_ip`.
//! - **IPv4**: version 4, IHL at least 5, a total length that covers the
//!   header and fits in the frame (Ethernet padding after it is not part of
//!   the packet). More-fragments or a non-zero offset: `fragment`. The
//!   transport header must lie within the total length.
//! - **IPv6**: version 6, a payload length that fits in the frame. The
//!   extension headers walked are hop-by-hop (0), routing (43), fragment
//!   (44), destination options (60), AH (51) and mobility (135), each at
//!   least 8 bytes and wholly within the payload; a fragment header makes
//!   the packet a `fragment`. A seventh extension header is `malformed`.
//!   Any other next header (ESP, no next header, ...) is the transport.
//! - **Transport**: TCP needs 20 bytes and a data offset of at least 5
//!   words that fits; UDP 8 bytes; ICMP (protocol 1) and ICMPv6 (protocol
//!   or next header 58) 4 bytes. The class follows the protocol number, in
//!   either IP family: a family's check would cost the XDP program's IPv4
//!   path about 10 ns per packet (measured), for packets no stack accepts
//!   and no detection family treats apart (`icmp_flood` counts both).
//! - **TCP classes**, first that applies: SYN with ACK `tcp_synack`, SYN
//!   `tcp_syn`, RST `tcp_rst`, to port 80 or 8080 with a payload that starts
//!   with an HTTP method `http_request`, else `tcp_ack`.
//! - **UDP classes**, first that applies: from port 53 `dns_response`, to
//!   port 53 `dns_query`, from a reflector port `udp_amplification`, else
//!   `udp`. UDP's own length field is not read.
//!
//! A frame that ends before a header it announces, or whose lengths do not
//! add up as above, is `malformed`.

use crate::{class::is_amplification_port, TrafficClass};

/// Why a frame cannot be classified further: it is malformed.
struct Malformed;

type Verdict = Result<TrafficClass, Malformed>;

/// The class the README gives `frame` (a whole Ethernet frame).
pub fn classify(frame: &[u8]) -> TrafficClass {
    ethernet(frame).unwrap_or(TrafficClass::Malformed)
}

/// `n` bytes at `at` of `data`, or `Malformed` when `data` is shorter.
fn take(data: &[u8], at: usize, n: usize) -> Result<&[u8], Malformed> {
    data.get(at..at.checked_add(n).ok_or(Malformed)?).ok_or(Malformed)
}

/// Everything of `data` from `at` on (possibly nothing), or `Malformed`
/// when `data` is shorter than `at`.
fn rest(data: &[u8], at: usize) -> Result<&[u8], Malformed> {
    data.get(at..).ok_or(Malformed)
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;

fn ethernet(frame: &[u8]) -> Verdict {
    let header = take(frame, 0, 14)?;
    let mut ethertype = be16(&header[12..14]);
    let mut after = rest(frame, 14)?;
    for _tag in 0..2 {
        if !VLAN_TPIDS.contains(&ethertype) {
            break;
        }
        let tag = take(after, 0, 4)?;
        ethertype = be16(&tag[2..4]);
        after = rest(after, 4)?;
    }
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(after),
        ETHERTYPE_IPV6 => ipv6(after),
        // ARP, LLDP, an 802.3 length, a third VLAN tag, ...
        _ => Ok(TrafficClass::NonIp),
    }
}

/// The IP family a transport header was found in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

fn ipv4(data: &[u8]) -> Verdict {
    let header = take(data, 0, 20)?;
    let version = header[0] >> 4;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(be16(&header[2..4]));
    if version != 4 || header_len < 20 || total_len < header_len || total_len > data.len() {
        return Err(Malformed);
    }
    let packet = &data[..total_len];
    let flags_and_offset = be16(&header[6..8]);
    let more_fragments = flags_and_offset & 0x2000 != 0;
    let offset = flags_and_offset & 0x1fff;
    if more_fragments || offset != 0 {
        return Ok(TrafficClass::Fragment);
    }
    transport(Family::V4, header[9], &packet[header_len..])
}

/// Next-header values of the IPv6 extension headers the parser walks.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTHENTICATION: u8 = 51;
const DESTINATION_OPTIONS: u8 = 60;
const MOBILITY: u8 = 135;
/// Extension headers walked; one more is malformed.
const MAX_EXTENSION_HEADERS: usize = 6;

fn ipv6(data: &[u8]) -> Verdict {
    let header = take(data, 0, 40)?;
    let version = header[0] >> 4;
    let payload_len = usize::from(be16(&header[4..6]));
    if version != 6 {
        return Err(Malformed);
    }
    let mut payload = take(data, 40, payload_len)?;
    let mut next = header[6];
    let mut walked = 0;
    loop {
        match next {
            HOP_BY_HOP | ROUTING | FRAGMENT | AUTHENTICATION | DESTINATION_OPTIONS | MOBILITY => {}
            _ => return transport(Family::V6, next, payload),
        }
        if walked == MAX_EXTENSION_HEADERS {
            return Err(Malformed);
        }
        let first = take(payload, 0, 8)?;
        if next == FRAGMENT {
            return Ok(TrafficClass::Fragment);
        }
        let len = match next {
            // AH counts 4-byte words, less two.
            AUTHENTICATION => (usize::from(first[1]) + 2) * 4,
            // The others count 8-byte units, less one.
            _ => (usize::from(first[1]) + 1) * 8,
        };
        next = first[0];
        payload = rest(payload, len)?;
        walked += 1;
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Classifies the transport header at the start of `segment`, which runs
/// to the end of the IP packet.
fn transport(family: Family, protocol: u8, segment: &[u8]) -> Verdict {
    match (protocol, family) {
        (TCP, _) => tcp(segment),
        (UDP, _) => udp(segment),
        (ICMP, _) => take(segment, 0, 4).map(|_| TrafficClass::Icmp),
        (ICMPV6, _) => take(segment, 0, 4).map(|_| TrafficClass::Icmpv6),
        _ => Ok(TrafficClass::OtherIp),
    }
}

const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn tcp(segment: &[u8]) -> Verdict {
    let header = take(segment, 0, 20)?;
    let data_offset = usize::from(header[12] >> 4) * 4;
    if data_offset < 20 {
        return Err(Malformed);
    }
    let payload = rest(segment, data_offset)?;
    let dst_port = be16(&header[2..4]);
    let flags = header[13];
    let class = if flags & SYN != 0 && flags & ACK != 0 {
        TrafficClass::TcpSynAck
    } else if flags & SYN != 0 {
        TrafficClass::TcpSyn
    } else if flags & RST != 0 {
        TrafficClass::TcpRst
    } else if (dst_port == 80 || dst_port == 8080) && starts_with_http_method(payload) {
        TrafficClass::HttpRequest
    } else {
        TrafficClass::TcpAck
    };
    Ok(class)
}

/// The request methods of HTTP/1.x (RFC 9110 section 9, and PATCH, RFC 5789).
pub const HTTP_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// True when the payload's first four bytes are the first four of a
/// method followed by a space ("GET ", "POST", "DELE", ...): what the XDP
/// program can afford to compare, and enough to tell a request line from
/// other data on a web port.
fn starts_with_http_method(payload: &[u8]) -> bool {
    let Ok(first) = take(payload, 0, 4) else {
        return false;
    };
    HTTP_METHODS.iter().any(|m| {
        let mut line = [b' '; 4];
        for (l, b) in line.iter_mut().zip(m.bytes()) {
            *l = b;
        }
        first == line
    })
}

fn udp(segment: &[u8]) -> Verdict {
    let header = take(segment, 0, 8)?;
    let src_port = be16(&header[0..2]);
    let dst_port = be16(&header[2..4]);
    Ok(if src_port == 53 {
        TrafficClass::DnsResponse
    } else if dst_port == 53 {
        TrafficClass::DnsQuery
    } else if is_amplification_port(src_port) {
        TrafficClass::UdpAmplification
    } else {
        TrafficClass::Udp
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{vec, vec::Vec};

    use super::*;

    /// A small frame builder: Ethernet with `tags`, then `l3`.
    fn eth(tags: &[u16], ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        for tpid in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x07]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(l3);
        f
    }

    fn ipv4_packet(protocol: u8, options: &[u8], l4: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let header_len = 20 + options.len();
        let total = (header_len + l4.len()) as u16;
        let mut p = vec![0x40 | (header_len / 4) as u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
        p.extend_from_slice(&[198, 18, 0, 1, 192, 0, 2, 2]);
        p.extend_from_slice(options);
        p.extend_from_slice(l4);
        p
    }

    /// IPv6 with `ext` (next header, body) extension headers already encoded.
    fn ipv6_packet(next: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
        let payload = (ext.len() + l4.len()) as u16;
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&payload.to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        p.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(ext);
        p.extend_from_slice(l4);
        p
    }

    fn tcp_segment(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        s.extend_from_slice(payload);
        s
    }

    fn udp_datagram(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend_from_slice(&sport.to_be_bytes());
        s.extend_from_slice(&dport.to_be_bytes());
        s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        s.extend_from_slice(&[0, 0]);
        s.extend_from_slice(payload);
        s
    }

    fn v4(protocol: u8, l4: &[u8]) -> Vec<u8> {
        eth(&[], ETHERTYPE_IPV4, &ipv4_packet(protocol, &[], l4))
    }

    fn v6(next: u8, l4: &[u8]) -> Vec<u8> {
        eth(&[], ETHERTYPE_IPV6, &ipv6_packet(next, &[], l4))
    }

    use TrafficClass as C;

    #[test]
    fn every_class_from_a_hand_built_frame() {
        let cases: Vec<(&str, Vec<u8>, TrafficClass)> = vec![
            ("syn", v4(TCP, &tcp_segment(40000, 80, SYN, &[])), C::TcpSyn),
            ("syn-ack", v4(TCP, &tcp_segment(80, 40000, SYN | ACK, &[])), C::TcpSynAck),
            ("rst", v4(TCP, &tcp_segment(40000, 80, RST, &[])), C::TcpRst),
            ("rst-ack", v4(TCP, &tcp_segment(40000, 80, RST | ACK, &[])), C::TcpRst),
            ("ack", v4(TCP, &tcp_segment(40000, 443, ACK, &[])), C::TcpAck),
            ("fin", v4(TCP, &tcp_segment(40000, 443, 0x01, &[])), C::TcpAck),
            ("no flags", v4(TCP, &tcp_segment(40000, 443, 0, &[])), C::TcpAck),
            ("GET to 80", v4(TCP, &tcp_segment(40000, 80, ACK, b"GET / HTTP/1.1\r\n")), C::HttpRequest),
            ("POST to 8080", v4(TCP, &tcp_segment(40000, 8080, ACK, b"POST /x HTTP/1.1")), C::HttpRequest),
            ("DELETE over v6", v6(TCP, &tcp_segment(40000, 80, ACK, b"DELETE /")), C::HttpRequest),
            ("udp", v4(UDP, &udp_datagram(40000, 9999, b"hello")), C::Udp),
            ("udp over v6", v6(UDP, &udp_datagram(40000, 9999, b"")), C::Udp),
            ("dns query", v4(UDP, &udp_datagram(40000, 53, b"q")), C::DnsQuery),
            ("dns response", v6(UDP, &udp_datagram(53, 40000, b"r")), C::DnsResponse),
            ("ntp reflection", v4(UDP, &udp_datagram(123, 40000, b"")), C::UdpAmplification),
            ("memcached reflection", v4(UDP, &udp_datagram(11211, 40000, b"")), C::UdpAmplification),
            ("icmp echo", v4(ICMP, &[8, 0, 0, 0, 0, 1, 0, 1]), C::Icmp),
            ("icmpv6 echo", v6(ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]), C::Icmpv6),
            ("gre", v4(47, &[0; 8]), C::OtherIp),
            ("esp over v6", v6(50, &[0; 8]), C::OtherIp),
            ("no next header", v6(59, &[]), C::OtherIp),
            ("arp", eth(&[], 0x0806, &[0; 28]), C::NonIp),
            ("lldp", eth(&[], 0x88cc, &[0; 30]), C::NonIp),
            ("802.3 length", eth(&[], 46, &[0; 46]), C::NonIp),
            ("empty", vec![], C::Malformed),
            ("13 bytes", vec![0; 13], C::Malformed),
        ];
        for (what, frame, class) in cases {
            assert_eq!(classify(&frame), class, "{what}");
        }
    }

    #[test]
    fn vlan_tags() {
        let udp = ipv4_packet(UDP, &[], &udp_datagram(40000, 53, b""));
        for tags in [&[0x8100][..], &[0x88a8, 0x8100], &[0x9100, 0x9100], &[0x8100, 0x88a8]] {
            assert_eq!(classify(&eth(tags, ETHERTYPE_IPV4, &udp)), C::DnsQuery, "{tags:x?}");
        }
        // A third tag is not walked.
        assert_eq!(classify(&eth(&[0x8100, 0x8100, 0x8100], ETHERTYPE_IPV4, &udp)), C::NonIp);
        // A tag announced and cut.
        let mut cut = eth(&[0x8100], ETHERTYPE_IPV4, &[]);
        cut.truncate(16);
        assert_eq!(classify(&cut), C::Malformed);
    }

    #[test]
    fn ipv4_options_lengths_and_fragments() {
        let seg = tcp_segment(1, 2, SYN, &[]);
        for words in 0..=10 {
            let f = eth(&[], ETHERTYPE_IPV4, &ipv4_packet(TCP, &vec![1; words * 4], &seg));
            assert_eq!(classify(&f), C::TcpSyn, "{words} words of options");
        }
        let good = v4(UDP, &udp_datagram(1, 2, b"abcd"));
        let with = |at: usize, bytes: &[u8]| {
            let mut f = good.clone();
            f[at..at + bytes.len()].copy_from_slice(bytes);
            f
        };
        for ihl in 0..5u8 {
            assert_eq!(classify(&with(14, &[0x40 | ihl])), C::Malformed, "ihl {ihl}");
        }
        assert_eq!(classify(&with(14, &[0x65])), C::Malformed, "version 6 in an IPv4 ethertype");
        assert_eq!(classify(&with(16, &[0, 19])), C::Malformed, "total below the header");
        assert_eq!(classify(&with(16, &[0, 27])), C::Malformed, "UDP cut by the total length");
        assert_eq!(classify(&with(16, &[0, 28])), C::Udp, "UDP header exactly fits; its payload is padding");
        assert_eq!(classify(&with(16, &[0x10, 0])), C::Malformed, "total beyond the frame");
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 20]);
        assert_eq!(classify(&padded), C::Udp, "Ethernet padding is not payload");
        assert_eq!(classify(&with(20, &[0x20, 0])), C::Fragment, "more fragments");
        assert_eq!(classify(&with(20, &[0, 1])), C::Fragment, "a later fragment");
        assert_eq!(classify(&with(20, &[0x40, 0])), C::Udp, "don't fragment");
        assert_eq!(classify(&with(20, &[0x80, 0])), C::Udp, "the reserved flag");
        // A fragment is a fragment whatever it carries, but its IP header must be sound.
        let mut frag = with(20, &[0x20, 0]);
        frag[16..18].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(classify(&frag), C::Fragment);
        frag[16..18].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(classify(&frag), C::Malformed);
    }

    /// An extension header of `len_field` and kind `kind` (AH counts in 4-byte words).
    fn ext(next: u8, kind: u8, len_field: u8) -> Vec<u8> {
        let len = if kind == AUTHENTICATION { (len_field as usize + 2) * 4 } else { (len_field as usize + 1) * 8 };
        let mut h = vec![0u8; len];
        h[0] = next;
        h[1] = len_field;
        h
    }

    /// IPv6 UDP behind the extension headers `kinds` (the first is in the IPv6 header).
    fn chain(kinds: &[u8]) -> Vec<u8> {
        let mut headers = Vec::new();
        for (i, k) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(UDP);
            headers.extend(ext(next, *k, if *k == AUTHENTICATION { 4 } else { i as u8 % 3 }));
        }
        let first = kinds.first().copied().unwrap_or(UDP);
        eth(&[], ETHERTYPE_IPV6, &ipv6_packet(first, &headers, &udp_datagram(40000, 9999, b"x")))
    }

    #[test]
    fn ipv6_extension_chains() {
        let kinds = [HOP_BY_HOP, ROUTING, DESTINATION_OPTIONS, AUTHENTICATION, MOBILITY, DESTINATION_OPTIONS, ROUTING];
        for n in 0..=6 {
            assert_eq!(classify(&chain(&kinds[..n])), C::Udp, "{n} extension headers");
        }
        assert_eq!(classify(&chain(&kinds)), C::Malformed, "seven extension headers");
        assert_eq!(classify(&chain(&[HOP_BY_HOP, FRAGMENT])), C::Fragment);
        assert_eq!(classify(&chain(&[ROUTING, ROUTING, ROUTING, ROUTING, ROUTING, FRAGMENT])), C::Fragment);
        assert_eq!(
            classify(&chain(&[ROUTING, ROUTING, ROUTING, ROUTING, ROUTING, ROUTING, FRAGMENT])),
            C::Malformed,
            "a fragment header seventh"
        );
        // A fragment header cut by the payload length.
        let mut cut = eth(&[], ETHERTYPE_IPV6, &ipv6_packet(FRAGMENT, &[17, 0, 0, 1], &[]));
        assert_eq!(classify(&cut), C::Malformed);
        cut.extend_from_slice(&[0; 4]);
        assert_eq!(classify(&cut), C::Malformed, "padding after the payload is not part of it");
        // An extension header longer than the payload.
        let mut long = chain(&[DESTINATION_OPTIONS]);
        long[14 + 40 + 1] = 9;
        assert_eq!(classify(&long), C::Malformed);
        // Payload length beyond the frame, and a version that is not 6.
        let mut f = v6(UDP, &udp_datagram(1, 2, b""));
        f[18..20].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(classify(&f), C::Malformed);
        let mut f = v6(UDP, &udp_datagram(1, 2, b""));
        f[14] = 0x40;
        assert_eq!(classify(&f), C::Malformed);
    }

    #[test]
    fn transport_headers_must_fit_and_icmp_follows_its_number() {
        assert_eq!(classify(&v4(TCP, &tcp_segment(1, 2, SYN, &[])[..19])), C::Malformed);
        let mut short_offset = tcp_segment(1, 2, SYN, &[]);
        short_offset[12] = 0x40;
        assert_eq!(classify(&v4(TCP, &short_offset)), C::Malformed);
        let mut long_offset = tcp_segment(1, 2, SYN, &[0; 20]);
        long_offset[12] = 0xa0;
        assert_eq!(classify(&v4(TCP, &long_offset)), C::TcpSyn, "40 bytes of header, all there");
        long_offset[12] = 0xb0;
        assert_eq!(classify(&v4(TCP, &long_offset)), C::Malformed);
        assert_eq!(classify(&v4(UDP, &[0; 7])), C::Malformed);
        assert_eq!(classify(&v4(ICMP, &[8, 0, 0])), C::Malformed);
        assert_eq!(classify(&v6(ICMPV6, &[128, 0, 0])), C::Malformed);
        assert_eq!(classify(&v4(ICMPV6, &[128, 0, 0, 0])), C::Icmpv6, "ICMPv6's number over IPv4");
        assert_eq!(classify(&v6(ICMP, &[8, 0, 0, 0])), C::Icmp, "ICMP's number over IPv6");
        assert_eq!(classify(&v4(ICMPV6, &[128, 0, 0])), C::Malformed);
        assert_eq!(classify(&v4(47, &[])), C::OtherIp, "another transport needs no header here");
    }

    #[test]
    fn tcp_and_udp_precedence() {
        let t = |dport, flags, payload: &[u8]| classify(&v4(TCP, &tcp_segment(40000, dport, flags, payload)));
        assert_eq!(t(80, SYN | RST, b""), C::TcpSyn, "SYN decides before RST");
        assert_eq!(t(80, SYN | ACK | RST, b""), C::TcpSynAck);
        assert_eq!(t(80, SYN, b"GET / HTTP/1.1"), C::TcpSyn, "data on a SYN is not a request");
        assert_eq!(t(80, RST | ACK, b"GET / HTTP/1.1"), C::TcpRst);
        assert_eq!(t(443, ACK, b"GET / HTTP/1.1"), C::TcpAck, "not a web port");
        assert_eq!(t(80, ACK, b"GET"), C::TcpAck, "three bytes are not a method");
        assert_eq!(t(80, ACK, b"get / HTTP/1.1"), C::TcpAck, "methods are case-sensitive");
        assert_eq!(t(80, ACK, b"GETX"), C::TcpAck);
        assert_eq!(t(80, ACK, b"POST"), C::HttpRequest, "four bytes decide");
        for m in HTTP_METHODS {
            let mut line = Vec::from(m.as_bytes());
            line.extend_from_slice(b" / HTTP/1.1\r\n");
            assert_eq!(t(8080, ACK, &line), C::HttpRequest, "{m}");
        }
        let u = |sport, dport| classify(&v4(UDP, &udp_datagram(sport, dport, b"")));
        assert_eq!(u(53, 53), C::DnsResponse, "from 53 decides before to 53");
        assert_eq!(u(123, 53), C::DnsQuery, "to 53 decides before a reflector port");
        assert_eq!(u(53, 123), C::DnsResponse);
        assert_eq!(u(40000, 123), C::Udp, "to a reflector port is not a reflection");
        for (port, _) in crate::class::AMPLIFICATION_PORTS {
            assert_eq!(u(port, 40000), C::UdpAmplification, "{port}");
        }
    }
}
