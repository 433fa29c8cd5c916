//! 64-byte frames, one per traffic class, for the test-run measurements;
//! the SYN-cookie handshake's frames, and the check of the answer.

use std::net::Ipv4Addr;

use detector::flood::{
    checksum,
    frame::{self, FrameSpec, Kind},
};
use detector_common::TrafficClass;

fn spec(kind: Kind, v6: bool) -> FrameSpec {
    let (src, dst) = if v6 { ("2001:2::1", "2001:db8::2") } else { ("198.18.0.1", "192.0.2.2") };
    FrameSpec {
        kind,
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        vlans: vec![],
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        src_port: None,
        dst_port: None,
        size: Some(64),
    }
}

fn build(s: FrameSpec) -> Vec<u8> {
    frame::build(&s).expect("bench frames are valid").bytes
}

/// A 64-byte UDP datagram from `src` to `dst` (ports: the builder's
/// defaults, or these).
pub fn udp(src: &str, dst: &str, ports: Option<(u16, u16)>) -> anyhow::Result<Vec<u8>> {
    let mut s = spec(Kind::Udp, false);
    (s.src, s.dst) = (src.parse()?, dst.parse()?);
    (s.src_port, s.dst_port) = (ports.map(|p| p.0), ports.map(|p| p.1));
    Ok(frame::build(&s)?.bytes)
}

/// (label, class the program must give it, frame). The XDP program does not
/// verify checksums, so frames patched after building need none.
pub fn all() -> Vec<(&'static str, TrafficClass, Vec<u8>)> {
    let udp_port = |src: Option<u16>, dst: Option<u16>| {
        let mut s = spec(Kind::Udp, false);
        s.src_port = src;
        s.dst_port = dst;
        build(s)
    };
    let mut http = build(spec(Kind::Ack, false));
    http[54..58].copy_from_slice(b"GET ");
    let mut fragment = build(spec(Kind::Udp, false));
    fragment[20] = 0x20; // more fragments
    let mut malformed = build(spec(Kind::Udp, false));
    malformed[16..18].copy_from_slice(&400u16.to_be_bytes());
    vec![
        ("tcp_syn", TrafficClass::TcpSyn, build(spec(Kind::Syn, false))),
        ("tcp_synack", TrafficClass::TcpSynAck, build(spec(Kind::SynAck, false))),
        ("tcp_rst", TrafficClass::TcpRst, build(spec(Kind::Rst, false))),
        ("tcp_ack", TrafficClass::TcpAck, build(spec(Kind::Ack, false))),
        ("http_request", TrafficClass::HttpRequest, http),
        ("udp", TrafficClass::Udp, build(spec(Kind::Udp, false))),
        ("udp (IPv6)", TrafficClass::Udp, build(spec(Kind::Udp, true))),
        ("dns_query", TrafficClass::DnsQuery, udp_port(None, Some(53))),
        ("dns_response", TrafficClass::DnsResponse, udp_port(Some(53), None)),
        ("udp_amplification", TrafficClass::UdpAmplification, udp_port(Some(123), None)),
        ("icmp", TrafficClass::Icmp, build(spec(Kind::Icmp, false))),
        ("icmpv6", TrafficClass::Icmpv6, build(spec(Kind::Icmp, true))),
        ("fragment", TrafficClass::Fragment, fragment),
        ("other_ip", TrafficClass::OtherIp, build(spec(Kind::OtherIp, false))),
        ("non_ip", TrafficClass::NonIp, build(spec(Kind::Arp, false))),
        ("malformed", TrafficClass::Malformed, malformed),
    ]
}

/// Ethernet, IPv4 without options: where the headers start.
const L3: usize = 14;
const L4: usize = L3 + 20;

/// The options of a Linux SYN (`tcp_syn_options`): MSS 1460, SACK
/// permitted, timestamps (TSval 0x01020304, TSecr 0), NOP, window scale 7.
/// 20 bytes: a 40-byte TCP header.
pub const LINUX_SYN_OPTIONS: [u8; 20] = [2, 4, 0x05, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7];

/// A SYN as Linux sends it (the options above), from `src:sport` to
/// `dst:dport`, sequence number `seq`: 14 + 20 + 40 = 74 bytes, checksums
/// valid. The offsets the flood generator needs are the built frame's.
pub fn linux_syn(src: Ipv4Addr, dst: Ipv4Addr, macs: ([u8; 6], [u8; 6]), ports: (u16, u16), seq: u32) -> frame::Frame {
    let spec = FrameSpec {
        kind: Kind::Syn,
        src_mac: macs.0,
        dst_mac: macs.1,
        vlans: vec![],
        src: src.into(),
        dst: dst.into(),
        src_port: Some(ports.0),
        dst_port: Some(ports.1),
        // The TCP header's room for the options, zeros until written.
        size: Some(L4 + 20 + LINUX_SYN_OPTIONS.len()),
    };
    let mut f = frame::build(&spec).expect("the SYN frame is valid");
    let b = &mut f.bytes;
    b[L4 + 4..L4 + 8].copy_from_slice(&seq.to_be_bytes());
    b[L4 + 12] = (((20 + LINUX_SYN_OPTIONS.len()) / 4) << 4) as u8;
    b[L4 + 20..L4 + 20 + LINUX_SYN_OPTIONS.len()].copy_from_slice(&LINUX_SYN_OPTIONS);
    fix_checksums(b);
    f
}

/// A TCP segment without options or payload (flags, sequence and
/// acknowledgment numbers given) from `src:sport` to `dst:dport`: 54 bytes
/// padded to Ethernet's 60, checksums valid.
pub fn tcp_segment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    macs: ([u8; 6], [u8; 6]),
    ports: (u16, u16),
    flags: u8,
    seq: u32,
    ack: u32,
) -> Vec<u8> {
    let spec = FrameSpec {
        kind: Kind::Ack,
        src_mac: macs.0,
        dst_mac: macs.1,
        vlans: vec![],
        src: src.into(),
        dst: dst.into(),
        src_port: Some(ports.0),
        dst_port: Some(ports.1),
        size: None,
    };
    let mut b = build(spec);
    b[L4 + 4..L4 + 8].copy_from_slice(&seq.to_be_bytes());
    b[L4 + 8..L4 + 12].copy_from_slice(&ack.to_be_bytes());
    b[L4 + 13] = flags;
    fix_checksums(&mut b);
    b
}

/// Writes the IPv4 header and TCP checksums of an untagged IPv4/TCP frame
/// (the segment's length from the IP header: padding is not covered).
pub fn fix_checksums(b: &mut [u8]) {
    b[L3 + 10..L3 + 12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&b[L3..L4]);
    b[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
    let end = L3 + u16::from_be_bytes([b[L3 + 2], b[L3 + 3]]) as usize;
    b[L4 + 16..L4 + 18].copy_from_slice(&[0, 0]);
    let pseudo = checksum::pseudo_header(&b[L3 + 12..L3 + 16], &b[L3 + 16..L3 + 20], 6, end - L4);
    let c = checksum::finish(checksum::sum(pseudo, &b[L4..end]));
    b[L4 + 16..L4 + 18].copy_from_slice(&c.to_be_bytes());
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// What [`check_synack`] found in a well-formed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynAck {
    /// Its sequence number: the cookie.
    pub cookie: u32,
    /// Its TCP header length (the options it could fit).
    pub tcp_len: usize,
    /// The MSS it offers, if it has the option.
    pub mss: Option<u16>,
}

/// Checks that `out` is a well-formed SYN-ACK answering `syn` (both
/// untagged IPv4/TCP): Ethernet and IP addresses and ports swapped, flags
/// SYN|ACK, acknowledgment = the SYN's sequence number + 1, lengths
/// consistent (the frame ends where the IP datagram does, the TCP header
/// is the whole segment and its options are well-formed), and both
/// checksums valid. Every failure names what is wrong and shows the bytes.
pub fn check_synack(syn: &[u8], out: &[u8]) -> Result<SynAck, String> {
    let fail = |what: String| Err(format!("{what}; the frame: {}", hex(out)));
    if out.len() < L4 + 20 {
        return fail(format!("{} bytes, shorter than Ethernet, IPv4 and TCP headers", out.len()));
    }
    if out[0..6] != syn[6..12] || out[6..12] != syn[0..6] {
        return fail("the Ethernet addresses are not the SYN's swapped".into());
    }
    if out[12..14] != [0x08, 0x00] || out[L3] != 0x45 || out[L3 + 9] != 6 {
        return fail("not IPv4 (no options) carrying TCP".into());
    }
    let total = be16(out, L3 + 2) as usize;
    if L3 + total != out.len() {
        return fail(format!("IP total length {total}, but the frame holds {} bytes after Ethernet", out.len() - L3));
    }
    if be16(out, L3 + 6) & 0x3fff != 0 {
        return fail("a fragment".into());
    }
    if out[L3 + 12..L3 + 16] != syn[L3 + 16..L3 + 20] || out[L3 + 16..L3 + 20] != syn[L3 + 12..L3 + 16] {
        return fail("the IP addresses are not the SYN's swapped".into());
    }
    if checksum::finish(checksum::sum(0, &out[L3..L4])) != 0 {
        return fail(format!("bad IPv4 header checksum {:#06x}", be16(out, L3 + 10)));
    }
    if be16(out, L4) != be16(syn, L4 + 2) || be16(out, L4 + 2) != be16(syn, L4) {
        return fail("the ports are not the SYN's swapped".into());
    }
    let flags = out[L4 + 13];
    if flags != 0x12 {
        return fail(format!("TCP flags {flags:#04x}, not SYN|ACK (0x12)"));
    }
    let (seq, ack) = (be32(out, L4 + 4), be32(out, L4 + 8));
    let want = be32(syn, L4 + 4).wrapping_add(1);
    if ack != want {
        return fail(format!("acknowledgment number {ack:#010x}, not the SYN's sequence number + 1 ({want:#010x})"));
    }
    let tcp_len = (out[L4 + 12] >> 4) as usize * 4;
    if tcp_len < 20 || L4 + tcp_len != out.len() {
        return fail(format!("TCP header of {tcp_len} bytes in a {}-byte segment", out.len() - L4));
    }
    let pseudo = checksum::pseudo_header(&out[L3 + 12..L3 + 16], &out[L3 + 16..L3 + 20], 6, tcp_len);
    if checksum::finish(checksum::sum(pseudo, &out[L4..])) != 0 {
        return fail(format!("bad TCP checksum {:#06x}", be16(out, L4 + 16)));
    }
    // The options: each one inside the header, MSS of its own size.
    let opts = &out[L4 + 20..];
    let (mut i, mut mss) = (0, None);
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            kind => {
                let size = opts.get(i + 1).copied().unwrap_or(0) as usize;
                if size < 2 || i + size > opts.len() {
                    return fail(format!("TCP option {kind} at offset {i} of the options does not fit"));
                }
                if kind == 2 {
                    if size != 4 {
                        return fail(format!("an MSS option of {size} bytes"));
                    }
                    mss = Some(be16(opts, i + 2));
                }
                i += size;
            }
        }
    }
    Ok(SynAck { cookie: seq, tcp_len, mss })
}

/// The ACK a client sends back for `synack` (a SYN-ACK answering its SYN):
/// addresses and ports swapped back, sequence number the SYN-ACK's
/// acknowledgment, acknowledgment the cookie + 1. No options.
pub fn client_ack(synack: &[u8]) -> Vec<u8> {
    let mac = |at: usize| -> [u8; 6] { synack[at..at + 6].try_into().expect("six bytes") };
    let ip = |at: usize| Ipv4Addr::new(synack[at], synack[at + 1], synack[at + 2], synack[at + 3]);
    tcp_segment(
        ip(L3 + 16),
        ip(L3 + 12),
        (mac(0), mac(6)),
        (be16(synack, L4 + 2), be16(synack, L4)),
        0x10,
        be32(synack, L4 + 8),
        be32(synack, L4 + 4).wrapping_add(1),
    )
}

/// The IPv4 header's DSCP of an untagged frame.
pub fn dscp(b: &[u8]) -> u8 {
    b[L3 + 1] >> 2
}

/// True when the IPv4 header checksum of an untagged frame is valid.
pub fn ipv4_checksum_ok(b: &[u8]) -> bool {
    checksum::finish(checksum::sum(0, &b[L3..L4])) == 0
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);

    fn client() -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1, 7)
    }

    fn server() -> Ipv4Addr {
        Ipv4Addr::new(192, 0, 2, 2)
    }

    /// What a cookie answer looks like: the SYN turned around in place,
    /// options MSS, SACK permitted, timestamps, window scale (20 bytes).
    fn answer(syn: &[u8], cookie: u32) -> Vec<u8> {
        let mut b = syn.to_vec();
        b[0..6].copy_from_slice(&syn[6..12]);
        b[6..12].copy_from_slice(&syn[0..6]);
        b[L3 + 12..L3 + 16].copy_from_slice(&syn[L3 + 16..L3 + 20]);
        b[L3 + 16..L3 + 20].copy_from_slice(&syn[L3 + 12..L3 + 16]);
        b[L4..L4 + 2].copy_from_slice(&syn[L4 + 2..L4 + 4]);
        b[L4 + 2..L4 + 4].copy_from_slice(&syn[L4..L4 + 2]);
        b[L4 + 4..L4 + 8].copy_from_slice(&cookie.to_be_bytes());
        b[L4 + 8..L4 + 12].copy_from_slice(&be32(syn, L4 + 4).wrapping_add(1).to_be_bytes());
        b[L4 + 13] = 0x12;
        b[L4 + 20..L4 + 40].copy_from_slice(&[2, 4, 0xff, 0xd7, 4, 2, 8, 10, 0, 0, 0, 0x47, 1, 2, 3, 4, 1, 3, 3, 7]);
        fix_checksums(&mut b);
        b
    }

    #[test]
    fn the_linux_syn_is_74_bytes_with_valid_checksums() {
        let f = linux_syn(client(), server(), MACS, (40000, 80), 0x1234_5678);
        let b = &f.bytes;
        assert_eq!(b.len(), 74);
        assert_eq!(b[L4 + 12], 0xa0, "a 40-byte TCP header");
        assert_eq!(b[L4 + 13], 0x02);
        assert_eq!(be32(b, L4 + 4), 0x1234_5678);
        assert_eq!(&b[L4 + 20..], &LINUX_SYN_OPTIONS);
        assert!(ipv4_checksum_ok(b));
        let pseudo = checksum::pseudo_header(&b[L3 + 12..L3 + 16], &b[L3 + 16..L3 + 20], 6, 40);
        assert_eq!(checksum::finish(checksum::sum(pseudo, &b[L4..])), 0);
        // The generator rewrites the source there.
        assert_eq!(f.src_offset, L3 + 12);
        assert_eq!(f.l4_csum_offset, Some(L4 + 16));
    }

    #[test]
    fn a_well_formed_answer_passes_and_each_fault_is_named() {
        let syn = linux_syn(client(), server(), MACS, (40000, 80), 0x1000_0000).bytes;
        let good = answer(&syn, 0xabcd_ef01);
        assert_eq!(check_synack(&syn, &good), Ok(SynAck { cookie: 0xabcd_ef01, tcp_len: 40, mss: Some(65495) }));

        let broken = |f: fn(&mut Vec<u8>), fix: bool| {
            let mut b = good.clone();
            f(&mut b);
            if fix {
                fix_checksums(&mut b);
            }
            check_synack(&syn, &b).unwrap_err()
        };
        assert!(broken(|b| b[L4 + 13] = 0x02, true).starts_with("TCP flags 0x02, not SYN|ACK"));
        assert!(broken(|b| b[L4 + 11] ^= 1, true).starts_with("acknowledgment number 0x10000000"));
        assert!(broken(|b| b[L4 + 1] ^= 1, true).starts_with("the ports are not"));
        assert!(broken(|b| b[L3 + 15] ^= 1, true).starts_with("the IP addresses are not"));
        assert!(broken(|b| b[0] ^= 1, true).starts_with("the Ethernet addresses"));
        assert!(broken(|b| b[L4 + 17] ^= 1, false).starts_with("bad TCP checksum"));
        assert!(broken(|b| b[L3 + 11] ^= 1, false).starts_with("bad IPv4 header checksum"));
        assert!(broken(|b| b.push(0), false).starts_with("IP total length 60, but the frame holds 61"));
        assert!(broken(|b| b[L4 + 20 + 18] = 9, true).starts_with("TCP option 3 at offset 17"));
        // The bytes come with the error.
        assert!(broken(|b| b[L4 + 13] = 0x10, true).contains("; the frame: 02 00 00 00 00 01 02 00"));
    }

    #[test]
    fn the_client_ack_answers_the_cookie() {
        let syn = linux_syn(client(), server(), MACS, (40000, 80), 0x1000_0000).bytes;
        let ack = client_ack(&answer(&syn, 0xffff_ffff));
        assert_eq!(ack.len(), 60);
        assert_eq!(&ack[0..12], &syn[0..12], "the SYN's Ethernet addresses");
        assert_eq!(&ack[L3 + 12..L3 + 20], &syn[L3 + 12..L3 + 20], "the SYN's IP addresses");
        assert_eq!(&ack[L4..L4 + 4], &syn[L4..L4 + 4], "the SYN's ports");
        assert_eq!(ack[L4 + 13], 0x10);
        assert_eq!(be32(&ack, L4 + 4), 0x1000_0001);
        assert_eq!(be32(&ack, L4 + 8), 0, "the cookie + 1, wrapped");
        assert_eq!(ack[L4 + 12], 0x50);
        assert!(ipv4_checksum_ok(&ack));
        assert_eq!(be16(&ack, L3 + 2), 40, "the padding is not in the datagram");
    }
}
