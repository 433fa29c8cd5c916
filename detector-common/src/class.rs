//! Traffic classes: the one place a packet class is defined.
//!
//! The XDP program puts every frame in exactly one class; the controller
//! names them in metrics and logs. The numeric ids are the indexes of the
//! per-class counter array, so they are dense, stable and never reused.

/// One class per frame, decided by the XDP parser.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TrafficClass {
    /// TCP with SYN and without ACK: a connection attempt.
    TcpSyn = 0,
    /// TCP with SYN and ACK.
    TcpSynAck = 1,
    /// TCP with RST, without SYN.
    TcpRst = 2,
    /// Any other TCP segment (ACK, FIN, PSH, data) that is not an HTTP request.
    TcpAck = 3,
    /// TCP without SYN or RST to port 80 or 8080 whose payload starts with
    /// an HTTP method (its first four bytes: see the README's class table).
    HttpRequest = 4,
    /// UDP that is none of the more specific UDP classes.
    Udp = 5,
    /// UDP to port 53, not from port 53.
    DnsQuery = 6,
    /// UDP from port 53.
    DnsResponse = 7,
    /// UDP from a well-known reflector port (see [`AMPLIFICATION_PORTS`]),
    /// not from or to port 53.
    UdpAmplification = 8,
    /// IP protocol 1, ICMP (over IPv4, or its number over IPv6).
    Icmp = 9,
    /// IP protocol 58, ICMPv6 (over IPv6, or its number over IPv4).
    Icmpv6 = 10,
    /// Any IPv4 fragment (first or later), any IPv6 packet with a fragment header.
    Fragment = 11,
    /// IP with another transport (GRE, ESP, SCTP, ...).
    OtherIp = 12,
    /// Not IP after the Ethernet header and up to two VLAN tags (ARP, LLDP,
    /// a third tag, ...).
    NonIp = 13,
    /// A frame that ends before a header it announces, carries an impossible
    /// length, or chains more IPv6 extension headers than the parser walks.
    Malformed = 14,
    /// A TCP segment that would be `tcp_ack` or `tcp_rst`, from a known-good
    /// peer (see [`crate::known`]): part of a conversation the host knows,
    /// so not counted towards an ACK or RST flood. The parser never gives
    /// it; the program decides it after the parse.
    TcpEstablished = 15,
}

/// Number of traffic classes; the length of every per-class array.
pub const CLASS_COUNT: usize = 16;

impl TrafficClass {
    /// All classes, in id order.
    pub const ALL: [TrafficClass; CLASS_COUNT] = [
        TrafficClass::TcpSyn,
        TrafficClass::TcpSynAck,
        TrafficClass::TcpRst,
        TrafficClass::TcpAck,
        TrafficClass::HttpRequest,
        TrafficClass::Udp,
        TrafficClass::DnsQuery,
        TrafficClass::DnsResponse,
        TrafficClass::UdpAmplification,
        TrafficClass::Icmp,
        TrafficClass::Icmpv6,
        TrafficClass::Fragment,
        TrafficClass::OtherIp,
        TrafficClass::NonIp,
        TrafficClass::Malformed,
        TrafficClass::TcpEstablished,
    ];

    /// The class's name as used in metrics labels, logs and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            TrafficClass::TcpSyn => "tcp_syn",
            TrafficClass::TcpSynAck => "tcp_synack",
            TrafficClass::TcpRst => "tcp_rst",
            TrafficClass::TcpAck => "tcp_ack",
            TrafficClass::HttpRequest => "http_request",
            TrafficClass::Udp => "udp",
            TrafficClass::DnsQuery => "dns_query",
            TrafficClass::DnsResponse => "dns_response",
            TrafficClass::UdpAmplification => "udp_amplification",
            TrafficClass::Icmp => "icmp",
            TrafficClass::Icmpv6 => "icmpv6",
            TrafficClass::Fragment => "fragment",
            TrafficClass::OtherIp => "other_ip",
            TrafficClass::NonIp => "non_ip",
            TrafficClass::Malformed => "malformed",
            TrafficClass::TcpEstablished => "tcp_established",
        }
    }

    /// The class with this id, if any.
    pub const fn from_id(id: u32) -> Option<TrafficClass> {
        if (id as usize) < CLASS_COUNT {
            Some(Self::ALL[id as usize])
        } else {
            None
        }
    }

    /// The class named `name` (as printed by [`TrafficClass::name`]), if any.
    pub fn from_name(name: &str) -> Option<TrafficClass> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }

    /// The TCP classes.
    pub const fn is_tcp(self) -> bool {
        matches!(
            self,
            TrafficClass::TcpSyn
                | TrafficClass::TcpSynAck
                | TrafficClass::TcpRst
                | TrafficClass::TcpAck
                | TrafficClass::HttpRequest
                | TrafficClass::TcpEstablished
        )
    }

    /// The UDP classes, DNS and amplification included.
    pub const fn is_udp(self) -> bool {
        matches!(
            self,
            TrafficClass::Udp | TrafficClass::DnsQuery | TrafficClass::DnsResponse | TrafficClass::UdpAmplification
        )
    }

    /// TCP and UDP classes: their packets have ports (the others' are 0).
    pub const fn has_ports(self) -> bool {
        self.is_tcp() || self.is_udp()
    }

    /// The index of this class in per-class arrays.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// UDP source ports of the well-known reflection and amplification vectors.
///
/// A UDP datagram *from* one of these ports is a reply of that service; a
/// flood of them towards a host that asked for none is a reflected attack.
/// Port 53 is not here: DNS responses have their own class.
pub const AMPLIFICATION_PORTS: [(u16, &str); 17] = [
    (17, "qotd"),
    (19, "chargen"),
    (111, "portmap"),
    (123, "ntp"),
    (137, "netbios"),
    (161, "snmp"),
    (389, "cldap"),
    (520, "rip"),
    (1434, "mssql"),
    (1900, "ssdp"),
    (3283, "ard"),
    (3702, "ws_discovery"),
    (5353, "mdns"),
    (5683, "coap"),
    (10001, "ubiquiti"),
    (11211, "memcached"),
    (37810, "dvr"),
];

/// True when `port` is the source port of a known amplification vector.
///
/// Written as a `match` so the XDP program compiles it to a handful of
/// compares with no loop and no memory access.
#[inline(always)]
pub const fn is_amplification_port(port: u16) -> bool {
    matches!(
        port,
        17 | 19 | 111 | 123 | 137 | 161 | 389 | 520 | 1434 | 1900 | 3283 | 3702 | 5353 | 5683 | 10001 | 11211 | 37810
    )
}

/// The vector name of an amplification source port, if it is one.
pub fn amplification_vector(port: u16) -> Option<&'static str> {
    AMPLIFICATION_PORTS.iter().find(|(p, _)| *p == port).map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_match_all() {
        for (i, c) in TrafficClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(TrafficClass::from_id(i as u32), Some(*c));
            assert_eq!(TrafficClass::from_name(c.name()), Some(*c));
        }
        assert_eq!(TrafficClass::from_id(CLASS_COUNT as u32), None);
        assert_eq!(TrafficClass::from_name("nope"), None);
    }

    #[test]
    fn amplification_match_agrees_with_table() {
        for port in 0..=u16::MAX {
            assert_eq!(is_amplification_port(port), amplification_vector(port).is_some(), "port {port}");
        }
        assert!(!is_amplification_port(53));
    }
}
