//! Source prefixes: IPv4 and IPv6 in one type, stored the way the XDP
//! program keys them (IPv4 mapped into IPv6, `::ffff:a.b.c.d/96+n`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// A source prefix, normalised: no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    /// The network address, IPv4 mapped into IPv6.
    addr: Ipv6Addr,
    /// Prefix length over the 128 bits of `addr`.
    len: u8,
}

impl Prefix {
    /// The prefix of one address (/32 or /128).
    pub fn host(ip: IpAddr) -> Prefix {
        match ip {
            IpAddr::V4(v4) => Prefix { addr: v4.to_ipv6_mapped(), len: 128 },
            IpAddr::V6(v6) => Prefix { addr: v6, len: 128 },
        }
    }

    /// `ip/len` with the host bits cleared.
    pub fn new(ip: IpAddr, len: u8) -> Result<Prefix, String> {
        let (addr, len) = match ip {
            IpAddr::V4(v4) if len <= 32 => (v4.to_ipv6_mapped(), 96 + len),
            IpAddr::V6(v6) if len <= 128 => (v6, len),
            _ => return Err(format!("prefix length {len} is too long for {ip}")),
        };
        Ok(Prefix { addr: Ipv6Addr::from(mask(u128::from(addr), len)), len })
    }

    /// Every address of one family: `0.0.0.0/0` or `::/0`.
    pub fn any(ipv4: bool) -> Prefix {
        if ipv4 {
            Prefix { addr: Ipv4Addr::UNSPECIFIED.to_ipv6_mapped(), len: 96 }
        } else {
            Prefix { addr: Ipv6Addr::UNSPECIFIED, len: 0 }
        }
    }

    /// The key bytes and the prefix length the trie is keyed by.
    pub fn key(&self) -> ([u8; 16], u32) {
        (self.addr.octets(), self.len as u32)
    }

    /// Rebuilds a prefix from trie key bytes.
    pub fn from_key(addr: [u8; 16], len: u32) -> Option<Prefix> {
        (len <= 128)
            .then(|| Prefix { addr: Ipv6Addr::from(mask(u128::from_be_bytes(addr), len as u8)), len: len as u8 })
    }

    pub fn is_ipv4(&self) -> bool {
        self.len >= 96 && self.addr.to_ipv4_mapped().is_some()
    }

    /// True when every address of `other` is in `self`.
    pub fn contains(&self, other: &Prefix) -> bool {
        self.len <= other.len && mask(u128::from(other.addr), self.len) == u128::from(self.addr)
    }

    /// True when the two share any address (prefixes nest or are disjoint).
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// Prefix length over 128 bits (IPv4 /24 is 120).
    pub fn bits(&self) -> u8 {
        self.len
    }

    /// True for `0.0.0.0/0` and `::/0`: a rule on it names no source.
    pub fn is_any_source(&self) -> bool {
        self.len == 0 || (self.len == 96 && self.is_ipv4())
    }

    /// True when the prefix holds exactly one address.
    pub fn is_host(&self) -> bool {
        self.len == 128
    }
}

fn mask(a: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        a & (u128::MAX << (128 - len as u32))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_ipv4(), self.addr.to_ipv4_mapped()) {
            (true, Some(v4)) => write!(f, "{v4}/{}", self.len - 96),
            _ => write!(f, "{}/{}", self.addr, self.len),
        }
    }
}

impl FromStr for Prefix {
    type Err = String;

    /// `10.0.0.0/8`, `2001:db8::/32`, or one address (`192.0.2.7`). Host
    /// bits must be clear: `10.1.2.3/8` is refused, naming `10.0.0.0/8`, since
    /// it is more likely a typo than a wish to block a /8.
    fn from_str(s: &str) -> Result<Prefix, String> {
        let s = s.trim();
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => {
                let len: u8 =
                    len.parse().map_err(|_| format!("'{s}' is not a CIDR prefix: '{len}' is not a prefix length"))?;
                (ip, Some(len))
            }
            None => (s, None),
        };
        let ip: IpAddr = ip.parse().map_err(|_| format!("'{s}' is not a CIDR prefix: '{ip}' is not an IP address"))?;
        let ip = match ip {
            // An IPv4-mapped IPv6 address is the IPv4 address.
            IpAddr::V6(v6) if len.is_none() => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(format!("'{s}' is not a CIDR prefix: the length is at most {max} for {ip}"));
        }
        let p = Prefix::new(ip, len)?;
        let exact = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped() == p.addr,
            IpAddr::V6(v6) => v6 == p.addr,
        };
        if !exact {
            return Err(format!("'{s}' has host bits set; did you mean {p}?"));
        }
        Ok(p)
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The IPv4 loopback network and the IPv6 loopback address.
pub fn loopback() -> [Prefix; 2] {
    [
        Prefix::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).expect("a valid prefix"),
        Prefix::host(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_both_families() {
        assert_eq!(p("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(p("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(p("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(p("::1").to_string(), "::1/128");
        assert_eq!(p("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(p("::/0").to_string(), "::/0");
        assert_eq!(p("::ffff:192.0.2.7"), p("192.0.2.7/32"));
        assert_eq!(p("10.0.0.0/8").key().1, 104);
    }

    #[test]
    fn refuses_bad_input_clearly() {
        assert_eq!(
            "10.1.2.3/8".parse::<Prefix>().unwrap_err(),
            "'10.1.2.3/8' has host bits set; did you mean 10.0.0.0/8?"
        );
        assert!("10.0.0.0/33".parse::<Prefix>().unwrap_err().contains("at most 32"));
        assert!("10.0.0/8".parse::<Prefix>().unwrap_err().contains("'10.0.0' is not an IP address"));
        assert!("10.0.0.0/x".parse::<Prefix>().unwrap_err().contains("'x' is not a prefix length"));
        assert!("".parse::<Prefix>().is_err());
    }

    #[test]
    fn containment() {
        assert!(p("10.0.0.0/8").contains(&p("10.1.2.3")));
        assert!(!p("10.0.0.0/8").contains(&p("11.0.0.1")));
        assert!(p("0.0.0.0/0").contains(&p("10.0.0.0/8")));
        assert!(!p("0.0.0.0/0").contains(&p("2001:db8::1")), "IPv4 any is not IPv6 any");
        assert!(p("::/0").contains(&p("10.0.0.1")), "::/0 covers mapped IPv4 too");
        assert!(p("10.0.0.0/24").overlaps(&p("10.0.0.0/8")));
        assert!(!p("10.0.1.0/24").overlaps(&p("10.0.0.0/24")));
        assert_eq!(Prefix::from_key(p("10.0.0.0/8").key().0, 104), Some(p("10.0.0.0/8")));
    }
}
