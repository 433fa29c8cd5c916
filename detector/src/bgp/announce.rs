//! What the detector asks its upstream for, as data: a blackhole route
//! (RTBH, RFC 7999) or a FlowSpec rule (RFC 8955 for IPv4, RFC 8956 for
//! IPv6). Pure.
//!
//! An announcement's [`key`](Announcement::key) is what BGP itself takes
//! for the same route: the prefix of a blackhole, the match components of
//! a FlowSpec rule (its NLRI). Two announcements with one key cannot both
//! be in force: announcing the second replaces the first (a BGP implicit
//! withdraw), which is how a changed community or action is applied. The
//! attributes (communities, the action) are compared separately, by
//! equality of the whole announcement.
//!
//! [`FlowSpecRule::from_signature`] turns an incident's [`Signature`] into
//! the rule an upstream router can apply.

use std::{fmt, str::FromStr};

use detector_common::TrafficClass;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{detect::signature::Signature, mitigate::prefix::Prefix, span::Span};

/// IP protocol numbers FlowSpec rules use by name.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// The most values of one list component (protocols, port spans, length
/// spans): an upstream router turns each into a filter term, and a
/// signature needs few.
pub const MAX_COMPONENT_VALUES: usize = 8;
/// The communities one blackhole carries at most.
pub const MAX_COMMUNITIES: usize = 8;
/// Bytes the frame length of a signature counts that the IP packet length
/// of a FlowSpec rule does not: the Ethernet header.
const ETHERNET_HEADER: u16 = 14;
/// Two VLAN tags, which a frame may carry and the IP packet never does: a
/// length span converted from frame lengths is widened down by them.
const VLAN_TAGS: u16 = 8;
/// The IPv6 header, which RFC 8956's packet length leaves out.
const IPV6_HEADER: u16 = 40;

/// A BGP community: standard (RFC 1997, `65535:666`) or large (RFC 8092,
/// `64512:1:2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Community {
    Standard(u16, u16),
    Large(u32, u32, u32),
}

/// BLACKHOLE, RFC 7999: well known, honoured by most providers.
pub const BLACKHOLE: Community = Community::Standard(65535, 666);

impl Community {
    /// The standard community as BGP carries it (`asn << 16 | value`).
    pub fn standard_value(&self) -> Option<u32> {
        match self {
            Community::Standard(a, b) => Some((*a as u32) << 16 | *b as u32),
            Community::Large(..) => None,
        }
    }

    pub fn from_standard_value(v: u32) -> Community {
        Community::Standard((v >> 16) as u16, v as u16)
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Community::Standard(a, b) => write!(f, "{a}:{b}"),
            Community::Large(a, b, c) => write!(f, "{a}:{b}:{c}"),
        }
    }
}

impl FromStr for Community {
    type Err = String;

    /// `65535:666` (each part 0 to 65535), `64512:1:2` (each part 0 to
    /// 4294967295), or `blackhole` for 65535:666.
    fn from_str(s: &str) -> Result<Community, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("blackhole") {
            return Ok(BLACKHOLE);
        }
        let bad = || format!("'{s}' is not a community: give ASN:VALUE (65535:666) or a large one, A:B:C (64512:1:2)");
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            [a, b] => {
                let p = |x: &str| {
                    x.parse::<u16>()
                        .map_err(|_| format!("'{s}': '{x}' is not a number from 0 to 65535 (a standard community)"))
                };
                Ok(Community::Standard(p(a)?, p(b)?))
            }
            [a, b, c] => {
                let p = |x: &str| {
                    x.parse::<u32>()
                        .map_err(|_| format!("'{s}': '{x}' is not a number from 0 to 4294967295 (a large community)"))
                };
                Ok(Community::Large(p(a)?, p(b)?, p(c)?))
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for Community {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Community {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Community, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// TCP flags a FlowSpec rule requires: every bit of `set` set, every bit
/// of `unset` clear (a SYN flood: SYN set, ACK clear).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TcpFlags {
    pub set: u8,
    pub unset: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

impl fmt::Display for TcpFlags {
    /// `+syn-ack`: the flags set, then those clear.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(u8, &str); 8] = [
            (TCP_FIN, "fin"),
            (TCP_SYN, "syn"),
            (TCP_RST, "rst"),
            (TCP_PSH, "psh"),
            (TCP_ACK, "ack"),
            (0x20, "urg"),
            (0x40, "ece"),
            (0x80, "cwr"),
        ];
        for (bit, name) in NAMES {
            if self.set & bit != 0 {
                write!(f, "+{name}")?;
            }
        }
        for (bit, name) in NAMES {
            if self.unset & bit != 0 {
                write!(f, "-{name}")?;
            }
        }
        Ok(())
    }
}

/// What the upstream does with the traffic a FlowSpec rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FlowAction {
    /// Drop it (traffic-rate 0).
    Discard,
    /// Let this many bytes per second through, drop the rest (the
    /// traffic-rate extended community, RFC 8955 section 7.3).
    RateLimit { bytes_per_second: u32 },
}

impl fmt::Display for FlowAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowAction::Discard => f.write_str("discard"),
            FlowAction::RateLimit { bytes_per_second } => write!(f, "rate-limit {bytes_per_second} B/s"),
        }
    }
}

/// A FlowSpec rule: what it matches (its NLRI) and what it does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSpecRule {
    /// Destination prefix (always given: a rule scoped to a protected
    /// destination, never to the whole internet).
    pub dst: Prefix,
    /// Source prefix; none for any source (spoofed floods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Prefix>,
    /// IP protocol numbers; empty for any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protocols: Vec<u8>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_ports: Vec<Span<u16>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_ports: Vec<Span<u16>>,
    /// IP packet length (IPv4: total length; IPv6: payload length, RFC
    /// 8956), not the frame length signatures count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packet_lengths: Vec<Span<u16>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    /// Fragments only (first or later).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fragment: bool,
    pub action: FlowAction,
}

/// Why a FlowSpec rule's shape is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error("src {src} and dst {dst} are of different address families; the rule could match nothing")]
    Families { src: Prefix, dst: Prefix },
    #[error("{field}: {count} values, at most {MAX_COMPONENT_VALUES}")]
    TooManyValues { field: &'static str, count: usize },
    #[error("ports only match TCP and UDP; the rule's protocols are {0}")]
    PortsWithoutTransport(String),
    #[error("tcp_flags only match TCP; give protocols [6] with them")]
    FlagsWithoutTcp,
    #[error("tcp_flags {0}: a flag cannot be both set and clear")]
    FlagsContradict(TcpFlags),
    #[error("rate limit 0 bytes per second: use the discard action")]
    ZeroRate,
    #[error("a blackhole carries at least one community (the BLACKHOLE community, 65535:666, or the provider's)")]
    NoCommunity,
    #[error("a blackhole carries at most {MAX_COMMUNITIES} communities, not {0}")]
    TooManyCommunities(usize),
}

/// Why a signature gives no FlowSpec rule.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the signature names no single destination and none was given; a FlowSpec rule needs one")]
    NoDestination,
    #[error("class {0} has no FlowSpec equivalent (its IP protocol is not known)")]
    Class(String),
    #[error(transparent)]
    Shape(#[from] ShapeError),
}

impl FlowSpecRule {
    /// The rule for an attack: its protocols and TCP flags from the
    /// signature's classes, its ports, its lengths (frame lengths turned
    /// into IP packet lengths), to the signature's destination or, when it
    /// names none (a carpet bombing), to `dst`. The signature's TTL span
    /// has no FlowSpec component and is left out; so is any source (a
    /// signature describes spoofed floods, whose sources are random).
    pub fn from_signature(
        sig: &Signature,
        dst: Option<Prefix>,
        action: FlowAction,
    ) -> Result<FlowSpecRule, SignatureError> {
        let dst = sig.dst.map(Prefix::host).or(dst).ok_or(SignatureError::NoDestination)?;
        let mut protocols = Vec::new();
        let mut flags: Vec<Option<TcpFlags>> = Vec::new();
        let mut fragment = false;
        for name in &sig.classes {
            let class = TrafficClass::from_name(name).ok_or_else(|| SignatureError::Class(name.clone()))?;
            let (proto, f) = match class {
                TrafficClass::TcpSyn => (PROTO_TCP, Some(TcpFlags { set: TCP_SYN, unset: TCP_ACK })),
                TrafficClass::TcpSynAck => (PROTO_TCP, Some(TcpFlags { set: TCP_SYN | TCP_ACK, unset: 0 })),
                TrafficClass::TcpRst => (PROTO_TCP, Some(TcpFlags { set: TCP_RST, unset: TCP_SYN })),
                TrafficClass::TcpAck | TrafficClass::HttpRequest | TrafficClass::TcpEstablished => (PROTO_TCP, None),
                TrafficClass::Udp
                | TrafficClass::DnsQuery
                | TrafficClass::DnsResponse
                | TrafficClass::UdpAmplification => (PROTO_UDP, None),
                TrafficClass::Icmp => (PROTO_ICMP, None),
                TrafficClass::Icmpv6 => (PROTO_ICMPV6, None),
                TrafficClass::Fragment => {
                    fragment = true;
                    continue;
                }
                TrafficClass::OtherIp | TrafficClass::NonIp | TrafficClass::Malformed => {
                    return Err(SignatureError::Class(name.clone()))
                }
            };
            protocols.push(proto);
            flags.push(f);
        }
        // Fragments carry any protocol: a rule on them restricts none.
        if fragment {
            protocols.clear();
            flags.clear();
        }
        // Flags only when every class asks for the same ones (one TCP class).
        let tcp_flags = match flags.as_slice() {
            [Some(f)] => Some(*f),
            [first, rest @ ..] if rest.iter().all(|f| f == first) && protocols.iter().all(|p| *p == PROTO_TCP) => {
                *first
            }
            _ => None,
        };
        let v6 = !dst.is_ipv4();
        let packet_lengths = sig.length.map(|l| vec![ip_length(l, v6)]).unwrap_or_default();
        let rule = FlowSpecRule {
            dst,
            src: None,
            protocols,
            dst_ports: sig.dst_ports.clone(),
            src_ports: sig.src_ports.clone(),
            packet_lengths,
            tcp_flags,
            fragment,
            action,
        }
        .normalized();
        rule.check_shape()?;
        Ok(rule)
    }

    /// Sorted, without duplicates; overlapping or adjacent spans joined; the
    /// rate one BGP can carry. An equal rule normalizes to equal values
    /// whatever order it was built or read back in.
    pub fn normalized(mut self) -> FlowSpecRule {
        self.protocols.sort_unstable();
        self.protocols.dedup();
        for spans in [&mut self.dst_ports, &mut self.src_ports, &mut self.packet_lengths] {
            *spans = join(std::mem::take(spans));
        }
        if self.tcp_flags == Some(TcpFlags::default()) {
            self.tcp_flags = None;
        }
        // BGP carries the rate as a 32-bit float: the rate it can carry, so
        // the rule read back from the daemon equals the one announced.
        if let FlowAction::RateLimit { bytes_per_second } = &mut self.action {
            *bytes_per_second = *bytes_per_second as f32 as u32;
        }
        self
    }

    /// The checks of a rule's shape that need nothing but the rule.
    pub fn check_shape(&self) -> Result<(), ShapeError> {
        if let Some(src) = self.src {
            if src.is_ipv4() != self.dst.is_ipv4() {
                return Err(ShapeError::Families { src, dst: self.dst });
            }
        }
        for (field, count) in [
            ("protocols", self.protocols.len()),
            ("dst_ports", self.dst_ports.len()),
            ("src_ports", self.src_ports.len()),
            ("packet_lengths", self.packet_lengths.len()),
        ] {
            if count > MAX_COMPONENT_VALUES {
                return Err(ShapeError::TooManyValues { field, count });
            }
        }
        let ported = |p: &u8| *p == PROTO_TCP || *p == PROTO_UDP;
        if (!self.dst_ports.is_empty() || !self.src_ports.is_empty())
            && !self.protocols.is_empty()
            && !self.protocols.iter().all(ported)
        {
            return Err(ShapeError::PortsWithoutTransport(list(&self.protocols)));
        }
        if let Some(f) = self.tcp_flags {
            if self.protocols != [PROTO_TCP] {
                return Err(ShapeError::FlagsWithoutTcp);
            }
            if f.set & f.unset != 0 {
                return Err(ShapeError::FlagsContradict(f));
            }
        }
        if self.action == (FlowAction::RateLimit { bytes_per_second: 0 }) {
            return Err(ShapeError::ZeroRate);
        }
        Ok(())
    }

    /// `192.0.2.7/32 proto 17 dport 53 len 400-1500`: the match, as the key
    /// and logs show it.
    fn describe_match(&self) -> String {
        let spans = |v: &[Span<u16>]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",");
        let mut s = self.dst.to_string();
        if let Some(src) = self.src {
            s.push_str(&format!(" src {src}"));
        }
        if !self.protocols.is_empty() {
            s.push_str(&format!(" proto {}", list(&self.protocols)));
        }
        if !self.dst_ports.is_empty() {
            s.push_str(&format!(" dport {}", spans(&self.dst_ports)));
        }
        if !self.src_ports.is_empty() {
            s.push_str(&format!(" sport {}", spans(&self.src_ports)));
        }
        if !self.packet_lengths.is_empty() {
            s.push_str(&format!(" len {}", spans(&self.packet_lengths)));
        }
        if let Some(f) = self.tcp_flags {
            s.push_str(&format!(" tcp-flags {f}"));
        }
        if self.fragment {
            s.push_str(" fragment");
        }
        s
    }
}

fn list(v: &[u8]) -> String {
    v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

/// Frame lengths (Ethernet header included) as IP packet lengths: the
/// header taken off, the IPv6 header too for IPv6 (RFC 8956 counts the
/// payload), and the low end lowered by two VLAN tags a frame may carry.
fn ip_length(frame: Span<u16>, v6: bool) -> Span<u16> {
    let off = ETHERNET_HEADER + if v6 { IPV6_HEADER } else { 0 };
    Span { lo: frame.lo.saturating_sub(off + VLAN_TAGS), hi: frame.hi.saturating_sub(off) }
}

/// Spans sorted, overlapping and adjacent ones joined.
fn join(mut spans: Vec<Span<u16>>) -> Vec<Span<u16>> {
    spans.sort();
    let mut out: Vec<Span<u16>> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.lo as u32 <= last.hi as u32 + 1 => last.hi = last.hi.max(s.hi),
            _ => out.push(s),
        }
    }
    out
}

/// One thing announced upstream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Announcement {
    /// Remotely triggered blackholing: the prefix announced with the
    /// communities that ask the upstream to drop all traffic to it.
    Blackhole {
        prefix: Prefix,
        communities: Vec<Community>,
    },
    Flowspec(FlowSpecRule),
}

/// The two kinds, as metrics label them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Blackhole,
    Flowspec,
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Blackhole => "blackhole",
            Kind::Flowspec => "flowspec",
        }
    }
}

impl Announcement {
    /// A blackhole of `prefix` with `communities` sorted and deduplicated.
    pub fn blackhole(prefix: Prefix, communities: impl IntoIterator<Item = Community>) -> Announcement {
        Announcement::Blackhole { prefix, communities: communities.into_iter().collect() }.normalized()
    }

    pub fn kind(&self) -> Kind {
        match self {
            Announcement::Blackhole { .. } => Kind::Blackhole,
            Announcement::Flowspec(_) => Kind::Flowspec,
        }
    }

    /// The destination whose traffic it acts on.
    pub fn dst(&self) -> Prefix {
        match self {
            Announcement::Blackhole { prefix, .. } => *prefix,
            Announcement::Flowspec(r) => r.dst,
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.dst().is_ipv4()
    }

    /// Lists sorted and deduplicated: the form keys and comparisons use.
    pub fn normalized(self) -> Announcement {
        match self {
            Announcement::Blackhole { prefix, mut communities } => {
                communities.sort();
                communities.dedup();
                Announcement::Blackhole { prefix, communities }
            }
            Announcement::Flowspec(r) => Announcement::Flowspec(r.normalized()),
        }
    }

    /// The checks that need nothing but the announcement (the ones that
    /// need the protected networks and limits are in [`super::check`]).
    pub fn check_shape(&self) -> Result<(), ShapeError> {
        match self {
            Announcement::Blackhole { communities, .. } => {
                if communities.is_empty() {
                    return Err(ShapeError::NoCommunity);
                }
                if communities.len() > MAX_COMMUNITIES {
                    return Err(ShapeError::TooManyCommunities(communities.len()));
                }
                Ok(())
            }
            Announcement::Flowspec(r) => r.check_shape(),
        }
    }

    /// What BGP takes for the same route (see the [module](self)):
    /// `blackhole 192.0.2.7/32`, `flowspec 192.0.2.7/32 proto 17 dport 53`.
    /// Stable across restarts and unique among announcements in force.
    pub fn key(&self) -> String {
        match self {
            Announcement::Blackhole { prefix, .. } => format!("blackhole {prefix}"),
            Announcement::Flowspec(r) => format!("flowspec {}", r.clone().normalized().describe_match()),
        }
    }

    /// The key and the attributes: one line for logs and the CLI.
    pub fn describe(&self) -> String {
        match self {
            Announcement::Blackhole { communities, .. } => {
                let c: Vec<String> = communities.iter().map(|c| c.to_string()).collect();
                format!("{} community {}", self.key(), c.join(","))
            }
            Announcement::Flowspec(r) => format!("{} {}", self.key(), r.action),
        }
    }
}

impl fmt::Display for Announcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn sig(classes: &[&str], dst: Option<&str>) -> Signature {
        Signature {
            classes: classes.iter().map(|c| c.to_string()).collect(),
            dst: dst.map(|d| d.parse().unwrap()),
            dst_ports: vec![Span::one(53)],
            src_ports: vec![],
            length: Some(Span { lo: 100, hi: 1514 }),
            ttl: Some(Span::one(64)),
            coverage: 1.0,
            collateral: 0.0,
            samples: 100,
            peacetime_samples: 0,
            vectors: None,
        }
    }

    #[test]
    fn communities_parse_and_print() {
        assert_eq!("65535:666".parse::<Community>(), Ok(BLACKHOLE));
        assert_eq!("blackhole".parse::<Community>(), Ok(BLACKHOLE));
        assert_eq!("64512:1:2".parse::<Community>(), Ok(Community::Large(64512, 1, 2)));
        assert_eq!(BLACKHOLE.standard_value(), Some(0xFFFF_029A));
        assert_eq!(Community::from_standard_value(0xFFFF_029A), BLACKHOLE);
        assert_eq!(Community::Large(4_200_000_000, 0, 1).to_string(), "4200000000:0:1");
        let e = "65536:1".parse::<Community>().unwrap_err();
        assert!(e.contains("'65536' is not a number from 0 to 65535"), "{e}");
        let e = "1:2:3:4".parse::<Community>().unwrap_err();
        assert!(e.contains("is not a community"), "{e}");
        assert!("x:1:2".parse::<Community>().unwrap_err().contains("large community"));
        assert!("".parse::<Community>().is_err());
    }

    #[test]
    fn a_udp_flood_signature_gives_its_rule() {
        let r = FlowSpecRule::from_signature(
            &sig(&["udp", "dns_response"], Some("198.51.100.10")),
            None,
            FlowAction::Discard,
        )
        .unwrap();
        assert_eq!(r.dst, p("198.51.100.10/32"));
        assert_eq!(r.protocols, vec![PROTO_UDP]);
        assert_eq!(r.dst_ports, vec![Span::one(53)]);
        // Frame 100-1514 is IP 78-1500 (VLAN tags allowed for at the low end).
        assert_eq!(r.packet_lengths, vec![Span { lo: 78, hi: 1500 }]);
        assert_eq!(r.tcp_flags, None);
        assert_eq!(
            Announcement::Flowspec(r).describe(),
            "flowspec 198.51.100.10/32 proto 17 dport 53 len 78-1500 discard"
        );
    }

    #[test]
    fn a_syn_flood_asks_for_its_flags() {
        let mut s = sig(&["tcp_syn"], Some("2001:db8:100::10"));
        s.dst_ports = vec![Span::one(80), Span::one(443)];
        let r = FlowSpecRule::from_signature(&s, None, FlowAction::RateLimit { bytes_per_second: 125_000 }).unwrap();
        assert_eq!(r.protocols, vec![PROTO_TCP]);
        assert_eq!(r.tcp_flags, Some(TcpFlags { set: TCP_SYN, unset: TCP_ACK }));
        assert_eq!(r.packet_lengths, vec![Span { lo: 38, hi: 1460 }], "IPv6 payload length");
        assert_eq!(
            Announcement::Flowspec(r).describe(),
            "flowspec 2001:db8:100::10/128 proto 6 dport 80,443 len 38-1460 tcp-flags +syn-ack rate-limit 125000 B/s"
        );
        // Two TCP classes with different flags: no flags.
        let r = FlowSpecRule::from_signature(
            &sig(&["tcp_syn", "tcp_ack"], Some("198.51.100.10")),
            None,
            FlowAction::Discard,
        )
        .unwrap();
        assert_eq!(r.tcp_flags, None);
    }

    #[test]
    fn signatures_without_a_rule_are_refused() {
        let s = sig(&["udp"], None);
        assert_eq!(FlowSpecRule::from_signature(&s, None, FlowAction::Discard), Err(SignatureError::NoDestination));
        // A carpet bombing: the group's prefix stands in.
        let r = FlowSpecRule::from_signature(&s, Some(p("198.51.100.0/24")), FlowAction::Discard).unwrap();
        assert_eq!(r.dst, p("198.51.100.0/24"));
        let e = FlowSpecRule::from_signature(&sig(&["other_ip"], Some("198.51.100.1")), None, FlowAction::Discard);
        assert_eq!(e, Err(SignatureError::Class("other_ip".into())));
        // Ports on ICMP: refused by the shape check.
        let e = FlowSpecRule::from_signature(&sig(&["icmp"], Some("198.51.100.1")), None, FlowAction::Discard);
        assert_eq!(e.unwrap_err().to_string(), "ports only match TCP and UDP; the rule's protocols are 1");
        // Fragments: any protocol.
        let mut s = sig(&["fragment", "udp"], Some("198.51.100.1"));
        s.dst_ports.clear();
        let r = FlowSpecRule::from_signature(&s, None, FlowAction::Discard).unwrap();
        assert!(r.fragment && r.protocols.is_empty());
    }

    #[test]
    fn keys_ignore_order_and_attributes() {
        let a = FlowSpecRule {
            dst: p("198.51.100.10/32"),
            src: None,
            protocols: vec![17, 6, 17],
            dst_ports: vec![Span::one(443), Span::one(80), Span::one(81)],
            src_ports: vec![],
            packet_lengths: vec![],
            tcp_flags: None,
            fragment: false,
            action: FlowAction::Discard,
        };
        let b = FlowSpecRule {
            protocols: vec![6, 17],
            dst_ports: vec![Span { lo: 80, hi: 81 }, Span::one(443)],
            action: FlowAction::RateLimit { bytes_per_second: 1000 },
            ..a.clone()
        };
        let (a, b) = (Announcement::Flowspec(a), Announcement::Flowspec(b));
        assert_eq!(a.key(), b.key());
        assert_eq!(a.key(), "flowspec 198.51.100.10/32 proto 6,17 dport 80-81,443");
        assert_ne!(a.clone().normalized(), b.clone().normalized(), "the action differs");
        let h1 = Announcement::blackhole(p("198.51.100.10/32"), [BLACKHOLE]);
        let h2 = Announcement::blackhole(p("198.51.100.10/32"), [Community::Standard(64512, 666), BLACKHOLE]);
        assert_eq!(h1.key(), h2.key());
        assert_ne!(h1, h2);
        assert_eq!(h2.describe(), "blackhole 198.51.100.10/32 community 64512:666,65535:666");
        assert_ne!(h1.key(), a.key());
    }

    #[test]
    fn shapes_are_checked() {
        let base = FlowSpecRule {
            dst: p("198.51.100.10/32"),
            src: None,
            protocols: vec![],
            dst_ports: vec![],
            src_ports: vec![],
            packet_lengths: vec![],
            tcp_flags: None,
            fragment: false,
            action: FlowAction::Discard,
        };
        assert_eq!(base.check_shape(), Ok(()));
        let e = |r: FlowSpecRule| r.check_shape().unwrap_err().to_string();
        assert!(
            e(FlowSpecRule { src: Some(p("2001:db8::/32")), ..base.clone() }).contains("different address families")
        );
        assert!(e(FlowSpecRule { tcp_flags: Some(TcpFlags { set: 2, unset: 0 }), ..base.clone() })
            .contains("only match TCP"));
        let flags = Some(TcpFlags { set: TCP_SYN, unset: TCP_SYN });
        assert!(e(FlowSpecRule { protocols: vec![6], tcp_flags: flags, ..base.clone() }).contains("both set and clear"));
        assert!(
            e(FlowSpecRule { protocols: (1..=9).collect(), ..base.clone() }).contains("protocols: 9 values, at most 8")
        );
        let zero = FlowAction::RateLimit { bytes_per_second: 0 };
        assert!(e(FlowSpecRule { action: zero, ..base.clone() }).contains("use the discard action"));
        let none = Announcement::Blackhole { prefix: p("198.51.100.10/32"), communities: vec![] };
        assert_eq!(none.check_shape(), Err(ShapeError::NoCommunity));
    }

    #[test]
    fn announcements_round_trip_through_json() {
        let a = Announcement::Flowspec(FlowSpecRule {
            dst: p("198.51.100.10/32"),
            src: Some(p("203.0.113.0/24")),
            protocols: vec![6],
            dst_ports: vec![Span::one(80)],
            src_ports: vec![Span { lo: 1024, hi: 65535 }],
            packet_lengths: vec![Span { lo: 40, hi: 60 }],
            tcp_flags: Some(TcpFlags { set: TCP_SYN, unset: TCP_ACK }),
            fragment: false,
            action: FlowAction::RateLimit { bytes_per_second: 1000 },
        });
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Announcement>(&json).unwrap(), a);
        let h = Announcement::blackhole(p("2001:db8::7/128"), [BLACKHOLE, Community::Large(64512, 0, 666)]);
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"type\":\"blackhole\"") && json.contains("\"65535:666\""), "{json}");
        assert_eq!(serde_json::from_str::<Announcement>(&json).unwrap(), h);
    }
}
