//! Attack families: what an incident says the attack is, and which traffic
//! classes each one watches.

use std::{fmt, str::FromStr};

use detector_common::TrafficClass;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    UdpFlood,
    SynFlood,
    /// TCP ACK and RST floods.
    AckFlood,
    /// ICMP and ICMPv6.
    IcmpFlood,
    /// Queries to this host's DNS.
    DnsFlood,
    /// Reflected DNS responses.
    DnsAmplification,
    /// Reflected replies from the other well-known reflector services.
    UdpAmplification,
    /// HTTP requests, or new connections to the web ports.
    HttpFlood,
    FragmentFlood,
    /// Two or more of the others at once.
    MultiVector,
}

impl Family {
    /// The families that detection watches (all but `MultiVector`).
    pub const DETECTED: [Family; 9] = [
        Family::UdpFlood,
        Family::SynFlood,
        Family::AckFlood,
        Family::IcmpFlood,
        Family::DnsFlood,
        Family::DnsAmplification,
        Family::UdpAmplification,
        Family::HttpFlood,
        Family::FragmentFlood,
    ];

    /// Every family: the detected ones, then `MultiVector`.
    pub const ALL: [Family; 10] = {
        let mut all = [Family::MultiVector; 10];
        let mut i = 0;
        while i < Family::DETECTED.len() {
            all[i] = Family::DETECTED[i];
            i += 1;
        }
        all
    };

    pub fn name(self) -> &'static str {
        match self {
            Family::UdpFlood => "udp_flood",
            Family::SynFlood => "syn_flood",
            Family::AckFlood => "ack_flood",
            Family::IcmpFlood => "icmp_flood",
            Family::DnsFlood => "dns_flood",
            Family::DnsAmplification => "dns_amplification",
            Family::UdpAmplification => "udp_amplification",
            Family::HttpFlood => "http_flood",
            Family::FragmentFlood => "fragment_flood",
            Family::MultiVector => "multi_vector",
        }
    }

    /// The traffic classes whose packets make up this family's signal.
    pub fn classes(self) -> &'static [TrafficClass] {
        match self {
            Family::UdpFlood => &[TrafficClass::Udp],
            Family::SynFlood => &[TrafficClass::TcpSyn],
            Family::AckFlood => &[TrafficClass::TcpAck, TrafficClass::TcpRst],
            Family::IcmpFlood => &[TrafficClass::Icmp, TrafficClass::Icmpv6],
            Family::DnsFlood => &[TrafficClass::DnsQuery],
            Family::DnsAmplification => &[TrafficClass::DnsResponse],
            Family::UdpAmplification => &[TrafficClass::UdpAmplification],
            Family::HttpFlood => &[TrafficClass::HttpRequest],
            Family::FragmentFlood => &[TrafficClass::Fragment],
            Family::MultiVector => &[],
        }
    }

    /// The classes that carry this family's traffic, for naming its top
    /// sources and ports: for http_flood, also the SYNs and ACKs of its new
    /// connections.
    pub fn traffic_classes(self) -> &'static [TrafficClass] {
        match self {
            Family::HttpFlood => {
                &[TrafficClass::HttpRequest, TrafficClass::TcpSyn, TrafficClass::TcpAck, TrafficClass::TcpEstablished]
            }
            other => other.classes(),
        }
    }

    /// The index of a detected family in per-family arrays.
    pub fn index(self) -> usize {
        Family::DETECTED.iter().position(|f| *f == self).unwrap_or(Family::DETECTED.len())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Family, String> {
        Family::ALL.iter().copied().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<_> = Family::ALL.iter().map(|f| f.name()).collect();
            format!("'{s}' is not an attack family (one of: {})", names.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_classes() {
        for f in Family::ALL {
            assert_eq!(f.name().parse::<Family>(), Ok(f));
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{}\"", f.name()));
        }
        for (i, f) in Family::DETECTED.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert!(!f.classes().is_empty());
        }
        // Every class that can be an attack belongs to exactly one family
        // (a known peer's segments are not an attack of their own).
        for c in TrafficClass::ALL {
            let n = Family::DETECTED.iter().filter(|f| f.classes().contains(&c)).count();
            let expected = !matches!(
                c,
                TrafficClass::TcpSynAck
                    | TrafficClass::OtherIp
                    | TrafficClass::NonIp
                    | TrafficClass::Malformed
                    | TrafficClass::TcpEstablished
            );
            assert_eq!(n, expected as usize, "{}", c.name());
        }
        assert!("smurf".parse::<Family>().unwrap_err().contains("udp_flood"));
    }
}
