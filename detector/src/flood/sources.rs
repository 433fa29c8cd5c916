//! Which source addresses a flood uses. Pure.

use std::{net::IpAddr, str::FromStr};

use ipnet::IpNet;
use thiserror::Error;

/// How sources are picked within the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spread {
    /// base, base+1, ... round robin: every source sends the same share.
    Sequential,
    /// A uniformly random source per frame: the spoofed-flood case.
    Random,
}

impl FromStr for Spread {
    type Err = String;
    fn from_str(s: &str) -> Result<Spread, String> {
        match s {
            "seq" | "sequential" => Ok(Spread::Sequential),
            "random" => Ok(Spread::Random),
            _ => Err(format!("'{s}' is not a spread (use seq or random)")),
        }
    }
}

/// A few addresses that send a fixed share of all frames: heavy hitters
/// hidden in a spoofed flood, to check the detector finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heavy {
    pub count: u32,
    pub percent: u32,
}

impl FromStr for Heavy {
    type Err = String;
    fn from_str(s: &str) -> Result<Heavy, String> {
        let err =
            || format!("'{s}' is not N:PERCENT (for example 10:5 for ten heavy hitters sending 5% of all frames)");
        let (n, p) = s.split_once(':').ok_or_else(err)?;
        let count: u32 = n.parse().map_err(|_| err())?;
        let percent: u32 = p.trim_end_matches('%').parse().map_err(|_| err())?;
        if count == 0 || percent == 0 || percent > 100 {
            return Err(format!("'{s}': need at least one heavy hitter and a share from 1 to 100 percent"));
        }
        Ok(Heavy { count, percent })
    }
}

/// The resolved source plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// The first address; the template is built with it.
    pub first: IpAddr,
    /// Distinct addresses, `first ..= first + count - 1` (low 32 bits).
    pub count: u32,
    pub spread: Spread,
    /// Heavy hitters are the first `count` addresses of the range.
    pub heavy: Option<Heavy>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SourcesError {
    #[error("--sources {wanted} is more than the {have} addresses in {net}")]
    TooMany { wanted: u64, have: u64, net: IpNet },
    #[error("--heavy asks for {heavy} heavy hitters but the range has only {count} sources")]
    HeavyTooMany { heavy: u32, count: u32 },
    #[error("--sources must be at least 1")]
    Zero,
}

impl Sources {
    /// From `--src CIDR [--sources N] [--spread S] [--heavy N:P]`. A CIDR
    /// wider than 2^32 addresses varies only its low 32 bits.
    pub fn plan(
        net: IpNet,
        limit: Option<u64>,
        spread: Option<Spread>,
        heavy: Option<Heavy>,
    ) -> Result<Sources, SourcesError> {
        let host_bits = (net.max_prefix_len() - net.prefix_len()).min(32) as u32;
        let have: u64 = 1u64 << host_bits;
        let count = match limit {
            Some(0) => return Err(SourcesError::Zero),
            Some(n) if n > have => return Err(SourcesError::TooMany { wanted: n, have, net }),
            Some(n) => n,
            None => have,
        };
        // A /0 .. /32 of IPv4 has at most 2^32 addresses; count fits a u32
        // except for exactly 2^32, which wraps the same as the full space.
        let count = count.min(u32::MAX as u64) as u32;
        let first = if count == 1 { net.addr() } else { net.network() };
        if let Some(h) = heavy {
            if h.count > count {
                return Err(SourcesError::HeavyTooMany { heavy: h.count, count });
            }
        }
        let spread = spread.unwrap_or(Spread::Random);
        Ok(Sources { first, count, spread, heavy })
    }

    /// Low 32 bits of the first address, host order.
    pub fn base(&self) -> u32 {
        low32(self.first)
    }
}

/// The low 32 bits of an address, host order.
pub fn low32(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn plans() {
        let s = Sources::plan(net("198.18.0.7/32"), None, None, None).unwrap();
        assert_eq!((s.count, s.first), (1, "198.18.0.7".parse().unwrap()));
        let s = Sources::plan(net("198.18.0.0/16"), Some(1000), Some(Spread::Sequential), None).unwrap();
        assert_eq!((s.count, s.base()), (1000, 0xc612_0000));
        let s = Sources::plan(net("10.0.0.0/8"), None, None, Some(Heavy { count: 10, percent: 5 })).unwrap();
        assert_eq!(s.count, 1 << 24);
        assert_eq!(s.spread, Spread::Random);
        let s = Sources::plan(net("2001:db8::/32"), None, None, None).unwrap();
        assert_eq!(s.count, u32::MAX);
        let s = Sources::plan(net("2001:db8::/120"), None, None, None).unwrap();
        assert_eq!(s.count, 256);
    }

    #[test]
    fn refusals() {
        assert!(matches!(
            Sources::plan(net("198.18.0.0/24"), Some(1000), None, None),
            Err(SourcesError::TooMany { wanted: 1000, have: 256, .. })
        ));
        assert_eq!(Sources::plan(net("198.18.0.0/24"), Some(0), None, None), Err(SourcesError::Zero));
        assert!(Sources::plan(net("198.18.0.0/30"), None, None, Some(Heavy { count: 10, percent: 5 })).is_err());
    }

    #[test]
    fn parsing() {
        assert_eq!("10:5".parse::<Heavy>(), Ok(Heavy { count: 10, percent: 5 }));
        assert_eq!("3:50%".parse::<Heavy>(), Ok(Heavy { count: 3, percent: 50 }));
        for bad in ["10", "x:5", "10:0", "0:5", "10:101"] {
            assert!(bad.parse::<Heavy>().is_err(), "{bad}");
        }
        assert_eq!("seq".parse::<Spread>(), Ok(Spread::Sequential));
        assert!("zigzag".parse::<Spread>().is_err());
    }
}
