//! 64-byte frames, one per traffic class, for the test-run measurements.

use detector::flood::frame::{self, FrameSpec, Kind};
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
