//! Frame templates for the flood generator and the tests: one well-formed
//! Ethernet frame per attack kind, with correct lengths and checksums, and
//! the offsets the generator needs to give each copy another source.
//! Pure: bytes in, bytes out.

use std::{fmt, net::IpAddr, str::FromStr};

use detector_common::TrafficClass;
use thiserror::Error;

use super::checksum;

/// What to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Udp,
    Syn,
    SynAck,
    Ack,
    Rst,
    Icmp,
    DnsQuery,
    DnsResponse,
    NtpAmplification,
    MemcachedAmplification,
    SsdpAmplification,
    CldapAmplification,
    ChargenAmplification,
    SnmpAmplification,
    HttpGet,
    Fragment,
    OtherIp,
    Arp,
}

impl Kind {
    pub const ALL: [Kind; 18] = [
        Kind::Udp,
        Kind::Syn,
        Kind::SynAck,
        Kind::Ack,
        Kind::Rst,
        Kind::Icmp,
        Kind::DnsQuery,
        Kind::DnsResponse,
        Kind::NtpAmplification,
        Kind::MemcachedAmplification,
        Kind::SsdpAmplification,
        Kind::CldapAmplification,
        Kind::ChargenAmplification,
        Kind::SnmpAmplification,
        Kind::HttpGet,
        Kind::Fragment,
        Kind::OtherIp,
        Kind::Arp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Udp => "udp",
            Kind::Syn => "syn",
            Kind::SynAck => "synack",
            Kind::Ack => "ack",
            Kind::Rst => "rst",
            Kind::Icmp => "icmp",
            Kind::DnsQuery => "dns-query",
            Kind::DnsResponse => "dns-response",
            Kind::NtpAmplification => "ntp-amplification",
            Kind::MemcachedAmplification => "memcached-amplification",
            Kind::SsdpAmplification => "ssdp-amplification",
            Kind::CldapAmplification => "cldap-amplification",
            Kind::ChargenAmplification => "chargen-amplification",
            Kind::SnmpAmplification => "snmp-amplification",
            Kind::HttpGet => "http-get",
            Kind::Fragment => "fragment",
            Kind::OtherIp => "other-ip",
            Kind::Arp => "arp",
        }
    }

    /// The class the XDP program must put this frame in.
    pub fn class(self, ipv6: bool) -> TrafficClass {
        match self {
            Kind::Udp => TrafficClass::Udp,
            Kind::Syn => TrafficClass::TcpSyn,
            Kind::SynAck => TrafficClass::TcpSynAck,
            Kind::Ack => TrafficClass::TcpAck,
            Kind::Rst => TrafficClass::TcpRst,
            Kind::Icmp if ipv6 => TrafficClass::Icmpv6,
            Kind::Icmp => TrafficClass::Icmp,
            Kind::DnsQuery => TrafficClass::DnsQuery,
            Kind::DnsResponse => TrafficClass::DnsResponse,
            Kind::NtpAmplification
            | Kind::MemcachedAmplification
            | Kind::SsdpAmplification
            | Kind::CldapAmplification
            | Kind::ChargenAmplification
            | Kind::SnmpAmplification => TrafficClass::UdpAmplification,
            Kind::HttpGet => TrafficClass::HttpRequest,
            Kind::Fragment => TrafficClass::Fragment,
            Kind::OtherIp => TrafficClass::OtherIp,
            Kind::Arp => TrafficClass::NonIp,
        }
    }

    /// Default (source port, destination port) for UDP and TCP kinds.
    fn ports(self) -> (u16, u16) {
        match self {
            Kind::Udp | Kind::Fragment => (40000, 9),
            Kind::Syn | Kind::Ack | Kind::Rst | Kind::HttpGet => (40000, 80),
            Kind::SynAck => (80, 40000),
            Kind::DnsQuery => (40000, 53),
            Kind::DnsResponse => (53, 40000),
            Kind::NtpAmplification => (123, 40000),
            Kind::MemcachedAmplification => (11211, 40000),
            Kind::SsdpAmplification => (1900, 40000),
            Kind::CldapAmplification => (389, 40000),
            Kind::ChargenAmplification => (19, 40000),
            Kind::SnmpAmplification => (161, 40000),
            Kind::Icmp | Kind::OtherIp | Kind::Arp => (0, 0),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        Kind::ALL.iter().copied().find(|k| k.name() == s).ok_or_else(|| {
            let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("'{s}' is not a flood kind (one of: {})", names.join(", "))
        })
    }
}

/// Everything that decides a frame's bytes.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub kind: Kind,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// 802.1Q tags, outermost first (at most two).
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// Total frame length; the payload is padded to reach it.
    pub size: Option<usize>,
}

/// A built frame and where its source-dependent fields are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub bytes: Vec<u8>,
    /// Offset of the last 4 bytes of the source address (ARP: sender IP).
    pub src_offset: usize,
    /// Offset of the IPv4 header checksum.
    pub ip_csum_offset: Option<usize>,
    /// Offset of the transport checksum that covers the source address.
    pub l4_csum_offset: Option<usize>,
    pub l4_is_udp: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("source {src} and destination {dst} are not the same IP version")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error("--kind arp needs IPv4 addresses")]
    ArpNeedsIpv4,
    #[error("a frame of kind {kind} needs at least {min} bytes; --size {size} is too small")]
    TooSmall { kind: Kind, min: usize, size: usize },
    #[error("--size {size} is over the {max}-byte limit (one page of a BPF test run, and veth's native XDP)")]
    TooLarge { size: usize, max: usize },
    #[error("at most two VLAN tags, not {0}")]
    TooManyVlans(usize),
    #[error("VLAN id {0} is out of range (0 to 4095)")]
    BadVlan(u16),
}

/// Largest frame the generator builds.
pub const MAX_FRAME: usize = 1518;
/// Ethernet minimum without FCS: shorter frames are padded with zeros.
pub const MIN_FRAME: usize = 60;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;

/// Builds the frame described by `spec`.
pub fn build(spec: &FrameSpec) -> Result<Frame, FrameError> {
    if spec.vlans.len() > 2 {
        return Err(FrameError::TooManyVlans(spec.vlans.len()));
    }
    if let Some(v) = spec.vlans.iter().find(|v| **v > 4095) {
        return Err(FrameError::BadVlan(*v));
    }
    if let Some(size) = spec.size {
        if size > MAX_FRAME {
            return Err(FrameError::TooLarge { size, max: MAX_FRAME });
        }
    }
    let v6 = match (spec.src, spec.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => false,
        (IpAddr::V6(_), IpAddr::V6(_)) => true,
        (src, dst) => return Err(FrameError::MixedFamilies { src, dst }),
    };
    if spec.kind == Kind::Arp && v6 {
        return Err(FrameError::ArpNeedsIpv4);
    }

    let mut f = Vec::with_capacity(MAX_FRAME);
    f.extend_from_slice(&spec.dst_mac);
    f.extend_from_slice(&spec.src_mac);
    for v in &spec.vlans {
        f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    let ethertype = match (spec.kind, v6) {
        (Kind::Arp, _) => ETH_P_ARP,
        (_, true) => ETH_P_IPV6,
        (_, false) => ETH_P_IP,
    };
    f.extend_from_slice(&ethertype.to_be_bytes());
    let l3 = f.len();

    if spec.kind == Kind::Arp {
        return arp(f, l3, spec);
    }

    let ip_hdr = if v6 { 40 } else { 20 };
    let frag_hdr = if v6 && spec.kind == Kind::Fragment { 8 } else { 0 };
    let l4 = l3 + ip_hdr + frag_hdr;
    let (proto, mut l4_bytes) = transport(spec, v6);
    let min = l4 + l4_bytes.len();
    if let Some(size) = spec.size {
        if size < min {
            return Err(FrameError::TooSmall { kind: spec.kind, min, size });
        }
        // Pad the payload: the datagram itself grows to the requested size.
        l4_bytes.resize(size - l4, 0);
    }
    let payload_len = frag_hdr + l4_bytes.len();

    let (src, dst): (Vec<u8>, Vec<u8>) = match (spec.src, spec.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        (IpAddr::V6(s), IpAddr::V6(d)) => (s.octets().to_vec(), d.octets().to_vec()),
        _ => unreachable!("families checked above"),
    };

    // Transport checksum over the pseudo-header and the transport bytes.
    let csum_at = match proto {
        6 => Some(16),
        17 => Some(6),
        1 | 58 => Some(2),
        _ => None,
    };
    if let Some(at) = csum_at {
        let base = if proto == 1 { 0 } else { checksum::pseudo_header(&src, &dst, proto, l4_bytes.len()) };
        let mut c = checksum::finish(checksum::sum(base, &l4_bytes));
        if proto == 17 && c == 0 {
            c = 0xffff;
        }
        l4_bytes[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    if v6 {
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(payload_len as u16).to_be_bytes());
        f.push(if frag_hdr > 0 { 44 } else { proto });
        f.push(64);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        if frag_hdr > 0 {
            // First fragment (offset 0, more fragments) of datagram 0x2a.
            f.extend_from_slice(&[proto, 0, 0x00, 0x01, 0, 0, 0, 0x2a]);
        }
    } else {
        let total = (20 + payload_len) as u16;
        // A fragment: offset 0 with more-fragments set.
        let frag: u16 = if spec.kind == Kind::Fragment { 0x2000 } else { 0x4000 };
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0x12, 0x34]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        let c = checksum::checksum(&f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    f.extend_from_slice(&l4_bytes);
    if f.len() < MIN_FRAME {
        f.resize(MIN_FRAME, 0);
    }
    // ICMPv4's checksum does not cover the source address.
    let l4_csum_offset = match proto {
        6 | 17 | 58 => csum_at.map(|at| l4 + at),
        _ => None,
    };
    Ok(Frame {
        bytes: f,
        src_offset: if v6 { l3 + 8 + 12 } else { l3 + 12 },
        ip_csum_offset: if v6 { None } else { Some(l3 + 10) },
        l4_csum_offset,
        l4_is_udp: proto == 17,
    })
}

fn arp(mut f: Vec<u8>, l3: usize, spec: &FrameSpec) -> Result<Frame, FrameError> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (spec.src, spec.dst) else {
        return Err(FrameError::ArpNeedsIpv4);
    };
    // Request: who has dst, tell src.
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&spec.src_mac);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&dst.octets());
    let size = spec.size.unwrap_or(MIN_FRAME).max(MIN_FRAME);
    if size < f.len() {
        return Err(FrameError::TooSmall { kind: Kind::Arp, min: f.len(), size });
    }
    f.resize(size, 0);
    Ok(Frame { bytes: f, src_offset: l3 + 14, ip_csum_offset: None, l4_csum_offset: None, l4_is_udp: false })
}

/// Protocol number and transport bytes (checksum zero) of `spec`.
fn transport(spec: &FrameSpec, v6: bool) -> (u8, Vec<u8>) {
    let (dsport, ddport) = spec.kind.ports();
    let sport = spec.src_port.unwrap_or(dsport);
    let dport = spec.dst_port.unwrap_or(ddport);
    match spec.kind {
        Kind::Syn => (6, tcp(sport, dport, 0x02, &[])),
        Kind::SynAck => (6, tcp(sport, dport, 0x12, &[])),
        Kind::Ack => (6, tcp(sport, dport, 0x10, &[])),
        Kind::Rst => (6, tcp(sport, dport, 0x04, &[])),
        Kind::HttpGet => {
            let req =
                format!("GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: detector-flood\r\nAccept: */*\r\n\r\n", spec.dst);
            (6, tcp(sport, dport, 0x18, req.as_bytes()))
        }
        Kind::Icmp if v6 => (58, vec![128, 0, 0, 0, 0x12, 0x34, 0, 1]),
        Kind::Icmp => (1, vec![8, 0, 0, 0, 0x12, 0x34, 0, 1]),
        Kind::OtherIp => (47, vec![0, 0, 0x08, 0x00]),
        Kind::Arp => unreachable!("ARP is built apart"),
        _ => (17, udp(sport, dport, &udp_payload(spec.kind, spec.size.is_some()))),
    }
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // sequence
    let ack: u32 = if flags & 0x10 != 0 { 0x2000_0000 } else { 0 };
    t.extend_from_slice(&ack.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xfa, 0xf0, 0, 0, 0, 0]);
    t.extend_from_slice(payload);
    t
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A plausible payload for each UDP kind, so captures look like the real
/// thing; sizes are the small end of each vector's replies. Plain UDP gets
/// filler up to a 60-byte IPv4 frame, or none when `--size` decides.
fn udp_payload(kind: Kind, sized: bool) -> Vec<u8> {
    const QNAME: &[u8] = b"\x07example\x03com\x00";
    match kind {
        Kind::DnsQuery => {
            let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            p.extend_from_slice(QNAME);
            p.extend_from_slice(&[0, 1, 0, 1]);
            p
        }
        Kind::DnsResponse => {
            let mut p = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
            p.extend_from_slice(QNAME);
            p.extend_from_slice(&[0, 1, 0, 1]);
            // Answer: pointer to the name, A, IN, TTL 300, 192.0.2.1.
            p.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 1, 0x2c, 0, 4, 192, 0, 2, 1]);
            p
        }
        Kind::NtpAmplification => {
            // Mode 7 (private) MON_GETLIST_1 response header, then entries.
            let mut p = vec![0xd7, 0x00, 0x03, 0x2a, 0x00, 0x06, 0x00, 0x48];
            p.resize(8 + 6 * 72, 0);
            p
        }
        Kind::MemcachedAmplification => {
            let mut p = b"\x00\x01\x00\x00\x00\x01\x00\x00VALUE a 0 1024\r\n".to_vec();
            p.resize(p.len() + 1024, b'x');
            p.extend_from_slice(b"\r\nEND\r\n");
            p
        }
        Kind::SsdpAmplification => b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=1800\r\nEXT:\r\nLOCATION: http://192.0.2.1:1900/rootDesc.xml\r\nSERVER: Linux UPnP/1.0\r\nST: upnp:rootdevice\r\nUSN: uuid:00000000-0000-0000-0000-000000000000::upnp:rootdevice\r\n\r\n".to_vec(),
        Kind::CldapAmplification => {
            // LDAP searchResEntry (0x64) inside an LDAPMessage, filler attributes.
            let mut p = vec![0x30, 0x82, 0x0b, 0x00, 0x02, 0x01, 0x01, 0x64, 0x82, 0x0a, 0xf9];
            p.resize(1400, 0x04);
            p
        }
        Kind::ChargenAmplification => (0..74u8).map(|i| b' ' + 1 + (i % 94)).chain(*b"\r\n").collect(),
        Kind::SnmpAmplification => {
            // SNMPv2c GetResponse (0xa2), community "public", filler varbinds.
            let mut p = vec![0x30, 0x82, 0x05, 0xd0, 0x02, 0x01, 0x01, 0x04, 0x06];
            p.extend_from_slice(b"public");
            p.extend_from_slice(&[0xa2, 0x82, 0x05, 0xc1]);
            p.resize(1200, 0x05);
            p
        }
        Kind::Fragment => vec![0u8; 64],
        _ if sized => Vec::new(),
        _ => vec![0u8; 18],
    }
}

impl Frame {
    /// Replaces the low 32 bits of the source address (the whole IPv4
    /// address) and updates the checksums that cover it: the same rewrite
    /// the XDP generator does.
    pub fn set_source(&mut self, low32: u32) {
        let at = self.src_offset;
        let old: [u8; 4] = self.bytes[at..at + 4].try_into().expect("4 bytes");
        let new = low32.to_be_bytes();
        self.bytes[at..at + 4].copy_from_slice(&new);
        if let Some(c) = self.ip_csum_offset {
            self.patch(c, old, new, false);
        }
        if let Some(c) = self.l4_csum_offset {
            self.patch(c, old, new, self.l4_is_udp);
        }
    }

    fn patch(&mut self, at: usize, old: [u8; 4], new: [u8; 4], udp: bool) {
        let cur = u16::from_be_bytes([self.bytes[at], self.bytes[at + 1]]);
        if udp && cur == 0 {
            return;
        }
        let mut c = checksum::update4(cur, old, new);
        if udp && c == 0 {
            c = 0xffff;
        }
        self.bytes[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn spec(kind: Kind, src: IpAddr, dst: IpAddr) -> FrameSpec {
        FrameSpec {
            kind,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            vlans: vec![],
            src,
            dst,
            src_port: None,
            dst_port: None,
            size: None,
        }
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Verifies every checksum of an IPv4 or IPv6 frame by summing to zero.
    fn assert_checksums(f: &[u8]) {
        let l3 = 14;
        match u16::from_be_bytes([f[12], f[13]]) {
            ETH_P_IP => {
                let ihl = (f[l3] & 0xf) as usize * 4;
                assert_eq!(checksum::finish(checksum::sum(0, &f[l3..l3 + ihl])), 0, "ip header");
                let total = u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]) as usize;
                let proto = f[l3 + 9];
                let frag = u16::from_be_bytes([f[l3 + 6], f[l3 + 7]]) & 0x3fff != 0;
                let seg = &f[l3 + ihl..l3 + total];
                if !frag && (proto == 6 || proto == 17) {
                    let ph = checksum::pseudo_header(&f[l3 + 12..l3 + 16], &f[l3 + 16..l3 + 20], proto, seg.len());
                    assert_eq!(checksum::finish(checksum::sum(ph, seg)), 0, "l4 proto {proto}");
                } else if proto == 1 {
                    assert_eq!(checksum::checksum(seg), 0, "icmp");
                }
            }
            ETH_P_IPV6 => {
                let plen = u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]) as usize;
                let next = f[l3 + 6];
                let seg = &f[l3 + 40..l3 + 40 + plen];
                if next == 6 || next == 17 || next == 58 {
                    let ph = checksum::pseudo_header(&f[l3 + 8..l3 + 24], &f[l3 + 24..l3 + 40], next, seg.len());
                    assert_eq!(checksum::finish(checksum::sum(ph, seg)), 0, "l4 next {next}");
                }
            }
            _ => {}
        }
    }

    #[test]
    fn every_kind_builds_valid_frames_in_both_families() {
        for kind in Kind::ALL {
            for (src, dst) in [(v4("198.18.0.1"), v4("192.0.2.2")), (v4("2001:2::1"), v4("2001:db8::2"))] {
                let s = spec(kind, src, dst);
                match build(&s) {
                    Ok(f) => {
                        assert!(f.bytes.len() >= MIN_FRAME, "{kind}");
                        assert!(f.bytes.len() <= MAX_FRAME, "{kind}");
                        assert_checksums(&f.bytes);
                    }
                    Err(FrameError::ArpNeedsIpv4) => assert!(kind == Kind::Arp && src.is_ipv6()),
                    Err(e) => panic!("{kind}: {e}"),
                }
            }
        }
    }

    #[test]
    fn kinds_parse_and_name_their_class() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>(), Ok(k));
        }
        assert!("smurf".parse::<Kind>().unwrap_err().contains("one of: udp, syn"));
        assert_eq!(Kind::Icmp.class(true), TrafficClass::Icmpv6);
        assert_eq!(Kind::NtpAmplification.class(false), TrafficClass::UdpAmplification);
    }

    #[test]
    fn size_pads_the_datagram_and_limits_hold() {
        let mut s = spec(Kind::Udp, v4("198.18.0.1"), v4("192.0.2.2"));
        s.size = Some(512);
        let f = build(&s).unwrap();
        assert_eq!(f.bytes.len(), 512);
        assert_eq!(u16::from_be_bytes([f.bytes[16], f.bytes[17]]), 512 - 14);
        assert_checksums(&f.bytes);
        s.size = Some(20);
        assert!(matches!(build(&s), Err(FrameError::TooSmall { .. })));
        s.size = Some(9000);
        assert!(matches!(build(&s), Err(FrameError::TooLarge { .. })));
        s.size = None;
        s.dst = v4("2001:db8::1");
        assert!(matches!(build(&s), Err(FrameError::MixedFamilies { .. })));
    }

    #[test]
    fn vlan_tags_are_inserted() {
        let mut s = spec(Kind::Syn, v4("198.18.0.1"), v4("192.0.2.2"));
        s.vlans = vec![100, 200];
        let f = build(&s).unwrap();
        assert_eq!(&f.bytes[12..14], &[0x81, 0x00]);
        assert_eq!(&f.bytes[14..16], &100u16.to_be_bytes());
        assert_eq!(&f.bytes[20..22], &[0x08, 0x00]);
        assert_eq!(f.src_offset, 22 + 12);
        s.vlans = vec![1, 2, 3];
        assert_eq!(build(&s), Err(FrameError::TooManyVlans(3)));
        s.vlans = vec![5000];
        assert_eq!(build(&s), Err(FrameError::BadVlan(5000)));
    }

    #[test]
    fn set_source_equals_building_with_that_source() {
        for kind in [Kind::Udp, Kind::Syn, Kind::HttpGet, Kind::Icmp, Kind::DnsResponse, Kind::Fragment] {
            for (base, other) in [
                (v4("198.18.0.1"), Ipv4Addr::new(10, 200, 3, 4).into()),
                (v4("2001:2::1"), IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0x0ac8, 0x0304))),
            ] {
                let dst = if base.is_ipv4() { v4("192.0.2.2") } else { v4("2001:db8::2") };
                let mut f = build(&spec(kind, base, dst)).unwrap();
                f.set_source(0x0ac8_0304);
                let fresh = build(&spec(kind, other, dst)).unwrap();
                assert_eq!(f.bytes, fresh.bytes, "{kind} {base}");
            }
        }
    }
}
